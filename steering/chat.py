"""Chat histories to prompt tokens with the tokenizer's own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import ChatError

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
    reject a system message (Gemma 2) get it folded into the first user turn.
    """
    messages = check_messages(messages)
    if getattr(tokenizer, "chat_template", None) is None:
        return tokenizer(_plain_transcript(messages), add_special_tokens=True)["input_ids"]
    try:
        text = _apply_template(tokenizer, messages)
    except Exception as e:  # jinja raises its own TemplateError for "System role not supported"
        if messages[0]["role"] != "system" or "system" not in str(e).lower():
            raise ChatError(f"the chat template rejected the history: {e}") from e
        text = _apply_template(tokenizer, fold_system(messages))
    return tokenizer(text, add_special_tokens=False)["input_ids"]


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
            raise ChatError(f"message {i}: a system message may only come first")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ChatError(f"the last message must be from the user, not {out[-1]['role']!r}")
    return out


def fold_system(messages: list[Message]) -> list[Message]:
    """Move a leading system message into the first user turn."""
    system, rest = messages[0]["content"], messages[1:]
    first = rest[0]
    return [{"role": first["role"], "content": f"{system}\n\n{first['content']}"}, *rest[1:]]


def _apply_template(tokenizer: Any, messages: list[Message]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _plain_transcript(messages: list[Message]) -> str:
    """For base models without a chat template."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"
