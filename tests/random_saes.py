"""Random SAEs built directly (the format loaders have their own fixtures)."""

from __future__ import annotations

import torch

from steering.sae import SAE, HookPoint


def random_sae(
    d_in: int,
    d_sae: int,
    layer: int,
    *,
    seed: int = 0,
    site: str = "resid_post",
    activation: str = "relu",
    biorthogonal: bool = False,
    always_on: tuple = (),
    **kwargs,
) -> SAE:
    """A random SAE. ``biorthogonal`` (needs d_sae <= d_in) makes W_enc the pseudo-inverse of
    W_dec, so W_dec[i] @ W_enc[:, j] = delta_ij: adding a decoder row moves exactly one
    pre-activation. ``always_on`` features get a large encoder bias, so they fire everywhere."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g) / d_in**0.5
    W_enc = torch.linalg.pinv(W_dec) if biorthogonal else torch.randn(d_in, d_sae, generator=g)
    b_enc = torch.randn(d_sae, generator=g) * 0.1
    for i in always_on:
        b_enc[i] = 50.0
    extra = {}
    if activation == "jumprelu":
        extra["threshold"] = torch.rand(d_sae, generator=g) * 0.5
    if activation == "topk":
        extra["k"] = max(1, d_sae // 4)
    extra["max_activation"] = torch.rand(d_sae, generator=g) * 5 + 1
    return SAE(
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=torch.randn(d_in, generator=g) * 0.1,
        hook=HookPoint(layer, site),
        activation=activation,
        format="test",
        source=f"random-{seed}",
        **{**extra, **kwargs},
    )
