"""Train the demo world's SAE: TopK on the residual stream after decoder layer ``LAYER``.

``python -m steering.demo.train_sae`` reads the model in ``files/model`` and writes the SAE to
``files/sae`` with ``save_sae`` (SAELens format), with each feature's max activation, firing
frequency, its top activating contexts over held-out chats and a label derived from them
(features.py).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ..formats.writer import save_sae
from ..models import SteerableModel, load_model
from ..sae import SAE, HookPoint
from . import MODEL_DIR, MODEL_ID, SAE_DIR, SEED, features
from .corpus import Dialogue, make_corpus
from .tokenizer import dialogue_text

LAYER = 1  # of 4: leaves the later layers room to act on an edit (docs/demo-world-notes)
D_SAE = 1024
K = 16
STEPS = 1500
BATCH = 2048
SAE_DIALOGUES = 4000
CONTEXT_DIALOGUES = 2000  # held-out chats for top activating contexts and labels


@dataclass
class Activations:
    """Residual activations of many dialogues, one row per token (BOS and padding left out)."""

    x: Tensor  # (N, d)
    token: Tensor  # (N,) token ids
    dialogue: Tensor  # (N,) index into the dialogues
    in_prompt: Tensor  # (N,) bool: a token of the first user turn
    turn: Tensor  # (N,) which turn of its dialogue the token is in (0 for the first)


@torch.inference_mode()
def layer_activations(
    model: SteerableModel, dialogues: list[Dialogue], layer: int = LAYER, batch: int = 128
) -> Activations:
    """The residual stream after ``layer`` for every token of ``dialogues``: (N, d) float32,
    with each token's dialogue and whether it is in the prompt."""
    tok = model.tokenizer
    parts: dict[str, list[Tensor]] = defaultdict(list)
    for start in range(0, len(dialogues), batch):
        chunk = dialogues[start : start + batch]
        enc = tok(
            [dialogue_text(d.turns) for d in chunk],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        )
        out = model.model(**enc, output_hidden_states=True)
        hidden = out.hidden_states[layer + 1]  # [0] is the embeddings
        keep = enc["attention_mask"].bool() & (enc["input_ids"] != tok.bos_token_id)
        reply_start = (enc["input_ids"] == tok.convert_tokens_to_ids("<assistant>")).int()
        in_prompt = reply_start.cumsum(-1) == 0
        turn = (enc["input_ids"] == tok.convert_tokens_to_ids("<user>")).int().cumsum(-1) - 1
        rows = torch.arange(start, start + len(chunk))[:, None].expand_as(keep)
        parts["x"].append(hidden[keep].float())
        parts["token"].append(enc["input_ids"][keep])
        parts["dialogue"].append(rows[keep])
        parts["in_prompt"].append(in_prompt[keep])
        parts["turn"].append(turn[keep])
    return Activations(**{k: torch.cat(v) for k, v in parts.items()})


def train_topk(x: Tensor, seed: int = SEED, steps: int = STEPS) -> dict[str, Tensor]:
    """A TopK SAE on inputs scaled to mean norm sqrt(d), with unit-norm decoder rows."""
    gen = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    scale = d**0.5 / x.norm(dim=-1).mean()
    xs = x * scale
    W_dec = torch.nn.functional.normalize(torch.randn(D_SAE, d, generator=gen), dim=-1)
    p = {
        "W_enc": W_dec.T.clone(),
        "b_enc": torch.zeros(D_SAE),
        "W_dec": W_dec,
        "b_dec": xs.median(dim=0).values,
    }
    for t in p.values():
        t.requires_grad_(True)
    optimizer = torch.optim.Adam(p.values(), lr=2e-3)
    for step in (bar := tqdm(range(steps), desc="demo SAE", unit="step")):
        batch = xs[torch.randint(len(xs), (BATCH,), generator=gen)]
        f = topk_encode(batch, p)
        loss = ((f @ p["W_dec"] + p["b_dec"] - batch) ** 2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            p["W_dec"].data = torch.nn.functional.normalize(p["W_dec"].data, dim=-1)
        if step % 50 == 0:
            bar.set_postfix(fvu=f"{loss.item() / xs.var(0).sum().item():.4f}")
    return {k: v.detach() for k, v in p.items()} | {"scale": scale}


def topk_encode(x: Tensor, p: dict[str, Tensor]) -> Tensor:
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    top = pre.topk(K, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


def to_sae(p: dict[str, Tensor]) -> SAE:
    """The SAE in raw residual units: the input scale is folded into the weights."""
    c = float(p["scale"])
    return SAE(
        W_enc=p["W_enc"] * c,
        b_enc=p["b_enc"],
        W_dec=p["W_dec"] / c,
        b_dec=p["b_dec"] / c,
        hook=HookPoint(LAYER),
        activation="topk",
        k=K,
        apply_b_dec_to_input=True,
        format="saelens",
        model_name=MODEL_ID,
    )


def with_statistics(
    sae: SAE, acts: Activations, held_out: Activations, dialogues: list[Dialogue], tokenizer
) -> SAE:  # type: ignore[no-untyped-def]
    """``sae`` with its max activations and firing frequencies over ``acts`` (its training
    activations), and its top activating contexts and derived labels over ``held_out`` (the
    activations of ``dialogues``)."""
    from dataclasses import replace

    stats = features.statistics(sae, acts.x)
    f = sae.encode(acts.x[:20_000])
    fvu = ((sae.decode(f) - acts.x[:20_000]) ** 2).sum() / (
        (acts.x[:20_000] - acts.x[:20_000].mean(0)) ** 2
    ).sum()
    print(f"SAE: FVU {fvu:.4f}, dead {(stats.max_activation == 0).sum().item()} of {sae.d_sae}")
    held = features.statistics(sae, held_out.x)
    row_topic = [
        dialogues[int(d)].turn_topics[int(t)] if int(t) >= 0 else ""
        for d, t in zip(held_out.dialogue, held_out.turn)
    ]
    return replace(
        sae,
        max_activation=stats.max_activation,
        frequency=stats.frequency,
        contexts=features.top_contexts(held, held_out.token, held_out.dialogue, tokenizer),
        labels=features.derived_labels(held, held_out.token, row_topic, tokenizer),
    )


def train(model_dir: Path = MODEL_DIR, out: Path = SAE_DIR, seed: int = SEED) -> dict[str, float]:
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    start = time.time()
    model = load_model(str(model_dir), dtype="float32")
    acts = layer_activations(model, make_corpus(SAE_DIALOGUES, seed + 100))
    sae = to_sae(train_topk(acts.x, seed))
    held_out = make_corpus(CONTEXT_DIALOGUES, seed + 300)  # text the SAE never saw
    sae = with_statistics(sae, acts, layer_activations(model, held_out), held_out, model.tokenizer)
    save_sae(sae, out)
    return {"seconds": time.time() - start, "tokens": len(acts.x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--out", type=Path, default=SAE_DIR)
    args = parser.parse_args()
    print(json.dumps(train(args.model, args.out)))


if __name__ == "__main__":
    main()
