"""Tiny random models written as Hugging Face folders that vLLM's CPU backend can load (its
attention needs head sizes of 32 to 512), with random SAEs of every kind at known hook points."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from steering.models import load_model

HIDDEN = 64
_COMMON = dict(
    hidden_size=HIDDEN,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=128,
    max_position_embeddings=256,
)

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**_COMMON),
    "mistral": lambda: tf.MistralConfig(**_COMMON, sliding_window=None),
    "qwen2": lambda: tf.Qwen2Config(**_COMMON),
    "qwen3": lambda: tf.Qwen3Config(**_COMMON, head_dim=32),
    "gemma2": lambda: tf.Gemma2Config(**_COMMON, head_dim=32, sliding_window=64),
    "gemma3": lambda: tf.Gemma3TextConfig(**_COMMON, head_dim=32, sliding_window=64),
    "phi3": lambda: tf.Phi3Config(**_COMMON, pad_token_id=0),
    "gpt2": lambda: tf.GPT2Config(
        n_embd=HIDDEN, n_layer=4, n_head=2, vocab_size=128, n_positions=256
    ),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**{**_COMMON, "num_key_value_heads": 2}),
}


def write_model(arch: str, folder: Path, seed: int = 0, **config_changes) -> Path:
    """A random ``arch`` model, float32, with the tests' word-level tokenizer, saved in
    ``folder`` (safetensors, config.json, tokenizer files)."""
    from tiny_models import tiny_tokenizer

    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    for name, value in config_changes.items():
        setattr(config, name, value)
    tokenizer = tiny_tokenizer()
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load(folder: Path):
    """The transformers side of the same weights (eager attention, float32)."""
    return load_model(str(folder), dtype="float32")
