"""Labels and max activations from Neuronpedia, for an SAE it hosts.

Neuronpedia names an SAE by a model id and a source id, written ``MODEL_ID/SOURCE_ID``
(``gemma-2-2b/20-gemmascope-res-16k``); SAELens configs record it as ``neuronpedia_id`` and the
Gemma Scope loader derives it (``SAE.neuronpedia_id``). ``--neuronpedia-id`` gives it otherwise.

Formats read (source of each layout):

- The exports (https://docs.neuronpedia.org/api-and-data/exports): a public bucket,
  ``https://neuronpedia-datasets.s3.us-east-1.amazonaws.com/v1/MODEL_ID/SOURCE_ID/`` with
  ``explanations/`` and ``features/`` folders of ``batch-N.jsonl.gz`` files (gzipped, one JSON
  object a line, N from 0; some sources add ``explanations-<model>/`` folders). The writer is
  ``utils/neuronpedia-utils/neuronpedia_utils/export-data.py`` in github.com/hijohnnylin/neuronpedia
  (commit 1a80fe9b): batches of 1024 rows of the ``Explanation`` table (``id, modelId, layer,
  index, authorId, description, embedding, typeName, explanationModelName, umap_*``) and of the
  ``Neuron`` table (``modelId, layer, index, maxActApprox, frac_nonzero, ...``). ``layer`` is the
  source id and ``index`` a string.
- A saved answer of the feature API, ``GET https://www.neuronpedia.org/api/feature/MODEL_ID/
  SOURCE_ID/INDEX``: one ``Neuron`` object (as above) with ``explanations: [{description, ...}]``.
- A file of rows as ``.jsonl``, ``.jsonl.gz``, ``.json`` (a list of rows, or one object), or a
  folder of them (the exports' layout; ``activations/`` folders are skipped, they carry no labels).

Several explanations of one feature: the first read wins, files taken in path order (a
folder's ``explanations/`` before ``explanations-<model>/``, batches by number), rows in file
order; empty descriptions are skipped. Labels are cleaned (control characters removed, spaces
collapsed) and cut to ``max_label_chars``.

Where the results go (``write_feature_files``): ``feature_labels.json`` (merged into the labels an
earlier import of the same SAE wrote, this import's winning for their indices), and, when the
features rows give ``maxActApprox`` for every feature, ``feature_stats.safetensors``
(``max_activation``, and ``frequency`` from ``frac_nonzero``) -- only where that file is absent or
was written by an earlier import, so statistics computed over a corpus (``steering sae-stats``) are
never replaced by Neuronpedia's approximations. ``neuronpedia_import.json`` records what the files
hold: the labels' origin (and earlier origins merged in), counts, and which files imports wrote
(size and modification time, to tell them from files edited since). An import that writes no file
leaves it as it was. Rows of this SAE with a value of the wrong type or range (a description that is
not a string, a negative ``maxActApprox``) have that value skipped and are counted.

Why not the ``neuronpedia`` package (PyPI): it wraps API calls that need an API key and does
not read the exports; reading gzipped JSON lines is the standard library's, and the download is
plain HTTP GETs (httpx, which the project already installs with gradio).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..errors import SteeringError
from ..formats.feature_files import feature_files_folder, user_folder
from ..formats.label_text import clean_label
from ..limits import FEATURE_FILES, FeatureFileLimits
from ..sae import SAE

EXPORTS_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com/v1"
FEATURE_API_URL = "https://www.neuronpedia.org/api/feature"
BATCH_ROWS = 1024  # rows per export batch (export-data.py FEATURES_EXPLANATIONS_BATCH_SIZE)
EXPLANATION_BATCHES_PER_FEATURE_BATCH = 4  # several explanations per feature: a bound, not a rule
LABELS_FILE = "feature_labels.json"
STATS_FILE = "feature_stats.safetensors"
RECORD_FILE = "neuronpedia_import.json"
MERGED_FROM = 20  # earlier origins a record names
SUFFIXES = (".jsonl.gz", ".jsonl", ".json")
SKIPPED_FOLDERS = {"activations"}
BATCH_NUMBER = re.compile(r"batch-(\d+)")


class NeuronpediaError(SteeringError):
    """A Neuronpedia file or id that cannot be used, or Neuronpedia that cannot be reached."""


@dataclass(frozen=True)
class NeuronpediaId:
    """``MODEL_ID/SOURCE_ID``, as Neuronpedia's URLs and export folders name an SAE."""

    model: str
    source: str

    @classmethod
    def parse(cls, text: str) -> NeuronpediaId:
        """``"gemma-2-2b/20-gemmascope-res-16k"`` -> NeuronpediaId; NeuronpediaError otherwise."""
        model, sep, source = text.strip().strip("/").partition("/")
        safe = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
        if not sep or not safe.fullmatch(model) or not safe.fullmatch(source):
            raise NeuronpediaError(
                f"Neuronpedia id {text!r} is not of the form MODEL_ID/SOURCE_ID (letters, digits, "
                "'.', '_', '-'), e.g. gemma-2-2b/20-gemmascope-res-16k"
            )
        return cls(model, source)

    def __str__(self) -> str:
        return f"{self.model}/{self.source}"


@dataclass
class NeuronpediaData:
    """What the rows of one SAE said: labels, ``maxActApprox`` and ``frac_nonzero`` by index."""

    labels: dict[int, str] = field(default_factory=dict)
    max_activation: dict[int, float] = field(default_factory=dict)
    frequency: dict[int, float] = field(default_factory=dict)
    explanations: int = 0  # explanation rows of this SAE read (several per feature possible)
    other_ids: Counter[str] = field(default_factory=Counter)  # rows of other SAEs, skipped
    files: int = 0
    bad_rows: int = 0  # rows of this SAE with a value of the wrong type or range, skipped
    first_bad: str = ""  # where the first of them is and which field: "FILE line N: field ..."


@dataclass(frozen=True)
class ImportResult:
    """What ``import_neuronpedia`` wrote: the folder, the labels read (``labels``) and how they
    merged into the file (``added``, ``updated``: new text for an index, ``kept``: unchanged, of
    ``labels_in_file``), whether max activations were written (and why not), and the rows
    skipped (of other SAEs; of this SAE with bad values, the first one named)."""

    folder: Path
    neuronpedia_id: str
    labels: int
    max_activations: int
    stats_written: bool
    stats_note: str
    other_ids: dict[str, int]
    added: int = 0
    updated: int = 0
    kept: int = 0
    labels_in_file: int = 0
    bad_rows: int = 0
    first_bad: str = ""


def sae_neuronpedia_id(sae: SAE, given: str | None = None) -> NeuronpediaId:
    """The id to match rows against: ``given`` (the user's word wins), else the SAE's own."""
    text = given or sae.neuronpedia_id
    if not text:
        raise NeuronpediaError(
            f"{sae.name} has no Neuronpedia id in its files; give it with --neuronpedia-id "
            "MODEL_ID/SOURCE_ID (the part of its Neuronpedia URL after neuronpedia.org/, e.g. "
            "gemma-2-2b/20-gemmascope-res-16k)"
        )
    return NeuronpediaId.parse(text)


# ---- reading ----


def read_neuronpedia(
    path: Path, expected: NeuronpediaId, d_sae: int, limits: FeatureFileLimits = FEATURE_FILES
) -> NeuronpediaData:
    """The labels and statistics of the SAE ``expected`` in the file or folder ``path``.

    Rows of other SAEs are counted and skipped; when no row is the expected SAE's, raises
    ``NeuronpediaError`` naming the ids found and the one expected. Also raises it for an index
    outside 0..d_sae-1, an unreadable or oversized file, or more than ``limits.max_rows`` rows.
    """
    data = NeuronpediaData()
    rows = 0
    files = data_files(path)
    for file in tqdm(files, desc="reading Neuronpedia's rows", unit="file", disable=len(files) < 2):
        data.files += 1
        for where, row in _rows(file, limits):
            rows += 1
            if rows > limits.max_rows:
                raise NeuronpediaError(f"{path}: more than {limits.max_rows:,} rows")
            _take(row, where, expected, d_sae, data, limits)
    if data.files == 0:
        raise NeuronpediaError(
            f"{path} holds no {', '.join(SUFFIXES)} file (expected Neuronpedia's exports, e.g. "
            "explanations/batch-0.jsonl.gz, or a saved feature API answer)"
        )
    if not (data.labels or data.max_activation or data.explanations):
        if data.bad_rows:
            raise NeuronpediaError(
                f"{path}: every row of Neuronpedia SAE {expected} has a bad value "
                f"({count(data.bad_rows, 'row')}; the first: {data.first_bad})"
            )
        found = ", ".join(f"{i} ({n} rows)" for i, n in data.other_ids.most_common(8)) or "none"
        raise NeuronpediaError(
            f"{path} has no rows of Neuronpedia SAE {expected}; the SAEs it has: {found}. If one "
            "of them is this SAE, pass --neuronpedia-id with it"
        )
    return data


def data_files(path: Path) -> list[Path]:
    """``path`` itself, or the data files below the folder ``path`` in reading order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise NeuronpediaError(f"{path} is not a file or folder")
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in SKIPPED_FOLDERS]
        found += [Path(root, f) for f in files if f.endswith(SUFFIXES)]
    return sorted(found, key=_reading_order)


def _reading_order(file: Path) -> tuple[tuple[str, ...], int, str]:
    number = BATCH_NUMBER.match(file.name)
    return file.parent.parts, int(number.group(1)) if number else -1, file.name


def _rows(file: Path, limits: FeatureFileLimits) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each row of ``file``; ``where`` names the file and line (or, in a
    ``.json`` list, the row)."""
    size = file.stat().st_size
    if size > limits.max_file_bytes:
        raise NeuronpediaError(f"{file} is {size:,} bytes; at most {limits.max_file_bytes:,}")
    try:
        if file.name.endswith(".json"):
            yield from _json_rows(file, limits)
            return
        opener = gzip.open if file.name.endswith(".gz") else open
        with opener(file, "rb") as stream:
            for number, line in enumerate(iter(lambda: stream.readline(limits.max_row_bytes), b"")):
                if not line.endswith(b"\n") and len(line) == limits.max_row_bytes:
                    raise NeuronpediaError(
                        f"{file}: line {number + 1} is over {limits.max_row_bytes:,} bytes"
                    )
                if line.strip():
                    where = f"{file} line {number + 1}"
                    yield where, _object(_json(line, file, number + 1), where)
    except (OSError, EOFError, UnicodeDecodeError, ValueError, RecursionError) as e:
        what = "nested too deep" if isinstance(e, RecursionError) else str(e)
        raise NeuronpediaError(f"{file} is not readable as Neuronpedia JSON lines: {what}") from e


def _json(line: bytes, file: Path, number: int) -> Any:
    """One JSON line, its errors naming the file's line (json's own say "line 1")."""
    try:
        return json.loads(line.rstrip(b"\r\n"))  # an error at its end: column, not "line 2"
    except json.JSONDecodeError as e:
        raise NeuronpediaError(
            f"{file} is not readable as Neuronpedia JSON lines: line {number}: {e.msg} "
            f"(column {e.colno})"
        ) from None


def _json_rows(file: Path, limits: FeatureFileLimits) -> Iterator[tuple[str, dict[str, Any]]]:
    if file.stat().st_size > limits.max_row_bytes * 4:
        raise NeuronpediaError(f"{file}: a .json file is read whole; use .jsonl for this size")
    data = json.loads(file.read_bytes())
    rows = data if isinstance(data, list) else [data]
    for number, row in enumerate(rows):
        where = f"{file} row {number + 1}" if isinstance(data, list) else str(file)
        yield where, _object(row, where)


def _object(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise NeuronpediaError(f"{where} is a {type(row).__name__}, not an object")
    return row


def _take(
    row: dict[str, Any],
    where: str,
    expected: NeuronpediaId,
    d_sae: int,
    data: NeuronpediaData,
    limits: FeatureFileLimits,
) -> None:
    """Add one row (an explanation, a feature, or a feature with its explanations); a value of
    the wrong type or range is skipped and counted (``data.bad_rows``)."""
    explanations = row.get("explanations")
    nested = explanations if isinstance(explanations, list) else []
    is_data = "description" in row or "maxActApprox" in row or nested
    if not is_data or "index" not in row:
        return  # model.jsonl, source.jsonl, ...: nothing about features
    row_id = f"{row.get('modelId')}/{row.get('layer')}"
    if row_id != str(expected):
        data.other_ids[row_id] += 1
        return
    index = _index(row["index"], d_sae, where)
    bad = []
    for explanation in [row, *nested]:
        if not isinstance(explanation, dict) or "description" not in explanation:
            if explanation is not row:
                bad.append(f"explanations: {_shown(explanation)}, not an object with a description")
            continue
        description = explanation["description"]
        if not isinstance(description, str):
            bad.append(f"description {_shown(description)}, not a string")
            continue
        data.explanations += 1
        label = clean_label(description, limits.max_label_chars)
        if label and index not in data.labels:
            data.labels[index] = label
    if "maxActApprox" in row:
        value = _number(row["maxActApprox"])
        if value is not None and value >= 0:
            data.max_activation[index] = value
        else:
            bad.append(f"maxActApprox {_shown(row['maxActApprox'])}, not a number >= 0")
    if "frac_nonzero" in row:
        fraction = _number(row["frac_nonzero"])
        if fraction is not None and 0 <= fraction <= 1:
            data.frequency[index] = fraction
        else:
            bad.append(f"frac_nonzero {_shown(row['frac_nonzero'])}, not a number in 0..1")
    if bad:
        data.bad_rows += 1
        data.first_bad = data.first_bad or f"{where}: {bad[0]}"


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _index(value: Any, d_sae: int, where: str) -> int:
    text = str(value).strip() if isinstance(value, (str, int)) else ""
    index = int(text) if text.isdecimal() and len(text) < 12 else -1
    if not 0 <= index < d_sae:
        raise NeuronpediaError(
            f"{where}: feature index {value!r} is outside this SAE's 0..{d_sae - 1} (is the file "
            "another width's?)"
        )
    return index


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# ---- writing ----


def import_neuronpedia(
    sae: SAE,
    path: Path,
    *,
    neuronpedia_id: str | None = None,
    out: Path | None = None,
    replace_labels: bool = False,
    origin: str | None = None,
) -> ImportResult:
    """Read Neuronpedia's rows for ``sae`` from ``path`` and write them as this project's
    feature files (module docstring) to ``out`` (default: ``feature_files_folder(sae.source)``).

    Raises ``NeuronpediaError`` as ``read_neuronpedia`` does, and when the folder already has a
    ``feature_labels.json`` that no import wrote and ``replace_labels`` is false.
    """
    expected = sae_neuronpedia_id(sae, neuronpedia_id)
    data = read_neuronpedia(path, expected, sae.d_sae)
    folder = out if out is not None else feature_files_folder(sae.source)
    return write_feature_files(
        folder, data, expected, sae.d_sae, origin or str(path), replace_labels=replace_labels
    )


def write_feature_files(
    folder: Path,
    data: NeuronpediaData,
    expected: NeuronpediaId,
    d_sae: int,
    origin: str,
    *,
    replace_labels: bool = False,
) -> ImportResult:
    """Write ``data`` into ``folder`` (module docstring); returns what was written.

    Labels merge into those an earlier import of the same Neuronpedia SAE wrote (this import's
    rows win for their indices) unless ``replace_labels``; a ``feature_labels.json`` that no
    import wrote is refused unless ``replace_labels``. An import that writes no file leaves the
    folder, and its ``neuronpedia_import.json``, as they were. Raises ``NeuronpediaError`` for
    those refusals and when ``folder`` is an existing file.
    """
    if folder.exists() and not folder.is_dir():
        raise NeuronpediaError(f"--out {folder} is a file; give a folder (new or existing)")
    record = read_import_record(folder) if folder.is_dir() else None
    record = record or {}
    labels_file, stats_file = folder / LABELS_FILE, folder / STATS_FILE
    wrote = record.get("wrote", {})
    wrote = wrote if isinstance(wrote, dict) else {}
    ours = _unchanged(labels_file, wrote.get(LABELS_FILE))
    if data.labels and labels_file.is_file() and not (replace_labels or ours):
        raise NeuronpediaError(
            f"{labels_file} exists and no Neuronpedia import wrote it; pass --replace to "
            "replace those labels, or --out another folder"
        )
    written: dict[str, Any] = {}
    earlier: dict[int, str] = {}
    if (
        data.labels
        and ours
        and not replace_labels
        and record.get("neuronpedia_id") == str(expected)
    ):
        earlier = _read_own_labels(labels_file)
    merged = earlier | data.labels
    changed = sum(1 for i in data.labels.keys() & earlier.keys() if earlier[i] != data.labels[i])
    if data.labels:
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({str(i): merged[i] for i in sorted(merged)}, indent=0)
        _write_atomic(labels_file, text.encode("utf-8"))
        written[LABELS_FILE] = _stamp(labels_file)
    covered = len(data.max_activation)
    if covered < d_sae:
        note = (
            f"max activations known for {covered:,} of {count(d_sae, 'feature')}: not written "
            "(import every features/ batch to use them)"
        )
    elif stats_file.is_file() and not _unchanged(stats_file, wrote.get(STATS_FILE)):
        note = f"{STATS_FILE} exists (computed statistics): kept, Neuronpedia's not written"
    else:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        stats = {"max_activation": _dense(data.max_activation, d_sae)}
        if len(data.frequency) == d_sae:
            stats["frequency"] = _dense(data.frequency, d_sae)
        tmp = stats_file.with_name(stats_file.name + ".part")
        save_file(stats, tmp, metadata={"source": f"neuronpedia {expected} maxActApprox"})
        os.replace(tmp, stats_file)
        written[STATS_FILE] = _stamp(stats_file)
        note = f"max activations of all {d_sae:,} features written (Neuronpedia's maxActApprox)"
    result = ImportResult(
        folder,
        str(expected),
        len(data.labels),
        covered,
        STATS_FILE in written,
        note,
        dict(data.other_ids),
        added=len(data.labels.keys() - earlier.keys()),
        updated=changed,
        kept=len(merged) - len(data.labels.keys() - earlier.keys()) - changed,
        labels_in_file=len(merged),
        bad_rows=data.bad_rows,
        first_bad=data.first_bad,
    )
    if written:  # the record describes what the files hold: untouched files keep their entries
        _write_atomic(
            folder / RECORD_FILE,
            json.dumps(
                _new_record(
                    folder, record, written, len(merged), covered, expected, origin, bool(earlier)
                ),
                indent=1,
            ).encode("utf-8"),
        )
    return result


def _new_record(
    folder: Path,
    record: dict[str, Any],
    written: dict[str, Any],
    labels: int,
    max_activations: int,
    expected: NeuronpediaId,
    origin: str,
    merged: bool,
) -> dict[str, Any]:
    """The import record after an import that wrote ``written``: its own entries, and the
    earlier record's entries for the files this import left alone that are still as the
    earlier import wrote them (so the record keeps describing what the files hold)."""
    earlier = record.get("wrote")
    kept = {
        name: stamp
        for name, stamp in (earlier.items() if isinstance(earlier, dict) else ())
        if name in (LABELS_FILE, STATS_FILE) and name not in written
        if _unchanged(folder / name, stamp)
    }
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    new: dict[str, Any] = {"neuronpedia_id": str(expected), "from": origin, "imported": now}
    if LABELS_FILE in written:
        new["labels"] = labels
        if merged and isinstance(record.get("from"), str):  # earlier labels kept in the file
            older = record.get("merged_from")
            older = [f for f in older if isinstance(f, str)] if isinstance(older, list) else []
            new["merged_from"] = [record["from"], *older][:MERGED_FROM]
    elif LABELS_FILE in kept:  # the labels are the earlier import's: so is their origin
        new |= {k: record[k] for k in ("neuronpedia_id", "from", "imported") if k in record}
        new["labels"] = record.get("labels", 0)
    else:
        new["labels"] = 0
    new["max_activations"] = (
        max_activations
        if STATS_FILE in written
        else record.get("max_activations", 0)
        if STATS_FILE in kept
        else 0
    )
    new["wrote"] = kept | written
    return new


def _read_own_labels(file: Path) -> dict[int, str]:
    """The labels an earlier import wrote to ``file`` (its own layout: index -> label)."""
    try:
        labels = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise NeuronpediaError(f"{file} is not readable JSON ({e}); pass --replace") from e
    if not isinstance(labels, dict):
        raise NeuronpediaError(f"{file} is not an object of index -> label; pass --replace")
    return {int(k): v for k, v in labels.items() if k.isdecimal() and isinstance(v, str)}


def count(n: int, word: str) -> str:
    """``"1 label"``, ``"1,022 labels"``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _dense(values: dict[int, float], d_sae: int) -> torch.Tensor:
    tensor = torch.zeros(d_sae, dtype=torch.float32)
    index = torch.tensor(list(values), dtype=torch.long)
    tensor[index] = torch.tensor(list(values.values()), dtype=torch.float32)
    return tensor


def _stamp(file: Path) -> dict[str, int]:
    stat = file.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _unchanged(file: Path, stamp: Any) -> bool:
    """Whether ``file`` is still what an import wrote (same size and modification time)."""
    return isinstance(stamp, dict) and file.is_file() and stamp == _stamp(file)


def _write_atomic(file: Path, data: bytes) -> None:
    tmp = file.with_name(file.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, file)


def read_import_record(folder: Path) -> dict[str, Any] | None:
    """The record an import left in ``folder`` (``neuronpedia_import.json``), if any."""
    file = folder / RECORD_FILE
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def import_record_of(source: str) -> dict[str, Any] | None:
    """The import record of the SAE loaded from ``source``: its user folder's (a Hub or shipped
    SAE), else its own folder's."""
    own = user_folder(source)
    if own is not None:
        return read_import_record(own)
    path = Path(source).expanduser()
    return read_import_record(path if path.is_dir() else path.parent)
