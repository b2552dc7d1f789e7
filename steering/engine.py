"""The batch: prefill, then one token per step for rows with their own steering.

Rows of every running request share one batch and one KV cache; each row has its own steering
plan, sampling settings and stop condition. Requests join between steps (``admit``: prefilled
on their own, then merged into the running cache) and finished or cancelled rows leave
(``drop_finished``): continuous batching. The rows of a request share their random numbers, so
a compare differs only where steering changes the distribution.

A batch's steering is prepared once when requests join; rows that leave take their tables
with them (``Steering.take_rows``), so nothing is rebuilt per step. The engine is
single-threaded: ``steering.loop.EngineLoop`` runs it on a thread and feeds it requests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from . import kv
from .hooks import Steering, attached, prepare
from .limits import Limits
from .models import SteerableModel
from .requests import Event, Request, Row
from .sampling import block_tokens, make_generator, pick_tokens, seen_tokens, shared_noise
from .textstream import TextStream


class RequestState:
    """A running request: its settings, its random generator and whether it was cancelled."""

    def __init__(self, request: Request) -> None:
        self.id = request.id
        self.params = request.sampling
        self.generator = make_generator(request.sampling.seed)
        self.cancelled = False


class RowState:
    """A row in the batch: its request, its index in the request, its tokens and text."""

    def __init__(self, request: RequestState, index: int, row: Row, tokenizer: Any) -> None:
        self.request, self.index, self.row = request, index, row
        self.stream = TextStream(tokenizer, request.params.stop)
        self.tokens: list[int] = []
        self.finish: str | None = None

    @property
    def context(self) -> list[int]:
        return [*self.row.prompt_ids, *self.tokens]


class Engine:
    """Runs requests on one model. Not thread-safe: use it from one thread (see EngineLoop).

    ``limits.max_batch`` is the most rows decoded together; requests are built (and checked
    against ``limits``) with ``steering.requests.build_request``.
    """

    def __init__(self, model: SteerableModel, *, limits: Limits = Limits()) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        self.limits = limits
        self.max_batch = limits.max_batch
        self.eos_ids = sorted(_eos_ids(model))
        specials = sorted(set(getattr(self.tokenizer, "all_special_ids", [])))
        self.special_ids = torch.tensor(specials, dtype=torch.long, device=model.device)
        self.device = model.device
        self.live: list[RowState] = []
        self.cache = kv.new_cache()
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # (B, T)
        self.last = torch.zeros(0, dtype=torch.long, device=self.device)  # (B,) newest tokens
        self.steering: Steering | None = None  # of the whole batch, rows in ``live`` order

    def stream(self, request: Request) -> Iterator[Event]:
        """Run one request alone and yield its events; closing the iterator cancels it."""
        try:
            yield from self.admit([request])
            while self.live:
                yield from self.step()
        finally:
            self.cancel(request.id)
            self.drop_finished()

    def admit(self, requests: Sequence[Request]) -> list[Event]:
        """Prefill ``requests`` together, pick their first tokens, and merge them into the batch."""
        new: list[RowState] = []
        for request in requests:
            state = RequestState(request)
            new += [RowState(state, i, row, self.tokenizer) for i, row in enumerate(request.rows)]
        old = len(self.live)
        batch = prepare(self.model, [r.row.plan for r in [*self.live, *new]], special_token_ids=[])
        prefill = batch.take_rows(range(old, old + len(new))) if old else batch
        prompts = [r.row.prompt_ids for r in new]
        ids, mask = self._left_padded(prompts)
        if prefill.needs_positions:
            prefill.set_positions(torch.zeros_like(ids, dtype=torch.bool), self._special(ids))
        cache = kv.new_cache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self._forward(prefill, ids, mask, cache, positions)
        events = self._pick(new, logits)
        if self.live:
            self.cache, self.mask = kv.merge(self.cache, self.mask, cache, mask)
        else:
            self.cache, self.mask = cache, mask
        self.live += new
        self.last = torch.cat([self.last, self._newest(new)])
        self.steering = batch
        return events + self.drop_finished()

    def step(self) -> list[Event]:
        """One decode step for every live row."""
        cancelled = self.drop_finished()
        if not self.live or self.steering is None:
            return cancelled
        ids = self.last[:, None]
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        if self.steering.needs_positions:
            self.steering.set_positions(torch.ones_like(ids, dtype=torch.bool), self._special(ids))
        positions = self.mask.sum(-1, keepdim=True) - 1
        logits = self._forward(self.steering, ids, self.mask, self.cache, positions)
        events = cancelled + self._pick(self.live, logits)
        self.last = self._newest(self.live)
        self.drop_finished()
        return events

    def cancel(self, request_id: int) -> None:
        for row in self.live:
            if row.request.id == request_id:
                row.request.cancelled = True

    def drop_finished(self) -> list[Event]:
        """Remove finished and cancelled rows from the batch, its cache and its steering."""
        events = [
            self._finish(r, "cancelled", r.stream.flush())
            for r in self.live
            if r.request.cancelled and not r.finish
        ]
        keep = [i for i, r in enumerate(self.live) if not r.finish]
        if len(keep) < len(self.live):
            rows = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.cache, self.mask = kv.select(self.cache, self.mask, rows)
            self.last = self.last[rows]
            self.live = [self.live[i] for i in keep]
            self.steering = self.steering.take_rows(keep) if self.steering and keep else None
        return events

    # ---- steps ----

    def _forward(
        self, steering: Steering, ids: Tensor, mask: Tensor, cache: Any, positions: Tensor
    ) -> Tensor:
        """Logits of the last position of each row: (B, V) float32."""
        with torch.inference_mode(), attached(steering):
            out = self.model.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **kv.cache_kwargs(self.model.model, cache),
            )
        return out.logits[:, -1].float()

    def _pick(self, rows: list[RowState], logits: Tensor) -> list[Event]:
        """Sample each row's next token and turn it into the row's event."""
        vocab = logits.shape[-1]
        params = [r.request.params for r in rows]
        noise = shared_noise(
            [
                (r.request.id, None if p.greedy else r.request.generator)
                for r, p in zip(rows, params)
            ],
            vocab,
            self.device,
        )
        penalized = any(p.repetition_penalty != 1.0 for p in params)
        seen = seen_tokens([r.context for r in rows], vocab, self.device) if penalized else None
        early = [i for i, r in enumerate(rows) if len(r.tokens) < r.request.params.min_new_tokens]
        logits = block_tokens(logits, early, self.eos_ids)  # EOS may not end a reply yet
        tokens = pick_tokens(logits, noise, params, seen).tolist()
        events = []
        for r, token in zip(rows, tokens):
            r.tokens.append(token)
            events.append(self._advance(r, token))
        return events

    def _advance(self, r: RowState, token: int) -> Event:
        n, params = len(r.tokens), r.request.params
        if token in self.eos_ids:
            return self._finish(r, "stop", r.stream.flush())
        delta = r.stream.push(token, can_stop=n >= params.min_new_tokens)
        if r.stream.stopped:
            return self._finish(r, "stop", delta)
        if n >= params.max_new_tokens:
            return self._finish(r, "length", delta + r.stream.flush())
        return Event(r.request.id, r.index, delta, token, None, len(r.row.prompt_ids), n)

    def _finish(self, r: RowState, reason: str, delta: str = "") -> Event:
        r.finish = reason
        token = r.tokens[-1] if r.tokens else None
        return Event(
            r.request.id, r.index, delta, token, reason, len(r.row.prompt_ids), len(r.tokens)
        )

    def _left_padded(self, prompts: list[tuple[int, ...]]) -> tuple[Tensor, Tensor]:
        """(B, T) ids and attention mask of ``prompts``, right-aligned."""
        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id or 0
        ids = [[pad] * (width - len(p)) + list(p) for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        return torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device)

    def _newest(self, rows: list[RowState]) -> Tensor:
        """(B,) each row's newest token (the pad id for a row that has none yet)."""
        pad = self.tokenizer.pad_token_id or 0
        return torch.tensor([r.tokens[-1] if r.tokens else pad for r in rows], device=self.device)

    def _special(self, ids: Tensor) -> Tensor:
        return torch.isin(ids, self.special_ids)


def _eos_ids(model: SteerableModel) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model.model, "generation_config", None), model.tokenizer):
        value = getattr(source, "eos_token_id", None)
        ids.update([value] if isinstance(value, int) else value or [])
    return ids
