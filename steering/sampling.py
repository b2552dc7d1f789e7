"""Sampling settings and per-row sampling with common random numbers.

Every request owns one random generator. At each step it draws one vector of uniform noise that
all rows of the request share (steered and baseline in an A/B compare), and each row picks
argmax(logits / T + Gumbel(noise)) over its own filtered distribution. Where steering leaves a
row's distribution unchanged the tokens stay the same, and a row sampled inside a batch gets the
same tokens as the same request sampled alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import LimitError, RequestError
from .limits import Limits

MAX_TOP_LOGPROBS = 20  # as OpenAI's top_logprobs


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. Temperature 0 is greedy."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0 keeps every token
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # EOS and stop strings are ignored before this many tokens
    stop: tuple[str, ...] = field(default=())
    seed: int | None = None
    logprobs: int | None = None  # None: none; k: each token's log-probability and the top k

    def validate(self, limits: Limits = Limits()) -> SamplingParams:
        """Return self, or raise RequestError naming the bad setting and the valid range."""
        _check("temperature", self.temperature, 0.0, 5.0)
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise RequestError(f"top_p {self.top_p!r} must be in (0, 1]", param="top_p")
        _check_int("top_k", self.top_k, 0, 1_000_000)
        _check("repetition_penalty", self.repetition_penalty, 0.01, 10.0, open_low=True)
        _check_int("max_new_tokens", self.max_new_tokens, 1, limits.max_new_tokens)
        _check_int("min_new_tokens", self.min_new_tokens, 0, self.max_new_tokens)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**63 - 1)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, MAX_TOP_LOGPROBS)
        stops = self.stop
        if isinstance(stops, str) or not all(isinstance(s, str) and s for s in stops):
            raise RequestError(f"stop {stops!r} must be a list of non-empty strings", param="stop")
        if len(stops) > limits.max_stop_strings:
            raise LimitError(
                f"{len(stops)} stop strings given, at most {limits.max_stop_strings}", param="stop"
            )
        for s in stops:
            if len(s) > limits.max_stop_length:
                raise LimitError(
                    f"stop string of {len(s)} characters, at most {limits.max_stop_length}",
                    param="stop",
                )
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check(name: str, value: object, low: float, high: float, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low < value if open_low else low <= value) and value <= high  # type: ignore[operator]
    if not ok:
        bracket = "(" if open_low else "["
        raise RequestError(
            f"{name} {value!r} must be a number in {bracket}{low}, {high}]", param=name
        )


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(f"{name} {value!r} must be an integer in [{low}, {high}]", param=name)


def shared_noise(
    rows: Sequence[tuple[int, torch.Generator | None]], vocab: int, device: torch.device
) -> Tensor | None:
    """(B, V) uniform noise for one step: one draw per request, shared by its rows.

    ``rows`` gives each batch row's request id and its request's generator (None for a greedy
    request, which draws nothing). None when every row is greedy.
    """
    drawn: dict[int, Tensor] = {}
    for request_id, generator in rows:
        if generator is not None and request_id not in drawn:
            drawn[request_id] = torch.rand(vocab, generator=generator)
    if not drawn:
        return None
    fill = torch.full((vocab,), 0.5)
    return torch.stack([drawn.get(request_id, fill) for request_id, _ in rows]).to(device)


def seen_tokens(contexts: Sequence[Sequence[int]], vocab: int, device: torch.device) -> Tensor:
    """(B, V) bool: the tokens in each row's context (prompt and reply so far), for the
    repetition penalty."""
    seen = torch.zeros(len(contexts), vocab, dtype=torch.bool)
    for i, ids in enumerate(contexts):
        seen[i, list(ids)] = True
    return seen.to(device)


def block_tokens(logits: Tensor, rows: Sequence[int], token_ids: Sequence[int]) -> Tensor:
    """``logits`` (B, V) with ``token_ids`` made impossible in ``rows`` (for min_new_tokens:
    EOS may not end a reply early). Returns a new tensor when anything is blocked."""
    if not rows or not token_ids:
        return logits
    logits = logits.clone()  # the forward's output is an inference-mode tensor
    logits[torch.tensor(list(rows))[:, None], torch.tensor(list(token_ids))] = float("-inf")
    return logits


def token_logprobs(
    logits: Tensor, tokens: Sequence[int], top: Sequence[int | None]
) -> list[tuple[float, tuple[tuple[int, float], ...]] | None]:
    """Per row: the chosen token's log-probability under the model's distribution
    (``log_softmax(logits)``, before temperature and filters, as OpenAI reports it) and the
    ``top[i]`` most likely tokens with theirs; None for a row with ``top[i]`` None.

    ``logits`` is (B, V); ``tokens`` (B,) the tokens picked."""
    wanted = [i for i, k in enumerate(top) if k is not None]
    out: list[tuple[float, tuple[tuple[int, float], ...]] | None] = [None] * len(top)
    if not wanted:
        return out
    logp = torch.log_softmax(logits[wanted].float(), dim=-1).cpu()  # (W, V)
    k = max(top[i] or 0 for i in wanted)
    best = logp.topk(k, dim=-1) if k else None
    for j, i in enumerate(wanted):
        alternatives: tuple[tuple[int, float], ...] = ()
        if best is not None and top[i]:
            pairs = zip(best.indices[j, : top[i]].tolist(), best.values[j, : top[i]].tolist())
            alternatives = tuple(pairs)
        out[i] = (float(logp[j, tokens[i]]), alternatives)
    return out


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator for one request: its noise sequence depends on the seed alone."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(seed)


# Uniform noise is clamped into [low, high] so that every Gumbel value is finite; the Gumbel
# values then lie in about [-3.8, 15.9].
NOISE_LOW, NOISE_HIGH = 1e-20, 1 - 1e-7


def pick_tokens(
    logits: Tensor,  # (B, V) float32
    noise: Tensor | None,  # (B, V) uniform in [0, 1), shared by a request's rows; None: greedy
    params: list[SamplingParams],
    seen: Tensor | None = None,  # (B, V) bool: tokens in each row's context, for the penalty
) -> Tensor:
    """The next token of each row: (B,) long.

    Row i depends only on row i of each input and on ``params[i]``, never on the other rows of
    the batch. Its logits (finite or -inf, at least one finite) get the repetition penalty on
    ``seen`` tokens (positive logits divided, negative ones multiplied), then a greedy row takes
    the argmax (the lowest index among ties) and a sampled row takes
    ``argmax(logits / temperature + Gumbel(noise))`` over the tokens that top-k and top-p keep.
    Scores are float64, so no valid setting overflows: a tiny temperature tends to the greedy
    token (sampling uniformly among tied maxima), and top_k=1 or a top_p below the best token's
    probability give the greedy token exactly. The Gumbel values are computed in the noise's
    dtype (float32: absolute error below 1e-6). Raises ValueError when a row samples and
    ``noise`` is None.
    """
    scores = _penalize(logits.to(torch.float64, copy=True), params, seen)  # our own copy
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows and noise is None:
        raise ValueError(f"rows {rows} sample (temperature > 0), but no noise was given")
    if len(rows) == len(params):
        return _sample(scores, noise, params)
    tokens = scores.argmax(-1)
    if rows:
        index = torch.tensor(rows, device=scores.device)
        sampled = _sample(scores[index], noise[index], [params[i] for i in rows])  # a copy
        tokens = tokens.index_copy(0, index, sampled)
    return tokens


def _sample(scores: Tensor, noise: Tensor, params: list[SamplingParams]) -> Tensor:
    """(B,) argmax of scaled and filtered ``scores`` (B, V; overwritten) plus the Gumbel values
    of ``noise`` (B, V)."""
    log_e = noise.clamp(NOISE_LOW, NOISE_HIGH).log_().neg_().log_()  # Gumbel = -log_e
    return _scaled_and_filtered(scores, params).sub_(log_e).argmax(-1)


def _penalize(scores: Tensor, params: list[SamplingParams], seen: Tensor | None) -> Tensor:
    """The repetition penalty on ``seen`` tokens; rows with penalty 1 are returned unchanged."""
    if seen is None or all(p.repetition_penalty == 1.0 for p in params):
        return scores
    penalty = scores.new_tensor([p.repetition_penalty for p in params])[:, None]
    penalized = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(seen, penalized, scores)


def _scaled_and_filtered(scores: Tensor, params: list[SamplingParams]) -> Tensor:
    """(B, V) float64 scores of sampled rows divided by their temperature, then filtered.

    Works in place: ``scores`` is overwritten (on a CPU a fresh (B, V) float64 buffer costs about
    as much as the arithmetic). Each row is first shifted so that its best token scores 0: a
    tiny temperature then sends the other tokens towards -inf (probability 0) instead of
    overflowing, and the best tokens keep full precision next to the noise. A row whose logits
    are all -inf stays all -inf.
    """
    temperature = scores.new_tensor([p.temperature for p in params])[:, None]
    best = scores.amax(-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).min)
    return _filter(scores.sub_(best).div_(temperature), params)


def _filter(scores: Tensor, params: list[SamplingParams]) -> Tensor:
    """Top-k then top-p (nucleus) per row; removed tokens get -inf. (B, V) -> (B, V).

    Tokens rank by score, the lowest index first among ties. Top-k keeps the first k; top-p then
    keeps each token whose probability mass ranked before it (within the top k) is below top_p,
    so at least the best token. A row with top_k 0 (or at least V) and top_p 1 is returned
    as it is, whatever the other rows ask.
    """
    vocab = scores.shape[-1]
    rows = [i for i, p in enumerate(params) if 0 < p.top_k < vocab or p.top_p < 1.0]
    if not rows:
        return scores
    index = torch.tensor(rows, device=scores.device)
    sub = scores[index]
    top_k = [params[i].top_k if 0 < params[i].top_k < vocab else vocab for i in rows]
    top_p = sub.new_tensor([params[i].top_p for i in rows])[:, None]
    ranked, order = sub.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(vocab, device=scores.device)[None, :]
    remove = rank >= torch.tensor(top_k, device=scores.device)[:, None]
    probs = ranked.masked_fill(remove, -math.inf).softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    remove |= (mass_before >= top_p) & (top_p < 1.0)  # top_p 1 removes nothing, rounding aside
    remove[:, 0] = False  # always keep the most likely token
    filtered = sub.scatter(-1, order, ranked.masked_fill(remove, -math.inf))
    return scores.index_copy(0, index, filtered)
