"""The page's steering: a list of feature rows, and its conversions to and from a preset.

A ``FeatureRow`` is a small frozen value (page state must be deep-copyable). A slider at 0 (or a
row switched off) steers nothing: the steering that is applied, downloaded and shared holds only
the rows that are on and non-zero (ablations have no value and count when on), as a validated
``Preset`` built once per change.

Every preset that comes from the browser (upload, share link) is parsed once by the same safe
parser, and checked against the same network rules, as the API's (``Service.plan``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path

from steering.serve import (
    FORMAT_VERSION,
    FeatureContext,
    Limits,
    Preset,
    PresetEdit,
    PresetError,
    Service,
    SteeringError,
    feature_defaults,
    parse_preset,
)

from .messages import without_paths

SHARE_PARAM = "steering"
# Where a feature steers, as the card offers it: (what the visitor reads, positions,
# skip_special_tokens). The first is the demo presets' own scope.
SCOPES = (
    ("your words only", "prompt", True),
    ("the whole prompt", "prompt", False),
    ("the reply only", "generated", False),
    ("everywhere", "all", False),
    ("everywhere but chat tokens", "all", True),
    ("the reply, not chat tokens", "generated", True),
)
SHOWN_CONTEXTS = 3
SHARE_CODE = re.compile(r"[A-Za-z0-9_-]*={0,2}")  # base64url, as encode_share writes it
SHOWN_PROBLEMS = 8  # a preset's problems shown to the visitor, each cut to SHOWN_CHARS
SHOWN_CHARS = 200
LABELS_SOURCE = "the SAE's own labels, as shown on the steering page"


@dataclass(frozen=True)
class FeatureRow:
    """One feature on the page: which (SAE reference and index), how, and how strongly."""

    ref: str  # the SAE's public reference on this server
    feature: int
    label: str
    mode: str = "clamp"  # clamp, add or ablate
    unit: str = "max_act"  # max_act (multiples of the max activation) or raw
    value: float = 0.0
    on: bool = True
    max_activation: float | None = None  # what a max_act value assumes; None: the SAE's own
    positions: str = "all"
    skip_special_tokens: bool = False

    @property
    def active(self) -> bool:
        return self.on and (self.mode == "ablate" or self.value != 0)


def rows_from_preset(
    service: Service, preset: Preset, base_dir: Path | None = None
) -> list[FeatureRow]:
    """One row per edit, with the preset's scale folded into the values and each SAE under
    the public reference this server offers it as (never the file's own path)."""
    loaded = service.resolver.resolve(preset, base_dir=base_dir)
    refs = {}
    for sae in preset.saes:
        public = service.public_ref(loaded[sae.id])
        refs[sae.id] = public if public is not None else sae.ref
    return [_row(edit, refs[edit.sae], preset.scale) for edit in preset.edits]


def _row(edit: PresetEdit, ref: str, scale: float) -> FeatureRow:
    return FeatureRow(
        ref=ref,
        feature=edit.feature,
        label=edit.label or f"feature {edit.feature}",
        mode=edit.mode,
        unit=edit.unit,
        value=round(edit.value * scale, 4),
        max_activation=edit.max_activation,
        positions=edit.positions,
        skip_special_tokens=edit.skip_special_tokens,
    )


def new_row(service: Service, ref: str, feature: int, label: str | None = None) -> FeatureRow:
    """A row for a feature picked by label or index, steering as ``feature_defaults`` says
    features of that SAE steer well (a preset's label for it wins over the SAE's own)."""
    sae = service.sae_for(ref)
    sae.check_feature(feature)
    default = feature_defaults(service, ref)
    return FeatureRow(
        ref=ref,
        feature=feature,
        label=label or sae.labels.get(feature, f"feature {feature}"),
        mode=default.mode,
        unit=default.unit,
        value=default.value,
        positions=default.positions,
        skip_special_tokens=default.skip_special_tokens,
    )


def scope_name(row: FeatureRow) -> str:
    """What the card's scope box shows for ``row``."""
    for name, positions, skip in SCOPES:
        if (positions, skip) == (row.positions, row.skip_special_tokens):
            return name
    return SCOPES[0][0]


def scope_of(name: str) -> tuple[str, bool] | None:
    """(positions, skip_special_tokens) of a scope the card offers; None for anything else."""
    return next(((p, skip) for n, p, skip in SCOPES if n == name), None)


def top_contexts(service: Service, row: FeatureRow) -> tuple[FeatureContext, ...]:
    """The feature's best few activating contexts, when its SAE carries them."""
    try:
        sae = service.sae_for(row.ref)
    except PresetError:
        return ()
    return tuple(sae.contexts.get(row.feature, ()))[:SHOWN_CONTEXTS]


def preset_labels(service: Service) -> dict[tuple[str, int], str]:
    """What the server's presets call each feature they steer, by (public SAE reference,
    index): a preset's label is written by a person; an SAE's own may be its top words."""
    labels: dict[tuple[str, int], str] = {}
    for entry in service.presets.values():
        try:
            for row in rows_from_preset(service, entry.preset, entry.base_dir):
                labels.setdefault((row.ref, row.feature), row.label)
        except SteeringError:
            continue
    return labels


def preset_from_rows(
    service: Service, rows: list[FeatureRow], name: str = "My steering"
) -> Preset | None:
    """The active rows as a validated preset (None when nothing is active); raises
    ``PresetError`` when a row does not fit the format."""
    active = [row for row in rows if row.active]
    if not active:
        return None
    refs = list(dict.fromkeys(row.ref for row in active))
    ids = {ref: f"s{i}" for i, ref in enumerate(refs)}
    data = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "model": {"id": service.model_id},
        "saes": [service.declare(ref, ids[ref]).model_dump(mode="json") for ref in refs],
        "edits": [_edit_json(row, ids[row.ref]) for row in active],
        "labels_source": LABELS_SOURCE,
        "verified": False,
    }
    return parse_preset(data, "steering")


def _edit_json(row: FeatureRow, sae_id: str) -> dict:
    edit = {
        "sae": sae_id,
        "feature": row.feature,
        "label": row.label,
        "mode": row.mode,
        "unit": row.unit,
        "value": 0.0 if row.mode == "ablate" else float(row.value),
        "positions": row.positions,
        "skip_special_tokens": row.skip_special_tokens,
    }
    if row.max_activation is not None:
        edit["max_activation"] = row.max_activation
    return edit


def rows_from_network(service: Service, data: str | bytes) -> list[FeatureRow]:
    """Rows from a preset a browser sent, parsed once; raises PresetError (and checks the
    server's limits and allow-list exactly as the API does)."""
    preset = parse_preset(data, "preset")
    service.plan(preset)
    return rows_from_preset(service, preset)


def encode_share(preset: Preset | None) -> str:
    """base64url of the compact preset JSON, without padding ('' for no steering)."""
    if preset is None:
        return ""
    text = json.dumps(preset.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_share(code: str, limits: Limits = Limits()) -> bytes:
    """The preset JSON bytes of a share code; the preset parser checks size and content.

    Raises ``ValueError`` with a message for the visitor (never the decoder's own words) when
    the code is too long for a preset of ``limits.max_upload_bytes`` or not base64url."""
    code = code.strip()
    most = share_code_chars(limits)
    if len(code) > most:
        raise ValueError(
            f"its steering code has {len(code):,} characters; a share link's code has at "
            f"most {most:,}"
        )
    damaged = ValueError(
        f"its steering code is damaged (the link's {SHARE_PARAM}=... part was cut short or "
        "changed); copy the whole link again"
    )
    if not SHARE_CODE.fullmatch(code):
        raise damaged
    try:
        return base64.urlsafe_b64decode(code.rstrip("=") + "=" * (-len(code.rstrip("=")) % 4))
    except (ValueError, binascii.Error):
        raise damaged from None


def share_code_chars(limits: Limits) -> int:
    """The longest share code: base64 of the largest preset this server takes."""
    return 4 * -(-limits.max_upload_bytes // 3)


def problems_text(error: PresetError, unreadable: str) -> str:
    """A preset's problems as Markdown to follow a sentence that says it cannot be used:
    `` unreadable`` when the text is not a JSON preset at all (the decoder's words mean
    nothing to a visitor), else a bounded list in a code block."""
    problems = list(error.problems)
    if all(p.startswith("(file):") for p in problems):  # the field "(file)": the whole text
        return " " + unreadable
    problems = [without_paths(p) for p in problems]
    shown = [p if len(p) <= SHOWN_CHARS else p[: SHOWN_CHARS - 1] + "…" for p in problems]
    if len(problems) > SHOWN_PROBLEMS:
        shown = shown[:SHOWN_PROBLEMS] + [f"... and {len(problems) - SHOWN_PROBLEMS} more"]
    return quoted("\n".join(shown))


def quoted(text: str) -> str:
    """``text`` as a Markdown code block on its own lines, that nothing in it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"\n\n{fence}\n{text}\n{fence}"


def slider_range(row: FeatureRow, service: Service) -> float:
    """± the slider's range: wide enough for the value, never past the server's limit."""
    limits = service.limits
    limit = limits.max_multiple if row.unit == "max_act" else limits.max_raw
    return min(max(limits.slider_span(row.unit), 2 * abs(float(row.value))), limit)
