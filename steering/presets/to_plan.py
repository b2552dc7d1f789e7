"""Presets on a model: fitting them, and turning them into one steering plan.

``check_fits`` says whether a preset's SAEs fit the loaded model (and warns when it was made
for another).

Composition (``compose``): presets applied together contribute their edits in order, each
value times its preset's ``scale`` times the scale it is applied at (a factor of 0 drops the
preset, so scale 0 is the baseline). Edits of the same feature of the same SAE merge into one edit:

- a clamp or an ablation fixes the feature's activation, so it overrides every add of that
  feature wherever the add comes; among clamps and ablations the last one wins;
- adds sum (in raw units), and must steer the same positions.

So a plan built from presets never edits a feature twice (the hooks' "clamped twice" error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import PresetError, SteeringError
from ..limits import Limits
from ..models import SteerableModel, short_name
from ..plan import FeatureEdit, SteeringPlan
from .library import PresetEntry
from .saes import SAEResolver, Source
from .schema import MAX_SCALE, Preset, PresetEdit, parse_preset

if TYPE_CHECKING:
    from ..sae import SAE

# A preset, its SAEs by the preset's ids, and the scale it is applied at.
Applied = tuple[Preset, Mapping[str, "SAE"], float]


def to_plan(
    preset: Preset, saes: Mapping[str, SAE], scale: float = 1.0, limits: Limits = Limits()
) -> SteeringPlan:
    """The steering plan of one preset; ``saes`` maps the preset's SAE ids to loaded SAEs."""
    return compose([(preset, saes, scale)], limits)


def compose(items: Sequence[Applied], limits: Limits = Limits()) -> SteeringPlan:
    """Presets applied together, each at its own scale (the rule is in the module docstring).

    Raises ``PresetError`` with one line per edit that cannot apply (a scale out of
    ±MAX_SCALE, a value over ``limits``, an unknown max activation).
    """
    merged: dict[tuple[int, int], FeatureEdit] = {}
    problems: list[str] = []
    for preset, saes, scale in items:
        if not (math.isfinite(scale) and abs(scale) <= MAX_SCALE):
            raise PresetError([f"scale: {scale!r} must be a finite number in ±{MAX_SCALE:g}"])
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
    edit: PresetEdit, saes: Mapping[str, SAE], factor: float, limits: Limits
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
            ") knows its max activation; compute the SAE's statistics with "
            f"`steering sae-stats {_shown_ref(sae)} --model MODEL --corpus TEXT`, or set "
            "max_activation in the preset"
        )
    return FeatureEdit(sae, edit.feature, edit.mode, value, "max_act", **where)


def _shown_ref(sae: SAE) -> str:
    """The SAE's Hub reference for a message; a local path is never shown (visitors read it)."""
    from ..formats.feature_files import is_local

    return "SAE" if is_local(sae.source) else sae.source


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


# ---- presets on a model ----


def same_model(wanted: str, loaded: str) -> bool:
    """Hub ids match a local folder of the same name: google/gemma-2-2b-it ~ /m/gemma-2-2b-it."""
    return bool(loaded) and short_name(wanted).lower() == short_name(loaded).lower()


def check_fits(
    preset: Preset, model: SteerableModel, *, strict: bool = False, served_as: str | None = None
) -> list[str]:
    """Warnings about ``preset`` on ``model``; a ``PresetError`` for what cannot work.

    ``served_as`` is the model's public name on a server: a preset made for it matches, and
    messages name it instead of the folder the model was loaded from.
    """
    problems, warnings = [], []
    names = [model.name, *([served_as] if served_as else [])]
    if not any(same_model(preset.model.id, name) for name in names):
        loaded = served_as or model.name or "?"
        mismatch = f"model: made for {preset.model.id}, but the loaded model is {loaded}"
        if strict:
            problems.append(mismatch)
        else:
            warnings.append(mismatch + "; its features may mean other things here")
    for i, sae in enumerate(preset.saes):
        for field, value, why in model.fit_problems(sae.layer, sae.d_in):
            problems.append(f"saes.{i}.{field}: {value}, {why}")
    if problems:
        raise PresetError(problems, preset.name)
    return [f"{preset.name}: {w}" for w in warnings]


def plan_for_presets(
    entries: Sequence[PresetEntry],
    model: SteerableModel,
    resolver: SAEResolver,
    *,
    scale: float = 1.0,
    strict: bool = False,
    source: Source = "file",
    limits: Limits = Limits(),
    served_as: str | None = None,
) -> tuple[SteeringPlan, list[str]]:
    """The plan of presets applied together on ``model``, and warnings to show the user
    (``served_as``: see ``check_fits``)."""
    warnings, items = [], []
    for entry in entries:
        warnings += check_fits(entry.preset, model, strict=strict, served_as=served_as)
        saes = resolver.resolve(entry.preset, source=source, base_dir=entry.base_dir)
        items.append((entry.preset, saes, scale))
    return compose(items, limits), warnings


def plan_from_request(
    steering: Preset | Mapping[str, Any] | str | bytes,
    model: SteerableModel,
    resolver: SAEResolver,
    *,
    scale: float = 1.0,
    limits: Limits = Limits(),
    served_as: str | None = None,
) -> tuple[SteeringPlan, list[str]]:
    """A request's steering (a validated preset, or its JSON from the network) as a plan for
    ``model``; only SAEs ``resolver`` allows for the network may be used."""
    preset = steering if isinstance(steering, Preset) else parse_preset(steering, "steering")
    return plan_for_presets(
        [PresetEntry(preset, None, "network")],
        model,
        resolver,
        scale=scale,
        source="network",
        limits=limits,
        served_as=served_as,
    )
