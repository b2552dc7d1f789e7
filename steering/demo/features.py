"""What each feature of the demo SAE does, in words: top activating contexts and a label.

For every feature: its max activation and firing frequency, its top activating contexts over
held-out corpus text (up to ``CONTEXTS`` of them, each the token it fired on with ``LEFT`` words
before and ``RIGHT`` words after), and a searchable label derived from them ("fires on: bridge,
fog (travel)"). The screened features of the presets get their concept as label instead
(screen.py, ``CONCEPT_LABELS``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor

from ..sae import SAE, FeatureContext

CONTEXTS = 5  # per feature, best first
LEFT, RIGHT = 8, 4  # words of context before and after the token
CANDIDATES = 40  # top activations per feature looked at for contexts and labels
MAX_LABEL = 59  # characters: labels stay short
CHUNK = 16_384  # rows encoded at once (bounds memory: CHUNK x d_sae floats)
# Names a visitor can search for, of the tokens that are not words.
TOKEN_NAMES = {
    "<eot>": "end of turn",
    "<user>": "user turn",
    "<assistant>": "assistant turn",
    "<unk>": "unknown word",
    ".": "full stop",
    ",": "comma",
    "?": "question mark",
    "!": "exclamation mark",
    "'": "apostrophe",
    ":": "colon",
    "(": "bracket",
    ")": "closing bracket",
}
# The screened presets' features are labelled with their concept (screen.py).
CONCEPT_LABELS = {
    "bridge": "golden gate bridge (san francisco landmark)",
    "honest": "honesty: admits not knowing",
    "pirate": "pirate speech (arr, matey)",
    "cats": "cats (kittens, purring)",
    "space": "space (moon, stars, planets)",
    "ocean": "ocean (sea, waves, whales)",
}


@dataclass(frozen=True)
class Statistics:
    """Per feature: max activation (d_sae,), firing frequency (d_sae,), and the rows of its top
    ``CANDIDATES`` activations (d_sae, CANDIDATES) with their values."""

    max_activation: Tensor
    frequency: Tensor
    top_values: Tensor
    top_rows: Tensor


@torch.inference_mode()
def statistics(sae: SAE, x: Tensor) -> Statistics:
    """Encode ``x`` (N, d_in) in chunks and keep each feature's top activations."""
    d_sae = sae.d_sae
    fired = torch.zeros(d_sae)
    values = torch.full((d_sae, CANDIDATES), -1.0)
    rows = torch.zeros((d_sae, CANDIDATES), dtype=torch.long)
    for start in range(0, len(x), CHUNK):
        f = sae.encode(x[start : start + CHUNK]).float()  # (n, d_sae)
        fired += (f > 0).sum(0)
        k = min(CANDIDATES, len(f))
        top = f.topk(k, dim=0)  # (k, d_sae)
        merged_values = torch.cat([values, top.values.T], dim=1)
        merged_rows = torch.cat([rows, top.indices.T + start], dim=1)
        best = merged_values.topk(CANDIDATES, dim=1)
        values, rows = best.values, merged_rows.gather(1, best.indices)
    return Statistics(values[:, 0].clamp(min=0), fired / len(x), values, rows)


def word(tokenizer, token_id: int) -> str:  # type: ignore[no-untyped-def]
    return str(tokenizer.convert_ids_to_tokens(int(token_id)))


def top_contexts(
    stats: Statistics, tokens: Tensor, dialogue: Tensor, tokenizer
) -> dict[int, tuple[FeatureContext, ...]]:  # type: ignore[no-untyped-def]
    """Each live feature's top activating contexts, best first, without repeats.

    ``tokens`` and ``dialogue`` (N,) are the token id and dialogue of each row, rows in text
    order (as ``train_sae.layer_activations`` returns them).
    """
    specials = set(tokenizer.all_special_ids)
    contexts: dict[int, tuple[FeatureContext, ...]] = {}
    for feature in range(stats.top_values.shape[0]):
        found: list[FeatureContext] = []
        for value, row in zip(stats.top_values[feature].tolist(), stats.top_rows[feature].tolist()):
            if value <= 0 or len(found) == CONTEXTS:
                break
            context = FeatureContext(
                left=" ".join(_words(tokens, dialogue, row, -1, LEFT, specials, tokenizer)),
                token=word(tokenizer, int(tokens[row])),
                right=" ".join(_words(tokens, dialogue, row, 1, RIGHT, specials, tokenizer)),
                activation=round(value, 3),
            )
            if all((c.left, c.token, c.right) != (context.left, context.token, context.right)
                   for c in found):  # fmt: skip
                found.append(context)
        if found:
            contexts[feature] = tuple(found)
    return contexts


def _words(tokens, dialogue, row: int, step: int, n: int, specials, tokenizer) -> list[str]:  # type: ignore[no-untyped-def]
    """Up to ``n`` words (special tokens left out) next to ``row`` in its dialogue, in text
    order: before it when ``step`` is -1, after it when 1."""
    out: list[str] = []
    i = row + step
    while 0 <= i < len(tokens) and dialogue[i] == dialogue[row] and len(out) < n:
        if int(tokens[i]) not in specials:
            out.append(word(tokenizer, int(tokens[i])))
        i += step
    return out[::-1] if step < 0 else out


def derived_labels(
    stats: Statistics, tokens: Tensor, row_topic: list[str], tokenizer
) -> dict[int, str]:  # type: ignore[no-untyped-def]
    """Each live feature's label: the tokens it fires on most among its top activations, and
    the topic most of them are in ("fires on: bridge, fog (travel)"). Labels that would repeat
    another's name one more token, then the word before."""
    labels: dict[int, str] = {}
    taken: set[str] = set()
    for feature in range(stats.top_values.shape[0]):
        values, rows = stats.top_values[feature].tolist(), stats.top_rows[feature].tolist()
        rows = [r for v, r in zip(values, rows) if v > 0]
        if not rows:
            continue
        names = Counter(TOKEN_NAMES.get(w, w) for w in (word(tokenizer, tokens[r]) for r in rows))
        topics = Counter(row_topic[r] for r in rows if row_topic[r])
        topic, count = topics.most_common(1)[0] if topics else ("", 0)
        suffix = f" ({topic})" if count * 2 >= len(rows) else ""
        ranked = [n for n, _ in names.most_common()]
        label = ""
        for n_words in (2, 3, 4):
            label = _fit(ranked[:n_words], suffix)
            if label not in taken:
                break
        if label in taken:
            before = Counter(word(tokenizer, tokens[r - 1]) for r in rows if r > 0).most_common(1)
            label = _fit(ranked[:1], f" after {before[0][0] if before else '?'}{suffix}")
        if label in taken:
            label = _fit(ranked[:1], f"{suffix} #{feature}")
        taken.add(label)
        labels[feature] = label
    return labels


def _fit(names: list[str], suffix: str) -> str:
    """ "fires on: a, b" + suffix, dropping names until it fits ``MAX_LABEL``."""
    while True:
        label = f"fires on: {', '.join(names)}{suffix}"
        if len(label) <= MAX_LABEL or len(names) <= 1:
            return label[:MAX_LABEL]
        names = names[:-1]
