"""pyproject's filterwarnings: a deprecated call into transformers or torch fails the run.

A warning's module is where ``stacklevel`` attributes it, not who made the call: transformers'
``deprecate_kwarg`` (stacklevel=2) attributes a model's deprecated keyword to torch's
``Module.__call__``, or to its own forward wrappers in ``transformers.utils.generic``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers.utils.deprecation import deprecate_kwarg


class Deprecating(torch.nn.Module):
    """A forward with a keyword transformers' own decorator marks deprecated."""

    @deprecate_kwarg("old", version="99.0.0", new_name="new")
    def forward(self, x, new=None):
        return x


def test_a_deprecated_model_keyword_fails_the_run():
    removal = "^`old` is deprecated and will be removed in version 99.0.0 for `Deprecating.forward`"
    with pytest.raises(FutureWarning, match=removal):
        Deprecating()(torch.zeros(1), old=1)


def test_the_replacement_keyword_passes():
    with warnings.catch_warnings(record=True) as seen:
        Deprecating()(torch.zeros(1), new=1)
    assert seen == []


@pytest.mark.parametrize(
    "category, module",
    [
        (DeprecationWarning, "steering.engine"),
        (FutureWarning, "steering.kv"),
        (FutureWarning, "torch.nn.modules.module"),
        (FutureWarning, "transformers.utils.generic"),
    ],
)
def test_deprecations_attributed_to_project_call_paths_are_errors(category, module):
    with pytest.raises(category, match="^x is deprecated$"):
        warnings.warn_explicit("x is deprecated", category, "f.py", 1, module=module)


@pytest.mark.parametrize(
    "category, module, recorded",
    [
        (DeprecationWarning, "jupyter_client.session", 0),  # ignored
        (FutureWarning, "gradio.components", 1),  # another library's: a warning, not an error
    ],
)
def test_other_libraries_warnings_are_not_errors(category, module, recorded):
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn_explicit("x is deprecated", category, "f.py", 1, module=module)
    assert [str(w.message) for w in seen] == ["x is deprecated"] * recorded
