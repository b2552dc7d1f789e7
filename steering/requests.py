"""What a generation request is, and how one is built from a chat.

A ``Request`` has one ``Row`` (a reply), two (an A/B compare: steered, then baseline) or one
per plan of a strength sweep (``build_sweep_request``: one prompt, the steering at several
multipliers); each row is its prompt's token ids and its steering plan. ``build_request``
renders the chat with the tokenizer's template, checks every bound and that the plan fits the
model, and builds no tensors. It runs on the caller's thread (a server's request handler, never
the engine's thread), so a bad request fails before it is queued and costs the batch nothing.

A running request yields ``Event`` values, one row's text delta each; ``collect`` gathers
them into whole replies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .chat import Message, render_prompt
from .errors import PromptTooLong, RequestError
from .limits import Limits
from .models import SteerableModel
from .plan import SteeringPlan
from .sampling import SamplingParams

_ids = itertools.count(1)


@dataclass(frozen=True)
class Row:
    """One reply to generate: its prompt tokens and its steering (None: unsteered)."""

    prompt_ids: tuple[int, ...]
    plan: SteeringPlan | None = None


@dataclass
class Request:
    """Rows that share their sampling settings and random numbers; ``id`` is unique.

    ``visitor`` names who sent it (the server's key for a client address or API key), so the
    loop can give each visitor a fair turn; "" (anonymous) is a turn of its own.
    """

    rows: tuple[Row, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    id: int = field(default_factory=lambda: next(_ids))
    visitor: str = ""


@dataclass(frozen=True)
class Event:
    """A piece of one row's reply. The last event of a row has a ``finish_reason``:
    "stop" (EOS or a stop string), "length" (max_new_tokens or the model's context),
    "cancelled", or "error" (generating this request failed; ``error`` says why, and no other
    request was affected)."""

    request_id: int
    row: int
    delta: str
    token_id: int | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: BaseException | None = None
    logprob: float | None = None  # of ``token_id``, when the request asked for log-probabilities
    top_logprobs: tuple[tuple[int, float], ...] = ()  # (token id, log-probability), best first


def build_request(
    model: SteerableModel,
    messages: Sequence[Message] | str,
    plan: SteeringPlan | None = None,
    sampling: SamplingParams | None = None,
    *,
    limits: Limits = Limits(),
    compare: bool = False,
    baseline_messages: Sequence[Message] | None = None,
) -> Request:
    """A request for a reply to ``messages`` (a chat history, or one user message).

    With ``compare`` it has two rows, steered and baseline; ``baseline_messages`` is the
    baseline chat's own history when it differs (multi-turn A/B). Raises ``RequestError``
    (a setting out of range), ``PromptTooLong``, ``ChatError`` or ``PlanError`` (the plan does
    not fit the model).
    """
    sampling = (sampling or SamplingParams()).validate(limits)
    model.check_plan(plan)
    active = plan if plan is not None and not plan.is_empty else None
    rows = [Row(encode_chat(model.tokenizer, messages, limits), active)]
    if compare:
        rows.append(Row(encode_chat(model.tokenizer, baseline_messages or messages, limits)))
    return Request(tuple(rows), fit_to_context(sampling, rows, model.context_length))


def build_sweep_request(
    model: SteerableModel,
    messages: Sequence[Message] | str,
    plans: Sequence[SteeringPlan | None],
    sampling: SamplingParams | None = None,
    *,
    limits: Limits = Limits(),
) -> Request:
    """A request with one row per plan (None or an empty plan: an unsteered row), every row a
    reply to the same ``messages``: its rows share the sampling settings and random numbers, so
    they differ only where their steering changes the distribution. Row ``i`` is the reply a
    request with ``plans[i]`` alone and the same seed gets.

    The caller bounds the number of rows (``Limits.max_sweep_rows``, ``max_batch``). Raises
    ``RequestError``, ``PromptTooLong``, ``ChatError`` or ``PlanError`` as ``build_request``.
    """
    if not plans:
        raise RequestError("a sweep needs at least one row", param="sweep")
    sampling = (sampling or SamplingParams()).validate(limits)
    for plan in plans:
        model.check_plan(plan)
    prompt = encode_chat(model.tokenizer, messages, limits)
    rows = [Row(prompt, plan if plan is not None and not plan.is_empty else None) for plan in plans]
    return Request(tuple(rows), fit_to_context(sampling, rows, model.context_length))


def fit_to_context(
    sampling: SamplingParams, rows: Sequence[Row], context: int | None
) -> SamplingParams:
    """``sampling`` with ``max_new_tokens`` cut to what fits the model's ``context`` after the
    longest prompt (the reply then ends with finish_reason "length", as OpenAI's does).

    Raises ``PromptTooLong`` naming both numbers when a prompt leaves no room for one token.
    """
    if context is None:
        return sampling
    longest = max(len(row.prompt_ids) for row in rows)
    room = context - longest
    if room < 1:
        raise PromptTooLong(
            f"the prompt has {longest} tokens, but the model's context is {context} tokens "
            "(prompt and reply together): shorten the chat"
        )
    if sampling.max_new_tokens <= room:
        return sampling
    return replace(
        sampling,
        max_new_tokens=room,
        min_new_tokens=min(sampling.min_new_tokens, room),
    )


def encode_chat(
    tokenizer: Any, messages: Sequence[Message] | str, limits: Limits = Limits()
) -> tuple[int, ...]:
    """Prompt token ids of a chat (or one user message), within ``limits.max_prompt_tokens``."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    ids = tuple(render_prompt(tokenizer, messages))
    if len(ids) > limits.max_prompt_tokens:
        raise PromptTooLong(f"the prompt has {len(ids)} tokens, at most {limits.max_prompt_tokens}")
    return ids


@dataclass
class Reply:
    """One row's whole reply, gathered from its events."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def collect(events: Iterable[Event], rows: int) -> list[Reply]:
    """The replies of a request's ``rows`` rows, from its events (in row order)."""
    replies = [Reply() for _ in range(rows)]
    for event in events:
        reply = replies[event.row]
        reply.text += event.delta
        reply.finish_reason = event.finish_reason or reply.finish_reason
        reply.prompt_tokens, reply.completion_tokens = event.prompt_tokens, event.completion_tokens
    return replies
