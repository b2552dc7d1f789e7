"""``steering serve``: the demo page and the OpenAI-compatible API on one model.

Every ``Limits`` field is a ``--max-...`` flag with the field's own help text and default;
``--trusted-proxy`` and ``--api-key`` say who the API's visitors are.
Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from typing import Any

from ..errors import SteeringError
from ..limits import Limits


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which model to load and where: ``generate`` and ``serve`` share them."""
    parser.add_argument("--model", help="model folder or Hub id (default: the demo model)")
    parser.add_argument("--layers", help="decoder layer path template, e.g. 'model.layers.{i}'")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: where torch puts it)")
    parser.add_argument("--dtype", help="float32, bfloat16 or float16")
    parser.add_argument(
        "--device-map",
        choices=("auto",),
        help="auto: spread a model too big for one GPU over every GPU (own engine; accelerate)",
    )


def load_model_from_args(args: argparse.Namespace, name: str | None = None) -> Any:
    """The model ``add_model_arguments``' flags name (``name`` instead of ``--model``)."""
    from ..models import load_model

    return load_model(
        name or args.model,
        device=args.device,
        dtype=args.dtype,
        layers=args.layers,
        device_map=args.device_map,
    )


def add_serve_command(subparsers: Any) -> None:
    """Add ``serve`` to the ``steering`` command line."""
    serve_cmd = subparsers.add_parser(
        "serve", help="serve the demo page and the OpenAI-compatible API on one model"
    )
    add_model_arguments(serve_cmd)
    serve_cmd.add_argument(
        "--sae", action="append", default=[], help="an SAE folder or Hub reference to offer; repeat"
    )
    serve_cmd.add_argument(
        "--presets", action="append", default=[], metavar="PATH", help="a presets folder or file"
    )
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    serve_cmd.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="IP",
        help="a proxy (address or network) whose X-Forwarded-For names the client; repeat",
    )
    serve_cmd.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require Authorization: Bearer KEY on /v1 (each key is a visitor); repeat, or set "
        "$STEERING_API_KEYS (comma-separated)",
    )
    serve_cmd.add_argument(
        "--backend",
        choices=("own", "vllm"),
        default="own",
        help="the engine that runs the model: own (transformers, any model, the default) or "
        "vllm (paged attention, compiled; needs `make install-vllm`)",
    )
    vllm = serve_cmd.add_argument_group("vLLM backend (--backend vllm)")
    vllm.add_argument("--vllm-eager", action="store_true", help="no compilation or CUDA graphs")
    vllm.add_argument(
        "--vllm-in-process", action="store_true", help="run vLLM's engine core in this process"
    )
    vllm.add_argument(
        "--vllm-tensor-parallel", type=int, default=1, metavar="N", help="GPUs per layer (1)"
    )
    vllm.add_argument(
        "--vllm-pipeline-parallel", type=int, default=1, metavar="N", help="layer stages (1)"
    )
    vllm.add_argument(
        "--vllm-executor",
        choices=("mp", "ray"),
        help="how vLLM starts its ranks: mp (one machine, the default) or ray (a Ray cluster "
        "across machines)",
    )
    vllm.add_argument(
        "--vllm-kv-cache-gib", type=int, default=1, metavar="GIB", help="KV cache on CPU (1)"
    )
    vllm.add_argument(
        "--vllm-gpu-memory-utilization",
        type=float,
        default=0.85,
        metavar="F",
        help="share of GPU memory vLLM may use (0.85)",
    )
    ray = serve_cmd.add_argument_group(
        "replicas on Ray Serve (needs `make install-ray` or pip install 'steering[ray]')"
    )
    ray.add_argument(
        "--replicas",
        type=int,
        default=0,
        metavar="N",
        help="serve N copies of the model behind one entry on Ray Serve (0: one process, the "
        "default)",
    )
    ray.add_argument(
        "--max-replicas", type=int, metavar="M", help="autoscale between N and M replicas"
    )
    ray.add_argument(
        "--target-ongoing-requests",
        type=float,
        metavar="R",
        help="autoscaling target: requests in flight per replica (4)",
    )
    ray.add_argument(
        "--cpus-per-replica",
        type=float,
        metavar="C",
        help="CPU cores each replica reserves; on one machine it is pinned to cores of its own (1)",
    )
    ray.add_argument(
        "--gpus-per-replica",
        type=float,
        metavar="G",
        help="GPUs each replica reserves: K for --vllm-tensor-parallel K (0)",
    )
    ray.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join a running Ray cluster ('auto' or ray://host:10001) instead of starting one "
        "on 127.0.0.1",
    )
    for f in fields(Limits):
        flag = "--" + f.name.replace("_", "-")
        kind = int if f.type in ("int", int) else float
        serve_cmd.add_argument(
            flag, type=kind, default=f.default, help=f"{f.metadata['help']} ({f.default})"
        )
    serve_cmd.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """``steering serve``: load the model, SAEs and presets with the flags' limits and serve."""
    from ..serve.app import ServeConfig, VLLMOptions, serve

    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    keys = [*args.api_key, *os.environ.get("STEERING_API_KEYS", "").split(",")]
    config = ServeConfig(
        model=args.model,
        saes=args.sae,
        presets=args.presets,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        layers=args.layers,
        device_map=args.device_map,
        limits=limits,
        trusted_proxies=tuple(args.trusted_proxy),
        api_keys=tuple(key.strip() for key in keys if key.strip()),
        backend=args.backend,
        vllm=VLLMOptions(
            eager=args.vllm_eager,
            in_process=args.vllm_in_process,
            tensor_parallel_size=args.vllm_tensor_parallel,
            pipeline_parallel_size=args.vllm_pipeline_parallel,
            executor=args.vllm_executor,
            kv_cache_gib=args.vllm_kv_cache_gib,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        ),
    )
    # the replica flags given (None: not given; RayOptions holds their defaults)
    ray_flags = {
        "max_replicas": args.max_replicas,
        "target_ongoing_requests": args.target_ongoing_requests,
        "cpus_per_replica": args.cpus_per_replica,
        "gpus_per_replica": args.gpus_per_replica,
        "address": args.ray_address,
    }
    given = {name: value for name, value in ray_flags.items() if value is not None}
    if not args.replicas and given:
        flags = ", ".join(
            "--" + ("ray-address" if n == "address" else n.replace("_", "-")) for n in given
        )
        raise SteeringError(f"{flags} apply to replicas on Ray Serve: add --replicas N")
    if args.replicas:
        from ..ray_serve import RayOptions, serve_on_ray

        serve_on_ray(config, RayOptions(replicas=args.replicas, **given))
    else:
        serve(config)
    return 0
