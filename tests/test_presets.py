"""Presets: the format, the shipped files, bad input from strangers, composition and scaling on a
tiny model, SAE references, the registry and the command line."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import get_args

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_saes import random_sae
from tiny_models import HIDDEN, LAYERS, tiny_model, tiny_tokenizer

import steering.presets.schema as presets_module
from steering.cli import main
from steering.errors import PresetError
from steering.formats import FORMATS
from steering.formats.writer import save_sae
from steering.hooks import prepare, steer
from steering.limits import Limits
from steering.models import SteerableModel, find_layers
from steering.plan import FeatureEdit
from steering.presets.library import (
    ENV_VAR,
    PresetEntry,
    PresetRegistry,
    builtin_dir,
    read_preset_file,
)
from steering.presets.saes import SAEResolver
from steering.presets.schema import (
    MAX_EDITS,
    MAX_FILE_BYTES,
    Preset,
    SAEFormat,
    dump_preset,
    json_schema,
    parse_preset,
)
from steering.presets.to_plan import (
    check_fits,
    compose,
    plan_for_presets,
    plan_from_request,
    to_plan,
)

BAD = Path(__file__).parent / "bad_presets"
MANIFEST = json.loads((BAD / "manifest.json").read_text())
SHIPPED = sorted(builtin_dir().glob("*.json"))
D_SAE = 32
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def preset_dict(**changes) -> dict:
    """A valid preset for a tiny SAE (``saes.0`` is ``l1``, layer 1, d_in 64, d_sae 32)."""
    doc = {
        "format_version": 1,
        "name": "Tiny: bridges",
        "model": {"id": "test/model"},
        "saes": [{"id": "l1", "ref": "l1", "layer": 1, "d_in": HIDDEN, "d_sae": D_SAE}],
        "edits": [
            {
                "sae": "l1",
                "feature": 3,
                "label": "bridges",
                "mode": "clamp",
                "unit": "raw",
                "value": 4.0,
            }
        ],
        "labels_source": "tests",
        "verified": False,
    }
    return doc | changes


def make(**changes) -> Preset:
    return parse_preset(preset_dict(**changes))


def edit(feature: int = 3, mode: str = "clamp", value: float = 4.0, **extra) -> dict:
    return {"sae": "l1", "feature": feature, "mode": mode, "value": value, "unit": "raw", **extra}


@pytest.fixture(scope="module")
def sae():
    return random_sae(HIDDEN, D_SAE, layer=1, seed=3)


@pytest.fixture(scope="module")
def model():
    net = tiny_model("llama")
    return SteerableModel(net, tiny_tokenizer(), find_layers(net)[0], "model.layers.{i}")


@pytest.fixture(scope="module")
def files(tmp_path_factory, sae):
    """A saved tiny model ("model"), the SAE with and without max activations, a presets folder."""
    root = tmp_path_factory.mktemp("presets")
    tiny_model("llama").save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    save_sae(sae, root / "sae")
    bare = copy.copy(sae)
    bare.max_activation = None
    save_sae(bare, root / "bare-sae")
    folder = root / "my-presets"
    folder.mkdir()
    doc = preset_dict(
        saes=[
            {
                "id": "l1",
                "ref": "../sae",
                "format": "saelens",
                "layer": 1,
                "d_in": HIDDEN,
                "d_sae": D_SAE,
            }
        ]
    )
    doc["edits"] = [edit(mode="clamp", value=3.0, unit="max_act")]
    (folder / "bridges.json").write_text(json.dumps(doc))
    return root


# ---- the shipped presets ----


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_preset_round_trips(path):
    preset = read_preset_file(path)
    text = path.read_text(encoding="utf-8")
    assert dump_preset(preset) == text  # files are written in the format's own layout
    assert parse_preset(dump_preset(preset)) == preset
    # demo presets are named for what they steer ("Golden Gate Bridge"), their files "demo-..."
    assert preset.slug == slugified(path.stem.removeprefix("demo-"))


def slugified(stem: str) -> str:
    return stem.replace(".", "-")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_json_schema_validates_shipped_preset(path):
    validator = jsonschema.Draft202012Validator(json_schema())
    assert list(validator.iter_errors(json.loads(path.read_text()))) == []


def test_shipped_presets_cite_sources_and_are_unverified():
    by_model: dict[str, list[Preset]] = {}
    for path in SHIPPED:
        preset = read_preset_file(path)
        by_model.setdefault(preset.model.id, []).append(preset)
        if path.name.startswith("demo-"):  # checked on the shipped demo model by its screen
            assert preset.verified and "steering/demo/screen.py" in preset.labels_source
        else:  # published labels for weights this project cannot download
            assert not preset.verified and "http" in preset.labels_source
    gemma = by_model["google/gemma-2-2b-it"]
    features = {(p.saes[0].layer, p.edits[0].feature) for p in gemma}
    assert {
        (20, 7769),
        (20, 1824),
        (20, 7222),
        (20, 6434),
        (20, 8080),
        (10, 12412),
        (10, 10429),
        (10, 12910),
    } <= features
    for p in gemma:
        s, e = p.saes[0], p.edits[0]
        assert (s.format, s.d_in, s.d_sae, s.site) == ("gemma_scope", 2304, 16384, "resid_post")
        assert s.ref.startswith(f"google/gemma-scope-2b-pt-res/layer_{s.layer}/width_16k/")
        url = f"https://www.neuronpedia.org/gemma-2-2b/{s.layer}-gemmascope-res-16k/{e.feature}"
        assert url in p.labels_source
    (eiffel,) = by_model["meta-llama/Llama-3.1-8B-Instruct"]
    s, e = eiffel.saes[0], eiffel.edits[0]
    assert (s.ref, s.layer, s.d_in, s.d_sae) == (
        "andyrdt/saes-llama-3.1-8b-instruct/resid_post_layer_15/trainer_1",
        15,
        4096,
        131072,
    )
    assert e.feature == 21576 and e.value * e.max_activation == pytest.approx(8.5, abs=0.01)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_show_prints_shipped_preset(path, capsys):
    preset = read_preset_file(path)
    assert main(["presets", "show", preset.slug]) == 0
    out = capsys.readouterr().out
    assert preset.name in out and preset.saes[0].ref in out and str(preset.edits[0].feature) in out
    assert main(["presets", "show", preset.name.upper(), "--json"]) == 0
    assert parse_preset(capsys.readouterr().out) == preset


def test_format_names_match_the_loaders():
    assert set(get_args(SAEFormat)) == {f.name for f in FORMATS}


def test_schema_describes_every_field():
    schema = json_schema()
    models = [schema, *schema["$defs"].values()]
    for model in models:
        for name, field in model["properties"].items():
            assert field.get("description"), name
        assert model["additionalProperties"] is False


# ---- bad presets ----


@pytest.mark.parametrize("name", sorted(MANIFEST), ids=str)
def test_bad_preset_is_rejected_with_its_own_message(name, sae):
    expected = MANIFEST[name]
    with pytest.raises(PresetError) as caught:
        preset = read_preset_file(BAD / name)
        assert expected["source"] == "network", "a file-source bad preset parsed"
        resolver = SAEResolver(loader=lambda ref, **_: sae)
        resolver.register("test/tiny-saes/layer_1", sae)
        resolver.resolve(preset, source="network")
    wanted = f"{expected['field']}: "
    lines = [line for line in caught.value.problems if line.startswith(wanted)]
    assert any(expected["message"] in line for line in lines), caught.value.problems
    assert str(BAD / name) in str(caught.value) or expected["source"] == "network"


def test_bad_preset_messages_are_distinct():
    messages = [(m["field"], m["message"]) for m in MANIFEST.values()]
    assert len(set(messages)) == len(messages)
    assert set(MANIFEST) == {p.name for p in BAD.glob("*.json")} - {"manifest.json"}


def test_huge_file_is_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "huge.json"
    doc = preset_dict(description="x" * (10 * 2**20))
    path.write_text(json.dumps(doc))
    monkeypatch.setattr(presets_module.json, "loads", _never_called)
    with pytest.raises(
        PresetError, match=rf"\(file\): \d+ bytes is over the limit of {MAX_FILE_BYTES}"
    ):
        read_preset_file(path)
    with pytest.raises(PresetError, match="bytes is over the limit"):
        parse_preset(path.read_text())


def test_deeply_nested_json_is_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    monkeypatch.setattr(presets_module.json, "loads", _never_called)
    with pytest.raises(PresetError, match=r"\(file\): JSON nested 100000 deep, at most 8"):
        read_preset_file(path)
    nested = '{"name": ' + '{"a": ' * 20 + "1" + "}" * 20 + "}"
    with pytest.raises(PresetError, match="JSON nested 21 deep"):
        parse_preset(nested)


def _never_called(*args, **kwargs):
    raise AssertionError("json.loads must not see this input")


def test_brackets_inside_strings_do_not_count_as_nesting():
    preset = make(description='[[[[[[[[[[ {{{{{{{{{{ \\" ]]]] "quoted"')
    assert parse_preset(dump_preset(preset)) == preset


def test_too_many_edits_and_long_integers():
    edits = [edit(feature=i % D_SAE) for i in range(MAX_EDITS + 1)]
    with pytest.raises(PresetError, match="edits: List should have at most 64 items"):
        make(edits=edits)
    text = json.dumps(preset_dict()).replace('"feature": 3', '"feature": ' + "9" * 5000)
    with pytest.raises(
        PresetError, match=r"\(file\): not valid JSON: the integer 9+\.\.\. has 5000"
    ):
        parse_preset(text)


def test_all_problems_are_reported_together():
    doc = preset_dict(scale=1e9, verified="yes")
    doc["edits"][0] |= {"feature": -2, "mode": "boost"}
    with pytest.raises(PresetError) as caught:
        parse_preset(doc)
    fields = [line.split(":")[0] for line in caught.value.problems]
    assert fields == ["edits.0.feature", "edits.0.mode", "scale", "verified"]


def test_non_json_python_objects_are_errors_not_crashes():
    with pytest.raises(PresetError):
        parse_preset(preset_dict(edits=[{"sae": "l1", "feature": object()}]))  # type: ignore[arg-type]


# ---- property tests: random and mutated input gives a Preset or a PresetError ----

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    ("format_version",),
    ("name",),
    ("description",),
    ("model",),
    ("model", "id"),
    ("model", "revision"),
    ("saes",),
    ("saes", 0),
    ("saes", 0, "id"),
    ("saes", 0, "ref"),
    ("saes", 0, "format"),
    ("saes", 0, "layer"),
    ("saes", 0, "site"),
    ("saes", 0, "d_in"),
    ("saes", 0, "d_sae"),
    ("edits",),
    ("edits", 0),
    ("edits", 0, "sae"),
    ("edits", 0, "feature"),
    ("edits", 0, "label"),
    ("edits", 0, "mode"),
    ("edits", 0, "unit"),
    ("edits", 0, "value"),
    ("edits", 0, "max_activation"),
    ("edits", 0, "positions"),
    ("edits", 0, "skip_special_tokens"),
    ("scale",),
    ("labels_source",),
    ("verified",),
]


def outcome(data) -> Preset | PresetError:
    """Anything other than a Preset or a PresetError escapes and fails the test."""
    try:
        preset = parse_preset(data)
    except PresetError as e:
        assert e.problems and all(": " in line for line in e.problems)
        return e
    assert parse_preset(dump_preset(preset)) == preset
    return preset


@FAST
@given(json_values)
def test_random_json_gives_a_preset_or_an_error(value):
    outcome(json.dumps(value))
    if isinstance(value, dict):
        outcome(value)


@FAST
@given(st.sampled_from(FIELDS), json_values, st.sampled_from(["replace", "delete", "add"]))
def test_mutated_preset_gives_a_preset_or_an_error(path, value, action):
    doc = json.loads(dump_preset(make()))  # every field present
    *parents, last = path
    node = doc
    for key in parents:
        node = node[key]
    if action == "replace":
        node[last] = value
    elif action == "delete" and isinstance(node, dict):
        del node[last]
    elif isinstance(node, dict):
        node[f"extra_{last}"] = value
    result = outcome(json.dumps(doc))
    if action == "add" and isinstance(node, dict):
        assert isinstance(result, PresetError)


@FAST
@given(st.integers(0, 2000), st.text(max_size=5), st.binary(max_size=5))
def test_spliced_text_gives_a_preset_or_an_error(cut, insert, raw):
    text = dump_preset(make())
    cut = min(cut, len(text))
    outcome(text[:cut] + insert + text[cut:])
    outcome(text[:cut].encode() + raw)


@FAST
@given(st.floats(), st.integers(-(2**70), 2**70))
def test_any_number_anywhere_gives_a_preset_or_an_error(number, integer):
    doc = preset_dict(scale=number)
    doc["edits"][0] |= {"value": number, "feature": integer}
    outcome(json.dumps(doc))  # NaN and Infinity come out as bare constants
    outcome(doc)


# ---- plans: export/import, composition, limits, max activations ----


def test_export_import_gives_an_identical_plan(sae):
    preset = make(
        edits=[
            edit(3, "clamp", 4.0),
            edit(5, "add", -2.0, positions="generated"),
            edit(7, "ablate", 0.0, skip_special_tokens=True),
        ],
        scale=1.5,
    )
    again = parse_preset(dump_preset(preset))
    assert to_plan(preset, {"l1": sae}, 2.0) == to_plan(again, {"l1": sae}, 2.0)
    plan = to_plan(again, {"l1": sae}, 2.0)
    assert [(e.feature, e.mode, e.value) for e in plan.edits] == [
        (3, "clamp", 12.0),
        (5, "add", -6.0),
        (7, "ablate", 0.0),
    ]
    assert plan.edits[1].positions == "generated" and plan.edits[2].skip_special_tokens


def test_scale_zero_is_the_empty_plan(sae):
    assert to_plan(make(), {"l1": sae}, 0.0).is_empty
    assert to_plan(make(scale=0.0), {"l1": sae}).is_empty
    plan = compose([(make(scale=0.0), {"l1": sae}, 1.0), (make(edits=[edit(9)]), {"l1": sae}, 1.0)])
    assert [e.feature for e in plan.edits] == [9]


def _layer_output(model, plan, ids, layer: int = 1):
    captured = {}

    def grab(_module, _args, output):
        captured["h"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    with torch.no_grad(), steer(model, plan):
        handle = model.layers[layer].register_forward_hook(grab)  # after the steering hook
        try:
            logits = model.model(ids).logits
        finally:
            handle.remove()
    return captured["h"], logits


IDS = torch.tensor([[1, 4, 9, 10, 11, 12, 5]])


def test_preset_at_scale_zero_equals_baseline_exactly(model, sae):
    preset = make(edits=[edit(3, "clamp", 6.0), edit(4, "add", 3.0)])
    with torch.no_grad():
        baseline = model.model(IDS).logits
    _, steered = _layer_output(model, to_plan(preset, {"l1": sae}, 0.0), IDS)
    _, scaled = _layer_output(model, to_plan(preset, {"l1": sae}, 1.0), IDS)
    assert torch.equal(steered, baseline)
    assert not torch.equal(scaled, baseline)


def test_scale_two_doubles_the_added_vector(model, sae):
    preset = make(edits=[edit(4, "add", 3.0)])
    base, _ = _layer_output(model, to_plan(preset, {"l1": sae}, 0.0), IDS)
    one, _ = _layer_output(model, to_plan(preset, {"l1": sae}, 1.0), IDS)
    two, _ = _layer_output(model, to_plan(preset, {"l1": sae}, 2.0), IDS)
    torch.testing.assert_close(one - base, (3.0 * sae.W_dec[4]).expand_as(base))
    torch.testing.assert_close(two - base, 2 * (one - base))


def test_scale_two_doubles_the_clamp_target(model, sae):
    preset = make(edits=[edit(3, "clamp", 2.5)])
    base, _ = _layer_output(model, to_plan(preset, {"l1": sae}, 0.0), IDS)
    f = sae.encode(base)[..., 3]  # the feature's own activation, unsteered
    direction = sae.W_dec[3] / sae.W_dec[3].norm() ** 2
    for scale in (1.0, 2.0):
        steered, _ = _layer_output(model, to_plan(preset, {"l1": sae}, scale), IDS)
        target = f + (steered - base) @ direction  # where the clamp put the activation
        torch.testing.assert_close(target, torch.full_like(f, 2.5 * scale))


def _combined(sae, *edit_lists, scales=None):
    scales = scales or [1.0] * len(edit_lists)
    items = [(make(edits=edits, scale=s), {"l1": sae}, 1.0) for edits, s in zip(edit_lists, scales)]
    return compose(items)


def test_composition_concatenates_and_scales_each_preset(sae):
    plan = _combined(sae, [edit(1, value=2.0)], [edit(2, "add", 1.0)], scales=[3.0, -2.0])
    assert [(e.feature, e.mode, e.value) for e in plan.edits] == [
        (1, "clamp", 6.0),
        (2, "add", -2.0),
    ]


@pytest.mark.parametrize(
    "first, second, expected",
    [
        (edit(3, "clamp", 2.0), edit(3, "clamp", 5.0), ("clamp", 5.0)),  # last clamp wins
        (edit(3, "clamp", 2.0), edit(3, "ablate", 0.0), ("ablate", 0.0)),
        (edit(3, "ablate", 0.0), edit(3, "clamp", 5.0), ("clamp", 5.0)),
        (edit(3, "add", 1.0), edit(3, "add", 2.5), ("add", 3.5)),  # adds sum
        (edit(3, "add", 1.0), edit(3, "clamp", 5.0), ("clamp", 5.0)),  # a clamp fixes it
        (edit(3, "clamp", 5.0), edit(3, "add", 1.0), ("clamp", 5.0)),
    ],
)
def test_composing_edits_of_the_same_feature(model, sae, first, second, expected):
    plan = _combined(sae, [first], [second])
    assert [(e.mode, e.raw_value) for e in plan.edits] == [expected]
    prepare(model, plan)  # never "clamped twice"


def test_adds_in_different_units_sum_in_raw_units(sae):
    in_max = edit(3, "add", 2.0, unit="max_act", max_activation=1.5)
    plan = _combined(sae, [edit(3, "add", 1.0)], [in_max])
    assert [(e.mode, e.unit, e.value) for e in plan.edits] == [("add", "raw", 4.0)]


def test_adds_with_different_positions_do_not_combine(sae):
    with pytest.raises(PresetError, match="added twice with different positions"):
        _combined(sae, [edit(3, "add", 1.0)], [edit(3, "add", 1.0, positions="prompt")])


def test_many_presets_composed_always_prepare(model, sae):
    modes = ["clamp", "add", "ablate"]
    lists = [
        [edit(f, modes[(i + f) % 3], 0.0 if (i + f) % 3 == 2 else 1.0 + i) for f in range(i % 4, 6)]
        for i in range(6)
    ]
    prepare(model, _combined(sae, *lists))


def test_server_limits_win_over_the_file(sae):
    preset = make(edits=[edit(3, "clamp", 5.0, unit="max_act")])
    with pytest.raises(
        PresetError, match="5 x scale 30 = 150 x max activation is over this server's limit of 100"
    ):
        to_plan(preset, {"l1": sae}, 30.0)
    with pytest.raises(PresetError, match="server's limit of 4"):
        to_plan(preset, {"l1": sae}, limits=Limits(max_multiple=4))
    with pytest.raises(PresetError, match="2000 raw units is over this server's limit of 1000"):
        to_plan(make(edits=[edit(3, "add", 2000.0)]), {"l1": sae})
    with pytest.raises(PresetError, match=r"scale: 1000.0 must be a finite number in ±100"):
        to_plan(preset, {"l1": sae}, 1000.0)


def test_max_activation_comes_from_the_file_or_the_sae(sae, tmp_path):
    from_sae = make(edits=[edit(3, "clamp", 2.0, unit="max_act")])
    (e,) = to_plan(from_sae, {"l1": sae}).edits
    assert (e.unit, e.raw_value) == ("max_act", pytest.approx(2.0 * float(sae.max_activation[3])))
    from_file = make(edits=[edit(3, "clamp", 2.0, unit="max_act", max_activation=7.0)])
    (e,) = to_plan(from_file, {"l1": sae}).edits
    assert (e.unit, e.raw_value) == ("raw", 14.0)
    bare = copy.copy(sae)
    bare.max_activation = None
    with pytest.raises(PresetError) as raised:
        to_plan(from_sae, {"l1": bare})
    assert f"`steering sae-stats {sae.source} --model MODEL --corpus TEXT`" in str(raised.value)
    assert "or set max_activation in the preset" in str(raised.value)
    bare.source = str(tmp_path)  # a local SAE's path is never shown
    with pytest.raises(PresetError) as raised:
        to_plan(from_sae, {"l1": bare})
    assert "`steering sae-stats SAE --model" in str(raised.value)
    assert str(tmp_path) not in str(raised.value)
    assert to_plan(from_file, {"l1": bare}).edits[0].raw_value == 14.0


# ---- SAE references ----


def _declared(ref: str, **changes) -> dict:
    return {
        "id": "l1",
        "ref": ref,
        "format": "saelens",
        "layer": 1,
        "d_in": HIDDEN,
        "d_sae": D_SAE,
    } | changes


def test_resolver_loads_once_and_checks_declarations(files):
    resolver = SAEResolver()
    preset = make(saes=[_declared(str(files / "sae"))])
    first = resolver.resolve(preset)["l1"]
    assert resolver.resolve(make(saes=[_declared(str(files / "sae"))]))["l1"] is first
    wrong = make(
        saes=[_declared(str(files / "sae"), layer=2, d_sae=64, format="gemma_scope")],
        edits=[edit(40)],
    )
    with pytest.raises(PresetError) as caught:
        resolver.resolve(wrong)
    assert caught.value.problems == [
        f"saes.0.format: the preset expects 'gemma_scope', but the SAE loaded from "
        f"'{files / 'sae'}' has 'saelens'",
        f"saes.0.layer: the preset expects 2, but the SAE loaded from '{files / 'sae'}' has 1",
        f"saes.0.d_sae: the preset expects 64, but the SAE loaded from '{files / 'sae'}' has 32",
    ]


def test_missing_sae_is_a_clear_error(tmp_path):
    with pytest.raises(PresetError, match=r"saes\.0\.ref: .*is not an existing file or folder"):
        SAEResolver().resolve(make(saes=[_declared(str(tmp_path / "nowhere"))]))


def test_relative_refs_are_relative_to_the_preset_file(files):
    entry = PresetRegistry.discover([files / "my-presets"], builtin=False).get("bridges")
    saes = SAEResolver().resolve(entry.preset, base_dir=entry.base_dir)
    assert saes["l1"].source == str((files / "sae").resolve())


def test_network_presets_use_only_loaded_or_allowed_saes(sae):
    loads = []

    def loader(ref, **_):
        loads.append(ref)
        return sae

    resolver = SAEResolver(allowed=["hf://test/allowed/layer_1"], loader=loader)
    resolver.register("test/loaded/layer_1", sae)
    assert (
        resolver.resolve(
            make(saes=[_declared("test/loaded/layer_1", format=None)]), source="network"
        )["l1"]
        is sae
    )
    resolver.resolve(make(saes=[_declared("test/allowed/layer_1/", format=None)]), source="network")
    assert loads == ["test/allowed/layer_1"]
    for ref, kind in [
        ("/data/saes/l1", "a local path"),
        ("./l1", "a local path"),
        ("~/l1", "a local path"),
        ("C:\\saes\\l1", "a local path"),
        ("http://10.0.0.1/sae", "a URL"),
        ("hf://x/y/z", "not an SAE of"),
    ]:
        with pytest.raises(PresetError) as caught:
            resolver.resolve(make(saes=[_declared(ref)]), source="network")
        (line,) = caught.value.problems
        assert line.startswith(f"saes.0.ref: {ref!r} is {kind}"), line
        assert "test/allowed/layer_1, test/loaded/layer_1" in line
    assert loads == ["test/allowed/layer_1"]  # nothing refused was ever loaded


def test_saes_loaded_for_file_presets_stay_closed_to_the_network(files):
    resolver = SAEResolver()
    local = _declared(str(files / "sae"))
    resolver.resolve(make(saes=[local]))  # a trusted file preset loads a local path
    with pytest.raises(PresetError) as caught:
        resolver.resolve(make(saes=[local]), source="network")
    (line,) = caught.value.problems
    assert line.endswith("the SAEs this server has loaded or allows: none")


def test_model_mismatch_warns_or_fails_when_strict(model):
    preset = make()
    (warning,) = check_fits(preset, model)
    assert "made for test/model, but the loaded model is" in warning
    with pytest.raises(PresetError, match="model: made for test/model"):
        check_fits(preset, model, strict=True)
    too_deep = make(saes=[_declared("l1", layer=LAYERS, d_in=32)])
    with pytest.raises(PresetError) as caught:
        check_fits(too_deep, model)
    assert caught.value.problems == [
        f"saes.0.layer: {LAYERS}, but the model has {LAYERS} layers (valid: 0..{LAYERS - 1})",
        f"saes.0.d_in: 32, but the model's hidden size is {HIDDEN}",
    ]


def test_request_steering_is_a_preset_json_object(model, sae):
    resolver = SAEResolver()
    resolver.register("server/l1", sae)
    doc = preset_dict(saes=[_declared("server/l1", format=None)])
    plan, warnings = plan_from_request(doc, model, resolver, scale=2.0)
    assert plan.edits == (FeatureEdit(sae, 3, "clamp", 8.0),) and warnings
    doc["saes"][0]["ref"] = "/home/server/saes/l1"
    with pytest.raises(PresetError, match="is a local path"):
        plan_from_request(doc, model, resolver)


def test_plan_for_presets_on_a_model(model, sae):
    resolver = SAEResolver()
    resolver.register("l1", sae)
    entries = [PresetEntry(make()), PresetEntry(make(name="other", edits=[edit(3, "add", 1.0)]))]
    plan, warnings = plan_for_presets(entries, model, resolver, scale=0.5)
    assert [(e.mode, e.value) for e in plan.edits] == [("clamp", 2.0)] and len(warnings) == 2


# ---- the registry ----


def test_registry_finds_builtin_env_and_given_presets(tmp_path, files):
    single = tmp_path / "single.json"
    single.write_text(json.dumps(preset_dict(name="Single one")))
    override = tmp_path / "override"
    override.mkdir()
    (override / "fear.json").write_text(json.dumps(preset_dict(name="Gemma 2 2B IT: fear")))
    (override / "broken.json").write_text("{")
    environ = {ENV_VAR: f"{files / 'my-presets'}:{single}"}
    registry = PresetRegistry.discover([override, tmp_path / "missing"], environ=environ)
    assert registry.get("gemma-2-2b-it-mountains").origin == "built-in"
    assert registry.get("TINY: BRIDGES").path == files / "my-presets" / "bridges.json"
    assert registry.get("single one").preset.name == "Single one"
    assert registry.get("gemma 2 2b it: FEAR").path == override / "fear.json"  # later wins
    assert registry.get("llama-3.1-8b-instruct-eiffel-tower.json").origin == "built-in"
    assert registry.get(str(single)).preset.name == "Single one"
    assert registry.problems == [
        f"{override / 'broken.json'}: (file): not valid JSON: Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1)",
        f"{tmp_path / 'missing'}: no such file or folder",
    ]


def test_unknown_preset_lists_close_matches_and_available_names():
    registry = PresetRegistry.discover()
    with pytest.raises(
        Exception,
        match="no preset named 'gemma-2-2b-it-feer'; did you mean: "
        "gemma-2-2b-it-fear.*Available: .*gemma-2-2b-it-anger, ",
    ):
        registry.get("gemma-2-2b-it-feer")
    with pytest.raises(Exception, match="did you mean: llama-3-1-8b-instruct-eiffel-tower"):
        registry.get("eiffel")


# ---- the command line ----


def test_cli_list(files, capsys):
    assert main(["presets", "list", "--presets", str(files / "my-presets")]) == 0
    out = capsys.readouterr().out
    for path in SHIPPED:
        assert read_preset_file(path).slug in out
    assert re.search(
        r"\ntiny-bridges +Tiny: bridges  \(test/model, 1 edit, not verified, user\)", out
    )


def test_cli_validate(files, capsys):
    good, bad = SHIPPED[0], BAD / "huge_multiple.json"
    assert main(["presets", "validate", str(good), str(files / "my-presets")]) == 0
    assert capsys.readouterr().out.count(": ok (") == 2
    assert main(["presets", "validate", str(good), str(bad), str(BAD / "not_utf8.json")]) == 1
    captured = capsys.readouterr()
    assert f"{bad}: edits.0.value: 5000 x max activation is over the format's limit" in captured.out
    assert f"{BAD / 'not_utf8.json'}: (file): not UTF-8 text" in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_cli_validate_every_bad_file_without_traceback(capsys):
    assert main(["presets", "validate", str(BAD)]) == 1
    captured = capsys.readouterr()
    assert "manifest.json: format_version: Field required" in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_cli_schema_is_valid_json_schema(capsys):
    assert main(["presets", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == json_schema()


def test_cli_show_unknown_and_bad_file(capsys):
    assert main(["presets", "show", "nope"]) == 1
    assert "no preset named 'nope'" in capsys.readouterr().err
    assert main(["presets", "show", str(BAD / "nan.json")]) == 1
    err = capsys.readouterr().err
    assert "(file): not valid JSON: NaN is not a number JSON allows" in err
    assert "Traceback" not in err


def _generate(files, *extra) -> list[str]:
    return [
        "generate",
        "--model",
        str(files / "model"),
        "--temperature",
        "0",
        "--max-new-tokens",
        "6",
        "--json",
        "--presets",
        str(files / "my-presets"),
        *extra,
        "hello how are you",
    ]


def test_cli_generate_with_presets(files, capsys):
    assert main(_generate(files, "--preset", "tiny-bridges", "--scale", "0")) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["steered"] == off["baseline"]
    assert main(_generate(files, "--preset", "tiny-bridges", "--scale", "10")) == 0
    captured = capsys.readouterr()
    on = json.loads(captured.out)
    assert on["steered"]["text"] != on["baseline"]["text"]
    assert on["baseline"] == off["baseline"]
    assert "Traceback" not in captured.err


def test_cli_generate_preset_errors(files, capsys):
    assert main(_generate(files, "--preset", "tiny-bridgs")) == 1
    assert "did you mean: tiny-bridges" in capsys.readouterr().err
    assert main(_generate(files, "--preset", "gemma-2-2b-it-fear")) == 1
    err = capsys.readouterr().err
    assert "saes.0.layer: 20, but the model has 4 layers" in err
    assert "saes.0.d_in: 2304, but the model's hidden size is 64" in err
    assert main(_generate(files, "--preset", "tiny-bridges", "--scale", "50")) == 1
    assert "over this server's limit of 100" in capsys.readouterr().err


def test_cli_generate_strict_model_check(files, tmp_path, capsys):
    doc = json.loads((files / "my-presets" / "bridges.json").read_text())
    doc["model"]["id"] = "someone/another-model"
    doc["saes"][0]["ref"] = str(files / "sae")
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    assert main(_generate(files, "--preset", str(other))) == 0
    assert "made for someone/another-model" in capsys.readouterr().err
    assert main(_generate(files, "--preset", str(other), "--strict")) == 1
    assert "error: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "changes, line",
    [
        ({"format_version": True}, "format_version: should be the integer 1 (got True)"),
        ({"format_version": 1.0}, "format_version: should be the integer 1 (got 1.0)"),
        ({"verified": 1}, "verified: Input should be a valid boolean (got 1)"),
        ({"scale": "2"}, "scale: Input should be a valid number (got '2')"),
    ],
)
def test_lookalike_types_are_refused(changes, line):
    with pytest.raises(PresetError) as caught:
        make(**changes)
    assert caught.value.problems == [line]
