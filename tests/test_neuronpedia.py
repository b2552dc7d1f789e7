"""Neuronpedia's labels and max activations: exports written in the exact layout of
hijohnnylin/neuronpedia utils/neuronpedia-utils/neuronpedia_utils/export-data.py (gzipped JSON
lines, batches of 1024 rows, ``layer`` = source id, ``index`` a string), a saved feature API
answer, the fetch from the bucket (served by httpx.MockTransport and by a loopback server), and
the ids the loaders record."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from dataclasses import replace
from functools import partial
from pathlib import Path

import httpx
import pytest
import torch
from random_saes import random_sae
from sae_fixtures import saelens_tensors, saelens_v6_cfg, write_gemma_scope, write_saelens

from steering.cli import main
from steering.features import neuronpedia_fetch
from steering.features.neuronpedia import (
    NeuronpediaError,
    NeuronpediaId,
    clean_label,
    import_neuronpedia,
    read_neuronpedia,
)
from steering.features.neuronpedia_fetch import NeuronpediaUnreachable, fetch_exports
from steering.formats import load_sae
from steering.formats.writer import save_sae

MODEL, SOURCE = "gemma-2-2b", "20-gemmascope-res-16k"
NP_ID = f"{MODEL}/{SOURCE}"
D_SAE = 2100  # three batches of 1024: 1024, 1024, 52
CREATOR = "clsxqq2xd0000vvp2k5itlhqj"


def explanation_row(index: int, description: str, source: str = SOURCE, n: int = 0) -> dict:
    """A row of the Explanation table as export-data.py writes it (its 13 columns)."""
    return {
        "id": f"cm{index:08d}x{n}",
        "modelId": MODEL,
        "layer": source,
        "index": str(index),
        "authorId": CREATOR,
        "description": description,
        "embedding": None,
        "typeName": "oai_token-act-pair",
        "explanationModelName": "gpt-4o-mini",
        "umap_x": None,
        "umap_y": None,
        "umap_cluster": None,
        "umap_log_feature_sparsity": None,
    }


def feature_row(index: int, max_act: float, frac: float, source: str = SOURCE) -> dict:
    """A row of the Neuron table as export-data.py writes it (a few of its list columns)."""
    return {
        "modelId": MODEL,
        "layer": source,
        "index": str(index),
        "maxActApprox": max_act,
        "creatorId": CREATOR,
        "frac_nonzero": frac,
        "freq_hist_data_bar_heights": [1, 2],
        "freq_hist_data_bar_values": [0.1, 0.2],
        "neg_str": ["foo"],
        "neg_values": [-0.5],
        "pos_str": ["bar"],
        "pos_values": [0.5],
        "sourceSetName": "gemmascope-res-16k",
        "topkCosSimIndices": [index, 0],
        "topkCosSimValues": [1.0, 0.1],
        "vector": [],
        "vectorLabel": None,
        "hookName": "blocks.20.hook_resid_post",
        "vectorDefaultSteerStrength": 10,
        "hasVector": False,
    }


def label_of(index: int) -> str:
    return f"feature {index} about {'cats' if index % 2 else 'the sea'}"


def max_act_of(index: int) -> float:
    return 0.0 if index % 7 == 0 else index / 64  # every seventh feature never fired


def write_batches(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(0, len(rows), 1024):
        text = "".join(json.dumps(row) + "\n" for row in rows[n : n + 1024])
        (folder / f"batch-{n // 1024}.jsonl.gz").write_bytes(gzip.compress(text.encode()))


def write_exports(root: Path) -> Path:
    """``v1/MODEL/SOURCE/`` as in the bucket: explanations/, a second explanations folder,
    features/, and activations/ (not JSON lines the reader could use: it must skip them)."""
    folder = root / "v1" / MODEL / SOURCE
    write_batches(
        folder / "explanations", [explanation_row(i, label_of(i)) for i in range(0, D_SAE, 1)]
    )
    write_batches(
        folder / "explanations-gpt-4o-mini",
        [explanation_row(i, f"other words for {i}", n=1) for i in range(0, D_SAE, 3)],
    )
    features = [feature_row(i, max_act_of(i), 0.0 if i % 7 == 0 else 0.001) for i in range(D_SAE)]
    write_batches(folder / "features", features)
    (folder / "activations").mkdir()
    (folder / "activations" / "batch-0.jsonl.gz").write_bytes(b"not gzip")
    (folder / "model.jsonl").write_text(json.dumps({"id": MODEL, "layers": 26}) + "\n")
    return folder


def write_sae(root: Path, neuronpedia_id: str | None = NP_ID, stats: bool = False) -> Path:
    """A SAELens SAE of width D_SAE whose cfg.json records ``neuronpedia_id`` (as SAELens
    configs of Neuronpedia's SAEs do, in v6 under metadata)."""
    sae = random_sae(8, D_SAE, layer=1)
    if not stats:
        sae = replace(sae, max_activation=None)
    folder = save_sae(sae, root / "sae")
    if neuronpedia_id:
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg["metadata"]["neuronpedia_id"] = neuronpedia_id
        (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def test_an_exports_folder_gives_labels_and_max_activations(tmp_path, capsys):
    exports = write_exports(tmp_path / "exports")
    sae_dir = write_sae(tmp_path)
    sae = load_sae(sae_dir)
    assert sae.neuronpedia_id == NP_ID and sae.max_activation is None

    result = import_neuronpedia(sae, exports.parent.parent.parent)  # the bucket's root
    assert (result.folder, result.labels, result.max_activations) == (sae_dir, D_SAE, D_SAE)
    assert result.stats_written and result.other_ids == {}

    loaded = load_sae(sae_dir)
    assert loaded.labels == {i: label_of(i) for i in range(D_SAE)}  # explanations/ first
    expected = torch.tensor([max_act_of(i) for i in range(D_SAE)], dtype=torch.float32)
    assert torch.equal(loaded.max_activation, expected)
    assert torch.equal(
        loaded.frequency, torch.tensor([0.0 if i % 7 == 0 else 0.001 for i in range(D_SAE)])
    )

    assert main(["sae-info", str(sae_dir), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["neuronpedia_id"] == NP_ID and facts["labels"] == D_SAE
    assert facts["labels_from"].startswith(f"Neuronpedia {NP_ID} ({exports.parent.parent.parent}")
    assert facts["max_activation_from"] == "Neuronpedia's maxActApprox"
    assert facts["dead_features"] == len(range(0, D_SAE, 7)) == 300
    assert facts["contexts"] == 0


def test_of_several_explanations_the_first_read_wins(tmp_path):
    folder = tmp_path / "x"
    rows = [explanation_row(5, "  first\x00 one\n\u202e "), explanation_row(5, "second", n=1)]
    rows += [explanation_row(6, ""), explanation_row(6, "after an empty one", n=1)]
    write_batches(folder / "explanations", rows)
    write_batches(folder / "explanations-claude", [explanation_row(5, "third")])
    data = read_neuronpedia(folder, NeuronpediaId(MODEL, SOURCE), 10)
    assert data.labels == {5: "first one", 6: "after an empty one"}
    assert data.explanations == 5


def test_labels_are_cleaned_and_cut():
    assert clean_label("a\tb\x1b[31m  c\u200b", 300) == "a b [31m c"
    long = clean_label("word " * 100, 300)
    assert len(long) == 300 and long.endswith("word…")


def test_rows_of_another_sae_are_refused_naming_the_ids(tmp_path):
    other = tmp_path / "other.jsonl"
    rows = [explanation_row(i, "x", source="12-gemmascope-res-16k") for i in range(3)]
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sae = load_sae(write_sae(tmp_path))
    with pytest.raises(NeuronpediaError) as caught:
        import_neuronpedia(sae, other)
    message = str(caught.value)
    assert f"no rows of Neuronpedia SAE {NP_ID}" in message
    assert "gemma-2-2b/12-gemmascope-res-16k (3 rows)" in message
    assert "--neuronpedia-id" in message
    # the user says which SAE the file is: its rows are taken
    result = import_neuronpedia(sae, other, neuronpedia_id="gemma-2-2b/12-gemmascope-res-16k")
    assert result.labels == 3 and not result.stats_written


def test_an_sae_without_an_id_needs_one(tmp_path):
    sae = load_sae(write_sae(tmp_path, neuronpedia_id=None))
    assert sae.neuronpedia_id is None
    with pytest.raises(NeuronpediaError, match="has no Neuronpedia id in its files"):
        import_neuronpedia(sae, tmp_path)
    with pytest.raises(NeuronpediaError, match="is not of the form MODEL_ID/SOURCE_ID"):
        import_neuronpedia(sae, tmp_path, neuronpedia_id="../../etc")


def test_an_index_past_the_width_is_refused(tmp_path):
    file = tmp_path / "e.jsonl"
    file.write_text(json.dumps(explanation_row(D_SAE, "too far")) + "\n")
    sae = load_sae(write_sae(tmp_path))
    with pytest.raises(NeuronpediaError, match=rf"index '{D_SAE}' is outside .* 0..{D_SAE - 1}"):
        import_neuronpedia(sae, file)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deep"),
        ("bad.jsonl.gz", b"not gzip at all", "Not a gzipped file"),
        ("bad.jsonl", b'{"index": "1"\n', "line 1: Expecting ',' delimiter"),
        ("list.jsonl", b"[1, 2]\n", "list.jsonl line 1 is a list, not an object"),
    ],
)
def test_unreadable_files_are_clear_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    sae = load_sae(write_sae(tmp_path))
    with pytest.raises(NeuronpediaError, match=message):
        import_neuronpedia(sae, tmp_path / name)


def test_a_saved_feature_api_answer_is_read(tmp_path):
    answer = feature_row(17, 4.25, 0.002) | {
        "explanations": [
            {"id": "e1", "description": "the word 'bridge'", "typeName": "oai_token-act-pair"},
            {"id": "e2", "description": "bridges"},
        ],
        "activations": [{"tokens": ["a"], "values": [1.0]}],
    }
    file = tmp_path / "17.json"
    file.write_text(json.dumps(answer))
    sae = load_sae(write_sae(tmp_path))
    result = import_neuronpedia(sae, file)
    assert (result.labels, result.max_activations, result.stats_written) == (1, 1, False)
    assert result.stats_note.startswith(f"max activations known for 1 of {D_SAE:,} features")
    assert load_sae(result.folder).labels == {17: "the word 'bridge'"}


def test_computed_statistics_are_never_replaced(tmp_path):
    exports = write_exports(tmp_path / "exports")
    sae_dir = write_sae(tmp_path, stats=True)
    computed = load_sae(sae_dir).max_activation
    result = import_neuronpedia(load_sae(sae_dir), exports)
    assert not result.stats_written and "kept" in result.stats_note
    assert torch.equal(load_sae(sae_dir).max_activation, computed)


def test_a_second_import_replaces_what_the_first_wrote_but_not_the_users_labels(tmp_path):
    exports = write_exports(tmp_path / "exports")
    sae_dir = write_sae(tmp_path)
    (sae_dir / "feature_labels.json").write_text(json.dumps({"1": "my own label"}))
    with pytest.raises(NeuronpediaError, match="exists and no Neuronpedia import wrote it"):
        import_neuronpedia(load_sae(sae_dir), exports)
    assert import_neuronpedia(load_sae(sae_dir), exports, replace_labels=True).stats_written
    again = import_neuronpedia(load_sae(sae_dir), exports)  # its own files: replaced
    assert again.stats_written and again.labels == D_SAE


def test_the_import_command(tmp_path, capsys):
    exports = write_exports(tmp_path / "exports")
    sae_dir = write_sae(tmp_path)
    out = tmp_path / "out"
    assert main(["labels", "import", str(exports), "--sae", str(sae_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{D_SAE:,} labels of Neuronpedia SAE {NP_ID} -> {out}" in printed
    assert json.loads((out / "feature_labels.json").read_text())["3"] == label_of(3)
    assert main(["labels", "import", str(tmp_path / "nope"), "--sae", str(sae_dir)]) == 1
    assert "is not a file or folder" in capsys.readouterr().err


# ---- the loaders record the id ----


def test_saelens_and_gemma_scope_record_the_neuronpedia_id(tmp_path):
    cfg = saelens_v6_cfg("standard", "blocks.3.hook_resid_post", neuronpedia_id=NP_ID)
    assert load_sae(write_saelens(tmp_path, cfg, saelens_tensors("standard")).path).neuronpedia_id
    canonical = write_gemma_scope(tmp_path / "a", layer=20)  # layer_20/width_16k/average_l0_71
    assert load_sae(canonical.path).neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"
    other_l0 = write_gemma_scope(tmp_path / "b", layer=5)  # layer 5's canonical L0 is 68
    assert load_sae(other_l0.path).neuronpedia_id is None


# ---- fetching ----


def bucket(root: Path, requests: list[str]) -> httpx.MockTransport:
    """The exports bucket over ``root`` (its v1/ folder): 200 with a file, 404 without (S3's
    NoSuchKey)."""

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(f"{request.method} {request.url.path}")
        file = root / request.url.path.lstrip("/")
        if file.is_file():
            return httpx.Response(200, content=file.read_bytes())
        return httpx.Response(404, text="<Error><Code>NoSuchKey</Code></Error>")

    return httpx.MockTransport(answer)


def test_fetch_downloads_every_batch_then_resumes(tmp_path):
    write_exports(tmp_path / "bucket")
    requests: list[str] = []
    client = httpx.Client(transport=bucket(tmp_path / "bucket", requests))
    base = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com/v1"
    folder = fetch_exports(
        NeuronpediaId(MODEL, SOURCE), tmp_path / "dl", D_SAE, client=client, base_url=base
    )
    assert folder == tmp_path / "dl" / MODEL / SOURCE
    assert requests == [
        f"GET /v1/{NP_ID}/explanations/batch-{n}.jsonl.gz"
        for n in range(4)  # 4th: 404, the end
    ] + [f"GET /v1/{NP_ID}/features/batch-{n}.jsonl.gz" for n in range(3)] + [
        f"HEAD /v1/{NP_ID}/features/batch-3.jsonl.gz"  # 3 = ceil(2100 / 1024): no more there?
    ]
    for kind in ("explanations", "features"):
        for n in range(3):
            name = f"{kind}/batch-{n}.jsonl.gz"
            source = tmp_path / "bucket" / "v1" / MODEL / SOURCE / name
            assert (folder / name).read_bytes() == source.read_bytes()
    requests.clear()
    fetch_exports(NeuronpediaId(MODEL, SOURCE), tmp_path / "dl", D_SAE, client=client)
    assert requests == [  # only the ends are asked
        f"GET /v1/{NP_ID}/explanations/batch-3.jsonl.gz",
        f"HEAD /v1/{NP_ID}/features/batch-3.jsonl.gz",
    ]
    sae = load_sae(write_sae(tmp_path))
    assert import_neuronpedia(sae, folder).labels == D_SAE


def test_fetch_of_an_id_the_bucket_lacks(tmp_path):
    client = httpx.Client(transport=bucket(tmp_path, []))
    with pytest.raises(NeuronpediaError, match="have no explanations for gemma-2-2b/nope"):
        fetch_exports(NeuronpediaId(MODEL, "nope"), tmp_path / "dl", 16, client=client)


def test_fetch_stops_at_the_bound_of_the_sae_width(tmp_path):
    folder = tmp_path / "v1" / MODEL / SOURCE
    write_batches(folder / "explanations", [explanation_row(i, "x") for i in range(16)])
    write_batches(folder / "features", [feature_row(i, 1.0, 0.1) for i in range(2048)])
    client = httpx.Client(transport=bucket(tmp_path, []))
    with pytest.raises(
        NeuronpediaError, match="features has more batches than the 1 that a features folder"
    ):
        fetch_exports(NeuronpediaId(MODEL, SOURCE), tmp_path / "dl", 16, client=client)


def test_an_unreachable_bucket_says_what_to_do_by_hand(tmp_path):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    with pytest.raises(NeuronpediaUnreachable) as caught:
        fetch_exports(
            NeuronpediaId(MODEL, SOURCE), tmp_path / "dl", 16, sae_ref="my/sae", client=client
        )
    message = str(caught.value)
    assert message.startswith("cannot reach Neuronpedia's exports")
    assert "Temporary failure in name resolution" in message
    assert f"aws s3 sync --no-sign-request s3://neuronpedia-datasets/v1/{NP_ID}/explanations/" in (
        message
    )
    target = tmp_path / "dl" / MODEL / SOURCE
    assert message.endswith(f"steering labels import {target} --sae my/sae")


def test_the_offline_hint_repeats_the_users_options(tmp_path):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    options = ["--neuronpedia-id", NP_ID, "--out", str(tmp_path / "my labels")]
    with pytest.raises(NeuronpediaUnreachable) as caught:
        fetch_exports(
            NeuronpediaId(MODEL, SOURCE),
            tmp_path / "dl",
            16,
            sae_ref="demo-sae",
            import_options=options,
            client=client,
        )
    target = tmp_path / "dl" / MODEL / SOURCE
    assert str(caught.value).endswith(
        f"steering labels import {target} --sae demo-sae --neuronpedia-id {NP_ID} "
        f"--out '{tmp_path}/my labels'"
    )


def test_the_fetch_command_over_a_loopback_server(tmp_path, capsys, monkeypatch):
    write_exports(tmp_path / "bucket")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "bucket"))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        monkeypatch.setattr(neuronpedia_fetch, "EXPORTS_URL", url)
        sae_dir = write_sae(tmp_path)
        argv = ["labels", "fetch", "--sae", str(sae_dir), "--download-dir", str(tmp_path / "dl")]
        assert main(argv) == 0
    finally:
        server.shutdown()
        thread.join(timeout=5)
    printed = capsys.readouterr().out
    assert f"fetched Neuronpedia's exports of {NP_ID}" in printed
    assert f"max activations of all {D_SAE:,} features written" in printed
    assert load_sae(sae_dir).labels[4] == label_of(4)
    # nothing listens there any more: the command says what to do by hand
    monkeypatch.setattr(neuronpedia_fetch, "EXPORTS_URL", "http://127.0.0.1:9/v1")
    argv[-1] = str(tmp_path / "dl2")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot reach Neuronpedia's exports" in err and "Traceback" not in err


# ---- merging, records, bad rows ----


def write_jsonl(file: Path, rows: list, raw_lines: tuple[str, ...] = ()) -> Path:
    file.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(raw_lines))
    return file


def api_answer(index: int, description: str) -> dict:
    return feature_row(index, 4.25, 0.002) | {"explanations": [{"description": description}]}


def test_a_second_import_merges_into_the_labels_the_first_wrote(tmp_path, capsys):
    exports = write_exports(tmp_path / "exports")
    sae_dir = write_sae(tmp_path)
    assert main(["labels", "import", str(exports), "--sae", str(sae_dir)]) == 0
    capsys.readouterr()
    answer = tmp_path / "api704.json"
    answer.write_text(json.dumps(api_answer(704, "the word 'bridge'")))
    assert main(["labels", "import", str(answer), "--sae", str(sae_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"1 label of Neuronpedia SAE {NP_ID} -> {sae_dir}: 0 added, 1 updated, 2,099 kept " in (
        printed
    )
    assert "(2,100 labels in feature_labels.json)" in printed
    labels = load_sae(sae_dir).labels
    assert len(labels) == D_SAE and labels[704] == "the word 'bridge'"
    assert labels[703] == label_of(703)
    # the statistics the first import wrote are still its own: the record keeps them
    record = json.loads((sae_dir / "neuronpedia_import.json").read_text())
    assert (record["labels"], record["max_activations"]) == (D_SAE, D_SAE)
    assert set(record["wrote"]) == {"feature_labels.json", "feature_stats.safetensors"}
    assert record["from"] == str(answer) and record["merged_from"] == [str(exports)]
    assert main(["sae-info", str(sae_dir), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["labels_from"].startswith(f"Neuronpedia {NP_ID} ({answer}")
    assert facts["max_activation_from"] == "Neuronpedia's maxActApprox"


def test_an_import_of_only_new_indices_adds_them(tmp_path):
    sae_dir = write_sae(tmp_path)
    first = write_jsonl(tmp_path / "a.jsonl", [explanation_row(i, f"a{i}") for i in range(3)])
    second = write_jsonl(tmp_path / "b.jsonl", [explanation_row(i, f"b{i}") for i in (2, 3, 4)])
    import_neuronpedia(load_sae(sae_dir), first)
    result = import_neuronpedia(load_sae(sae_dir), second)
    assert (result.added, result.updated, result.kept, result.labels_in_file) == (2, 1, 2, 5)
    assert load_sae(sae_dir).labels == {0: "a0", 1: "a1", 2: "b2", 3: "b3", 4: "b4"}
    replaced = import_neuronpedia(load_sae(sae_dir), first, replace_labels=True)  # no merge
    assert (replaced.added, replaced.kept, replaced.labels_in_file) == (3, 0, 3)
    assert load_sae(sae_dir).labels == {0: "a0", 1: "a1", 2: "a2"}


def test_an_import_without_labels_leaves_the_files_and_record_alone(tmp_path, capsys):
    sae_dir = write_sae(tmp_path)
    labels = write_jsonl(tmp_path / "e.jsonl", [explanation_row(i, f"e{i}") for i in range(4)])
    import_neuronpedia(load_sae(sae_dir), labels)
    record_file = sae_dir / "neuronpedia_import.json"
    before = record_file.read_bytes(), (sae_dir / "feature_labels.json").read_bytes()
    features = write_jsonl(tmp_path / "f.jsonl", [feature_row(i, 1.0, 0.1) for i in range(5)])
    assert main(["labels", "import", str(features), "--sae", str(sae_dir)]) == 0
    assert f"no labels of Neuronpedia SAE {NP_ID}: feature_labels.json left as it is" in (
        capsys.readouterr().out
    )
    assert (record_file.read_bytes(), (sae_dir / "feature_labels.json").read_bytes()) == before
    assert not (sae_dir / "feature_stats.safetensors").exists()
    assert main(["sae-info", str(sae_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels_from"].startswith(f"Neuronpedia {NP_ID}")
    new_out = tmp_path / "new"
    assert import_neuronpedia(load_sae(sae_dir), features, out=new_out).labels_in_file == 0
    assert not new_out.exists()  # nothing to write: no folder made
    more = write_jsonl(tmp_path / "m.jsonl", [explanation_row(9, "nine")])
    assert import_neuronpedia(load_sae(sae_dir), more).labels_in_file == 5  # still ours: merged


def test_an_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    sae_dir = write_sae(tmp_path)
    labels = write_jsonl(tmp_path / "e.jsonl", [explanation_row(1, "one")])
    out = tmp_path / "taken"
    out.write_text("x")
    argv = ["labels", "import", str(labels), "--sae", str(sae_dir), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"--out {out} is a file; give a folder" in err and "Traceback" not in err


def test_bad_json_names_the_files_line(tmp_path):
    file = write_jsonl(tmp_path / "bad.jsonl", [explanation_row(1, "one")], ('{"index": 2,\n',))
    with pytest.raises(NeuronpediaError) as caught:
        read_neuronpedia(file, NeuronpediaId(MODEL, SOURCE), 10)
    assert str(caught.value) == (
        f"{file} is not readable as Neuronpedia JSON lines: line 2: Expecting property name "
        "enclosed in double quotes (column 13)"
    )


def test_rows_with_bad_values_are_counted_and_named(tmp_path, capsys):
    rows = [explanation_row(1, "one"), explanation_row(2, "x") | {"description": 7}]
    rows += [explanation_row(3, "x") | {"description": None}, feature_row(4, -1.0, 0.1)]
    file = write_jsonl(tmp_path / "r.jsonl", rows)
    data = read_neuronpedia(file, NeuronpediaId(MODEL, SOURCE), 10)
    assert data.labels == {1: "one"} and data.max_activation == {}
    assert data.frequency == {4: 0.1}
    assert (data.bad_rows, data.first_bad) == (3, f"{file} line 2: description 7, not a string")
    sae_dir = write_sae(tmp_path)
    assert main(["labels", "import", str(file), "--sae", str(sae_dir)]) == 0
    assert (
        f"skipped bad values in 3 rows of this SAE; the first: {file} line 2: description 7, "
        "not a string"
    ) in capsys.readouterr().out

    only_bad = write_jsonl(tmp_path / "bad.jsonl", rows[1:3] + [feature_row(5, -2.0, 7.0)])
    with pytest.raises(NeuronpediaError) as caught:
        read_neuronpedia(only_bad, NeuronpediaId(MODEL, SOURCE), 10)
    assert str(caught.value) == (
        f"{only_bad}: every row of Neuronpedia SAE {NP_ID} has a bad value (3 rows; the first: "
        f"{only_bad} line 1: description 7, not a string)"
    )


def test_shipped_labels_are_cleaned_on_load(tmp_path):
    sae_dir = write_sae(tmp_path)
    shipped = {"1": "\x1b[31mred\x1b[0m  alert\u202e", "2": "x" * 400}
    (sae_dir / "feature_labels.json").write_text(json.dumps(shipped))
    labels = load_sae(sae_dir).labels
    assert labels[1] == "[31mred [0m alert"
    assert labels[2] == "x" * 299 + "…"
