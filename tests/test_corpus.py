"""Corpora for ``sae-stats``: text files, JSONL (text or chats), folders, the demo corpus, and
clear errors for everything else."""

from __future__ import annotations

import json
import sys

import pytest
from tiny_models import tiny_tokenizer

from steering.demo import SEED
from steering.demo.corpus import make_corpus
from steering.demo.tokenizer import dialogue_text
from steering.features.corpus import (
    Corpus,
    CorpusError,
    Document,
    demo_corpus,
    open_corpus,
    sequences,
    token_ids,
)


def texts(corpus) -> list[str | None]:
    return [d.text for d in corpus.documents()]


def test_a_text_file_is_one_document_per_paragraph(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsame paragraph\n\n\n  \nsecond\n\nthird\n")
    corpus = open_corpus(str(path))
    assert texts(corpus) == ["first line\nsame paragraph", "second", "third"]
    assert texts(corpus) == texts(corpus)  # documents() starts again
    assert corpus.description == "file a.txt"


def test_jsonl_reads_a_field_or_a_chat(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [
        {"text": "hello there", "id": 1},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = list(open_corpus(str(path)).documents())
    assert docs[0] == Document(text="hello there")
    assert docs[1].messages == tuple(rows[1]["messages"])
    other = tmp_path / "b.jsonl"
    other.write_text(json.dumps({"body": "x"}) + "\n")
    assert texts(open_corpus(str(other), text_field="body")) == ["x"]


def test_a_chat_is_rendered_with_the_chat_template():
    tok = tiny_tokenizer()
    messages = ({"role": "user", "content": "hello"}, {"role": "assistant", "content": "fine"})
    ids = token_ids(tok, Document(messages=messages))
    assert tok.convert_ids_to_tokens(ids) == [
        "<bos>", "<|user|>", "hello", "<|end|>", "<|assistant|>", "fine", "<|end|>",
    ]  # fmt: skip


def test_a_folder_reads_every_text_and_jsonl_file_below_it_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("three")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n")
    (tmp_path / "b" / "m.jsonl").write_text(json.dumps({"text": "two"}) + "\n")
    (tmp_path / "notes.md").write_text("ignored")
    corpus = open_corpus(str(tmp_path))
    assert texts(corpus) == ["one", "two", "three"]
    assert "3 files" in corpus.description


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"text": "ok"}\n{"text": oops}\n', "bad.jsonl, line 2: not JSON"),
        ('{"text": "ok"}\n\n{"title": "x"}\n', "bad.jsonl, line 3: no text field 'text'"),
        ('{"text": 5}\n', "bad.jsonl, line 1: field 'text' is a int, not a string"),
        ("[1, 2]\n", "bad.jsonl, line 1: expected a JSON object, got list"),
        ('{"messages": [{"role": "user"}]}\n', "bad.jsonl, line 1: 'messages' must be"),
    ],
)
def test_bad_jsonl_lines_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CorpusError, match=message):
        list(open_corpus(str(path)).documents())


def test_missing_empty_and_unknown_corpora_are_refused(tmp_path):
    with pytest.raises(CorpusError, match="no .txt or .jsonl files"):
        open_corpus(str(tmp_path))
    with pytest.raises(CorpusError, match="no such file or folder"):
        open_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CorpusError, match="must be .txt or .jsonl"):
        open_corpus(str(tmp_path / "x.csv"))


def test_a_dataset_id_without_the_datasets_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(CorpusError, match=r"pip install 'steering\[datasets\]'") as raised:
        open_corpus("HuggingFaceFW/fineweb")
    assert "'HuggingFaceFW/fineweb' is not a file or folder" in str(raised.value)


def test_a_dataset_that_cannot_be_loaded_names_it(monkeypatch):
    class Offline:
        @staticmethod
        def load_dataset(name, split, streaming):
            assert streaming is True
            raise ConnectionError("the Hub is unreachable")

    monkeypatch.setitem(sys.modules, "datasets", Offline)
    with pytest.raises(CorpusError, match="'owner/data' .split 'val'.: ConnectionError: the Hub"):
        open_corpus("owner/data", split="val")


def test_dataset_rows_are_documents(monkeypatch):
    class Rows:
        @staticmethod
        def load_dataset(name, split, streaming):
            return iter([{"content": "a b"}, {"content": None}])

    monkeypatch.setitem(sys.modules, "datasets", Rows)
    corpus = open_corpus("owner/data", text_field="content")
    with pytest.raises(CorpusError, match="owner/data, row 1: no text field 'content'"):
        list(corpus.documents())
    assert corpus.description == "dataset owner/data (train)"


def test_sequences_cut_long_documents_and_repeat_the_bos():
    tok = tiny_tokenizer()
    corpus = Corpus(
        "t",
        lambda: iter([Document(text="<bos> " + " ".join(["cat"] * 7)), Document(text="dog sea")]),
    )
    cat, dog, sea, bos = tok.convert_tokens_to_ids(["cat", "dog", "sea", "<bos>"])
    seqs = list(sequences(corpus, tok, 4))
    assert seqs == [[bos, cat, cat, cat], [bos, cat, cat, cat], [bos, cat], [dog, sea]]
    assert list(sequences(corpus, tok, 4, skip=2)) == seqs[2:]
    with pytest.raises(CorpusError, match="context size 1 is too small"):
        list(sequences(corpus, tok, 1))


def test_the_demo_corpus_is_the_demo_sae_training_text():
    from steering.demo.train_sae import SAE_DIALOGUES

    corpus = demo_corpus()
    chats = make_corpus(SAE_DIALOGUES, SEED + 100)
    assert [d.text for d in corpus.documents()] == [dialogue_text(c.turns) for c in chats]
    assert chats[0].turns and next(corpus.documents()).text.startswith("<bos>")
    assert corpus.add_special_tokens is False
