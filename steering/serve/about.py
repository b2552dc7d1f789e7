"""What the page tells a visitor about the served model and its SAEs, from the server's state.

``about(service)`` says which model answers (the project's demo model, or a model's name and
parameter count), how much it reads (its context), what to try typing, and, for each SAE the
page offers, how a newly added feature steers by default (``FeatureDefaults``). Nothing in
here is a server path: the page shows all of it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from ..errors import SteeringError
from ..sae import FeatureContext
from .service import Service

__all__ = [
    "GENERAL_PROMPTS",
    "REAL_MODEL_HINT",
    "About",
    "FeatureContext",
    "FeatureDefaults",
    "about",
    "feature_defaults",
]

# What the page suggests for a real chat model.
GENERAL_PROMPTS = (
    "Tell me about your weekend.",
    "What should I see on a trip to California?",
    "Describe yourself in three sentences.",
    "Write a short poem about the sea.",
)
REAL_MODEL_HINT = (
    '`make run ARGS="--model google/gemma-2-2b-it '
    '--sae google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"`'
)
# A feature added on a server whose presets say nothing about its SAE: clamped to this many
# times its highest observed activation on every position (Golden Gate Claude clamped a large
# model's feature at 10x; a few times suits most models), or, when the SAE has no activation
# statistics, to 0 raw units, which the visitor then sets.
DEFAULT_MULTIPLE = 4.0


@dataclass(frozen=True)
class FeatureDefaults:
    """How a feature of one SAE is added on the page: mode, unit, strength, scope."""

    mode: str = "clamp"
    unit: str = "max_act"
    value: float = DEFAULT_MULTIPLE
    positions: str = "all"
    skip_special_tokens: bool = False
    source: str = "default"  # "presets": read from the presets that use this SAE


@dataclass(frozen=True)
class About:
    """The served model as the page describes it."""

    name: str
    parameters: int
    is_demo: bool
    context_tokens: int | None  # prompt and reply together; None when the config does not say
    suggested_prompts: tuple[str, ...]

    def line(self) -> str:
        """One Markdown line for under the page's title."""
        if self.is_demo:
            return (
                f"Answering: the demo model, a {_count(self.parameters)}-parameter model of a "
                "small world (small talk, travel, food, poems, the weekend, cats, the sea, space, "
                "music, cooking and the Golden Gate Bridge) trained by "
                f"this project: it knows few words and reads {self.context_tokens} tokens. "
                f"To steer a real model: {REAL_MODEL_HINT}."
            )
        reads = f", reads {self.context_tokens:,} tokens" if self.context_tokens else ""
        return f"Answering: **{self.name}** ({_count(self.parameters)} parameters{reads})."


def about(service: Service) -> About:
    """What the page says about ``service``'s model."""
    model = service.model
    demo = _is_demo(model.name)
    prompts = GENERAL_PROMPTS
    if demo:
        from ..demo import SUGGESTED_PROMPTS

        prompts = tuple(SUGGESTED_PROMPTS)
    return About(
        name=service.model_id,
        parameters=sum(p.numel() for p in model.model.parameters()),
        is_demo=demo,
        context_tokens=model.context_length,
        suggested_prompts=prompts,
    )


def _is_demo(name: str) -> bool:
    """Whether the model was loaded from the shipped demo model's folder."""
    try:
        from ..demo import MODEL_DIR
    except ImportError:  # a build without the demo world
        return False
    try:
        return bool(name) and Path(name).resolve() == MODEL_DIR.resolve()
    except (OSError, ValueError):
        return False


def feature_defaults(service: Service, ref: str) -> FeatureDefaults:
    """How the page adds a feature of the SAE offered under ``ref``: the scope and the mode
    the server's presets use most with that SAE (chat-turn tokens left alone when at least
    half of those presets do), at the median strength they use with it;
    ``DEFAULT_MULTIPLE`` on every position when no preset uses it. Raises ``PresetError``
    when ``ref`` is not an SAE of this server."""
    sae = service.sae_for(ref)
    edits = []
    for entry in service.presets.values():
        try:
            saes = service.resolver.resolve(entry.preset, base_dir=entry.base_dir)
        except SteeringError:  # a preset that no longer resolves says nothing
            continue
        edits += [e for e in entry.preset.edits if saes.get(e.sae) is sae and e.mode != "ablate"]
    if not edits:
        if sae.max_activation is None:
            return FeatureDefaults(unit="raw", value=0.0)
        return FeatureDefaults()
    ways = Counter((e.mode, e.unit, e.positions) for e in edits)
    (mode, unit, positions), _ = ways.most_common(1)[0]
    same = [e for e in edits if (e.mode, e.unit, e.positions) == (mode, unit, positions)]
    skipping = sum(e.skip_special_tokens for e in same)
    skip = 2 * skipping >= len(same)  # a tie leaves the chat-turn tokens alone
    value = float(median(e.value for e in same))
    return FeatureDefaults(mode, unit, value, positions, skip, "presets")


def _count(n: int) -> str:
    """1091840 -> '1.1M'; 2614341888 -> '2.6B'."""
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)
