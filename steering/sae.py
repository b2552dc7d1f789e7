"""One SAE type for every public format, and the column-wise encode that steering needs.

All formats are converted on load to the SAELens orientation: ``W_enc`` is (d_in, d_sae),
``W_dec`` is (d_sae, d_in) and row i of ``W_dec`` is feature i's direction. Constant input
scalings (Llama Scope's dataset-wise norm, TopK decoder-norm rescaling) are folded into the
weights on load, so only per-token normalisations remain at run time: ``layer_norm`` and
``constant_norm_rescale`` (SAELens ``normalize_activations``) and ``center``, the per-token mean
removal that TransformerLens' ``center_writing_weights`` applies to the residual stream of
LayerNorm models (see ``formats.tl_preprocessing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from .errors import PlanError, SAELoadError
from .hookpoint import HookPoint

Activation = Literal["relu", "jumprelu", "topk", "gated"]
Normalization = Literal["none", "layer_norm", "constant_norm_rescale", "center"]

LAYER_NORM_EPS = 1e-5  # SAELens and OpenAI use this epsilon for layer_norm inputs


@dataclass(frozen=True)
class FeatureContext:
    """One of a feature's top activating contexts: the token it fired on, with the text just
    before and after it, and the activation there (the SAE's raw units)."""

    left: str
    token: str
    right: str
    activation: float


@dataclass(eq=False)
class SAE:
    """A sparse autoencoder on the residual stream.

    ``encode``/``decode`` follow the format's own definition (used for analysis and tests);
    steering encodes a ``select``-ed SAE of the steered columns only, so its cost
    grows with the number of steered features and not with the SAE's width.
    """

    W_enc: Tensor  # (d_in, d_sae)
    b_enc: Tensor  # (d_sae,)
    W_dec: Tensor  # (d_sae, d_in)
    b_dec: Tensor  # (d_in,)
    hook: HookPoint
    activation: Activation = "relu"
    threshold: Tensor | None = None  # (d_sae,) for jumprelu; compared with a strict >
    k: int | None = None  # for topk
    apply_b_dec_to_input: bool = False
    normalization: Normalization = "none"
    # gated SAEs (Rajamanoharan et al.): gate = pre + b_gate > 0, magnitude from r_mag, b_mag
    b_gate: Tensor | None = None
    r_mag: Tensor | None = None
    b_mag: Tensor | None = None
    # optional per-feature statistics, when the files carry them
    max_activation: Tensor | None = None  # (d_sae,)
    frequency: Tensor | None = None  # (d_sae,) firing frequency in [0, 1]
    mean_activation: Tensor | None = None  # (d_sae,) mean when active (0: never fired)
    labels: dict[int, str] = field(default_factory=dict)
    contexts: dict[int, tuple[FeatureContext, ...]] = field(default_factory=dict)  # best first
    format: str = "unknown"
    source: str = ""
    model_name: str | None = None
    # Neuronpedia's "MODEL_ID/SOURCE_ID" of this SAE (e.g. "gemma-2-2b/20-gemmascope-res-16k"),
    # where its files say it: the key of its labels and statistics there (features.neuronpedia)
    neuronpedia_id: str | None = None

    def __post_init__(self) -> None:
        d_in, d_sae = self.W_enc.shape
        expected = {
            "W_dec": (self.W_dec, (d_sae, d_in)),
            "b_enc": (self.b_enc, (d_sae,)),
            "b_dec": (self.b_dec, (d_in,)),
            "threshold": (self.threshold, (d_sae,)),
            "b_gate": (self.b_gate, (d_sae,)),
            "r_mag": (self.r_mag, (d_sae,)),
            "b_mag": (self.b_mag, (d_sae,)),
            "max_activation": (self.max_activation, (d_sae,)),
            "frequency": (self.frequency, (d_sae,)),
            "mean_activation": (self.mean_activation, (d_sae,)),
        }
        for name, (tensor, shape) in expected.items():
            if tensor is not None and tuple(tensor.shape) != shape:
                raise SAELoadError(
                    f"{self.source or 'SAE'}: {name} has shape {tuple(tensor.shape)}, "
                    f"expected {shape} for d_in={d_in}, d_sae={d_sae}"
                )
        if self.activation == "jumprelu" and self.threshold is None:
            raise SAELoadError(f"{self.source or 'SAE'}: a JumpReLU SAE needs a threshold")
        if self.activation == "topk" and (self.k is None or not 0 < self.k <= d_sae):
            raise SAELoadError(f"{self.source or 'SAE'}: TopK needs 0 < k <= {d_sae}, got {self.k}")
        if self.activation == "gated" and any(
            t is None for t in (self.b_gate, self.r_mag, self.b_mag)
        ):
            raise SAELoadError(f"{self.source or 'SAE'}: a gated SAE needs b_gate, r_mag, b_mag")

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SAE:
        """A copy on ``device`` with floating tensors in ``dtype`` (statistics stay float32)."""

        def move(t: Tensor | None, cast: bool = True) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if cast and t.is_floating_point() else None)

        return replace(
            self,
            **{n: move(getattr(self, n)) for n in _WEIGHTS},
            max_activation=move(self.max_activation, cast=False),
            frequency=move(self.frequency, cast=False),
            mean_activation=move(self.mean_activation, cast=False),
        )

    # ---- the format's full definition (analysis, tests, benchmarks) ----

    def encode(self, x: Tensor) -> Tensor:
        """All feature activations of ``x`` (..., d_in) -> (..., d_sae)."""
        x_in = self._normalize(x.to(self.dtype))
        if self.apply_b_dec_to_input:
            x_in = x_in - self.b_dec
        pre = x_in @ self.W_enc + self.b_enc
        if self.activation == "gated":
            return self._gated(x_in @ self.W_enc)
        if self.activation == "topk":
            assert self.k is not None
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        return self._activate(pre)

    def decode(self, f: Tensor, x: Tensor | None = None) -> Tensor:
        """Reconstruction from features ``f`` (..., d_sae) -> (..., d_in).

        SAEs that normalise each token need the original input ``x`` to undo the normalisation.
        """
        out = f.to(self.dtype) @ self.W_dec + self.b_dec
        if self.normalization == "none":
            return out
        if x is None:
            raise ValueError(f"decode of a {self.normalization} SAE needs the input x")
        x = x.to(self.dtype)
        return out * self.token_scale(x) + self._token_shift(x)

    def error(self, x: Tensor) -> Tensor:
        """The SAE error term: what the reconstruction misses, ``x - decode(encode(x))``."""
        return x.to(self.dtype) - self.decode(self.encode(x), x)

    # ---- the column-wise path used by the steering hook ----

    def select(self, features: Sequence[int] | Tensor) -> SAE:
        """A narrow SAE holding only ``features``: its full encode is the column-wise encode.

        Exact for ReLU, JumpReLU and gated SAEs. For TopK SAEs membership of the top k needs
        the full encode, so the narrow SAE is a ReLU SAE: a feature counts as active whenever
        its pre-activation is positive (exact wherever the feature is in the top k, which it is
        where it fires strongly).
        """
        idx = torch.as_tensor(features, dtype=torch.long, device=self.device)

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx]

        return replace(
            self,
            W_enc=self.W_enc[:, idx],
            b_enc=self.b_enc[idx],
            W_dec=self.W_dec[idx],
            **{n: pick(getattr(self, n)) for n in ("threshold", "b_gate", "r_mag", "b_mag")},
            max_activation=pick(self.max_activation),
            frequency=pick(self.frequency),
            mean_activation=pick(self.mean_activation),
            labels={},
            activation="relu" if self.activation == "topk" else self.activation,
            k=None,
        )

    def encode_features(self, x: Tensor, idx: Sequence[int] | Tensor) -> Tensor:
        """Activations of the features ``idx`` (K,) only: (..., d_in) -> (..., K)."""
        return self.select(idx).encode(x)

    def token_scale(self, x: Tensor) -> Tensor:
        """(..., 1): how a unit of feature activation scales in residual units at each token
        (the factor the decode multiplies by to undo the input normalisation)."""
        if self.normalization == "layer_norm":
            return x.std(dim=-1, keepdim=True)  # unbiased, no epsilon: as SAELens and OpenAI
        if self.normalization == "constant_norm_rescale":
            return x.norm(dim=-1, keepdim=True) / self.d_in**0.5
        return torch.ones_like(x[..., :1])

    def _token_shift(self, x: Tensor) -> Tensor:
        if self.normalization in ("layer_norm", "center"):
            return x.mean(dim=-1, keepdim=True)
        return torch.zeros_like(x[..., :1])

    def _normalize(self, x: Tensor) -> Tensor:
        if self.normalization == "layer_norm":  # SAELens/OpenAI: (x - mean) / (std + eps)
            return (x - self._token_shift(x)) / (self.token_scale(x) + LAYER_NORM_EPS)
        if self.normalization == "constant_norm_rescale":
            return x / self.token_scale(x)
        if self.normalization == "center":  # the TransformerLens residual of a centred model
            return x - self._token_shift(x)
        return x

    def _activate(self, pre: Tensor) -> Tensor:
        if self.activation == "jumprelu":
            return pre.relu() * (pre > self.threshold)
        return pre.relu()

    def _gated(self, proj: Tensor) -> Tensor:
        gate = (proj + self.b_gate) > 0
        return gate * (proj * self.r_mag.exp() + self.b_mag).relu()

    # ---- features and units ----

    def check_feature(self, index: int) -> None:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.d_sae:
            raise PlanError(
                f"feature index {index!r} is out of range for {self.name}: "
                f"valid indices are 0..{self.d_sae - 1}"
            )

    def max_activation_of(self, index: int) -> float:
        self.check_feature(index)
        if self.max_activation is None:
            raise PlanError(
                f"a multiple of max activation was asked for feature {index} of {self.name}, "
                "but this SAE has no known max activations; give the value in raw units "
                "or load max activations for this SAE"
            )
        return float(self.max_activation[index])

    @property
    def name(self) -> str:
        return f"SAE {self.source or self.format} ({self.hook}, d_sae={self.d_sae})"

    def __repr__(self) -> str:
        return (
            f"SAE(format={self.format!r}, hook={self.hook}, d_in={self.d_in}, d_sae={self.d_sae}, "
            f"activation={self.activation!r}, source={self.source!r})"
        )


_WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "r_mag", "b_mag")
