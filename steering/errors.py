"""Every error a user sees, in one hierarchy.

Messages are user-facing: each names the bad value and what would be valid, and is safe to show
on the page or in an API answer. Errors carry data (``param``, ``problems``) so that the edges
(the API, the page, the CLI) map them by class and field, never by parsing message text.
"""

from __future__ import annotations

from collections.abc import Sequence


class SteeringError(Exception):
    """Base class: the message is user-facing and safe to show in the UI or an API answer.

    ``param`` names the request setting at fault where there is one (engine names such as
    ``max_new_tokens``, ``messages``, ``steering``); the API maps it to OpenAI's names.
    """

    param: str | None = None

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        if param is not None:
            self.param = param


class ModelLoadError(SteeringError):
    """A model or tokenizer could not be loaded, or its decoder layers could not be found."""


class SAELoadError(SteeringError):
    """SAE files are missing, of an unknown format, corrupt, or unsupported for steering."""


class LayerUnknown(SAELoadError):
    """The SAE's files do not say which layer it reads; the caller may supply the layer."""


class PlanError(SteeringError):
    """A steering plan does not fit the SAE or model it is applied to (index, layer, value)."""


class ChatError(SteeringError):
    """A chat history is malformed (unknown role, empty, not alternating)."""

    param = "messages"


class RequestError(SteeringError):
    """A request's settings are out of range; the message names the setting and its bounds."""


class LimitError(RequestError):
    """A request asks for more than this server allows; the message names the limit."""


class PromptTooLong(LimitError):
    """The prompt does not fit the server's prompt limit or the model's context."""

    param = "messages"


class Busy(SteeringError):
    """Too many requests are waiting; try again shortly."""


class PresetError(SteeringError):
    """A preset that cannot be used; ``problems`` holds one ``path.to.field: message`` each."""

    param = "steering"

    def __init__(self, problems: Sequence[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "invalid preset:\n  " + "\n  ".join(self.problems))
