"""A steering plan: a frozen value that travels from the request to the hook.

Modes, per feature i of an SAE with decoder rows W_dec:
- ``clamp`` (Anthropic's Golden Gate method): at each steered position add (target - f) * W_dec[i],
  where f is the feature's current activation. This is decode(features with f_i := target) + the
  SAE error term, written as a delta so the error term and every other feature are untouched.
- ``add``: add value * W_dec[i].
- ``ablate``: clamp to 0.

Values are in raw activation units or, with ``unit="max_act"``, multiples of the feature's max
activation (as in "Golden Gate Bridge at 10x its max").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from .errors import PlanError

if TYPE_CHECKING:  # the plan's types stay torch-free for the preset schema and the CLI
    from .sae import SAE

Mode = Literal["clamp", "add", "ablate"]
Unit = Literal["raw", "max_act"]
Positions = Literal["all", "prompt", "generated"]

MODES: tuple[Mode, ...] = ("clamp", "add", "ablate")
UNITS: tuple[Unit, ...] = ("raw", "max_act")
POSITIONS: tuple[Positions, ...] = ("all", "prompt", "generated")


@dataclass(frozen=True)
class FeatureEdit:
    """One feature of one SAE, and what to do with it.

    ``positions`` picks the tokens that are steered: prompt and generated tokens (``all``), the
    prompt only, or generated tokens only. ``skip_special_tokens`` leaves BOS and chat-turn
    markers unsteered.
    """

    sae: SAE
    feature: int
    mode: Mode = "clamp"
    value: float = 0.0
    unit: Unit = "raw"
    positions: Positions = "all"
    skip_special_tokens: bool = False

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, MODES)
        _check_choice("unit", self.unit, UNITS)
        _check_choice("positions", self.positions, POSITIONS)
        self.sae.check_feature(self.feature)
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise PlanError(f"value {self.value!r} must be a number")
        if not math.isfinite(self.value):
            raise PlanError(
                f"value {self.value!r} for feature {self.feature} is not finite: use a real number"
            )
        if self.unit == "max_act":
            self.sae.max_activation_of(self.feature)  # fails early when no maximum is known

    @property
    def raw_value(self) -> float:
        """The value in the SAE's raw activation units (0 for ``ablate``)."""
        if self.mode == "ablate":
            return 0.0
        if self.unit == "max_act":
            return self.value * self.sae.max_activation_of(self.feature)
        return float(self.value)

    @property
    def is_noop(self) -> bool:
        """An edit that cannot change anything: adding zero."""
        return self.mode == "add" and self.value == 0

    def scaled(self, scale: float) -> FeatureEdit:
        """The same edit with its value times ``scale`` (ablation has no value to scale)."""
        return self if self.mode == "ablate" else replace(self, value=self.value * scale)


@dataclass(frozen=True)
class SteeringPlan:
    """The steering of one request: a tuple of feature edits, applied together.

    An empty plan steers nothing; ``SteeringPlan.off()`` spells that out.
    """

    edits: tuple[FeatureEdit, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "edits", tuple(self.edits))
        fixed: set[tuple[int, int]] = set()  # (SAE, feature) pairs a clamp or ablation sets
        for edit in self.edits:
            if not isinstance(edit, FeatureEdit):
                raise PlanError(f"a plan holds FeatureEdit values, got {type(edit).__name__}")
            if edit.mode == "add":
                continue
            key = (id(edit.sae), edit.feature)
            if key in fixed:  # two targets for one activation: neither would hold
                raise PlanError(
                    f"feature {edit.feature} of {edit.sae.name} is clamped twice in one plan; "
                    "keep one clamp per feature"
                )
            fixed.add(key)

    @classmethod
    def off(cls) -> SteeringPlan:
        return cls(())

    @property
    def active_edits(self) -> tuple[FeatureEdit, ...]:
        return tuple(e for e in self.edits if not e.is_noop)

    @property
    def is_empty(self) -> bool:
        return not self.active_edits

    def scaled(self, scale: float) -> SteeringPlan:
        """Every value times ``scale``. Scale 0 is the baseline: the plan becomes empty."""
        if not math.isfinite(scale):
            raise PlanError(f"scale {scale!r} is not finite: use a real number")
        if scale == 0:
            return SteeringPlan.off()
        return SteeringPlan(tuple(e.scaled(scale) for e in self.edits))

    def __add__(self, other: SteeringPlan) -> SteeringPlan:
        return SteeringPlan(self.edits + other.edits)


def clamp(sae: SAE, feature: int, value: float, **kwargs: object) -> SteeringPlan:
    """A one-feature clamp plan, for the common case: ``clamp(sae, 1234, 10, unit="max_act")``."""
    return SteeringPlan((FeatureEdit(sae, feature, "clamp", value, **kwargs),))  # type: ignore[arg-type]


def _check_choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise PlanError(f"{name} {value!r} is not one of {', '.join(valid)}")
