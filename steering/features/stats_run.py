"""A whole ``sae-stats`` run: where files go, stop and resume, and what is written.

Files written to the output folder (by default the SAE's own folder of feature files,
``formats.feature_files.feature_files_folder``):

- ``feature_stats.safetensors``: ``max_activation``, ``frequency`` and ``mean_activation``
  (each (d_sae,) float32; see ``stats.FeatureStatistics``), with metadata strings: ``tokens``,
  ``sequences``, ``corpus``, ``model``, ``sae``, ``context_size``, ``top_k``, ``complete``
  (``"true"``: final statistics), ``corpus_finished`` (``"false"``: the corpus was cut at
  ``max_tokens``) and ``max_tokens`` (``"none"`` when not given);
- ``feature_contexts.json``: each feature's top activating contexts, in the layout
  ``load_sae`` reads (``formats._read_contexts``);
- while the corpus is not finished (Ctrl-C, ``max_tokens``): a checkpoint,
  ``feature_stats.checkpoint.safetensors`` (the running tensors) and
  ``feature_stats.checkpoint.json`` (sequences done, tokens counted, the run's settings).
  ``resume=True`` continues from it; the final statistics equal those of a run that never
  stopped. The checkpoint is removed once the corpus is done.

Reaching ``max_tokens`` is a deliberate sample: its statistics are final and written (and a
checkpoint is kept, so that ``resume`` can extend the sample). A Ctrl-C (``should_stop``) writes
the checkpoint only: the statistics files already there, which ``load_sae`` uses, stay as they
were until a resumed run finishes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ..errors import SteeringError
from ..formats import FEATURE_CONTEXTS_FILE, FEATURE_STATS_FILE
from ..formats.writer import save_feature_contexts, save_feature_stats
from ..models import SteerableModel
from ..sae import SAE
from .corpus import Corpus
from .stats import DEFAULT_TOP_K, FeatureStatistics, compute_feature_stats, contexts

CHECKPOINT_TENSORS = "feature_stats.checkpoint.safetensors"
CHECKPOINT_INFO = "feature_stats.checkpoint.json"
_STATE = ("fired", "total", "top_values", "top_windows")


@dataclass(frozen=True)
class StatsRun:
    """What a run did: the statistics, the files written, whether they are final
    (``complete``: the corpus ended or ``max_tokens`` was reached; False after a Ctrl-C, when
    only the checkpoint was written), whether the corpus ended (``corpus_finished``) and the
    wall seconds."""

    stats: FeatureStatistics
    files: tuple[Path, ...]
    complete: bool
    seconds: float
    tokens_this_run: int
    corpus_finished: bool = True

    @property
    def dead(self) -> int:
        """Features that never fired."""
        return int((self.stats.fired == 0).sum())

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_this_run / max(self.seconds, 1e-9)


def run_sae_stats(
    model: SteerableModel,
    sae: SAE,
    corpus: Corpus,
    out: Path,
    *,
    context_size: int,
    batch_size: int = 8,
    top_k: int = DEFAULT_TOP_K,
    max_tokens: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log_every: float | None = None,
) -> StatsRun:
    """Compute the statistics of ``sae`` over ``corpus`` and write them to ``out`` (see the
    module docstring). Raises ``SteeringError`` when statistics already there would be
    overwritten without ``overwrite`` (or a ``resume`` of them), when ``resume`` finds no
    checkpoint or one of other settings, or when no token could be counted."""
    settings = {
        "corpus": corpus.description,
        "model": model.name,
        "sae": sae.source,
        "d_sae": sae.d_sae,
        "hook": str(sae.hook),
        "context_size": context_size,
        "top_k": top_k,
        "batch_size": batch_size,
    }
    out = Path(out)
    check_output(out, resume=resume, overwrite=overwrite)
    start = load_checkpoint(out, settings) if resume else None
    began, tokens_before = time.perf_counter(), start.tokens if start else 0
    with stop_on_interrupt() as stopped:
        stats = compute_feature_stats(
            model,
            sae,
            corpus,
            context_size=context_size,
            batch_size=batch_size,
            top_k=top_k,
            max_tokens=max_tokens,
            start=start,
            progress=progress,
            log_every=log_every,
            should_stop=stopped.is_set,
        )
    seconds = time.perf_counter() - began
    if stats.tokens == 0:
        if max_tokens is None:
            raise SteeringError(f"no token was counted: the corpus ({corpus.description}) is empty")
        raise SteeringError(
            "no token was counted: the corpus is empty, or its first batch holds more than "
            f"--max-tokens {max_tokens} tokens (lower --batch-size)"
        )
    out.mkdir(parents=True, exist_ok=True)
    tokens_this_run = stats.tokens - tokens_before
    if stats.finished:
        for name in (CHECKPOINT_TENSORS, CHECKPOINT_INFO):
            (out / name).unlink(missing_ok=True)
    else:
        save_checkpoint(stats, out, settings)
        if stats.interrupted:  # the live statistics stay as they were
            files = (out / CHECKPOINT_TENSORS, out / CHECKPOINT_INFO)
            return StatsRun(stats, files, False, seconds, tokens_this_run, False)
    metadata = {k: str(v) for k, v in settings.items()}
    metadata |= {"tokens": str(stats.tokens), "sequences": str(stats.sequences)}
    metadata["complete"] = "true"
    metadata["corpus_finished"] = str(stats.finished).lower()
    metadata["max_tokens"] = "none" if max_tokens is None else str(max_tokens)
    files = (
        _umask_mode(
            save_feature_stats(
                out, stats.max_activation, stats.frequency, stats.mean_activation, metadata
            )
        ),
        save_feature_contexts(out, contexts(stats, model.tokenizer), indent=None),
    )
    return StatsRun(stats, files, True, seconds, tokens_this_run, stats.finished)


def check_output(out: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Raise ``SteeringError`` when ``out`` holds statistics that a run would replace without
    ``overwrite``, or ``resume`` finds no checkpoint there (cheap: run it before the model
    loads). Also when ``out`` or a folder above it is a file."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise SteeringError(
                    f"--out {out}: {folder} is a file, not a folder (give a folder; "
                    "it is created when missing)"
                )
            break
    if resume:
        if not (out / CHECKPOINT_INFO).is_file() or not (out / CHECKPOINT_TENSORS).is_file():
            raise SteeringError(f"--resume: no checkpoint in {out} ({CHECKPOINT_INFO})")
        return
    existing = [out / n for n in (FEATURE_STATS_FILE, FEATURE_CONTEXTS_FILE, CHECKPOINT_INFO)]
    existing = [p for p in existing if p.exists()]
    if existing and not overwrite:
        raise SteeringError(
            f"{existing[0]} exists: pass --overwrite to replace the statistics there, "
            "--resume to continue a stopped run, or --out for another folder"
        )


def save_checkpoint(stats: FeatureStatistics, folder: Path, settings: dict[str, Any]) -> None:
    """Write the running state (tensors, then the JSON that makes it valid) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: getattr(stats, n).contiguous() for n in _STATE}
    save_file(tensors, _partial(folder / CHECKPOINT_TENSORS))
    _umask_mode(_partial(folder / CHECKPOINT_TENSORS))
    os.replace(_partial(folder / CHECKPOINT_TENSORS), folder / CHECKPOINT_TENSORS)
    info = {"sequences": stats.sequences, "tokens": stats.tokens, "settings": settings}
    _partial(folder / CHECKPOINT_INFO).write_text(json.dumps(info, indent=1) + "\n")
    os.replace(_partial(folder / CHECKPOINT_INFO), folder / CHECKPOINT_INFO)


def load_checkpoint(folder: Path, settings: dict[str, Any]) -> FeatureStatistics:
    """The state saved in ``folder``. Raises ``SteeringError`` when there is none, or when it
    was saved with other settings (naming them)."""
    info_file = folder / CHECKPOINT_INFO
    if not info_file.is_file() or not (folder / CHECKPOINT_TENSORS).is_file():
        raise SteeringError(f"--resume: no checkpoint in {folder} ({CHECKPOINT_INFO})")
    try:
        info = json.loads(info_file.read_text())
        tensors = load_file(folder / CHECKPOINT_TENSORS)
        state = {n: tensors[n] for n in _STATE}
        sequences, tokens = int(info["sequences"]), int(info["tokens"])
        saved = dict(info["settings"])
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise SteeringError(f"{info_file}: not a readable checkpoint ({e})") from None
    changed = [f"{k}: {saved.get(k)!r} then, {v!r} now" for k, v in settings.items()
               if saved.get(k) != v]  # fmt: skip
    if changed:
        raise SteeringError(
            f"--resume: the checkpoint in {folder} was made with other settings ("
            + "; ".join(changed)
            + "); start again with --overwrite"
        )
    return FeatureStatistics(**state, sequences=sequences, tokens=tokens)


def _umask_mode(path: Path) -> Path:
    """Give ``path`` the mode a new file gets under the umask (as the JSON files have):
    safetensors writes its files readable by the owner only."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
    return path


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


@contextmanager
def stop_on_interrupt() -> Iterator[threading.Event]:
    """An event that the first Ctrl-C sets (the run stops after its batch and saves its
    state); a second Ctrl-C interrupts at once. Outside the main thread, Ctrl-C is left alone."""
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def handler(_signum: int, _frame: Any) -> None:
        if stopped.is_set():
            raise KeyboardInterrupt
        stopped.set()
        print("\nstopping after this batch to save a checkpoint (Ctrl-C again: quit now)",
              file=sys.stderr)  # fmt: skip

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGINT, previous)
