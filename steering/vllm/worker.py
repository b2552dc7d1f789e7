"""Steering inside vLLM's workers: hooks on the decoder layers, an opaque op, per-step tables.

``SteeringWorker`` is the worker class the vLLM backend starts (``worker_cls``). Its
``load_model`` registers the hooks **before** vLLM compiles and warms the model up: a hook
added later is silently skipped by the compiled graph. Each hook calls
``torch.ops.steering.edit_residual``, an opaque custom op (Dynamo and Inductor keep it as one
call; a CUDA graph captures the kernels it launches over fixed-address buffers,
``steering.vllm.slots``).

Per step, outside the compiled region, the model runner's ``_model_forward`` (vLLM's hook for
subclasses; it runs inside the forward context) is wrapped to read the batch layout: each
request's token range in the flattened batch (``query_start_loc``), its plan
(``sampling_params.extra_args``, ``steering.vllm.wire``), its prompt length against each
token's position (prompt or generated tokens) and its token ids (special tokens), and to refill
the tables. vLLM's fused-residual decoder layers (Llama, Gemma, Qwen, Mistral, Phi-3) return
``(hidden, residual)`` with the residual stream their sum; GPT-2 and GPT-NeoX blocks return it
whole. These are vLLM internals of the 0.32 release line (``vllm/v1/worker``), pinned.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SteeringError
from ..models import find_layers
from .slots import SlotBank, Stage, TokenWrite
from .wire import CONFIG_KEY, EXTRA_ARGS_KEY, sae_from_payload

log = logging.getLogger("steering.vllm")


_STAGES: list[Stage] = []  # this process's stages; the op's ``stage`` argument indexes it


@torch.library.custom_op(
    "steering::edit_residual",
    mutates_args=("hidden",),
    schema="(Tensor(a!) hidden, Tensor? residual, int stage) -> ()",
)
def edit_residual(hidden: Tensor, residual: Tensor | None, stage: int) -> None:
    """Add stage ``stage``'s steering of this step to ``hidden`` (N, d) in place."""
    _STAGES[stage].run(hidden, residual)


@edit_residual.register_fake
def _(hidden: Tensor, residual: Tensor | None, stage: int) -> None:
    return None


@dataclass(frozen=True)
class WorkerConfig:
    """What the backend tells its workers (through ``additional_config``, which is part of
    vLLM's compile-cache key): the decoder layers to hook by site, the steering slots per SAE,
    the special token ids, and a fingerprint of this module's code."""

    resid_post: tuple[int, ...]
    resid_pre: tuple[int, ...]
    slots: int
    special_ids: tuple[int, ...]
    code: str = ""

    @classmethod
    def from_vllm(cls, vllm_config: Any) -> WorkerConfig:
        raw = (vllm_config.additional_config or {}).get(CONFIG_KEY)
        if raw is None:
            raise SteeringError(
                "the steering worker was started without its settings (additional_config)"
            )
        return cls(
            tuple(raw["resid_post"]),
            tuple(raw["resid_pre"]),
            int(raw["slots"]),
            tuple(raw["special_ids"]),
            str(raw.get("code", "")),
        )


@dataclass
class _Plan:
    """A request's parsed plan: per edit, its bank and settings."""

    edits: list[tuple[SlotBank, int, str, float, bool, bool, bool]]
    # (bank, feature, mode, value, allow_prompt, allow_generated, skip_special)
    needs_tokens: bool


class WorkerSteering:
    """The steering state of one worker: banks by (SAE key), stages by hooked module."""

    def __init__(self, runner: Any, config: WorkerConfig) -> None:
        self.runner = runner
        self.config = config
        self.device = torch.device(runner.device)
        self.max_tokens = int(runner.max_num_tokens)
        compilation = runner.vllm_config.compilation_config
        mode = getattr(compilation, "cudagraph_mode", None)
        self.graphs = self.device.type == "cuda" and mode is not None and bool(mode)
        self.special = torch.tensor(sorted(config.special_ids), dtype=torch.long)
        self.banks: dict[str, SlotBank] = {}
        self.post: dict[int, Stage] = {}  # hooked layer -> stage run after it
        self.pre0: Stage | None = None  # resid_pre of layer 0: before the first layer
        self._plans: dict[str, _Plan | None] = {}
        self._install(runner.get_model())

    # ---- hooks (before compilation) ----

    def _install(self, model: nn.Module) -> None:
        layers, _ = find_layers(model)
        wanted = {*self.config.resid_post, *(i - 1 for i in self.config.resid_pre)}
        for i in sorted(wanted):
            if not 0 <= i < len(layers) and i != -1:
                raise SteeringError(f"layer {i} is out of range: the model has {len(layers)}")
        for i in sorted(wanted):
            if i == -1:
                self.pre0 = self._stage()
                layers[0].register_forward_pre_hook(
                    _pre_hook(len(_STAGES) - 1, _hidden_index(layers[0])), with_kwargs=True
                )
            elif type(layers[i]).__name__ != "PPMissingLayer":  # another pipeline rank's
                self.post[i] = self._stage()
                layers[i].register_forward_hook(_post_hook(len(_STAGES) - 1))
        log.info("steering hooks on layers %s", sorted(wanted))

    @staticmethod
    def _stage() -> Stage:
        _STAGES.append(Stage())
        return _STAGES[-1]

    def add_sae(self, key: str, payload: dict[str, Any]) -> None:
        """Keep ``payload``'s SAE as ``key``: a bank at its hook point's stage."""
        if key in self.banks:
            return
        sae = sae_from_payload(payload, self.device)
        layer, site = sae.hook.layer, sae.hook.site
        stage = self.post.get(layer) if site == "resid_post" else None
        if site == "resid_pre":
            stage = self.pre0 if layer == 0 else self.post.get(layer - 1)
        if stage is None:
            raise SteeringError(
                f"{sae.hook} is not hooked in this engine (hooked: resid_post "
                f"{list(self.config.resid_post)}, resid_pre {list(self.config.resid_pre)})"
            )
        bank = SlotBank(
            key, sae, self.max_tokens, self.config.slots, self.device, always=self.graphs
        )
        # a resid_post group runs before the next layer's resid_pre group (the same tensor)
        order = 0 if site == "resid_post" else 1
        while len(stage.groups) < 2:
            stage.groups.append([])
        stage.groups[order].append(bank)
        self.banks[key] = bank

    # ---- per step (outside the compiled region) ----

    def prepare_step(self) -> None:
        """Refill every bank's tables for the batch about to run."""
        if not self.banks:
            return
        runner = self.runner
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        req_ids = batch.req_ids[:num_reqs]
        starts = runner.query_start_loc.cpu[: num_reqs + 1].tolist() if num_reqs else [0]
        computed = batch.num_computed_tokens_cpu[:num_reqs].tolist()
        writes: dict[str, list[TokenWrite]] = {key: [] for key in self.banks}
        plans: dict[str, _Plan | None] = {}
        for i, req_id in enumerate(req_ids):
            state = runner.requests.get(req_id)
            plan = self._plans.get(req_id) if req_id in self._plans else self._parse(state)
            plans[req_id] = plan
            start, end = starts[i], starts[i + 1]
            if plan is None or end <= start:
                continue
            prompt_len = len(state.prompt_token_ids or ())
            position = torch.arange(computed[i], computed[i] + end - start)
            generated = position >= prompt_len
            special = self._special(state, computed[i], end - start, prompt_len)
            for bank, feature, mode, value, on_prompt, on_generated, skip in plan.edits:
                allowed = torch.where(generated, on_generated, on_prompt)
                if skip:
                    allowed = allowed & ~special
                writes[bank.key].append(TokenWrite(start, end, feature, mode, value, allowed))
        self._plans = plans  # forget requests that left
        n_tokens = starts[-1]
        for key, bank in self.banks.items():
            bank.fill(n_tokens, writes[key])

    def _parse(self, state: Any) -> _Plan | None:
        params = getattr(state, "sampling_params", None)
        extra = getattr(params, "extra_args", None) or {}
        wire = extra.get(EXTRA_ARGS_KEY)
        if not wire:
            return None
        edits = []
        for key, feature, mode, value, positions, skip in wire:
            bank = self.banks.get(key)
            if bank is None:  # the backend registers SAEs before their first request
                raise SteeringError(f"steering: SAE {key!r} was not registered with the worker")
            on_prompt = positions in ("all", "prompt")
            on_generated = positions in ("all", "generated")
            edits.append((bank, int(feature), mode, float(value), on_prompt, on_generated, skip))
        return _Plan(edits, any(e[-1] for e in edits))

    def _special(self, state: Any, first: int, count: int, prompt_len: int) -> Tensor:
        """(count,) bool: which tokens at positions first.. are special tokens."""
        prompt = state.prompt_token_ids or []
        output = state.output_token_ids or []
        ids = [
            prompt[p]
            if p < prompt_len
            else output[p - prompt_len]
            if p - prompt_len < len(output)
            else -1
            for p in range(first, first + count)
        ]
        return torch.isin(torch.tensor(ids, dtype=torch.long), self.special)


def _post_hook(stage: int) -> Any:
    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        if isinstance(output, tuple):
            residual = output[1] if len(output) > 1 and isinstance(output[1], Tensor) else None
            torch.ops.steering.edit_residual(output[0], residual, stage)
        else:
            torch.ops.steering.edit_residual(output, None, stage)

    return hook


def _pre_hook(stage: int, index: int) -> Any:
    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[index] if len(args) > index else kwargs["hidden_states"]
        torch.ops.steering.edit_residual(hidden, None, stage)

    return hook


def _hidden_index(layer: nn.Module) -> int:
    """Where ``hidden_states`` sits among a decoder layer's positional arguments."""
    names = list(inspect.signature(layer.forward).parameters)
    return names.index("hidden_states") if "hidden_states" in names else 0


def _worker_base() -> type:
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        from vllm.v1.worker.cpu_worker import CPUWorker

        return CPUWorker
    from vllm.v1.worker.gpu_worker import Worker

    return Worker


class SteeringWorker(_worker_base()):  # type: ignore[misc]
    """vLLM's worker for this platform, with steering hooks installed at model load."""

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)
        runner = self.model_runner
        self.steering = WorkerSteering(runner, WorkerConfig.from_vllm(self.vllm_config))
        forward = runner._model_forward

        def steered_forward(*f_args: Any, **f_kwargs: Any) -> Any:
            self.steering.prepare_step()
            return forward(*f_args, **f_kwargs)

        runner._model_forward = steered_forward

    def steering_add_sae(self, key: str, payload: dict[str, Any]) -> None:
        """Register an SAE under ``key`` (``steering.vllm.wire.sae_payload``)."""
        self.steering.add_sae(key, payload)
