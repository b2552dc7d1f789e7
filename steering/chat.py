"""Chat histories to prompt tokens with the tokenizer's own chat template.

Message content is always text: only the template's own markers become special tokens. A user
who types "<bos>" or "<|assistant|>" gets the tokens of those characters, never a second BOS or
a forged turn (the same holds for system and assistant content).

How: content without the text of any special token is rendered and tokenized exactly as
before (the template's text, specials parsed), so its ids are unchanged. Otherwise each special
token's text in the content is swapped for a private-use character that stands for it, the
template is rendered and tokenized (now every special token in it is the template's), and each
stretch between two of those special tokens that holds a stand-in is swapped back and tokenized
again with ``split_special_tokens=True``. A fast tokenizer splits its input at special tokens
before anything else, so the stretches without stand-ins keep their ids, and the others get the
ids of their characters as plain text. (One difference: a Metaspace pre-tokenizer with
``prepend_scheme="first"`` adds "▁" at the start of a re-tokenized stretch.) Without a chat
template the whole transcript is content: it is tokenized with ``split_special_tokens=True`` and
the tokenizer adds its own BOS.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .errors import ChatError
from .textstream import special_tokens

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


def flatten_content(content: Any) -> str:
    """Message content as text. OpenAI and Gradio both allow a list of parts
    (``[{"type": "text", "text": ...}, ...]``); only the text parts count. None is ''."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else content


def render_prompt(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of ``messages`` followed by the assistant's turn prompt.

    The template is rendered to text and tokenized without adding special tokens, so the BOS the
    template writes is the only one (a second BOS shifts every position by one). Templates that
    reject a system message (Gemma 2) get it folded into the first user turn. Content is text:
    special-token text in it never becomes a special token (see the module docstring).
    """
    messages = check_messages(messages)
    specials = special_tokens(tokenizer)
    found = _special_text_in(messages, specials.values())
    if getattr(tokenizer, "chat_template", None) is None:
        text = _plain_transcript(messages)
        if not found:
            return tokenizer(text, add_special_tokens=True)["input_ids"]
        return tokenizer(text, add_special_tokens=True, split_special_tokens=True)["input_ids"]
    if not found:
        return tokenizer(_render(tokenizer, messages), add_special_tokens=False)["input_ids"]
    stand_ins = _stand_ins(messages, found)
    text = _render(tokenizer, _escape(messages, stand_ins))
    return _tokenize_escaped(tokenizer, text, stand_ins, specials)


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """The history as plain ``{"role", "content"}`` dicts, or a ``ChatError`` naming the first
    bad message: roles from ``ROLES``, string content, a system message only first, and the
    user's turn last."""
    if not messages:
        raise ChatError("a chat needs at least one message")
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatError(f"message {i}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ChatError(f"message {i}: content must be a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise ChatError(f"message {i}: a system (or developer) message may only come first")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ChatError(f"the last message must be from the user, not {out[-1]['role']!r}")
    return out


def fold_system(messages: list[Message]) -> list[Message]:
    """Move a leading system message into the first user turn."""
    system, rest = messages[0]["content"], messages[1:]
    first = rest[0]
    return [{"role": first["role"], "content": f"{system}\n\n{first['content']}"}, *rest[1:]]


def _render(tokenizer: Any, messages: list[Message]) -> str:
    try:
        return _apply_template(tokenizer, messages)
    except Exception as e:  # jinja raises its own TemplateError for "System role not supported"
        if messages[0]["role"] != "system" or "system" not in str(e).lower():
            raise ChatError(f"the chat template rejected the history: {e}") from e
        return _apply_template(tokenizer, fold_system(messages))


def _special_text_in(messages: list[Message], texts: Any) -> list[str]:
    """The special tokens' texts that occur in some message's content."""
    return sorted({t for t in texts if t and any(t in m["content"] for m in messages)})


def _stand_ins(messages: list[Message], texts: list[str]) -> dict[str, str]:
    """{private-use character: special token text}, with characters no content holds."""
    used = set("".join(m["content"] for m in messages))
    free = (chr(c) for c in range(0xF0000, 0x10FFFE) if chr(c) not in used)
    return {next(free): t for t in texts}


def _escape(messages: list[Message], stand_ins: dict[str, str]) -> list[Message]:
    by_text = {t: c for c, t in stand_ins.items()}
    # longest first: where one special token's text contains another's, the longer one wins
    pattern = re.compile("|".join(map(re.escape, sorted(by_text, key=len, reverse=True))))
    return [{**m, "content": pattern.sub(lambda s: by_text[s[0]], m["content"])} for m in messages]


def _tokenize_escaped(
    tokenizer: Any, text: str, stand_ins: dict[str, str], specials: dict[int, str]
) -> list[int]:
    """Ids of ``text`` with each stretch between special tokens that holds a stand-in
    tokenized again, its stand-ins swapped back, as plain text.

    A special token here is one the tokenizer matched in the text (its span reads as its
    text); an <unk> the model gives to an unknown character is not one.
    """
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = encoded["input_ids"], encoded["offset_mapping"]
    out: list[int] = []
    stretch: list[int] = []  # ids since the last special token
    start = 0  # where that stretch begins in ``text``
    for token, (begin, end) in [*zip(ids, spans), (None, (len(text), len(text)))]:
        matched = token in specials and text[begin:end].strip() == specials[token].strip()
        if token is not None and not matched:
            stretch.append(token)
            continue
        piece = text[start:begin]
        if any(c in piece for c in stand_ins):
            stretch = _as_text(tokenizer, piece, stand_ins, specials)
        out += stretch + ([token] if token is not None else [])
        stretch, start = [], end
    return out


def _as_text(
    tokenizer: Any, piece: str, stand_ins: dict[str, str], specials: dict[int, str]
) -> list[int]:
    """Ids of ``piece`` with its stand-ins swapped back, every character of it as text.

    ``split_special_tokens`` keeps the tokenizer from matching special tokens, but a model
    whose vocabulary holds them as pieces (a Unigram trained with them) can still produce
    one; then each special token's text is spelled one character at a time.
    """
    control = set(specials) - {getattr(tokenizer, "unk_token_id", None)}

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    ids = encode(piece.translate({ord(c): t for c, t in stand_ins.items()}))
    if not control.intersection(ids):
        return ids
    ids = []
    for part in re.split(f"([{''.join(stand_ins)}])", piece):
        part_ids = encode(stand_ins.get(part, part))
        if control.intersection(part_ids):
            part_ids = [i for c in stand_ins.get(part, part) for i in encode(c)]
        ids += part_ids
    # a single character that still comes out as a special token: call it unknown
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return [i for i in ids if i not in control]
    return [unk if i in control else i for i in ids]


def _apply_template(tokenizer: Any, messages: list[Message]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _plain_transcript(messages: list[Message]) -> str:
    """For base models without a chat template."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"
