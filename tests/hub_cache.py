"""A Hugging Face Hub cache written by the tests: repos laid out as huggingface_hub keeps them
(``models--owner--name/refs/main`` naming a commit, ``snapshots/<commit>/<files>``), so the
project's loaders find real Hub ids offline exactly as they do on a machine that downloaded them.

``tiny_gemma2_it`` writes a random Gemma 2 under ``google/gemma-2-2b-it`` with the real model's
width (d_model 2304) and enough layers for the shipped presets, and ``gemma_scope_sae`` writes a
random JumpReLU SAE in the Gemma Scope layout (``params.npz``: W_enc, W_dec, b_enc, b_dec,
threshold; google/gemma-scope-2b-pt-res) with the real d_sae (16384).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import transformers as tf
from tiny_tokenizers import byte_level_tokenizer

D_MODEL, D_SAE = 2304, 16384  # Gemma 2 2B's residual stream, Gemma Scope's 16k width
GEMMA_CHAT_TEMPLATE = (  # the layout of Gemma 2 IT's template (tokenizer_config.json)
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == "
    "'assistant' else message['role'] %}<start_of_turn>{{ role }}\n{{ message['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def snapshot(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in ``cache`` (created, with refs/main naming it)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tiny_gemma2_it(cache: Path, layers: int = 12, seed: int = 0) -> str:
    """A random Gemma 2 with Gemma's chat turns, cached as ``google/gemma-2-2b-it``."""
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
    )
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    config = tf.Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=D_MODEL,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=64,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, end_of_turn],
        pad_token_id=tokenizer.pad_token_id,
        # Untied: a random model with tied embeddings only repeats its last token, whatever the
        # residual stream holds, and a steering could not show in its replies.
        tie_word_embeddings=False,
    )
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    folder = snapshot(cache, "google/gemma-2-2b-it")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return "google/gemma-2-2b-it"


def gemma_scope_sae(cache: Path, layer: int, l0: int, fire: tuple[int, ...], seed: int = 0) -> str:
    """A random Gemma Scope JumpReLU SAE cached as
    ``google/gemma-scope-2b-pt-res/layer_{layer}/width_16k/average_l0_{l0}``; the features in
    ``fire`` have a zero threshold and a positive bias, so they fire on most tokens."""
    g = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(D_MODEL, D_SAE, generator=g) * 0.02
    b_enc = torch.randn(D_SAE, generator=g) * 0.1 - 0.5
    threshold = torch.rand(D_SAE, generator=g) * 0.5 + 0.1
    w_dec = torch.randn(D_SAE, D_MODEL, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    idx = torch.tensor(fire)
    b_enc[idx], threshold[idx] = 1.0, 0.0
    sub = f"layer_{layer}/width_16k/average_l0_{l0}"
    folder = snapshot(cache, "google/gemma-scope-2b-pt-res") / sub
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": torch.zeros(D_MODEL)}
    arrays["threshold"] = threshold
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in arrays.items()})
    return f"google/gemma-scope-2b-pt-res/{sub}"
