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
    splits_cleanly,
    text_pieces,
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
    with pytest.raises(CorpusError, match="context size 1 must be 2 or more"):
        list(sequences(corpus, tok, 1))


def test_the_demo_corpus_is_the_demo_sae_training_text():
    from steering.demo.train_sae import SAE_DIALOGUES

    corpus = demo_corpus()
    chats = make_corpus(SAE_DIALOGUES, SEED + 100)
    assert [d.text for d in corpus.documents()] == [dialogue_text(c.turns) for c in chats]
    assert chats[0].turns and next(corpus.documents()).text.startswith("<bos>")
    assert corpus.add_special_tokens is False


def test_text_pieces_join_to_the_text_and_cut_before_a_word():
    text = "the cat  sat\n\n on a mat"
    assert list(text_pieces(text, 10)) == ["the cat ", " sat\n\n on", " a mat"]
    assert list(text_pieces("abcdefghij kl", 4)) == ["abcd", "efgh", "ij", " kl"]
    assert list(text_pieces("short", 10)) == ["short"]
    for size in (1, 3, 7, 50):
        assert "".join(text_pieces(text, size)) == text


def test_a_long_document_is_tokenized_in_pieces_to_the_same_sequences():
    from tiny_tokenizers import byte_level_tokenizer

    from steering.features.corpus import token_pieces

    rng = __import__("random").Random(3)
    words = "the golden gate bridge in the fog café au lait\n".split(" ")
    text = " ".join(rng.choice(words) for _ in range(400))
    corpus = Corpus("t", lambda: iter([Document(text=text), Document(text="fog")]))
    for tok in (tiny_tokenizer(), byte_level_tokenizer()):
        assert splits_cleanly(tok)
        whole = list(sequences(corpus, tok, 16, piece_chars=10**9))
        for chars in (16, 37, 200):  # room for a word start in every piece
            assert list(sequences(corpus, tok, 16, piece_chars=chars)) == whole
            assert list(sequences(corpus, tok, 16, skip=7, piece_chars=chars)) == whole[7:]
        pieces = list(token_pieces(tok, Document(text=text), True, 100))
        assert len(pieces) > 15 and [t for p in pieces for t in p] == token_ids(
            tok, Document(text=text)
        )


def test_a_tokenizer_that_prefixes_every_text_reads_documents_whole():
    """A SentencePiece-style tokenizer that adds a prefix space to every text (as Llama 2's
    does) would split a word at each piece: its documents are tokenized whole."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        w: i for i, w in enumerate(["<unk>", "\u2581", "\u2581the", "\u2581cat", "\u2581\u2581"])
    }
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert not splits_cleanly(fast)
    text = " ".join(["the cat"] * 30)
    corpus = Corpus("t", lambda: iter([Document(text=text)]))
    seqs = list(sequences(corpus, fast, 8, piece_chars=10))
    assert [t for s in seqs for t in s] == [2, 3] * 30


@pytest.mark.parametrize("name", ["c.txt", "c.jsonl", "folder/sub/c.txt"])
def test_a_file_that_is_not_utf8_names_the_file_and_the_byte(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    good = '{"text": "caf\u00e9"}\n' if name.endswith(".jsonl") else "caf\u00e9\r\n\r\n"
    path.write_bytes(good.encode() + b'{"text": "na\xefve"}\n')  # a Latin-1 byte
    source = tmp_path / "folder" if name.startswith("folder") else path
    corpus = open_corpus(str(source))
    offset = len(good.encode()) + len(b'{"text": "na')
    with pytest.raises(CorpusError) as e:
        list(corpus.documents())
    assert str(e.value) == (
        f"{path}: not UTF-8 text (byte {offset}: invalid continuation byte); "
        "convert it to UTF-8 (e.g. iconv -t UTF-8)"
    )
    path.write_bytes(good.encode())
    assert [d.text for d in corpus.documents()] == ["caf\u00e9"]  # CRLF read as text mode does


def test_no_length_warning_of_transformers_when_cutting_sequences(caplog):
    tok = tiny_tokenizer()
    tok.model_max_length = 4  # the documents are longer: sequences() cuts them itself
    corpus = Corpus("t", lambda: iter([Document(text=" ".join(["cat"] * 9))]))
    with caplog.at_level("WARNING"):
        assert [len(s) for s in sequences(corpus, tok, 4)] == [4, 4, 1]
        assert [r.getMessage() for r in caplog.records] == []
        tok("cat " * 9)  # what transformers says otherwise
    assert "Token indices sequence length" in caplog.records[0].getMessage()
