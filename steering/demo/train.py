"""Train the demo world's chat model: a small LlamaForCausalLM, on CPU, from the seeded corpus.

``python -m steering.demo.train`` writes the tokenizer and model to ``files/model``. A fixed
number of steps (not a time budget) keeps the result the same for the same seed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import MODEL_DIR, SEED
from .corpus import make_corpus
from .tokenizer import CONTEXT, build_tokenizer, dialogue_text, save_tokenizer

CORPUS_SIZE = 60_000
BATCH = 64
STEPS = 1500
LR = 3e-3
WARMUP = 60
UNK_RATE = 0.04  # user words replaced by <unk>, so unknown words in free text read naturally
MODEL_SHAPE = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=512,
    max_position_embeddings=CONTEXT,
)


def encode_corpus(tokenizer, dialogues) -> list[list[int]]:  # type: ignore[no-untyped-def]
    texts = [dialogue_text(d.turns) for d in dialogues]
    sequences = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert max(map(len, sequences)) <= CONTEXT, "a training chat is longer than the context"
    return sequences


def make_model(vocab_size: int, special: dict[str, int]):  # type: ignore[no-untyped-def]
    """The demo model: a tiny Llama sized for the demo vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
        pad_token_id=special["pad"],
        **MODEL_SHAPE,
    )
    return LlamaForCausalLM(config)


def batches(sequences: list[list[int]], rng: random.Random) -> list[list[int]]:
    """Indices in batches of similar length (little padding), in random order."""
    order = list(range(len(sequences)))
    rng.shuffle(order)
    chunks = [order[i : i + BATCH * 32] for i in range(0, len(order), BATCH * 32)]
    out = []
    for chunk in chunks:
        chunk.sort(key=lambda i: len(sequences[i]))
        out += [chunk[i : i + BATCH] for i in range(0, len(chunk), BATCH)]
    rng.shuffle(out)
    return out


def tensors(seqs: list[list[int]], pad: int, unk: int, user: int, eot: int, rng: random.Random):  # type: ignore[no-untyped-def]
    """Padded (B, T) ids and labels of ``seqs`` (every token is predicted), with ``UNK_RATE``
    of the user turns' words replaced by ``unk`` in the ids."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad)
    labels = torch.full((len(seqs), width), -100)
    for row, seq in enumerate(seqs):
        noisy, in_user = list(seq), False
        for i, token in enumerate(seq):
            if token in (user, eot):  # <user> opens a user turn, <eot> closes every turn
                in_user = token == user
            elif in_user and rng.random() < UNK_RATE:
                noisy[i] = unk
        ids[row, : len(seq)] = torch.tensor(noisy)
        labels[row, : len(seq)] = torch.tensor(seq)
    return ids, (ids != pad).long(), labels


def learning_rate(step: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(out: Path = MODEL_DIR, seed: int = SEED, steps: int = STEPS) -> dict[str, float]:
    """Train the demo model from ``seed`` and save it to ``out``; returns the final losses."""
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    dialogues = make_corpus(CORPUS_SIZE, seed)
    tok = build_tokenizer(f"{u} {a}" for d in dialogues for u, a in d.turns)
    fast = save_tokenizer(tok, out)
    special = {"bos": fast.bos_token_id, "eos": fast.eos_token_id, "pad": fast.pad_token_id}
    sequences = encode_corpus(tok, dialogues)
    model = make_model(tok.get_vocab_size(), special)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01, betas=(0.9, 0.95))
    plan: list[list[int]] = []
    start, losses = time.time(), []
    model.train()
    for step in (bar := tqdm(range(steps), desc="demo model", unit="step")):
        if not plan:
            plan = batches(sequences, rng)
        ids, mask, labels = tensors(
            [sequences[i] for i in plan.pop()],
            fast.pad_token_id,
            fast.unk_token_id,
            fast.convert_tokens_to_ids("<user>"),
            fast.eos_token_id,
            rng,
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    save_model(model, out)
    return {"seconds": time.time() - start, "final_loss": sum(losses[-50:]) / 50, "steps": steps}


def save_model(model, out: Path) -> None:  # type: ignore[no-untyped-def]
    """fp16 weights (half the size) with config dtype float32: loads as float32 on CPU."""
    from transformers import GenerationConfig

    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        max_new_tokens=64,
    )
    model.half().save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    print(json.dumps(train(args.out, steps=args.steps)))


if __name__ == "__main__":
    main()
