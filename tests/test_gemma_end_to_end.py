"""The researcher's loop on a Gemma Scope SAE, with the README's commands, in fresh processes:
``steering sae-stats`` over a text file, then a shipped Gemma preset, then a sweep of it.

The model is a random Gemma 2 with the real width cached as ``google/gemma-2-2b-it``, and the
SAE a random JumpReLU SAE in the Gemma Scope layout cached as
``google/gemma-scope-2b-pt-res/layer_10/width_16k/average_l0_77`` (tests/hub_cache.py): the
exact Hub ids the shipped preset names, found offline in a Hub cache the test writes.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_cache import gemma_scope_sae, tiny_gemma2_it
from safetensors import safe_open

MODEL = "google/gemma-2-2b-it"
PRESET = "gemma-2-2b-it-anger"  # clamps feature 12910 of the layer-10 SAE at 5x max activation
FEATURE = 12910
TEXT = """The fog rolled over the hills this morning and the city woke up slowly.

Anger is a strong feeling; people shout, slam doors, or go quiet when they are furious.

A good breakfast is eggs, toast and tea. Some people prefer fruit and yoghurt.

The bridge was painted red so that ships could see it through the fog.
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma")
    cache = root / "hub"
    tiny_gemma2_it(cache, layers=11)
    sae_ref = gemma_scope_sae(cache, layer=10, l0=77, fire=(FEATURE,))
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    env["STEERING_HOME"] = str(root / "steering-home")
    (root / "corpus.txt").write_text(TEXT)
    (root / "prompts.txt").write_text("Tell me about your day.\nWhat do you think of fog?\n")
    return root, sae_ref, env


def steering(env: dict, cwd: Path, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "steering", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_sae_stats_then_a_shipped_gemma_preset_then_a_sweep(world):
    root, sae_ref, env = world
    # Before: Gemma Scope ships no max activations, so the preset cannot run, and says why.
    refused = subprocess.run(
        [sys.executable, "-m", "steering", "generate", "Hi", "--model", MODEL, "--preset", PRESET],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 1
    assert f"steering sae-stats {sae_ref} --model MODEL --corpus TEXT" in refused.stderr

    out = steering(env, root, "sae-stats", sae_ref, "--model", MODEL, "--corpus", "corpus.txt")
    # a Hub SAE's statistics go to the user's folder, which load_sae reads
    stats_file = Path(env["STEERING_HOME"], "sae-files", sae_ref, "feature_stats.safetensors")
    assert str(stats_file) in out
    with safe_open(str(stats_file), "pt") as f:
        max_act = f.get_tensor("max_activation")
        frequency = f.get_tensor("frequency")
    assert max_act.shape == (16384,) and float(max_act[FEATURE]) > 0
    assert float(frequency[FEATURE]) > 0.2  # the fixture makes it fire often

    reply = json.loads(
        steering(
            env,
            root,
            "generate",
            "Tell me about your day.",
            "--model",
            MODEL,
            "--preset",
            PRESET,
            "--temperature",
            "1",
            "--seed",
            "3",
            "--max-new-tokens",
            "12",
            "--json",
        )
    )
    assert reply["steered"]["completion_tokens"] > 0
    assert reply["steered"]["text"] != reply["baseline"]["text"]

    steering(
        env,
        root,
        "sweep",
        "--model",
        MODEL,
        "--preset",
        PRESET,
        "--multipliers",
        "0,1,4",
        "--prompts",
        "prompts.txt",
        "--concept",
        "anger, angry, furious",
        "--max-new-tokens",
        "12",
        "--out",
        "sweep",
    )
    with open(root / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["multiplier"]) for r in rows] == [0.0, 1.0, 4.0]
    assert (root / "sweep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((root / "sweep" / "sweep.json").read_text())
    assert [p["multiplier"] for p in result["points"]] == [0.0, 1.0, 4.0]
    # a random model never speaks of anger: no multiplier gains, so none is suggested
    assert result["suggested"] is None and "no multiplier raises" in result["reason"]
