"""What the page and the API share: one model behind a generation backend, the presets and
SAEs that fit it, and the server's limits.

Both turn a steering given over the network into a plan here (``Service.plan``), so the same
rules (allow-listed SAEs, bounded values, bounded number of edits) apply to both; both build
requests here (``Service.submit``, ``Service.sweep``) on their own thread, so a bad request
never reaches the backend. ``Service.activations`` reads which SAE features fire at each token
of a text, on the unsteered model, through the backend (never alongside a steered step).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from ..activations import ActivationProbe, TokenActivations, chat_tokens, check_request
from ..chat import Message
from ..engine import Engine
from ..errors import Busy, LimitError, PresetError, RequestError, SteeringError
from ..limits import Limits
from ..loop import EngineLoop
from ..models import SteerableModel, short_name
from ..plan import SteeringPlan
from ..presets.library import PresetEntry, PresetRegistry
from ..presets.saes import SAEResolver, declare_sae, is_server_path
from ..presets.schema import NamedPresets, Preset, PresetSAE
from ..presets.to_plan import check_fits, compose, plan_from_request
from ..requests import build_request, build_sweep_request
from ..sae import SAE
from ..sampling import SamplingParams
from .backend import Backend, EventStream

log = logging.getLogger("steering.server")

Steering = Preset | NamedPresets | None  # what a request's ``steering`` field holds


class Service:
    """The model behind the server. Thread-safe: requests go through the backend.

    ``saes`` maps public references (what presets and the page show) to loaded SAEs; the
    registry's presets that fit the model are offered, with their SAEs loaded. ``backend``
    defaults to this project's engine on a thread (``EngineLoop``); a function of the service
    instead is called once its SAEs are loaded (the vLLM backend hooks their hook points).
    """

    def __init__(
        self,
        model: SteerableModel,
        saes: Mapping[str, SAE],
        registry: PresetRegistry,
        limits: Limits = Limits(),
        model_id: str | None = None,
        backend: Backend | Callable[[Service], Backend] | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        self.model_id = model_id or short_name(model.name) or "steering-model"
        # a weightless model (meta device) runs elsewhere: its SAEs live on the CPU here
        device = model.device if model.device.type != "meta" else "cpu"
        self.resolver = SAEResolver(device=device)
        self.saes: dict[str, SAE] = {}  # public reference -> SAE, for "add a feature"
        for ref, sae in saes.items():
            self.add_sae(ref, sae)
        self.presets = self._usable_presets(registry)
        if backend is None:
            backend = EngineLoop(Engine(model, limits=limits))
        elif not hasattr(backend, "submit"):  # a factory: it needs the SAEs loaded above
            backend = backend(self)
        self.backend: Backend = backend

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
        return self._plan_at(steering, 1.0)

    def _plan_at(self, steering: Steering, scale: float) -> tuple[SteeringPlan, list[str]]:
        """``plan`` with every strength of ``steering`` times ``scale`` (0: no edits)."""
        if steering is None:
            return SteeringPlan.off(), []
        warnings: list[str] = []
        if isinstance(steering, NamedPresets):
            plan = self._named_presets(steering, scale)
        else:
            plan, warnings = plan_from_request(
                steering,
                self.model,
                self.resolver,
                scale=scale,
                limits=self.limits,
                served_as=self.model_id,
            )
        edits = len(plan.active_edits)
        if edits > self.limits.max_edits:
            raise LimitError(
                f"steering has {edits} feature edits; this server allows at most "
                f"{self.limits.max_edits} (max_edits)",
                param="steering",
            )
        return plan, warnings

    def _named_presets(self, steering: NamedPresets, scale: float = 1.0) -> SteeringPlan:
        if len(steering.presets) > self.limits.max_edits:
            raise LimitError(
                f"{len(steering.presets)} presets named, at most {self.limits.max_edits}",
                param="steering",
            )
        applied = []
        for ref in steering.presets:
            entry = self.preset(ref.name)
            saes = self.resolver.resolve(entry.preset, base_dir=entry.base_dir)
            applied.append((entry.preset, saes, ref.scale * scale))
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

    def sweep_plans(
        self, steering: Steering, scales: Sequence[float]
    ) -> tuple[list[SteeringPlan], list[str]]:
        """The plans of a strength sweep: ``steering`` with every edit's strength times
        ``scales[i]`` (0: an empty plan, the unsteered reply), and warnings to show.

        Raises ``RequestError`` (param ``sweep``: no steering, no multiplier, one that is not a
        finite number), ``LimitError`` (param ``sweep``: more than ``limits.max_sweep_rows`` or
        ``max_batch`` multipliers, or one that takes a strength over ``max_multiple`` /
        ``max_raw`` or a scale over the preset format's bound; the message names it), and the
        errors of ``plan`` for the steering itself (unknown preset or SAE, a model it does not
        fit)."""
        if steering is None:
            raise RequestError("sweep: needs a steering whose strengths it scales", param="sweep")
        scales = list(scales)
        if not scales:
            raise RequestError(
                "sweep: give at least one multiplier, e.g. [0, 1, 2, 4, 8, 16]", param="sweep"
            )
        limits = self.limits
        if len(scales) > limits.max_sweep_rows:
            raise LimitError(
                f"sweep: {len(scales)} multipliers, at most {limits.max_sweep_rows} "
                "(max_sweep_rows)",
                param="sweep",
            )
        if len(scales) > limits.max_batch:
            raise LimitError(
                f"sweep: {len(scales)} multipliers are {len(scales)} rows, but this server "
                f"decodes at most {limits.max_batch} rows together (max_batch)",
                param="sweep",
            )
        for i, scale in enumerate(scales):
            if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise RequestError(f"sweep.{i}: {scale!r} is not a number", param="sweep")
            if not math.isfinite(scale):
                raise RequestError(f"sweep.{i}: {scale!r} is not a finite number", param="sweep")
        _, warnings = self._plan_at(steering, 0.0)  # the steering itself, at no strength
        plans = []
        for i, scale in enumerate(scales):
            try:
                plan, _ = self._plan_at(steering, float(scale))
            except (PresetError, LimitError) as e:
                why = "; ".join(e.problems) if isinstance(e, PresetError) else str(e)
                raise LimitError(f"sweep.{i}: multiplier {scale:g}: {why}", param="sweep") from e
            plans.append(plan)
        return plans, warnings

    def sweep(
        self,
        messages: Sequence[Message],
        steering: Steering,
        scales: Sequence[float],
        sampling: SamplingParams,
        *,
        visitor: str = "",
    ) -> EventStream:
        """Queue a strength sweep for ``visitor``: one reply to ``messages`` per multiplier,
        row ``i`` (``Event.row``) steered by ``steering`` with every edit's strength times
        ``scales[i]`` (0: the unsteered reply). The rows are one request: they share
        ``sampling`` and its random numbers, so row ``i`` is token for token the reply a
        request steered at ``scales[i]`` alone with the same seed gets, and the rows differ
        only where the strength changes the distribution.

        Built on the caller's thread: raises the errors of ``sweep_plans`` (bad multipliers,
        too many), ``RequestError``, ``ChatError``, ``PromptTooLong``, ``PlanError`` as
        ``submit`` does, or ``Busy``, before anything runs."""
        plans, _ = self.sweep_plans(steering, scales)
        return self.submit_rows(messages, plans, sampling, visitor=visitor)

    def submit_rows(
        self,
        messages: Sequence[Message],
        plans: Sequence[SteeringPlan | None],
        sampling: SamplingParams,
        *,
        visitor: str = "",
    ) -> EventStream:
        """Queue one reply to ``messages`` per plan (row ``i`` steered by ``plans[i]``), as
        one request whose rows share ``sampling`` and its random numbers; raises
        ``LimitError`` beyond ``limits.max_batch`` rows, and the errors of ``submit``."""
        if len(plans) > self.limits.max_batch:
            raise LimitError(
                f"{len(plans)} rows, but this server decodes at most {self.limits.max_batch} "
                "rows together (max_batch)",
                param="sweep",
            )
        request = build_sweep_request(self.model, messages, plans, sampling, limits=self.limits)
        request.visitor = visitor
        return self.backend.submit(request)

    # ---- what lights up ----

    def activations(
        self,
        messages_or_text: Sequence[Message] | str,
        sae_ref: str | None = None,
        *,
        features: Sequence[int] = (),
        top_k: int = 5,
        visitor: str = "",
    ) -> TokenActivations:
        """Which features of the SAE offered as ``sae_ref`` (default: the first of ``saes``)
        fire at each token of a text or a chat, on the unsteered model, with the activation of
        each of ``features`` at every token (see ``steering.activations.TokenActivations``:
        raw activation units, ``max_activation`` for fractions, ``reply_start`` where a chat's
        last assistant message starts).

        The text and the bounds are checked on the caller's thread; the forward pass runs on
        the backend (``Backend.run``: never alongside a steered step), and this call waits for
        it, at most ``limits.max_stall_seconds``. ``visitor`` names who asks, as for ``submit``.

        Raises the errors of ``activation_probe``, or ``Busy`` (the backend is full, or did not
        get to it in time)."""
        probe = self.activation_probe(
            messages_or_text, sae_ref, features=features, top_k=top_k, visitor=visitor
        )
        future = self.backend.run(probe.run)
        try:
            found = future.result(timeout=self.limits.max_stall_seconds)
        except FutureTimeout:
            future.cancel()
            raise Busy(
                f"the engine did not get to it within {self.limits.max_stall_seconds:g} s"
            ) from None
        return probe.result(found)

    def activation_probe(
        self,
        messages_or_text: Sequence[Message] | str,
        sae_ref: str | None = None,
        *,
        features: Sequence[int] = (),
        top_k: int = 5,
        visitor: str = "",
    ) -> ActivationProbe:
        """``activations`` checked and tokenized, not run: hand ``probe.run`` to
        ``backend.run`` and give its result to ``probe.result`` (the API does so without
        holding a thread while it waits).

        Raises ``RequestError`` (``sae``: not an SAE of this server, naming the valid ones;
        ``top_k`` outside 1..32; ``features``: an index outside 0..d_sae-1), ``LimitError``
        (more than ``limits.max_edits`` features), ``PromptTooLong`` (more tokens than
        ``limits.max_prompt_tokens`` or the model's context, naming both) or ``ChatError``."""
        _, sae = self.offered_sae(sae_ref)
        features = list(features)
        if len(features) > self.limits.max_edits:
            raise LimitError(
                f"features: {len(features)} features, at most {self.limits.max_edits} (max_edits)",
                param="features",
            )
        ids, reply_start = chat_tokens(
            self.model.tokenizer, messages_or_text, self.limits, self.model.context_length
        )
        check_request(sae, len(ids), features, top_k)
        log.debug("activations for %s: %d tokens", visitor or "anonymous", len(ids))
        return ActivationProbe(self.model, sae, tuple(ids), tuple(features), top_k, reply_start)

    def offered_sae(self, ref: str | None = None) -> tuple[str, SAE]:
        """The public reference and the SAE offered under ``ref`` (None: the first of
        ``saes``); ``RequestError`` (param ``sae``) naming the offered ones otherwise."""
        if not self.saes:
            raise RequestError("sae: this server has no SAE loaded", param="sae")
        if ref is None:
            return next(iter(self.saes.items()))
        sae = self.saes.get(ref.strip())
        if sae is None:
            raise RequestError(
                f"sae: {ref!r} is not an SAE of this server; use one of {list(self.saes)}",
                param="sae",
            )
        return ref.strip(), sae

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
