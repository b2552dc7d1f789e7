"""Where presets come from, and the SAEs they refer to.

``PresetRegistry`` finds preset files: the built-in ``presets/`` folder, then the folders and
files named by ``STEERING_PRESETS`` (separated by ``os.pathsep``), then paths given by the caller
(``--presets``). A later source's preset replaces an earlier one with the same slug. Names are
looked up case-insensitively by name or slug.

``SAEResolver`` loads the SAEs a preset refers to, once each (a cache keyed by reference), and
checks them against what the preset declares. A preset received over the network (upload, share
link, API) may refer only to SAEs this server has loaded or allows: never to a local path or URL.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import SAELoadError, SteeringError
from .hub import HUB_PREFIX, HUB_REFERENCE
from .models import SteerableModel
from .plan import SteeringPlan
from .preset_plans import PresetLimits, compose
from .presets import MAX_FILE_BYTES, Preset, PresetError, PresetSAE, parse_preset, slugify
from .sae import SAE

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "presets"
ENV_VAR = "STEERING_PRESETS"
Source = Literal["file", "network"]
SAELoader = Callable[..., SAE]


def read_preset_file(path: str | os.PathLike) -> Preset:
    """A preset from a file; at most ``MAX_FILE_BYTES`` are ever read."""
    path = Path(path)
    try:
        if not path.is_file():
            raise PresetError([f"(file): {_not_a_file(path)}"], str(path))
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PresetError(
                [f"(file): {size} bytes is over the limit of {MAX_FILE_BYTES}"], str(path)
            )
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise PresetError([f"(file): cannot read it: {e.strerror or e}"], str(path)) from None
    return parse_preset(data, str(path))


def _not_a_file(path: Path) -> str:
    if path.is_dir():
        return "a folder without .json preset files"
    return "not a regular file" if path.exists() else "no such file"


@dataclass(frozen=True)
class PresetEntry:
    """A preset and where it was found (``path`` is None for one not read from a file)."""

    preset: Preset
    path: Path | None = None
    origin: str = "user"  # "built-in" or "user"

    @property
    def base_dir(self) -> Path | None:
        return self.path.parent if self.path else None


class PresetRegistry:
    """Presets by slug, and the problems of files that did not load (``problems``)."""

    def __init__(self, entries: Iterable[PresetEntry] = ()) -> None:
        self.by_slug: dict[str, PresetEntry] = {}
        self.problems: list[str] = []
        for entry in entries:
            self.add(entry)

    @classmethod
    def discover(
        cls,
        paths: Sequence[str | os.PathLike] = (),
        *,
        builtin: bool = True,
        environ: Mapping[str, str] = os.environ,
    ) -> PresetRegistry:
        registry = cls()
        if builtin and BUILTIN_DIR.is_dir():
            registry.add_path(BUILTIN_DIR, origin="built-in")
        env_paths = [p for p in environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
        for path in [*env_paths, *paths]:
            registry.add_path(Path(path).expanduser())
        return registry

    def add(self, entry: PresetEntry) -> None:
        self.by_slug[entry.preset.slug] = entry

    def add_path(self, path: Path, origin: str = "user") -> None:
        """A folder's ``*.json`` files, or one file; bad files go to ``problems``."""
        if not path.exists():
            self.problems.append(f"{path}: no such file or folder")
            return
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            try:
                self.add(PresetEntry(read_preset_file(file), file, origin))
            except PresetError as e:
                self.problems += [f"{file}: {line}" for line in e.problems]

    @property
    def entries(self) -> list[PresetEntry]:
        return [self.by_slug[slug] for slug in sorted(self.by_slug)]

    def names(self) -> list[str]:
        return [entry.preset.name for entry in self.entries]

    def get(self, name: str) -> PresetEntry:
        """The preset called ``name`` (name or slug, any case), or a ``.json`` file's preset."""
        if name.endswith(".json") or os.sep in name:
            path = Path(name).expanduser()
            if path.exists():
                return PresetEntry(read_preset_file(path), path)
        key = slugify(name.removesuffix(".json"))
        for entry in self.by_slug.values():
            stem = slugify(entry.path.stem) if entry.path else None
            if key in (entry.preset.slug, stem):
                return entry
        raise SteeringError(self._unknown(name, key))

    def _unknown(self, name: str, key: str) -> str:
        slugs = sorted(self.by_slug)
        close = difflib.get_close_matches(key, slugs, n=3, cutoff=0.6)
        close += [s for s in slugs if key and key in s and s not in close][:5]
        message = f"no preset named {name!r}"
        if close:
            message += f"; did you mean: {', '.join(close)}?"
        return message + f" Available: {', '.join(slugs) or 'none'}"


class SAEResolver:
    """Loads and caches the SAEs presets refer to; ``allowed`` and registered SAEs are what a
    preset from the network may use."""

    def __init__(
        self,
        *,
        allowed: Iterable[str] = (),
        device: Any = None,
        dtype: Any = None,
        loader: SAELoader | None = None,
    ) -> None:
        self.loaded: dict[str, SAE] = {}  # every SAE loaded, by reference
        self.allowed = {_normal(ref) for ref in allowed}  # what network presets may use
        self.device, self.dtype = device, dtype
        self.loader = loader

    def register(self, ref: str, sae: SAE) -> None:
        """An SAE the server has loaded, under the reference presets use for it; network
        presets may use it."""
        self.loaded[_normal(ref)] = sae
        self.allowed.add(_normal(ref))

    def resolve(
        self, preset: Preset, *, source: Source = "file", base_dir: Path | None = None
    ) -> dict[str, SAE]:
        """The preset's SAEs by id, loaded and checked against their declarations."""
        saes, problems = {}, []
        for i, declared in enumerate(preset.saes):
            try:
                ref = self._reference(declared.ref, source, base_dir)
                sae = self._get(ref, declared)
            except SteeringError as e:
                problems.append(f"saes.{i}.ref: {e}")
                continue
            problems += _declaration_problems(i, declared, sae)
            saes[declared.id] = sae
        if problems:
            raise PresetError(problems, preset.name)
        return saes

    def _reference(self, ref: str, source: Source, base_dir: Path | None) -> str:
        key = _normal(ref)
        if source == "network":
            if key not in self.allowed:  # not merely loaded: file presets may load local paths
                raise SteeringError(self._refused(ref))
            return key
        if base_dir is not None and ref.startswith(("./", "../")):  # relative to the preset
            return str((base_dir / ref).resolve())
        return key

    def _refused(self, ref: str) -> str:
        hub_ref = ref.strip().removeprefix(HUB_PREFIX)
        if "://" in hub_ref:
            kind = "a URL"
        elif hub_ref.startswith(("/", ".", "~")) or not HUB_REFERENCE.match(hub_ref):
            kind = "a local path"
        else:
            kind = "not an SAE of this server"
        usable = sorted(self.allowed)
        return (
            f"{ref!r} is {kind}; a preset received over the network may only use the SAEs "
            f"this server has loaded or allows: {', '.join(usable) or 'none'}"
        )

    def _get(self, ref: str, declared: PresetSAE) -> SAE:
        if ref not in self.loaded:
            self.loaded[ref] = self._load(ref, declared)
        return self.loaded[ref]

    def _load(self, ref: str, declared: PresetSAE) -> SAE:
        load = self.loader or _load_sae
        try:
            return load(ref, device=self.device, dtype=self.dtype)
        except SAELoadError as e:
            if "which layer" not in str(e):  # files that do not record it: the preset says it
                raise
        return load(ref, device=self.device, dtype=self.dtype, layer=declared.layer)


def _load_sae(ref: str, **kwargs: Any) -> SAE:
    from .formats import load_sae  # heavy imports, only when an SAE is needed

    return load_sae(ref, **kwargs)


def _normal(ref: str) -> str:
    return ref.strip().removeprefix(HUB_PREFIX).rstrip("/") or ref


def _declaration_problems(i: int, declared: PresetSAE, sae: SAE) -> list[str]:
    checks = (
        ("format", declared.format, sae.format),
        ("layer", declared.layer, sae.hook.layer),
        ("site", declared.site, sae.hook.site),
        ("d_in", declared.d_in, sae.d_in),
        ("d_sae", declared.d_sae, sae.d_sae),
    )
    return [
        f"saes.{i}.{field}: the preset expects {want!r}, but the SAE loaded from "
        f"{declared.ref!r} has {found!r}"
        for field, want, found in checks
        if want is not None and want != found
    ]


# ---- fitting presets to a model ----


def model_name(model: SteerableModel) -> str:
    config = getattr(model.model, "config", None)
    return getattr(model.model, "name_or_path", "") or getattr(config, "_name_or_path", "") or ""


def same_model(wanted: str, loaded: str) -> bool:
    """Hub ids match a local folder of the same name: google/gemma-2-2b-it ~ /m/gemma-2-2b-it."""

    def last(name: str) -> str:
        return name.strip().rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()

    return bool(loaded) and last(wanted) == last(loaded)


def check_fits(preset: Preset, model: SteerableModel, *, strict: bool = False) -> list[str]:
    """Warnings about ``preset`` on ``model``; a ``PresetError`` for what cannot work."""
    problems, warnings = [], []
    loaded = model_name(model)
    if not same_model(preset.model.id, loaded):
        mismatch = f"model: made for {preset.model.id}, but the loaded model is {loaded or '?'}"
        if strict:
            problems.append(mismatch)
        else:
            warnings.append(mismatch + "; its features may mean other things here")
    for i, sae in enumerate(preset.saes):
        if sae.layer >= model.num_layers:
            problems.append(
                f"saes.{i}.layer: layer {sae.layer}, but the model has "
                f"{model.num_layers} layers (0..{model.num_layers - 1})"
            )
        if sae.d_in != model.hidden_size:
            problems.append(
                f"saes.{i}.d_in: {sae.d_in}, but the model's hidden size is {model.hidden_size}"
            )
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
    limits: PresetLimits = PresetLimits(),
) -> tuple[SteeringPlan, list[str]]:
    """The plan of presets applied together on ``model``, and warnings to show the user."""
    warnings, items = [], []
    for entry in entries:
        warnings += check_fits(entry.preset, model, strict=strict)
        saes = resolver.resolve(entry.preset, source=source, base_dir=entry.base_dir)
        items.append((entry.preset, saes))
    return compose(items, scale, limits), warnings


def plan_from_request(
    steering: Mapping[str, Any] | str | bytes,
    model: SteerableModel,
    resolver: SAEResolver,
    *,
    scale: float = 1.0,
    limits: PresetLimits = PresetLimits(),
) -> tuple[SteeringPlan, list[str]]:
    """A request's steering (a preset JSON object from the network) as a plan for ``model``."""
    preset = parse_preset(steering, "steering")
    return plan_for_presets(
        [PresetEntry(preset, None, "network")],
        model,
        resolver,
        scale=scale,
        source="network",
        limits=limits,
    )
