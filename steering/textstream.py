"""Turn a growing list of token ids into text deltas, never splitting a character or a stop string.

Invariant: with no stop string, the deltas of a reply (``push`` for each token, then ``flush``)
join to exactly ``tokenizer.decode(tokens, skip_special_tokens=True)``, for byte-level BPE
(GPT-2, Llama 3, Qwen), Metaspace / SentencePiece (Llama 2, Gemma) and word-level tokenizers.

Decoding is incremental (as vLLM does it): each step decodes a short window of recent tokens
with and without the newest one and appends the difference, so the cost per token stays constant
and word pieces keep the context they need (leading spaces). Special tokens never enter the
window: ``decode(..., skip_special_tokens=True)`` drops them before its decoder runs, so a
Metaspace decoder sees the token after a special one as a continuation (" the"), not as the
start of the text ("the"); the window does the same by holding the non-special ids only.

Text that more tokens could still change waits. For decoders that turn bytes into text the
way ``bytes.decode(errors="replace")`` does (ByteLevel), a window ending in U+FFFD may end in an
incomplete character: it waits, and once three more tokens have come (a character has at most
four bytes) the text up to a token edge that no character spans is final, U+FFFD included (bytes
that never make a character). A ByteFallback decoder (SentencePiece byte fallback: Llama 2,
Gemma) decodes a run of <0xNN> tokens as one string if the run is valid UTF-8 and as one U+FFFD
per byte if not, so a run's text waits until a token that is not a byte ends it, or until its
bytes are invalid whatever follows. Bounds keep the window short on garbage: past 8 waiting
tokens with no such edge, or 32 bytes of valid run, the text is shown as it decodes then, and
only then may it differ from the full decode.

Stop strings: a tail that could still become a stop string is held back until it cannot. When
several stop strings match, the one that ends first wins (then the one that starts first), and
the reply is cut where it starts. A stop string equal to a special token's text (``<|end|>``)
also matches that token, whose text is never shown. Before ``min_new_tokens`` the engine pushes
with ``can_stop=False``: a stop string then does not end the reply and its text is part of it.
From the first push with ``can_stop=True`` on, a stop string counts if it ends in text that
arrived from that push on; one that started earlier and completes then does count (this is
vLLM's ``min_tokens`` rule: the token that completes the stop string is what is counted).

Every ending shows what was held back: ``flush`` returns the held-back tail (and the text of any
trailing incomplete character, as U+FFFD, like ``decode`` does) unless a stop string matched.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
_SPECIALS: weakref.WeakKeyDictionary[Any, tuple[int, dict[int, str]]] = weakref.WeakKeyDictionary()
# After this many more tokens (of at least one byte each) a character's bytes are all in.
_SETTLE = 3
# Tokens that may wait for a character boundary between two of them (random bytes can chain
# characters across every token edge); past this the text is shown as it decodes now.
_MAX_WAIT = 8
# A run of ByteFallback byte tokens longer than this shows its complete characters at once.
_MAX_RUN = 32


def special_tokens(tokenizer: Any) -> dict[int, str]:
    """The ids ``decode(..., skip_special_tokens=True)`` drops, with their text.

    A fast tokenizer drops the added tokens flagged special in its backend (which can be more
    than ``all_special_ids``, e.g. Llama 3's reserved tokens); a slow one drops
    ``all_special_ids``. Cached per tokenizer while its length stays the same (listing several
    thousand added tokens takes milliseconds, too slow for every request); do not modify it.
    """
    try:
        size, found = _SPECIALS[tokenizer]
        if size == len(tokenizer):
            return found
    except (KeyError, TypeError):
        pass
    found = {
        i: str(t.content if hasattr(t, "content") else t)
        for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()
        if getattr(t, "special", False)
    }
    ids = list(getattr(tokenizer, "all_special_ids", []))
    texts = tokenizer.convert_ids_to_tokens(ids) if ids else []
    for i, text in zip(ids, texts):
        found.setdefault(i, text)
    with contextlib.suppress(TypeError):  # not weakly referable or without a length: no cache
        _SPECIALS[tokenizer] = (len(tokenizer), found)
    return found


def byte_tokens(tokenizer: Any) -> dict[int, int]:
    """{id: byte} of the <0xNN> tokens when the decoder is ByteFallback (SentencePiece byte
    fallback: Llama 2, Mistral, Gemma); {} for any other decoder."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None or "ByteFallback" not in repr(decoder):
        return {}
    names = [f"<0x{b:02X}>" for b in range(256)]
    ids = tokenizer.convert_tokens_to_ids(names)
    found = dict(zip(ids, tokenizer.convert_ids_to_tokens(ids)))
    return {i: b for b, (i, name) in enumerate(zip(ids, names)) if found.get(i) == name}


class TextStream:
    """The text of one reply, token by token. ``text`` is its text so far (complete characters,
    cut at a stop string), ``emitted`` how much of it was returned; ``stopped`` says a stop
    string (or a stop token) ended it."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self._specials = special_tokens(tokenizer)
        self._stop_ids = {i for i, text in self._specials.items() if text in self.stop}
        self.ids: list[int] = []  # the non-special tokens
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self._prefix = 0  # window start: tokens before it are already in ``text``
        self._read = 0  # tokens up to here are already in ``text``
        self._stops_from: int | None = None  # stop strings must end after this text position
        self._bytes = byte_tokens(tokenizer)
        self._run: int | None = None  # where the open run of byte tokens starts
        self._run_invalid = False  # its bytes are not UTF-8 whatever follows

    def push(self, token_id: int, can_stop: bool = True) -> str:
        """Add one token; return the text that can be shown now (maybe empty).

        ``can_stop=False`` (before ``min_new_tokens``) keeps stop strings from ending the reply.
        After a stop the stream takes no more text and returns "".
        """
        if self.stopped:
            return ""
        if can_stop and self._stops_from is None:
            self._stops_from = len(self.text)
        if token_id in self._specials:
            if can_stop and token_id in self._stop_ids:
                self._add(self._take(len(self.ids)))  # the text before the stop token is final
                self.stopped = True  # (a stop string found in it cut the text already)
                return self._emit(len(self.text))
            return ""  # no text, as decode(skip_special_tokens=True)
        self.ids.append(token_id)
        self._add(self._byte_run(token_id) if self._bytes else self._pending())
        if self.stopped:
            return self._emit(len(self.text))
        return self._emit(len(self.text) - self._held_back())

    def flush(self) -> str:
        """At the end of the reply (EOS, length, cancel): the text not returned yet, less any
        stop string. Calling it again returns ""."""
        if not self.stopped:
            self._add(self._take(len(self.ids)))
        return self._emit(len(self.text))

    def _pending(self) -> str:
        """The new text that is final: all of it, unless it ends in an incomplete character."""
        after = self._decode(self.ids[self._prefix :])
        if not after.endswith(REPLACEMENT):
            return self._take(len(self.ids), after)
        # An incomplete character waits for its bytes. With _SETTLE tokens after it, a point
        # where no character (or invalid sequence, one U+FFFD) spans is final: take up to it.
        if len(self.ids) - self._read > _MAX_WAIT:  # keep the window short, exact or not
            return self._take(len(self.ids), after)
        ready = len(self.ids) - _SETTLE
        if ready <= self._read:
            return ""
        head = self._decode(self.ids[self._prefix : ready])
        if after != head + self._decode(self.ids[ready:]):
            return ""
        return self._take(ready, head)

    def _byte_run(self, token_id: int) -> str:
        """The new text that is final, for a ByteFallback decoder: it decodes a run of <0xNN>
        tokens as one string if its bytes are valid UTF-8, else as one U+FFFD per byte."""
        if token_id not in self._bytes:  # the run (if any) is over: its text is final
            self._run, self._run_invalid = None, False
            return self._take(len(self.ids))
        if self._run_invalid:  # one more byte of an invalid run: one more U+FFFD
            self._prefix, self._read = self._read, len(self.ids)
            return REPLACEMENT
        if self._run is None:
            self._run = len(self.ids) - 1
        data = bytes(self._bytes[i] for i in self.ids[self._run :])
        try:
            data.decode("utf-8")
            complete = len(data)
        except UnicodeDecodeError as e:
            if e.reason != "unexpected end of data":  # no later byte can make it valid
                self._run_invalid = True
                return self._take(len(self.ids))
            complete = e.start
        if len(data) < _MAX_RUN or complete == 0:
            return ""
        # A very long valid run: show its complete characters and start a new run after them.
        ready = self._run + complete
        self._run = ready if ready < len(self.ids) else None
        return self._take(ready)

    def _take(self, ready: int, text: str | None = None) -> str:
        """The text that ids[read:ready] add, decoded with the tokens before them as context;
        ``text`` is the window's decode if already known."""
        if ready <= self._read:
            return ""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix : ready]) if text is None else text
        self._prefix, self._read = self._read, ready
        # Normally ``after`` extends ``before``; a tokenizer that rewrites earlier text when
        # more follows would make them diverge, and then only the new tail is taken.
        return after[len(os.path.commonprefix([before, after])) :]

    def _add(self, new: str) -> None:
        """Append ``new`` to the text; on a stop string that ends in it, cut and stop."""
        if not new:
            return
        old = len(self.text)
        self.text += new
        if self._stops_from is None:
            return
        after = max(old, self._stops_from)  # a counted stop string ends past this position
        found = []
        for s in self.stop:
            at = self.text.find(s, max(0, after - len(s) + 1))
            if at != -1:
                found.append((at + len(s), at))
        if found:
            self.stopped = True
            self.text = self.text[: min(found)[1]]

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
