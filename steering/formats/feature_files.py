"""Where this project's per-feature files of an SAE live: statistics, labels, contexts.

A local SAE keeps them next to its weights, where ``save_sae`` and the sidecar reader look. An
SAE from the Hugging Face Hub, or one shipped with steering, is read-only to us (the Hub cache
is content-addressed; the shipped files are package data), so the files computed or imported
for it (``steering sae-stats``, ``steering labels``) go to a folder of the user's own:
``$STEERING_HOME/sae-files/<owner>/<repo>[/<sub/folder>]`` (``STEERING_HOME`` defaults to
``$XDG_CACHE_HOME/steering``, else ``~/.cache/steering``). ``load_sae`` reads both, the user's
folder winning file by file.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..errors import SAELoadError
from ..hub import HUB_PREFIX, SHIPPED_SAES

STEERING_HOME_ENV = "STEERING_HOME"


def steering_home() -> Path:
    """The folder steering keeps the user's own files in (see the module docstring)."""
    home = os.environ.get(STEERING_HOME_ENV, "").strip()
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(cache).expanduser() / "steering"


def is_local(source: str) -> bool:
    """Whether ``source`` (what ``load_sae`` was given) names a local file or folder."""
    return bool(source) and Path(source).expanduser().exists()


def shipped_name(source: str) -> str | None:
    """The public name of the SAE shipped with steering that ``source`` names, by its name or
    by the path of its folder (or of a file in it); None for any other SAE."""
    name = source.strip()
    if name in SHIPPED_SAES:
        return name
    if not is_local(source):
        return None
    path = Path(source).expanduser().resolve()
    for shipped, folder in SHIPPED_SAES.items():
        if folder().resolve() in (path, path.parent):
            return shipped
    return None


def user_folder(source: str) -> Path | None:
    """The user's folder for a Hub or shipped SAE ``source`` (the shipped one by its name or
    its path); None for any other local one.

    Raises ``SAELoadError`` for a reference with a ``..`` part (it would leave the folder).
    """
    shipped = shipped_name(source) if source else None
    if shipped is not None:
        return steering_home().joinpath("sae-files", "shipped", shipped)
    if not source or is_local(source):
        return None
    reference = source.strip().removeprefix(HUB_PREFIX).strip("/")
    parts = PurePosixPath(reference).parts
    if not parts or any(p in ("..", ".") for p in parts):
        raise SAELoadError(f"{source!r} cannot name a folder of feature files")
    return steering_home().joinpath("sae-files", *parts)


def feature_files_folder(source: str, loaded_from: Path | None = None) -> Path:
    """Where new per-feature files of the SAE loaded from ``source`` are written: next to a
    local SAE (``loaded_from``: its folder, or its weights file), else ``user_folder``."""
    folder = user_folder(source)
    if folder is not None:
        return folder
    path = Path(source).expanduser() if loaded_from is None else loaded_from
    return path if path.is_dir() else path.parent
