"""What the page and the API share: one model, its engine and scheduler, the presets that fit it,
and the server's limits. Both turn a steering given over the network into a plan here, so the
same rules (allow-listed SAEs, bounded values, bounded number of edits) apply to both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chat import Message
from .engine import Engine
from .errors import SteeringError
from .models import SteerableModel
from .plan import SteeringPlan
from .preset_plans import PresetLimits, compose
from .preset_registry import (
    PresetEntry,
    PresetRegistry,
    SAEResolver,
    check_fits,
    model_name,
    plan_from_request,
)
from .presets import MAX_FILE_BYTES, MAX_SCALE, Preset, PresetError
from .sae import SAE
from .sampling import Limits, RequestError, SamplingParams
from .scheduler import Handle, Scheduler

log = logging.getLogger("steering.server")


class LimitError(RequestError):
    """A request asks for more than this server allows; the message names the limit."""


@dataclass(frozen=True)
class ServerLimits:
    """Bounds a public server puts on every request, from the page and the API alike."""

    max_new_tokens: int = 256
    max_prompt_tokens: int = 2048
    max_edits: int = 16  # feature edits in one request's steering
    max_multiple: float = 100.0  # |value x scale| in multiples of a feature's max activation
    max_raw: float = 1000.0  # |value x scale| in raw activation units
    max_waiting: int = 32  # requests queued beyond the running batch; more get "busy"
    max_batch: int = 16  # rows decoded together (an A/B compare is two rows)
    max_upload_bytes: int = MAX_FILE_BYTES

    @property
    def engine(self) -> Limits:
        return Limits(max_new_tokens=self.max_new_tokens, max_prompt_tokens=self.max_prompt_tokens)

    @property
    def presets(self) -> PresetLimits:
        return PresetLimits(max_multiple=self.max_multiple, max_raw=self.max_raw)


class Service:
    """The model behind the server. Thread-safe: requests go through the scheduler."""

    def __init__(
        self,
        model: SteerableModel,
        saes: Mapping[str, SAE],
        registry: PresetRegistry,
        limits: ServerLimits = ServerLimits(),
        model_id: str | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        self.model_id = model_id or _short_name(model_name(model)) or "steering-model"
        self.resolver = SAEResolver(device=model.device)
        self.saes: dict[str, SAE] = {}  # public reference -> SAE, for "add a feature"
        for ref, sae in saes.items():
            self.add_sae(ref, sae)
        self.presets = self._usable_presets(registry)
        self.engine = Engine(model, limits=limits.engine, max_batch=limits.max_batch)
        self.scheduler = Scheduler(self.engine, max_waiting=limits.max_waiting)

    def add_sae(self, ref: str, sae: SAE) -> None:
        """An SAE network steerings may use, under ``ref`` (and its file path, so file presets
        that point at the same folder share the loaded copy)."""
        if all(known is not sae for known in self.saes.values()):
            self.saes[ref] = sae
        self.resolver.register(ref, sae)
        if sae.source and Path(sae.source).exists():
            self.resolver.register(str(Path(sae.source).resolve()), sae)

    def _usable_presets(self, registry: PresetRegistry) -> dict[str, PresetEntry]:
        """The presets that fit the model, with their SAEs loaded and allowed for the network."""
        usable = {}
        for entry in registry.entries:
            try:
                check_fits(entry.preset, self.model)
                saes = self.resolver.resolve(entry.preset, base_dir=entry.base_dir)
            except SteeringError as e:
                log.info("preset %r skipped: %s", entry.preset.name, str(e).splitlines()[0])
                continue
            for declared in entry.preset.saes:
                self.add_sae(declared.ref, saes[declared.id])
            usable[entry.preset.name] = entry
        return usable

    def sae_for(self, ref: str) -> SAE:
        sae = self.resolver.loaded.get(ref.strip().rstrip("/"))
        if sae is None:
            raise PresetError(
                [f"{ref!r} is not an SAE of this server; use one of {list(self.saes)}"]
            )
        return sae

    # ---- steering from the network ----

    def plan(self, steering: Any) -> tuple[SteeringPlan, list[str]]:
        """A request's steering as a plan, and warnings. ``steering`` is a preset object, or
        ``{"presets": [{"name": ..., "scale": ...}]}`` naming this server's presets."""
        if not steering:
            return SteeringPlan.off(), []
        warnings: list[str] = []
        if isinstance(steering, Mapping) and "presets" in steering:
            plan = self._named_presets(steering)
        elif isinstance(steering, Mapping):
            plan, warnings = plan_from_request(
                steering, self.model, self.resolver, limits=self.limits.presets
            )
        else:
            raise PresetError(['steering: should be a preset object or {"presets": [...]}'])
        edits = len(plan.active_edits)
        if edits > self.limits.max_edits:
            raise LimitError(
                f"steering has {edits} feature edits; this server allows at most "
                f"{self.limits.max_edits} (max_edits)"
            )
        return plan, warnings

    def _named_presets(self, steering: Mapping[str, Any]) -> SteeringPlan:
        items = steering["presets"]
        if set(steering) != {"presets"} or not isinstance(items, list) or not items:
            raise PresetError(['steering: should be {"presets": [{"name": ..., "scale": ...}]}'])
        if len(items) > self.limits.max_edits:
            raise LimitError(f"{len(items)} presets named, at most {self.limits.max_edits}")
        chosen = [self._scaled_preset(i, item) for i, item in enumerate(items)]
        return compose(chosen, 1.0, self.limits.presets)

    def _scaled_preset(self, i: int, item: Any) -> tuple[Preset, Mapping[str, SAE]]:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise PresetError([f'steering.presets.{i}: should be {{"name": ..., "scale": 1.0}}'])
        if set(item) - {"name", "scale"}:
            raise PresetError([f"steering.presets.{i}: only name and scale are allowed"])
        entry = self.preset(item["name"])
        scale = item.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or abs(scale) > MAX_SCALE:
            raise PresetError([f"steering.presets.{i}.scale: a number in ±{MAX_SCALE:g}"])
        saes = self.resolver.resolve(entry.preset, base_dir=entry.base_dir)
        return entry.preset.model_copy(update={"scale": entry.preset.scale * scale}), saes

    def preset(self, name: str) -> PresetEntry:
        key = name.strip().lower()
        for entry in self.presets.values():
            if key in (entry.preset.name.lower(), entry.preset.slug):
                return entry
        raise PresetError(
            [f"steering: no preset named {name!r} on this server; have: {list(self.presets)}"]
        )

    # ---- generating ----

    def submit(
        self,
        messages: Sequence[Message],
        plan: SteeringPlan,
        sampling: SamplingParams,
        *,
        compare: bool = False,
        baseline_messages: Sequence[Message] | None = None,
    ) -> Handle:
        """Queue a reply (two with ``compare``: steered, baseline); raises RequestError, ChatError,
        PlanError or Busy before anything runs."""
        request = self.engine.request(
            messages, plan, sampling, compare=compare, baseline_messages=baseline_messages
        )
        return self.scheduler.submit(request)

    def close(self) -> None:
        self.scheduler.close()


def _short_name(name: str) -> str:
    return name.strip().rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
