"""The preset file format: named, shareable steerings ("Golden Gate Bridge x10") as
versioned JSON documents.

A preset is data from strangers. Parsing never executes, imports or unpickles anything: the
text is size- and depth-checked before ``json.loads`` sees it, NaN and Infinity are refused,
and pydantic validates every field (``extra="forbid"``, bounds on every number). Problems are
collected in one ``PresetError`` whose lines read ``path.to.field: message``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import PresetError
from ..hookpoint import Site
from ..limits import PRESET_FILE
from ..plan import Mode, Positions, Unit

FORMAT_VERSION = 1
MAX_FILE_BYTES = PRESET_FILE.max_bytes
MAX_JSON_DEPTH = PRESET_FILE.max_json_depth
MAX_EDITS = PRESET_FILE.max_edits
MAX_SAES = PRESET_FILE.max_saes
MAX_MULTIPLE = PRESET_FILE.max_multiple
MAX_RAW = PRESET_FILE.max_raw
MAX_SCALE = PRESET_FILE.max_scale
MAX_D_SAE = PRESET_FILE.max_d_sae

# The loader names in steering.formats (a test checks they agree): a Literal for the schema.
SAEFormat = Literal[
    "saelens",
    "gemma_scope",
    "gemma_scope_2",
    "sparsify",
    "goodfire",
    "llama_scope",
    "dictionary_learning",
]
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _plain_text(text: str, multiline: bool = False) -> str:
    """Refuse control characters, bidi overrides (they can disguise a label) and lone
    surrogates (they cannot be printed or saved)."""
    for c in text:
        bad = unicodedata.category(c) in ("Cc", "Cs") or c in _BIDI_CONTROLS
        if bad and not (multiline and c in "\n\t"):
            raise ValueError(f"contains the control or invalid character {c!r}")
    return text


Line = Annotated[str, AfterValidator(_plain_text)]
Text = Annotated[str, AfterValidator(lambda s: _plain_text(s, multiline=True))]
Number = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    # Field docstrings become the JSON Schema's descriptions (a test checks every field has one).
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )


class PresetModel(_Strict):
    """The model a preset was made for."""

    id: Line = Field(min_length=1, max_length=200)
    """Hub id or name of the model, e.g. google/gemma-2-2b-it."""
    revision: Line | None = Field(None, max_length=100)
    """Hub revision, when pinned."""


class PresetSAE(_Strict):
    """An SAE the preset's edits use, with its shape for checking the one that gets loaded."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    """Short name the edits use for this SAE, e.g. l20."""
    ref: Line = Field(min_length=1, max_length=300)
    """Where to load it: a Hub reference owner/repo[/sub/folder], a local path (files only;
    ./ and ../ are relative to the preset file), or demo-sae (the demo world's SAE)."""
    format: SAEFormat | None = None
    """Its file format, as the loader names it; null: any."""
    layer: int = Field(ge=0, le=1000)
    """The decoder layer whose residual stream it reads."""
    site: Site = "resid_post"
    """resid_post: the layer's output; resid_pre: its input."""
    d_in: int = Field(ge=1, le=65536)
    """Input width: the model's hidden size."""
    d_sae: int = Field(ge=1, le=MAX_D_SAE)
    """Number of features."""


class PresetEdit(_Strict):
    """One feature and what to do with it (the modes are those of steering.plan)."""

    sae: str = Field(max_length=32)
    """The id of one of the preset's saes."""
    feature: int = Field(ge=0, lt=MAX_D_SAE)
    """Feature index in that SAE."""
    label: Line = Field("", max_length=200)
    """What the feature means to a human."""
    mode: Mode = "clamp"
    """clamp: set the activation to value; add: add value times the feature's direction;
    ablate: clamp to 0."""
    unit: Unit = "max_act"
    """raw activation units, or max_act: multiples of the feature's max activation."""
    value: Number = Field(0.0, ge=-MAX_RAW, le=MAX_RAW)
    """Clamp target or amount added; |value| <= 1000 in max_act units; 0 for ablate."""
    max_activation: Number | None = Field(None, gt=0, le=MAX_RAW)
    """The feature's max activation that a max_act value assumes; null: use the loaded SAE's
    statistics."""
    positions: Positions = "all"
    """The tokens steered: all, prompt or generated."""
    skip_special_tokens: bool = False
    """Leave BOS and chat-turn markers unsteered."""

    @model_validator(mode="after")
    def _value_fits_unit(self) -> PresetEdit:
        if self.mode == "ablate" and self.value != 0:
            raise ValueError(f"value: ablate has no value; leave it out (got {self.value:g})")
        if self.unit == "max_act" and abs(self.value) > MAX_MULTIPLE:
            limit = f"the format's limit of {MAX_MULTIPLE:g}"
            raise ValueError(f"value: {self.value:g} x max activation is over {limit}")
        return self


class Preset(_Strict):
    """A named steering: features of one or more SAEs with their values, and an overall scale."""

    format_version: Literal[1]
    """Version of this format: 1."""
    name: Line = Field(min_length=1, max_length=80)
    """Display name; its slug (lowercase, '-' for other characters) also names it."""
    description: Text = Field("", max_length=2000)
    """What it does, for people."""
    model: PresetModel
    """The model it was made for."""
    saes: list[PresetSAE] = Field(min_length=1, max_length=MAX_SAES)
    """The SAEs its edits use."""
    edits: list[PresetEdit] = Field(min_length=1, max_length=MAX_EDITS)
    """The features it steers, at most one edit per feature."""
    scale: Number = Field(1.0, ge=-MAX_SCALE, le=MAX_SCALE)
    """Default overall scale: every value is multiplied by it; 0 steers nothing."""
    labels_source: Text = Field(min_length=1, max_length=1000)
    """Where the feature labels come from: a URL or citation."""
    verified: bool
    """Whether the effect was checked on the model."""

    @field_validator("format_version", mode="before")
    @classmethod
    def _an_integer_version(cls, version: Any) -> Any:
        if type(version) is not int:  # Literal[1] alone would take true and 1.0
            raise ValueError(f"should be the integer {FORMAT_VERSION} (got {_short(version)})")
        return version

    @model_validator(mode="after")
    def _edits_fit_saes(self) -> Preset:
        problems = _cross_reference_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def slug(self) -> str:
        return slugify(self.name)


class PresetRef(_Strict):
    """One of a server's presets, by name, at a scale."""

    name: Line = Field(min_length=1, max_length=80)
    """The preset's name or slug, as ``GET /v1/presets`` lists them."""
    scale: Number = Field(1.0, ge=-MAX_SCALE, le=MAX_SCALE)
    """Multiplies the preset's own scale; 0 steers nothing."""


class NamedPresets(_Strict):
    """A steering made of a server's presets: ``{"presets": [{"name": ..., "scale": ...}]}``."""

    presets: list[PresetRef] = Field(min_length=1, max_length=MAX_EDITS)
    """The presets, applied together in order."""


def _cross_reference_problems(preset: Preset) -> list[str]:
    saes: dict[str, PresetSAE] = {}
    problems = []
    for i, sae in enumerate(preset.saes):
        if sae.id in saes:
            problems.append(f"saes.{i}.id: SAE id {sae.id!r} is declared twice")
        saes.setdefault(sae.id, sae)
    if not slugify(preset.name):
        problems.append("name: needs at least one letter or digit")
    seen: dict[tuple[str, int], int] = {}
    for i, edit in enumerate(preset.edits):
        sae = saes.get(edit.sae)
        if sae is None:
            problems.append(
                f"edits.{i}.sae: unknown SAE {edit.sae!r}; declared: {', '.join(saes) or 'none'}"
            )
        elif edit.feature >= sae.d_sae:
            problems.append(
                f"edits.{i}.feature: index {edit.feature} is out of range for SAE "
                f"{sae.id!r} with d_sae={sae.d_sae} (valid: 0..{sae.d_sae - 1})"
            )
        first = seen.setdefault((edit.sae, edit.feature), i)
        if first != i:
            problems.append(
                f"edits.{i}.feature: feature {edit.feature} of SAE {edit.sae!r} is "
                f"already edited by edits.{first}; one edit per feature"
            )
    return problems


def slugify(name: str) -> str:
    """Lowercase, runs of anything but letters and digits become '-': 'Fear (L20)' -> 'fear-l20'."""
    return re.sub(r"[\W_]+", "-", name.lower()).strip("-")


# ---- parsing ----


def parse_preset(data: str | bytes | Mapping[str, Any], source: str = "") -> Preset:
    """A valid ``Preset`` from JSON text or an already-parsed JSON object, or a ``PresetError``."""
    if not isinstance(data, Mapping):
        data = _load_json(data, source)
    try:
        return Preset.model_validate(data)
    except ValidationError as e:
        raise PresetError(error_lines(e), source) from None
    except (TypeError, ValueError, RecursionError) as e:  # odd Python objects, not JSON input
        raise PresetError([f"(preset): not a JSON object of this format ({e})"], source) from None


def _load_json(data: str | bytes, source: str) -> Any:
    size = len(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        raise PresetError([f"(file): {size} bytes is over the limit of {MAX_FILE_BYTES}"], source)
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PresetError([f"(file): not UTF-8 text ({e})"], source) from None
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise PresetError([f"(file): JSON nested {depth} deep, at most {MAX_JSON_DEPTH}"], source)
    try:
        return json.loads(
            data, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_short_int
        )
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, huge numbers
        raise PresetError([f"(file): not valid JSON: {e}"], source) from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows; use a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number")
    return value


def _short_int(text: str) -> int:
    if len(text) > 20:  # Python would spend time on, or refuse, a thousand-digit integer
        raise ValueError(f"the integer {text[:20]}... has {len(text)} digits")
    return int(text)


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in JSON text, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def error_lines(error: ValidationError) -> list[str]:
    """pydantic's errors as ``path.to.field: message`` lines."""
    lines = []
    for e in error.errors(include_url=False):
        path = ".".join(str(part) for part in e["loc"])
        if e["type"] == "value_error":  # our validators: the message may carry its own paths
            message = str(e["ctx"]["error"])
            lines += [_join(path, line) for line in message.splitlines()]
            continue
        message = e["msg"]
        if e["type"] == "model_type":
            message = f"should be a JSON object, got {_json_type(e['input'])}"
        elif e["type"] == "extra_forbidden":
            message = f"unknown field; allowed: {', '.join(_allowed_fields(e['loc']))}"
        elif e["loc"] and "input" in e and not isinstance(e["input"], (dict, list)):
            message += f" (got {_short(e['input'])})"
        lines.append(f"{path or '(preset)'}: {message}")
    return lines


def _join(path: str, line: str) -> str:
    if not path:
        return line if re.match(r"^[\w.]+: ", line) else f"(preset): {line}"
    head, sep, rest = line.partition(": ")
    return f"{path}.{head}: {rest}" if sep and re.fullmatch(r"[\w.]+", head) else f"{path}: {line}"


def _allowed_fields(loc: tuple) -> list[str]:
    """The fields of the preset's object at ``loc`` ([] when ``loc`` is not in the format)."""
    model: type[BaseModel] = Preset
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        model = inner
    return list(model.model_fields)


def _json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else "a value")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def dump_preset(preset: Preset) -> str:
    """The preset as JSON text, in the field order of the format."""
    return json.dumps(preset.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the format, for other tools."""
    schema = Preset.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": f"Steering preset, format version {FORMAT_VERSION}",
    }
