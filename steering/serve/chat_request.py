"""The bodies of ``POST /v1/chat/completions`` and ``POST /v1/activations``: their pydantic
models, strict parsing and the checks that run before any work (chat size, stop strings), and
their JSON Schemas for ``/openapi.json``.

A field this server does not implement (``tools``, ``response_format``, ``n`` > 1, ...) or does
not know is a 400 naming it, never silently ignored; ``null`` means the default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError
from pydantic.json_schema import models_json_schema

from ..limits import Limits
from ..presets.schema import NamedPresets, Preset, error_lines
from ..sampling import MAX_TOP_LOGPROBS
from .api_errors import ApiError, clip

# OpenAI fields this server does not implement: a request that uses one gets a 400 naming it.
UNSUPPORTED = {
    "tools": "tool calls",
    "tool_choice": "tool calls",
    "functions": "function calls",
    "function_call": "function calls",
    "parallel_tool_calls": "tool calls",
    "response_format": "structured output",
    "logit_bias": "logit bias",
    "audio": "audio output",
    "modalities": "modalities other than text",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "reasoning_effort": "reasoning settings",
}

JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


class TextPart(BaseModel):
    """A content part; only text is implemented."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of the chat; ``developer`` is OpenAI's newer name for ``system``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


def _steering_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "named" if "presets" in value else "preset"
    return None if value is None else "preset"  # anything else fails as a preset


SteeringField = Annotated[
    Annotated[Preset, Tag("preset")] | Annotated[NamedPresets, Tag("named")],
    Discriminator(_steering_kind),
]


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False
    """End the stream with a chunk that holds the usage."""


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``: OpenAI's fields that this server implements,
    and its extensions. Any other field is refused by name."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(max_length=300)
    """This server's model id, or MODEL:PRESET to apply one of its presets."""
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    """Deprecated by OpenAI in favour of max_completion_tokens; either works."""
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    """Must be 1; compare gives a second (unsteered) reply."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    """Return each reply token's log-probability (steered and baseline alike)."""
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    """With logprobs: also the most likely tokens at each position."""
    presence_penalty: float = 0.0
    """Only 0 is implemented (see repetition_penalty)."""
    frequency_penalty: float = 0.0
    """Only 0 is implemented (see repetition_penalty)."""
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    # extensions
    steering: SteeringField | None = None
    """A preset object (the preset file format) or {"presets": [{"name", "scale"}]}."""
    compare: bool = False
    """Also generate the unsteered reply, with the same random numbers, as choices[1]."""
    sweep: list[float] | None = None
    """A strength sweep: one reply per multiplier of the steering's strengths (0: unsteered),
    in order as choices[i] with "sweep_scale", all with the same random numbers. Needs a
    steering; not with compare or n > 1."""
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    """EOS and stop strings cannot end a reply before this many tokens."""


class ActivationsRequest(BaseModel):
    """The body of ``POST /v1/activations``: a text or a chat (exactly one), and what to read
    of it. Any other field is refused by name."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = None
    """A text, read as the tokenizer reads it (with the BOS it adds itself, if any)."""
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    """A chat, rendered with the chat template; the last message may be the assistant's reply
    (its first token is reply_start)."""
    sae: str | None = Field(None, max_length=300)
    """One of this server's SAEs, by its public reference (default: the first)."""
    features: list[int] = Field(default_factory=list)
    """Features whose activation to give at every token (at most max_edits)."""
    top_k: int = 5
    """How many of each token's strongest features to list (1..32)."""


def parse_activations_request(data: Any) -> ActivationsRequest:
    data = _json_object(data)
    try:
        body = ActivationsRequest.model_validate(
            {k: v for k, v in data.items() if v is not None}  # null means the default
        )
    except ValidationError as e:
        raise _validation_error(e) from None
    if (body.text is None) == (body.messages is None):
        message = "text, messages: give exactly one of them (a text, or a chat)"
        raise ApiError(400, message, param="text", code="invalid_value")
    return body


def _json_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        kind = JSON_KINDS.get(type(data), "a value")
        raise ApiError(400, f"the body must be a JSON object, not {kind}", code="invalid_json")
    return data


def parse_chat_request(data: Any) -> ChatRequest:
    data = _json_object(data)
    for name in data.keys() & UNSUPPORTED.keys():
        if data[name] not in (None, [], {}):
            raise ApiError(
                400,
                f"{name}: this server does not implement {UNSUPPORTED[name]}",
                param=name,
                code="unsupported_parameter",
            )
    # null means "the default" for every field, as OpenAI's nullable fields do
    data = {k: v for k, v in data.items() if k not in UNSUPPORTED and v is not None}
    try:
        body = ChatRequest.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from None
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) != 0:
            message = f"{name}: only 0 is implemented; use repetition_penalty"
            raise ApiError(400, message, param=name, code="unsupported_parameter")
    if body.sweep is not None and (body.compare or body.n != 1):
        other = "compare" if body.compare else "n > 1"
        message = (
            f"sweep: cannot be combined with {other}; a sweep answers one choice per "
            "multiplier (multiplier 0 is the unsteered reply)"
        )
        raise ApiError(400, message, param="sweep", code="invalid_value")
    if body.n != 1:
        message = "n: only 1 is implemented; use compare for a second (unsteered) reply"
        raise ApiError(400, message, param="n", code="unsupported_parameter")
    lengths = (body.max_tokens, body.max_completion_tokens)
    if None not in lengths and lengths[0] != lengths[1]:
        message = "max_completion_tokens: differs from max_tokens; give one of them"
        raise ApiError(400, message, param="max_completion_tokens", code="invalid_value")
    if body.top_logprobs is not None and not body.logprobs:
        message = "top_logprobs: needs logprobs set to true"
        raise ApiError(400, message, param="top_logprobs", code="invalid_value")
    return body


def _validation_error(error: ValidationError) -> ApiError:
    first = error.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] == "steering":  # the preset's own messages: path.to.field lines
        problems = [line for line in error_lines(error) if line.startswith("steering")]
        message = "steering: invalid preset:\n  " + "\n  ".join(problems)
        return ApiError(400, message, param="steering", code="invalid_steering")
    param = clip(".".join(loc)) or None  # field names may be a visitor's own keys
    if first["type"] == "extra_forbidden":
        errors = error.errors(include_url=False)
        unknown = [clip(".".join(map(str, e["loc"]))) for e in errors if e["type"] == first["type"]]
        listed = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" * (len(unknown) > 10))
        message = f"{listed}: unrecognized request argument; see GET /openapi.json"
        return ApiError(400, message, param=param, code="unrecognized_argument")
    return ApiError(400, f"{param}: {first['msg']}", param=param, code="invalid_value")


def check_chat(body: ChatRequest | ActivationsRequest, limits: Limits) -> None:
    """The chat's (or the text's) size against ``limits``, before anything tokenizes it."""
    if isinstance(body, ActivationsRequest) and body.text is not None:
        chars = len(body.text)
        if chars > limits.max_conversation_chars:
            message = f"text: {chars} characters, at most {limits.max_conversation_chars}"
            raise ApiError(
                400, message + " (max_conversation_chars)", param="text", code="limit_exceeded"
            )
        return
    messages = body.messages or []
    if len(messages) > limits.max_messages:
        message = f"messages: {len(messages)} messages, at most {limits.max_messages}"
        raise ApiError(400, message + " (max_messages)", param="messages", code="limit_exceeded")
    total = 0
    for i, m in enumerate(messages):
        chars = len(m.text())
        total += chars
        if chars > limits.max_message_chars:
            param = f"messages.{i}.content"
            message = f"{param}: {chars} characters, at most {limits.max_message_chars}"
            raise ApiError(
                400, message + " (max_message_chars)", param=param, code="limit_exceeded"
            )
    if total > limits.max_conversation_chars:
        message = f"messages: {total} characters in all, at most {limits.max_conversation_chars}"
        raise ApiError(
            400, message + " (max_conversation_chars)", param="messages", code="limit_exceeded"
        )


def check_stop(body: ChatRequest, limits: Limits) -> None:
    """Stop strings against ``limits``; the messages name ``stop``, never echo its value."""
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    problem = None
    if len(stops) > limits.max_stop_strings:
        problem = f"{len(stops)} stop strings, at most {limits.max_stop_strings} (max_stop_strings)"
    elif any(not s for s in stops):
        problem = "a stop string is empty"
    else:
        for i, s in enumerate(stops):
            if len(s) > limits.max_stop_length:
                problem = (
                    f"stop string {i} has {len(s)} characters, at most {limits.max_stop_length} "
                    "(max_stop_length)"
                )
                break
    if problem is not None:
        raise ApiError(400, f"stop: {problem}", param="stop", code="invalid_value")


def openapi_schemas() -> dict[str, Any]:
    """The request bodies' JSON Schemas, for ``components.schemas`` of ``/openapi.json``."""
    _, schema = models_json_schema(
        [(ChatRequest, "validation"), (ActivationsRequest, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    return schema.get("$defs", {})


def request_body(model: str) -> dict[str, Any]:
    """The ``openapi_extra`` of a route whose JSON body is the schema ``model``."""
    schema = {"$ref": f"#/components/schemas/{model}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


REQUEST_BODY = request_body("ChatRequest")
ACTIVATIONS_BODY = request_body("ActivationsRequest")
