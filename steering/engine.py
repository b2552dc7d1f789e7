"""The decode loop: prefill, then one token per step for a batch of rows with their own steering.

A request has one row (a reply) or two (an A/B compare: steered and baseline). Rows of every
running request share one batch and one KV cache; each row has its own steering plan, sampling
settings and stop condition. Requests join between steps (prefilled on their own, then merged
into the running cache) and finished or cancelled rows leave (continuous batching). The rows of
a request share their random numbers, so a compare differs only where steering changes the
distribution.

The engine is single-threaded: ``Scheduler`` runs it on a thread and feeds it requests.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import kv
from .chat import Message, render_prompt
from .hooks import Steering, attached, prepare
from .models import SteerableModel
from .plan import SteeringPlan
from .sampling import Limits, RequestError, SamplingParams, make_generator, pick_tokens
from .textstream import TextStream

_ids = itertools.count(1)


@dataclass(frozen=True)
class Row:
    """One reply to generate: its prompt tokens and its steering (None: unsteered)."""

    prompt_ids: tuple[int, ...]
    plan: SteeringPlan | None = None


@dataclass
class Request:
    rows: tuple[Row, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    id: int = field(default_factory=lambda: next(_ids))


@dataclass(frozen=True)
class Event:
    """A piece of one row's reply. The last event of a row has a ``finish_reason``:
    "stop" (EOS or a stop string), "length" (max_new_tokens) or "cancelled"."""

    request_id: int
    row: int
    delta: str
    token_id: int | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class _Live:
    """A row being generated: its position in the batch tables and its text so far."""

    def __init__(self, request: _LiveRequest, index: int, row: Row, tokenizer: Any) -> None:
        self.request, self.index, self.row = request, index, row
        self.stream = TextStream(tokenizer, request.params.stop)
        self.tokens: list[int] = []
        self.finish: str | None = None


class _LiveRequest:
    def __init__(self, request: Request) -> None:
        self.id = request.id
        self.params = request.sampling
        self.generator = make_generator(request.sampling.seed)
        self.cancelled = False


class Engine:
    """Runs requests on one model. Not thread-safe: use it from one thread (see Scheduler)."""

    def __init__(
        self, model: SteerableModel, *, limits: Limits = Limits(), max_batch: int = 16
    ) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        self.limits = limits
        self.max_batch = max_batch
        self.eos_ids = sorted(_eos_ids(model))
        specials = sorted(set(getattr(self.tokenizer, "all_special_ids", [])))
        self.special_ids = torch.tensor(specials, dtype=torch.long, device=model.device)
        self.vocab = model.model.get_output_embeddings().weight.shape[0]
        self.device = model.device
        self.live: list[_Live] = []
        self.cache = kv.new_cache()
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # (B, T)
        self.last = torch.zeros(0, dtype=torch.long, device=self.device)  # (B,) newest tokens
        self._steering: Steering | None = None

    # ---- building requests ----

    def request(
        self,
        messages: Sequence[Message] | str,
        plan: SteeringPlan | None = None,
        sampling: SamplingParams | None = None,
        *,
        compare: bool = False,
        baseline_messages: Sequence[Message] | None = None,
    ) -> Request:
        """A request for a reply to ``messages`` (a chat history, or one user message).

        With ``compare`` it has two rows, steered and baseline; ``baseline_messages`` is the
        baseline chat's own history when it differs (multi-turn A/B).
        """
        sampling = (sampling or SamplingParams()).validate(self.limits)
        if plan is not None:
            prepare(self.model, plan)  # a plan that does not fit fails here, not in the batch
        steered = Row(self.encode_chat(messages), plan if plan and not plan.is_empty else None)
        if not compare:
            return Request((steered,), sampling)
        baseline = Row(self.encode_chat(baseline_messages or messages))
        return Request((steered, baseline), sampling)

    def encode_chat(self, messages: Sequence[Message] | str) -> tuple[int, ...]:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        ids = tuple(render_prompt(self.tokenizer, messages))
        if len(ids) > self.limits.max_prompt_tokens:
            raise RequestError(
                f"the prompt has {len(ids)} tokens, at most {self.limits.max_prompt_tokens}"
            )
        return ids

    # ---- running ----

    def stream(self, request: Request) -> Iterator[Event]:
        """Run one request alone and yield its events; closing the iterator cancels it."""
        try:
            yield from self.admit([request])
            while self.live:
                yield from self.step()
        finally:
            self.cancel(request.id)
            self.drop_finished()

    def run_compare(
        self, messages: Sequence[Message] | str, plan: SteeringPlan | None, sampling: SamplingParams
    ) -> list[dict[str, Any]]:
        """Both replies of an A/B compare, collected: [steered, baseline]."""
        replies = [{"text": "", "finish_reason": None, "completion_tokens": 0} for _ in range(2)]
        for event in self.stream(self.request(messages, plan, sampling, compare=True)):
            reply = replies[event.row]
            reply["text"] += event.delta
            reply["finish_reason"] = event.finish_reason or reply["finish_reason"]
            reply["completion_tokens"] = event.completion_tokens
        return replies

    def admit(self, requests: Sequence[Request]) -> list[Event]:
        """Prefill ``requests`` together, pick their first tokens, and merge them into the batch."""
        live: list[_Live] = []
        for request in requests:
            lr = _LiveRequest(request)
            live += [_Live(lr, i, row, self.tokenizer) for i, row in enumerate(request.rows)]
        prompts = [row.row.prompt_ids for row in live]
        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor(
            [[pad] * (width - len(p)) + list(p) for p in prompts], device=self.device
        )
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device
        )
        cache = kv.new_cache()
        steering = prepare(self.model, [r.row.plan for r in live], special_token_ids=[])
        if steering.needs_positions:
            steering.set_positions(torch.zeros_like(ids, dtype=torch.bool), self._special(ids))
        logits = self._forward(
            steering, ids, mask, cache, positions=(mask.cumsum(-1) - 1).clamp(min=0)
        )
        events = self._pick(live, logits, prompt_ids=prompts)
        if self.live:
            self.cache, self.mask = kv.merge(self.cache, self.mask, cache, mask)
        else:
            self.cache, self.mask = cache, mask
        self.live += live
        self.last = torch.cat(
            [
                self.last,
                torch.tensor([r.tokens[-1] if r.tokens else pad for r in live], device=self.device),
            ]
        )
        self._steering = None  # the batch changed: steering is prepared again
        return events + self.drop_finished()

    def step(self) -> list[Event]:
        """One decode step for every live row."""
        cancelled = self.drop_finished()
        if not self.live:
            return cancelled
        if self._steering is None:
            self._steering = prepare(
                self.model, [r.row.plan for r in self.live], special_token_ids=[]
            )
        ids = self.last[:, None]
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        if self._steering.needs_positions:
            self._steering.set_positions(torch.ones_like(ids, dtype=torch.bool), self._special(ids))
        positions = self.mask.sum(-1, keepdim=True) - 1
        logits = self._forward(self._steering, ids, self.mask, self.cache, positions=positions)
        events = cancelled + self._pick(self.live, logits)
        self.last = torch.tensor([r.tokens[-1] for r in self.live], device=self.device)
        self.drop_finished()
        return events

    def cancel(self, request_id: int) -> None:
        for row in self.live:
            if row.request.id == request_id:
                row.request.cancelled = True

    def drop_finished(self) -> list[Event]:
        """Remove finished and cancelled rows from the batch and its cache."""
        events = [
            self._finish(r, "cancelled") for r in self.live if r.request.cancelled and not r.finish
        ]
        keep = [i for i, r in enumerate(self.live) if not r.finish]
        if len(keep) < len(self.live):
            rows = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.cache, self.mask = kv.select(self.cache, self.mask, rows)
            self.last = self.last[rows]
            self.live = [self.live[i] for i in keep]
            self._steering = None
        return events

    # ---- steps ----

    def _forward(
        self, steering: Steering, ids: Tensor, mask: Tensor, cache: Any, positions: Tensor
    ) -> Tensor:
        with torch.inference_mode(), attached(steering):
            out = self.model.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **kv.cache_kwargs(self.model.model, cache),
            )
        return out.logits[:, -1].float()  # (B, V)

    def _pick(
        self, rows: list[_Live], logits: Tensor, prompt_ids: list[tuple[int, ...]] | None = None
    ) -> list[Event]:
        noise = self._noise(rows, logits.shape[-1])
        params = [r.request.params for r in rows]
        seen = (
            self._seen(rows, prompt_ids, logits.shape[-1])
            if any(p.repetition_penalty != 1.0 for p in params)
            else None
        )
        early = [i for i, r in enumerate(rows) if len(r.tokens) < r.request.params.min_new_tokens]
        if early and self.eos_ids:  # EOS may not end a reply before min_new_tokens
            logits = logits.clone()  # the forward's output is an inference-mode tensor
            logits[torch.tensor(early)[:, None], torch.tensor(self.eos_ids)] = float("-inf")
        tokens = pick_tokens(logits, noise, params, seen).tolist()
        events = []
        for r, token in zip(rows, tokens):
            r.tokens.append(token)
            events.append(self._advance(r, token))
        return events

    def _advance(self, r: _Live, token: int) -> Event:
        n, params = len(r.tokens), r.request.params
        if token in self.eos_ids:
            return self._finish(r, "stop")
        delta = r.stream.push(token)
        if r.stream.stopped:
            return self._finish(r, "stop", delta)
        if n >= params.max_new_tokens:
            return self._finish(r, "length", delta + r.stream.flush())
        return Event(r.request.id, r.index, delta, token, None, len(r.row.prompt_ids), n)

    def _finish(self, r: _Live, reason: str, delta: str = "") -> Event:
        r.finish = reason
        token = r.tokens[-1] if r.tokens else None
        return Event(
            r.request.id, r.index, delta, token, reason, len(r.row.prompt_ids), len(r.tokens)
        )

    def _noise(self, rows: list[_Live], vocab: int) -> Tensor | None:
        """One uniform vector per request per step, shared by the request's rows."""
        drawn: dict[int, Tensor] = {}
        for r in rows:
            if r.request.id not in drawn and not r.request.params.greedy:
                drawn[r.request.id] = torch.rand(vocab, generator=r.request.generator)
        if not drawn:
            return None  # every row is greedy
        fill = torch.full((vocab,), 0.5)
        return torch.stack([drawn.get(r.request.id, fill) for r in rows]).to(self.device)

    def _seen(
        self, rows: list[_Live], prompt_ids: list[tuple[int, ...]] | None, vocab: int
    ) -> Tensor:
        seen = torch.zeros(len(rows), vocab, dtype=torch.bool)
        for i, r in enumerate(rows):
            seen[i, list(r.row.prompt_ids) + r.tokens] = True
        return seen.to(self.device)

    def _special(self, ids: Tensor) -> Tensor:
        return torch.isin(ids, self.special_ids)


def _eos_ids(model: SteerableModel) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model.model, "generation_config", None), model.tokenizer):
        value = getattr(source, "eos_token_id", None)
        ids.update([value] if isinstance(value, int) else value or [])
    return ids
