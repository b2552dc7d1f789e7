"""Where an SAE reads the residual stream. Torch-free, so the preset schema can use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Site = Literal["resid_post", "resid_pre"]
SITES: tuple[Site, ...] = ("resid_post", "resid_pre")


@dataclass(frozen=True)
class HookPoint:
    """After decoder layer ``layer`` (``resid_post``, its output) or before it (``resid_pre``,
    its input). Printed in TransformerLens's naming: ``blocks.{layer}.hook_{site}``."""

    layer: int
    site: Site = "resid_post"

    def __str__(self) -> str:
        return f"blocks.{self.layer}.hook_{self.site}"
