"""Attach steering to a model with forward hooks, one plan per batch row.

``steer`` is a context manager: it registers one hook per steered layer and removes every hook
it registered when the block ends, also on exceptions and when a generator is closed early. The
plans live in the hooks' closures, never on the model, so concurrent requests cannot see each
other's steering. An empty plan registers nothing: the baseline path is untouched. The maths
the hooks run is in ``steering.interventions``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .errors import SteeringError
from .hookpoint import HookPoint
from .interventions import LayerIntervention, group_by_hook
from .models import SteerableModel, find_layers
from .plan import SteeringPlan

Plans = SteeringPlan | Sequence[SteeringPlan | None]


class Steering:
    """Prepared steering for one batch layout: an intervention per hook point, hooks while
    attached, and the token positions of the current forward pass.

    ``prepare`` builds it (validation and the small per-feature tables, once); ``attached``
    registers its hooks for a block and removes them after, so a decode loop can attach it
    around each forward pass at the cost of a few dict inserts. ``take_rows`` gives the
    steering of some rows (a batch that shrank, or the rows being prefilled) without a rebuild.

    Edits scoped to prompt or generated tokens, or skipping special tokens, need to know which
    positions of each forward pass are which. By default the first forward pass inside the block
    is the prompt and later passes are generated tokens (as in ``model.generate``), read from the
    ``input_ids``; a decode loop that knows better calls ``set_positions`` before each pass.
    """

    def __init__(
        self,
        layers: list[nn.Module],
        embed: nn.Module | None,
        groups: dict[HookPoint, LayerIntervention],
        special_token_ids: Sequence[int] | Tensor = (),
    ) -> None:
        self.layers = layers
        self.embed = embed
        self.groups = groups
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.special_token_ids = torch.as_tensor(sorted(set(map(int, special_token_ids))))
        self.needs_positions = any(g.needs_positions for g in groups.values())
        self.generated: Tensor | None = None  # (B, T) bool
        self.special: Tensor | None = None  # (B, T) bool
        self._explicit = False
        self._tokens_seen = 0
        self._prompt_len: int | None = None

    @property
    def num_hooks(self) -> int:
        return len(self.handles)

    def take_rows(self, rows: Sequence[int]) -> Steering:
        """The steering of batch rows ``rows`` (in that order), sharing this one's tables."""
        groups = {}
        for hook, group in self.groups.items():
            index = torch.tensor(list(rows), dtype=torch.long, device=group.parts[0].add.device)
            groups[hook] = group.take_rows(index)
        return Steering(self.layers, self.embed, groups, self.special_token_ids)

    def set_positions(self, generated: Tensor, special: Tensor | None = None) -> None:
        """Mark the positions of the next forward pass: ``generated`` and ``special`` are (B, T)."""
        self._explicit = True
        self.generated = generated.bool()
        self.special = special.bool() if special is not None else torch.zeros_like(self.generated)

    def positions(self, batch: int, seq: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The (B, T) ``generated`` and ``special`` masks of the current forward pass."""
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

    def _track_input_ids(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = args[0] if args else kwargs.get("input")
        if self._explicit or input_ids is None:
            return
        t = input_ids.shape[-1]
        if self._prompt_len is None:
            self._prompt_len = t
        pos = torch.arange(self._tokens_seen, self._tokens_seen + t, device=input_ids.device)
        self.generated = (pos >= self._prompt_len).expand(input_ids.shape)
        self.special = torch.isin(input_ids, self.special_token_ids.to(input_ids.device))
        self._tokens_seen += t

    def _apply(self, group: LayerIntervention, h: Tensor) -> Tensor:
        batch, seq, _ = h.shape
        positions = self.positions(batch, seq, h.device) if group.needs_positions else None
        return group.apply(h, positions)

    def post_hook(self, group: LayerIntervention) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            if isinstance(output, tuple):  # decoder layers that return (hidden, ...)
                return (self._apply(group, output[0]), *output[1:])
            return self._apply(group, output)

        return hook

    def pre_hook(self, group: LayerIntervention) -> Any:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                return (self._apply(group, args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": self._apply(group, kwargs["hidden_states"])}

        return hook


def prepare(
    model: SteerableModel | nn.Module,
    plans: Plans,
    *,
    special_token_ids: Sequence[int] | None = None,
) -> Steering:
    """Check ``plans`` against ``model`` and build the per-layer tables; registers nothing.

    ``plans`` is one plan for every row of each batch, or a sequence with one plan (or None,
    for an unsteered row) per batch row. Raises ``PlanError`` when an SAE does not fit the
    model (layer out of range, d_in not the hidden size).
    """
    steerable = model if isinstance(model, SteerableModel) else _wrap(model)
    per_row = not isinstance(plans, SteeringPlan)
    rows = list(plans) if per_row else [plans]  # type: ignore[arg-type]
    for plan in rows:
        if isinstance(plan, SteeringPlan):
            steerable.check_plan(plan)
    if special_token_ids is None:
        special_token_ids = getattr(steerable.tokenizer, "all_special_ids", None) or ()
    groups = {
        hook: LayerIntervention.build(
            edits, len(rows), _module_device(steerable.layers[hook.layer]), per_row=per_row
        )
        for hook, edits in group_by_hook(rows).items()
    }
    embed = _input_embeddings(steerable.model)
    return Steering(steerable.layers, embed, groups, special_token_ids)


@contextmanager
def attached(steering: Steering) -> Iterator[Steering]:
    """Register the hooks of ``steering`` for the block; every one is removed when it ends."""
    try:
        for hook_point, group in steering.groups.items():
            layer = steering.layers[hook_point.layer]
            if hook_point.site == "resid_post":
                steering.handles.append(layer.register_forward_hook(steering.post_hook(group)))
            else:
                steering.handles.append(
                    layer.register_forward_pre_hook(steering.pre_hook(group), with_kwargs=True)
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


def _wrap(model: nn.Module) -> SteerableModel:
    """A bare transformers model, with its layers found (no tokenizer)."""
    layers, template = find_layers(model)
    return SteerableModel(model, None, layers, template)


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
