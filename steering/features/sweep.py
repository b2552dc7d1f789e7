"""Strength calibration by a sweep: how often does a steering bring its concept in, and what
does it cost the replies, at each of several strengths?

``calibrate`` steers a prompt set at every multiplier of a list. A multiplier ``m`` scales the
steering given at multiplier 1 (``SteeringPlan.scaled``): for a feature clamped in multiples of
its max activation (``unit_plan`` = clamp at 1 x max activation) ``m`` is the clamp value in
multiples of the max activation, as in docs/demo-world.md's Golden Gate curve; for a preset it
is a scale of the preset's own strengths (1 is the preset as written). Multiplier 0 is the
unsteered model, the reference every other multiplier is judged against; the sweep always runs
it.

Each prompt is one request whose rows are the multipliers (``build_sweep_request``): the rows
share their random numbers, prompt ``i`` sampling with seed ``seed + i``, so the 0 row is token
for token the unsteered reply, and a row differs from it only where its strength changes the
distribution. The engine decodes many prompts' rows together (``batch_rows``).

Per multiplier (``SweepPoint``):

- concept rate: the share of replies the ``Concept`` matches (a case-insensitive regular
  expression, or keywords matched as whole words);
- fluency: the mean per-token loss of the replies' tokens (the end-of-turn token included)
  under the unsteered model, in nats per token: how surprising the replies are to the model
  without steering (lower is more fluent);
- well-formed rate: the share of replies that end with the end-of-turn token within
  ``max_new_tokens``.

The suggestion (``suggest``): among the multipliers other than 0 whose fluency is at most the
unsteered fluency plus ``fluency_bound`` nats/token and whose well-formed rate is at least the
unsteered rate minus ``well_formed_drop``, the one with the highest concept rate (ties: the
smallest |multiplier|), provided that rate is above the unsteered one: a steering that brings
the concept in no more often than no steering at all is no suggestion. ``format_table``,
``write_csv``, ``to_json`` and ``plot_sweep`` in ``steering.features.report`` report a
``SweepResult``; ``preset_for_plan`` and ``preset_at_scale`` in
``steering.features.calibrated_preset`` turn the suggestion into a preset.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from ..chat import Message
from ..engine import Engine
from ..errors import ChatError, PromptTooLong, RequestError, SteeringError
from ..limits import PRESET_FILE, Limits
from ..models import SteerableModel
from ..plan import SteeringPlan
from ..requests import Request, build_sweep_request
from ..sampling import SamplingParams

MAX_MULTIPLIERS = 32  # rows per prompt (0 included): each is a reply per prompt
MAX_PROMPTS = 2000
MAX_NEW_TOKENS = 1024
MAX_BATCH_ROWS = 4096
DEFAULT_FLUENCY_BOUND = 1.0  # nats/token over the unsteered replies' loss
DEFAULT_WELL_FORMED_DROP = 0.1  # share of replies below the unsteered well-formed rate
# (rows x tokens) of one loss forward pass: its float32 logits are LOSS_TOKENS x vocabulary x 4
# bytes, 2 GB for a 256k vocabulary
LOSS_TOKENS = 2048

Prompt = str | Sequence[Message]  # one user message, or a chat


class Concept:
    """What shows that a reply brings the concept in: a case-insensitive regular expression
    (``Concept.regex``) or keywords matched as whole words (``Concept.keywords``)."""

    def __init__(self, pattern: re.Pattern[str], text: str) -> None:
        self.pattern, self.text = pattern, text

    @classmethod
    def regex(cls, pattern: str) -> Concept:
        """Raises ``RequestError`` (param ``concept``) for an empty or invalid expression."""
        if not pattern or len(pattern) > 1000:
            raise RequestError(
                "concept: give a regular expression of 1..1000 characters", param="concept"
            )
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise RequestError(
                f"concept: {pattern!r} is not a valid regular expression ({e})", param="concept"
            ) from None
        return cls(compiled, f"/{pattern}/i")

    @classmethod
    def keywords(cls, words: str | Sequence[str]) -> Concept:
        """``words`` comma-separated or a list; each matches as a whole word or phrase, any case
        ("gate" matches "Gate." but not "gates"). Raises ``RequestError`` when none is given."""
        items = words.split(",") if isinstance(words, str) else list(words)
        items = [w.strip() for w in items if w.strip()]
        if not items or len(items) > 100:
            raise RequestError(
                f"concept: give 1..100 comma-separated keywords, got {words!r}", param="concept"
            )
        alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in items)
        return cls(re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE), ", ".join(items))

    def matches(self, text: str) -> bool:
        return self.pattern.search(text) is not None


@dataclass(frozen=True)
class SweepReply:
    """One generated reply: prompt ``prompt`` (its index) at multiplier ``multiplier``."""

    prompt: int
    multiplier: float
    text: str
    finish_reason: str
    tokens: tuple[int, ...]

    @property
    def well_formed(self) -> bool:
        """Ended with the end-of-turn token within the length limit."""
        return self.finish_reason == "stop"


@dataclass(frozen=True)
class SweepPoint:
    """One multiplier's numbers: rates are shares of ``replies`` (0..1), ``fluency`` is nats
    per token (see the module docstring)."""

    multiplier: float
    concept_rate: float
    fluency: float
    well_formed: float
    replies: int


@dataclass(frozen=True)
class SweepResult:
    """A sweep's points (in the order of the multipliers, 0 first), its suggestion (None when
    no multiplier qualifies; ``reason`` says why either way) and what it was run with."""

    points: tuple[SweepPoint, ...]
    suggested: float | None
    reason: str
    unit: str  # what a multiplier means, for people
    concept: str
    fluency_bound: float
    well_formed_drop: float
    settings: dict[str, Any] = field(default_factory=dict)
    replies: tuple[SweepReply, ...] = ()

    @property
    def baseline(self) -> SweepPoint:
        return next(p for p in self.points if p.multiplier == 0)


def check_multipliers(multipliers: Sequence[float]) -> tuple[float, ...]:
    """The multipliers as floats with 0 first (added when missing), duplicates dropped.

    Raises ``RequestError`` (param ``multipliers``) for none, more than ``MAX_MULTIPLIERS``, or
    one that is not a finite number."""
    values: list[float] = [0.0]
    for i, m in enumerate(multipliers):
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
            raise RequestError(
                f"multipliers.{i}: {m!r} is not a finite number", param="multipliers"
            )
        if float(m) not in values:
            values.append(float(m))
    if len(values) < 2:
        raise RequestError(
            "multipliers: give at least one multiplier other than 0, e.g. 0,1,2,4,8",
            param="multipliers",
        )
    if len(values) > MAX_MULTIPLIERS:
        raise RequestError(
            f"multipliers: {len(values)} multipliers (0 included), at most {MAX_MULTIPLIERS}",
            param="multipliers",
        )
    return tuple(values)


def sweep_plans(unit_plan: SteeringPlan, multipliers: Sequence[float]) -> list[SteeringPlan]:
    """``unit_plan`` scaled by each multiplier (0: the empty plan).

    Raises ``RequestError`` naming the multiplier when an edit would pass the preset format's
    bounds (``PRESET_FILE``: ±1000 x max activation, ±1e5 raw units)."""
    if unit_plan.is_empty:
        raise RequestError("a sweep needs a steering to scale; this one edits nothing")
    plans = []
    for m in multipliers:
        plan = unit_plan.scaled(m)
        for edit in plan.active_edits:
            bound = PRESET_FILE.max_multiple if edit.unit == "max_act" else PRESET_FILE.max_raw
            if abs(edit.value) > bound:
                unit = "x max activation" if edit.unit == "max_act" else "raw units"
                raise RequestError(
                    f"multiplier {m:g}: feature {edit.feature} at {edit.value:g} {unit} is over "
                    f"the limit of {bound:g}",
                    param="multipliers",
                )
        plans.append(plan)
    return plans


def generate_sweep(
    model: SteerableModel,
    unit_plan: SteeringPlan,
    multipliers: Sequence[float],
    prompts: Sequence[Prompt],
    *,
    seed: int = 0,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 96,
    batch_rows: int = 256,
    progress: bool = False,
) -> tuple[list[SweepReply], list[tuple[int, ...]]]:
    """Every prompt's reply at every multiplier (prompt-major: prompt ``i`` at ``multipliers[j]``
    is item ``i * len(multipliers) + j``), and each prompt's token ids.

    One request per prompt, its rows the multipliers, prompt ``i`` with seed ``seed + i``; the
    engine decodes up to ``max(batch_rows, len(multipliers))`` rows together, admitting the
    next prompts as rows finish. Raises the errors of ``build_sweep_request`` (a bad setting,
    a prompt too long, a plan that does not fit the model) before anything runs (a prompt's
    error with param ``prompts.i``, ``i`` its index), and the error of a row that failed."""
    if not prompts:
        raise RequestError("prompts: give at least one prompt", param="prompts")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(f"prompts: {len(prompts)} prompts, at most {MAX_PROMPTS}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise RequestError(f"max_new_tokens: {max_new_tokens} is not in 1..{MAX_NEW_TOKENS}")
    if not 1 <= batch_rows <= MAX_BATCH_ROWS:
        raise RequestError(f"batch_rows: {batch_rows} is not in 1..{MAX_BATCH_ROWS}")
    plans = sweep_plans(unit_plan, multipliers)
    limits = Limits(max_batch=max(batch_rows, len(plans)), max_new_tokens=MAX_NEW_TOKENS)
    requests = []
    for i, prompt in enumerate(prompts):
        sampling = SamplingParams(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed + i
        )
        try:
            requests.append(build_sweep_request(model, prompt, plans, sampling, limits=limits))
        except (PromptTooLong, ChatError) as e:  # a prompt's fault: name it (param prompts.i)
            raise type(e)(f"prompts.{i}: {e}", param=f"prompts.{i}") from e
    found = _run(Engine(model, limits=limits), requests, progress)
    replies = [
        SweepReply(i, m, *found[(request.id, j)])
        for i, request in enumerate(requests)
        for j, m in enumerate(multipliers)
    ]
    return replies, [request.rows[0].prompt_ids for request in requests]


def _run(
    engine: Engine, requests: list[Request], progress: bool
) -> dict[tuple[int, int], tuple[str, str, tuple[int, ...]]]:
    """(request id, row) -> (text, finish reason, tokens) of every row of ``requests``, with
    the engine's batch kept full: waiting requests join as soon as their rows fit."""
    texts: dict[tuple[int, int], str] = {}
    tokens: dict[tuple[int, int], list[int]] = {}
    finish: dict[tuple[int, int], str] = {}
    waiting = deque(requests)
    bar = tqdm(total=len(requests), desc="sweep", unit="prompt", disable=not progress)
    rows_left = {r.id: len(r.rows) for r in requests}
    try:
        while waiting or engine.live:
            joining: list[Request] = []
            room = engine.max_batch - len(engine.live)
            while waiting and len(waiting[0].rows) <= room:
                room -= len(waiting[0].rows)
                joining.append(waiting.popleft())
            events = engine.admit(joining) if joining else []
            events += engine.step() if engine.live else []
            for e in events:
                key = (e.request_id, e.row)
                texts[key] = texts.get(key, "") + e.delta
                if e.token_id is not None:
                    tokens.setdefault(key, []).append(e.token_id)
                if e.finish_reason:
                    if e.error is not None:
                        raise e.error
                    finish[key] = e.finish_reason
                    rows_left[e.request_id] -= 1
                    bar.update(rows_left[e.request_id] == 0)
    finally:
        bar.close()
    return {k: (texts[k].strip(), finish[k], tuple(tokens.get(k, ()))) for k in finish}


@torch.inference_mode()
def reply_losses(
    model: SteerableModel,
    prompt_ids: Sequence[Sequence[int]],
    replies: Sequence[Sequence[int]],
    progress: bool = False,
) -> list[tuple[float, int]]:
    """Per reply: the summed loss (nats) of its tokens under the unsteered model, read after
    its prompt, and the number of tokens. ``prompt_ids[i]`` is reply ``i``'s prompt.

    Rows are run right-padded in chunks of at most ``LOSS_TOKENS`` (rows x tokens)."""
    pad = model.tokenizer.pad_token_id or 0
    out: list[tuple[float, int]] = [(0.0, 0)] * len(replies)
    order = sorted(range(len(replies)), key=lambda i: len(prompt_ids[i]) + len(replies[i]))
    start = 0
    bar = tqdm(total=len(order), desc="fluency", unit="reply", disable=not progress)
    while start < len(order):
        width = len(prompt_ids[order[start]]) + len(replies[order[start]])
        stop = start + 1
        while stop < len(order):  # widths grow along ``order``: the last row sets the width
            wider = len(prompt_ids[order[stop]]) + len(replies[order[stop]])
            if (stop - start + 1) * wider > LOSS_TOKENS:
                break
            width, stop = wider, stop + 1
        chunk = order[start:stop]
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, i in enumerate(chunk):
            prompt, reply = list(prompt_ids[i]), list(replies[i])
            ids[row, : len(prompt) + len(reply)] = torch.tensor(prompt + reply)
            labels[row, len(prompt) : len(prompt) + len(reply)] = torch.tensor(reply)
        lengths = torch.tensor([len(prompt_ids[i]) + len(replies[i]) for i in chunk])
        mask = torch.arange(width) < lengths[:, None]  # right padding: the rest is unread
        logits = model.model(
            input_ids=ids.to(model.device), attention_mask=mask.long().to(model.device)
        ).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels[:, 1:].to(model.device), reduction="none"
        ).sum(-1)
        for row, i in enumerate(chunk):
            out[i] = (float(loss[row]), len(replies[i]))
        bar.update(stop - start)
        start = stop
    bar.close()
    return out


def calibrate(
    model: SteerableModel,
    unit_plan: SteeringPlan,
    multipliers: Sequence[float],
    prompts: Sequence[Prompt],
    *,
    concept: Concept,
    unit: str = "x the steering's strengths",
    seed: int = 0,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 96,
    batch_rows: int = 256,
    fluency_bound: float = DEFAULT_FLUENCY_BOUND,
    well_formed_drop: float = DEFAULT_WELL_FORMED_DROP,
    progress: bool = False,
) -> SweepResult:
    """Sweep ``unit_plan`` (the steering at multiplier 1) over ``multipliers`` (0 is added when
    missing) on ``prompts``, measure every multiplier and suggest one (module docstring).

    ``unit`` says what a multiplier means (the table's header). Raises ``RequestError`` for bad
    multipliers (``check_multipliers``, ``sweep_plans``), prompts or bounds, and the errors of
    ``generate_sweep``."""
    multipliers = check_multipliers(multipliers)
    for name, value in (("fluency_bound", fluency_bound), ("well_formed_drop", well_formed_drop)):
        if not (math.isfinite(value) and value >= 0):
            raise RequestError(f"{name}: {value!r} must be a finite number >= 0", param=name)
    replies, prompt_ids = generate_sweep(
        model,
        unit_plan,
        multipliers,
        prompts,
        seed=seed,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_rows=batch_rows,
        progress=progress,
    )
    losses = reply_losses(
        model, [prompt_ids[r.prompt] for r in replies], [r.tokens for r in replies], progress
    )
    points = []
    for m in multipliers:
        mine = [(r, loss) for r, loss in zip(replies, losses) if r.multiplier == m]
        total, count = (sum(x) for x in zip(*(loss for _, loss in mine)))
        points.append(
            SweepPoint(
                multiplier=m,
                concept_rate=sum(concept.matches(r.text) for r, _ in mine) / len(mine),
                fluency=total / max(count, 1),
                well_formed=sum(r.well_formed for r, _ in mine) / len(mine),
                replies=len(mine),
            )
        )
    suggested, reason = suggest(points, fluency_bound, well_formed_drop)
    settings = {
        "prompts": len(prompts),
        "seed": seed,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
    }
    return SweepResult(
        tuple(points),
        suggested,
        reason,
        unit,
        concept.text,
        fluency_bound,
        well_formed_drop,
        settings,
        tuple(replies),
    )


def suggest(
    points: Sequence[SweepPoint],
    fluency_bound: float = DEFAULT_FLUENCY_BOUND,
    well_formed_drop: float = DEFAULT_WELL_FORMED_DROP,
) -> tuple[float | None, str]:
    """The suggested multiplier (None when none qualifies) and why (the rule is in the module
    docstring); ``points`` must hold multiplier 0, the reference."""
    base = next((p for p in points if p.multiplier == 0), None)
    if base is None:
        raise SteeringError("a sweep's points need multiplier 0 (unsteered) as the reference")
    most_loss = base.fluency + fluency_bound
    least_formed = base.well_formed - well_formed_drop
    bounds = (
        f"fluency <= {most_loss:.3f} nats/token (unsteered {base.fluency:.3f} + "
        f"{fluency_bound:g}) and well-formed >= {max(least_formed, 0):.0%} (unsteered "
        f"{base.well_formed:.0%} - {well_formed_drop:.0%})"
    )
    fit = [
        p
        for p in points
        if p.multiplier != 0 and p.fluency <= most_loss and p.well_formed >= least_formed
    ]
    if not fit:
        return None, f"no multiplier keeps {bounds}"
    best = max(fit, key=lambda p: (p.concept_rate, -abs(p.multiplier)))
    if best.concept_rate <= base.concept_rate:
        return None, (
            f"no multiplier raises the concept rate above the unsteered "
            f"{base.concept_rate:.0%} (the best is {best.concept_rate:.0%}, at "
            f"{best.multiplier:g}) among the multipliers with {bounds}"
        )
    return best.multiplier, (
        f"the highest concept rate ({best.concept_rate:.0%}, unsteered {base.concept_rate:.0%}) "
        f"among the multipliers with {bounds}"
    )


# ---- the suggestion as a preset ----
