"""steering: feature steering for open LLMs with sparse autoencoders.

Load a model and an SAE, build a plan, and steer inside a ``with`` block::

    model = steering.load_model("google/gemma-2-2b-it")
    sae = steering.load_sae("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    with steering.steer(model, steering.clamp(sae, 8080, 40.0)):
        ...
"""

__version__ = "0.1.0"

from .errors import ModelLoadError, PlanError, SAELoadError, SteeringError
from .formats import load_sae
from .hooks import Steering, attached, count_hooks, prepare, steer
from .models import SteerableModel, find_layers, load_model
from .plan import FeatureEdit, SteeringPlan, clamp
from .sae import SAE, HookPoint

__all__ = [
    "SAE",
    "FeatureEdit",
    "HookPoint",
    "ModelLoadError",
    "PlanError",
    "SAELoadError",
    "SteerableModel",
    "Steering",
    "attached",
    "prepare",
    "SteeringError",
    "SteeringPlan",
    "clamp",
    "count_hooks",
    "find_layers",
    "load_model",
    "load_sae",
    "steer",
]
