"""Train the demo world's SAE: TopK on the residual stream after decoder layer ``LAYER``.

``python -m steering.demo.train_sae`` reads the model in ``files/model`` and writes the SAE to
``files/sae`` with ``save_sae`` (SAELens format), with each feature's max activation, firing
frequency and a label: the words it fires on most strongly.
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
from . import MODEL_DIR, MODEL_ID, SAE_DIR, SEED
from .corpus import Dialogue, make_corpus
from .tokenizer import dialogue_text

LAYER = 1  # of 4: leaves the later layers room to act on an edit (docs/demo-world-notes)
D_SAE = 1024
K = 16
STEPS = 1500
BATCH = 2048
SAE_DIALOGUES = 4000


@dataclass
class Activations:
    """Residual activations of many dialogues, one row per token (BOS and padding left out)."""

    x: Tensor  # (N, d)
    token: Tensor  # (N,) token ids
    dialogue: Tensor  # (N,) index into the dialogues
    in_prompt: Tensor  # (N,) bool: a user-turn token


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
            [dialogue_text(d.user, d.assistant) for d in chunk],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        )
        out = model.model(**enc, output_hidden_states=True)
        hidden = out.hidden_states[layer + 1]  # [0] is the embeddings
        keep = enc["attention_mask"].bool() & (enc["input_ids"] != tok.bos_token_id)
        reply_start = (enc["input_ids"] == tok.convert_tokens_to_ids("<assistant>")).int()
        in_prompt = reply_start.cumsum(-1) == 0
        rows = torch.arange(start, start + len(chunk))[:, None].expand_as(keep)
        parts["x"].append(hidden[keep].float())
        parts["token"].append(enc["input_ids"][keep])
        parts["dialogue"].append(rows[keep])
        parts["in_prompt"].append(in_prompt[keep])
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


def feature_labels(f: Tensor, tokens: Tensor, tokenizer, top: int = 3) -> dict[int, str]:  # type: ignore[no-untyped-def]
    """Each live feature's label: the words with the highest mean activation (seen 5+ times)."""
    vocab = int(tokens.max()) + 1
    counts = torch.bincount(tokens, minlength=vocab).float()
    sums = torch.zeros(vocab, f.shape[1]).index_add_(0, tokens, f)
    means = (sums / counts.clamp(min=1)[:, None]).masked_fill(counts[:, None] < 5, 0)
    labels = {}
    for i in range(f.shape[1]):
        best = means[:, i].topk(top)
        words = [
            tokenizer.convert_ids_to_tokens(int(t))
            for t, v in zip(best.indices, best.values)
            if v > 0
        ]
        if words:
            labels[i] = " / ".join(words)
    return labels


def with_statistics(sae: SAE, acts: Activations, tokenizer) -> SAE:  # type: ignore[no-untyped-def]
    """``sae`` with its max activations, firing frequencies and top-word labels over ``acts``."""
    from dataclasses import replace

    f = sae.encode(acts.x)
    fvu = ((sae.decode(f) - acts.x) ** 2).sum() / ((acts.x - acts.x.mean(0)) ** 2).sum()
    print(f"SAE: FVU {fvu:.4f}, dead {(f.amax(0) == 0).sum().item()} of {sae.d_sae}")
    return replace(
        sae,
        max_activation=f.amax(0),
        frequency=(f > 0).float().mean(0),
        labels=feature_labels(f, acts.token, tokenizer),
    )


def train(model_dir: Path = MODEL_DIR, out: Path = SAE_DIR, seed: int = SEED) -> dict[str, float]:
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    start = time.time()
    model = load_model(str(model_dir), dtype="float32")
    acts = layer_activations(model, make_corpus(SAE_DIALOGUES, seed + 100))
    sae = with_statistics(to_sae(train_topk(acts.x, seed)), acts, model.tokenizer)
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
