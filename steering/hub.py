"""Turn what ``load_sae`` is given into a local path.

An existing file or folder is used as is. Otherwise a Hub reference ``owner/repo[/sub/folder]``
is fetched with huggingface_hub (or found in its cache): only ``sub/folder`` when given, and the
whole repo only when it keeps its files at the top (SAE repos can hold terabytes of siblings).
Failures become an ``SAELoadError`` that says what to do on a machine without internet.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .errors import SAELoadError

HUB_REFERENCE = re.compile(r"^(?P<repo>[\w][\w.-]*/[\w][\w.-]*)(?:/(?P<sub>.+))?$")
HUB_PREFIX = "hf://"
FOLDERS_SHOWN = 10
FILE_SUFFIXES = (".pth", ".pt", ".safetensors", ".npz", ".json")  # a sub that names one file


def _demo_sae() -> Path:
    from .demo import SAE_DIR

    return SAE_DIR


# SAEs shipped with steering, by their public names: the same in a checkout and a wheel.
SHIPPED_SAES = {"demo-sae": _demo_sae}


def resolve_sae_path(name: str, revision: str | None = None, local_only: bool = False) -> Path:
    """A local path for ``name``: the path itself, an SAE shipped with steering by its public
    name (``demo-sae``), or the Hub files it refers to.

    ``local_only`` (for ``Path`` arguments) never reads ``name`` as a Hub reference.
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    shipped = SHIPPED_SAES.get(name.strip())
    if shipped is not None and not local_only:
        return shipped()
    if local_only:
        raise SAELoadError(f"no such file or folder: {path.resolve()}")
    reference = name.strip().removeprefix(HUB_PREFIX)
    match = HUB_REFERENCE.match(reference)
    if match is None or name.startswith(("/", ".", "~")) or "\\" in name:
        raise SAELoadError(
            f"{name!r} is not an existing file or folder (looked for {path.resolve()}), and not "
            "a Hugging Face Hub reference of the form owner/repo[/sub/folder]"
        )
    repo_id, sub = match["repo"], (match["sub"] or "").strip("/")
    return _fetch(name, repo_id, sub, revision)


def hub_offline() -> bool:
    """huggingface_hub reads HF_HUB_OFFLINE once at import; also honour a later change."""
    env = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _fetch(name: str, repo_id: str, sub: str, revision: str | None) -> Path:
    offline = hub_offline()
    try:
        if not sub and not offline:
            _refuse_repo_with_folders(repo_id, revision)
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=[sub, f"{sub}/*"] if sub else None,  # sub may be a file
            local_files_only=offline,
        )
    except SAELoadError:
        raise
    except Exception as e:  # any failure of the Hub client means it could not provide the files
        raise SAELoadError(_unavailable(name, repo_id, sub, revision, offline, e)) from e
    target = Path(folder) / sub
    if not target.exists():
        raise SAELoadError(
            f"Hub repo {repo_id} (revision {revision or 'main'}) has no {sub!r}; check the "
            "folder name on the repo's 'Files' page"
        )
    return target


def _refuse_repo_with_folders(repo_id: str, revision: str | None) -> None:
    """Downloading a whole repo is only sensible when it is one SAE (files at the top)."""
    files = HfApi().list_repo_files(repo_id, revision=revision)
    folders = sorted({str(PurePosixPath(f).parent) for f in files if "/" in f})
    if folders:
        shown = ", ".join(folders[:FOLDERS_SHOWN])
        more = f" and {len(folders) - FOLDERS_SHOWN} more" if len(folders) > FOLDERS_SHOWN else ""
        raise SAELoadError(
            f"Hub repo {repo_id} keeps its files in sub-folders; name the SAE's folder, e.g. "
            f"{repo_id}/{folders[0]}. Folders: {shown}{more}"
        )


def _unavailable(
    name: str, repo_id: str, sub: str, revision: str | None, offline: bool, error: Exception
) -> str:
    if offline:
        reason = "offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local Hub cache"
    elif isinstance(error, RevisionNotFoundError):
        reason = f"the repo has no revision {revision!r}"
    elif isinstance(error, (RepositoryNotFoundError, GatedRepoError)):
        reason = (
            "the Hub has no such repo, or it is private or gated and this machine is not "
            "logged in (hf auth login)"
        )
    elif isinstance(error, LocalEntryNotFoundError):
        reason = "the Hub could not be reached and the files are not in the local cache"
    else:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    pattern = sub if PurePosixPath(sub).suffix in FILE_SUFFIXES else f"{sub}/*"
    include = f" --include '{pattern}'" if sub else ""
    local = f"DIR/{sub}" if sub else "DIR"
    return (
        f"{name!r} is not a local file or folder (looked for {Path(name).resolve()}), and the "
        f"Hugging Face Hub could not provide it: {reason}. On a machine with internet, run "
        f"`hf download {repo_id}{include} --local-dir DIR` (older clients: "
        f"`huggingface-cli download {repo_id}{include} --local-dir DIR`), copy DIR here and "
        f"pass the local path {local}"
    )
