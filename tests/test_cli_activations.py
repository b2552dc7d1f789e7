"""``steering activations`` on the demo world: its table and its JSON hold exactly
``feature_activations``' numbers, for a text and for a chat; bad input is named."""

from __future__ import annotations

import json

import pytest

from steering.activations import chat_tokens, feature_activations
from steering.cli import main
from steering.demo import load_demo

TEXT = "what is the golden gate bridge painted with ?"
CHAT = [
    {"role": "user", "content": "tell me about the golden gate"},
    {"role": "assistant", "content": "the golden gate bridge is painted orange ."},
]


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def expected(demo, text_or_chat, features=(), top_k=5):
    model, sae = demo
    ids, start = chat_tokens(model.tokenizer, text_or_chat, context=model.context_length)
    return feature_activations(model, sae, ids, features=features, top_k=top_k, reply_start=start)


def test_the_json_is_feature_activations(demo, capsys):
    _, sae = demo
    assert main(["activations", TEXT, "--features", "660,704,501", "--top", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    want = expected(demo, TEXT, (660, 704, 501), 3)
    assert [t["text"] for t in data["tokens"]] == list(want.tokens)
    assert [t["id"] for t in data["tokens"]] == list(want.token_ids)
    for t, token in enumerate(data["tokens"]):
        assert [(x["feature"], x["activation"]) for x in token["top"]] == list(want.top[t])
        assert [x["label"] for x in token["top"]] == [sae.labels.get(f) for f, _ in want.top[t]]
        assert token["features"] == {str(f): v[t] for f, v in want.features.items()}
    assert max(want.features[501]) > 0  # the bridge feature does fire here
    assert data["max_activation"] == {str(f): m for f, m in want.max_activation.items()}
    assert data["reply_start"] is None and data["sae"] == "demo-sae"


def test_the_table_prints_the_same_numbers(demo, capsys):
    assert main(["activations", TEXT, "--features", "501,698"]) == 0
    lines = capsys.readouterr().out.splitlines()
    want = expected(demo, TEXT, (501, 698))
    assert lines[0].split() == ["#", "token", "501", "698"]  # no --top: the columns only
    rows = lines[1 : 1 + len(want.tokens)]
    width = max(5, *(len(repr(text)) for text in want.tokens))
    for t, line in enumerate(rows):
        cells = line.split()
        assert int(cells[0]) == t and line[6 : 6 + width].rstrip() == repr(want.tokens[t])
        assert [float(x) for x in cells[-2:]] == [
            round(want.features[501][t], 4),
            round(want.features[698][t], 4),
        ]
    assert lines[2 + len(want.tokens)] == "501: " + demo[1].labels[501]


def test_a_chat_file_marks_the_reply_and_lists_top_features(demo, tmp_path, capsys):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"messages": CHAT}))
    assert main(["activations", "--chat", str(path), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    want = expected(demo, CHAT, (), 2)
    assert want.reply_start is not None and 0 < want.reply_start < len(want.tokens)
    assert lines[1 + want.reply_start] == "---- the reply starts here"
    body = [line for line in lines[1 : lines.index("")] if not line.startswith("----")]
    assert len(body) == len(want.tokens)
    for t, line in enumerate(body):
        top = [cell.split(":") for cell in line.split()[-len(want.top[t]) :]]
        assert [(int(f), float(a)) for f, a in top] == [(f, round(a, 4)) for f, a in want.top[t]]


@pytest.mark.parametrize(
    "args, words",
    [
        ([TEXT, "--chat", "x.json"], "give a text or --chat FILE (exactly one)"),
        ([], "give a text or --chat FILE (exactly one)"),
        ([TEXT, "--features", "3,x"], "--features: 'x' is not a feature index"),
        ([TEXT, "--features", "5000"], "features.0: 5000 is not a feature of this SAE (valid: "),
        ([TEXT, "--top", "0"], "top_k: 0 must be an integer in 1..32"),
        (["--chat", "/no/such.json"], "--chat: no such file"),
        ([TEXT, "--model", "/x"], "--model needs --sae"),
    ],
)
def test_bad_input_is_named(capsys, args, words):
    assert main(["activations", *args]) == 1
    assert words in capsys.readouterr().err


def test_a_malformed_chat_file_is_named(tmp_path, capsys):
    path = tmp_path / "chat.json"
    for content in ('{"messages": 3}', "[1, 2]", "not json"):
        path.write_text(content)
        assert main(["activations", "--chat", str(path)]) == 1
        assert "--chat: " in capsys.readouterr().err
