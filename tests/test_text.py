"""Chat templates to tokens, and streamed text that never splits a character or a stop string."""

from __future__ import annotations

import pytest
from tiny_models import tiny_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from steering.chat import ChatError, render_prompt
from steering.textstream import TextStream

GEMMA_LIKE_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (like GPT-2's) whose single tokens can hold part of a character."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["the golden gate bridge in the fog", "café au lait"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_template_bos_appears_once():
    tok = tiny_tokenizer()
    ids = render_prompt(tok, [{"role": "user", "content": "hello"}])
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids) == [
        "<bos>",
        "<|user|>",
        "hello",
        "<|end|>",
        "<|assistant|>",
    ]


def test_multi_turn_history():
    tok = tiny_tokenizer()
    history = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "i am fine"},
        {"role": "user", "content": "how are you"},
    ]
    tokens = tok.convert_ids_to_tokens(render_prompt(tok, history))
    assert tokens == [
        "<bos>",
        "<|user|>",
        "hello",
        "<|end|>",
        "<|assistant|>",
        "i",
        "am",
        "fine",
        "<|end|>",
        "<|user|>",
        "how",
        "are",
        "you",
        "<|end|>",
        "<|assistant|>",
    ]


def test_system_message_folded_when_the_template_rejects_it():
    tok = tiny_tokenizer()
    tok.chat_template = GEMMA_LIKE_TEMPLATE
    messages = [{"role": "system", "content": "the cat"}, {"role": "user", "content": "hello"}]
    tokens = tok.convert_ids_to_tokens(render_prompt(tok, messages))
    assert tokens == ["<bos>", "<|user|>", "the", "cat", "hello", "<|end|>", "<|assistant|>"]


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "at least one message"),
        (
            [{"role": "wizard", "content": "x"}],
            "role 'wizard' is not one of system, user, assistant",
        ),
        ([{"role": "user", "content": 3}], "content must be a string"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only come first"),
    ],
)
def test_malformed_histories(messages, message):
    with pytest.raises(ChatError, match=message):
        render_prompt(tiny_tokenizer(), messages)


def test_multibyte_characters_are_never_split():
    tok = byte_level_tokenizer()
    text = "café 🌉 in the fog"
    ids = tok(text)["input_ids"]
    assert any("\ufffd" in tok.decode(ids[: i + 1]) for i in range(len(ids)))  # the hazard is real
    stream = TextStream(tok)
    deltas = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_stop_string_split_across_tokens_is_held_back_and_cut():
    tok = tiny_tokenizer()
    ids = tok("hello the golden gate bridge is big")["input_ids"]
    stream = TextStream(tok, stop=("golden gate",))
    deltas = []
    for i in ids:
        deltas.append(stream.push(i))
        if stream.stopped:
            break
    assert stream.stopped
    assert "".join(deltas) == "hello the "
    assert not any("golden" in d for d in deltas)  # held back as a possible stop, then cut
