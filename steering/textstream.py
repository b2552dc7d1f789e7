"""Turn a growing list of token ids into text deltas, never splitting a character or a stop string.

Decoding is incremental (as vLLM does it): each step decodes a short window of recent tokens
with and without the newest one and appends the difference, so the cost per token stays constant
and word pieces keep the context they need (leading spaces). An incomplete UTF-8 character
(decoded as U+FFFD) waits for the next token, and a tail that could still become a stop string
is held back until it cannot.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""  # the reply's text so far (complete characters only)
        self.emitted = 0  # characters of ``text`` already sent
        self.stopped = False
        self._prefix = 0  # window start: tokens before it are already in ``text``
        self._read = 0  # tokens up to here are already in ``text``

    def push(self, token_id: int) -> str:
        """Add one token; return the text that can be shown now (maybe empty)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if after.endswith(REPLACEMENT):
            return ""  # an incomplete character: wait for the rest of its bytes
        searched_from = max(0, len(self.text) - max(map(len, self.stop), default=0))
        # Normally ``after`` extends ``before``; a tokenizer that rewrites earlier text when
        # more follows would make them diverge, and then only the new tail is taken.
        self.text += after[len(os.path.commonprefix([before, after])) :]
        self._prefix, self._read = self._read, len(self.ids)
        for s in self.stop:
            at = self.text.find(s, searched_from)
            if at != -1:
                self.stopped = True
                self.text = self.text[:at]
                return self._emit(len(self.text))
        return self._emit(len(self.text) - self._held_back())

    def flush(self) -> str:
        """At the end of the reply: whatever was held back."""
        return self._emit(len(self.text))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def _held_back(self) -> int:
        """The longest tail of the text that is the start of a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _emit(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta
