"""Speed and memory of ``steering sae-stats`` (part of ``python -m steering.bench``).

On the demo model with its SAE (the demo corpus) and on the bench model with its random SAE
(random words, sequences of ``CONTEXT`` tokens), over the same token batches:

- ``forward``: the plain forward pass of the whole model;
- ``forward_encode``: the whole forward pass plus one full SAE encode of every token (the
  figure the statistics should cost little more than);
- ``sae_stats``: ``compute_feature_stats`` (forward up to the SAE's layer, encode, the
  running statistics and top-k contexts).

Each is timed ``repeats`` times interleaved (the median kept), as tokens/s; the ratio
``sae_stats_vs_forward_encode`` is the time of the statistics over forward + encode.

Peak memory: ``sae-stats`` runs in a fresh subprocess per corpus size (1x and 4x the
documents); reported is the peak resident set size of the process during the run (Linux: the
kernel's high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs`` once the model is
built; elsewhere ``ru_maxrss``, which includes building the model), next to the resident set at
the run's start, and on CUDA the peak of ``torch.cuda.max_memory_allocated`` above the model.
Flat across the two sizes means memory does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import torch

from ..features.corpus import Corpus, Document, demo_corpus, sequences
from ..features.stats import compute_feature_stats, default_chunk
from ..models import SteerableModel
from ..sae import SAE
from .setup import WORDS, Settings, build_model, build_sae
from .timing import interleaved, log, median

CONTEXT = 128  # tokens per sequence of the bench model's corpus
BATCH = 8


def bench_corpus(n: int, seed: int = 0) -> Corpus:
    """``n`` documents of ``CONTEXT`` random words of the bench tokenizer's vocabulary."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(CONTEXT)) for _ in range(n)]
    return Corpus(f"bench words ({n})", lambda: (Document(text=t) for t in docs))


def demo_prefix(n: int) -> Corpus:
    corpus = demo_corpus()
    return replace(corpus, documents=lambda: itertools.islice(corpus.documents(), n))


def build(which: str, s: Settings) -> tuple[SteerableModel, SAE, int]:
    """The model, SAE and context size of ``which`` ("demo" or "bench")."""
    if which == "demo":
        from ..demo import load_demo

        model, sae = load_demo(device=s.device)
        return model, sae, 256
    model = build_model(s)
    return model, build_sae(model.hidden_size, s.sae_width, s.steer_layer, seed=s.seed), CONTEXT


def corpus_of(which: str, n: int) -> Corpus:
    return demo_prefix(n) if which == "demo" else bench_corpus(n)


@torch.inference_mode()
def measure_speed(
    model: SteerableModel, sae: SAE, corpus: Corpus, context: int, repeats: int, label: str
) -> dict[str, Any]:
    """Tokens/s of forward, forward + encode and sae-stats over the same batches."""
    tok = model.tokenizer
    seqs = list(sequences(corpus, tok, context))
    bos = getattr(tok, "bos_token_id", None)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = []
    for start in range(0, len(seqs), BATCH):
        chunk = seqs[start : start + BATCH]
        width = max(map(len, chunk))
        ids = torch.tensor([q + [pad] * (width - len(q)) for q in chunk], device=model.device)
        mask = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for q in chunk])
        batches.append((ids, mask.to(model.device)))
    tokens = sum(1 for q in seqs for t in q if t != bos)
    sae = sae.to(device=model.device)
    step = default_chunk(sae.d_sae)

    def forward(encode: bool = False) -> None:
        seen: list[torch.Tensor] = []
        layer = model.layers[sae.hook.layer]
        handle = (
            layer.register_forward_hook(lambda _m, _a, out: seen.append(_first(out)))
            if sae.hook.site == "resid_post"
            else layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        )
        try:
            for ids, mask in batches:
                seen.clear()
                model.model(input_ids=ids, attention_mask=mask, use_cache=False)
                if encode:  # one full encode of every token, in the statistics' chunks
                    x = seen[0].reshape(*ids.shape, -1)[mask.bool()]
                    for begin in range(0, len(x), step):
                        sae.encode(x[begin : begin + step])
        finally:
            handle.remove()

    def stats() -> None:
        compute_feature_stats(model, sae, corpus, context_size=context, batch_size=BATCH)

    variants = {"forward": forward, "forward_encode": lambda: forward(True), "sae_stats": stats}
    stats()  # warm-up
    times = interleaved(variants, repeats, f"sae-stats {label}", model.device)
    seconds = {k: median(v) for k, v in times.items()}
    return {
        "tokens": tokens,
        "tokens_per_s": {k: tokens / v for k, v in seconds.items()},
        "sae_stats_vs_forward": seconds["sae_stats"] / seconds["forward"],
        "sae_stats_vs_forward_encode": seconds["sae_stats"] / seconds["forward_encode"],
        "d_sae": sae.d_sae,
        "layer": sae.hook.layer,
        "layers": model.num_layers,
    }


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def peak_memory_child(which: str, n: int, s: Settings) -> dict[str, Any]:
    """Run in a fresh process: the peak memory of one sae-stats run over ``n`` documents."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, sae, context = build(which, s)
    corpus = corpus_of(which, n)
    start_rss = _proc_status("VmRSS")
    reset = _reset_peak_rss()
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
        base_cuda = torch.cuda.memory_allocated(model.device)
    stats = compute_feature_stats(model, sae, corpus, context_size=context, batch_size=BATCH)
    peak = _proc_status("VmHWM") if reset else None
    if peak is None:  # no /proc: the process's high-water mark, model building included
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    found = {"documents": n, "tokens": stats.tokens, "rss_peak_mib": peak}
    found["rss_at_start_mib"] = start_rss
    found["peak_is_the_runs"] = reset
    if model.device.type == "cuda":
        above = torch.cuda.max_memory_allocated(model.device) - base_cuda
        found["cuda_peak_above_model_mib"] = above / 2**20
    return found


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident set high-water mark (Linux ``/proc/self/clear_refs`` 5),
    so that ``VmHWM`` is the peak of what runs next."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status(field: str) -> float | None:
    """A ``/proc/self/status`` memory field in MiB (None where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure_memory(which: str, n: int, s: Settings) -> list[dict[str, Any]]:
    """``peak_memory_child`` at ``n`` and ``4 n`` documents, each in its own process."""
    out = []
    for size in (n, 4 * n):
        argv = [sys.executable, "-m", "steering.bench.stats", "--child", which, str(size)]
        argv += ["--settings", json.dumps(asdict(s))]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"sae-stats memory run failed: {done.stderr[-2000:]}")
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def run(s: Settings, documents: dict[str, int] | None = None, memory: bool = True) -> dict:
    """Every sae-stats figure, on the demo and the bench model."""
    documents = documents or {"demo": 200, "bench": 24}
    repeats = max(1, min(s.repeats, 3))
    result: dict[str, Any] = {}
    for which, n in documents.items():
        start = time.perf_counter()
        model, sae, context = build(which, s)
        entry = measure_speed(model, sae, corpus_of(which, n), context, repeats, which)
        if memory:
            entry["memory"] = measure_memory(which, n, s)
        entry["wall_s"] = time.perf_counter() - start
        result[which] = entry
        del model, sae
    return result


def table(result: dict[str, Any]) -> str:
    """The figures as ``make bench`` prints them."""
    lines = []
    for which, e in result.items():
        tps = "  ".join(f"{k} {v:,.0f}" for k, v in e["tokens_per_s"].items())
        lines.append(
            f"sae-stats {which} (d_sae {e['d_sae']}, layer {e['layer']} of {e['layers']}, "
            f"{e['tokens']} tokens) tok/s: {tps}"
        )
        lines.append(
            f"  time sae-stats / forward {e['sae_stats_vs_forward']:.2f}, "
            f"/ (forward + SAE encode) {e['sae_stats_vs_forward_encode']:.2f}"
        )
        for m in e.get("memory", ()):
            cuda = m.get("cuda_peak_above_model_mib")
            start = m["rss_at_start_mib"]
            lines.append(
                f"  peak memory at {m['tokens']} tokens: RSS {m['rss_peak_mib']:.0f} MiB"
                + (f" (at the start {start:.0f} MiB)" if start is not None else "")
                + (f", CUDA above the model {cuda:.0f} MiB" if cuda is not None else "")
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m steering.bench.stats", description=__doc__)
    p.add_argument("--child", nargs=2, metavar=("WHICH", "DOCUMENTS"), help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    s = Settings(**json.loads(args.settings)) if args.settings else Settings(device=args.device)
    if args.child:
        print(json.dumps(peak_memory_child(args.child[0], int(args.child[1]), s)))
        return 0
    torch.set_num_threads(min(2, torch.get_num_threads()))
    result = run(s)
    log(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
