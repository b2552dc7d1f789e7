"""Where presets come from: files, folders, the built-in presets and ``STEERING_PRESETS``.

``PresetRegistry`` finds preset files: the built-in presets (the repository's ``presets/``
folder, shipped in the wheel as ``steering.builtin_presets``), then the folders and files named
by ``STEERING_PRESETS`` (separated by ``os.pathsep``), then paths given by the caller
(``--presets``). A later source's preset replaces an earlier one with the same slug. Names are
looked up case-insensitively by name or slug. Reading a file never runs anything in it.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import PresetError, SteeringError
from .schema import MAX_FILE_BYTES, Preset, parse_preset, slugify

ENV_VAR = "STEERING_PRESETS"
BUILTIN_PACKAGE = "steering.builtin_presets"  # the repository's presets/ folder (pyproject)


def builtin_dir() -> Path | None:
    """The folder of the built-in presets, in a checkout or an installed wheel alike (a data
    folder without ``__init__.py``: a namespace package, found through its spec)."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    folders = [Path(p) for p in locations] + [Path(__file__).resolve().parents[2] / "presets"]
    return next((folder for folder in folders if folder.is_dir()), None)


def read_preset_file(path: str | os.PathLike) -> Preset:
    """A preset from a file; at most ``MAX_FILE_BYTES`` are ever read."""
    path = Path(path)
    try:
        if not path.is_file():
            raise PresetError([f"(file): {_not_a_file(path)}"], str(path))
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PresetError(
                [f"(file): {size} bytes is over the limit of {MAX_FILE_BYTES}"], str(path)
            )
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise PresetError([f"(file): cannot read it: {e.strerror or e}"], str(path)) from None
    return parse_preset(data, str(path))


def _not_a_file(path: Path) -> str:
    if path.is_dir():
        return "a folder without .json preset files"
    return "not a regular file" if path.exists() else "no such file"


@dataclass(frozen=True)
class PresetEntry:
    """A preset and where it was found (``path`` is None for one not read from a file)."""

    preset: Preset
    path: Path | None = None
    origin: str = "user"  # "built-in" or "user"

    @property
    def base_dir(self) -> Path | None:
        return self.path.parent if self.path else None


class PresetRegistry:
    """Presets by slug, and the problems of files that did not load (``problems``)."""

    def __init__(self, entries: Iterable[PresetEntry] = ()) -> None:
        self.by_slug: dict[str, PresetEntry] = {}
        self.problems: list[str] = []
        for entry in entries:
            self.add(entry)

    @classmethod
    def discover(
        cls,
        paths: Sequence[str | os.PathLike] = (),
        *,
        builtin: bool = True,
        environ: Mapping[str, str] = os.environ,
    ) -> PresetRegistry:
        """The built-in presets, then ``STEERING_PRESETS``, then ``paths`` (later wins per slug)."""
        registry = cls()
        folder = builtin_dir() if builtin else None
        if folder is not None:
            registry.add_path(folder, origin="built-in")
        env_paths = [p for p in environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
        for path in [*env_paths, *paths]:
            registry.add_path(Path(path).expanduser())
        return registry

    def add(self, entry: PresetEntry) -> None:
        self.by_slug[entry.preset.slug] = entry

    def add_path(self, path: Path, origin: str = "user") -> None:
        """A folder's ``*.json`` files, or one file; bad files go to ``problems``."""
        if not path.exists():
            self.problems.append(f"{path}: no such file or folder")
            return
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            try:
                self.add(PresetEntry(read_preset_file(file), file, origin))
            except PresetError as e:
                self.problems += [f"{file}: {line}" for line in e.problems]

    @property
    def entries(self) -> list[PresetEntry]:
        return [self.by_slug[slug] for slug in sorted(self.by_slug)]

    def get(self, name: str) -> PresetEntry:
        """The preset called ``name`` (name or slug, any case), or a ``.json`` file's preset."""
        if name.endswith(".json") or os.sep in name:
            path = Path(name).expanduser()
            if path.exists():
                return PresetEntry(read_preset_file(path), path)
        key = slugify(name.removesuffix(".json"))
        for entry in self.by_slug.values():
            stem = slugify(entry.path.stem) if entry.path else None
            if key in (entry.preset.slug, stem):
                return entry
        raise SteeringError(self._unknown(name, key))

    def _unknown(self, name: str, key: str) -> str:
        slugs = sorted(self.by_slug)
        close = difflib.get_close_matches(key, slugs, n=3, cutoff=0.6)
        close += [s for s in slugs if key and key in s and s not in close][:5]
        message = f"no preset named {name!r}"
        if close:
            message += f"; did you mean: {', '.join(close)}"
        return message + f". Available: {', '.join(slugs) or 'none'}"
