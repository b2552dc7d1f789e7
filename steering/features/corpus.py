"""Text corpora for feature statistics: files, folders, Hugging Face datasets, the demo corpus.

``open_corpus(source)`` reads:

- a ``.txt`` file: one document per paragraph (lines up to a blank line, joined with newlines);
- a ``.jsonl`` file: one JSON object per line, its ``text_field`` (default ``"text"``) a string,
  or a ``"messages"`` list of ``{"role", "content"}`` rendered with the model's chat template;
  blank lines are skipped;
- a folder: every ``.txt`` and ``.jsonl`` file below it, in sorted path order;
- ``demo``: the chats the shipped demo SAE's statistics were computed on
  (``steering.demo.train_sae``: ``make_corpus(SAE_DIALOGUES, SEED + 100)`` rendered with
  ``dialogue_text``, BOS included, tokenized without adding special tokens);
- anything else is read as a Hugging Face dataset id, streamed with
  ``datasets.load_dataset(id, split=split, streaming=True)`` (the optional ``datasets`` extra).

Documents come in a fixed order, so a run can stop and resume by counting them. ``sequences``
tokenizes them and cuts each into sequences of at most ``context_size`` tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SteeringError

DEMO = "demo"
SUFFIXES = (".txt", ".jsonl")
MAX_LINE_CHARS = 10_000_000  # one JSONL line (a document) at most
PIECE_CHARS = 100_000  # characters of a document tokenized at once (~25k tokens)
_WORD_START = re.compile(r"\s(?=\S)")  # the whitespace before a word: where a piece is cut


class CorpusError(SteeringError):
    """A corpus that cannot be read: missing, empty, a bad line or field."""


@dataclass(frozen=True)
class Document:
    """One document: a ``text``, or a chat (``messages``) rendered with the chat template."""

    text: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class Corpus:
    """Documents in a fixed order (``documents()`` starts again on each call); ``description``
    names the source for the statistics' metadata; ``add_special_tokens``: whether a text is
    tokenized with the special tokens the tokenizer adds (its BOS)."""

    description: str
    documents: Callable[[], Iterator[Document]]
    add_special_tokens: bool = True


def open_corpus(source: str, *, text_field: str = "text", split: str = "train") -> Corpus:
    """The corpus ``source`` names (see the module docstring). Raises ``CorpusError`` for a
    missing path, a folder without .txt/.jsonl files, or a dataset that cannot be loaded."""
    if source == DEMO:
        return demo_corpus()
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise CorpusError(f"{source}: the folder holds no .txt or .jsonl files")
        return Corpus(
            f"folder {path.name} ({len(files)} files)",
            lambda: (d for f in files for d in read_file(f, text_field)),
        )
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise CorpusError(f"{source}: a corpus file must be .txt or .jsonl")
        return Corpus(f"file {path.name}", lambda: read_file(path, text_field))
    if source.startswith(("/", ".", "~")) or source.endswith(SUFFIXES):
        raise CorpusError(f"{source}: no such file or folder")
    return hf_corpus(source, text_field=text_field, split=split)


def read_file(path: Path, text_field: str = "text") -> Iterator[Document]:
    """The documents of one .txt or .jsonl file (see the module docstring)."""
    if path.suffix == ".txt":
        yield from _paragraphs(path)
        return
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            raise CorpusError(f"{path.name}, line {number}: longer than {MAX_LINE_CHARS} chars")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path.name}, line {number}: not JSON ({e.msg})") from None
        yield document(row, text_field, f"{path.name}, line {number}")


def document(row: Any, text_field: str, where: str) -> Document:
    """A JSONL line's or dataset row's document: its ``text_field`` string, else its
    ``messages`` chat. Raises ``CorpusError`` naming ``where`` and the fields it has."""
    if not isinstance(row, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(row).__name__}")
    text = row.get(text_field)
    if isinstance(text, str):
        return Document(text=text)
    messages = row.get("messages")
    if text is None and isinstance(messages, list):
        if not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise CorpusError(f"{where}: 'messages' must be a list of {{role, content}} strings")
        return Document(messages=tuple(messages))
    if text is not None:
        raise CorpusError(f"{where}: field {text_field!r} is a {type(text).__name__}, not a string")
    fields = ", ".join(sorted(map(str, row))) or "none"
    raise CorpusError(
        f"{where}: no text field {text_field!r} and no 'messages' (fields: {fields}); "
        "choose the field with --text-field"
    )


def _lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file. Raises ``CorpusError`` naming the file and the byte offset
    of the first byte that is not UTF-8 (a binary file, or another encoding)."""
    offset = 0
    with path.open("rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}: not UTF-8 text (byte {offset + e.start}: {e.reason}); "
                    "convert it to UTF-8 (e.g. iconv -t UTF-8)"
                ) from None
            offset += len(raw)
            yield line.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it


def _paragraphs(path: Path) -> Iterator[Document]:
    lines: list[str] = []
    for line in _lines(path):
        if line.strip():
            lines.append(line.rstrip("\n"))
        elif lines:
            yield Document(text="\n".join(lines))
            lines = []
    if lines:
        yield Document(text="\n".join(lines))


def demo_corpus() -> Corpus:
    """The chats of the demo SAE's statistics (see the module docstring)."""
    import random

    from ..demo import SEED
    from ..demo.corpus import make_dialogue, normalise
    from ..demo.tokenizer import dialogue_text
    from ..demo.train_sae import SAE_DIALOGUES

    def documents() -> Iterator[Document]:  # make_corpus's chats, one at a time
        rng = random.Random(SEED + 100)
        for _ in range(SAE_DIALOGUES):
            yield Document(text=dialogue_text(normalise(make_dialogue(rng)).turns))

    return Corpus(f"demo ({SAE_DIALOGUES} chats, seed {SEED + 100})", documents, False)


def hf_corpus(dataset_id: str, *, text_field: str = "text", split: str = "train") -> Corpus:
    """A Hugging Face dataset, streamed (rows in the dataset's order). Raises ``CorpusError``
    when ``datasets`` is not installed or the dataset cannot be loaded."""
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"{dataset_id!r} is not a file or folder; to read it as a Hugging Face dataset, "
            "install the datasets extra: pip install 'steering[datasets]'"
        ) from None
    try:
        rows = datasets.load_dataset(dataset_id, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 - offline, unknown id, bad split: all say the same
        raise CorpusError(
            f"could not load the Hugging Face dataset {dataset_id!r} (split {split!r}): "
            f"{type(e).__name__}: {e}"
        ) from None

    def documents() -> Iterator[Document]:
        for number, row in enumerate(rows):
            yield document(row, text_field, f"{dataset_id}, row {number}")

    return Corpus(f"dataset {dataset_id} ({split})", documents)


def text_pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``size`` characters (``"".join`` gives it
    back), each but the last cut just before the whitespace that precedes a word (where a
    byte-level BPE or a whitespace-split tokenizer starts a token anyway); a run of more than
    ``size`` characters without such a place is cut at ``size``."""
    start = 0
    while len(text) - start > size:
        end = start + size
        cut = None
        for match in _WORD_START.finditer(text, start + 1, end + 1):
            cut = match.start()
        cut = cut or end
        yield text[start:cut]
        start = cut
    yield text[start:]


def splits_cleanly(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` gives the same ids for a text as for its ``text_pieces`` joined
    (False for a SentencePiece tokenizer that adds a prefix space to every text: then a
    document is tokenized whole)."""
    probe = ("hello world, the cat.", " the dog\n\n is big")
    whole = tokenizer("".join(probe), add_special_tokens=False, verbose=False)["input_ids"]
    parts = [tokenizer(p, add_special_tokens=False, verbose=False)["input_ids"] for p in probe]
    return list(whole) == [t for ids in parts for t in ids]


def token_pieces(
    tokenizer: Any, doc: Document, add_special_tokens: bool = True, piece_chars: int | None = None
) -> Iterator[list[int]]:
    """The token ids of ``doc`` in pieces, ``text_pieces`` of ``piece_chars`` characters each
    (None: the whole text at once), so that a long document never holds more than one piece's
    tokenization in memory: a text as the tokenizer reads it (special tokens on the first
    piece only), a chat as its chat template renders it (tokenized without adding special
    tokens: the template writes them). The length warning of transformers is left out: the
    caller cuts the ids into sequences itself."""
    if doc.text is not None:
        text, special = doc.text, add_special_tokens
    else:
        if getattr(tokenizer, "chat_template", None) is None:
            raise CorpusError("a 'messages' document needs a tokenizer with a chat template")
        text = tokenizer.apply_chat_template(list(doc.messages or ()), tokenize=False)
        special = False
    pieces = text_pieces(text, piece_chars) if piece_chars else iter([text])
    for i, piece in enumerate(pieces):
        ids = tokenizer(piece, add_special_tokens=special and i == 0, verbose=False)
        yield list(ids["input_ids"])


def token_ids(tokenizer: Any, doc: Document, add_special_tokens: bool = True) -> list[int]:
    """The token ids of ``doc``, tokenized at once (see ``token_pieces``)."""
    return next(token_pieces(tokenizer, doc, add_special_tokens))


def sequences(
    corpus: Corpus,
    tokenizer: Any,
    context_size: int,
    skip: int = 0,
    piece_chars: int = PIECE_CHARS,
) -> Iterator[list[int]]:
    """The corpus as token sequences of at most ``context_size`` ids, after the first ``skip``.

    A longer document is cut into consecutive pieces; when the tokenizer starts a document with
    its BOS, every piece starts with it (as SAELens' training contexts do). A document is
    tokenized ``piece_chars`` characters at a time (when the tokenizer ``splits_cleanly``), and
    only as far as the sequences are read: memory does not grow with a document's length.
    """
    if context_size < 2:
        raise CorpusError(f"context size {context_size} must be 2 or more")
    bos = getattr(tokenizer, "bos_token_id", None)
    chars = piece_chars if splits_cleanly(tokenizer) else None
    count = 0
    for doc in corpus.documents():
        head: list[int] | None = None
        body: list[int] = []
        for ids in token_pieces(tokenizer, doc, corpus.add_special_tokens, chars):
            if head is None:
                head = ids[:1] if ids and bos is not None and ids[0] == bos else []
                ids = ids[len(head) :]
            body.extend(ids)
            step = context_size - len(head)
            while len(body) > step:  # the last piece may still grow: keep it
                if count >= skip:
                    yield head + body[:step]
                count += 1
                del body[:step]
        if body:
            if count >= skip:
                yield (head or []) + body
            count += 1
