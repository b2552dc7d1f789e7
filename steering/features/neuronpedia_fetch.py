"""Download an SAE's Neuronpedia exports (explanations and features batches) from the public
bucket, for ``neuronpedia.import_neuronpedia`` to read.

The layout is the exports' (see ``neuronpedia``): ``EXPORTS_URL/MODEL_ID/SOURCE_ID/<kind>/
batch-N.jsonl.gz`` for N = 0, 1, ... until the bucket answers 404 (or 403, S3's answer for a
missing key when listing is denied). Batches are kept under ``dest/MODEL_ID/SOURCE_ID/<kind>/``;
one already there is not fetched again, so an interrupted fetch resumes. Bounds: a timeout per
request, at most ``ceil(d_sae / 1024)`` features batches and
``EXPLANATION_BATCHES_PER_FEATURE_BATCH`` times that of explanations (a feature may have
several), at most ``max_file_bytes`` per batch and ``max_fetch_bytes`` in all.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..limits import FEATURE_FILES, FeatureFileLimits
from .neuronpedia import (
    BATCH_ROWS,
    EXPLANATION_BATCHES_PER_FEATURE_BATCH,
    EXPORTS_URL,
    NeuronpediaError,
    NeuronpediaId,
)

if TYPE_CHECKING:
    import httpx

KINDS = ("explanations", "features")
CHUNK_BYTES = 1024 * 1024
MISSING = (403, 404)


class NeuronpediaUnreachable(NeuronpediaError):
    """The exports bucket could not be reached; the message says what to do by hand."""


def fetch_exports(
    np_id: NeuronpediaId,
    dest: Path,
    d_sae: int,
    *,
    sae_ref: str = "SAE",
    import_options: Sequence[str] = (),
    kinds: tuple[str, ...] = KINDS,
    client: httpx.Client | None = None,
    limits: FeatureFileLimits = FEATURE_FILES,
    base_url: str | None = None,
) -> Path:
    """Download the ``kinds`` batches of ``np_id`` into ``dest``; returns the folder that
    ``import_neuronpedia`` reads (``dest/MODEL_ID/SOURCE_ID``).

    Raises ``NeuronpediaUnreachable`` (naming what to download by hand and the import command,
    with ``sae_ref`` and ``import_options`` in it) when the bucket cannot be reached, and
    ``NeuronpediaError`` when it has no explanations for ``np_id`` or a bound is passed.
    """
    import httpx

    base_url = base_url or EXPORTS_URL  # read now: tests point it at a loopback server
    folder = dest / np_id.model / np_id.source
    own = client is None
    timeout = httpx.Timeout(limits.fetch_timeout_s)
    http = client or httpx.Client(timeout=timeout, follow_redirects=True)
    budget = [limits.max_fetch_bytes]
    feature_batches = max(1, math.ceil(d_sae / BATCH_ROWS))
    try:
        for kind in kinds:
            most = feature_batches
            if kind != "features":
                most *= EXPLANATION_BATCHES_PER_FEATURE_BATCH
            count = _fetch_kind(
                http,
                f"{base_url}/{np_id}/{kind}",
                folder / kind,
                min(most, limits.max_batches),
                budget,
                limits,
            )
            if count == 0 and kind == "explanations":
                raise NeuronpediaError(
                    f"Neuronpedia's exports have no explanations for {np_id} ({base_url}/{np_id}/"
                    f"{kind}/batch-0.jsonl.gz is missing); check the id on its page, "
                    f"https://www.neuronpedia.org/{np_id}"
                )
    except httpx.TransportError as e:
        options = [sae_ref, *import_options]
        raise NeuronpediaUnreachable(_by_hand(np_id, dest, options, base_url, e)) from e
    finally:
        if own:
            http.close()
    return folder


def _fetch_kind(
    http: httpx.Client,
    url: str,
    folder: Path,
    most: int,
    budget: list[int],
    limits: FeatureFileLimits,
) -> int:
    """Fetch ``url/batch-N.jsonl.gz`` for N from 0 until missing; the number of batches."""
    folder.mkdir(parents=True, exist_ok=True)
    with tqdm(desc=folder.name, unit="batch", leave=False) as progress:
        for number in range(most + 1):
            file = folder / f"batch-{number}.jsonl.gz"
            if file.is_file():  # fetched before: resume after it
                progress.update()
                continue
            if number == most:  # one more would be past the bound: is there one?
                if http.head(f"{url}/{file.name}").status_code in MISSING:
                    return most
                raise NeuronpediaError(
                    f"{url} has more batches than the {most} that a {folder.name} folder of "
                    "this SAE's width holds: is the Neuronpedia id another SAE's?"
                )
            if not _fetch_file(http, f"{url}/{file.name}", file, budget, limits):
                return number
            progress.update()
    return most


def _fetch_file(
    http: httpx.Client, url: str, file: Path, budget: list[int], limits: FeatureFileLimits
) -> bool:
    """Stream ``url`` into ``file`` (via a ``.part`` file); False when the bucket has no such
    batch."""
    part = file.with_name(file.name + ".part")
    with http.stream("GET", url) as response:
        if response.status_code in MISSING:
            return False
        if response.status_code != 200:
            raise NeuronpediaError(f"{url} answered HTTP {response.status_code}")
        size = 0
        with open(part, "wb") as out:
            for chunk in response.iter_bytes(CHUNK_BYTES):
                size += len(chunk)
                budget[0] -= len(chunk)
                if size > limits.max_file_bytes or budget[0] < 0:
                    out.close()
                    part.unlink(missing_ok=True)
                    raise NeuronpediaError(
                        f"{url} is over {limits.max_file_bytes:,} bytes, or the fetch over "
                        f"{limits.max_fetch_bytes:,} in all"
                    )
                out.write(chunk)
    os.replace(part, file)
    return True


def _by_hand(
    np_id: NeuronpediaId, dest: Path, options: list[str], base_url: str, e: Exception
) -> str:
    target = dest / np_id.model / np_id.source
    bucket = f"s3://neuronpedia-datasets/v1/{np_id}"
    return (
        f"cannot reach Neuronpedia's exports ({base_url}: {type(e).__name__}: {e}). On a "
        f"machine that can, download them: `aws s3 sync --no-sign-request {bucket}/explanations/ "
        f"explanations/` and the same for features/ (or fetch {base_url}/{np_id}/explanations/"
        f"batch-0.jsonl.gz, batch-1, ... one by one), copy them here into {target}, then run: "
        f"steering labels import {shlex.join([str(target), '--sae', *options])}"
    )
