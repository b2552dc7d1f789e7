"""Load a Hugging Face causal LM and find its decoder layers."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import ModelLoadError, PlanError, SteeringError

if TYPE_CHECKING:
    from .plan import SteeringPlan

# Where each architecture keeps its decoder layers, most common first. "{i}" is the layer index.
LAYER_TEMPLATES = (
    "model.layers.{i}",  # Llama, Mistral, Gemma 2, Gemma 3 text-only, Qwen 2/3, Phi-3
    "model.language_model.layers.{i}",  # Gemma 3 multimodal (transformers >= 4.52)
    "language_model.model.layers.{i}",  # Gemma 3 multimodal (older nesting)
    "model.text_model.layers.{i}",
    "transformer.h.{i}",  # GPT-2, GPT-J
    "gpt_neox.layers.{i}",  # GPT-NeoX, Pythia
    "model.decoder.layers.{i}",  # OPT
)

# The one table of dtype names, for models, SAEs and their config files.
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
}


@dataclass(eq=False)
class SteerableModel:
    """A causal LM, its tokenizer, and its decoder layers in order."""

    model: nn.Module
    tokenizer: Any
    layers: list[nn.Module]
    layer_template: str

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return hidden_size(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        """The most positions the model can attend over (prompt + reply), from its config;
        None when the config does not say."""
        config = getattr(self.model, "config", None)
        config = getattr(config, "text_config", None) or config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def name(self) -> str:
        """The Hub id or folder the model was loaded from ('' when unknown)."""
        config = getattr(self.model, "config", None)
        return getattr(self.model, "name_or_path", "") or getattr(config, "_name_or_path", "") or ""

    def fit_problems(self, layer: int, d_in: int) -> list[tuple[str, int, str]]:
        """Why an SAE at decoder layer ``layer`` with input width ``d_in`` cannot steer this
        model, as (field, value, reason) triples ([] when it fits): the one check for plans,
        presets and the server."""
        problems = []
        if not 0 <= layer < self.num_layers:
            reason = f"but the model has {self.num_layers} layers (valid: 0..{self.num_layers - 1})"
            problems.append(("layer", layer, reason))
        if d_in != self.hidden_size:
            problems.append(("d_in", d_in, f"but the model's hidden size is {self.hidden_size}"))
        return problems

    def check_plan(self, plan: SteeringPlan | None) -> None:
        """Raise ``PlanError`` when an SAE of ``plan`` does not fit this model; builds nothing."""
        for sae in {id(e.sae): e.sae for e in (plan.active_edits if plan else ())}.values():
            problems = self.fit_problems(sae.hook.layer, sae.d_in)
            if problems:
                reasons = "; ".join(f"{field}={value}, {why}" for field, value, why in problems)
                raise PlanError(f"{sae.name} does not fit this model: {reasons}")


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    layers: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    weights: bool = True,
) -> SteerableModel:
    """Load a causal LM and its tokenizer from a local folder or a Hub id.

    ``device_map="auto"`` spreads a model too large for one device over every GPU (then the
    CPU) with accelerate; steering hooks add their deltas on each layer's own device.
    ``layers`` is a module path template such as ``"model.layers.{i}"`` for architectures not
    found automatically. ``weights=False`` builds the model on the meta device from its config
    (no memory, no forward pass): enough to tokenize and check plans where other processes run
    the model (``steering.ray_serve``'s entry).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "revision": revision}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if device_map is not None and weights:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **_tok_kwargs(kwargs))
        if weights:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        else:
            config = AutoConfig.from_pretrained(name_or_path, **_tok_kwargs(kwargs))
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, **_config_kwargs(kwargs))
            model.name_or_path = name_or_path
    except (OSError, ValueError) as e:
        raise ModelLoadError(_explain_load_failure(name_or_path, e)) from e
    if device is not None and device_map is None and weights:
        model.to(device)
    model.eval()
    found, template = find_layers(model, layers)
    return SteerableModel(model, tokenizer, found, template)


def find_layers(model: nn.Module, template: str | None = None) -> tuple[list[nn.Module], str]:
    """The decoder layers of ``model``, found by a known template or the one given."""
    templates = (template,) if template else LAYER_TEMPLATES
    for t in templates:
        if "{i}" not in t:
            raise ModelLoadError(
                f"layer template {t!r} must contain '{{i}}', e.g. 'model.layers.{{i}}'"
            )
        container = _get_module(model, t.split(".{i}")[0])
        if isinstance(container, (nn.ModuleList, nn.Sequential)) and len(container) > 0:
            return list(container), t
    if template:
        raise ModelLoadError(f"no decoder layers at {template!r} in {type(model).__name__}")
    raise ModelLoadError(
        f"could not find the decoder layers of {type(model).__name__}; tried "
        f"{', '.join(LAYER_TEMPLATES)}. Pass the module path template with "
        "load_model(..., layers='path.to.layers.{i}') or --layers"
    )


def short_name(name: str) -> str:
    """The last segment of a Hub id or path: google/gemma-2-2b-it -> gemma-2-2b-it."""
    return name.strip().rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    for attr in ("hidden_size", "n_embd", "d_model"):
        value = getattr(text_config, attr, None)
        if isinstance(value, int):
            return value
    return model.get_input_embeddings().weight.shape[1]  # type: ignore[operator,union-attr]


def resolve_dtype(
    dtype: str | torch.dtype | None, *, error: type[SteeringError] = ModelLoadError
) -> torch.dtype | None:
    """``torch.bfloat16``, ``"bfloat16"``, ``"bf16"`` or ``"torch.bfloat16"`` -> the dtype;
    None stays None. Raises ``error`` naming the valid names for anything else."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.")
    if key not in DTYPES:
        raise error(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[key]


def _get_module(root: nn.Module, path: str) -> nn.Module | None:
    return functools.reduce(
        lambda m, name: getattr(m, name, None) if m else None, path.split("."), root
    )


def _tok_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("trust_remote_code", "revision")}


def _config_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("trust_remote_code", "dtype") if k in kwargs}


def _explain_load_failure(name: str, error: Exception) -> str:
    if Path(name).exists():
        return f"could not load the model in {name!r}: {error}"
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        return f"model {name!r} is not a local folder, and not a Hub id of the form 'owner/name'"
    return (
        f"could not load {name!r}: it is not a local folder, and the Hugging Face Hub did not "
        "provide it (offline, no access, or no such repository). On a machine with internet run "
        f"`hf download {name}` (older clients: `huggingface-cli download {name}`; the files land "
        "in the Hub cache, which also works offline), or pass the path of a downloaded folder. "
        f"Details: {error}"
    )
