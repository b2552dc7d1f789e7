"""Every error text the page shows a visitor passes through here: ``for_visitor`` phrases the
server's errors for a visitor and removes anything that looks like a server path (an SAE
folder, a preset file), which a visitor must never see."""

from __future__ import annotations

import re

from steering.serve import Busy, SteeringError

SERVER_FILE = "(a file path)"
BUSY = "The demo is busy right now: too many people are chatting. Please try again in a moment."
# A path: absolute (/x, C:\x, \\host), home (~/x) or relative (./x, ../x), up to the next
# space or quote; not a fraction such as 3/4, nor a word/word pair.
PATH = re.compile(r"""(?<![\w.~/\\])(?:[A-Za-z]:[\\/]|\\\\|~[\\/]|\.{1,2}[\\/]|/)[^\s'"`,;)\]}]*""")
QUOTED_PATH = re.compile(r"""(['"`])(?:[A-Za-z]:[\\/]|\\\\|~[\\/]|\.{1,2}[\\/]|/)[^'"`]*\1""")
CONTEXT = re.compile(
    r"the prompt has (\d+) tokens, but the model's context is (\d+) tokens"
    r" \(prompt and reply together\)(?:: shorten the chat)?"
)
PROMPT_LIMIT = re.compile(r"the prompt has (\d+) tokens, at most (\d+)")


def without_paths(text: str) -> str:
    """``text`` with every server path replaced by a neutral phrase."""
    text = QUOTED_PATH.sub(SERVER_FILE, text)
    return PATH.sub(SERVER_FILE, text)


def for_visitor(error: BaseException | str) -> str:
    """What the page shows for ``error``: a sentence for a visitor, with no server path.

    The model's context and the prompt limit get their own phrasing with both numbers (what
    the conversation has and what the model reads); anything else is the error's own text,
    paths removed, starting with a capital letter."""
    if isinstance(error, Busy):
        return BUSY
    text = str(error) if isinstance(error, (SteeringError, str)) else "something went wrong"
    found = CONTEXT.search(text)
    if found:
        have, reads = (int(n) for n in found.groups())
        return (
            f"This conversation is {have:,} tokens; the model reads {reads:,} (prompt and "
            "reply together). Press **Clear** to start again, or shorten your message."
        )
    found = PROMPT_LIMIT.search(text)
    if found:
        have, most = (int(n) for n in found.groups())
        return (
            f"This conversation is {have:,} tokens; this server takes at most {most:,} "
            "(max_prompt_tokens). Press **Clear** to start again, or shorten your message."
        )
    text = without_paths(text.strip())
    return text[:1].upper() + text[1:]


def plural(count: int, noun: str) -> str:
    """``1 feature``, ``2 features``, ``0 features``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
