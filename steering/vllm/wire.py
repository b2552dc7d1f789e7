"""What travels from the server to vLLM's workers: SAEs once, plans per request, as plain data.

A request's plan rides in ``SamplingParams.extra_args["steering"]`` (msgpack-able across
vLLM's processes), one list per active edit::

    [sae_key, feature, mode, raw_value, positions, skip_special_tokens]

``mode`` is "add" or "clamp" (an ablation is a clamp to 0) and ``raw_value`` is in the SAE's
raw activation units, so the worker does no unit conversion. The SAE itself is sent once per
engine (``sae_payload``, to ``SteeringWorker.steering_add_sae``) under ``sae_key``; the worker
keeps its full weights and gathers the steered columns.

``cache_salt`` keys vLLM's prefix cache by the steering: KV computed under one plan is never
reused by a request with another (or none).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from ..hookpoint import HookPoint
from ..plan import SteeringPlan
from ..sae import SAE

EXTRA_ARGS_KEY = "steering"
CONFIG_KEY = "steering"  # vLLM's additional_config[CONFIG_KEY]: see ``worker.WorkerConfig``

WireEdit = list[Any]  # [sae_key, feature, mode, raw_value, positions, skip_special_tokens]

_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "r_mag", "b_mag")
_SETTINGS = ("activation", "k", "apply_b_dec_to_input", "normalization")


def plan_to_wire(plan: SteeringPlan | None, key_of: dict[int, str]) -> list[WireEdit]:
    """The active edits of ``plan`` as plain lists; ``key_of`` maps ``id(sae)`` to the key the
    SAE was registered under with the workers. Raises ``KeyError`` for an unregistered SAE."""
    if plan is None:
        return []
    return [
        [
            key_of[id(e.sae)],
            e.feature,
            "add" if e.mode == "add" else "clamp",
            float(e.raw_value),
            e.positions,
            bool(e.skip_special_tokens),
        ]
        for e in plan.active_edits
    ]


def cache_salt(wire: list[WireEdit]) -> str | None:
    """The prefix-cache salt of a steering (None: unsteered, the cache is shared as usual)."""
    if not wire:
        return None
    digest = hashlib.sha256(json.dumps(wire, separators=(",", ":")).encode()).hexdigest()
    return f"steering-{digest[:32]}"


def sae_payload(sae: SAE) -> dict[str, Any]:
    """What a worker needs to steer with ``sae``: its weights (float32 bytes) and settings; no
    labels or statistics, and nothing that unpickles."""
    tensors = {  # raw float32 bytes: vLLM's RPC between processes carries no tensors
        name: _to_bytes(getattr(sae, name)) for name in _TENSORS if getattr(sae, name) is not None
    }
    settings = {name: getattr(sae, name) for name in _SETTINGS}
    return {
        "tensors": tensors,
        "settings": settings,
        "layer": sae.hook.layer,
        "site": sae.hook.site,
        "name": sae.name,
    }


def sae_from_payload(payload: dict[str, Any], device: torch.device) -> SAE:
    """The SAE a worker steers with (float32 on ``device``), from ``sae_payload``."""
    tensors = {n: _from_bytes(t).to(device) for n, t in payload["tensors"].items()}
    return SAE(
        **tensors,
        **payload["settings"],
        hook=HookPoint(int(payload["layer"]), payload["site"]),
        source=str(payload.get("name", "")),
    )


def _to_bytes(t: torch.Tensor) -> dict[str, Any]:
    array = t.detach().to("cpu", torch.float32).contiguous().numpy()
    return {"shape": list(array.shape), "data": array.tobytes()}


def _from_bytes(raw: dict[str, Any]) -> torch.Tensor:
    array = np.frombuffer(bytearray(raw["data"]), dtype=np.float32)
    return torch.from_numpy(array).reshape(raw["shape"])
