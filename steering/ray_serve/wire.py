"""What travels from the entry to a model replica: requests and jobs, with the model and the
SAEs left behind as references.

A ``Request`` holds SAE objects (in its plans' edits) and an activation job holds the model
and an SAE; shipping them would copy weights on every call. ``dumps`` pickles with
``persistent_id`` (the standard pickle hook for objects kept outside the stream): the model
becomes ``("model",)`` and an SAE the name it is registered under in the service's
``SAEResolver``; ``loads`` on the replica puts its own loaded copies in their places. Both sides
load the same configuration, so the names match; a name the replica lacks fails loudly.

Only the server's own processes exchange these bytes (the entry and its replicas, over Ray,
which pickles every call anyway); nothing from a visitor is ever unpickled.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from typing import Any

from ..errors import SteeringError
from ..models import SteerableModel
from ..sae import SAE


class WireError(SteeringError):
    """A request or job named an SAE this replica has not loaded."""


def sae_names(loaded: Mapping[str, SAE]) -> dict[int, str]:
    """``id(sae)`` -> the first name each SAE is registered under (``SAEResolver.loaded``)."""
    names: dict[int, str] = {}
    for name, sae in loaded.items():
        names.setdefault(id(sae), name)
    return names


def dumps(obj: Any, model: SteerableModel, loaded: Mapping[str, SAE]) -> bytes:
    """``obj`` pickled with ``model`` and every SAE of ``loaded`` as references. Raises
    ``WireError`` for an SAE that is not in ``loaded``."""
    names = sae_names(loaded)
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)

    def persistent_id(value: Any) -> Any:
        if value is model:
            return ("model",)
        if isinstance(value, SAE):
            name = names.get(id(value))
            if name is None:
                raise WireError(f"SAE {value.name!r} is not one the server has loaded")
            return ("sae", name)
        if isinstance(value, SteerableModel):
            raise WireError("only the served model travels to a replica, as a reference")
        return None

    pickler.persistent_id = persistent_id  # type: ignore[method-assign]
    pickler.dump(obj)
    return buffer.getvalue()


def loads(data: bytes, model: SteerableModel, loaded: Mapping[str, SAE]) -> Any:
    """What ``dumps`` pickled, with this process's ``model`` and SAEs in place of the
    references. Raises ``WireError`` naming an SAE this process has not loaded."""
    unpickler = pickle.Unpickler(io.BytesIO(data))

    def persistent_load(ref: Any) -> Any:
        if ref == ("model",):
            return model
        if isinstance(ref, tuple) and len(ref) == 2 and ref[0] == "sae":
            sae = loaded.get(ref[1])
            if sae is None:
                raise WireError(
                    f"SAE {ref[1]!r} is not loaded on this replica (has: {sorted(loaded)}); "
                    "start every replica with the same --sae and --presets as the entry"
                )
            return sae
        raise WireError(f"unknown reference {ref!r}")

    unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    return unpickler.load()
