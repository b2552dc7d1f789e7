"""Feature labels made safe to print: one cleaning for every source of labels (an SAE folder's
own ``feature_labels.json`` and Neuronpedia's imported explanations)."""

from __future__ import annotations

import re
import unicodedata

from ..limits import FEATURE_FILES

SPACES = re.compile(r"\s+")


def clean_label(text: str, max_chars: int = FEATURE_FILES.max_label_chars) -> str:
    """``text`` without control or format characters (terminal escapes, bidi overrides, zero
    widths: Unicode categories C* and Z*, each made a space), spaces collapsed, cut to
    ``max_chars`` (ending with an ellipsis when cut)."""
    kept = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    label = SPACES.sub(" ", kept).strip()
    return label if len(label) <= max_chars else label[: max_chars - 1].rstrip() + "…"
