"""Per-token steering tables at fixed addresses, for vLLM's flattened batch.

vLLM runs every scheduled token of every request as one (N, d) batch. Each SAE at a hook point
gets a ``SlotBank``: a narrow copy of the SAE with ``slots`` columns (the steered features of
the batch, gathered from the full SAE when the set changes) and (max_tokens, 1, slots) tables:
what to add, where to clamp and to what. Before each forward pass the worker refills the
tables in place; the op reads them. Every buffer is allocated once at its final size and only
ever written in place, so a CUDA graph captured over the op replays against the current step's
values (EasySteer's full-graph design; splitting the graph at the op costs about half the
decode speed). The maths is ``steering.interventions.feature_coefficients``, shared with this
project's own engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SteeringError
from ..interventions import feature_coefficients
from ..sae import SAE

_COLUMNS = ("b_enc", "threshold", "b_gate", "r_mag", "b_mag")  # (d_sae,) tensors


@dataclass(frozen=True)
class TokenWrite:
    """One edit of one request over its tokens ``start:end`` of the flattened batch."""

    start: int
    end: int
    feature: int
    mode: str  # "add" or "clamp"
    value: float  # raw activation units
    allowed: Tensor  # (end - start,) bool: the tokens the edit may steer


class SlotBank:
    """One SAE at one hook point inside a worker.

    ``slots`` bounds how many distinct features of this SAE one step may steer (the union over
    the batch); ``max_tokens`` is the engine's maximum batched tokens. With ``always`` (CUDA
    graphs) the op runs the full computation every step, also when nothing is steered, so
    capture records it; otherwise an unsteered step costs nothing.
    """

    def __init__(
        self,
        key: str,
        sae: SAE,
        max_tokens: int,
        slots: int,
        device: torch.device,
        *,
        always: bool,
    ) -> None:
        self.key = key
        self.sae = sae.to(device, torch.float32)
        self.size = min(slots, sae.d_sae)
        self.always = always
        self.narrow = self.sae.select(torch.zeros(self.size, dtype=torch.long))
        self.feature_of: list[int | None] = [None] * self.size  # which feature each slot holds
        shape = (max_tokens, 1, self.size)
        pin = device.type == "cuda"
        self.add, self.target = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
        self.is_clamp = torch.zeros(shape, dtype=torch.bool, device=device)
        self._add = torch.zeros(shape, pin_memory=pin)  # host staging of the tables
        self._target = torch.zeros(shape, pin_memory=pin)
        self._is_clamp = torch.zeros(shape, dtype=torch.bool, pin_memory=pin)
        self.filled = 0  # tokens the last fill wrote
        self.active = False
        self.has_clamp = always

    def fill(self, n_tokens: int, writes: Sequence[TokenWrite]) -> None:
        """Refill the tables for a step of ``n_tokens`` tokens (in place)."""
        if not writes and not self.active:
            return  # already all zeros
        clear = max(self.filled, n_tokens)
        for t in (self._add, self._target, self._is_clamp):
            t[:clear].zero_()
        slot = self._assign({w.feature for w in writes})
        for w in writes:
            s = slot[w.feature]
            if w.mode == "add":
                self._add[w.start : w.end, 0, s] += w.allowed * w.value
            else:
                self._is_clamp[w.start : w.end, 0, s] = w.allowed
                self._target[w.start : w.end, 0, s] = w.allowed * w.value
        # stream-ordered after the previous step's kernels; blocking, so the host buffers
        # are free to refill for the next step even when the scheduler runs a step ahead
        for host, device in ((self._add, self.add), (self._target, self.target)):
            device[:clear].copy_(host[:clear])
        self.is_clamp[:clear].copy_(self._is_clamp[:clear])
        self.filled, self.active = n_tokens, bool(writes)
        self.has_clamp = self.always or any(w.mode == "clamp" for w in writes)

    def delta(self, x: Tensor) -> Tensor | None:
        """(N, d) float32 steering delta at residual ``x`` (N, d) float32, or None when this
        step steers nothing here (never with ``always``)."""
        if not (self.active or self.always):
            return None
        n = x.shape[0]
        coef = feature_coefficients(
            self.narrow,
            x[:, None, :],
            self.add[:n],
            self.is_clamp[:n],
            self.target[:n],
            self.has_clamp,
        )
        return (coef @ self.narrow.W_dec)[:, 0, :]

    def _assign(self, features: set[int]) -> dict[int, int]:
        """Slots for ``features``: kept where they already are, new ones gathered from the full
        SAE into free slots (in place). Raises ``SteeringError`` beyond ``size`` features."""
        if len(features) > self.size:
            raise SteeringError(
                f"{len(features)} features of {self.sae.name} steered in one step; this engine "
                f"holds at most {self.size} (steering slots)"
            )
        slot = {f: s for s, f in enumerate(self.feature_of) if f in features}
        free = (s for s, f in enumerate(self.feature_of) if f not in features)
        new = [(next(free), f) for f in features if f not in slot]
        if new:
            slots = torch.tensor([s for s, _ in new], device=self.sae.device)
            feats = torch.tensor([f for _, f in new], device=self.sae.device)
            narrow, full = self.narrow, self.sae
            narrow.W_enc[:, slots] = full.W_enc[:, feats]
            narrow.W_dec[slots] = full.W_dec[feats]
            for name in _COLUMNS:
                column = getattr(narrow, name)
                if column is not None:
                    column[slots] = getattr(full, name)[feats]
            for s, f in new:
                self.feature_of[s] = f
                slot[f] = s
        return slot


class Stage:
    """The edits a hook runs, in order: groups of banks at one hook point each (a layer's
    ``resid_post``, then the next layer's ``resid_pre``, which is the same tensor). Banks of
    one group read the same residual, as in this project's engine; the next group reads the
    residual the previous one wrote."""

    def __init__(self) -> None:
        self.groups: list[list[SlotBank]] = []

    def run(self, hidden: Tensor, residual: Tensor | None) -> None:
        """Add the steering to ``hidden`` in place; the residual stream is ``hidden +
        residual`` (vLLM's fused-residual layers) or ``hidden`` alone. Both are (N, d), or
        (1, N, d) in vLLM's Transformers backend (GPT-NeoX): one token per row either way."""
        hidden = hidden.view(-1, hidden.shape[-1])
        residual = None if residual is None else residual.view(-1, residual.shape[-1])
        x: Tensor | None = None
        for group in self.groups:
            if x is None:
                x = (hidden if residual is None else hidden + residual).float()
            delta = None
            for bank in group:
                step = bank.delta(x)
                if step is not None:
                    delta = step if delta is None else delta + step
            if delta is not None:
                hidden.add_(delta.to(hidden.dtype))
                x = None  # the next group reads the stream as written, in the model's dtype
