"""Every bound put on a request, in one place.

``Limits`` is what a server (or a library user) allows one request: reply and prompt length,
stop strings, the size of a steering, the queue, uploads. The engine, the API's defaults, the
page's sliders and the ``steering serve`` flags all read the same value. ``PRESET_FILE`` holds
the bounds of the preset file format itself (what any file may hold, whatever the server);
a server's ``Limits`` are tighter and win over the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .errors import SteeringError


def _limit(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PresetFileLimits:
    """What any preset file may hold (the format's own bounds, checked while parsing)."""

    max_bytes: int = 256 * 1024  # a preset with 64 edits and long labels is ~30 KiB
    max_json_depth: int = 8  # the format nests 4 deep; deeper input is refused before parsing
    max_edits: int = 64
    max_saes: int = 16
    max_multiple: float = 1000.0  # |value| in max_act units
    max_raw: float = 1e5  # |value| in raw units
    max_scale: float = 100.0
    max_d_sae: int = 2**24


PRESET_FILE = PresetFileLimits()


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on every request, from the page and the API alike.

    Each field's ``help`` metadata is the ``steering serve --max-...`` flag's help text.
    """

    max_new_tokens: int = _limit(256, "most tokens one reply may have")
    default_new_tokens: int = _limit(128, "reply length when a request names none")
    max_prompt_tokens: int = _limit(2048, "most tokens a chat history may have")
    max_stop_strings: int = _limit(8, "most stop strings in one request")
    max_stop_length: int = _limit(64, "most characters in one stop string")
    max_edits: int = _limit(16, "most feature edits in one request's steering")
    max_multiple: float = _limit(100.0, "largest |value x scale| in multiples of max activation")
    max_raw: float = _limit(1000.0, "largest |value x scale| in raw activation units")
    max_waiting: int = _limit(32, "requests queued before the server answers busy")
    max_batch: int = _limit(16, "rows decoded together (a compare is 2)")
    max_sweep_rows: int = _limit(
        8, "most multipliers in one strength sweep (each is a row of the batch)"
    )
    max_upload_bytes: int = _limit(
        PRESET_FILE.max_bytes, "largest preset file a visitor may upload"
    )
    # The API's bounds before any work: checked on the raw body, then on the parsed chat.
    max_body_bytes: int = _limit(1024 * 1024, "largest API request body in bytes (413 beyond)")
    max_messages: int = _limit(256, "most messages in one chat request")
    max_message_chars: int = _limit(16_384, "most characters in one chat message")
    max_conversation_chars: int = _limit(
        65_536, "most characters in one conversation (all its messages and replies)"
    )
    max_page_sessions: int = _limit(
        500, "page sessions whose conversation the server keeps (the oldest go first)"
    )
    max_request_threads: int = _limit(
        4, "API requests checked and tokenized at once (worker threads; the rest wait)"
    )
    # One visitor (a client address, or an API key) at a time.
    max_requests_per_minute: int = _limit(
        30, "API requests one visitor may make per minute (a burst may spend a minute's worth)"
    )
    max_tokens_per_minute: int = _limit(
        40_000, "prompt and reply tokens one visitor may use per minute (all rows counted)"
    )
    max_in_flight: int = _limit(4, "API requests one visitor may have waiting or running at once")
    max_stall_seconds: float = _limit(
        120.0, "seconds without engine progress, with requests in flight, before /healthz is down"
    )
    # Search by contrast and decoder neighbours (steering.features).
    max_contrast_prompts: int = _limit(
        64,
        "most prompts in one search by contrast (the sets a client sends, together; the built-in "
        "baseline not counted; a forward pass each)",
    )
    max_contrast_prompt_chars: int = _limit(
        2_000, "most characters in one prompt of a search by contrast"
    )
    max_contrast_results: int = _limit(100, "most features one search by contrast may list")
    max_neighbours: int = _limit(100, "most decoder neighbours one request may list")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise SteeringError(f"limit {f.name}={value!r} must be a positive number")
        if self.default_new_tokens > self.max_new_tokens:
            object.__setattr__(self, "default_new_tokens", self.max_new_tokens)  # never over

    @staticmethod
    def help(name: str) -> str:
        """The help text of the limit ``name`` (for command-line flags)."""
        return next(f.metadata["help"] for f in fields(Limits) if f.name == name)

    def slider_span(self, unit: str) -> float:
        """± the default range of a strength slider in ``unit`` ("max_act" or "raw"), never
        past what this server allows."""
        return min(SLIDER_SPAN[unit], self.max_multiple if unit == "max_act" else self.max_raw)


SLIDER_SPAN = {"max_act": 20.0, "raw": 100.0}  # a slider's default range, before any value


@dataclass(frozen=True)
class FeatureFileLimits:
    """What an imported file of feature labels and statistics may hold (Neuronpedia's
    exports: batches of 1024 rows, one gzipped JSON object a line), and what a label search may
    ask. Sizes of what comes from outside: checked while reading, before any work."""

    max_file_bytes: int = 2 * 1024**3  # one file or batch as stored (a features batch with
    # decoder vectors of a 1M-wide SAE is ~100 MiB gzipped)
    max_row_bytes: int = 64 * 1024**2  # one JSON line, decompressed
    max_rows: int = 16 * 2**20  # rows read from one import (several explanations per feature)
    max_label_chars: int = 300  # longer labels are cut (Neuronpedia's are one short phrase)
    max_batches: int = 4096  # export batches fetched per folder (2**22 features / 1024)
    max_fetch_bytes: int = 64 * 1024**3  # all batches fetched at once
    fetch_timeout_s: float = 30.0  # connect and read timeout of one request
    max_query_chars: int = 200  # a label search's query
    max_results: int = 200  # a label search's limit


FEATURE_FILES = FeatureFileLimits()
