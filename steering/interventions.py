"""The steering maths: per-row clamp, add and ablate on a residual stream of shape (B, T, d).

For feature i of an SAE with decoder rows ``W_dec`` and activation f_i(x) at a position:

- ``clamp`` adds (target - f_i(x)) * W_dec[i]: decode(f with f_i := target) + the SAE error
  term, written as a delta so the error term and every other feature are untouched;
- ``add`` adds value * W_dec[i];
- ``ablate`` clamps to 0.

SAEs that normalise each token (``layer_norm``, ``constant_norm_rescale``) scale the delta by
the token's normalisation factor, as their decode does. Only the steered columns are encoded
(``SAE.select``), so the cost grows with the number of steered features, not the SAE's width.

Everything a batch needs is built once into small (rows, 1, K) tables per SAE (``SAEEdits``);
a batch that loses or reorders rows takes its tables with ``take_rows`` (an index, no rebuild).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .errors import PlanError
from .hookpoint import HookPoint
from .plan import FeatureEdit, SteeringPlan
from .sae import SAE

RowEdit = tuple[int, FeatureEdit]  # (batch row, edit)


@dataclass(frozen=True)
class SAEEdits:
    """The edits of one SAE at one hook point as (rows, 1, K) tables over its K steered
    features (K = the union over rows); a row that does not edit a feature has zeros there."""

    sae: SAE  # only the steered columns, float32, on the layer's device
    has_clamp: bool
    is_clamp: Tensor  # bool
    target: Tensor  # clamp target in raw activation units (0 where not clamped)
    add: Tensor  # added activation, raw units
    allow_prompt: Tensor  # bool: may steer prompt tokens
    allow_generated: Tensor  # bool: may steer generated tokens
    skip_special: Tensor  # bool: leaves special tokens alone

    @classmethod
    def build(cls, edits: list[RowEdit], n_rows: int, device: torch.device) -> SAEEdits:
        """Tables for ``edits`` (all of one SAE) in a batch of ``n_rows`` rows."""
        sae = edits[0][1].sae
        features = list(dict.fromkeys(e.feature for _, e in edits))
        shape = (n_rows, 1, len(features))
        is_clamp = torch.zeros(shape, dtype=torch.bool)
        target, add = torch.zeros(shape), torch.zeros(shape)
        allow_prompt, allow_generated, skip_special = (
            torch.zeros(shape, dtype=torch.bool) for _ in range(3)
        )
        for row, e in edits:  # one clamp per feature and row: SteeringPlan checks it
            k = (row, 0, features.index(e.feature))
            if e.mode == "add":
                add[k] += e.raw_value
            else:
                is_clamp[k], target[k] = True, e.raw_value
            allow_prompt[k] = e.positions in ("all", "prompt")
            allow_generated[k] = e.positions in ("all", "generated")
            skip_special[k] = e.skip_special_tokens
        tables = (is_clamp, target, add, allow_prompt, allow_generated, skip_special)
        return cls(
            sae.select(features).to(device, torch.float32),
            bool(is_clamp.any()),
            *(t.to(device) for t in tables),
        )

    def take_rows(self, rows: Tensor) -> SAEEdits:
        """The tables of the batch rows ``rows`` (indices), in that order."""
        tables = {f.name: getattr(self, f.name)[rows] for f in fields(self)[2:]}
        return SAEEdits(self.sae, bool(tables["is_clamp"].any()), **tables)

    def coefficients(self, x: Tensor, allowed: Tensor | None) -> Tensor:
        """(B, T, K) feature activation deltas at residual ``x`` (B, T, d) float32;
        ``allowed`` (B, T, K) bool masks the positions each edit may steer (None: all)."""
        return feature_coefficients(
            self.sae, x, self.add, self.is_clamp, self.target, self.has_clamp, allowed
        )

    def allowed(self, generated: Tensor, special: Tensor) -> Tensor:
        """(B, T, K) bool: where each edit may steer, given (B, T) generated/special masks."""
        allowed = torch.where(generated[..., None], self.allow_generated, self.allow_prompt)
        return allowed & ~(special[..., None] & self.skip_special)


def feature_coefficients(
    sae: SAE,
    x: Tensor,
    add: Tensor,
    is_clamp: Tensor,
    target: Tensor,
    has_clamp: bool = True,
    allowed: Tensor | None = None,
) -> Tensor:
    """The steering maths of both backends: (..., K) feature activation deltas at residual
    ``x`` (..., d) float32, for a narrow SAE of K steered columns (``SAE.select``).

    ``add``, ``is_clamp`` (bool) and ``target`` broadcast against (..., K): per row (B, 1, K)
    for this project's engine, per token (N, 1, K) for vLLM's flattened batch. A clamped
    feature gets ``target - f(x)``, an added one ``add``; ``allowed`` (bool, same shape) masks
    where edits may steer (None: everywhere). A normalising SAE's deltas are scaled by the
    token's normalisation factor, as its decode does. Where nothing is edited the delta is
    exactly 0, so an unsteered row or token is left bit-identical.
    """
    coef = add
    if has_clamp:
        f = sae.encode(x)  # (..., K): only the steered columns
        coef = coef + torch.where(is_clamp, target - f, 0.0)
    if allowed is not None:
        coef = coef * allowed
    if sae.normalization != "none":
        coef = coef * sae.token_scale(x)
    return coef


class LayerIntervention:
    """Every edit at one hook point, for every row of a batch: ``apply`` adds their delta."""

    def __init__(self, parts: Sequence[SAEEdits], n_rows: int, *, per_row: bool) -> None:
        self.parts = list(parts)
        self.n_rows = n_rows
        self.per_row = per_row  # False: one plan broadcast to any batch size
        # whether an edit is scoped to prompt or generated tokens, or skips special tokens
        self.needs_positions = any(
            bool((p.allow_prompt != p.allow_generated).any() or p.skip_special.any())
            for p in self.parts
        )

    @classmethod
    def build(
        cls, edits: list[RowEdit], n_rows: int, device: torch.device, *, per_row: bool
    ) -> LayerIntervention:
        by_sae: dict[int, list[RowEdit]] = {}
        for row, edit in edits:
            by_sae.setdefault(id(edit.sae), []).append((row, edit))
        parts = [SAEEdits.build(group, n_rows, device) for group in by_sae.values()]
        return cls(parts, n_rows, per_row=per_row)

    def take_rows(self, rows: Tensor) -> LayerIntervention:
        return LayerIntervention([p.take_rows(rows) for p in self.parts], len(rows), per_row=True)

    def apply(self, h: Tensor, positions: tuple[Tensor, Tensor] | None) -> Tensor:
        """h: (B, T, d) -> h + the steering delta of every row (exactly + 0 for unsteered rows).

        ``positions`` is the (B, T) ``generated`` and ``special`` masks of this forward pass,
        or None when no edit depends on them. Raises ``PlanError`` when per-row plans were
        prepared for another batch size.
        """
        batch = h.shape[0]
        if self.per_row and batch != self.n_rows:
            raise PlanError(
                f"{self.n_rows} per-row plans were given, but the batch has {batch} rows"
            )
        x = h if h.dtype == torch.float32 else h.float()
        delta: Tensor | None = None
        for p in self.parts:
            allowed = p.allowed(*positions) if positions is not None else None
            step = p.coefficients(x, allowed) @ p.sae.W_dec  # (B, T, d)
            delta = step if delta is None else delta + step
        return h if delta is None else h + delta.to(h.dtype)


def group_by_hook(rows: Sequence[SteeringPlan | None]) -> dict[HookPoint, list[RowEdit]]:
    """The active edits of per-row plans (None: an unsteered row), by hook point."""
    groups: dict[HookPoint, list[RowEdit]] = {}
    for r, plan in enumerate(rows):
        if plan is None:
            continue
        if not isinstance(plan, SteeringPlan):
            raise PlanError(f"row {r}: expected a SteeringPlan or None, got {type(plan).__name__}")
        for edit in plan.active_edits:
            groups.setdefault(edit.sae.hook, []).append((r, edit))
    return groups
