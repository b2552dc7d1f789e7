"""What the page and the API share: one model behind a generation backend, the presets and
SAEs that fit it, and the server's limits.

Both turn a steering given over the network into a plan here (``Service.plan``), so the same
rules (allow-listed SAEs, bounded values, bounded number of edits) apply to both; both build
requests here (``Service.submit``) on their own thread, so a bad request never reaches the
backend.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..chat import Message
from ..engine import Engine
from ..errors import LimitError, PresetError, SteeringError
from ..limits import Limits
from ..loop import EngineLoop
from ..models import SteerableModel, short_name
from ..plan import SteeringPlan
from ..presets.library import PresetEntry, PresetRegistry
from ..presets.saes import SAEResolver, declare_sae, is_server_path
from ..presets.schema import NamedPresets, Preset, PresetSAE
from ..presets.to_plan import check_fits, compose, plan_from_request
from ..requests import build_request
from ..sae import SAE
from ..sampling import SamplingParams
from .backend import Backend, EventStream

log = logging.getLogger("steering.server")

Steering = Preset | NamedPresets | None  # what a request's ``steering`` field holds


class Service:
    """The model behind the server. Thread-safe: requests go through the backend.

    ``saes`` maps public references (what presets and the page show) to loaded SAEs; the
    registry's presets that fit the model are offered, with their SAEs loaded. ``backend``
    defaults to this project's engine on a thread (``EngineLoop``).
    """

    def __init__(
        self,
        model: SteerableModel,
        saes: Mapping[str, SAE],
        registry: PresetRegistry,
        limits: Limits = Limits(),
        model_id: str | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        self.model_id = model_id or short_name(model.name) or "steering-model"
        self.resolver = SAEResolver(device=model.device)
        self.saes: dict[str, SAE] = {}  # public reference -> SAE, for "add a feature"
        for ref, sae in saes.items():
            self.add_sae(ref, sae)
        self.presets = self._usable_presets(registry)
        self.backend: Backend = backend or EngineLoop(Engine(model, limits=limits))

    def add_sae(self, ref: str, sae: SAE) -> None:
        """An SAE network steerings may use, under ``ref`` (and its file path, so file presets
        that point at the same folder share the loaded copy). A new SAE whose ``ref`` is a
        server path is offered under its folder's name instead: visitors never see a path."""
        public = self.public_ref(sae)
        if public is None:
            public = _unused_name(ref, self.saes) if is_server_path(ref) else ref
            self.saes[public] = sae
        self.resolver.register(public, sae)
        self.resolver.register(ref, sae)
        if sae.source and Path(sae.source).exists():
            self.resolver.register(str(Path(sae.source).resolve()), sae)

    def public_ref(self, sae: SAE) -> str | None:
        """The reference ``sae`` is offered under (what presets and the page show), if any."""
        return next((ref for ref, known in self.saes.items() if known is sae), None)

    def _usable_presets(self, registry: PresetRegistry) -> dict[str, PresetEntry]:
        """The presets that fit the model, with their SAEs loaded and allowed for the network."""
        usable = {}
        for entry in registry.entries:
            try:
                check_fits(entry.preset, self.model, served_as=self.model_id)
                saes = self.resolver.resolve(entry.preset, base_dir=entry.base_dir)
            except SteeringError as e:
                log.info("preset %r skipped: %s", entry.preset.name, str(e).splitlines()[0])
                continue
            for declared in entry.preset.saes:
                self.add_sae(declared.ref, saes[declared.id])
            usable[entry.preset.name] = entry
        return usable

    def sae_for(self, ref: str) -> SAE:
        """The SAE offered under ``ref``; ``PresetError`` naming the offered ones otherwise."""
        sae = self.resolver.loaded.get(ref.strip().rstrip("/"))
        if sae is None:
            raise PresetError(
                [f"{ref!r} is not an SAE of this server; use one of {list(self.saes)}"]
            )
        return sae

    def declare(self, ref: str, sae_id: str) -> PresetSAE:
        """How a preset declares the SAE offered under ``ref``."""
        return declare_sae(self.sae_for(ref), sae_id, ref)

    def preset(self, name: str) -> PresetEntry:
        """The offered preset called ``name`` (name or slug, any case)."""
        key = name.strip().lower()
        for entry in self.presets.values():
            if key in (entry.preset.name.lower(), entry.preset.slug):
                return entry
        raise PresetError(
            [f"steering: no preset named {name!r} on this server; have: {list(self.presets)}"]
        )

    # ---- steering from the network ----

    def plan(self, steering: Steering) -> tuple[SteeringPlan, list[str]]:
        """A request's steering as a plan, and warnings to show. ``steering`` is a validated
        preset, or this server's presets by name with scales; None steers nothing.

        Raises ``PresetError`` (unknown preset or SAE, a value over the limits) or
        ``LimitError`` (more than ``limits.max_edits`` edits)."""
        if steering is None:
            return SteeringPlan.off(), []
        warnings: list[str] = []
        if isinstance(steering, NamedPresets):
            plan = self._named_presets(steering)
        else:
            plan, warnings = plan_from_request(
                steering, self.model, self.resolver, limits=self.limits, served_as=self.model_id
            )
        edits = len(plan.active_edits)
        if edits > self.limits.max_edits:
            raise LimitError(
                f"steering has {edits} feature edits; this server allows at most "
                f"{self.limits.max_edits} (max_edits)",
                param="steering",
            )
        return plan, warnings

    def _named_presets(self, steering: NamedPresets) -> SteeringPlan:
        if len(steering.presets) > self.limits.max_edits:
            raise LimitError(
                f"{len(steering.presets)} presets named, at most {self.limits.max_edits}",
                param="steering",
            )
        applied = []
        for ref in steering.presets:
            entry = self.preset(ref.name)
            saes = self.resolver.resolve(entry.preset, base_dir=entry.base_dir)
            applied.append((entry.preset, saes, ref.scale))
        return compose(applied, self.limits)

    # ---- generating ----

    def submit(
        self,
        messages: Sequence[Message],
        plan: SteeringPlan,
        sampling: SamplingParams,
        *,
        compare: bool = False,
        baseline_messages: Sequence[Message] | None = None,
        visitor: str = "",
    ) -> EventStream:
        """Queue a reply (two with ``compare``: steered, baseline) for ``visitor`` (see
        ``Request.visitor``). The request is built on the caller's thread: raises
        RequestError, ChatError, PlanError or Busy before anything runs."""
        request = build_request(
            self.model,
            messages,
            plan,
            sampling,
            limits=self.limits,
            compare=compare,
            baseline_messages=baseline_messages,
        )
        request.visitor = visitor
        return self.backend.submit(request)

    def health(self) -> dict[str, Any]:
        """The backend's health, and the model served."""
        return {"model": self.model_id, **self.backend.health()}

    def close(self) -> None:
        self.backend.close()


def _unused_name(path: str, taken: Mapping[str, SAE]) -> str:
    """A public name for the SAE folder at ``path``: its last part, made unique."""
    name = re.split(r"[\\/]", path.strip().rstrip("/\\"))[-1].lstrip(".~") or "sae"
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}-{n}"
    return unique
