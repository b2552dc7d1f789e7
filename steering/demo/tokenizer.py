"""The demo world's word-level tokenizer, saved as a transformers fast tokenizer.

The normaliser and pre-tokeniser write free text the way the corpus is written (lower-case,
punctuation split off), so "What should I cook tonight?" becomes "what should i cook <unk> ?".
Turns are marked by special tokens and end with ``<eot>``, which is also the EOS.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

PAD, UNK, BOS, EOT = "<pad>", "<unk>", "<bos>", "<eot>"
ROLE_TOKENS = ("<system>", "<user>", "<assistant>")
SPECIAL_TOKENS = (PAD, UNK, BOS, EOT, *ROLE_TOKENS)
CONTEXT = 256  # positions: a chat of several turns fits

# Rendered like real chat models' templates: a BOS, then "<role> text <eot>" per turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<' + message['role'] + '> ' + message['content'] + ' <eot> ' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)


def build_tokenizer(texts: Iterable[str]) -> Tokenizer:
    """A word-level tokenizer whose vocabulary is every word in ``texts``, in order of count."""
    tokenizer = Tokenizer(WordLevel({UNK: 0}, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace("’", "'")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=False),
        ]
    )
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text))
    words = [w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))]
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    model = WordLevel(vocab, unk_token=UNK)
    tokenizer.model = model
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def to_transformers(tokenizer: Tokenizer) -> Any:
    """The tokenizer as transformers' fast tokenizer, with its chat template and EOS."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOT,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        clean_up_tokenization_spaces=False,
        model_max_length=CONTEXT,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer: Tokenizer, folder: Path) -> Any:
    fast = to_transformers(tokenizer)
    fast.save_pretrained(folder)
    return fast


def dialogue_text(turns: Iterable[tuple[str, str]]) -> str:
    """One training chat of (user, assistant) turns, exactly as the chat template renders it
    plus the last reply."""
    return BOS + " ".join(f"<user> {u} {EOT} <assistant> {a} {EOT}" for u, a in turns)
