"""Presets: named, shareable steerings as versioned JSON files.

- ``schema``: the file format (pydantic, strict) and its safe parser;
- ``library``: finding preset files (built-in, ``STEERING_PRESETS``, ``--presets``);
- ``saes``: loading and checking the SAEs a preset refers to;
- ``to_plan``: fitting presets to a model and composing them into one steering plan.

Importing this package (and ``schema``, ``library``) does not import torch.
"""

from ..errors import PresetError
from .library import PresetEntry, PresetRegistry, read_preset_file
from .schema import FORMAT_VERSION, Preset, dump_preset, json_schema, parse_preset, slugify

__all__ = [
    "FORMAT_VERSION",
    "Preset",
    "PresetEntry",
    "PresetError",
    "PresetRegistry",
    "dump_preset",
    "json_schema",
    "parse_preset",
    "read_preset_file",
    "slugify",
]
