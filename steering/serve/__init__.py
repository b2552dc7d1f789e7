"""The server: the OpenAI-compatible API and the demo page over one ``Service``.

- ``backend``: the one interface between the server and generation;
- ``service``: the model, its presets and SAEs, the limits, and the backend;
- ``openai_api``: the routes ``/v1/chat/completions``, ``/v1/models``, ``/v1/presets``,
  ``/v1/activations``;
- ``chat_request`` / ``chat_response``: a chat completion's body (parsed strictly, checked before
  any work; also the activations body) and its answers (whole, or server-sent events, with
  logprobs; a sweep's choices with their ``sweep_scale``);
- ``api_errors``: OpenAI's error shape, with what it echoes cut short;
- ``bodies``: reading a body within bounds (media type, size, time, depth) before any work;
- ``visitors``: who a request comes from, per-visitor rate limits and requests in flight;
- ``workers``: the bounded worker threads the API's CPU work runs in;
- ``about``: what the page says about the model (demo or not, size, context, prompts to try)
  and how a feature added on the page steers by default;
- ``app``: the FastAPI app with the page mounted, and ``serve``.

This package is the page's (``ui``) view of the server: ``ui`` imports from here and from the
public ``steering`` API only.
"""

from ..activations import TokenActivations
from ..chat import flatten_content
from ..errors import Busy, ChatError, PresetError, SteeringError
from ..features.labels import LabelMatch, search_labels
from ..features.neighbours import Neighbour, cached_neighbours
from ..limits import Limits
from ..presets.schema import FORMAT_VERSION, Preset, PresetEdit, dump_preset, parse_preset
from ..sampling import SamplingParams
from .about import About, FeatureContext, FeatureDefaults, about, feature_defaults
from .backend import Backend, EventStream
from .service import Service

__all__ = [
    "FORMAT_VERSION",
    "About",
    "Backend",
    "Busy",
    "ChatError",
    "EventStream",
    "FeatureContext",
    "FeatureDefaults",
    "LabelMatch",
    "Limits",
    "Neighbour",
    "Preset",
    "PresetEdit",
    "PresetError",
    "SamplingParams",
    "Service",
    "SteeringError",
    "TokenActivations",
    "about",
    "cached_neighbours",
    "dump_preset",
    "feature_defaults",
    "flatten_content",
    "parse_preset",
    "search_labels",
]
