"""steering: feature steering for open LLMs with sparse autoencoders.

Load a model and an SAE, build a plan, and steer inside a ``with`` block::

    model = steering.load_model("google/gemma-2-2b-it")
    sae = steering.load_sae("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    with steering.steer(model, steering.clamp(sae, 8080, 40.0)):
        ...

The names below are imported on first use, so ``import steering`` (and the command line's
``--version``, ``--help`` and ``presets`` commands) does not import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "SAE": "sae",
    "FeatureContext": "sae",
    "HookPoint": "hookpoint",
    "FeatureEdit": "plan",
    "SteeringPlan": "plan",
    "clamp": "plan",
    "Steering": "hooks",
    "attached": "hooks",
    "prepare": "hooks",
    "steer": "hooks",
    "count_hooks": "hooks",
    "SteerableModel": "models",
    "find_layers": "models",
    "load_model": "models",
    "load_sae": "formats",
    "Limits": "limits",
    "SamplingParams": "sampling",
    "Request": "requests",
    "build_request": "requests",
    "collect": "requests",
    "Engine": "engine",
    "SteeringError": "errors",
    "ModelLoadError": "errors",
    "SAELoadError": "errors",
    "PlanError": "errors",
    "ChatError": "errors",
    "RequestError": "errors",
    "LimitError": "errors",
    "PresetError": "errors",
    "Busy": "errors",
}

__all__ = [
    "Busy",
    "ChatError",
    "Engine",
    "FeatureContext",
    "FeatureEdit",
    "HookPoint",
    "LimitError",
    "Limits",
    "ModelLoadError",
    "PlanError",
    "PresetError",
    "Request",
    "RequestError",
    "SAE",
    "SAELoadError",
    "SamplingParams",
    "SteerableModel",
    "Steering",
    "SteeringError",
    "SteeringPlan",
    "attached",
    "build_request",
    "clamp",
    "collect",
    "count_hooks",
    "find_layers",
    "load_model",
    "load_sae",
    "prepare",
    "steer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'steering' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from .engine import Engine
    from .errors import (
        Busy,
        ChatError,
        LimitError,
        ModelLoadError,
        PlanError,
        PresetError,
        RequestError,
        SAELoadError,
        SteeringError,
    )
    from .formats import load_sae
    from .hookpoint import HookPoint
    from .hooks import Steering, attached, count_hooks, prepare, steer
    from .limits import Limits
    from .models import SteerableModel, find_layers, load_model
    from .plan import FeatureEdit, SteeringPlan, clamp
    from .requests import Request, build_request, collect
    from .sae import SAE, FeatureContext
    from .sampling import SamplingParams
