"""Config fields that change what an SAE reads or writes: each is honoured (checked against a
reference written here from the field's definition in its source library) or refused with an
error naming the field and its value. Fields that only describe training are accepted and must
change nothing. The table is docs/sae-config-fields.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sae_fixtures import (
    D_IN,
    D_SAE,
    gemma_scope_2_config,
    inputs,
    saelens_tensors,
    saelens_v6_cfg,
    write_dictionary_learning,
    write_gemma_scope_2,
    write_goodfire,
    write_llama_scope,
    write_saelens,
    write_sparsify,
)
from tiny_models import HIDDEN, tiny_model
from torch import Tensor
from torch.testing import assert_close

from steering import clamp, hub, steer
from steering.errors import SAELoadError
from steering.formats import load_sae
from steering.formats.writer import save_sae
from steering.models import find_layers
from steering.sae import SAE, HookPoint

TOL = {"rtol": 1e-5, "atol": 1e-5}
HOOK = "blocks.3.hook_resid_post"
CENTRED = {"center_writing_weights": True}


def relu(pre: Tensor) -> Tensor:
    return torch.where(pre > 0, pre, torch.zeros_like(pre))


def same_sae(a: SAE, b: SAE) -> None:
    """Two loads that must mean the same function: identical tensors and settings."""
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name
    settings = ("hook", "activation", "k", "apply_b_dec_to_input", "normalization")
    assert [getattr(a, s) for s in settings] == [getattr(b, s) for s in settings]


def refused(path: Path, *needles: str) -> str:
    with pytest.raises(SAELoadError) as info:
        load_sae(path)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    return message


# ---- SAELens: center_writing_weights (TransformerLens weight processing) ----


def tl_centred_gpt2(model: torch.nn.Module) -> torch.nn.Module:
    """The GPT-2 TransformerLens runs with center_writing_weights (transformer-lens 4.3.0
    ProcessWeights.center_writing_weights): every weight and bias that writes to the residual
    (W_E, W_pos, W_O, b_O, W_out, b_out) minus its mean over d_model. HF Conv1D weights are
    (in, out), so d_model is their last axis."""
    centred = tiny_model("gpt2")
    centred.load_state_dict(model.state_dict())
    with torch.no_grad():
        params = [centred.transformer.wte.weight, centred.transformer.wpe.weight]
        for block in centred.transformer.h:
            params += [block.attn.c_proj.weight, block.attn.c_proj.bias]
            params += [block.mlp.c_proj.weight, block.mlp.c_proj.bias]
        for p in params:
            p -= p.mean(dim=-1, keepdim=True)
    return centred


def layer_output(model: torch.nn.Module, layer: int, ids: Tensor) -> Tensor:
    seen: list[Tensor] = []

    def hook(_m, _a, out):
        seen.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    handle = find_layers(model)[0][layer].register_forward_hook(hook)
    with torch.no_grad():
        model(ids)
    handle.remove()
    return seen[0]


IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 40, 41, 7, 3]])


def write_gpt2_sae(root: Path, tensors: dict, **metadata) -> Path:
    cfg = saelens_v6_cfg("standard", "blocks.2.hook_resid_post", d_in=HIDDEN, d_sae=D_SAE)
    cfg["metadata"] |= {"model_name": "gpt2-small", **metadata}
    return write_saelens(root, cfg, tensors, folder="blocks.2.hook_resid_post").path


def test_center_writing_weights_reads_the_transformer_lens_residual(tmp_path):
    """The SAE sees TransformerLens' centred residual: encode on the HF residual equals the SAE
    definition on the residual of the centred model, and decode maps back to HF units."""
    hf = tiny_model("gpt2")
    with torch.no_grad():  # a residual with a large mean component, as real GPT-2 has
        hf.transformer.wpe.weight += 0.5
    tl = tl_centred_gpt2(hf)
    x_hf, x_tl = layer_output(hf, 2, IDS), layer_output(tl, 2, IDS)
    assert_close(x_tl, x_hf - x_hf.mean(dim=-1, keepdim=True), **TOL)  # the derivation
    with torch.no_grad():  # centring changes nothing downstream: LayerNorm removes the mean
        assert_close(tl(IDS).logits, hf(IDS).logits, atol=1e-4, rtol=1e-4)

    t = saelens_tensors("standard", d_in=HIDDEN)
    sae = load_sae(write_gpt2_sae(tmp_path, t, model_from_pretrained_kwargs=CENTRED))
    assert sae.normalization == "center"
    f_ref = relu((x_tl - t["b_dec"]) @ t["W_enc"] + t["b_enc"])  # SAELens StandardSAE.encode
    assert 0 < int((f_ref > 0).sum()) < f_ref.numel()
    assert_close(sae.encode(x_hf), f_ref, **TOL)
    recon_tl = f_ref @ t["W_dec"] + t["b_dec"]
    assert_close(sae.decode(f_ref, x_hf), recon_tl + (x_hf - x_tl), **TOL)
    assert_close(sae.encode_features(x_hf, [0, 5, 31]), f_ref[..., [0, 5, 31]], **TOL)


@settings(max_examples=40, deadline=None)
@given(
    shift=st.floats(-50, 50, allow_nan=False),
    seed=st.integers(0, 2**16),
)
def test_centred_sae_does_not_see_the_residual_mean(shift, seed):
    """A centred SAE reads x - mean(x): adding a constant to every coordinate changes no
    feature, and the reconstruction moves by that constant."""
    t = saelens_tensors("jumprelu", seed=seed % 7)
    sae = SAE(
        W_enc=t["W_enc"],
        b_enc=t["b_enc"],
        W_dec=t["W_dec"],
        b_dec=t["b_dec"],
        hook=HookPoint(3),
        activation="jumprelu",
        threshold=t["threshold"],
        normalization="center",
    )
    x = torch.randn(8, D_IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x, moved = x.float(), (x + shift).float()
    f = sae.encode(x)
    assert_close(sae.encode(moved), f, atol=1e-4, rtol=1e-4)
    assert_close(sae.decode(f, moved), sae.decode(f, x) + shift, atol=1e-4, rtol=1e-4)


def clamp_read_back(sae: SAE, model: torch.nn.Module, feature: int, target: float) -> Tensor:
    """Feature ``feature`` of the steered residual, read in the SAE's own input space (the
    TransformerLens-centred residual), after clamping it to ``target``."""
    with steer(model, clamp(sae, feature, target)):
        x = layer_output(model, 2, IDS)
    x_tl = x - x.mean(dim=-1, keepdim=True)
    return relu((x_tl - sae.b_dec) @ sae.W_enc[:, feature] + sae.b_enc[feature])


def test_center_writing_weights_clamp_reads_back_its_target(tmp_path):
    """Clamping a feature of a centred SAE to 10 sets it to 10 in the SAE's own input space.
    The encoder column reads the residual's mean too (as real ones may: training data has
    none), so encoding the raw HF residual would clamp the wrong quantity."""
    model = tiny_model("gpt2")
    with torch.no_grad():
        model.transformer.wpe.weight += 0.5
    feature = 4
    t = saelens_tensors("standard", d_in=HIDDEN)
    c = t["W_dec"][feature] - t["W_dec"][feature].mean()
    t["W_enc"][:, feature] = c / c.dot(c) + 0.2  # centred decoder row . column = 1
    t["b_enc"][feature] = 20.0  # always on
    sae = load_sae(write_gpt2_sae(tmp_path, t, model_from_pretrained_kwargs=CENTRED))
    read = clamp_read_back(sae, model, feature, 10.0)
    assert_close(read, torch.full_like(read, 10.0), atol=1e-4, rtol=1e-5)


def test_center_writing_weights_on_an_rms_norm_model_changes_nothing(tmp_path):
    """TransformerLens skips centring for RMSNorm models (process_weights), so the flag is a
    no-op there: the SAE reads the raw residual."""
    t = saelens_tensors("standard")
    plain = saelens_v6_cfg("standard", HOOK)
    plain["metadata"]["model_name"] = "gemma-2b"
    flagged = json.loads(json.dumps(plain))
    flagged["metadata"]["model_from_pretrained_kwargs"] = CENTRED
    a = load_sae(write_saelens(tmp_path / "a", plain, t).path)
    b = load_sae(write_saelens(tmp_path / "b", flagged, t).path)
    same_sae(a, b)
    assert b.normalization == "none"


def test_center_writing_weights_of_an_unknown_model_is_refused(tmp_path):
    cfg = saelens_v6_cfg("standard", HOOK)  # model_name "tiny-gpt"
    cfg["metadata"]["model_from_pretrained_kwargs"] = CENTRED
    message = refused(
        write_saelens(tmp_path, cfg, saelens_tensors("standard")).path,
        "model_from_pretrained_kwargs.center_writing_weights=true",
        "'tiny-gpt'",
    )
    assert "LayerNorm" in message


def test_center_with_layer_norm_is_layer_norm_and_with_norm_rescale_is_refused(tmp_path):
    t = saelens_tensors("standard")
    cfg = saelens_v6_cfg("standard", HOOK, normalize_activations="layer_norm")
    cfg["metadata"] |= {"model_name": "gpt2", "model_from_pretrained_kwargs": CENTRED}
    sae = load_sae(write_saelens(tmp_path / "a", cfg, t).path)
    x = inputs(scale=3.0) + 2.0
    x_tl = x - x.mean(dim=-1, keepdim=True)
    mu, std = x_tl.mean(dim=-1, keepdim=True), x_tl.std(dim=-1, keepdim=True)  # mu is 0
    f_ref = relu(((x_tl - mu) / (std + 1e-5) - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    assert_close(sae.encode(x), f_ref, **TOL)
    recon_tl = (f_ref @ t["W_dec"] + t["b_dec"]) * std + mu
    assert_close(sae.decode(f_ref, x), recon_tl + (x - x_tl), **TOL)

    cfg["normalize_activations"] = "constant_norm_rescale"
    refused(
        write_saelens(tmp_path / "b", cfg, t).path,
        'normalize_activations="constant_norm_rescale"',
        "center_writing_weights",
    )


def test_saved_centred_sae_loads_back_centred(tmp_path):
    t = saelens_tensors("standard", d_in=HIDDEN)
    sae = load_sae(write_gpt2_sae(tmp_path / "a", t, model_from_pretrained_kwargs=CENTRED))
    again = load_sae(save_sae(sae, tmp_path / "b"))
    same_sae(sae, again)
    cfg = json.loads((tmp_path / "b" / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["model_from_pretrained_kwargs"] == CENTRED


# ---- SAELens: what the release registry adds to native files ----


def cache_folder(root: Path, repo: str, folder: str) -> Path:
    owner, name = repo.split("/")
    return root / f"models--{owner}--{name}" / "snapshots" / "0123abc" / folder


def write_in_cache(root: Path, repo: str, folder: str, cfg: dict, t: dict) -> Path:
    path = cache_folder(root, repo, folder)
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in t.items()}, path / "sae_weights.safetensors")
    return path


def pre6_cfg(hook: str, model_name: str, **extra) -> dict:
    """A flat config as the GPT-2 res-jb files have it (no model_from_pretrained_kwargs)."""
    layer = int(hook.split(".")[1])
    return {
        "d_in": HIDDEN if model_name.startswith("gpt2") else D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "model_name": model_name,
        "hook_point": hook,
        "hook_point_layer": layer,
        "hook_point_head_index": None,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "context_size": 128,
        "prepend_bos": True,
        "l1_coefficient": 8e-05,
        **extra,
    }


def test_registry_centres_the_gpt2_res_jb_files(tmp_path):
    """SAELens' registry adds center_writing_weights to gpt2-small-res-jb (pretrained_saes.yaml
    config_overrides), whose cfg.json does not say it."""
    repo = "jbloom/GPT2-Small-SAEs-Reformatted"
    t = saelens_tensors("standard", d_in=HIDDEN)
    path = write_in_cache(
        tmp_path, repo, "blocks.2.hook_resid_pre", pre6_cfg("blocks.2.hook_resid_pre", "gpt2"), t
    )
    sae = load_sae(path)
    assert sae.normalization == "center"
    x = inputs(scale=2.0) @ torch.randn(D_IN, HIDDEN, generator=torch.Generator().manual_seed(1))
    x_tl = x - x.mean(dim=-1, keepdim=True)
    assert_close(sae.encode(x), relu((x_tl - t["b_dec"]) @ t["W_enc"] + t["b_enc"]), **TOL)
    # the same files anywhere else mean what their cfg.json says
    plain = write_saelens(tmp_path, pre6_cfg("blocks.2.hook_resid_pre", "gpt2"), t).path
    assert load_sae(plain).normalization == "none"


def test_registry_is_found_from_a_hub_reference(tmp_path, monkeypatch):
    repo = "jbloom/GPT2-Small-SAEs-Reformatted"
    t = saelens_tensors("standard", d_in=HIDDEN)
    folder = write_saelens(
        tmp_path, pre6_cfg("blocks.8.hook_resid_pre", "gpt2-small"), t, "blocks.8.hook_resid_pre"
    ).path
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, **kw: str(folder.parent))
    sae = load_sae(f"{repo}/blocks.8.hook_resid_pre")
    assert (sae.normalization, str(sae.hook)) == ("center", "blocks.8.hook_resid_pre")


def test_registry_normalisation_of_the_mistral_files(tmp_path):
    repo = "JoshEngels/Mistral-7B-Residual-Stream-SAEs"
    t = saelens_tensors("standard")
    cfg = pre6_cfg("blocks.8.hook_resid_pre", "mistral-7b")
    sae = load_sae(write_in_cache(tmp_path, repo, "mistral_7b_layer_8", cfg, t))
    assert sae.normalization == "constant_norm_rescale"
    x = inputs(scale=3.0)
    coeff = D_IN**0.5 / x.norm(dim=-1, keepdim=True)  # SAELens run_time_activation_norm_fn_in
    f_ref = relu((x * coeff - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    assert_close(sae.encode(x), f_ref, **TOL)
    assert_close(sae.decode(f_ref, x), (f_ref @ t["W_dec"] + t["b_dec"]) / coeff, **TOL)


def test_registry_scaling_factor_of_gemma_2b_res_jb_layer_12(tmp_path):
    repo, folder = (
        "jbloom/Gemma-2b-Residual-Stream-SAEs",
        "gemma_2b_blocks.12.hook_resid_post_16384",
    )
    t = saelens_tensors("standard")
    cfg = pre6_cfg("blocks.12.hook_resid_post", "gemma-2b", normalize_activations=True)
    sae = load_sae(write_in_cache(tmp_path, repo, folder, cfg, t))
    s = 0.21381938399317255  # pretrained_saes.yaml norm_scaling_factor
    x = inputs(scale=20.0)
    f_ref = relu((x * s - t["b_dec"]) @ t["W_enc"] + t["b_enc"])  # ActivationScaler.scale
    assert_close(sae.encode(x), f_ref, **TOL)
    assert_close(sae.decode(f_ref, x), (f_ref @ t["W_dec"] + t["b_dec"]) / s, **TOL)


# ---- SAELens: normalize_activations ----


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_expected_average_only_in_with_the_trainers_scaling_factor(tmp_path, architecture):
    """SAELens' trainer multiplies inputs by s (ActivationScaler.scale), divides outputs by it
    (unscale) and keeps s in a checkpoint's activation_scaler.json; at the end of training
    fold_activation_norm_scaling_factor makes W_enc * s, W_dec / s, b_dec / s."""
    s = 2.5
    t = saelens_tensors(architecture)
    extra = {"k": 5, "rescale_acts_by_decoder_norm": True} if architecture == "topk" else {}
    cfg = saelens_v6_cfg(architecture, HOOK, normalize_activations="expected_average_only_in")
    w = write_saelens(tmp_path, cfg | extra, t)
    (w.path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": s}))
    sae = load_sae(w.path)
    x = inputs()
    b_dec = t["b_dec"] if cfg["apply_b_dec_to_input"] else torch.zeros(D_IN)
    pre = (x * s - b_dec) @ t["W_enc"] + t["b_enc"]  # the SAE of s * x
    if architecture == "topk":  # SAELens TopKSAE.encode / decode on the folded weights
        W_dec = t["W_dec"] / s
        norms = W_dec.norm(dim=-1)
        values, indices = (pre * norms).topk(5, dim=-1)
        f_ref = torch.zeros_like(pre).scatter(-1, indices, relu(values))
        recon = (f_ref / norms) @ W_dec + t["b_dec"] / s
    else:
        gate = pre > t["threshold"] if architecture == "jumprelu" else pre > 0
        f_ref = relu(pre) * gate
        recon = (f_ref @ t["W_dec"] + t["b_dec"]) / s
    assert_close(sae.encode(x), f_ref, **TOL)
    assert_close(sae.decode(f_ref, x), recon, **TOL)


@pytest.mark.parametrize("value", ["expected_average_only_in", True])
def test_expected_average_only_in_without_its_factor_is_refused(tmp_path, value):
    cfg = saelens_v6_cfg("standard", HOOK, normalize_activations=value)
    message = refused(
        write_saelens(tmp_path, cfg, saelens_tensors("standard")).path,
        'normalize_activations="expected_average_only_in"',
        "activation_scaler.json",
    )
    assert "scaling_factor" in message


def test_a_scaling_factor_the_config_does_not_use_is_refused(tmp_path):
    w = write_saelens(tmp_path, saelens_v6_cfg("standard", HOOK), saelens_tensors("standard"))
    (w.path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 3.0}))
    refused(w.path, 'normalize_activations="none"', "activation_scaler.json")
    (w.path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": None}))
    assert load_sae(w.path).normalization == "none"  # what a finished training leaves


# ---- SAELens: fields refused, naming field and value ----

SAELENS_REFUSED = [
    ({"metadata": {"hook_name": HOOK, "hook_head_index": 3}}, "hook_head_index=3"),
    ({"reshape_activations": "flatten"}, 'reshape_activations="flatten"'),
    ({"metadata": {"hook_name": HOOK, "model_class_name": "HookedMamba"}}, "model_class_name"),
    (
        {"metadata": {"hook_name": HOOK, "model_class_name": "AutoModelForCausalLM"}},
        'model_class_name="AutoModelForCausalLM"',
    ),
    (
        {"metadata": {"hook_name": HOOK, "model_from_pretrained_kwargs": {"checkpoint_index": 3}}},
        "model_from_pretrained_kwargs.checkpoint_index=3",
    ),
    (
        {"metadata": {"hook_name": HOOK, "model_from_pretrained_kwargs": {"fold_ln": "yes"}}},
        'model_from_pretrained_kwargs.fold_ln="yes"',
    ),
    (
        {"metadata": {"hook_name": HOOK, "model_from_pretrained_kwargs": "center"}},
        'model_from_pretrained_kwargs="center"',
    ),
    (
        {"metadata": {"hook_name": HOOK, "hf_hook_name": "model.layers.4.output"}},
        'hf_hook_name="model.layers.4.output"',
    ),
    ({"apply_b_dec_to_input": "false"}, 'apply_b_dec_to_input="false"'),
    ({"rescale_acts_by_decoder_norm": True}, "rescale_acts_by_decoder_norm=true"),
    ({"architecture": "batchtopk"}, 'architecture="batchtopk"'),
    ({"architecture": "temporal"}, 'architecture="temporal"'),
    ({"normalize_activations": "covariance_whitening"}, "covariance_whitening"),
    ({"normalize_activations": "rms"}, 'normalize_activations="rms"'),
    ({"dtype": "int8"}, 'dtype="int8"'),
    ({"d_sae": 64}, "d_sae is 64"),
    ({"metadata": {"hook_name": HOOK, "context_size": -1}}, "context_size=-1"),
    ({"metadata": {"hook_name": HOOK, "prepend_bos": "yes"}}, 'prepend_bos="yes"'),
    ({"metadata": {"hook_name": HOOK, "seqpos_slice": "1:"}}, 'seqpos_slice="1:"'),
    ({"metadata": {"hook_name": HOOK, "exclude_special_tokens": "bos"}}, "exclude_special_tokens"),
    ({"metadata": [HOOK]}, "metadata="),
]


@pytest.mark.parametrize(("change", "needle"), SAELENS_REFUSED)
def test_saelens_field_refused(tmp_path, change, needle):
    cfg = saelens_v6_cfg("standard", HOOK) | change
    refused(write_saelens(tmp_path, cfg, saelens_tensors("standard")).path, needle)


PRE6_REFUSED = [
    ({"activation_fn_str": "tanh-relu"}, 'activation_fn="tanh-relu"'),
    ({"hook_point_layer": 4}, "hook_point_layer=4"),
    ({"hook_point_head_index": 2}, "hook_point_head_index=2"),
    ({"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4, "postact_fn": "id"}}, "k"),
    ({"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}, "k": 5}, "k=5"),
    ({"activation_fn_str": "topk"}, "k=null"),
    ({"activation_fn_kwargs": {"k": 4}}, "activation_fn_kwargs="),
    ({"architecture": "jumprelu", "activation_fn_str": "topk"}, 'activation_fn="topk"'),
]


@pytest.mark.parametrize(("change", "needle"), PRE6_REFUSED)
def test_saelens_pre6_field_refused(tmp_path, change, needle):
    cfg = pre6_cfg("blocks.3.hook_resid_post", "tiny-gpt") | change
    architecture = cfg.get("architecture", "standard")
    refused(write_saelens(tmp_path, cfg, saelens_tensors(architecture)).path, needle)


def test_scaling_factor_without_finetuning_scaling_factor_is_refused(tmp_path):
    t = saelens_tensors("standard") | {"scaling_factor": torch.linspace(0.5, 2.0, D_SAE)}
    cfg = pre6_cfg("blocks.3.hook_resid_post", "tiny-gpt", finetuning_scaling_factor=False)
    refused(write_saelens(tmp_path, cfg, t).path, "finetuning_scaling_factor=false")


# ---- SAELens: fields that only describe training change nothing ----


def test_saelens_training_context_fields_change_nothing(tmp_path):
    t = saelens_tensors("jumprelu")
    base = saelens_v6_cfg("jumprelu", HOOK)
    described = json.loads(json.dumps(base))
    described |= {"dtype": "torch.bfloat16", "device": "cuda:0", "lp_norm": 1.0}
    described["metadata"] |= {
        "prepend_bos": False,
        "context_size": 64,
        "seqpos_slice": [1, None],
        "exclude_special_tokens": [0, 1],
        "sequence_separator_token": "bos",
        "dataset_path": "Skylion007/openwebtext",
        "neuronpedia_id": "gpt2-small/3-res-jb",
        "model_class_name": "HookedTransformer",
        "hf_hook_name": "model.layers.3.output",
        "model_from_pretrained_kwargs": {
            "center_writing_weights": False,
            "fold_ln": True,
            "fold_value_biases": True,
            "center_unembed": True,
            "refactor_factored_attn_matrices": True,
            "dtype": "bfloat16",
            "n_devices": 2,
            "default_prepend_bos": False,
        },
    }
    a = load_sae(write_saelens(tmp_path / "a", base, t).path)
    b = load_sae(write_saelens(tmp_path / "b", described, t).path)
    same_sae(a, b)


# ---- Gemma Scope 2 config.json ----


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"width": D_SAE * 2}, "width is 64"),
        ({"type": "crosscoder"}, 'type="crosscoder"'),
        ({"affine_connection": True}, "affine_connection=true"),
        ({"affine_connection": "no"}, 'affine_connection="no"'),
        ({"architecture": "topk"}, 'architecture="topk"'),
        ({"width": "16k"}, 'width="16k"'),
    ],
)
def test_gemma_scope_2_field_refused(tmp_path, change, needle):
    w = write_gemma_scope_2(tmp_path, config=gemma_scope_2_config(7, **change))
    refused(w.path, needle)


def test_gemma_scope_2_descriptive_fields_change_nothing(tmp_path):
    a = load_sae(write_gemma_scope_2(tmp_path / "a", config=gemma_scope_2_config(7)).path)
    config = gemma_scope_2_config(7, l0=150, model_name="google/gemma-3-4b-pt")
    b = load_sae(write_gemma_scope_2(tmp_path / "b", config=config).path)
    same_sae(a, b)


# ---- sparsify cfg.json ----


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"skip_connection": True}, "skip_connection=true"),
        ({"transcode": True}, "transcode=true"),
        ({"signed": True}, "signed=true"),
        ({"activation": "groupmax"}, 'activation="groupmax"'),
        ({"normalize_decoder": "yes"}, 'normalize_decoder="yes"'),
        ({"multi_topk": 1}, "multi_topk=1"),
        ({"k": 0}, "got 0"),
    ],
)
def test_sparsify_field_refused(tmp_path, cfg, needle):
    refused(write_sparsify(tmp_path, **cfg).path, needle)


def test_sparsify_training_fields_change_nothing(tmp_path):
    a = load_sae(write_sparsify(tmp_path / "a").path)
    b = load_sae(write_sparsify(tmp_path / "b", normalize_decoder=False, multi_topk=True).path)
    same_sae(a, b)


def test_sparsify_unknown_field_warns(tmp_path):
    with pytest.warns(UserWarning, match="jumprelu_theta"):
        load_sae(write_sparsify(tmp_path, jumprelu_theta=0.3).path)


# ---- Llama Scope hyperparams.json ----


def lm_saes_from_config(t: dict[str, Tensor], hp: dict, x: Tensor) -> tuple[Tensor, Tensor]:
    """lm_saes at commit 4ec6f0aa, SparseAutoEncoder.from_config then encode / forward, from
    the stored tensors: (feature activations in its inference units, reconstruction of x)."""
    enc_w, enc_b, dec_w, dec_b = (
        t[k].float() for k in ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")
    )
    if not hp["use_decoder_bias"]:
        dec_b = torch.zeros_like(dec_b)
    mode, d = hp["norm_activation"], hp["d_model"]
    if mode == "dataset-wise":  # standardize_parameters_of_dataset_activation_scaling
        s_in = math.sqrt(d) / hp["dataset_average_activation_norm"]["in"]
        s_out = math.sqrt(d) / hp["dataset_average_activation_norm"]["out"]
        enc_b, dec_b, dec_w = enc_b / s_in, dec_b / s_out, dec_w * s_in / s_out
        mode = "inference"
    if hp.get("sparsity_include_decoder_norm", True):  # transform_to_unit_decoder_norm
        n = dec_w.norm(dim=0)
        dec_w, enc_w, enc_b = dec_w / n, enc_w * n[:, None], enc_b * n
    factor = math.sqrt(d) / x.norm(dim=-1, keepdim=True) if mode == "token-wise" else 1.0
    x_in = x * factor  # compute_norm_factor: 1 in inference mode
    if hp["use_decoder_bias"] and hp["apply_decoder_bias_to_pre_encoder"]:
        x_in = x_in - dec_b
    hidden = x_in @ enc_w.T + enc_b
    if hp["act_fn"] == "relu":
        f = hidden.clamp(min=0.0)
    else:  # jumprelu, or topk with a threshold (converted by from_config)
        f = hidden.where(hidden > hp["jump_relu_threshold"], 0.0)
    return f, (f @ dec_w.T + dec_b) / factor


def normalised_pre(t: dict[str, Tensor], hp: dict, x: Tensor) -> Tensor:
    """Training-time pre-activations: encoder(x * s_in [- decoder.bias])."""
    enc_w, enc_b, dec_b = (t[k].float() for k in ("encoder.weight", "encoder.bias", "decoder.bias"))
    d = hp["d_model"]
    if hp["norm_activation"] == "dataset-wise":
        s_in = math.sqrt(d) / hp["dataset_average_activation_norm"]["in"]
    elif hp["norm_activation"] == "token-wise":
        s_in = math.sqrt(d) / x.norm(dim=-1, keepdim=True)
    else:
        s_in = 1.0
    x_n = x * s_in
    if hp["use_decoder_bias"] and hp["apply_decoder_bias_to_pre_encoder"]:
        x_n = x_n - dec_b
    return x_n @ enc_w.T + enc_b


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"sparsity_include_decoder_norm": False},
        {"use_decoder_bias": False},
        {
            "apply_decoder_bias_to_pre_encoder": True,
            "dataset_average_activation_norm": {"in": 7.0, "out": 7.0},
        },
        {"norm_activation": "token-wise", "apply_decoder_bias_to_pre_encoder": True},
        {"norm_activation": "inference"},
        {"act_fn": "topk"},
        {"act_fn": "relu"},
    ],
)
def test_llama_scope_matches_lm_saes_inference(tmp_path, options):
    """Feature activations in normalised units, firing exactly where lm_saes' inference loader
    fires them, and its reconstruction."""
    w = write_llama_scope(tmp_path, layer=15, **options)
    sae = load_sae(w.path)
    relu_act = options.get("act_fn") == "relu"
    assert (sae.format, sae.hook, sae.activation) == (
        "llama_scope",
        HookPoint(15),
        "relu" if relu_act else "jumprelu",
    )
    assert sae.model_name == "meta-llama/Llama-3.1-8B"
    token_wise = options.get("norm_activation") == "token-wise"
    assert sae.normalization == ("constant_norm_rescale" if token_wise else "none")
    x = inputs(scale=1.5)
    f_lm, recon = lm_saes_from_config(w.tensors, w.config, x)
    pre = normalised_pre(w.tensors, w.config, x)
    fires = f_lm != 0
    if w.config["act_fn"] != "relu":
        assert ((pre > 0) & ~fires).any() and fires.any(), "the threshold should matter"
    f = sae.encode(x)
    assert torch.equal(f > 0, fires)
    assert_close(f, torch.where(fires, pre, 0.0), **TOL)
    assert_close(sae.decode(f, x), recon, **TOL)
    assert_close(sae.encode_features(x, [0, 3, 31]), f[..., [0, 3, 31]], **TOL)


def test_llama_scope_threshold_is_in_the_inference_loaders_units(tmp_path):
    """With dataset-wise norms the threshold is compared after standardisation, so a feature
    with normalised pre * n between t and t * s_out does not fire (it did when the threshold
    was compared in normalised space)."""
    w = write_llama_scope(tmp_path, dataset_average_activation_norm={"in": 2.0, "out": 2.0})
    sae = load_sae(w.path)
    x = inputs(scale=1.5)
    pre = normalised_pre(w.tensors, w.config, x)
    n = w.tensors["decoder.weight"].float().norm(dim=0)
    t, s_out = w.config["jump_relu_threshold"], math.sqrt(D_IN) / 2.0
    between = (pre * n > t) & (pre * n <= t * s_out)
    assert between.any()
    assert not (sae.encode(x) > 0)[between].any()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"use_glu_encoder": True}, "use_glu_encoder=true"),
        ({"norm_activation": "batch-wise"}, 'norm_activation="batch-wise"'),
        ({"act_fn": "batchtopk"}, 'act_fn="batchtopk"'),
        ({"act_fn": "topk", "jump_relu_threshold": 0.0}, 'act_fn="topk"'),
        ({"jump_relu_threshold": -0.1}, "jump_relu_threshold=-0.1"),
        ({"apply_decoder_bias_to_pre_encoder": True}, "apply_decoder_bias_to_pre_encoder=true"),
        ({"sparsity_include_decoder_norm": "yes"}, 'sparsity_include_decoder_norm="yes"'),
        ({"use_decoder_bias": 1}, "use_decoder_bias=1"),
        (
            {"dataset_average_activation_norm": {"in": 0, "out": 9.0}},
            "dataset_average_activation_norm.in=0",
        ),
        ({"dtype": "torch.int4"}, 'dtype="torch.int4"'),
    ],
)
def test_llama_scope_field_refused(tmp_path, change, needle):
    refused(write_llama_scope(tmp_path, **change).path, needle)


@pytest.mark.parametrize(
    "missing", ["norm_activation", "use_decoder_bias", "apply_decoder_bias_to_pre_encoder"]
)
def test_llama_scope_field_whose_default_changed_must_be_stated(tmp_path, missing):
    w = write_llama_scope(tmp_path)
    hp = json.loads((w.path / "hyperparams.json").read_text())
    del hp[missing]
    (w.path / "hyperparams.json").write_text(json.dumps(hp))
    refused(w.path, missing, "lm_saes versions default it differently")


def test_llama_scope_training_fields_change_nothing(tmp_path):
    a = load_sae(write_llama_scope(tmp_path / "a").path)
    training = {
        "top_k": 50,
        "k_warmup_steps": 78125,
        "decoder_exactly_fixed_norm": False,
        "init_decoder_norm": 0.5,
        "init_encoder_with_decoder_transpose": True,
        "lp": 1,
        "l1_coefficient": 8e-05,
        "use_batch_norm_mse": True,
        "use_ghost_grads": False,
        "use_glu_encoder": False,
        "tp_size": 1,
        "ddp_size": 1,
        "bias_init_method": "all_zero",
        "device": "cuda:0",
    }
    same_sae(a, load_sae(write_llama_scope(tmp_path / "b", **training).path))


# ---- dictionary_learning config.json ----


@pytest.mark.parametrize(
    ("buffer", "needle"),
    [
        ({"io": "in"}, 'buffer.io="in"'),
        ({"io": "in_and_out"}, "transcoder"),
        ({"d_submodule": D_IN * 2}, "buffer.d_submodule=32"),
    ],
)
def test_dictionary_learning_buffer_field_refused(tmp_path, buffer, needle):
    w = write_dictionary_learning(tmp_path, "AutoEncoder")
    config = w.config | {"buffer": w.config["buffer"] | buffer}
    (w.path / "config.json").write_text(json.dumps(config))
    refused(w.path, needle)


def test_dictionary_learning_k_that_disagrees_with_the_weights_is_refused(tmp_path):
    w = write_dictionary_learning(tmp_path, "AutoEncoderTopK", k=5, trainer_extra={"k": 7})
    refused(w.path, "trainer.k=7", "k=5")


def test_dictionary_learning_uncalibrated_threshold_is_refused(tmp_path):
    w = write_dictionary_learning(tmp_path, "BatchTopKSAE", threshold=-1.0)
    refused(w.path, "threshold=-1.0", "never calibrated")


def test_dictionary_learning_training_fields_change_nothing(tmp_path):
    a = load_sae(write_dictionary_learning(tmp_path / "a", "BatchTopKSAE").path)
    training = {
        "norm_factor": 3.7,
        "lr": 5e-5,
        "steps": 1000,
        "auxk_alpha": 1 / 32,
        "warmup_steps": 1000,
        "decay_start": 800,
        "threshold_beta": 0.999,
        "threshold_start_step": 1000,
        "top_k_aux": 2048,
        "group_fractions": [0.25, 0.75],
        "seed": 0,
        "device": "cuda:0",
        "wandb_name": "run",
    }
    path = write_dictionary_learning(tmp_path / "b", "BatchTopKSAE", trainer_extra=training).path
    same_sae(a, load_sae(path))


# ---- Goodfire: no config; the state dict is all there is ----


def test_goodfire_extra_tensors_are_refused(tmp_path):
    w = write_goodfire(tmp_path)
    torch.save(w.tensors | {"threshold": torch.ones(D_SAE)}, w.path)
    refused(w.path, "threshold")
