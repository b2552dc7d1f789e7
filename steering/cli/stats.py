"""``steering sae-stats``: an SAE's feature statistics and top contexts over a text corpus."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .serve import add_model_arguments, load_model_from_args

DEFAULT_CONTEXT = 1024  # tokens per sequence when neither the SAE nor the flag says
DEMO_SAE = "demo-sae"
LOG_EVERY_S = 30.0  # seconds between progress lines when stderr is not a terminal
INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C (128 + SIGINT)


def add_sae_stats_command(subparsers: Any) -> None:
    """Add ``sae-stats`` to the ``steering`` command line."""
    p = subparsers.add_parser(
        "sae-stats",
        help="compute an SAE's feature statistics (max activation, firing frequency, mean when "
        "active, top contexts) over a text corpus",
        description="Run a model over a corpus and write feature_stats.safetensors and "
        "feature_contexts.json next to the SAE (a Hub or shipped SAE: the user's folder under "
        "$STEERING_HOME), or to --out. Ctrl-C stops after the current batch and saves a "
        "checkpoint; --resume continues it. With no --model: the demo model, SAE and corpus.",
    )
    p.add_argument("sae", nargs="?", help="SAE folder, file or Hub reference (default: demo-sae)")
    add_model_arguments(p)
    p.add_argument(
        "--corpus",
        help="a .txt file (one document per paragraph), a .jsonl file, a folder of them, a "
        "Hugging Face dataset id, or 'demo' (default with the demo model)",
    )
    p.add_argument("--dataset-split", default="train", help="dataset split (default train)")
    p.add_argument("--text-field", default="text", help="JSONL/dataset text field (default text)")
    p.add_argument(
        "--context-size",
        type=int,
        help="tokens per sequence (default: the SAE's context_size, else 1024; at most the "
        "model's context)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument(
        "--max-tokens",
        type=int,
        help="count at most this many tokens (whole batches): the statistics of this sample "
        "are final; --resume with a larger value extends it",
    )
    p.add_argument(
        "--top-k", type=int, default=10, help="top contexts kept per feature (1..20, default 10)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: the SAE's feature files)")
    p.add_argument("--layer", type=int, help="the SAE's layer, for files that do not record it")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace statistics already there")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (a bar on a terminal, else a line every 30 s) and no loading bars",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_sae_stats)


def cmd_sae_stats(args: argparse.Namespace) -> int:
    """Load, run (``features.stats_run.run_sae_stats``), print where the files went."""
    from ..errors import SteeringError
    from ..features.corpus import DEMO, open_corpus
    from ..features.stats_run import check_output, run_sae_stats
    from ..formats import load_sae
    from ..formats.feature_files import feature_files_folder, user_folder
    from ..hub import resolve_sae_path

    if not args.model:  # the shipped demo world
        from ..demo import MODEL_DIR

        args.model = str(MODEL_DIR)
        args.sae = args.sae or DEMO_SAE
        args.corpus = args.corpus or DEMO
    if not args.sae:
        raise SteeringError("sae-stats: give the SAE (a folder, file or Hub reference)")
    if not args.corpus:
        raise SteeringError("sae-stats: give the corpus with --corpus (a file, folder or dataset)")
    for flag, least in (("context_size", 2), ("batch_size", 1), ("max_tokens", 1)):
        value = getattr(args, flag)
        if value is not None and value < least:
            raise SteeringError(f"--{flag.replace('_', '-')} {value} must be {least} or more")
    corpus = open_corpus(args.corpus, text_field=args.text_field, split=args.dataset_split)
    sae = load_sae(args.sae, layer=args.layer)
    path = resolve_sae_path(args.sae)
    out = args.out or _default_out(args.sae, path, feature_files_folder, user_folder)
    check_output(out, resume=args.resume, overwrite=args.overwrite)  # before the model loads
    with _no_loading_bars(args.quiet):
        model = load_model_from_args(args)
    recorded = recorded_context_size(path)
    context = args.context_size or recorded or DEFAULT_CONTEXT
    if model.context_length is not None and context > model.context_length:
        if args.context_size or recorded:  # the default is quietly the model's context at most
            asked = "--context-size" if args.context_size else "the SAE's context_size"
            print(
                f"{asked} {context} is more than the model's context: using "
                f"{model.context_length} tokens",
                file=sys.stderr,
            )
        context = model.context_length
    run = run_sae_stats(
        model,
        sae,
        corpus,
        out,
        context_size=context,
        batch_size=args.batch_size,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet and sys.stderr.isatty(),
        log_every=None if args.quiet else LOG_EVERY_S,  # a line in a log file when no terminal
    )
    summary = {
        "out": str(out),
        "files": [str(f) for f in run.files],
        "complete": run.complete,
        "corpus_finished": run.corpus_finished,
        "tokens": run.stats.tokens,
        "sequences": run.stats.sequences,
        "dead_features": run.dead,
        "d_sae": sae.d_sae,
        "tokens_per_s": round(run.tokens_per_s, 1),
        "context_size": context,
    }
    code = 0 if run.complete else INTERRUPTED
    resume = f"stopped: the checkpoint is saved; continue with --resume --out {out}"
    if args.json:
        print(json.dumps(summary))
        if not run.complete:
            print(resume, file=sys.stderr)
        return code
    for f in run.files:
        print(f"wrote {f}")
    if not run.complete:
        print(f"{_count(run.stats.tokens, 'token')} in {_count(run.stats.sequences, 'sequence')}")
        print(f"{resume} (the statistics files there were not changed)", file=sys.stderr)
        return code
    state = "done" if run.corpus_finished else f"cut at --max-tokens {args.max_tokens}"
    print(
        f"{_count(run.stats.tokens, 'token')} in {_count(run.stats.sequences, 'sequence')} "
        f"({state}); {run.dead} of {sae.d_sae} features never fired; "
        f"{run.tokens_per_s:.0f} tokens/s"
    )
    return code


@contextmanager
def _no_loading_bars(quiet: bool) -> Iterator[None]:
    """With ``quiet``: no "Loading weights" or download bars of transformers and the Hub
    while the model loads (their switches are global: set back afterwards)."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    bars, hub_bars = (
        hf_logging.is_progress_bar_enabled(),
        not hub_utils.are_progress_bars_disabled(),
    )
    if quiet:
        hf_logging.disable_progress_bar()
        hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if quiet and bars:
            hf_logging.enable_progress_bar()
        if quiet and hub_bars:
            hub_utils.enable_progress_bars()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _default_out(source: str, path: Path, feature_files_folder: Any, user_folder: Any) -> Path:
    """The SAE's folder of feature files; the shipped demo SAE's own files are never written
    over (given by its path, its files go to the user's folder as for ``demo-sae``)."""
    from ..demo import SAE_DIR

    if path.resolve() == SAE_DIR.resolve():
        return Path(user_folder(DEMO_SAE))
    return Path(feature_files_folder(source, path))


def recorded_context_size(path: Path) -> int | None:
    """The ``context_size`` an SAELens ``cfg.json`` records (top level or in ``metadata``)."""
    cfg_file = (path if path.is_dir() else path.parent) / "cfg.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    value = cfg.get("context_size", metadata.get("context_size"))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else None
