"""The SAEs presets refer to: loaded once each, checked against what the preset declares.

``SAEResolver`` loads the SAEs a preset refers to (a cache keyed by reference) and checks each
against its declaration (format, layer, site, d_in, d_sae). A preset received over the network
(upload, share link, API) may refer only to SAEs this server has loaded or allows: never to a
local path or URL of its choosing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from ..errors import LayerUnknown, PresetError, SteeringError
from ..hub import HUB_PREFIX, HUB_REFERENCE
from .schema import Preset, PresetSAE, SAEFormat

if TYPE_CHECKING:
    from ..sae import SAE

Source = Literal["file", "network"]
DEMO_SAE_REF = "demo-sae"  # the demo world's SAE (steering.hub.SHIPPED_SAES loads it)
SAELoader = Callable[..., "SAE"]


def declare_sae(sae: SAE, sae_id: str, ref: str) -> PresetSAE:
    """How a preset declares ``sae`` under the short id ``sae_id`` and public reference ``ref``."""
    known_format = sae.format if sae.format in get_args(SAEFormat) else None
    return PresetSAE(
        id=sae_id,
        ref=ref,
        format=known_format,
        layer=sae.hook.layer,
        site=sae.hook.site,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
    )


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
        usable = sorted(r for r in self.allowed if not is_server_path(r))  # never a server path
        shown = ref if len(ref) <= 100 else ref[:100] + "..."
        return (
            f"{shown!r} is {kind}; a preset received over the network may only use the SAEs "
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
        except LayerUnknown:  # files that do not record their layer: the preset says it
            return load(ref, device=self.device, dtype=self.dtype, layer=declared.layer)


def is_server_path(ref: str) -> bool:
    """Whether ``ref`` is a file-system path (absolute, relative, home or drive), which a
    server never shows a visitor, rather than a public name such as a Hub reference."""
    ref = ref.strip()
    return ref.startswith(("/", ".", "~", "\\")) or "\\" in ref or ref[1:3] in (":/", ":\\")


def _load_sae(ref: str, **kwargs: Any) -> SAE:
    from ..formats import load_sae  # heavy imports, only when an SAE is needed

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
