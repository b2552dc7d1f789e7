"""vLLM's engine behind this project's batch interface: ``admit``, ``step``, ``cancel``.

``VLLMEngine`` has the methods ``steering.loop.EngineLoop`` drives, so the vLLM backend gets
the same thread, queue, fair turns by visitor, cancellation, jobs and health as this project's
engine. Each row of a ``Request`` becomes one vLLM request: its prompt ids, its plan in
``extra_args`` (``steering.vllm.wire``) with a prefix-cache salt, and the request's sampling
settings with one seed for all its rows (a compare's rows draw the same random numbers).
vLLM samples the tokens; the text, stop strings and finish reasons come from the same code as
this project's engine (``steering.engine.advance_row``), so the same tokens give the same
reply.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..engine import RequestState, RowState, advance_row, eos_token_ids, finish_row
from ..errors import PlanError
from ..hookpoint import HookPoint
from ..limits import Limits
from ..models import SteerableModel
from ..plan import SteeringPlan
from ..requests import Event, Request
from ..sae import SAE
from ..sampling import SamplingParams
from .wire import EXTRA_ARGS_KEY, cache_salt, plan_to_wire, sae_payload

_FINISH = {"stop": "stop", "length": "length", "abort": "cancelled"}


class VLLMEngine:
    """Runs requests on a vLLM ``LLMEngine`` whose workers are ``SteeringWorker``s.

    ``hooked`` are the hook points the workers hooked at start (a plan elsewhere is refused
    when admitted); ``slots`` bounds the distinct features of one SAE steered at once across
    the running rows. Not thread-safe: ``EngineLoop`` calls it from its thread.
    """

    def __init__(
        self,
        llm: Any,
        model: SteerableModel,
        *,
        hooked: set[HookPoint],
        slots: int,
        limits: Limits = Limits(),
    ) -> None:
        self.llm = llm
        self.model = model
        self.tokenizer = model.tokenizer
        self.limits = limits
        self.max_batch = limits.max_batch
        self.hooked = hooked
        self.slots = slots
        self.eos_ids = sorted(eos_token_ids(model))
        self.live: list[RowState] = []
        self._rows: dict[str, RowState] = {}  # vLLM request id -> row
        self._in_vllm: set[str] = set()  # vLLM request ids not finished there yet
        self._keys: dict[int, str] = {}  # id(SAE) -> its key with the workers
        self._saes: list[SAE] = []  # keeps registered SAEs (and so their ids) alive

    # ---- SAEs ----

    def register(self, sae: SAE) -> str:
        """Send ``sae`` to every worker once; its key."""
        key = self._keys.get(id(sae))
        if key is None:
            if sae.hook not in self.hooked:
                hooked = ", ".join(sorted(map(str, self.hooked))) or "none"
                raise PlanError(
                    f"{sae.name} reads {sae.hook}, which this vLLM engine did not hook when it "
                    f"started (hooked: {hooked}); serve the SAE from the start (--sae)"
                )
            key = f"sae-{len(self._keys) + 1}"
            self.llm.collective_rpc("steering_add_sae", args=(key, sae_payload(sae)))
            self._keys[id(sae)] = key
            self._saes.append(sae)
        return key

    # ---- the batch interface of steering.loop.EngineLoop ----

    def admit(self, requests: Sequence[Request]) -> list[Event]:
        """Hand ``requests`` to vLLM; their events come from later ``step`` calls. Raises
        ``PlanError`` (an SAE at a hook point not hooked, too many features at once) for a
        request that cannot run, after taking back its rows already handed over."""
        for request in requests:
            self._admit(request)
        return []

    def _admit(self, request: Request) -> None:
        state = RequestState(request)
        seed = request.sampling.seed
        if seed is None and not request.sampling.greedy:
            seed = secrets.randbits(63)  # one draw for all rows: a compare shares its noise
        self._check_slots([row.plan for row in request.rows])
        added: list[RowState] = []
        try:
            for i, row in enumerate(request.rows):
                wire = self._wire(row.plan)
                vid = f"{request.id}-{i}"
                prompt: dict[str, Any] = {"prompt_token_ids": list(row.prompt_ids)}
                salt = cache_salt(wire)
                if salt is not None:
                    prompt["cache_salt"] = salt
                self.llm.add_request(vid, prompt, self._params(request.sampling, seed, wire))
                r = RowState(state, i, row, self.tokenizer)
                self._rows[vid] = r
                self._in_vllm.add(vid)
                added.append(r)
        except BaseException:
            vids = [f"{request.id}-{r.index}" for r in added]
            self.llm.abort_request(vids)
            for vid in vids:
                self._rows.pop(vid, None)
                self._in_vllm.discard(vid)
            raise
        self.live += added

    def step(self) -> list[Event]:
        """One vLLM step: every running row's new tokens as events."""
        events = self.drop_finished()
        if not self.live:
            return events
        for out in self.llm.step():
            r = self._rows.get(out.request_id)
            if out.finished:
                self._in_vllm.discard(out.request_id)
            if r is None or r.finish:
                continue
            events += self._tokens(r, out)
            if not r.finish and out.finished and r.request.error is None:
                reason = _FINISH.get(out.outputs[0].finish_reason or "", "stop")
                events.append(finish_row(r, reason, r.stream.flush()))
        return events + self.drop_finished()

    def cancel(self, request_id: int) -> None:
        for r in self.live:
            if r.request.id == request_id:
                r.request.cancelled = True

    def drop_finished(self) -> list[Event]:
        """Remove finished, cancelled and failed rows (aborting what vLLM still runs); the
        final events of rows that had none yet."""
        events = [
            finish_row(r, "error", r.stream.flush(), r.request.error)
            if r.request.error is not None
            else finish_row(r, "cancelled", r.stream.flush())
            for r in self.live
            if (r.request.cancelled or r.request.error is not None) and not r.finish
        ]
        done = [r for r in self.live if r.finish]
        if done:
            vids = [f"{r.request.id}-{r.index}" for r in done]
            running = [vid for vid in vids if vid in self._in_vllm]
            if running:
                self.llm.abort_request(running)
            for vid in vids:
                self._rows.pop(vid, None)
                self._in_vllm.discard(vid)
            self.live = [r for r in self.live if not r.finish]
        return events

    def shutdown(self) -> None:
        """Stop vLLM's engine (its processes, when multiprocess)."""
        core = getattr(self.llm, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    # ---- helpers ----

    def _tokens(self, r: RowState, out: Any) -> list[Event]:
        completion = out.outputs[0]
        want = r.request.params.logprobs
        events = []
        for j, token in enumerate(completion.token_ids):
            r.tokens.append(token)
            try:
                event = advance_row(r, token, self.eos_ids)
            except Exception as error:  # this row's text failed: its request alone fails
                r.request.error = error
                break
            if want is not None and token not in self.eos_ids and completion.logprobs:
                event = _with_logprobs(event, completion.logprobs[j], token, want)
            events.append(event)
            if r.finish:
                break
        return events

    def _wire(self, plan: SteeringPlan | None) -> list[list[Any]]:
        if plan is not None:
            for edit in plan.active_edits:
                self.register(edit.sae)
        return plan_to_wire(plan, self._keys)

    def _check_slots(self, plans: Sequence[SteeringPlan | None]) -> None:
        """Refuse a request whose features, with those of the running rows, would not fit one
        SAE's slots in a step."""
        features: dict[int, set[int]] = {}
        for plan in [*(r.row.plan for r in self.live), *plans]:
            for edit in plan.active_edits if plan is not None else ():
                features.setdefault(id(edit.sae), set()).add(edit.feature)
        for feats in features.values():
            if len(feats) > self.slots:
                raise PlanError(
                    f"{len(feats)} distinct features of one SAE would be steered at once; this "
                    f"vLLM engine holds at most {self.slots} (steering slots): try again shortly"
                )

    def _params(self, p: SamplingParams, seed: int | None, wire: list[list[Any]]) -> Any:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VLLMSamplingParams(
            n=1,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,  # 0 keeps every token, as here
            repetition_penalty=p.repetition_penalty,
            max_tokens=p.max_new_tokens,
            min_tokens=p.min_new_tokens,
            seed=None if p.greedy else seed,
            logprobs=p.logprobs,
            stop_token_ids=list(self.eos_ids),
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,  # the text comes from steering.textstream, as in this engine
            extra_args={EXTRA_ARGS_KEY: wire} if wire else None,
        )


def _with_logprobs(event: Event, ranked: Any, token: int, k: int) -> Event:
    """``event`` with vLLM's log-probabilities of one position: the chosen token's and the
    ``k`` best, best first (vLLM's raw log-probabilities: before penalties and temperature,
    as this project's engine reports them)."""
    items = [(int(t), lp) for t, lp in ranked.items()]
    best = sorted(
        ((t, lp) for t, lp in items if lp.rank is not None and lp.rank <= k),
        key=lambda item: item[1].rank,
    )[:k]
    chosen = dict(items).get(token)
    return replace(
        event,
        logprob=float(chosen.logprob) if chosen is not None else None,
        top_logprobs=tuple((t, float(lp.logprob)) for t, lp in best),
    )
