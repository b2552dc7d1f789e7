"""What lights up: per-token SAE feature activations of the unsteered model, exact against the
SAE's own encode, safe to ask for while steered requests run, and bounded."""

from __future__ import annotations

import pytest
import torch
from live_server import FEATURE, LABELS, tiny_service
from random_saes import random_sae
from test_engine import make_engine, make_request, tokens
from tiny_models import CORE, HIDDEN, tiny_model, tiny_tokenizer
from tiny_tokenizers import byte_fallback_tokenizer, byte_level_tokenizer, metaspace_tokenizer

from steering import FeatureEdit, SteeringPlan, count_hooks, steer
from steering.activations import MAX_TOP_K, feature_activations, latents, token_texts
from steering.chat import render_prompt
from steering.errors import ChatError, LimitError, PromptTooLong, RequestError
from steering.limits import Limits
from steering.loop import EngineLoop
from steering.models import SteerableModel, find_layers
from steering.sampling import SamplingParams
from steering.textstream import special_tokens

TEXT = "the golden gate bridge is big and red in the fog"
SAES = [
    ("resid_post", "relu", "none"),
    ("resid_pre", "jumprelu", "layer_norm"),
    ("resid_post", "topk", "constant_norm_rescale"),
]


def steerable(arch: str) -> SteerableModel:
    net = tiny_model(arch)
    layers, template = find_layers(net)
    return SteerableModel(net, tiny_tokenizer(), layers, template)


def reference(model: SteerableModel, sae, ids: list[int]) -> torch.Tensor:
    """(T, d_sae) ``sae.encode`` of the residual stream taken by a hook of the test's own at
    the hook point, over a full forward pass."""
    seen = []
    layer = model.layers[sae.hook.layer]
    if sae.hook.site == "resid_post":
        handle = layer.register_forward_hook(
            lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out)
        )
    else:
        handle = layer.register_forward_pre_hook(
            lambda _m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True,
        )
    try:
        with torch.no_grad():
            model.model(input_ids=torch.tensor([ids]))
    finally:
        handle.remove()
    return sae.encode(seen[0][0])


def check_against(found, expected: torch.Tensor, top_k: int) -> None:
    """``found`` (TokenActivations) holds exactly ``expected``'s values."""
    assert len(found.top) == expected.shape[0]
    for t, row in enumerate(found.top):
        best = expected[t].topk(top_k)
        want = [(int(i), float(v)) for v, i in zip(best.values, best.indices) if v > 0]
        assert [f for f, _ in row] == [f for f, _ in want]
        torch.testing.assert_close(
            torch.tensor([a for _, a in row]), torch.tensor([a for _, a in want])
        )
        assert all(a > 0 for _, a in row) and len(row) <= top_k
    for feature, values in found.features.items():
        torch.testing.assert_close(torch.tensor(values), expected[:, feature].float())


@pytest.mark.parametrize("arch", CORE)
@pytest.mark.parametrize("site, activation, normalization", SAES)
def test_activations_equal_the_saes_own_encode(arch, site, activation, normalization):
    model = steerable(arch)
    layer = 2 if site == "resid_pre" else 1
    sae = random_sae(
        HIDDEN, 48, layer, site=site, activation=activation, normalization=normalization
    )
    ids = model.tokenizer(TEXT)["input_ids"]
    found = feature_activations(model, sae, ids, features=[0, 7, 47], top_k=6)
    expected = reference(model, sae, ids)
    assert expected.abs().sum() > 0  # features do fire on this text
    check_against(found, expected, 6)
    assert set(found.features) == {0, 7, 47} and found.token_ids == tuple(ids)
    shown = {f for row in found.top for f, _ in row} | {0, 7, 47}
    assert found.max_activation == {f: float(sae.max_activation[f]) for f in sorted(shown)}
    assert found.reply_start is None
    assert count_hooks(model.model) == 0


def test_long_texts_are_encoded_in_chunks_with_the_same_values(monkeypatch):
    import steering.activations as activations

    model = steerable("llama")
    sae = random_sae(HIDDEN, 40, 1)
    ids = model.tokenizer(" ".join([TEXT] * 6))["input_ids"]
    whole = latents(model, sae, ids, features=[3], top_k=4)
    monkeypatch.setattr(activations, "ENCODE_CHUNK", 7)
    chunked = latents(model, sae, ids, features=[3], top_k=4)
    assert len(ids) > 7 * 3
    torch.testing.assert_close(chunked.top_values, whole.top_values)
    assert torch.equal(chunked.top_indices, whole.top_indices)
    torch.testing.assert_close(chunked.columns, whole.columns)


@pytest.mark.parametrize(
    "make",
    [tiny_tokenizer, byte_level_tokenizer, metaspace_tokenizer, byte_fallback_tokenizer],
)
def test_token_texts_read_as_the_text(make):
    tokenizer = make()
    specials = special_tokens(tokenizer)
    for ids in (
        tokenizer("café au lait 日本 🌉 the fog")["input_ids"],
        render_prompt(tokenizer, [{"role": "user", "content": "the golden gate 🌁"}]),
    ):
        texts = token_texts(tokenizer, ids)
        assert len(texts) == len(ids)
        plain = "".join(t for t, i in zip(texts, ids) if i not in specials)
        assert plain == tokenizer.decode(ids, skip_special_tokens=True)
        assert [t for t, i in zip(texts, ids) if i in specials] == [
            specials[i] for i in ids if i in specials
        ]


# ---- a probe while steered requests run ----


def test_a_probe_during_a_steered_request_reads_the_unsteered_model():
    """The probe is asked for from inside a steered decode step (a hook of the test's own, on
    the engine thread, while the steering hooks are attached); it runs between two steps, with
    no steering hook on the model, and gets exactly the idle model's activations. The steered
    request's tokens are those of its solo run."""
    engine = make_engine()
    model = engine.model
    sae = random_sae(HIDDEN, 32, layer=2, seed=3)
    plan = SteeringPlan((FeatureEdit(random_sae(HIDDEN, 32, layer=0, seed=4), 5, "clamp", 30.0),))
    params = SamplingParams(temperature=0.9, max_new_tokens=40, min_new_tokens=40, seed=11)
    ids = model.tokenizer(TEXT)["input_ids"]
    idle = latents(model, sae, ids, features=[1, 2], top_k=8)
    with steer(model, plan):  # what a probe that ran inside a steered step would read
        leaked = latents(model, sae, ids, features=[1, 2], top_k=8)
    assert not torch.allclose(leaked.columns, idle.columns)  # so a leak would show
    solo = tokens(engine.stream(make_request(engine, "hello", plan, params)))

    loop = EngineLoop(engine)
    futures, seen_during_probe = [], {}

    def probe():
        seen_during_probe["hooks"] = count_hooks(model.model)  # the test's own hook only
        seen_during_probe["steered_rows"] = [r.row.plan is plan for r in engine.live]
        return latents(model, sae, ids, features=[1, 2], top_k=8)

    calls = []

    def ask_during_a_step(_module, _args, _output):
        calls.append(count_hooks(model.model))
        if len(calls) == 5:  # the steered request's 4th decode step: steering is attached
            futures.append(loop.run(probe))

    watcher = model.layers[0].register_forward_hook(ask_during_a_step)
    try:
        events = list(loop.submit(make_request(engine, "hello", plan, params)))
        found = futures[0].result(timeout=60)
    finally:
        watcher.remove()
        loop.close()
    assert calls[4] > 1  # the probe was asked for while steering hooks were attached
    assert seen_during_probe == {"hooks": 1, "steered_rows": [True]}  # mid-request, unhooked
    assert torch.equal(found.columns, idle.columns)
    assert torch.equal(found.top_values, idle.top_values)
    assert torch.equal(found.top_indices, idle.top_indices)
    assert tokens(events) == solo and len(solo) == 40
    assert count_hooks(model.model) == 0


# ---- the service: texts, chats, bounds ----


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    service = tiny_service(tmp_path_factory.mktemp("activations"), Limits(max_edits=3))
    yield service
    service.close()


def test_the_service_reads_a_chat_and_marks_where_the_reply_starts(service):
    tokenizer = service.model.tokenizer
    question = [{"role": "user", "content": "is the bridge big"}]
    chat = [*question, {"role": "assistant", "content": "the golden gate bridge is red"}]
    found = service.activations(chat, "tiny-sae", features=[FEATURE], top_k=4)
    prompt = render_prompt(tokenizer, question)  # what the model read before it replied
    reply = tokenizer("the golden gate bridge is red", add_special_tokens=False)["input_ids"]
    assert found.token_ids == (*prompt, *reply) and found.reply_start == len(prompt)
    assert "".join(found.tokens[found.reply_start :]).strip() == "the golden gate bridge is red"
    _, sae = service.offered_sae("tiny-sae")
    check_against(found, reference(service.model, sae, list(found.token_ids)), 4)
    asked = service.activations(question)  # a chat that ends with the user: no reply
    assert asked.token_ids == tuple(prompt) and asked.reply_start is None
    text = service.activations("the golden gate")  # a text, as the tokenizer reads it
    assert text.token_ids == tuple(tokenizer("the golden gate")["input_ids"])
    assert text.reply_start is None and "".join(text.tokens) == "the golden gate"
    empty = service.activations([*question, {"role": "assistant", "content": ""}])
    assert empty.reply_start == len(empty.tokens) == len(prompt)
    assert set(LABELS) <= set(range(sae.d_sae))


@pytest.mark.parametrize(
    "text, kwargs, error, words",
    [
        ("the cat", {"features": [1, 2, 3, 4]}, LimitError, "4 features, at most 3 (max_edits)"),
        (
            "the cat",
            {"features": [32]},
            RequestError,
            "32 is not a feature of this SAE (valid: 0..31)",
        ),
        ("the cat", {"features": [-1]}, RequestError, "(valid: 0..31)"),
        ("the cat", {"top_k": 0}, RequestError, f"top_k: 0 must be an integer in 1..{MAX_TOP_K}"),
        ("the cat", {"top_k": 33}, RequestError, "top_k: 33"),
        ("cat " * 300, {}, PromptTooLong, "the model's context 256"),
        ([{"role": "assistant", "content": "hi"}], {}, ChatError, "must follow a user message"),
    ],
)
def test_every_bound_names_the_value(service, text, kwargs, error, words):
    with pytest.raises(error) as caught:
        service.activations(text, **kwargs)
    assert words in str(caught.value)


def test_prompt_limit_and_unknown_saes_are_named_without_server_paths(tmp_path):
    service = tiny_service(tmp_path, Limits(max_prompt_tokens=5))
    try:
        with pytest.raises(PromptTooLong, match="at most 5 .max_prompt_tokens 5") as caught:
            service.activations("the golden gate bridge is big")
        assert caught.value.param == "text" and "6 tokens" in str(caught.value)
        with pytest.raises(RequestError) as caught:
            service.activations("the cat", "gemma-scope")
        message = str(caught.value)
        assert "'gemma-scope' is not an SAE of this server" in message and "tiny-sae" in message
        assert str(tmp_path) not in message and caught.value.param == "sae"
    finally:
        service.close()
