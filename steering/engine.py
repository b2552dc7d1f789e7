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
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from . import kv
from .hooks import Steering, attached, prepare
from .limits import Limits
from .models import SteerableModel
from .requests import Event, Request, Row
from .sampling import (
    block_tokens,
    make_generator,
    pick_tokens,
    seen_tokens,
    shared_noise,
    token_logprobs,
)
from .textstream import TextStream


class RequestState:
    """A running request: its settings, its random generator and whether it was cancelled."""

    def __init__(self, request: Request) -> None:
        self.id = request.id
        self.params = request.sampling
        self.generator = make_generator(request.sampling.seed)
        self.cancelled = False
        self.error: BaseException | None = None  # set when generating it failed


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
        self.eos_ids = sorted(eos_token_ids(model))
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
        """One decode step for every live row.

        When the forward pass fails, the rows that fail on their own finish with "error" and
        every other row goes on as if nothing happened; when no row fails alone, the error is
        raised (the batch as a whole failed).
        """
        done = self.drop_finished()
        if not self.live or self.steering is None:
            return done
        ids = self.last[:, None]
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        positions = mask.sum(-1, keepdim=True) - 1
        if self.steering.needs_positions:
            self.steering.set_positions(torch.ones_like(ids, dtype=torch.bool), self._special(ids))
        try:
            logits = self._forward(self.steering, ids, mask, self.cache, positions)
        except Exception as error:
            kv.crop(self.cache, self.mask.shape[1])  # undo the layers that did run
            return done + self._fail_guilty_rows(error, ids, positions)
        self.mask = mask
        events = done + self._pick(self.live, logits)
        self.last = self._newest(self.live)
        return events + self.drop_finished()

    def cancel(self, request_id: int) -> None:
        for row in self.live:
            if row.request.id == request_id:
                row.request.cancelled = True

    def drop_finished(self) -> list[Event]:
        """Remove finished, cancelled and failed rows from the batch, its cache and its
        steering; the final events of rows that had none yet."""
        events = [
            self._finish(r, "error", r.stream.flush(), r.request.error)
            if r.request.error is not None
            else self._finish(r, "cancelled", r.stream.flush())
            for r in self.live
            if (r.request.cancelled or r.request.error is not None) and not r.finish
        ]
        keep = [i for i, r in enumerate(self.live) if not r.finish]
        if len(keep) < len(self.live):
            rows = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.cache, self.mask = kv.select(self.cache, self.mask, rows)
            self.last = self.last[rows]
            self.live = [self.live[i] for i in keep]
            self.steering = self.steering.take_rows(keep) if self.steering and keep else None
        return events

    # ---- a failing row fails only its own request ----

    def _fail_guilty_rows(self, error: Exception, ids: Tensor, positions: Tensor) -> list[Event]:
        """After a failed decode step: the requests whose rows fail alone get ``error``."""
        assert self.steering is not None  # step() only gets here with a batch's steering
        steering = self.steering
        guilty = [
            i for i in range(len(self.live)) if not self._steps_alone(steering, i, ids, positions)
        ]
        if not guilty:
            raise error
        for i in guilty:
            self.live[i].request.error = error
        return self.drop_finished()

    def _steps_alone(self, batch: Steering, i: int, ids: Tensor, positions: Tensor) -> bool:
        """Whether row ``i``'s decode step runs when it is alone (on a copy of its cache)."""
        rows = torch.tensor([i], dtype=torch.long, device=self.device)
        cache, mask = kv.take(self.cache, self.mask, rows)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        steering = batch.take_rows([i])
        if steering.needs_positions:
            row_ids = ids[rows]
            steering.set_positions(
                torch.ones_like(row_ids, dtype=torch.bool), self._special(row_ids)
            )
        try:
            self._forward(steering, ids[rows], mask, cache, positions[rows])
        except Exception:
            return False
        return True

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
        model_logits = logits
        logits = block_tokens(logits, early, self.eos_ids)  # EOS may not end a reply yet
        tokens = pick_tokens(logits, noise, params, seen).tolist()
        logprobs = token_logprobs(model_logits, tokens, [p.logprobs for p in params])
        events = []
        for r, token, logprob in zip(rows, tokens, logprobs):
            r.tokens.append(token)
            try:
                event = self._advance(r, token)
            except Exception as error:  # this row's text failed: its request alone fails
                r.request.error = error
                continue
            if logprob is not None and token not in self.eos_ids:
                event = replace(event, logprob=logprob[0], top_logprobs=logprob[1])
            events.append(event)
        return events

    def _advance(self, r: RowState, token: int) -> Event:
        return advance_row(r, token, self.eos_ids)

    def _finish(
        self, r: RowState, reason: str, delta: str = "", error: BaseException | None = None
    ) -> Event:
        return finish_row(r, reason, delta, error)

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


def advance_row(r: RowState, token: int, eos_ids: Sequence[int]) -> Event:
    """Row ``r``'s event for its newest ``token`` (already appended to ``r.tokens``): its text,
    or its end at EOS, a stop string or ``max_new_tokens``. Shared by every backend, so the
    same tokens give the same text and finish reason."""
    n, params = len(r.tokens), r.request.params
    if token in eos_ids:
        return finish_row(r, "stop", r.stream.flush())
    delta = r.stream.push(token, can_stop=n >= params.min_new_tokens)
    if r.stream.stopped:
        return finish_row(r, "stop", delta)
    if n >= params.max_new_tokens:
        return finish_row(r, "length", delta + r.stream.flush())
    return Event(r.request.id, r.index, delta, token, None, len(r.row.prompt_ids), n)


def finish_row(
    r: RowState, reason: str, delta: str = "", error: BaseException | None = None
) -> Event:
    """Row ``r``'s final event, ending with ``reason``."""
    r.finish = reason
    token = r.tokens[-1] if r.tokens else None
    prompt, done = len(r.row.prompt_ids), len(r.tokens)
    return Event(r.request.id, r.index, delta, token, reason, prompt, done, error)


def eos_token_ids(model: SteerableModel) -> set[int]:
    """The token ids that end a reply: the generation config's and the tokenizer's EOS."""
    ids: set[int] = set()
    for source in (getattr(model.model, "generation_config", None), model.tokenizer):
        value = getattr(source, "eos_token_id", None)
        ids.update([value] if isinstance(value, int) else value or [])
    return ids
