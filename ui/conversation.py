"""A visitor's conversation, kept on the server: both panes' histories, as text.

The page keeps each session's conversation in a ``gr.State``; the chat panes are outputs only,
so no history a client sends is ever read. A conversation is a plain dict (page state must be
deep-copyable): ``{"steered": [...], "baseline": [...]}``, each a list of
``{"role": "user" | "assistant", "content": str}``. Both lists hold the same user turns.
"""

from __future__ import annotations

from typing import Any

from steering.serve import Limits

Chat = list[dict[str, Any]]
Conversation = dict[str, Chat]
PANES = ("steered", "baseline")


def empty() -> Conversation:
    return {pane: [] for pane in PANES}


def copy(conversation: Conversation | None) -> Conversation:
    """A fresh copy to extend: two events of one session never write into the same lists."""
    conversation = conversation or empty()
    return {pane: [dict(m) for m in conversation.get(pane, [])] for pane in PANES}


def chars(conversation: Conversation) -> int:
    """The characters of the longer pane's history."""
    return max(sum(len(m["content"]) for m in conversation[pane]) for pane in PANES)


def message_problem(message: str, conversation: Conversation, limits: Limits) -> str | None:
    """What the visitor should read when ``message`` may not be sent, or None.

    Checked before anything else is done with the message (no tokenizing, no planning)."""
    size, most = len(message), limits.max_message_chars
    if size > most:
        return (
            f"**Your message is too long:** {size:,} characters, {size - most:,} over this "
            f"demo's limit of {most:,} (max_message_chars). Please shorten it."
        )
    total, most = chars(conversation) + size, limits.max_conversation_chars
    if total > most:
        return (
            f"**This conversation is too long:** with your message it has {total:,} "
            f"characters, {total - most:,} over this demo's limit of {most:,} "
            "(max_conversation_chars). Press **Clear** to start a new one."
        )
    return None


def without_last_exchange(conversation: Conversation) -> tuple[str, Conversation]:
    """For regenerate: the last user message, and the conversation before it ('' when none)."""
    conversation = copy(conversation)
    steered = conversation["steered"]
    users = [i for i, m in enumerate(steered) if m["role"] == "user"]
    if not users:
        return "", conversation
    last = users[-1]
    message = steered[last]["content"]
    baseline = conversation["baseline"]
    at = [i for i, m in enumerate(baseline) if m["role"] == "user"][-1:] or [len(baseline)]
    return message, {"steered": steered[:last], "baseline": baseline[: at[0]]}
