"""Format loaders: each fixture is written in its real layout and checked against the format's
own forward pass, computed here from the stored tensors (not from the loaded SAE)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import RepositoryNotFoundError
from sae_fixtures import (
    D_IN,
    D_SAE,
    gemma_scope_2_config,
    inputs,
    saelens_tensors,
    saelens_v6_cfg,
    write_dictionary_learning,
    write_gemma_scope,
    write_gemma_scope_2,
    write_goodfire,
    write_llama_scope,
    write_saelens,
    write_sparsify,
)
from safetensors.torch import save_file
from torch import Tensor
from torch.testing import assert_close

from steering import hub
from steering.errors import SAELoadError
from steering.formats import (
    FEATURE_CONTEXTS_FILE,
    FEATURE_LABELS_FILE,
    FEATURE_STATS_FILE,
    load_sae,
)
from steering.formats.writer import save_sae
from steering.sae import SAE, FeatureContext, HookPoint

IDX = torch.tensor([0, 3, 7, 19, 31])
TOL = {"rtol": 1e-5, "atol": 1e-5}


# ---- reference activations, written from each format's definition ----


def relu(pre: Tensor) -> Tensor:
    return torch.where(pre > 0, pre, torch.zeros_like(pre))


def jump(pre: Tensor, threshold: Tensor) -> Tensor:
    return torch.where(pre > threshold, relu(pre), torch.zeros_like(pre))


def top_k_of_relu(pre: Tensor, k: int) -> Tensor:
    """sparsify / dictionary_learning: ReLU, then keep the k largest per token."""
    post = relu(pre)
    values, indices = post.topk(k, dim=-1)
    return torch.zeros_like(post).scatter(-1, indices, values)


def check_forward(sae: SAE, x: Tensor, f_ref: Tensor, decode_ref, columnwise: bool = True) -> None:
    f = sae.encode(x)
    assert_close(f, f_ref, **TOL)
    assert_close(sae.decode(f, x), decode_ref(f_ref), **TOL)
    active = int((f > 0).sum())
    assert 0 < active < f.numel(), "inputs should activate some features and not others"
    if columnwise:
        assert_close(sae.encode_features(x, IDX), f[..., IDX], **TOL)


def assert_threshold_matters(pre: Tensor, threshold: Tensor) -> None:
    """Some pre-activations pass the ReLU but not the threshold, and some pass both."""
    gated_off = (pre > 0) & (pre <= threshold)
    assert gated_off.any() and (pre > threshold).any()


# ---- SAELens ----


def test_saelens_v6_standard(tmp_path):
    t = saelens_tensors("standard")
    w = write_saelens(tmp_path, saelens_v6_cfg("standard", "blocks.3.hook_resid_post"), t)
    sae = load_sae(w.path)
    assert (sae.format, sae.hook, sae.activation) == ("saelens", HookPoint(3, "resid_post"), "relu")
    assert (sae.d_in, sae.d_sae, sae.model_name, sae.source) == (
        D_IN,
        D_SAE,
        "tiny-gpt",
        str(w.path),
    )
    x = inputs()
    f_ref = relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    check_forward(sae, x, f_ref, lambda f: f @ t["W_dec"] + t["b_dec"])


def test_saelens_v6_jumprelu(tmp_path):
    t = saelens_tensors("jumprelu")
    w = write_saelens(tmp_path, saelens_v6_cfg("jumprelu", "blocks.3.hook_resid_post"), t)
    sae = load_sae(w.path)
    assert sae.activation == "jumprelu" and not sae.apply_b_dec_to_input
    x = inputs()
    pre = x @ t["W_enc"] + t["b_enc"]
    assert_threshold_matters(pre, t["threshold"])
    check_forward(sae, x, jump(pre, t["threshold"]), lambda f: f @ t["W_dec"] + t["b_dec"])


def test_saelens_v6_topk_rescaled_by_decoder_norm(tmp_path):
    t = saelens_tensors("topk")
    cfg = saelens_v6_cfg("topk", "blocks.3.hook_resid_post", k=5, rescale_acts_by_decoder_norm=True)
    sae = load_sae(write_saelens(tmp_path, cfg, t).path)
    assert (sae.activation, sae.k) == ("topk", 5)
    x = inputs()
    norms = t["W_dec"].norm(dim=-1)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norms  # SAELens TopKSAE.encode
    values, indices = pre.topk(5, dim=-1)
    f_ref = torch.zeros_like(pre).scatter(-1, indices, relu(values))
    check_forward(sae, x, f_ref, lambda f: (f / norms) @ t["W_dec"] + t["b_dec"], columnwise=False)


def test_saelens_v5_gated(tmp_path):
    t = saelens_tensors("gated")
    cfg = {
        "architecture": "gated",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "model_name": "gemma-2b",
        "hook_name": "blocks.6.hook_resid_post",
        "hook_layer": 6,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
    }
    sae = load_sae(write_saelens(tmp_path, cfg, t, folder="blocks.6.hook_resid_post").path)
    assert (sae.activation, sae.hook, sae.model_name) == ("gated", HookPoint(6), "gemma-2b")
    x = inputs()
    proj = (x - t["b_dec"]) @ t["W_enc"]
    magnitude = relu(proj @ torch.diag(t["r_mag"].exp()) + t["b_mag"])
    f_ref = magnitude * ((proj + t["b_gate"]) > 0)
    check_forward(sae, x, f_ref, lambda f: f @ t["W_dec"] + t["b_dec"])


def test_saelens_very_old_spelling_topk_resid_pre(tmp_path):
    t = saelens_tensors("topk")
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "hook_point": "blocks.2.hook_resid_pre",
        "hook_point_layer": 2,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "normalize_activations": False,
    }
    sae = load_sae(write_saelens(tmp_path, cfg, t, folder="blocks.2.hook_resid_pre").path)
    assert (sae.activation, sae.k, sae.hook) == ("topk", 4, HookPoint(2, "resid_pre"))
    assert sae.apply_b_dec_to_input  # the pre-6 default
    x = inputs()
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    check_forward(
        sae, x, top_k_of_relu(pre, 4), lambda f: f @ t["W_dec"] + t["b_dec"], columnwise=False
    )


def test_saelens_scaling_factor_is_folded_and_ones_dropped(tmp_path):
    t = saelens_tensors("standard") | {"scaling_factor": torch.linspace(0.5, 2.0, D_SAE)}
    cfg = saelens_v6_cfg("standard", "blocks.3.hook_resid_post", finetuning_scaling_factor=True)
    sae = load_sae(write_saelens(tmp_path / "a", cfg, t).path)
    x = inputs()
    f_ref = relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    check_forward(sae, x, f_ref, lambda f: (f * t["scaling_factor"]) @ t["W_dec"] + t["b_dec"])

    ones = saelens_tensors("standard") | {"scaling_factor": torch.ones(D_SAE)}
    sae = load_sae(write_saelens(tmp_path / "b", cfg, ones).path)
    assert torch.equal(sae.W_dec, ones["W_dec"])


def test_saelens_constant_norm_rescale(tmp_path):
    t = saelens_tensors("standard")
    cfg = saelens_v6_cfg(
        "standard", "blocks.3.hook_resid_post", normalize_activations="constant_norm_rescale"
    )
    sae = load_sae(write_saelens(tmp_path, cfg, t).path)
    x = inputs(scale=3.0)
    coeff = D_IN**0.5 / x.norm(dim=-1, keepdim=True)  # SAELens run_time_activation_norm_fn_in
    f_ref = relu((x * coeff - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    check_forward(sae, x, f_ref, lambda f: (f @ t["W_dec"] + t["b_dec"]) / coeff)


def test_saelens_layer_norm_matches_saelens(tmp_path):
    t = saelens_tensors("standard")
    cfg = saelens_v6_cfg("standard", "blocks.3.hook_resid_post", normalize_activations="layer_norm")
    sae = load_sae(write_saelens(tmp_path, cfg, t).path)
    x = inputs(scale=3.0)
    mu, std = (
        x.mean(dim=-1, keepdim=True),
        (x - x.mean(dim=-1, keepdim=True)).std(dim=-1, keepdim=True),
    )
    f_ref = relu(((x - mu) / (std + 1e-5) - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    check_forward(sae, x, f_ref, lambda f: (f @ t["W_dec"] + t["b_dec"]) * std + mu)


def test_saelens_sparsity_file_gives_frequency(tmp_path):
    log10 = torch.linspace(-6, -0.5, D_SAE)
    cfg = saelens_v6_cfg("standard", "blocks.3.hook_resid_post")
    sae = load_sae(write_saelens(tmp_path, cfg, saelens_tensors("standard"), sparsity=log10).path)
    assert_close(sae.frequency, 10**log10)


@pytest.mark.parametrize(
    ("cfg_extra", "message"),
    [
        ({"architecture": "jumprelu_transcoder", "d_out": D_IN}, "transcoder"),
        (
            {"metadata": {"hook_name": "blocks.3.attn.hook_z"}, "reshape_activations": "hook_z"},
            "hook_z",
        ),
        ({"metadata": {"hook_name": "blocks.3.hook_mlp_out"}}, "hook_mlp_out"),
        ({"metadata": {"hook_name": "blocks.3.hook_resid_mid"}}, "hook_resid_mid"),
    ],
)
def test_saelens_non_residual_saes_are_refused(tmp_path, cfg_extra, message):
    cfg = saelens_v6_cfg("standard", "blocks.3.hook_resid_post") | cfg_extra
    with pytest.raises(SAELoadError, match=message) as info:
        load_sae(write_saelens(tmp_path, cfg, saelens_tensors("standard")).path)
    assert "residual" in str(info.value)


# ---- Gemma Scope 1 and 2 ----


@pytest.mark.parametrize("lowercase", [False, True])
def test_gemma_scope(tmp_path, lowercase):
    w = write_gemma_scope(tmp_path, layer=5, lowercase=lowercase)
    sae = load_sae(w.path / "params.npz")  # the file stands for its folder
    t = {k.replace("w_", "W_"): v for k, v in w.tensors.items()}
    assert (sae.format, sae.hook, sae.activation) == ("gemma_scope", HookPoint(5), "jumprelu")
    assert (sae.model_name, sae.apply_b_dec_to_input) == ("google/gemma-2-2b", False)
    x = inputs()
    pre = x @ t["W_enc"] + t["b_enc"]
    assert_threshold_matters(pre, t["threshold"])
    check_forward(sae, x, jump(pre, t["threshold"]), lambda f: f @ t["W_dec"] + t["b_dec"])


@pytest.mark.parametrize(
    "repo", ["gemma-scope-2b-pt-mlp", "gemma-scope-9b-pt-att", "gemma-scope-2b-pt-transcoders"]
)
def test_gemma_scope_non_residual_repos_are_refused(tmp_path, repo):
    with pytest.raises(SAELoadError, match="residual"):
        load_sae(write_gemma_scope(tmp_path, repo=repo).path)


def test_gemma_scope_2_with_config(tmp_path):
    w = write_gemma_scope_2(tmp_path, layer=7, config=gemma_scope_2_config(7))
    sae = load_sae(w.path)
    t = w.tensors
    assert (sae.format, sae.hook, sae.model_name) == (
        "gemma_scope_2",
        HookPoint(7),
        "google/gemma-3-1b-pt",
    )
    x = inputs()
    pre = x @ t["w_enc"] + t["b_enc"]
    assert_threshold_matters(pre, t["threshold"])
    check_forward(sae, x, jump(pre, t["threshold"]), lambda f: f @ t["w_dec"] + t["b_dec"])


def test_gemma_scope_2_without_config_reads_the_folder_name(tmp_path):
    sae = load_sae(write_gemma_scope_2(tmp_path, layer=11, site="resid_post_all").path)
    assert (sae.hook, sae.model_name) == (HookPoint(11), None)


@pytest.mark.parametrize(
    ("site", "config", "extra"),
    [
        ("transcoder", gemma_scope_2_config(7, type="transcoder"), None),
        ("resid_post", gemma_scope_2_config(7, affine_connection=True), None),
        (
            "mlp_out",
            gemma_scope_2_config(
                7,
                hf_hook_point_in="model.layers.7.post_feedforward_layernorm.output",
                hf_hook_point_out="model.layers.7.post_feedforward_layernorm.output",
            ),
            None,
        ),
        ("mlp_out", None, None),
        ("resid_post", None, {"affine_skip_connection": torch.zeros(D_IN, D_IN)}),
    ],
)
def test_gemma_scope_2_non_residual_saes_are_refused(tmp_path, site, config, extra):
    w = write_gemma_scope_2(tmp_path, site=site, config=config, extra_tensors=extra)
    with pytest.raises(SAELoadError, match="residual"):
        load_sae(w.path)


# ---- sparsify ----


def test_sparsify(tmp_path):
    w = write_sparsify(tmp_path, folder="layers.4", k=6)
    sae = load_sae(w.path)
    t = w.tensors
    assert (sae.format, sae.hook, sae.activation, sae.k) == ("sparsify", HookPoint(4), "topk", 6)
    assert sae.model_name == "EleutherAI/pythia-tiny"
    x = inputs()
    pre = (x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]
    check_forward(
        sae, x, top_k_of_relu(pre, 6), lambda f: f @ t["W_dec"] + t["b_dec"], columnwise=False
    )


def test_sparsify_zero_num_latents_and_seed_folder(tmp_path):
    sae = load_sae(write_sparsify(tmp_path, folder="layers.2/seed1", num_latents=0).path)
    assert (sae.hook, sae.d_sae) == (HookPoint(2), D_SAE)


@pytest.mark.parametrize(
    ("folder", "cfg", "message"),
    [
        ("layers.4", {"signed": True}, "signed"),
        ("layers.4", {"transcode": True}, "transcoder"),
        ("layers.4", {"skip_connection": True}, "skip"),
        ("layers.4", {"activation": "groupmax"}, "groupmax"),
        ("embed_tokens", {}, "decoder layer"),
        ("layers.4.mlp", {}, "decoder layer"),
        ("layers.4", {"num_latents": 48}, "num_latents"),
    ],
)
def test_sparsify_unsupported(tmp_path, folder, cfg, message):
    with pytest.raises(SAELoadError, match=message):
        load_sae(write_sparsify(tmp_path, folder=folder, **cfg).path)


# ---- Goodfire ----


@pytest.mark.parametrize("give_folder", [False, True])
def test_goodfire(tmp_path, give_folder):
    w = write_goodfire(tmp_path, layer=19)
    sae = load_sae(w.path.parent if give_folder else w.path)
    t = w.tensors
    assert (sae.format, sae.hook, sae.activation) == ("goodfire", HookPoint(19), "relu")
    assert sae.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    x = inputs()
    f_ref = relu(x @ t["encoder_linear.weight"].T + t["encoder_linear.bias"])
    check_forward(
        sae, x, f_ref, lambda f: f @ t["decoder_linear.weight"].T + t["decoder_linear.bias"]
    )


# ---- Llama Scope ----


def test_llama_scope_transcoder_is_refused(tmp_path):
    w = write_llama_scope(tmp_path, hook_point_out="blocks.15.hook_mlp_out")
    with pytest.raises(SAELoadError, match="residual"):
        load_sae(w.path)


# ---- dictionary_learning ----


def linear_parts(t: dict[str, Tensor], bias_key: str):
    return t["encoder.weight"], t.get("encoder.bias"), t["decoder.weight"], t[bias_key]


def test_dictionary_learning_autoencoder(tmp_path):
    w = write_dictionary_learning(tmp_path, "AutoEncoder", layer=15)
    sae = load_sae(w.path)
    enc_w, enc_b, dec_w, bias = linear_parts(w.tensors, "bias")
    assert (sae.format, sae.hook, sae.activation) == ("dictionary_learning", HookPoint(15), "relu")
    assert sae.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    x = inputs()
    check_forward(sae, x, relu((x - bias) @ enc_w.T + enc_b), lambda f: f @ dec_w.T + bias)


def test_dictionary_learning_autoencoder_new(tmp_path):
    w = write_dictionary_learning(tmp_path, "AutoEncoderNew")
    enc_w, enc_b, dec_w, dec_b = linear_parts(w.tensors, "decoder.bias")
    x = inputs()
    check_forward(load_sae(w.path), x, relu(x @ enc_w.T + enc_b), lambda f: f @ dec_w.T + dec_b)


def test_dictionary_learning_topk(tmp_path):
    w = write_dictionary_learning(tmp_path, "AutoEncoderTopK", k=5)
    sae = load_sae(w.path)
    enc_w, enc_b, dec_w, b_dec = linear_parts(w.tensors, "b_dec")
    assert (sae.activation, sae.k) == ("topk", 5)
    x = inputs()
    check_forward(
        sae,
        x,
        top_k_of_relu((x - b_dec) @ enc_w.T + enc_b, 5),
        lambda f: f @ dec_w.T + b_dec,
        columnwise=False,
    )


def test_dictionary_learning_batch_topk_uses_its_threshold(tmp_path):
    w = write_dictionary_learning(tmp_path, "BatchTopKSAE", threshold=0.4)
    sae = load_sae(w.path)
    enc_w, enc_b, dec_w, b_dec = linear_parts(w.tensors, "b_dec")
    assert sae.activation == "jumprelu"
    x = inputs()
    post = relu((x - b_dec) @ enc_w.T + enc_b)  # BatchTopKSAE.encode(use_threshold=True)
    assert_threshold_matters(post, torch.tensor(0.4))
    check_forward(sae, x, post * (post > 0.4), lambda f: f @ dec_w.T + b_dec)


def test_dictionary_learning_matryoshka(tmp_path):
    w = write_dictionary_learning(tmp_path, "MatryoshkaBatchTopKSAE", threshold=0.3)
    t = w.tensors
    x = inputs()
    post = relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    check_forward(load_sae(w.path), x, post * (post > 0.3), lambda f: f @ t["W_dec"] + t["b_dec"])


def test_dictionary_learning_jumprelu(tmp_path):
    w = write_dictionary_learning(tmp_path, "JumpReluAutoEncoder")
    t = w.tensors
    x = inputs()
    pre = x @ t["W_enc"] + t["b_enc"]
    assert_threshold_matters(pre, t["threshold"])
    check_forward(
        load_sae(w.path), x, jump(pre, t["threshold"]), lambda f: f @ t["W_dec"] + t["b_dec"]
    )


def test_dictionary_learning_gated(tmp_path):
    w = write_dictionary_learning(tmp_path, "GatedAutoEncoder")
    t = w.tensors
    x = inputs()
    x_enc = (x - t["decoder_bias"]) @ t["encoder.weight"].T
    f_ref = ((x_enc + t["gate_bias"]) > 0) * relu(t["r_mag"].exp() * x_enc + t["mag_bias"])
    check_forward(
        load_sae(w.path), x, f_ref, lambda f: f @ t["decoder.weight"].T + t["decoder_bias"]
    )


def test_dictionary_learning_layer_from_folder_name(tmp_path):
    w = write_dictionary_learning(tmp_path, "AutoEncoder", layer=11, trainer_extra={"layer": None})
    assert load_sae(w.path).hook == HookPoint(11)


def test_dictionary_learning_unknown_class(tmp_path):
    w = write_dictionary_learning(tmp_path, "AutoEncoder", trainer_extra={"dict_class": "Foo"})
    with pytest.raises(SAELoadError, match="dict_class 'Foo'"):
        load_sae(w.path)


# ---- layers, sidecars, dtypes ----


def test_layer_missing_names_the_argument_and_override_sets_it(tmp_path):
    w = write_goodfire(tmp_path)
    renamed = w.path.rename(tmp_path / "my_sae.pth")
    with pytest.raises(SAELoadError, match=r"layer=N"):
        load_sae(renamed)
    assert load_sae(renamed, layer=7).hook == HookPoint(7)


def test_layer_override_that_disagrees_warns(tmp_path):
    with pytest.warns(UserWarning, match="layer=12"):
        sae = load_sae(write_goodfire(tmp_path, layer=19).path, layer=12)
    assert sae.hook == HookPoint(12)


def test_sidecar_stats_and_labels(tmp_path):
    w = write_gemma_scope(tmp_path)
    max_act, freq = torch.linspace(1, 9, D_SAE), torch.linspace(0, 0.5, D_SAE)
    save_file({"max_activation": max_act, "frequency": freq}, w.path / FEATURE_STATS_FILE)
    (w.path / FEATURE_LABELS_FILE).write_text(json.dumps({"3": "bridges", "31": "fear"}))
    sae = load_sae(w.path)
    assert_close(sae.max_activation, max_act)
    assert_close(sae.frequency, freq)
    assert sae.labels == {3: "bridges", 31: "fear"}
    assert sae.max_activation_of(3) == pytest.approx(float(max_act[3]))


def test_sidecar_contexts_round_trip_and_bad_ones_are_refused(tmp_path):
    w = write_gemma_scope(tmp_path)
    contexts = {
        "3": [
            {"left": "the golden gate", "token": " bridge", "right": " is red", "activation": 4.5},
            {"left": "a", "token": " bridge", "right": "", "activation": 2},
        ]
    }
    (w.path / FEATURE_CONTEXTS_FILE).write_text(json.dumps(contexts))
    sae = load_sae(w.path)
    assert sae.contexts == {
        3: (
            FeatureContext("the golden gate", " bridge", " is red", 4.5),
            FeatureContext("a", " bridge", "", 2.0),
        )
    }
    again = load_sae(save_sae(sae, tmp_path / "copy"))
    assert again.contexts == sae.contexts
    for bad in (
        {"32": []},
        {"3": [{"left": "a", "token": "b", "right": "c"}]},
        {"3": [{"left": "a", "token": "b", "right": "c", "activation": float("nan")}]},
        {"3": [{"left": "a" * 401, "token": "b", "right": "c", "activation": 1}]},
        {"3": [{"left": "a", "token": "b", "right": "c", "activation": 1}] * 21},
    ):
        (w.path / FEATURE_CONTEXTS_FILE).write_text(json.dumps(bad))
        with pytest.raises(SAELoadError, match=FEATURE_CONTEXTS_FILE):
            load_sae(w.path)


@pytest.mark.parametrize("labels", [{"32": "out of range"}, {"x": "not an index"}, {"1": 5}])
def test_bad_labels_are_refused(tmp_path, labels):
    w = write_gemma_scope(tmp_path)
    (w.path / FEATURE_LABELS_FILE).write_text(json.dumps(labels))
    with pytest.raises(SAELoadError, match=FEATURE_LABELS_FILE):
        load_sae(w.path)


def test_sidecar_stats_of_the_wrong_width_are_refused(tmp_path):
    w = write_gemma_scope(tmp_path)
    save_file({"max_activation": torch.ones(D_SAE + 1)}, w.path / FEATURE_STATS_FILE)
    with pytest.raises(SAELoadError, match="max_activation"):
        load_sae(w.path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16", "torch.bfloat16"])
def test_dtype_and_device(tmp_path, dtype):
    w = write_gemma_scope(tmp_path)
    save_file({"max_activation": torch.ones(D_SAE)}, w.path / FEATURE_STATS_FILE)
    sae = load_sae(w.path, dtype=dtype, device="cpu")
    assert sae.W_enc.dtype == sae.W_dec.dtype == sae.threshold.dtype == torch.bfloat16
    assert sae.max_activation.dtype == torch.float32  # statistics stay float32
    assert sae.device == torch.device("cpu")
    assert sae.encode(inputs()).dtype == torch.bfloat16
    assert load_sae(w.path).dtype == torch.float32


def test_unknown_dtype(tmp_path):
    with pytest.raises(SAELoadError, match="float8"):
        load_sae(write_gemma_scope(tmp_path).path, dtype="float8")


# ---- errors ----


def test_unknown_folder_lists_files_formats_and_sae_folders_below(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    (tmp_path / "notes.txt").write_text("hi")
    write_sparsify(tmp_path, folder="layers.4")
    with pytest.raises(SAELoadError) as info:
        load_sae(tmp_path)
    message = str(info.value)
    for expected in (
        "weights.bin",
        "notes.txt",
        "sae_weights.safetensors",
        "params.npz",
        "hyperparams.json",
        "ae.pt",
        "sae-tiny-2x/layers.4",
    ):
        assert expected in message


def test_missing_tensor_names_it_and_the_keys_present(tmp_path):
    t = saelens_tensors("standard")
    del t["b_dec"]
    w = write_saelens(tmp_path, saelens_v6_cfg("standard", "blocks.3.hook_resid_post"), t)
    with pytest.raises(SAELoadError, match=r"'b_dec' is missing; tensors present: W_dec, W_enc"):
        load_sae(w.path)


def test_wrong_shape(tmp_path):
    t = saelens_tensors("standard")
    t["W_dec"] = t["W_dec"][:, :-1]
    w = write_saelens(tmp_path, saelens_v6_cfg("standard", "blocks.3.hook_resid_post"), t)
    with pytest.raises(SAELoadError, match="W_dec has shape"):
        load_sae(w.path)


def test_truncated_safetensors(tmp_path):
    w = write_saelens(
        tmp_path,
        saelens_v6_cfg("standard", "blocks.3.hook_resid_post"),
        saelens_tensors("standard"),
    )
    weights = w.path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(SAELoadError, match="sae_weights.safetensors"):
        load_sae(w.path)


def test_invalid_cfg_json(tmp_path):
    w = write_saelens(
        tmp_path,
        saelens_v6_cfg("standard", "blocks.3.hook_resid_post"),
        saelens_tensors("standard"),
    )
    (w.path / "cfg.json").write_text('{"architecture": "standard",')
    with pytest.raises(SAELoadError, match="cfg.json"):
        load_sae(w.path)


def test_npz_that_is_not_a_zip(tmp_path):
    w = write_gemma_scope(tmp_path)
    (w.path / "params.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(SAELoadError, match="params.npz"):
        load_sae(w.path)


EXECUTED = []


def _payload_ran() -> dict:
    EXECUTED.append(True)
    return {}


class Payload:
    """Unpickling this calls _payload_ran: a stand-in for code hidden in a checkpoint."""

    def __reduce__(self):
        return (_payload_ran, ())


@pytest.mark.parametrize("writer", ["goodfire", "dictionary_learning"])
def test_pickle_with_code_is_refused_and_not_run(tmp_path, writer):
    if writer == "goodfire":
        path = write_goodfire(tmp_path).path
        target = path
    else:
        path = write_dictionary_learning(tmp_path, "AutoEncoder").path
        target = path / "ae.pt"
    state = torch.load(target, weights_only=True) | {"extra": Payload()}
    torch.save(state, target)
    with pytest.raises(SAELoadError, match="weights-only"):
        load_sae(path)
    assert not EXECUTED


def test_offline_hub_id_explains_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SAELoadError) as info:
        load_sae("no-such-owner-7f3a/no-such-saes/layer_3/width_16k")
    message = str(info.value)
    assert "not a local file or folder" in message
    assert "HF_HUB_OFFLINE" in message
    assert "hf download no-such-owner-7f3a/no-such-saes --include 'layer_3/width_16k/*'" in message


@pytest.mark.parametrize("name", ["just-a-name", "/no/such/folder/for/sae", "./missing"])
def test_neither_a_path_nor_a_hub_id(name):
    with pytest.raises(SAELoadError, match="owner/repo"):
        load_sae(name)


def test_a_file_of_no_known_kind(tmp_path):
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(SAELoadError, match="not an SAE file"):
        load_sae(tmp_path / "README.md")


def test_a_path_object_is_never_a_hub_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SAELoadError, match="no such file or folder"):
        load_sae(Path("owner/repo"))


# ---- the Hub, with huggingface_hub's client replaced (no network in tests) ----

GEMMA_SUB = "layer_5/width_16k/average_l0_71"


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr(hub, "hub_offline", lambda: False)


def fake_snapshot(folder: Path, calls: list):
    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    return snapshot_download


def test_hub_reference_fetches_only_its_sub_folder(tmp_path, monkeypatch, online):
    snapshot = tmp_path / "models--google--gemma-scope-2b-pt-res" / "snapshots" / "abc"
    write_gemma_scope(snapshot.parent, layer=5, repo="abc")
    calls: list = []
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot(snapshot, calls))
    name = f"google/gemma-scope-2b-pt-res/{GEMMA_SUB}"
    sae = load_sae(name, revision="v1")
    assert calls == [
        (
            "google/gemma-scope-2b-pt-res",
            {
                "revision": "v1",
                "allow_patterns": [GEMMA_SUB, f"{GEMMA_SUB}/*"],
                "local_files_only": False,
            },
        )
    ]
    assert (sae.source, sae.hook, sae.model_name) == (name, HookPoint(5), "google/gemma-2-2b")


def test_hub_sub_folder_missing_from_the_repo(tmp_path, monkeypatch, online):
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot(tmp_path, []))
    with pytest.raises(SAELoadError, match="has no 'layer_99'"):
        load_sae("google/gemma-scope-2b-pt-res/layer_99")


def test_hub_repo_with_sub_folders_asks_for_one(monkeypatch, online):
    files = ["README.md", f"{GEMMA_SUB}/params.npz", "layer_6/width_16k/average_l0_70/params.npz"]
    monkeypatch.setattr(hub.HfApi, "list_repo_files", lambda self, repo_id, revision=None: files)
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot(Path("/nowhere"), []))
    with pytest.raises(SAELoadError, match=f"e.g. google/gemma-scope-2b-pt-res/{GEMMA_SUB}"):
        load_sae("google/gemma-scope-2b-pt-res")


def test_hub_repo_not_found(monkeypatch, online):
    def missing(repo_id, **kwargs):
        response = SimpleNamespace(headers={}, request=None, status_code=404)  # as the client's
        raise RepositoryNotFoundError("404 Repository Not Found", response=response)

    monkeypatch.setattr(hub, "snapshot_download", missing)
    with pytest.raises(SAELoadError, match="no such repo") as info:
        load_sae("someone/missing-saes/layer_1")
    assert "hf download someone/missing-saes --include 'layer_1/*'" in str(info.value)
