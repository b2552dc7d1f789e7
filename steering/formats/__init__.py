"""Load any supported public SAE format into the one ``SAE`` type.

``load_sae`` takes a local folder or file, or a Hub reference ``owner/repo[/sub/folder]``; the
format is recognised from the files present (see ``FORMATS``). Every loader returns float32 CPU
tensors in SAELens orientation; ``load_sae`` then adds this project's optional sidecar files
(``feature_stats.safetensors``, ``feature_labels.json``, ``feature_contexts.json``: next to the
SAE, and for a Hub SAE in the user's folder, see ``feature_files``) and moves the SAE to the
asked device and dtype.

Every config field that changes what an SAE reads or writes is honoured or refused with an
``SAELoadError`` naming it; fields that only describe training are accepted. The table, with
the definition each loader follows (library, file, version), is docs/sae-config-fields.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import SAELoadError
from ..hub import resolve_sae_path
from ..sae import SAE, FeatureContext
from . import dictionary_learning, gemma_scope, goodfire, llama_scope, saelens, sparsify
from .common import LoadRequest, parse_dtype, read_json, read_safetensors, require
from .feature_files import user_folder
from .label_text import clean_label

# max_activation [d_sae]; optional frequency [d_sae], mean_activation [d_sae] (mean when active)
FEATURE_STATS_FILE = "feature_stats.safetensors"
FEATURE_LABELS_FILE = "feature_labels.json"  # {"index": "label", ...}
# {"index": [{"left": str, "token": str, "right": str, "activation": float}, ...], ...}
FEATURE_CONTEXTS_FILE = "feature_contexts.json"
MAX_CONTEXTS = 20  # per feature
MAX_CONTEXT_CHARS = 400  # per string of a context


@dataclass(frozen=True)
class Format:
    name: str
    files: str  # what identifies it, for messages
    matches: Callable[[Path], bool]
    load: Callable[[Path, LoadRequest], SAE]


# Checked in order: the first whose files are present wins (SAELens and sparsify share cfg.json).
FORMATS = (
    Format(llama_scope.NAME, llama_scope.FILES, llama_scope.matches, llama_scope.load),
    Format(
        dictionary_learning.NAME,
        dictionary_learning.FILES,
        dictionary_learning.matches,
        dictionary_learning.load,
    ),
    Format(saelens.NAME, saelens.FILES, saelens.matches, saelens.load),
    Format(sparsify.NAME, sparsify.FILES, sparsify.matches, sparsify.load),
    Format(gemma_scope.NAME, gemma_scope.FILES, gemma_scope.matches, gemma_scope.load),
    Format(gemma_scope.NAME_2, gemma_scope.FILES_2, gemma_scope.matches_2, gemma_scope.load_2),
    Format(goodfire.NAME, goodfire.FILES, goodfire.matches, goodfire.load),
)
GOODFIRE = FORMATS[-1]
KNOWN_FILES = {  # a file of a folder format stands for its folder
    saelens.CFG_FILE,
    saelens.WEIGHTS_FILE,
    saelens.SPARSITY_FILE,
    sparsify.WEIGHTS_FILE,
    gemma_scope.PARAMS_FILE,
    gemma_scope.PARAMS_FILE_2,
    gemma_scope.CONFIG_FILE_2,
    llama_scope.HYPERPARAMS_FILE,
    Path(llama_scope.WEIGHTS_FILE).name,
    dictionary_learning.WEIGHTS_FILE,
    dictionary_learning.CONFIG_FILE,
}
HINT_DEPTH = 4  # how deep to look for SAE folders below a folder that is not one
HINT_COUNT = 8
HINT_MAX_FOLDERS = 2000


def load_sae(
    path_or_hub_id: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    layer: int | None = None,
    revision: str | None = None,
) -> SAE:
    """Load an SAE from a local folder/file or a Hub reference ``owner/repo[/sub/folder]``.

    ``layer`` sets the layer when the files do not say it (and overrides them when they do).
    Weights are cast to ``dtype`` (default float32) on ``device`` (default CPU).
    """
    source = os.fspath(path_or_hub_id)
    is_path = not isinstance(path_or_hub_id, str)  # a Path is never a Hub reference
    path = resolve_sae_path(source, revision=revision, local_only=is_path)
    sae_format, target = detect_format(path)
    sae = sae_format.load(target, LoadRequest(source=source, layer=layer))
    sae = with_sidecars(sae, target if target.is_dir() else target.parent)
    own = user_folder(source)  # what the user computed or imported for a Hub or shipped SAE
    if own is not None and own.is_dir():
        sae = with_sidecars(sae, own, merge=True)
    return sae.to(device=device, dtype=parse_dtype(dtype))


def detect_format(path: Path) -> tuple[Format, Path]:
    """The format of ``path`` and what its loader reads (a folder, or a Goodfire weights file)."""
    if path.is_file():
        if path.suffix in goodfire.SUFFIXES and path.name != dictionary_learning.WEIGHTS_FILE:
            return GOODFIRE, path
        if path.name not in KNOWN_FILES:
            raise SAELoadError(
                f"{path} is not an SAE file of a known format; give its folder, or one of: "
                f"{', '.join(sorted(KNOWN_FILES))}, a Goodfire .pth/.pt"
            )
        folder = path.parent
        if path.name == Path(llama_scope.WEIGHTS_FILE).name and folder.name == "checkpoints":
            folder = folder.parent
        path = folder
    for sae_format in FORMATS:
        if sae_format.matches(path):
            return sae_format, path
    raise SAELoadError(_unknown_folder_message(path))


def with_sidecars(sae: SAE, folder: Path, merge: bool = False) -> SAE:
    """Add this project's per-feature statistics, labels and top activating contexts when the
    folder has them; with ``merge``, its labels and contexts are added to the SAE's own (theirs
    winning feature by feature: an import of some labels keeps the others)."""
    stats_file, labels_file = folder / FEATURE_STATS_FILE, folder / FEATURE_LABELS_FILE
    contexts_file = folder / FEATURE_CONTEXTS_FILE
    changes: dict[str, Any] = {}
    if stats_file.is_file():
        stats = read_safetensors(stats_file)
        changes["max_activation"] = require(stats, "max_activation", stats_file)
        for optional in ("frequency", "mean_activation"):
            if optional in stats:
                changes[optional] = require(stats, optional, stats_file)
    if labels_file.is_file():
        labels = _read_labels(labels_file, sae.d_sae)
        changes["labels"] = {**sae.labels, **labels} if merge else labels
    if contexts_file.is_file():
        contexts = _read_contexts(contexts_file, sae.d_sae)
        changes["contexts"] = {**sae.contexts, **contexts} if merge else contexts
    return replace(sae, **changes) if changes else sae  # replace re-checks shapes


def _read_labels(path: Path, d_sae: int) -> dict[int, str]:
    labels = {}
    for key, label in read_json(path).items():
        index = int(key) if key.isdecimal() else -1
        if not 0 <= index < d_sae or not isinstance(label, str):
            raise SAELoadError(
                f"{path}: entry {key!r}: {label!r} should map a feature index 0..{d_sae - 1} "
                "to a label string"
            )
        labels[index] = clean_label(label)  # shipped labels reach terminals and pages too
    return labels


def _read_contexts(path: Path, d_sae: int) -> dict[int, tuple[FeatureContext, ...]]:
    contexts = {}
    for key, items in read_json(path).items():
        index = int(key) if key.isdecimal() else -1
        try:
            if not 0 <= index < d_sae or not isinstance(items, list):
                raise ValueError
            if len(items) > MAX_CONTEXTS:
                raise ValueError
            contexts[index] = tuple(_context(item) for item in items)
        except (ValueError, TypeError, KeyError):
            raise SAELoadError(
                f"{path.name}: entry {key!r} should map a feature index 0..{d_sae - 1} to at "
                f"most {MAX_CONTEXTS} contexts {{left, token, right: text of at most "
                f"{MAX_CONTEXT_CHARS} characters, activation: a finite number}}"
            ) from None
    return contexts


def _context(item: Any) -> FeatureContext:
    texts = [item["left"], item["token"], item["right"]]
    activation = item["activation"]
    if not all(isinstance(t, str) and len(t) <= MAX_CONTEXT_CHARS for t in texts):
        raise ValueError
    if isinstance(activation, bool) or not isinstance(activation, (int, float)):
        raise ValueError
    if not math.isfinite(activation):
        raise ValueError
    left, token, right = texts
    return FeatureContext(left, token, right, float(activation))


def _unknown_folder_message(folder: Path) -> str:
    if not folder.is_dir():
        return f"{folder} is not an SAE file or folder of a known format"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "") or "nothing"
    known = "; ".join(f"{f.name}: {f.files}" for f in FORMATS)
    message = f"{folder} is not an SAE folder of a known format. It holds: {shown}. Known: {known}"
    candidates = _sae_folders_below(folder)
    if candidates:
        message += ". SAE folders below it: " + ", ".join(candidates)
    return message


def _sae_folders_below(folder: Path) -> list[str]:
    """A few sub-folders that hold a known format (the user may have given a repo root)."""
    found: list[str] = []
    for visited, (root, dirs, _) in enumerate(os.walk(folder)):
        if visited == HINT_MAX_FOLDERS:  # a home folder given by mistake: stop looking
            break
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(dirs) if depth < HINT_DEPTH else []
        path = Path(root)
        if path != folder and any(f.matches(path) for f in FORMATS):
            found.append(str(path.relative_to(folder)))
            if len(found) == HINT_COUNT:
                break
    return found
