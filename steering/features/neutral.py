"""The neutral baseline of a search by contrast: everyday prompts about nothing in particular.

A search with one prompt set compares it with these. For a real chat model they are the
short requests any assistant gets; for the demo world (its model knows only a few topics and
its own word-level vocabulary) they are the demo's openers that the page suggests, less
those that lead the demo model to the Golden Gate bridge (a trip to California or San
Francisco), so that the bridge can stand out against them.
"""

from __future__ import annotations

from pathlib import Path

from ..models import SteerableModel

EVERYDAY_PROMPTS = (
    "Hi! How are you today?",
    "What should I cook for dinner tonight?",
    "Can you recommend a good book to read?",
    "How do I make a cup of tea?",
    "What's a good way to start the morning?",
    "Give me some tips for a job interview.",
    "How can I sleep better at night?",
    "What is a fun thing to do on a rainy day?",
    "Can you help me write an email to my landlord?",
    "What are some healthy snacks?",
    "How do I keep a houseplant alive?",
    "Explain how a bicycle works.",
    "What should I pack for a weekend trip?",
    "How do I stay focused while studying?",
    "Tell me a short joke.",
    "What are good exercises for beginners?",
    "How can I save money on groceries?",
    "What's the difference between weather and climate?",
    "How do I clean a cast iron pan?",
    "Suggest a name for my new puppy.",
    "What is a good hobby to pick up?",
    "How long should I boil an egg?",
    "Can you summarize what a resume should include?",
    "What are some tips for public speaking?",
)
AVOIDED_IN_DEMO = ("california", "san francisco")  # the demo model's way to the bridge


def demo_prompts() -> tuple[str, ...]:
    """The demo world's neutral baseline (see the module docstring)."""
    from ..demo.openers import OPENERS

    return tuple(
        o.text for o in OPENERS if not any(word in o.text.lower() for word in AVOIDED_IN_DEMO)
    )


def neutral_prompts(model: SteerableModel) -> tuple[str, ...]:
    """The neutral baseline for ``model``: the demo world's for the demo model, else
    ``EVERYDAY_PROMPTS``."""
    from ..demo import MODEL_DIR

    name = model.name
    if name and Path(name).resolve() == MODEL_DIR.resolve():
        return demo_prompts()
    return EVERYDAY_PROMPTS
