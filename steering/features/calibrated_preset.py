"""A sweep's suggestion as a preset file: a new preset of a plan's edits, or a copy of a preset
at the suggested scale, each carrying how its strength was chosen (``describe_calibration``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SteeringError
from ..plan import SteeringPlan
from ..presets.saes import declare_sae
from ..presets.schema import Preset, parse_preset
from ..sae import SAE
from .report import prompt_count
from .sweep import SweepResult


def describe_calibration(result: SweepResult) -> str:
    """One paragraph for a preset's description: how its strength was chosen."""
    point = next(p for p in result.points if p.multiplier == result.suggested)
    base, s = result.baseline, result.settings
    return (
        f"Calibrated by steering sweep on {prompt_count(result)} (temperature "
        f"{s.get('temperature', '?')}, seed {s.get('seed', '?')}) at multiplier "
        f"{point.multiplier:g} ({result.unit}): concept {result.concept} in "
        f"{point.concept_rate:.0%} of replies vs {base.concept_rate:.0%} unsteered, fluency "
        f"{point.fluency:.3f} vs {base.fluency:.3f} nats/token, {point.well_formed:.0%} "
        "well-formed."
    )


def preset_for_plan(
    plan: SteeringPlan,
    *,
    name: str,
    model_id: str,
    sae_refs: Sequence[tuple[SAE, str]],
    description: str = "",
) -> Preset:
    """A verified preset of ``plan``'s edits (values and units as in the plan), for the model
    ``model_id``; ``sae_refs`` gives each SAE of the plan with the reference the preset loads it
    by (declared as ``sae0``, ``sae1``, ... in that order). Labels come from the SAEs' labels.

    Raises ``PresetError`` when the result is not a valid preset (a value over the format's
    bounds, a name without letters) and ``SteeringError`` for an SAE missing from ``sae_refs``.
    """
    ids = {id(sae): f"sae{i}" for i, (sae, _) in enumerate(sae_refs)}
    edits = []
    for edit in plan.active_edits:
        if id(edit.sae) not in ids:
            raise SteeringError(f"no reference given for SAE {edit.sae.name}")
        edits.append(
            {
                "sae": ids[id(edit.sae)],
                "feature": edit.feature,
                "label": edit.sae.labels.get(edit.feature, "")[:200],
                "mode": edit.mode,
                "unit": edit.unit,
                "value": edit.value,
                "positions": edit.positions,
                "skip_special_tokens": edit.skip_special_tokens,
            }
        )
    labelled = any(e["label"] for e in edits)
    data = {
        "format_version": 1,
        "name": name,
        "description": description[:2000],
        "model": {"id": model_id},
        "saes": [declare_sae(sae, ids[id(sae)], ref).model_dump() for sae, ref in sae_refs],
        "edits": edits,
        "labels_source": "the SAE's feature_labels.json" if labelled else "none: features by index",
        "verified": True,
    }
    return parse_preset(data, name)


def preset_at_scale(
    preset: Preset, multiplier: float, description: str = "", name: str | None = None
) -> Preset:
    """A copy of ``preset`` with its scale times ``multiplier``, marked verified, with
    ``description`` added to its own (and renamed ``name`` when given). Raises ``PresetError``
    when the scale passes the format's bound (±100) or the name is not valid."""
    data = preset.model_dump(mode="json")
    data["name"] = name or preset.name
    data["scale"] = preset.scale * multiplier
    data["verified"] = True
    data["description"] = " ".join(x for x in (preset.description, description) if x)[:2000]
    return parse_preset(data, preset.name)
