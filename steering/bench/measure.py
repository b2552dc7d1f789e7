"""The benchmark's measurements and its report (run it with ``python -m steering.bench``).

Everything runs on a random-weights model built from a standard config and a random SAE built
here (nothing is downloaded), in float32 on the machine's CPU (or the first CUDA device with
``--device cuda``). Every reply has a fixed length (``min_new_tokens == max_new_tokens``, so EOS
never ends one early) and greedy decoding; each measurement is warmed up, then repeated with the
variants interleaved (the order rotates every repeat, so machine noise hits all alike) and the
median is kept. The ratios written to the JSON file:

- ``steer_overhead_1`` / ``steer_overhead_8`` (``steer_overhead`` is the 8-feature one): tokens/s
  of a reply with a clamp of 1 / 8 features at one layer, over tokens/s of an unsteered reply.
- ``ab_vs_single``: wall time of an A/B compare request (steered and baseline rows in one batch)
  over one unsteered reply of the same length.
- ``users8_vs_sequential``: throughput of 8 requests with 8 different plans in one batch
  (``Engine.admit`` of all 8, then steps) over the same 8 run one after another.
- ``engine_vs_hf_generate``: the engine's unsteered tokens/s over ``model.generate()`` on the same
  model, prompt and settings (batch 1).
- ``clamp_vs_full_sae``: the steering hook's maths with a 1-feature clamp on a (1, 1, d) residual
  (one decode step) over a full SAE encode + decode of the same residual; ``details`` also has the
  (1, T, d) prefill case.

``details`` holds the raw times, tokens/s, the settings and a diagnostic (``nn.Linear`` time at 1,
2 and 8 rows) that explains most of what batching costs on a CPU.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from ..engine import Engine
from ..hooks import prepare
from ..limits import Limits
from ..models import SteerableModel
from ..plan import SteeringPlan
from ..requests import Request, build_request, encode_chat
from ..sae import SAE
from .setup import Settings, build_model, build_sae, clamp_plan, fixed_length, prompt_text
from .timing import interleaved, log, measure_linear, median, paired_ratio, per_call, sync_device

# (key, target, True when higher is better, what it compares)
TARGETS: tuple[tuple[str, float, bool, str], ...] = (
    ("steer_overhead_1", 0.97, True, "tok/s clamp 1 feature / unsteered"),
    ("steer_overhead_8", 0.97, True, "tok/s clamp 8 features / unsteered"),
    ("ab_vs_single", 1.2, False, "time A/B compare (2 rows) / single reply"),
    ("users8_vs_sequential", 4.0, True, "tok/s 8 users batched / 8 one after another"),
    ("engine_vs_hf_generate", 1.0, True, "tok/s engine / transformers generate()"),
    ("clamp_vs_full_sae", 0.1, False, "time clamp hook / full SAE enc+dec, (1,1,d)"),
)
KEYS = (
    "steer_overhead",
    "ab_vs_single",
    "users8_vs_sequential",
    "engine_vs_hf_generate",
    "clamp_vs_full_sae",
)

# ---- the measurements ----


def request(
    engine: Engine, text: str, plan: SteeringPlan | None, n: int, compare: bool = False
) -> Request:
    """A fixed-length greedy request of ``n`` tokens per row."""
    return build_request(
        engine.model, text, plan, fixed_length(n), limits=engine.limits, compare=compare
    )


def drain(engine: Engine, request: Request) -> int:
    """Run one request alone to the end; the number of tokens generated (all rows)."""
    return sum(1 for e in engine.stream(request) if e.token_id is not None)


def measure_single_row(
    engine: Engine, sae: SAE, s: Settings
) -> tuple[dict[str, float], dict[str, Any]]:
    """Unsteered, clamp 1, clamp 8, A/B compare and HF generate: all batch-1 replies of one
    prompt and length, interleaved."""
    n = s.new_tokens
    text = prompt_text(s.prompt_words)
    plans = {"clamp1": clamp_plan(sae, 1), "clamp8": clamp_plan(sae, 8)}
    model = engine.model.model
    prompt_ids = encode_chat(engine.tokenizer, text, engine.limits)
    ids = torch.tensor([prompt_ids], device=engine.device)
    pad = engine.tokenizer.pad_token_id

    def engine_run(plan: SteeringPlan | None, compare: bool = False, length: int = n) -> Any:
        return lambda: drain(engine, request(engine, text, plan, length, compare=compare))

    def hf_run(length: int = n) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=length,
                    min_new_tokens=length,
                    eos_token_id=engine.eos_ids,
                    pad_token_id=pad,
                )

        return run

    variants = {
        "unsteered": engine_run(None),
        "clamp1": engine_run(plans["clamp1"]),
        "clamp8": engine_run(plans["clamp8"]),
        "ab_compare": engine_run(plans["clamp8"], compare=True),
        "hf_generate": hf_run(),
    }
    log(f"warm-up: {len(variants)} variants x {s.warmup_tokens} tokens")
    for name, fn in {
        "unsteered": engine_run(None, length=s.warmup_tokens),
        "clamp8": engine_run(plans["clamp8"], length=s.warmup_tokens),
        "ab_compare": engine_run(plans["clamp8"], compare=True, length=s.warmup_tokens),
        "hf_generate": hf_run(s.warmup_tokens),
    }.items():
        fn()
        log(f"  warmed {name}")

    # the engine's greedy reply should be transformers' greedy reply
    ours = [e.token_id for e in engine.stream(request(engine, text, None, n))]
    theirs = hf_run()()[0, ids.shape[1] :].tolist()

    times = interleaved(variants, s.repeats, f"batch-1 x{n} tokens", engine.device)
    med = {k: median(v) for k, v in times.items()}
    tps = {k: n / med[k] for k in med}
    tps["ab_compare"] = 2 * n / med["ab_compare"]  # both rows
    ratios = {
        "steer_overhead_1": tps["clamp1"] / tps["unsteered"],
        "steer_overhead_8": tps["clamp8"] / tps["unsteered"],
        "ab_vs_single": med["ab_compare"] / med["unsteered"],
        "engine_vs_hf_generate": tps["unsteered"] / tps["hf_generate"],
    }
    details = {
        "prompt_tokens": len(prompt_ids),
        "new_tokens": n,
        "median_s": med,
        "tokens_per_s": tps,
        "ms_per_step": {k: 1e3 * med[k] / n for k in med},
        "times_s": times,
        "engine_matches_hf_greedy": ours == theirs,
        # the same ratios from the runs of one repeat (adjacent in time), median over repeats
        "paired_ratio_medians": {
            "steer_overhead_1": paired_ratio(times["unsteered"], times["clamp1"]),
            "steer_overhead_8": paired_ratio(times["unsteered"], times["clamp8"]),
            "ab_vs_single": 1 / paired_ratio(times["unsteered"], times["ab_compare"]),
            "engine_vs_hf_generate": paired_ratio(times["hf_generate"], times["unsteered"]),
        },
    }
    return ratios, details


def measure_users(engine: Engine, sae: SAE, s: Settings) -> tuple[float, dict[str, Any]]:
    """``s.users`` requests with different plans and prompt lengths: one batch vs one by one."""
    n = s.users_new_tokens
    specs = [
        (prompt_text(4 + 3 * i, offset=i), clamp_plan(sae, 1 + i % 8, first=97 * i, value=4.0 + i))
        for i in range(s.users)
    ]

    def make() -> list[Request]:
        return [request(engine, text, plan, n) for text, plan in specs]

    def batched() -> int:
        requests = make()
        count = len(engine.admit(requests))
        while engine.live:
            count += len(engine.step())
        return count

    def sequential() -> int:
        return sum(drain(engine, r) for r in make())

    log(f"warm-up: {s.users} users batched")
    batched()
    times = interleaved(
        {"batched": batched, "sequential": sequential},
        s.users_repeats,
        f"{s.users} users x{n} tokens",
        engine.device,
    )
    med = {k: median(v) for k, v in times.items()}
    tokens = s.users * n
    details = {
        "users": s.users,
        "new_tokens": n,
        "prompt_tokens": [len(encode_chat(engine.tokenizer, text)) for text, _ in specs],
        "median_s": med,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "times_s": times,
    }
    return med["sequential"] / med["batched"], details


def measure_hook(model: SteerableModel, sae: SAE, s: Settings) -> tuple[float, dict[str, Any]]:
    """The steering hook's maths (1- and 8-feature clamps) vs a full SAE encode + decode."""
    d, dev = s.hidden, model.device
    sae_dev = sae.to(dev)
    hooks = {  # the interventions whose hooks the engine registers
        k: prepare(model, clamp_plan(sae, k)).groups[sae.hook] for k in (1, 8)
    }
    g = torch.Generator().manual_seed(1)
    shapes = {
        "decode_1x1": (1, 1, d),
        "decode_2x1": (2, 1, d),  # an A/B compare step (the hook is per row)
        "prefill_1xT": (1, s.hook_prefill_tokens, d),
    }
    us: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for label, shape in shapes.items():
            x = torch.randn(shape, generator=g).to(dev)
            fns = {
                "clamp1_hook": lambda x=x: hooks[1].apply(x, None),
                "clamp8_hook": lambda x=x: hooks[8].apply(x, None),
                "full_sae_enc_dec": lambda x=x: sae_dev.decode(sae_dev.encode(x), x),
            }
            us[label] = {}
            for name, fn in fns.items():

                def timed(fn: Callable[[], Any] = fn) -> Any:
                    out = fn()
                    sync_device(dev)
                    return out

                us[label][name] = 1e6 * per_call(timed)
            log(
                f"[hook {label} {tuple(shape)}] "
                + "  ".join(f"{k} {v:.1f}us" for k, v in us[label].items())
            )
    ratio = us["decode_1x1"]["clamp1_hook"] / us["decode_1x1"]["full_sae_enc_dec"]
    details = {
        "microseconds": us,
        "prefill_ratio": us["prefill_1xT"]["clamp1_hook"] / us["prefill_1xT"]["full_sae_enc_dec"],
        "sae_width": sae.d_sae,
        "layer": sae.hook.layer,
    }
    return ratio, details


def run(s: Settings, model: SteerableModel | None = None) -> dict[str, Any]:
    """Every measurement; the result is what the JSON file holds."""
    start = time.perf_counter()
    log(
        f"building: Llama hidden {s.hidden}, {s.layers} layers, vocab {s.vocab}; "
        f"SAE width {s.sae_width} at layer {s.steer_layer}"
    )
    model = model or build_model(s)
    sae = build_sae(model.hidden_size, s.sae_width, s.steer_layer, seed=s.seed)
    limit = max(s.new_tokens, s.users_new_tokens, s.warmup_tokens)
    limits = Limits(max_new_tokens=limit, max_batch=max(16, s.users))
    engine = Engine(model, limits=limits)

    ratios, single = measure_single_row(engine, sae, s)
    users, users_details = measure_users(engine, sae, s)
    hook, hook_details = measure_hook(model, sae, s)
    linear = measure_linear(s)
    ratios.update(users8_vs_sequential=users, clamp_vs_full_sae=hook)
    result: dict[str, Any] = {"steer_overhead": ratios["steer_overhead_8"], **ratios}
    result["details"] = {
        "single_row": single,
        "users": users_details,
        "hook": hook_details,
        "linear_us": linear,
        "targets": {k: {"target": t, "higher_is_better": hi} for k, t, hi, _ in TARGETS},
        "settings": asdict(s),
        "environment": {
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "device": str(model.device),
        },
        "wall_s": time.perf_counter() - start,
    }
    return result


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def meets(key: str, value: float) -> bool:
    for k, target, higher, _ in TARGETS:
        if k == key:
            return value >= target if higher else value <= target
    raise KeyError(key)


def table(result: dict[str, Any]) -> str:
    """The results as the table ``make bench`` prints: each ratio against its target, then the
    raw figures (tokens/s, ms per token, hook µs)."""
    lines = [f"{'ratio':<24}{'value':>8}  {'target':<8}{'met':<5}what", "-" * 92]
    for key, target, higher, what in TARGETS:
        value = result[key]
        sign = ">=" if higher else "<="
        ok = "yes" if meets(key, value) else "NO"
        lines.append(f"{key:<24}{value:>8.3f}  {sign} {target:<5g}{ok:<5}{what}")
    d = result["details"]
    tps = d["single_row"]["tokens_per_s"]
    ms = d["single_row"]["ms_per_step"]
    lines.append("-" * 92)
    lines.append(
        "batch-1 tok/s: "
        + "  ".join(f"{k} {v:.1f}" for k, v in tps.items())
        + f"   (ab_compare counts both rows; {d['single_row']['new_tokens']} new tokens)"
    )
    lines.append("ms per token:  " + "  ".join(f"{k} {v:.2f}" for k, v in ms.items()))
    u = d["users"]
    lines.append(
        f"{u['users']} users tok/s: "
        + "  ".join(f"{k} {v:.1f}" for k, v in u["tokens_per_s"].items())
    )
    for shape, row in d["hook"]["microseconds"].items():
        lines.append(f"hook {shape} µs: " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()))
    for name, row in d["linear_us"].items():
        lines.append(f"Linear {name} µs: " + "  ".join(f"{k} {v:.0f}" for k, v in row.items()))
    lines.append(
        f"engine greedy == HF greedy: {d['single_row']['engine_matches_hf_greedy']}   "
        f"wall {d['wall_s']:.1f}s"
    )
    return "\n".join(lines)


def check(result: dict[str, Any]) -> None:
    """Every ratio key is a positive finite float (the JSON contract)."""
    for key in (*KEYS, "steer_overhead_1", "steer_overhead_8"):
        value = result[key]
        if not (isinstance(value, float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key} = {value!r} is not a positive finite float")
