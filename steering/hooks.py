"""Apply steering plans to a model with forward hooks, one plan per batch row.

``steer`` is a context manager: it registers one hook per steered layer and removes every hook
it registered when the block ends, also on exceptions and when a generator is closed early. The
plans live in the hooks' closures, never on the model, so concurrent requests cannot see each
other's steering. An empty plan registers nothing: the baseline path is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import PlanError, SteeringError
from .models import SteerableModel, find_layers, hidden_size
from .plan import FeatureEdit, SteeringPlan
from .sae import SAE, HookPoint

Plans = SteeringPlan | Sequence[SteeringPlan | None]


class Steering:
    """Prepared steering for one batch layout: per-layer tensors, hooks while attached, and the
    token positions of the current forward pass.

    ``prepare`` builds it (validation and the small per-feature tensors, once); ``attached``
    registers its hooks for a block and removes them after, so a decode loop can attach it
    around each forward pass at the cost of a few dict inserts.

    Edits scoped to prompt or generated tokens, or skipping special tokens, need to know which
    positions of each forward pass are which. By default the first forward pass inside the block
    is the prompt and later passes are generated tokens (as in ``model.generate``), read from the
    ``input_ids``; a decode loop that knows better calls ``set_positions`` before each pass.
    """

    def __init__(
        self,
        layers: list[nn.Module],
        embed: nn.Module | None,
        groups: dict[HookPoint, _LayerSteer],
        special_token_ids: Sequence[int] = (),
    ) -> None:
        self.layers = layers
        self.embed = embed
        self.groups = groups
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.special_token_ids = torch.tensor(sorted(set(special_token_ids)), dtype=torch.long)
        self.generated: Tensor | None = None  # (B, T) bool
        self.special: Tensor | None = None  # (B, T) bool
        self._explicit = False
        self._tokens_seen = 0
        self._prompt_len: int | None = None

    @property
    def needs_positions(self) -> bool:
        """Whether any edit is scoped to prompt/generated tokens or skips special tokens."""
        return any(g.needs_positions for g in self.groups.values())

    @property
    def num_hooks(self) -> int:
        return len(self.handles)

    def set_positions(self, generated: Tensor, special: Tensor | None = None) -> None:
        """Mark the positions of the next forward pass: ``generated`` and ``special`` are (B, T)."""
        self._explicit = True
        self.generated = generated.bool()
        self.special = special.bool() if special is not None else torch.zeros_like(self.generated)

    def _track_input_ids(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = args[0] if args else kwargs.get("input")
        if self._explicit or input_ids is None:
            return
        t = input_ids.shape[-1]
        if self._prompt_len is None:
            self._prompt_len = t
        pos = torch.arange(self._tokens_seen, self._tokens_seen + t, device=input_ids.device)
        self.generated = (pos >= self._prompt_len).expand(input_ids.shape)
        ids = self.special_token_ids.to(input_ids.device)
        self.special = torch.isin(input_ids, ids)
        self._tokens_seen += t

    def _positions(self, batch: int, seq: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.generated is None or self.special is None:
            raise SteeringError(
                "edits scoped to prompt/generated or skipping special tokens need the token "
                "positions: call the model with input_ids, or Steering.set_positions(...)"
            )
        if self.generated.shape != (batch, seq):
            raise SteeringError(
                f"positions were set for shape {tuple(self.generated.shape)} but the forward "
                f"pass has (batch, seq) = ({batch}, {seq})"
            )
        return self.generated.to(device), self.special.to(device)


def prepare(
    model: SteerableModel | nn.Module,
    plans: Plans,
    *,
    special_token_ids: Sequence[int] | None = None,
) -> Steering:
    """Check ``plans`` against ``model`` and build the per-layer tensors; registers nothing.

    ``plans`` is one plan for every row of each batch, or a sequence with one plan (or None,
    for an unsteered row) per batch row.
    """
    layers, embed, tokenizer = _model_parts(model)
    per_row = not isinstance(plans, SteeringPlan)
    rows = list(plans) if per_row else [plans]  # type: ignore[arg-type]
    d_model = hidden_size(model.model if isinstance(model, SteerableModel) else model)
    if special_token_ids is None:
        special_token_ids = getattr(tokenizer, "all_special_ids", None) or ()
    groups = _group_by_hook(rows, num_layers=len(layers), d_model=d_model)
    steering = Steering(layers, embed, groups, special_token_ids)
    for hook_point, layer_steer in groups.items():
        layer_steer.prepare(steering, _module_device(layers[hook_point.layer]), per_row=per_row)
    return steering


@contextmanager
def attached(steering: Steering) -> Iterator[Steering]:
    """Register the hooks of ``steering`` for the block; every one is removed when it ends."""
    try:
        for hook_point, layer_steer in steering.groups.items():
            layer = steering.layers[hook_point.layer]
            if hook_point.site == "resid_post":
                steering.handles.append(layer.register_forward_hook(layer_steer.post_hook))
            else:
                steering.handles.append(
                    layer.register_forward_pre_hook(layer_steer.pre_hook, with_kwargs=True)
                )
        if steering.needs_positions and steering.embed is not None:
            steering.handles.append(
                steering.embed.register_forward_pre_hook(
                    steering._track_input_ids, with_kwargs=True
                )
            )
        yield steering
    finally:
        for handle in steering.handles:
            handle.remove()
        steering.handles.clear()


@contextmanager
def steer(
    model: SteerableModel | nn.Module,
    plans: Plans,
    *,
    special_token_ids: Sequence[int] | None = None,
) -> Iterator[Steering]:
    """Steer ``model`` inside the block (see ``prepare`` for ``plans``)::

    with steer(model, clamp(sae, 1234, 10, unit="max_act")):
        model.generate(...)
    """
    with attached(prepare(model, plans, special_token_ids=special_token_ids)) as steering:
        yield steering


class _LayerSteer:
    """All edits at one hook point, for all rows, turned into small tensors once per block."""

    def __init__(self, n_rows: int) -> None:
        self.n_rows = n_rows
        self.edits: list[tuple[int, FeatureEdit]] = []

    @property
    def needs_positions(self) -> bool:
        return any(e.positions != "all" or e.skip_special_tokens for _, e in self.edits)

    def prepare(self, steering: Steering, device: torch.device, *, per_row: bool) -> None:
        self.steering = steering
        self.per_row = per_row
        self.check_positions = self.needs_positions
        by_sae: dict[int, list[tuple[int, FeatureEdit]]] = {}
        for row, edit in self.edits:
            by_sae.setdefault(id(edit.sae), []).append((row, edit))
        self.parts = [_Prepared.build(edits, self.n_rows, device) for edits in by_sae.values()]

    def post_hook(self, _module: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (self.apply(output[0]), *output[1:])
        return self.apply(output)

    def pre_hook(self, _module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            return (self.apply(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self.apply(kwargs["hidden_states"])}

    def apply(self, h: Tensor) -> Tensor:
        """h: (B, T, d) -> h + the steering delta of every row (exactly + 0 for unsteered rows)."""
        batch, seq, _ = h.shape
        if self.per_row and batch != self.n_rows:
            raise PlanError(
                f"{self.n_rows} per-row plans were given, but the batch has {batch} rows"
            )
        x = h if h.dtype == torch.float32 else h.float()
        delta: Tensor | None = None
        for p in self.parts:
            coef = p.add  # (rows, 1, K)
            if p.has_clamp:
                f = p.sae.encode(x)  # (B, T, K): only the steered columns
                coef = coef + torch.where(p.is_clamp, p.target - f, 0.0)
            if self.check_positions:
                coef = coef * self._mask(p, batch, seq, h.device)
            if p.sae.normalization != "none":
                coef = coef * p.sae.token_scale(x)
            step = coef @ p.sae.W_dec  # (B, T, d)
            delta = step if delta is None else delta + step
        return h if delta is None else h + delta.to(h.dtype)

    def _mask(self, p: _Prepared, batch: int, seq: int, device: torch.device) -> Tensor:
        generated, special = self.steering._positions(batch, seq, device)
        allowed = torch.where(generated[..., None], p.allow_generated, p.allow_prompt)
        return (allowed & ~(special[..., None] & p.skip_special)).float()  # (B, T, K)


@dataclass
class _Prepared:
    """The edits of one SAE at one layer as (rows, 1, K) tensors over its K steered features."""

    sae: SAE  # only the steered columns, float32, on the layer's device
    has_clamp: bool
    is_clamp: Tensor  # bool
    target: Tensor  # clamp target in raw units (0 where not clamped)
    add: Tensor  # added activation units
    allow_prompt: Tensor  # bool
    allow_generated: Tensor  # bool
    skip_special: Tensor  # bool

    @classmethod
    def build(
        cls, edits: list[tuple[int, FeatureEdit]], n_rows: int, device: torch.device
    ) -> _Prepared:
        sae = edits[0][1].sae
        features = list(dict.fromkeys(e.feature for _, e in edits))
        shape = (n_rows, 1, len(features))
        is_clamp = torch.zeros(shape, dtype=torch.bool)
        target, add = torch.zeros(shape), torch.zeros(shape)
        allow_prompt, allow_generated, skip_special = (
            torch.zeros(shape, dtype=torch.bool) for _ in range(3)
        )
        for row, e in edits:
            k = (row, 0, features.index(e.feature))
            if e.mode == "add":
                add[k] += e.raw_value
            elif is_clamp[k]:
                raise PlanError(
                    f"feature {e.feature} of {sae.name} is clamped twice in one plan; "
                    "keep one clamp per feature"
                )
            else:
                is_clamp[k], target[k] = True, e.raw_value
            allow_prompt[k] = e.positions in ("all", "prompt")
            allow_generated[k] = e.positions in ("all", "generated")
            skip_special[k] = e.skip_special_tokens
        return cls(
            sae=sae.select(features).to(device, torch.float32),
            has_clamp=bool(is_clamp.any()),
            is_clamp=is_clamp.to(device),
            target=target.to(device),
            add=add.to(device),
            allow_prompt=allow_prompt.to(device),
            allow_generated=allow_generated.to(device),
            skip_special=skip_special.to(device),
        )


def _group_by_hook(
    rows: list[SteeringPlan | None], *, num_layers: int, d_model: int
) -> dict[HookPoint, _LayerSteer]:
    groups: dict[HookPoint, _LayerSteer] = {}
    for r, plan in enumerate(rows):
        if plan is None:
            continue
        if not isinstance(plan, SteeringPlan):
            raise PlanError(f"row {r}: expected a SteeringPlan or None, got {type(plan).__name__}")
        for edit in plan.active_edits:
            _check_fits(edit.sae, num_layers=num_layers, d_model=d_model)
            groups.setdefault(edit.sae.hook, _LayerSteer(len(rows))).edits.append((r, edit))
    return groups


def _check_fits(sae: SAE, *, num_layers: int, d_model: int) -> None:
    if not 0 <= sae.hook.layer < num_layers:
        raise PlanError(
            f"{sae.name} hooks layer {sae.hook.layer}, but the model has {num_layers} layers "
            f"(valid: 0..{num_layers - 1})"
        )
    if sae.d_in != d_model:
        raise PlanError(
            f"{sae.name} has d_in={sae.d_in}, but the model's hidden size is {d_model}: "
            "this SAE was trained on another model"
        )


def _model_parts(
    model: SteerableModel | nn.Module,
) -> tuple[list[nn.Module], nn.Module | None, Any]:
    if isinstance(model, SteerableModel):
        return model.layers, _input_embeddings(model.model), model.tokenizer
    return find_layers(model)[0], _input_embeddings(model), None


def _input_embeddings(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_input_embeddings", None)
    return get() if callable(get) else None


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def count_hooks(model: nn.Module) -> int:
    """Forward and pre-forward hooks attached anywhere in ``model`` (for tests and debugging)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
