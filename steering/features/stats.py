"""Per-feature statistics of an SAE over a corpus, streamed in bounded memory.

``compute_feature_stats`` runs the model over the corpus's token sequences in batches, reads
the residual stream at the SAE's hook point (the forward pass stops there: the layers after it
never run), encodes it with the SAE's full ``encode`` in chunks of ``chunk_tokens`` tokens, and
keeps per feature: how many tokens it fired on (activation > 0), the sum of its activations,
and its ``top_k`` largest activations with the token ids of the window around each. Memory is
bounded by the batch's residual stream, one chunk's (chunk_tokens, d_sae) activations and the
(d_sae, top_k, window) kept contexts: it does not grow with the corpus.

Which tokens count: every token of a sequence except the tokenizer's BOS and the padding of a
batch (the chat template's markers and end-of-turn tokens count; the demo SAE's statistics
were computed the same way). Activations are the SAE's raw units.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ..activations import residual_batch
from ..errors import SteeringError
from ..formats import MAX_CONTEXT_CHARS
from ..models import SteerableModel
from ..sae import SAE, FeatureContext
from .corpus import Corpus, sequences

LEFT, RIGHT = 16, 8  # tokens kept before and after the activating token
WINDOW = LEFT + 1 + RIGHT
NO_TOKEN = -1  # outside the sequence, BOS or padding
CHUNK_FLOATS = 1 << 24  # one chunk's activations at most (64 MiB of float32)
MAX_TOP_K = 20  # what feature_contexts.json holds per feature (formats.MAX_CONTEXTS)
DEFAULT_TOP_K = 10  # a 16k-feature SAE's contexts file stays ~20 MB


@dataclass
class FeatureStatistics:
    """The running statistics (also what a checkpoint holds).

    ``fired`` (d_sae,) int64: tokens with activation > 0; ``total`` (d_sae,) float64: the sum
    of activations; ``top_values`` (d_sae, top_k) float32: the largest activations, best first
    (0: no entry); ``top_windows`` (d_sae, top_k, WINDOW) int32: the token ids around each, the
    activating token at index ``LEFT`` (``NO_TOKEN`` outside the sequence). ``sequences``:
    sequences of the corpus done; ``tokens``: tokens counted; ``finished``: the corpus ended;
    ``interrupted``: ``should_stop`` stopped the run (else ``max_tokens`` or the corpus's end).
    """

    fired: Tensor
    total: Tensor
    top_values: Tensor
    top_windows: Tensor
    sequences: int = 0
    tokens: int = 0
    finished: bool = False
    interrupted: bool = False

    @classmethod
    def empty(cls, d_sae: int, top_k: int, device: torch.device | str = "cpu") -> FeatureStatistics:
        return cls(
            fired=torch.zeros(d_sae, dtype=torch.long, device=device),
            total=torch.zeros(d_sae, dtype=torch.float64, device=device),
            top_values=torch.zeros(d_sae, top_k, device=device),
            top_windows=torch.full(
                (d_sae, top_k, WINDOW), NO_TOKEN, dtype=torch.int32, device=device
            ),
        )

    @property
    def max_activation(self) -> Tensor:
        """(d_sae,) float32, 0 for a feature that never fired."""
        return self.top_values[:, 0].float().cpu()

    @property
    def frequency(self) -> Tensor:
        """(d_sae,) the fraction of counted tokens a feature fired on."""
        return (self.fired.double() / max(self.tokens, 1)).float().cpu()

    @property
    def mean_activation(self) -> Tensor:
        """(d_sae,) the mean activation over the tokens a feature fired on (0: never fired)."""
        return (self.total / self.fired.clamp(min=1)).float().cpu()

    def to(self, device: torch.device | str) -> FeatureStatistics:
        tensors = ("fired", "total", "top_values", "top_windows")
        moved = {n: getattr(self, n).to(device) for n in tensors}
        return FeatureStatistics(**moved, sequences=self.sequences, tokens=self.tokens,
                                 finished=self.finished, interrupted=self.interrupted)  # fmt: skip

    def update(self, acts: Tensor, windows: Tensor) -> None:
        """Add one chunk: ``acts`` (n, d_sae) float32 and each row's window (n, WINDOW)."""
        self.fired += (acts > 0).sum(0)
        self.total += acts.sum(0, dtype=torch.float64)
        k = min(self.top_values.shape[1], acts.shape[0])
        top = acts.topk(k, dim=0)  # (k, d_sae): only these can enter a feature's top k
        values, rows = top.values.T, top.indices.T  # (d_sae, k)
        better = (values[:, 0] > self.top_values[:, -1]).nonzero().squeeze(1)
        if len(better) == 0:
            return
        merged = torch.cat([self.top_values[better], values[better]], dim=1)
        candidates = torch.cat([self.top_windows[better], windows[rows[better]]], dim=1)
        best = merged.topk(self.top_values.shape[1], dim=1)
        self.top_values[better] = best.values
        pick = best.indices[..., None].expand(-1, -1, WINDOW)
        kept = candidates.gather(1, pick)
        kept[best.values <= 0] = NO_TOKEN  # an activation of 0 is no context
        self.top_windows[better] = kept


def batches(
    seqs: Iterator[list[int]],
    batch_size: int,
    max_tokens: int | None,
    done_tokens: int,
    bos: Any,
    cut: list[bool],
) -> Iterator[list[list[int]]]:
    """``seqs`` in batches of ``batch_size``, stopping before the first batch that would take
    the counted tokens past ``max_tokens`` (then ``cut`` becomes ``[True]``). Every batch but
    the corpus's last is full, so a resumed run sees the batches of a run that never stopped."""
    counted = done_tokens
    while True:
        batch = list(itertools.islice(seqs, batch_size))
        if not batch:
            return
        n = sum(1 for seq in batch for t in seq if t != bos)
        if max_tokens is not None and counted + n > max_tokens:
            cut.append(True)
            return
        counted += n
        yield batch


def default_chunk(d_sae: int) -> int:
    """Tokens encoded at once: (chunk, d_sae) float32 activations stay within 64 MiB."""
    return max(1, min(4096, CHUNK_FLOATS // d_sae))


@torch.inference_mode()
def compute_feature_stats(
    model: SteerableModel,
    sae: SAE,
    corpus: Corpus,
    *,
    context_size: int,
    batch_size: int = 8,
    top_k: int = DEFAULT_TOP_K,
    max_tokens: int | None = None,
    chunk_tokens: int | None = None,
    start: FeatureStatistics | None = None,
    progress: bool = False,
    log_every: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> FeatureStatistics:
    """Statistics of ``sae``'s features over ``corpus`` (see the module docstring).

    Continues ``start`` (a checkpoint's statistics: its sequences are skipped) when given.
    Stops at the corpus's end (``finished``), before the batch that would pass
    ``max_tokens`` counted tokens, or after the batch during which ``should_stop()`` became
    true. A run continued from ``start`` with the same settings (``batch_size`` included)
    ends with exactly the statistics of a run that never stopped. ``progress``: a tqdm bar on
    stderr; ``log_every``: else a plain line on stderr (tokens counted, tokens/s) at most every
    ``log_every`` seconds, for a log file (nohup, Slurm). Raises ``SteeringError``
    when the SAE does not fit the model or a size is out of range.
    """
    problems = model.fit_problems(sae.hook.layer, sae.d_in)
    if problems:
        reasons = "; ".join(f"{f}={v}, {why}" for f, v, why in problems)
        raise SteeringError(f"{sae.name} does not fit the model: {reasons}")
    if not 1 <= top_k <= MAX_TOP_K:
        raise SteeringError(f"top-k {top_k} must be in 1..{MAX_TOP_K}")
    if batch_size < 1:
        raise SteeringError(f"batch size {batch_size} must be 1 or more")
    device = next(model.layers[sae.hook.layer].parameters()).device
    sae = sae.to(device=device)
    stats = (start or FeatureStatistics.empty(sae.d_sae, top_k)).to(device)
    if stats.top_values.shape != (sae.d_sae, top_k):
        raise SteeringError(
            f"the checkpoint holds {tuple(stats.top_values.shape)} top activations, "
            f"expected (d_sae={sae.d_sae}, top_k={top_k})"
        )
    chunk = chunk_tokens or default_chunk(sae.d_sae)
    tok = model.tokenizer
    bos = getattr(tok, "bos_token_id", None)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    seqs = sequences(corpus, tok, context_size, skip=stats.sequences)
    bar = tqdm(total=max_tokens, initial=stats.tokens, unit="tok", unit_scale=True,
               disable=not progress, desc="sae-stats", dynamic_ncols=True)  # fmt: skip
    finished, interrupted, cut = True, False, list[bool]()
    began = logged = time.monotonic()
    tokens_before = stats.tokens
    try:
        for batch in batches(seqs, batch_size, max_tokens, stats.tokens, bos, cut):
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, seq in enumerate(batch):
                ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[i, : len(seq)] = 1
            keep = mask.bool() & (ids != bos) if bos is not None else mask.bool()
            resid = residual_batch(model, ids.to(model.device), mask.to(model.device), sae.hook)
            marked = torch.where(keep, ids, NO_TOKEN).to(torch.int32)
            padded = torch.nn.functional.pad(marked, (LEFT, RIGHT), value=NO_TOKEN)
            windows = padded.unfold(1, WINDOW, 1)[keep].to(device)  # (n, WINDOW)
            x = resid[keep.to(resid.device)]  # (n, d_in)
            for begin in range(0, len(x), chunk):
                acts = sae.encode(x[begin : begin + chunk]).float()
                stats.update(acts, windows[begin : begin + chunk])
            n = int(keep.sum())
            stats.tokens += n
            stats.sequences += len(batch)
            bar.update(n)
            now = time.monotonic()
            if log_every is not None and not progress and now - logged >= log_every:
                logged, rate = now, (stats.tokens - tokens_before) / max(now - began, 1e-9)
                of = f" of {max_tokens}" if max_tokens is not None else ""
                print(f"sae-stats: {stats.tokens}{of} tokens, {stats.sequences} sequences, "
                      f"{rate:.0f} tokens/s", file=sys.stderr, flush=True)  # fmt: skip
            if should_stop():
                finished, interrupted = False, True
                break
        else:
            finished = not cut  # else the corpus ended
    finally:
        bar.close()
    stats.finished, stats.interrupted = finished, interrupted
    return stats.to("cpu")


def contexts(
    stats: FeatureStatistics, tokenizer: Any, top_k: int | None = None
) -> dict[int, tuple[FeatureContext, ...]]:
    """Each feature's top activating contexts, best first (features that fired only): the text
    of the window before the token, the token, the text after it, and the activation. The
    texts are decoded in one batch per part (a 16k-feature SAE has ~10^5 contexts)."""
    values = stats.top_values[:, :top_k]
    features, slots = (values > 0).nonzero(as_tuple=True)
    windows = stats.top_windows[features, slots].tolist()  # (n, WINDOW)
    parts = [
        [[t for t in w[a:b] if t != NO_TOKEN] for w in windows]
        for a, b in ((0, LEFT), (LEFT, LEFT + 1), (LEFT + 1, WINDOW))
    ]
    left, token, right = (_decode_batch(tokenizer, p) for p in parts)
    found: dict[int, list[FeatureContext]] = {}
    for i, (feature, value) in enumerate(zip(features.tolist(), values[features, slots].tolist())):
        found.setdefault(feature, []).append(
            FeatureContext(
                left=str(left[i])[-MAX_CONTEXT_CHARS:],
                token=str(token[i])[:MAX_CONTEXT_CHARS],
                right=str(right[i])[:MAX_CONTEXT_CHARS],
                activation=float(value),
            )
        )
    return {f: tuple(items) for f, items in found.items()}


def _decode_batch(tokenizer: Any, sequences: list[list[int]]) -> list[str]:
    """Texts of many id lists: in one call of a fast tokenizer's Rust backend (threads),
    else one ``decode`` each."""
    if not sequences:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return list(backend.decode_batch(sequences, skip_special_tokens=False))
    return [str(tokenizer.decode(ids)) for ids in sequences]
