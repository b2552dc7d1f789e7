"""The command line: generate with features, sae-info, and errors without tracebacks."""

from __future__ import annotations

import json

import pytest
import torch
from random_saes import random_sae
from tiny_models import HIDDEN, tiny_model, tiny_tokenizer

from steering import load_sae
from steering.cli import main
from steering.formats.writer import save_sae


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_model("llama").save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    sae = random_sae(HIDDEN, 32, layer=1, activation="jumprelu")
    sae.labels = {3: "bridges"}
    sae.frequency = torch.rand(32)
    save_sae(sae, root / "sae")
    return root, sae


def test_saved_sae_round_trips(files):
    root, sae = files
    loaded = load_sae(root / "sae")
    assert loaded.format == "saelens" and loaded.hook == sae.hook
    assert loaded.labels == {3: "bridges"} and loaded.activation == "jumprelu"
    torch.testing.assert_close(loaded.max_activation, sae.max_activation)
    torch.testing.assert_close(loaded.frequency, sae.frequency, rtol=1e-5, atol=1e-9)
    x = torch.randn(5, HIDDEN)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))


def test_generate_json_steered_and_baseline(files, capsys):
    root, _ = files
    args = [
        "generate",
        "--model",
        str(root / "model"),
        "--sae",
        str(root / "sae"),
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--json",
        "hello how are you",
    ]
    assert main([*args, "--feature", "3=30"]) == 0
    steered = json.loads(capsys.readouterr().out)
    assert main([*args, "--feature", "3=0.5x", "--feature", "0:5:add=0"]) == 0
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    mild, unsteered = json.loads(out[0]), json.loads(out[1])
    assert steered["baseline"] == unsteered["baseline"] == unsteered["steered"]
    assert steered["steered"]["text"] != steered["baseline"]["text"]
    assert steered["steered"]["completion_tokens"] == 8
    assert mild["baseline"] == unsteered["baseline"]


def test_generate_plain_output(files, capsys):
    root, _ = files
    assert (
        main(
            [
                "generate",
                "--model",
                str(root / "model"),
                "--temperature",
                "0",
                "--max-new-tokens",
                "4",
                "hello",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("--- steered (length, 4 tokens)") and "--- baseline" in out


@pytest.mark.parametrize(
    "spec, message",
    [
        ("99=1", "feature index 99 is out of range"),
        ("3=abc", "value 'abc' is not a number"),
        ("1:3=2", "names SAE 1; valid: 0..0"),
        ("x=1", "not of the form"),
        ("3=nan", "not finite"),
    ],
)
def test_bad_feature_specs_are_clear_errors(files, capsys, spec, message):
    root, _ = files
    code = main(
        [
            "generate",
            "--model",
            str(root / "model"),
            "--sae",
            str(root / "sae"),
            "--feature",
            spec,
            "hello",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err


def test_sae_info(files, capsys):
    root, sae = files
    assert main(["sae-info", str(root / "sae"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {
        "source": str(root / "sae"),
        "format": "saelens",
        "hook": "blocks.1.hook_resid_post",
        "d_in": HIDDEN,
        "d_sae": 32,
        "activation": "jumprelu",
        "normalization": "none",
        "model": None,
        "neuronpedia_id": None,
        "max_activation": True,
        "frequency": True,
        "labels": 1,
        "labels_from": "feature_labels.json",
        "max_activation_from": "feature_stats.safetensors",
        "max_activation_median": round(float(sae.max_activation.median()), 4),
        "frequency_median": float(f"{float(sae.frequency.median()):.4g}"),
        "dead_features": 0,
        "contexts": 0,
        "stats_tokens": None,  # the fixture's file records no sae-stats run
        "stats_corpus": None,
        "stats_complete": None,
        "stats_corpus_finished": None,
        "stats_max_tokens": None,
    }


def test_unknown_sae(tmp_path, capsys):
    assert main(["sae-info", str(tmp_path)]) == 1
    assert "is not an SAE folder of a known format" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["presets", "list"],
        ["presets", "show", "demo-golden-gate-bridge"],
        ["presets", "validate", "presets"],
        ["presets", "schema"],
        ["serve", "--help"],
    ],
)
def test_light_commands_import_neither_torch_nor_gradio(argv):
    """These answer at once: the heavy libraries are imported only by commands that use them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from steering.cli import main\n"
        "try:\n"
        f"    status = main({argv!r})\n"
        "except SystemExit as e:\n"
        "    status = e.code\n"
        "heavy = [m for m in ('torch', 'gradio', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy, 'STATUS', status)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.stdout.strip().splitlines()[-1] == "HEAVY [] STATUS 0", out.stderr[-2000:]


def test_the_demo_sae_loads_by_its_public_name(capsys):
    assert main(["sae-info", "demo-sae", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["source"] == "demo-sae" and facts["hook"] == "blocks.1.hook_resid_post"
    assert load_sae("demo-sae").d_sae == facts["d_sae"]
