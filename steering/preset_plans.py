"""Turning presets into a steering plan.

Composition (``compose``): presets applied together contribute their edits in order, each value
times its preset's ``scale`` times the requested scale (a factor of 0 drops the preset, so scale
0 is the baseline). Edits of the same feature of the same SAE merge into one edit:

- a clamp or an ablation fixes the feature's activation, so it overrides every add of that
  feature wherever the add comes; among clamps and ablations the last one wins;
- adds sum (in raw units), and must steer the same positions.

So a plan built from presets never edits a feature twice (the hooks' "clamped twice" error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import SteeringError
from .plan import FeatureEdit, SteeringPlan
from .presets import MAX_SCALE, Preset, PresetEdit, PresetError
from .sae import SAE


@dataclass(frozen=True)
class PresetLimits:
    """A server's bounds on the values a preset may apply (they win over the file)."""

    max_multiple: float = 100.0  # |value x scale| in multiples of max activation
    max_raw: float = 1000.0  # |value x scale| in raw activation units


def to_plan(
    preset: Preset,
    saes: Mapping[str, SAE],
    scale: float = 1.0,
    limits: PresetLimits = PresetLimits(),
) -> SteeringPlan:
    """The steering plan of one preset; ``saes`` maps the preset's SAE ids to loaded SAEs."""
    return compose([(preset, saes)], scale, limits)


def compose(
    items: Sequence[tuple[Preset, Mapping[str, SAE]]],
    scale: float = 1.0,
    limits: PresetLimits = PresetLimits(),
) -> SteeringPlan:
    """Presets applied together (the rule is in the module docstring)."""
    if not (math.isfinite(scale) and abs(scale) <= MAX_SCALE):
        raise PresetError([f"scale: {scale!r} must be a finite number in ±{MAX_SCALE:g}"])
    merged: dict[tuple[int, int], FeatureEdit] = {}
    problems: list[str] = []
    for preset, saes in items:
        factor = preset.scale * scale
        if factor == 0:
            continue
        for i, edit in enumerate(preset.edits):
            try:
                new = _feature_edit(edit, saes, factor, limits)
                key = (id(new.sae), new.feature)
                merged[key] = _merge(merged.get(key), new)
            except SteeringError as e:
                problems.append(f"{preset.name}: edits.{i}: {e}")
    if problems:
        raise PresetError(problems)
    return SteeringPlan(tuple(merged.values()))


def _feature_edit(
    edit: PresetEdit, saes: Mapping[str, SAE], factor: float, limits: PresetLimits
) -> FeatureEdit:
    sae = saes.get(edit.sae)
    if sae is None:
        raise SteeringError(f"no loaded SAE for {edit.sae!r}")
    where = {"positions": edit.positions, "skip_special_tokens": edit.skip_special_tokens}
    if edit.mode == "ablate":
        return FeatureEdit(sae, edit.feature, "ablate", 0.0, "raw", **where)
    value = edit.value * factor
    if edit.unit == "raw":
        _check_bound(edit.value, factor, limits.max_raw, "raw units")
        return FeatureEdit(sae, edit.feature, edit.mode, value, "raw", **where)
    _check_bound(edit.value, factor, limits.max_multiple, "x max activation")
    if edit.max_activation is not None:  # the file's assumption: the same strength everywhere
        return FeatureEdit(
            sae, edit.feature, edit.mode, value * edit.max_activation, "raw", **where
        )
    if sae.max_activation is None:
        raise SteeringError(
            f"{edit.label or 'feature'} ({edit.feature}) is given in multiples of max activation, "
            f"but neither the preset (max_activation) nor SAE {edit.sae!r} (no feature statistics"
            ") knows its max activation; set max_activation in the preset, or put a "
            "feature_stats.safetensors with max_activation next to the SAE"
        )
    return FeatureEdit(sae, edit.feature, edit.mode, value, "max_act", **where)


def _check_bound(value: float, factor: float, limit: float, unit: str) -> None:
    if abs(value * factor) > limit:
        raise SteeringError(
            f"value {value:g} x scale {factor:g} = {value * factor:g} {unit} is "
            f"over this server's limit of {limit:g}"
        )


def _merge(old: FeatureEdit | None, new: FeatureEdit) -> FeatureEdit:
    if old is None or new.mode != "add":
        return new
    if old.mode != "add":
        return old  # a clamp or ablation fixes the activation: adds cannot move it
    if (old.positions, old.skip_special_tokens) != (new.positions, new.skip_special_tokens):
        raise SteeringError(
            f"feature {new.feature} is added twice with different positions; "
            "adds of one feature sum only when they steer the same tokens"
        )
    total = old.raw_value + new.raw_value
    return FeatureEdit(
        old.sae, old.feature, "add", total, "raw", old.positions, old.skip_special_tokens
    )
