"""Small tokenizers of each family the server supports, trained here (no downloads).

- ``byte_level_tokenizer``: byte-level BPE with a ByteLevel decoder (GPT-2, Llama 3, Qwen).
- ``metaspace_tokenizer``: Unigram with a Metaspace pre-tokenizer and decoder (SentencePiece).
- ``byte_fallback_tokenizer``: BPE over "▁"-marked words with byte fallback and Llama 2's decoder
  (Replace "▁" → " ", ByteFallback, Fuse, Strip one leading space); characters it never saw in
  training ("é", "日本", emoji) come out as <0xNN> byte tokens.
The word-level family is ``tiny_models.tiny_tokenizer``.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
TEXT = [
    "the golden gate bridge is big and red in the fog",
    "the cat is big the dog is red hello how are you",
    "café au lait, crème brûlée et thé à la française",
    "日本 の 橋 は 大きい 日本語",
    "🌉 in the fog 🌁 over the bay 🐱",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE whose single tokens can hold part of a character."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIALS,
    )
    tok.train_from_iterator(TEXT, trainer)
    return _wrap(tok)


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style Unigram: "▁" marks a space, the decoder drops the first one."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=SPECIALS, unk_token="<unk>")
    tok.train_from_iterator(TEXT, trainer)
    return _wrap(tok)


def byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """Llama 2 style: BPE with <0xNN> byte tokens for characters outside its vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=150, special_tokens=SPECIALS, limit_alphabet=40)
    tok.train_from_iterator([line for line in TEXT if line.isascii()], trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["model"]["unk_token"] = "<unk>"
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return _wrap(tok)
