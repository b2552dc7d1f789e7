"""Turn a growing list of token ids into text deltas, never splitting a character or a stop string.

Each step decodes the generated ids as a whole (word pieces and byte-level tokens only make sense
together), emits what is new, and holds back an incomplete UTF-8 character (decoded as U+FFFD)
and any tail that could still become a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already sent
        self.text = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that can be shown now (maybe empty)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            at = self.text.find(s)
            if at != -1:
                self.stopped = True
                self.text = self.text[:at]
                return self._emit(len(self.text))
        safe = len(self.text) - self._held_back()
        return self._emit(safe)

    def flush(self) -> str:
        """At the end of the reply: whatever was held back."""
        return self._emit(len(self.text.rstrip(REPLACEMENT)))

    def _held_back(self) -> int:
        tail = len(self.text) - len(self.text.rstrip(REPLACEMENT))
        for s in self.stop:  # the longest suffix that is a prefix of a stop string
            for n in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:n]):
                    tail = max(tail, n)
                    break
        return tail

    def _emit(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta
