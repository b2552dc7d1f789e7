"""The demo world: a tiny chat model and SAE the project trains itself, shipped in ``files/``.

``load_demo()`` loads them (no training, no network), so a first run shows steering working
offline on a laptop CPU. ``make demo-model`` rebuilds everything from the seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models import SteerableModel
    from ..sae import SAE

FILES = Path(__file__).resolve().parent / "files"
MODEL_DIR = FILES / "model"
SAE_DIR = FILES / "sae"
MODEL_ID = "steering/demo/files/model"  # the presets' model id: matches the folder's name
SEED = 0
# What the page suggests a visitor types: openers the demo model answers on topic, and on which
# the Golden Gate preset brings the bridge in (both checked by tests/test_demo_world.py),
# written as a visitor would type them. Greetings and poems are answered well too, but the
# corpus never brings the bridge into them, so a steering shows little there.
SUGGESTED_PROMPTS = (
    "Why is the sea salty?",
    "What is your favorite song?",
    "What should I visit in California?",
    "Any ideas for the weekend?",
    "Why do cats purr?",
    "What should I have for breakfast?",
)


def load_demo(device: str | None = None, *, weights: bool = True) -> tuple[SteerableModel, SAE]:
    """The shipped demo model and its SAE (``weights=False``: the model on the meta device,
    the SAE on the CPU; see ``steering.models.load_model``)."""
    from ..formats import load_sae
    from ..models import load_model

    model = load_model(str(MODEL_DIR), device=device, dtype="float32", weights=weights)
    sae = load_sae(SAE_DIR, device=model.device if weights else "cpu")
    return model, sae
