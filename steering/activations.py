"""What lights up: the SAE features of every token of a text, on the unsteered model.

``feature_activations`` runs the model over token ids with no steering, reads the residual
stream at the SAE's hook point with a forward hook, and encodes it with the SAE's own
definition (``SAE.encode``, its input normalization included). The forward pass stops at the
hook point: the layers after it never run.

It runs the model, so on a server it must run where no generation step runs alongside it: a
steering hook attached for a step would also edit this pass. ``Service.activations`` hands it
to the backend (``Backend.run``), which runs it between two decode steps. The work is split
for that (``ActivationProbe``): ``latents`` (the forward pass, on the model's thread) and
``summarize`` (token texts and Python numbers, on the caller's).

``chat_tokens`` gives the token ids of a text or a chat whose last message may be the
assistant's reply, and where that reply starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .chat import Message, render_prompt
from .errors import ChatError, PromptTooLong, RequestError
from .hookpoint import HookPoint
from .limits import Limits
from .models import SteerableModel
from .sae import SAE
from .textstream import TextStream, special_tokens

MAX_TOP_K = 32  # the most top features one token may list
ENCODE_CHUNK = 256  # tokens encoded at once: bounds the (tokens, d_sae) activations in memory


@dataclass(frozen=True)
class TokenActivations:
    """The SAE's feature activations at every token of a text, in the SAE's raw activation
    units (what ``SAE.encode`` returns; 0 where a feature does not fire).

    - ``tokens``: (T,) each token's text as the tokenizer decodes it in context: the texts of
      the tokens that are not special join to ``tokenizer.decode(token_ids,
      skip_special_tokens=True)`` (the text as a reply shows it; a token holding part of a
      character is "" and the token that completes it carries the character), and a special
      token (BOS, the chat template's markers) is its own text.
    - ``token_ids``: (T,) the ids the model read.
    - ``top``: (T, <= top_k) per token, the features with activation > 0, as (feature index,
      activation), the strongest first.
    - ``features``: per requested feature index, its activation at every token (T values).
    - ``max_activation``: per feature listed in ``top`` or ``features``, its max activation
      from the SAE's feature statistics ({} when the SAE has none): activation / max activation
      is how strongly the feature fires relative to its strongest known activation.
    - ``reply_start``: the index of the first token of the last assistant message when a chat
      ending in one was given (``len(tokens)`` when that reply is empty), else None.
    """

    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    top: tuple[tuple[tuple[int, float], ...], ...]
    features: dict[int, tuple[float, ...]]
    max_activation: dict[int, float]
    reply_start: int | None = None


@dataclass(frozen=True)
class Latents:
    """The tensors ``latents`` computes: ``top_values``/``top_indices`` (T, top_k) of each
    token's strongest features and ``columns`` (T, len(features)) of the requested features,
    float32 on the CPU."""

    top_values: Tensor
    top_indices: Tensor
    columns: Tensor
    features: tuple[int, ...]


@dataclass(frozen=True)
class ActivationProbe:
    """A checked request for activations, split where it runs: ``run`` runs the model (hand
    it to ``Backend.run``), ``result`` turns what it found into ``TokenActivations`` (no model
    work: on the caller's thread)."""

    model: SteerableModel
    sae: SAE
    token_ids: tuple[int, ...]
    features: tuple[int, ...] = ()
    top_k: int = 5
    reply_start: int | None = None

    def run(self) -> Latents:
        return latents(
            self.model, self.sae, self.token_ids, features=self.features, top_k=self.top_k
        )

    def result(self, found: Latents) -> TokenActivations:
        return summarize(self.model.tokenizer, self.token_ids, found, self.sae, self.reply_start)


def feature_activations(
    model: SteerableModel,
    sae: SAE,
    token_ids: Sequence[int],
    *,
    features: Sequence[int] = (),
    top_k: int = 5,
    reply_start: int | None = None,
) -> TokenActivations:
    """The activations of ``sae``'s features at every token of ``token_ids`` (T ids), read from
    the unsteered model's residual stream at the SAE's hook point (see ``TokenActivations``).

    Runs the model: never call it while another thread may run a steered step on the same
    model (use ``Backend.run``). Raises ``RequestError`` for ``top_k`` outside 1..MAX_TOP_K, a
    feature index outside 0..d_sae-1, or no tokens.
    """
    return summarize(
        model.tokenizer,
        token_ids,
        latents(model, sae, token_ids, features=features, top_k=top_k),
        sae,
        reply_start,
    )


def check_request(sae: SAE, n_tokens: int, features: Sequence[int], top_k: int) -> None:
    """``RequestError`` naming the bad value: ``top_k`` outside 1..MAX_TOP_K, a feature index
    outside 0..d_sae-1, or no tokens."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise RequestError(f"top_k: {top_k!r} must be an integer in 1..{MAX_TOP_K}", param="top_k")
    for i, feature in enumerate(features):
        if (
            isinstance(feature, bool)
            or not isinstance(feature, int)
            or not 0 <= feature < sae.d_sae
        ):
            raise RequestError(
                f"features.{i}: {feature!r} is not a feature of this SAE "
                f"(valid: 0..{sae.d_sae - 1})",
                param="features",
            )
    if n_tokens < 1:
        raise RequestError("the text has no tokens", param="text")


def latents(
    model: SteerableModel,
    sae: SAE,
    token_ids: Sequence[int],
    *,
    features: Sequence[int] = (),
    top_k: int = 5,
) -> Latents:
    """The forward pass and the encoding (see ``Latents``); the part that runs the model."""
    features = tuple(features)
    check_request(sae, len(token_ids), features, top_k)
    resid = residual_stream(model, token_ids, sae.hook)  # (T, d_in)
    k = min(top_k, sae.d_sae)
    values, indices, columns = [], [], []
    wanted = torch.tensor(features, dtype=torch.long, device=sae.device)
    with torch.inference_mode():
        for start in range(0, resid.shape[0], ENCODE_CHUNK):
            acts = sae.encode(resid[start : start + ENCODE_CHUNK].to(sae.device)).float()
            top = acts.topk(k, dim=-1)
            values.append(top.values.cpu())
            indices.append(top.indices.cpu())
            columns.append(acts[:, wanted].cpu())
    return Latents(torch.cat(values), torch.cat(indices), torch.cat(columns), features)


def summarize(
    tokenizer: Any,
    token_ids: Sequence[int],
    found: Latents,
    sae: SAE,
    reply_start: int | None = None,
) -> TokenActivations:
    """``found`` as Python values, with each token's text (no model work)."""
    top = tuple(
        tuple((int(i), float(v)) for v, i in zip(row_v, row_i) if v > 0)
        for row_v, row_i in zip(found.top_values.tolist(), found.top_indices.tolist())
    )
    columns = found.columns.tolist()
    per_feature = {f: tuple(float(row[j]) for row in columns) for j, f in enumerate(found.features)}
    shown = {f for row in top for f, _ in row} | set(found.features)
    stats = sae.max_activation
    max_activation = {} if stats is None else {f: float(stats[f]) for f in sorted(shown)}
    return TokenActivations(
        tokens=token_texts(tokenizer, token_ids),
        token_ids=tuple(int(t) for t in token_ids),
        top=top,
        features=per_feature,
        max_activation=max_activation,
        reply_start=reply_start,
    )


class _Captured(Exception):
    """Raised by the reading hook once it has the residual stream: later layers never run."""


def residual_stream(model: SteerableModel, token_ids: Sequence[int], hook: HookPoint) -> Tensor:
    """(T, d_in) the residual stream of the unsteered model at ``hook`` for ``token_ids``, in
    the model's dtype, on the device of the hooked layer."""
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=model.device)
    return residual_batch(model, ids, torch.ones_like(ids), hook)[0]


def residual_batch(model: SteerableModel, ids: Tensor, mask: Tensor, hook: HookPoint) -> Tensor:
    """(B, T, d_in) the unsteered residual stream at ``hook`` for a right-padded batch ``ids``
    (B, T) with ``mask`` (B, T), in the model's dtype; the layers after the hook never run."""
    layer = model.layers[hook.layer]
    seen: list[Tensor] = []

    def post(_module: Any, _args: Any, output: Any) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)
        raise _Captured

    def pre(_module: Any, args: tuple, kwargs: dict) -> None:
        seen.append(args[0] if args else kwargs["hidden_states"])
        raise _Captured

    if hook.site == "resid_post":
        handle = layer.register_forward_hook(post)
    else:
        handle = layer.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.inference_mode():
            model.model(input_ids=ids, attention_mask=mask, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"the forward pass never reached {hook}")
    return seen[0].reshape(*ids.shape, -1)


def token_texts(tokenizer: Any, token_ids: Sequence[int]) -> tuple[str, ...]:
    """Each token's text, decoded with the tokens before it as context (see
    ``TokenActivations.tokens``)."""
    specials = special_tokens(tokenizer)
    stream = TextStream(tokenizer)
    texts: list[str] = []
    last_text = None  # the last token with text of its own, which takes what was held back
    for token in token_ids:
        if token in specials:
            texts.append(specials[token])
            continue
        texts.append(stream.push(int(token)))
        last_text = len(texts) - 1
    tail = stream.flush()
    if tail and last_text is not None:
        texts[last_text] += tail
    return tuple(texts)


def chat_tokens(
    tokenizer: Any,
    text_or_messages: str | Sequence[Message],
    limits: Limits = Limits(),
    context: int | None = None,
) -> tuple[list[int], int | None]:
    """Token ids of a text, or of a chat, and where its reply starts (None without one).

    A text is read as the tokenizer reads it (with the BOS it adds itself, if it adds one);
    special-token text in it is text.
    A chat is rendered with the chat template (``render_prompt``); when its last message is
    the assistant's, the ids are those of the chat before it with the assistant's turn prompt,
    followed by the reply's own tokens: what the model read when it wrote the reply, and the
    reply starts right after the turn prompt. (A template's rendering of a finished turn may
    differ from its generation prompt: some strip the content or drop earlier reasoning.)

    Raises ``PromptTooLong`` beyond min(``limits.max_prompt_tokens``, ``context``) tokens,
    ``ChatError`` for a malformed chat.
    """
    reply_start = None
    if isinstance(text_or_messages, str):
        param = "text"
        ids = tokenizer(text_or_messages, add_special_tokens=True, split_special_tokens=True)[
            "input_ids"
        ]
    else:
        param = "messages"
        messages = list(text_or_messages)
        last = messages[-1] if messages else {}
        if last.get("role") == "assistant":
            if len(messages) < 2 or messages[-2].get("role") != "user":
                raise ChatError(
                    "the assistant's reply (the last message) must follow a user message"
                )
            reply = last.get("content")
            if not isinstance(reply, str):
                raise ChatError(f"message {len(messages) - 1}: content must be a string")
            ids = list(render_prompt(tokenizer, messages[:-1]))
            reply_start = len(ids)
            ids += tokenizer(reply, add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
        else:
            ids = list(render_prompt(tokenizer, messages))
    most = limits.max_prompt_tokens if context is None else min(limits.max_prompt_tokens, context)
    if len(ids) > most:
        raise PromptTooLong(
            f"{param}: {len(ids)} tokens, at most {most} (max_prompt_tokens "
            f"{limits.max_prompt_tokens}, the model's context {context or 'unknown'})",
            param=param,
        )
    return list(ids), reply_start
