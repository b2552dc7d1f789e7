"""Search an SAE's features by label text, ranked, and by index.

``search_labels(sae, "python code")`` ranks the labelled features by Okapi BM25 (Robertson and
Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009; k1 = 1.2, b = 0.75)
over the words of each label, where a query word also matches the label words it begins
(``pyth`` finds ``python``, at ``PREFIX_WEIGHT`` of a whole-word match) so that results come as
a person types. Rare words weigh more than common ones (``of``, ``the``), and a short label that
is all about the query beats a long one that mentions it. A query that is an index (``123`` or
``#123``) finds that feature first, labelled or not (plain digits past the SAE's width are
only label text, a year say).

Why not a library: a fuzzy matcher (rapidfuzz) scores characters, not words, so it cannot weigh
a rare word above a common one; the BM25 packages on PyPI (``rank-bm25``) are unmaintained and
score every label for every query. The index here is an inverted index of ~30 lines, built once
per SAE and kept while its labels stay the same: a query costs the postings of its words, a
few milliseconds on 65k labels (``make bench``-style measure in the report).
"""

from __future__ import annotations

import bisect
import math
import re
import threading
import weakref
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..errors import LimitError, RequestError
from ..limits import FEATURE_FILES
from ..sae import SAE

K1, B = 1.2, 0.75  # BM25's usual constants
PREFIX_WEIGHT = 0.6  # a label word that the query word begins, against the whole word
MIN_PREFIX = 2  # a one-letter query word matches whole words only
WORD = re.compile(r"\w+")
INDEX_QUERY = re.compile(r"#?\s*(\d{1,12})")


@dataclass(frozen=True)
class LabelMatch:
    """A feature found by a search: its ``index``, its ``label`` (None when it has none) and
    ``score`` (BM25, higher is better; an index match scores 0 and comes first)."""

    index: int
    label: str | None
    score: float
    match: Literal["index", "label"] = "label"


class LabelIndex:
    """An inverted index of labels (index -> text) for ranked search."""

    def __init__(self, labels: Mapping[int, str]) -> None:
        self.size = len(labels)
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)  # word -> (i, tf)
        self.lengths: dict[int, int] = {}
        for index, label in labels.items():
            counts = Counter(words(label))
            self.lengths[index] = sum(counts.values())
            for word, tf in counts.items():
                self.postings[word].append((index, tf))
        self.vocabulary = sorted(self.postings)  # for prefix matches
        self.average = sum(self.lengths.values()) / max(1, len(self.lengths))

    def search(self, query: str, limit: int) -> list[tuple[int, float]]:
        """The best ``limit`` (index, score) for ``query``, best first, ties by index."""
        scores: dict[int, float] = defaultdict(float)
        for term in dict.fromkeys(words(query)):  # each query word once
            # the term's frequency in each label: its own word, and the words it begins
            tf: dict[int, float] = defaultdict(float)
            for word, weight in self._matches(term):
                for index, count in self.postings[word]:
                    tf[index] += weight * count
            idf = math.log(1 + (self.size - len(tf) + 0.5) / (len(tf) + 0.5))
            for index, f in tf.items():
                norm = K1 * (1 - B + B * self.lengths[index] / self.average)
                scores[index] += idf * f * (K1 + 1) / (f + norm)
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:limit]

    def _matches(self, term: str) -> list[tuple[str, float]]:
        found = [(term, 1.0)] if term in self.postings else []
        if len(term) >= MIN_PREFIX:
            start = bisect.bisect_right(self.vocabulary, term)
            end = bisect.bisect_left(self.vocabulary, term + "\U0010ffff", start)
            found += [(word, PREFIX_WEIGHT) for word in self.vocabulary[start:end]]
        return found


def words(text: str) -> list[str]:
    """Lowercase words (letters, digits, underscore) of ``text``."""
    return WORD.findall(text.casefold())


_indexes: weakref.WeakKeyDictionary[SAE, tuple[int, int, LabelIndex]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def label_index(sae: SAE) -> LabelIndex:
    """The search index of ``sae``'s labels, built on first use and kept while they stay."""
    key = (id(sae.labels), len(sae.labels))
    with _lock:
        cached = _indexes.get(sae)
        if cached is not None and cached[:2] == key:
            return cached[2]
    built = LabelIndex(sae.labels)
    with _lock:
        _indexes[sae] = (*key, built)
    return built


def search_labels(sae: SAE, query: str, limit: int = 20) -> list[LabelMatch]:
    """Features of ``sae`` whose labels match ``query``, best first (module docstring).

    ``query``: words, or an index (``123``, ``#123``), at most
    ``FEATURE_FILES.max_query_chars`` characters. ``limit``: 1..``FEATURE_FILES.max_results``.
    Raises ``RequestError``/``LimitError`` (param ``q``, or ``limit``) for an empty or too long
    query, a bad limit, or ``#INDEX`` outside 0..d_sae-1.
    """
    check_query(query, limit)
    found: list[LabelMatch] = []
    by_index = INDEX_QUERY.fullmatch(query.strip())
    if by_index:
        index = int(by_index.group(1))
        if index < sae.d_sae:
            found.append(LabelMatch(index, sae.labels.get(index), 0.0, "index"))
        elif query.strip().startswith("#"):  # plain digits may be label text (a year)
            raise RequestError(
                f"q: there is no feature #{index}: this SAE has features 0 to {sae.d_sae - 1}",
                param="q",
            )
    for index, score in label_index(sae).search(query, limit):
        if len(found) == limit:
            break
        if not (found and found[0].index == index):
            found.append(LabelMatch(index, sae.labels[index], round(score, 4)))
    return found


def check_query(query: object, limit: object) -> None:
    """``RequestError``/``LimitError`` unless ``query`` is a non-blank string of at most
    ``max_query_chars`` characters and ``limit`` an int in 1..``max_results``."""
    if not isinstance(query, str) or not query.strip():
        raise RequestError("q: give some words of a label, or a feature index", param="q")
    if len(query) > FEATURE_FILES.max_query_chars:
        raise LimitError(
            f"q: {len(query)} characters; a search takes at most {FEATURE_FILES.max_query_chars}",
            param="q",
        )
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise RequestError(f"limit: {limit!r} is not a whole number", param="limit")
    if not 1 <= limit <= FEATURE_FILES.max_results:
        raise LimitError(f"limit: {limit} is outside 1..{FEATURE_FILES.max_results}", param="limit")
