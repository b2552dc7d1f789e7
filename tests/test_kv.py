"""The cache keyword handed to a model's forward: the name its signature declares, and used."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny_models import CORE, tiny_model

from steering import kv

PROMPT = torch.tensor([[1, 5, 9, 17, 33, 2, 40, 41]])


class NewName(torch.nn.Module):
    def forward(self, input_ids, cache=None, **kwargs): ...


class OldName(torch.nn.Module):
    def forward(self, input_ids, past_key_values=None, **kwargs): ...


class KwargsOnly(torch.nn.Module):
    def forward(self, input_ids, **kwargs): ...


def _wrapping(f):
    @functools.wraps(f)
    def wrapped(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapped


class WrappedNewName(torch.nn.Module):
    @_wrapping  # as transformers' deprecate_kwarg and can_return_tuple wrap forwards
    def forward(self, input_ids, cache=None, **kwargs): ...


@pytest.mark.parametrize(
    "model, keyword",
    [
        (NewName(), "cache"),
        (OldName(), "past_key_values"),
        (KwargsOnly(), "past_key_values"),
        (WrappedNewName(), "cache"),
    ],
)
def test_cache_kwargs_uses_the_name_the_forward_declares(model, keyword):
    cache = kv.new_cache()
    out = kv.cache_kwargs(model, cache)
    assert list(out) == [keyword]
    assert out[keyword] is cache


@pytest.mark.parametrize("arch", CORE)
def test_cache_kwargs_feeds_the_cache_to_real_models(arch):
    """Prefill and one decode step through the cache give the full forward's last logits.

    A keyword the forward does not know would leave the cache empty; a deprecated one fails
    the run (pyproject's filterwarnings).
    """
    model = tiny_model(arch)
    cache = kv.new_cache()
    with torch.no_grad():
        model(PROMPT[:, :-1], use_cache=True, **kv.cache_kwargs(model, cache))
        step = model(PROMPT[:, -1:], use_cache=True, **kv.cache_kwargs(model, cache)).logits
        full = model(PROMPT).logits
    assert cache.get_seq_length() == PROMPT.shape[1]
    torch.testing.assert_close(step[0, -1], full[0, -1], rtol=1e-5, atol=1e-5)
