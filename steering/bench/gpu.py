"""The vLLM backend on a CUDA GPU, one script: ``make gpu-check`` (``python -m
steering.bench.gpu``).

1. **CUDA graphs.** A gemma-2-2b-sized random Gemma 2 (d=2304, 26 layers, bf16) and a random
   16k SAE at layer 12, served by two vLLM engines on the GPU: one eager, one with vLLM's
   default compilation and CUDA graphs (full graphs for decode batches). The same mixed batch
   (clamp, add, prompt-only, skip-special and unsteered rows, greedy) runs on both; the report
   gives, per row, whether the tokens match and the largest log-probability difference.
   The op reads fixed-address tables refilled before each step (``steering.vllm.slots``), so a
   replayed graph must steer as eager does; an unsteered row must be left as it was.
2. **Speed.** Decode tokens/s on the graph engine at batch 1 and batch 16, unsteered and with
   an 8-feature clamp per row, against the HBM roofline: weight bytes read once per decode
   step divided by the GPU's memory bandwidth (batch 16 reads them once for 16 tokens).

Needs a CUDA GPU with about 30 GB free and ``make install-vllm``. Writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..limits import Limits
from ..plan import FeatureEdit, SteeringPlan
from ..requests import Request, Row, encode_chat
from ..sampling import SamplingParams
from .setup import build_sae, build_tokenizer, clamp_plan, fixed_length, prompt_text

# Peak HBM bandwidth in bytes/s by device name (vendor data sheets)
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L40S": 0.864e12, "A10": 0.6e12}


def gemma2_2b_sized(folder: Path) -> int:
    """Write a random Gemma 2 the size of gemma-2-2b (bf16) to ``folder``; its parameters."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.Gemma2Config(
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        vocab_size=256_000,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    with torch.device("cuda"):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    build_tokenizer(config.vocab_size).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def mixed_rows(sae: Any) -> list[tuple[str, SteeringPlan | None]]:
    return [
        ("unsteered", None),
        ("clamp", SteeringPlan((FeatureEdit(sae, 5, "clamp", 8.0, unit="max_act"),))),
        ("add", SteeringPlan((FeatureEdit(sae, 9, "add", 40.0),))),
        ("prompt_only", SteeringPlan((FeatureEdit(sae, 3, "clamp", 60.0, positions="prompt"),))),
        (
            "skip_special",
            SteeringPlan((FeatureEdit(sae, 7, "clamp", 30.0, skip_special_tokens=True),)),
        ),
        ("unsteered_2", None),
    ]


def run_rows(backend: Any, rows: list[tuple[tuple[int, ...], SteeringPlan | None]], n: int):
    sampling = SamplingParams(temperature=0, max_new_tokens=n, logprobs=1)
    events = list(backend.submit(Request(tuple(Row(p, plan) for p, plan in rows), sampling)))
    out = []
    for i in range(len(rows)):
        mine = [e for e in events if e.row == i and e.token_id is not None]
        out.append(([e.token_id for e in mine], [e.logprob for e in mine]))
    return out


def decode_speed(backend: Any, model: Any, plan: SteeringPlan | None, batch: int, n: int) -> float:
    """Tokens/s of ``batch`` fixed-length replies submitted together (prefill included, and
    small: 16-token prompts against ``n`` decoded tokens)."""
    requests = [
        Request((Row(encode_chat(model.tokenizer, prompt_text(16, i)), plan),), fixed_length(n))
        for i in range(batch)
    ]
    started = time.perf_counter()
    handles = [backend.submit(r) for r in requests]
    tokens = sum(sum(1 for e in h if e.token_id is not None) for h in handles)
    return tokens / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m steering.bench.gpu", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", default="gpu-check.json")
    p.add_argument("--tokens", type=int, default=256, help="decoded tokens per reply")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing measured")
        return 2
    from ..models import load_model
    from ..vllm.backend import VLLMSettings, start_vllm_backend

    name = torch.cuda.get_device_name(0)
    bandwidth = next((bw for key, bw in BANDWIDTH.items() if key in name), None)
    report: dict[str, Any] = {"device": name, "bandwidth_bytes_per_s": bandwidth}
    limits = Limits(max_batch=16, max_new_tokens=max(args.tokens, 256))
    with tempfile.TemporaryDirectory(prefix="steering-gpu-check-") as tmp:
        folder = Path(tmp) / "gemma-2-2b-sized"
        params = gemma2_2b_sized(folder)
        torch.cuda.empty_cache()
        model = load_model(str(folder), device="cpu", dtype="bfloat16")  # tokenizer and plans
        sae = build_sae(2304, 16384, 12)
        prompt = encode_chat(model.tokenizer, prompt_text(24))
        rows = mixed_rows(sae)
        results = {}
        for mode, eager in (("eager", True), ("cuda_graphs", False)):
            settings = VLLMSettings(
                str(folder), dtype="bfloat16", enforce_eager=eager, gpu_memory_utilization=0.4
            )
            backend = start_vllm_backend(model, [sae], settings, limits)
            try:
                results[mode] = run_rows(backend, [(prompt, plan) for _, plan in rows], 32)
                if not eager:
                    speed = {}
                    for batch in (1, 16):
                        for label, plan in (("unsteered", None), ("clamp8", clamp_plan(sae, 8))):
                            speed[f"batch{batch}_{label}"] = round(
                                decode_speed(backend, model, plan, batch, args.tokens), 1
                            )
                    report["decode_tokens_per_s"] = speed
            finally:
                backend.close()
        report["graphs_vs_eager"] = {
            label: {
                "tokens_equal": results["eager"][i][0] == results["cuda_graphs"][i][0],
                "max_logprob_diff": max(
                    (
                        abs(a - b)
                        for a, b in zip(results["eager"][i][1], results["cuda_graphs"][i][1])
                    ),
                    default=0.0,
                ),
            }
            for i, (label, _) in enumerate(rows)
        }
        steered_differs = results["cuda_graphs"][1][0] != results["cuda_graphs"][0][0]
        report["graphs_steer"] = steered_differs
    bytes_per_token = params * 2  # bf16 weights, read once per decode step
    report["weight_bytes"] = bytes_per_token
    if bandwidth:
        ceiling = bandwidth / bytes_per_token
        report["roofline_tokens_per_s"] = {"batch1": round(ceiling), "batch16": round(16 * ceiling)}
        speed = report["decode_tokens_per_s"]
        report["fraction_of_roofline"] = {
            key: round(value / (ceiling * (16 if key.startswith("batch16") else 1)), 3)
            for key, value in speed.items()
        }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
