"""Tiny random models of real architectures, built from configs (no downloads)."""

from __future__ import annotations

import torch
import transformers as tf

from steering.bench.setup import build_tokenizer

HIDDEN = 64
LAYERS = 4

_COMMON = dict(
    hidden_size=HIDDEN,
    intermediate_size=128,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
)

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**_COMMON),
    "mistral": lambda: tf.MistralConfig(**_COMMON, sliding_window=None),
    "gemma2": lambda: tf.Gemma2Config(**_COMMON, head_dim=16, sliding_window=64),
    "gemma3": lambda: tf.Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=64),
    "qwen2": lambda: tf.Qwen2Config(**_COMMON),
    "qwen3": lambda: tf.Qwen3Config(**_COMMON, head_dim=16),
    "phi3": lambda: tf.Phi3Config(**_COMMON, pad_token_id=0),
    "gpt2": lambda: tf.GPT2Config(
        n_embd=HIDDEN, n_layer=LAYERS, n_head=4, vocab_size=128, n_positions=256
    ),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**_COMMON),
}

# The architectures every steering invariant is checked on.
CORE = ("llama", "gemma2", "qwen2", "gpt2")


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config._attn_implementation = "eager"  # deterministic and identical across batch sizes
    model = tf.AutoModelForCausalLM.from_config(config)
    return model.eval()


def tiny_gemma3_multimodal(seed: int = 0) -> torch.nn.Module:
    """Gemma 3 with a vision tower: its text decoder is nested one level deeper."""
    torch.manual_seed(seed)
    text = dict(_COMMON, head_dim=16, sliding_window=64)
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    return tf.Gemma3ForConditionalGeneration(config).eval()


def tiny_tokenizer():
    """A word-level fast tokenizer over a small vocabulary (the model's 128 ids), with a chat
    template: the benchmark's tokenizer builder with the tests' own words."""
    words = "the a bridge golden gate cat dog sea is big red fog san francisco hello".split()
    return build_tokenizer(128, words + "how are you i am fine".split())
