"""What the benchmark runs on: a random model, tokenizer and SAE built from configs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..hookpoint import HookPoint
from ..models import SteerableModel, find_layers
from ..plan import FeatureEdit, SteeringPlan
from ..sae import SAE
from ..sampling import SamplingParams

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = (
    "the a bridge golden gate cat dog sea is big red fog san francisco hello how are you i am "
    "fine what do think about tell me story of city by bay in morning light"
).split()


@dataclass(frozen=True)
class Settings:
    """What to build and how long to measure."""

    hidden: int = 512
    layers: int = 8
    heads: int = 8
    intermediate: int = 1376
    vocab: int = 32000
    sae_width: int = 16384
    new_tokens: int = 96  # per reply, for the batch-1 comparisons
    users_new_tokens: int = 64  # per reply, for the 8-user comparison
    repeats: int = 9
    users_repeats: int = 5
    warmup_tokens: int = 8
    prompt_words: int = 16
    users: int = 8
    hook_prefill_tokens: int = 32  # T of the (1, T, d) hook measurement
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def quick(cls, **overrides: Any) -> Settings:
        """A ~15 s smoke run: short replies, two repeats."""
        base = dict(new_tokens=16, users_new_tokens=12, repeats=2, users_repeats=1, warmup_tokens=2)
        return cls(**{**base, **overrides})

    @property
    def steer_layer(self) -> int:
        return self.layers // 2


# ---- building the model, tokenizer, SAE and prompts ----


def build_tokenizer(vocab: int, words: Sequence[str] = WORDS) -> Any:
    """A word-level fast tokenizer of ``vocab`` ids: the special tokens, ``words``, then
    filler words ``w0``, ``w1``, ...; with a simple chat template. Builds offline."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = list(dict.fromkeys(words))
    words += [f"w{i}" for i in range(vocab - len(SPECIALS) - len(words))]
    table = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(table, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
        "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    return fast


def build_model(s: Settings) -> SteerableModel:
    """A random-weights Llama from a config (fp32), with the bench tokenizer."""
    import transformers as tf

    torch.manual_seed(s.seed)
    config = tf.LlamaConfig(
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        intermediate_size=s.intermediate,
        vocab_size=s.vocab,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = tf.AutoModelForCausalLM.from_config(config).to(s.device).eval()
    layers, template = find_layers(model)
    return SteerableModel(model, build_tokenizer(s.vocab), layers, template)


def build_sae(d_in: int, d_sae: int, layer: int, seed: int = 0) -> SAE:
    """A random ReLU SAE at ``layer``'s output, with max activations (as in the test fixtures)."""
    g = torch.Generator().manual_seed(seed)
    return SAE(
        W_enc=torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        b_enc=torch.randn(d_sae, generator=g) * 0.1,
        W_dec=torch.randn(d_sae, d_in, generator=g) / d_in**0.5,
        b_dec=torch.randn(d_in, generator=g) * 0.1,
        hook=HookPoint(layer),
        max_activation=torch.rand(d_sae, generator=g) * 5 + 1,
        format="bench",
        source=f"random-{seed}",
    )


def prompt_text(n_words: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n_words))


def clamp_plan(sae: SAE, n_features: int, first: int = 0, value: float = 8.0) -> SteeringPlan:
    step = max(1, sae.d_sae // 64)
    features = [(first + i * step) % sae.d_sae for i in range(n_features)]
    return SteeringPlan(tuple(FeatureEdit(sae, f, "clamp", value) for f in features))


def fixed_length(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_new_tokens=n, min_new_tokens=n)
