"""The page's steering: a list of feature rows, and its conversions to and from a preset.

A row is a plain dict (page state must be deep-copyable):
``{"ref", "feature", "label", "mode", "unit", "value", "on", "max_activation", "positions",
"skip_special_tokens"}``. A slider at 0 (or a row switched off) steers nothing: the steering
that is applied, downloaded and shared holds only the rows that are on and non-zero (ablations
have no value and count when on).

Every preset that comes from the browser (upload, share link) goes through the same safe parser
and network rules as the API (``Service.plan``).
"""

from __future__ import annotations

import base64
import json
from typing import Any, get_args

from steering.presets import FORMAT_VERSION, Preset, SAEFormat, parse_preset
from steering.serving import Service

Row = dict[str, Any]
SHARE_PARAM = "steering"
SLIDER_SPAN = {"max_act": 20.0, "raw": 100.0}  # the default slider range, ± this


def rows_from_preset(preset: Preset) -> list[Row]:
    """One row per edit, with the preset's scale folded into the values."""
    refs = {sae.id: sae.ref for sae in preset.saes}
    return [
        {
            "ref": refs[edit.sae],
            "feature": edit.feature,
            "label": edit.label or f"feature {edit.feature}",
            "mode": edit.mode,
            "unit": edit.unit,
            "value": round(edit.value * preset.scale, 4),
            "on": True,
            "max_activation": edit.max_activation,
            "positions": edit.positions,
            "skip_special_tokens": edit.skip_special_tokens,
        }
        for edit in preset.edits
    ]


def new_row(service: Service, ref: str, feature: int) -> Row:
    """A row for a feature picked by label or index, at 0 until its slider moves."""
    sae = service.sae_for(ref)
    sae.check_feature(feature)
    unit = "max_act" if sae.max_activation is not None else "raw"
    return {
        "ref": ref,
        "feature": feature,
        "label": sae.labels.get(feature, f"feature {feature}"),
        "mode": "clamp",
        "unit": unit,
        "value": 0.0,
        "on": True,
        "max_activation": None,
        "positions": "all",
        "skip_special_tokens": False,
    }


def is_active(row: Row) -> bool:
    return bool(row["on"]) and (row["mode"] == "ablate" or row["value"] != 0)


def preset_json(service: Service, rows: list[Row], name: str = "My steering") -> dict | None:
    """The active rows as a preset object (None when nothing is active)."""
    active = [row for row in rows if is_active(row)]
    if not active:
        return None
    refs = list(dict.fromkeys(row["ref"] for row in active))
    ids = {ref: f"s{i}" for i, ref in enumerate(refs)}
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "model": {"id": service.model_id},
        "saes": [_sae_json(service, ref, ids[ref]) for ref in refs],
        "edits": [_edit_json(row, ids[row["ref"]]) for row in active],
        "labels_source": "the SAE's own labels, as shown on the steering page",
        "verified": False,
    }


def _sae_json(service: Service, ref: str, sae_id: str) -> dict[str, Any]:
    sae = service.sae_for(ref)
    known_format = sae.format if sae.format in get_args(SAEFormat) else None
    return {
        "id": sae_id,
        "ref": ref,
        "format": known_format,
        "layer": sae.hook.layer,
        "site": sae.hook.site,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
    }


def _edit_json(row: Row, sae_id: str) -> dict[str, Any]:
    edit = {
        "sae": sae_id,
        "feature": row["feature"],
        "label": row["label"],
        "mode": row["mode"],
        "unit": row["unit"],
        "value": 0.0 if row["mode"] == "ablate" else float(row["value"]),
        "positions": row["positions"],
        "skip_special_tokens": row["skip_special_tokens"],
    }
    if row.get("max_activation") is not None:
        edit["max_activation"] = row["max_activation"]
    return edit


def rows_from_network(service: Service, data: str | bytes | dict) -> list[Row]:
    """Rows from a preset a browser sent; raises PresetError (and checks the server's limits
    and allow-list exactly as the API does)."""
    preset = parse_preset(data, "preset")
    service.plan(preset.model_dump(mode="json"))
    return rows_from_preset(preset)


def encode_share(preset: dict | None) -> str:
    """base64url of the compact preset JSON, without padding ('' for no steering)."""
    if preset is None:
        return ""
    text = json.dumps(preset, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_share(code: str) -> bytes:
    """The preset JSON bytes of a share code; the preset parser checks size and content."""
    code = code.strip()
    try:
        return base64.urlsafe_b64decode(code + "=" * (-len(code) % 4))
    except ValueError as e:
        raise ValueError(f"the share link's {SHARE_PARAM} parameter is not base64url: {e}") from e


def slider_range(row: Row, limits_multiple: float, limits_raw: float) -> float:
    """± the slider's range: wide enough for the value, never past the server's limit."""
    limit = limits_multiple if row["unit"] == "max_act" else limits_raw
    span = max(SLIDER_SPAN[row["unit"]], 2 * abs(float(row["value"])))
    return min(span, limit)
