"""Search by contrast: the features whose activations differ most between two prompt sets.

Each prompt is rendered as a user message with the model's chat template (``render_prompt``,
as a chat request renders it), the unsteered model is run up to the SAE's hook point
(``activations.residual_stream``, the reading that ``POST /v1/activations`` uses) and the
SAE encodes the residual stream in chunks of tokens. A prompt's value for a feature is the
mean activation over the tokens of the prompt's own text: the chat template's tokens (BOS,
the turn markers, anything the template writes around the message) and special tokens are
left out, so a feature that fires on every turn marker does not look like a difference.

Per feature, over the per-prompt means: ``mean_a``, ``mean_b``, their ``difference`` and the
effect size, Cohen's d with the pooled standard deviation. Features are ranked by the
difference by default (ties by effect size), or by effect size (``by="effect_size"``, ties by
difference). The difference is the default because an SAE is sparse: most features are exactly
0 on most prompts, so a feature that fires weakly but on every prompt of A and never on B has
a tiny pooled deviation and a huge d (infinite if equal on every prompt of A) while it
barely moves the residual stream; the features that steer a concept fire strongly on it. On the
demo world, contrasting prompts that bring up the Golden Gate bridge with prompts on other
topics, the difference puts the features its Golden Gate preset clamps (found by a steering
test, ``steering.demo.screen``) in its top 3, while d ranks weak "user turn" features above
them. The effect size is given with every feature: a large difference with a small d is a
feature that fires on only some of the prompts.

Memory: one (prompts, d_sae) float32 tensor of per-prompt means, per prompt one
(``ENCODE_CHUNK``, d_sae) block of activations at a time, and the statistics computed for
``STATS_BLOCK`` features at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..activations import ENCODE_CHUNK, residual_stream
from ..chat import render_prompt
from ..errors import LimitError, PromptTooLong, RequestError
from ..limits import Limits
from ..models import SteerableModel
from ..sae import SAE
from ..textstream import special_tokens

Ranking = Literal["difference", "effect_size"]
RANKINGS: tuple[Ranking, ...] = ("difference", "effect_size")
# in each set: an effect size needs a spread within each set; one prompt (or copies of one)
# has none, and its d would only measure the other set's spread
MIN_DISTINCT = 2
STATS_BLOCK = 16_384  # features whose statistics are computed at once (float64 copies)


@dataclass(frozen=True)
class FeatureContrast:
    """One feature's activations on two prompt sets, in the SAE's raw activation units (what
    ``SAE.encode`` returns). A prompt's value is its feature activation averaged over the
    prompt's own tokens.

    - ``index``: the feature's index in the SAE (0..d_sae-1).
    - ``mean_a``, ``mean_b``: the mean over the prompts of set A (set B) of their values.
    - ``difference``: ``mean_a - mean_b``.
    - ``effect_size``: Cohen's d, ``difference`` / the pooled standard deviation of the
      per-prompt values (unit-free). When that standard deviation is 0 (every prompt of a set
      has its set's mean, as when the feature never fires on set B and equally on each prompt
      of set A) d is ``inf`` (or ``-inf``) if the means differ (the sets are perfectly
      separated) and 0 if they do not (the feature never varies).
    - ``label``: the SAE's label for the feature, None when it has none.
    """

    index: int
    mean_a: float
    mean_b: float
    difference: float
    effect_size: float
    label: str | None


@dataclass(frozen=True)
class PromptTokens:
    """A prompt rendered as a user message: ``token_ids`` (T,) what the model reads, and
    ``positions`` the indices of the tokens of the prompt's own text (the ones averaged)."""

    token_ids: tuple[int, ...]
    positions: tuple[int, ...]


def prompt_tokens(
    tokenizer: Any,
    prompt: str,
    limits: Limits = Limits(),
    context: int | None = None,
    name: str = "prompts",
) -> PromptTokens:
    """``prompt`` rendered as the user message of a one-turn chat, and where its text is.

    The text's tokens are those that differ from the rendering of an empty message (the
    longest common prefix and suffix are the template's), less special tokens. ``name``
    says which prompt it is in an error ("prompts.3", "against.0"). Raises
    ``RequestError`` when the prompt has no token of its own, ``PromptTooLong`` beyond
    min(``limits.max_prompt_tokens``, ``context``) tokens, ``ChatError`` for a bad prompt.
    """
    ids = list(render_prompt(tokenizer, [{"role": "user", "content": prompt}]))
    empty = list(render_prompt(tokenizer, [{"role": "user", "content": ""}]))
    most = limits.max_prompt_tokens if context is None else min(limits.max_prompt_tokens, context)
    if len(ids) > most:
        raise PromptTooLong(
            f"{name}: {len(ids)} tokens, at most {most} (max_prompt_tokens "
            f"{limits.max_prompt_tokens}, the model's context {context or 'unknown'})",
            param=name.partition(".")[0],
        )
    start = 0
    while start < min(len(ids), len(empty)) and ids[start] == empty[start]:
        start += 1
    end = len(ids)
    while (
        end > start
        and len(ids) - end < len(empty) - start
        and ids[end - 1] == empty[end - 1 - len(ids) + len(empty)]
    ):
        end -= 1
    specials = special_tokens(tokenizer)
    positions = tuple(i for i in range(start, end) if ids[i] not in specials)
    if not positions:
        raise RequestError(
            f"{name}: {prompt[:80]!r} has no tokens of its own (it is empty, or only "
            "special or unknown tokens)",
            param=name.partition(".")[0],
        )
    return PromptTokens(tuple(ids), positions)


def prompt_means(model: SteerableModel, sae: SAE, prompt: PromptTokens) -> Tensor:
    """(d_sae,) float32 on the CPU: each feature's activation averaged over the prompt's own
    tokens, read from the unsteered model's residual stream at the SAE's hook point.

    Runs the model: on a server hand it to ``Backend.run`` (no steered step may run alongside).
    """
    resid = residual_stream(model, prompt.token_ids, sae.hook)  # (T, d_in)
    rows = resid[torch.tensor(prompt.positions, device=resid.device)]
    total = torch.zeros(sae.d_sae, dtype=torch.float32, device=sae.device)
    with torch.inference_mode():
        for start in range(0, rows.shape[0], ENCODE_CHUNK):
            acts = sae.encode(rows[start : start + ENCODE_CHUNK].to(sae.device))
            total += acts.float().sum(0)
    return (total / len(prompt.positions)).cpu()


def distinct(prompts: Sequence[str]) -> list[int]:
    """The indices of the first copy of each prompt of ``prompts`` (exact text), in order:
    a duplicate adds no information, only weight, and would shrink the set's spread."""
    seen: set[str] = set()
    keep = []
    for i, p in enumerate(prompts):
        if p not in seen:
            seen.add(p)
            keep.append(i)
    return keep


def check_sets(
    prompts_a: Sequence[str],
    prompts_b: Sequence[str],
    top: int,
    limits: Limits = Limits(),
    baseline: bool = False,
) -> None:
    """``RequestError``/``LimitError`` naming the bad value: an empty set, a set of fewer
    than ``MIN_DISTINCT`` distinct prompts (duplicates count once), more than
    ``limits.max_contrast_prompts`` prompts sent (both sets; only set A when ``baseline``
    says set B is the built-in baseline, which the user did not send), a prompt longer than
    ``limits.max_contrast_prompt_chars`` characters, or ``top`` outside
    1..``limits.max_contrast_results``."""
    for name, prompts in (("prompts", prompts_a), ("against", prompts_b)):
        if not prompts:
            raise RequestError(f"{name}: at least one prompt is needed", param=name)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise RequestError(f"{name}.{i}: must be a string", param=name)
            if len(p) > limits.max_contrast_prompt_chars:
                raise LimitError(
                    f"{name}.{i}: {len(p)} characters, at most "
                    f"{limits.max_contrast_prompt_chars} (max_contrast_prompt_chars)",
                    param=name,
                )
    sent = len(prompts_a) + (0 if baseline else len(prompts_b))
    if sent > limits.max_contrast_prompts:
        where = "" if baseline else " in both sets"
        raise LimitError(
            f"prompts: {sent} prompts{where}, at most {limits.max_contrast_prompts} "
            "(max_contrast_prompts)",
            param="prompts",
        )
    for name, prompts in (("prompts", prompts_a), ("against", prompts_b)):
        n = len(distinct(prompts))
        if n < MIN_DISTINCT:
            dropped = len(prompts) - n
            note = f" ({dropped} duplicate{'s' * (dropped != 1)} dropped)" if dropped else ""
            raise RequestError(
                f"{name}: {n} distinct prompt{'s' * (n != 1)}{note}, at least {MIN_DISTINCT} "
                "are needed in each set for an effect size (a spread within the set)",
                param=name,
            )
    if (
        isinstance(top, bool)
        or not isinstance(top, int)
        or not 1 <= top <= limits.max_contrast_results
    ):
        raise RequestError(
            f"top: {top!r} must be an integer in 1..{limits.max_contrast_results}", param="top"
        )


Places = tuple[Sequence[str], Sequence[str]]  # what errors call each prompt of A and of B


def render_sets(
    model: SteerableModel,
    prompts: Sequence[str],
    against: Sequence[str],
    limits: Limits,
    places: Places | None = None,
) -> list[PromptTokens]:
    """Both sets rendered (``prompt_tokens``), set A first; errors name the prompt as
    ``places`` does (one name per prompt of each set; default "prompts.i", "against.i")."""
    if places is None:
        places = (
            [f"prompts.{i}" for i in range(len(prompts))],
            [f"against.{i}" for i in range(len(against))],
        )
    return [
        prompt_tokens(model.tokenizer, p, limits, model.context_length, place)
        for prompts_of, places_of in zip((prompts, against), places)
        for p, place in zip(prompts_of, places_of, strict=True)
    ]


def distinct_rendered(
    model: SteerableModel,
    prompts: Sequence[str],
    against: Sequence[str],
    limits: Limits,
    places: Places | None = None,
) -> tuple[list[PromptTokens], int]:
    """Both sets rendered (``render_sets``: every prompt checked, errors naming its place in
    what was sent), duplicates dropped (``distinct``); and how many of them are set A's."""
    rendered = render_sets(model, prompts, against, limits, places)
    keep_a = _distinct_tokens(rendered, distinct(prompts), "prompts")
    keep_b = _distinct_tokens(rendered, [len(prompts) + i for i in distinct(against)], "against")
    return [rendered[i] for i in keep_a + keep_b], len(keep_a)


def _distinct_tokens(rendered: Sequence[PromptTokens], keep: list[int], name: str) -> list[int]:
    """``keep`` without the prompts whose averaged tokens repeat an earlier one's (texts that
    differ only where the tokenizer does not: spaces, or case for an uncased one); a
    ``RequestError`` naming the set when fewer than ``MIN_DISTINCT`` remain."""
    seen: set[tuple[int, ...]] = set()
    found = []
    for i in keep:
        ids = tuple(rendered[i].token_ids[p] for p in rendered[i].positions)
        if ids not in seen:
            seen.add(ids)
            found.append(i)
    if len(found) < MIN_DISTINCT:
        raise RequestError(
            f"{name}: {len(found)} distinct prompt{'s' * (len(found) != 1)} once tokenized "
            f"({len(keep) - len(found)} read the same tokens as another), at least "
            f"{MIN_DISTINCT} are needed in each set for an effect size",
            param=name,
        )
    return found


def rank_contrast(
    means_a: Tensor,
    means_b: Tensor,
    top: int,
    labels: dict[int, str] | None = None,
    by: Ranking = "difference",
) -> list[FeatureContrast]:
    """The ``top`` features that fire most on set A over set B, from the per-prompt means
    ``means_a`` (N_a, d_sae) and ``means_b`` (N_b, d_sae) (N_a + N_b >= 3), best first: by
    the larger ``difference`` (equal ones by effect size) or ``effect_size`` (equal ones,
    infinite ones included, by difference), then the lower index. No model work."""
    labels = labels or {}
    d_sae = means_a.shape[1]
    diff = torch.empty(d_sae, dtype=torch.float64)
    d, mean_a, mean_b = torch.empty_like(diff), torch.empty_like(diff), torch.empty_like(diff)
    for start in range(0, d_sae, STATS_BLOCK):  # float64 copies of one block of features
        cols = slice(start, start + STATS_BLOCK)
        diff[cols], d[cols], mean_a[cols], mean_b[cols] = _effect(
            means_a[:, cols], means_b[:, cols]
        )
    first, then = (diff, d) if by == "difference" else (d, diff)
    # best first by ``first``, then by ``then``, then by index: two stable sorts
    by_then = torch.sort(-then, stable=True).indices
    order = by_then[torch.sort(-first[by_then], stable=True).indices][:top].tolist()
    return [
        FeatureContrast(
            index=i,
            mean_a=float(mean_a[i]),
            mean_b=float(mean_b[i]),
            difference=float(diff[i]),
            effect_size=float(d[i]),
            label=labels.get(i),
        )
        for i in order
    ]


def _effect(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Difference, Cohen's d, mean of A and mean of B per column of ``a`` (N_a, F) and ``b``
    (N_b, F), in float64; d is +-inf (or 0) where the pooled standard deviation is 0."""
    a, b = a.double(), b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    squares = ((a - mean_a) ** 2).sum(0) + ((b - mean_b) ** 2).sum(0)
    pooled = (squares / (a.shape[0] + b.shape[0] - 2)).sqrt()
    diff = mean_a - mean_b
    d = torch.where(pooled > 0, diff / pooled.clamp_min(1e-300), diff.sign() * math.inf)
    d = torch.where((pooled == 0) & (diff == 0), torch.zeros_like(d), d)
    return diff, d, mean_a, mean_b


def contrast(
    model: SteerableModel,
    sae: SAE,
    prompts: Sequence[str],
    against: Sequence[str] | None = None,
    *,
    top: int = 20,
    by: Ranking = "difference",
    limits: Limits = Limits(),
    progress: bool = False,
    run: Callable[[Callable[[], Tensor]], Tensor] | None = None,
    places: Places | None = None,
) -> list[FeatureContrast]:
    """The ``top`` features of ``sae`` that fire more on ``prompts`` (set A) than on
    ``against`` (set B; None: the neutral baseline, ``neutral.neutral_prompts(model)``),
    ranked ``by`` difference or effect size (see ``FeatureContrast``, ``rank_contrast``).

    A prompt given more than once counts once (``distinct``), and each set needs at least
    ``MIN_DISTINCT`` distinct prompts: with one, a set has no spread, and Cohen's d would only
    measure the other set's (one prompt against the baseline gave d in the hundreds). The
    limit ``limits.max_contrast_prompts`` counts the prompts sent: the built-in baseline
    (``against`` None) is not counted.

    ``run`` runs each prompt's model work (default: here; a server passes its backend's);
    ``places`` names each prompt of A and of B in errors (default "prompts.i", "against.i";
    a command line names its file and line).
    Raises the errors of ``check_sets`` and ``prompt_tokens``.
    """
    from .neutral import neutral_prompts

    b_prompts = list(neutral_prompts(model) if against is None else against)
    a_prompts = list(prompts)
    check_sets(a_prompts, b_prompts, top, limits, baseline=against is None)
    if by not in RANKINGS:
        raise RequestError(f"by: {by!r} is not one of {', '.join(RANKINGS)}", param="by")
    if places is not None and against is None:
        places = (places[0], [f"baseline prompt {i + 1}" for i in range(len(b_prompts))])
    rendered, n_a = distinct_rendered(model, a_prompts, b_prompts, limits, places)
    means = torch.empty(len(rendered), sae.d_sae, dtype=torch.float32)
    for i, p in enumerate(tqdm(rendered, desc="contrast", unit="prompt", disable=not progress)):
        job = lambda p=p: prompt_means(model, sae, p)  # noqa: E731
        means[i] = job() if run is None else run(job)
    return rank_contrast(means[:n_a], means[n_a:], top, sae.labels, by)


def contrast_json(found: FeatureContrast) -> dict[str, Any]:
    """``found`` as a JSON object; an infinite effect size is null (JSON has no infinity) and
    ``separated`` says the sets are perfectly separated (zero spread in both, means differ)."""
    finite = math.isfinite(found.effect_size)
    return {
        "feature": found.index,
        "label": found.label,
        "mean_a": found.mean_a,
        "mean_b": found.mean_b,
        "difference": found.difference,
        "effect_size": found.effect_size if finite else None,
        "separated": not finite,
    }
