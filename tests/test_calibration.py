"""Strength calibration by a sweep: on the demo world it reproduces docs/demo-world.md's
Golden Gate curve; its rows are the replies of their strengths alone; the suggestion, the
reports and the preset it writes are exact; bad input is refused by name."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from steering.cli import main
from steering.cli import sweep as cli_sweep
from steering.demo import load_demo
from steering.demo.corpus import held_out_prompts
from steering.demo.evaluate import generate, reply_loss
from steering.demo.plot import draw_curve
from steering.errors import PresetError, RequestError, SteeringError
from steering.features import sweep as lib
from steering.features.calibrated_preset import (
    describe_calibration,
    preset_at_scale,
    preset_for_plan,
)
from steering.features.report import format_table, plot_sweep, to_csv, to_json
from steering.features.sweep import (
    Concept,
    SweepPoint,
    SweepResult,
    calibrate,
    check_multipliers,
    suggest,
    sweep_plans,
)
from steering.plan import clamp
from steering.presets.library import PresetRegistry, read_preset_file
from steering.presets.saes import SAEResolver
from steering.presets.to_plan import plan_for_presets

DOCS = Path(__file__).resolve().parents[1] / "docs"
METRICS = json.loads((DOCS / "demo-world-metrics.json").read_text())
CURVE = {p["multiplier"]: p for p in METRICS["bridge_curve"]}
MULTIPLIERS = [1.0, 2.0, 4.0, 16.0]  # with 0: five of the docs' thirteen points
BRIDGE = "bridge|golden gate"  # corpus.mentions(text, BRIDGE_WORDS): substrings, any case


@pytest.fixture(scope="module")
def demo():
    return load_demo()


@pytest.fixture(scope="module")
def unit_plan(demo):
    """Features 660 and 704 clamped at 1 x max activation on prompt tokens: the docs' curve's
    steering at multiplier 1."""
    _, sae = demo
    return clamp(sae, 660, 1.0, unit="max_act", positions="prompt") + clamp(
        sae, 704, 1.0, unit="max_act", positions="prompt"
    )


@pytest.fixture(scope="module")
def curve(demo, unit_plan):
    model, _ = demo
    return calibrate(
        model,
        unit_plan,
        MULTIPLIERS,
        held_out_prompts(60, "test"),
        concept=Concept.regex(BRIDGE),
        unit="x max activation",
    )


def test_the_sweep_reproduces_the_docs_golden_gate_curve(curve):
    assert [p.multiplier for p in curve.points] == [0.0, *MULTIPLIERS]
    for p in curve.points:
        docs = CURVE[p.multiplier]
        assert p.replies == 60
        assert abs(p.concept_rate - docs["bridge"]) <= 0.05, p
        assert abs(p.well_formed - docs["well_formed"]) <= 0.05, p
    assert abs(curve.baseline.fluency - METRICS["baseline"]["loss"]) < 0.01
    # more steering, less fluent replies: the unsteered model finds the bridge out of place
    fluency = [p.fluency for p in curve.points]
    assert fluency == sorted(fluency) and fluency[-1] - fluency[0] > 0.2
    # 2x is where the bridge comes in every time: the shipped preset's strength
    assert curve.suggested == 2.0 and "highest concept rate (100%" in curve.reason


def test_each_row_is_the_reply_of_its_strength_alone(demo, unit_plan, curve):
    model, _ = demo
    prompts = held_out_prompts(60, "test")[:6]
    for m in (0.0, 2.0):
        alone = generate(model, prompts, unit_plan.scaled(m) if m else None)
        rows = [r for r in curve.replies if r.multiplier == m and r.prompt < 6]
        assert [r.tokens for r in rows] == [r.tokens for r in alone]
        assert [r.text for r in rows] == [r.text for r in alone]
        assert [r.finish_reason for r in rows] == [r.finish_reason for r in alone]
    # fluency is reply_loss: the mean per-token loss under the unsteered model
    base = generate(model, held_out_prompts(60, "test"), None)
    assert curve.baseline.fluency == pytest.approx(reply_loss(model, base), abs=1e-4)


def points(*rows: tuple[float, float, float, float]) -> list[SweepPoint]:
    return [SweepPoint(m, c, f, w, 10) for m, c, f, w in rows]


def test_the_suggestion_is_the_best_concept_rate_within_the_bounds():
    base = (0.0, 0.0, 1.0, 1.0)
    # (multiplier, concept rate, fluency, well-formed)
    ps = points(base, (1, 0.5, 1.5, 1.0), (2, 0.9, 2.0, 0.9), (4, 1.0, 2.01, 1.0), (8, 1.0, 3, 0))
    assert suggest(ps, 1.0, 0.1)[0] == 2  # 4 is over the fluency bound by 0.01, 8 ill-formed
    assert suggest(ps, 1.01, 0.1)[0] == 4
    assert suggest(ps, 1.0, 0.05)[0] == 1  # 2 drops 10% of well-formed replies
    ties = points(base, (-2, 0.8, 1.2, 1.0), (3, 0.8, 1.1, 1.0), (1.5, 0.8, 1.9, 1.0))
    assert suggest(ties)[0] == 1.5  # equal concept rates: the smallest |multiplier|
    none, why = suggest(points(base, (1, 0.9, 2.5, 1.0)), 1.0, 0.1)
    assert none is None
    assert why == (
        "no multiplier keeps fluency <= 2.000 nats/token (unsteered 1.000 + 1) and "
        "well-formed >= 90% (unsteered 100% - 10%)"
    )
    with pytest.raises(Exception, match="need multiplier 0"):
        suggest(points((1, 0.5, 1.0, 1.0)))


def result() -> SweepResult:
    ps = points((0.0, 0.25, 0.5, 1.0), (2.0, 0.75, 1.25, 0.5))
    return SweepResult(
        tuple(ps), 2.0, "why", "x max activation", "/b/i", 1.0, 0.5, {"prompts": 10, "seed": 3}
    )


def test_the_reports_hold_every_point():
    r = result()
    assert to_csv(r) == (
        "multiplier,concept_rate,fluency,well_formed,replies\n"
        "0.0,0.25,0.5,1.0,10\n"
        "2.0,0.75,1.25,0.5,10\n"
    )
    data = to_json(r)
    assert data["points"][1] == {
        "multiplier": 2.0,
        "concept_rate": 0.75,
        "fluency": 1.25,
        "well_formed": 0.5,
        "replies": 10,
    }
    assert (data["suggested"], data["unit"], data["prompts"], data["seed"]) == (
        2.0,
        "x max activation",
        10,
        3,
    )
    table = format_table(r).splitlines()
    assert table[0] == "multiplier: x max activation; concept: /b/i; 10 prompts"
    assert table[3].split() == ["2", "75.0%", "1.250", "nat/t", "50.0%", "<-", "suggested"]
    assert table[-1] == "suggested: 2: why"


def test_the_charts_are_pngs(tmp_path, curve):
    plot_sweep(curve, tmp_path / "sweep.png")
    draw_curve(METRICS["bridge_curve"], tmp_path / "curve.png")
    for name in ("sweep.png", "curve.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (700, 400)


def test_concepts_match_whole_words_or_a_regex():
    words = Concept.keywords("gate, golden gate ,bridge")
    assert words.matches("The Golden  Gate!") and words.matches("a BRIDGE.")
    assert not words.matches("gates and bridges") and not words.matches("tailgate")
    regex = Concept.regex(r"bridg(e|es)\b")
    assert regex.matches("Bridges") and not regex.matches("bridged")
    with pytest.raises(RequestError, match=r"concept: '\(bridge' is not a valid regular"):
        Concept.regex("(bridge")
    with pytest.raises(RequestError, match="concept: give 1..100 comma-separated keywords"):
        Concept.keywords(" , ")


def test_bad_multipliers_are_named(unit_plan):
    assert check_multipliers([2, 1, 2, 0]) == (0.0, 2.0, 1.0)
    cases = [
        ([math.nan], "multipliers.0: nan is not a finite number"),
        ([1, math.inf], "multipliers.1: inf is not a finite number"),
        ([True], "multipliers.0: True is not a finite number"),
        ([0], "give at least one multiplier other than 0"),
        (list(range(1, 33)), "33 multipliers (0 included), at most 32"),
    ]
    for values, words in cases:
        with pytest.raises(RequestError, match=re.escape(words)):
            check_multipliers(values)
    words = "multiplier -2000: feature 660 at -2000 x max activation is over the limit of 1000"
    with pytest.raises(RequestError, match=words):
        sweep_plans(unit_plan, [0, 1, -2000])


def test_the_suggestion_becomes_a_preset(tmp_path, demo, unit_plan, curve):
    model, sae = demo
    written = preset_for_plan(
        unit_plan.scaled(curve.suggested),
        name="Golden Gate (calibrated)",
        model_id="steering/demo/files/model",
        sae_refs=[(sae, "demo-sae")],
    )
    path = cli_sweep.write_preset(written, tmp_path / "gg.json")
    loaded = read_preset_file(path)
    assert [(e.feature, e.value, e.unit, e.positions) for e in loaded.edits] == [
        (660, 2.0, "max_act", "prompt"),
        (704, 2.0, "max_act", "prompt"),
    ]
    assert loaded.edits[0].label == sae.labels[660] and loaded.verified
    plan, _ = plan_for_presets(
        [PresetRegistry.discover().get(str(path))], model, SAEResolver(device=model.device)
    )
    assert [e.raw_value for e in plan.edits] == [e.raw_value for e in unit_plan.scaled(2.0).edits]
    shipped = PresetRegistry.discover().get("demo-golden-gate-bridge").preset
    half = preset_at_scale(shipped, 0.5, "calibrated", name="Golden Gate, half")
    assert (half.scale, half.name, half.edits) == (0.5, "Golden Gate, half", shipped.edits)
    assert half.description.endswith(" calibrated")
    with pytest.raises(PresetError, match="scale"):
        preset_at_scale(shipped, 1000.0)


def test_the_command_line_sweeps_a_preset(tmp_path, capsys, curve):
    out, preset = tmp_path / "out", tmp_path / "gg-half.json"
    args = [
        "sweep",
        "--preset",
        "demo-golden-gate-bridge",
        "--multipliers",
        "0.5,1",
        "--regex",
        BRIDGE,
        "--fluency-bound",
        "0.25",
        "--json",
        "--out",
        str(out),
        "--write-preset",
        str(preset),
    ]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    # the preset's values are 2 x max activation: scale 0.5 and 1 are the curve's 1 and 2
    by_m = {p.multiplier: p for p in curve.points}
    assert [p["multiplier"] for p in data["points"]] == [0.0, 0.5, 1.0]
    for p, m in zip(data["points"], (0.0, 1.0, 2.0)):
        assert (p["concept_rate"], p["well_formed"]) == (by_m[m].concept_rate, by_m[m].well_formed)
        assert p["fluency"] == pytest.approx(by_m[m].fluency, abs=1e-4)
    # 1 loses 0.27 nats/token over the unsteered replies, past the bound of 0.25
    assert data["suggested"] == 0.5 and data["prompts"] == 60
    assert data["unit"] == "x the strengths of preset 'Golden Gate Bridge'"
    rows = list(csv.DictReader(io.StringIO((out / "sweep.csv").read_text())))
    assert [float(r["concept_rate"]) for r in rows] == [p["concept_rate"] for p in data["points"]]
    assert len(json.loads((out / "sweep.json").read_text())["replies"]) == 180
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    written = read_preset_file(preset)
    assert (written.name, written.scale, written.verified) == ("Golden Gate Bridge", 0.5, True)


def test_the_command_line_sweeps_features_into_a_preset(tmp_path, capsys, curve):
    prompts = held_out_prompts(60, "test")[:6]
    path = tmp_path / "gg.json"
    args = ["sweep", "--feature", "660", "--feature", "0:704:clamp", "--positions", "prompt"]
    args += ["--multipliers", "2", "--regex", BRIDGE, "--json", "--write-preset", str(path)]
    assert main([*args, *(x for p in prompts for x in ("--prompt", p))]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unit"] == "clamp value of features 660, 704, x max activation, prompt tokens"
    concept = Concept.regex(BRIDGE)
    for point in data["points"]:  # the same rows as the 60-prompt sweep's first six
        rows = [r for r in curve.replies if r.multiplier == point["multiplier"] and r.prompt < 6]
        assert point["concept_rate"] == sum(concept.matches(r.text) for r in rows) / 6
        assert point["well_formed"] == sum(r.well_formed for r in rows) / 6
    written = read_preset_file(path)
    assert data["suggested"] == 2.0 and written.name == "features 660, 704 at 2"
    assert [(s.ref, s.layer, s.d_sae) for s in written.saes] == [("demo-sae", 1, 1024)]
    assert [(e.feature, e.mode, e.value) for e in written.edits] == [
        (660, "clamp", 2.0),
        (704, "clamp", 2.0),
    ]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--regex", "(bridge", "--feature", "660"], "is not a valid regular expression"),
        (["--concept", "b", "--multipliers", "1,x"], "--multipliers: 'x' is not a finite number"),
        (["--concept", "b", "--multipliers", "1,nan"], "--multipliers: 'nan' is not a finite"),
        (["--concept", "b", "--feature", "660", "--preset", "x"], "not both"),
        (["--concept", "b"], "error: sweep: give --feature (one or more) or --preset\n"),
        (["--concept", "b", "--feature", "660=2x"], "the multipliers are its values"),
        (["--concept", "b", "--feature", "660", "--prompts", "/nope.txt"], "no such file"),
        (["--concept", "b", "--feature", "660", "--max-new-tokens", "0"], "--max-new-tokens: 0 is"),
        (["--concept", "b", "--feature", "660", "--batch", "0"], "--batch: 0 is not in 1..4096"),
        (["--concept", "b", "--feature", "2000"], "feature index 2000 is out of range"),
        (["--concept", "b", "--preset", "no-such"], "error: --preset: no preset named 'no-such'"),
    ],
)
def test_the_command_line_names_bad_input(capsys, args, words):
    assert main(["sweep", *args]) == 1
    assert words in capsys.readouterr().err


def test_the_command_line_defaults_are_the_librarys():
    assert cli_sweep.DEFAULT_FLUENCY_BOUND == lib.DEFAULT_FLUENCY_BOUND
    assert cli_sweep.DEFAULT_WELL_FORMED_DROP == lib.DEFAULT_WELL_FORMED_DROP


@pytest.mark.parametrize("argv", [["sweep", "--help"], ["activations", "--help"]])
def test_the_help_imports_no_torch(argv):
    code = (
        "import sys\n"
        "from steering.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('HEAVY', [m for m in ('torch', 'matplotlib') if m in sys.modules])\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []", out.stderr[-2000:]


def test_no_gain_over_the_unsteered_rate_is_no_suggestion():
    base = (0.0, 0.2, 1.0, 1.0)
    none, why = suggest(points(base, (1, 0.2, 1.1, 1.0), (2, 0.1, 1.2, 1.0)), 1.0, 0.1)
    assert none is None
    assert why == (
        "no multiplier raises the concept rate above the unsteered 20% (the best is 20%, at 1) "
        "among the multipliers with fluency <= 2.000 nats/token (unsteered 1.000 + 1) and "
        "well-formed >= 90% (unsteered 100% - 10%)"
    )
    assert suggest(points(base, (1, 0.3, 1.1, 1.0)), 1.0, 0.1)[0] == 1


def test_the_command_line_writes_no_preset_without_a_gain(tmp_path, capsys):
    path = tmp_path / "z.json"
    args = ["sweep", "--feature", "660", "--prompt", "hi", "--multipliers", "0,1"]
    args += ["--concept", "zebra", "--max-new-tokens", "8", "--write-preset", str(path)]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "suggested: none: no multiplier raises the concept rate above the unsteered 0%" in out
    assert err.splitlines()[-1] == (
        "error: --write-preset: no preset written: no multiplier raises the concept rate "
        "above the unsteered 0% (the best is 0%, at 1) among the multipliers with fluency "
        "<= 1.296 nats/token (unsteered 0.296 + 1) and well-formed >= 90% (unsteered 100% - 10%)"
    )
    assert not path.exists()


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "holds no prompts (give one per line)"),
        (b"\n  \n\t\n", "holds no prompts (give one per line)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "is not UTF-8 text (byte 0 is 0x89)"),
        (b"abc\x00def\n", "is not text (it holds NUL bytes)"),
    ],
)
def test_a_prompt_file_that_holds_no_prompts_is_an_error(
    tmp_path, capsys, monkeypatch, content, words
):
    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep ran")

    monkeypatch.setattr(lib, "calibrate", no_sweep)
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    assert main(["sweep", "--feature", "660", "--concept", "b", "--prompts", str(path)]) == 1
    assert capsys.readouterr().err == f"error: --prompts: {path} {words}\n"


def test_output_paths_are_checked_before_the_sweep(tmp_path, capsys, monkeypatch):
    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep ran")

    monkeypatch.setattr(lib, "calibrate", no_sweep)
    taken = tmp_path / "taken"
    taken.write_text("mine")
    base = ["sweep", "--feature", "660", "--concept", "b", "--prompt", "hi"]
    assert main([*base, "--out", str(taken)]) == 1
    assert capsys.readouterr().err == f"error: --out: {taken} exists and is not a folder\n"
    assert main([*base, "--write-preset", str(taken)]) == 1
    assert capsys.readouterr().err == (
        f"error: --write-preset: {taken} exists; pass --overwrite to replace it\n"
    )
    assert main([*base, "--write-preset", str(taken / "z.json")]) == 1
    assert capsys.readouterr().err.startswith(
        f"error: --write-preset: cannot make the folder {taken} ("
    )
    assert main([*base, "--write-preset", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"error: --write-preset: {tmp_path} is a folder; give a file name\n"
    )
    assert taken.read_text() == "mine"


def test_a_preset_file_is_replaced_only_with_overwrite(tmp_path):
    shipped = PresetRegistry.discover().get("demo-golden-gate-bridge").preset
    path = tmp_path / "gg.json"
    path.write_text("mine")
    with pytest.raises(SteeringError, match="exists; pass --overwrite to replace it"):
        cli_sweep.write_preset(preset_at_scale(shipped, 0.5), path)
    assert path.read_text() == "mine"
    cli_sweep.write_preset(preset_at_scale(shipped, 0.5), path, overwrite=True)
    assert read_preset_file(path).scale == 0.5


def test_the_chart_says_its_multipliers_are_not_to_scale(monkeypatch, tmp_path):
    from steering.features import report

    seen = {}
    monkeypatch.setattr(report, "line_chart", lambda *a, **kw: seen.update(kw))
    plot_sweep(result(), tmp_path / "x.png")
    assert seen["xlabel"] == "multiplier (x max activation); evenly spaced, not to scale"


def test_a_prompt_too_long_is_named_by_its_place(tmp_path, capsys):
    path = tmp_path / "prompts.txt"
    path.write_text("hi\n\n" + "x " * 3000 + "\n")
    args = ["sweep", "--feature", "660", "--concept", "b", "--prompt", "hello"]
    assert main([*args, "--prompts", str(path)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --prompts {path} line 3: the prompt has 3004 tokens, at most 2048"
    )


def test_one_prompt_is_one_prompt():
    points = result().points
    one = SweepResult(points, 2.0, "why", "x max activation", "/b/i", 1.0, 0.5, {"prompts": 1})
    assert format_table(one).splitlines()[0] == (
        "multiplier: x max activation; concept: /b/i; 1 prompt"
    )
    assert describe_calibration(one).startswith("Calibrated by steering sweep on 1 prompt (")


def test_blank_prompts_are_refused_naming_where(tmp_path, capsys):
    from steering.cli import main

    (tmp_path / "blank.json").write_text('["hello", "  "]')
    (tmp_path / "bom.txt").write_bytes("\ufeff\n".encode())
    cases = [
        (
            ["--prompts", str(tmp_path / "blank.json")],
            f"{tmp_path / 'blank.json'} item 2 is a blank",
        ),
        (["--prompts", str(tmp_path / "bom.txt")], "holds no prompts"),
        (["--prompt", "hi", "--prompt", "  "], "--prompt 2 is blank"),
    ]
    for argv, message in cases:
        assert main(["sweep", "--feature", "660", "--concept", "bridge", *argv]) == 1
        assert message in capsys.readouterr().err


def test_an_unusable_output_path_is_an_error_not_a_traceback(tmp_path, capsys):
    from steering.cli import main

    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub"
    argv = ["labels", "import", str(tmp_path / "x.jsonl"), "--sae", "demo-sae", "--out", str(out)]
    (tmp_path / "x.jsonl").write_text(
        '{"modelId": "m", "layer": "s", "index": "1", "description": "one"}\n'
    )
    assert main([*argv, "--neuronpedia-id", "m/s"]) == 1
    assert "Not a directory" in capsys.readouterr().err
