"""Per-feature files of a Hub or shipped SAE live in the user's folder, and load with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_fixtures import write_gemma_scope
from safetensors.torch import save_file

from steering import hub
from steering.errors import SAELoadError
from steering.formats import load_sae
from steering.formats.feature_files import feature_files_folder, steering_home, user_folder

GEMMA_REF = "google/gemma-scope-2b-pt-res/layer_5/width_16k/average_l0_71"


def test_steering_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERING_HOME", str(tmp_path / "home"))
    assert steering_home() == tmp_path / "home"
    monkeypatch.delenv("STEERING_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert steering_home() == tmp_path / "xdg" / "steering"


def test_where_feature_files_go(tmp_path):
    home = steering_home()
    assert user_folder(GEMMA_REF) == home / "sae-files" / Path(GEMMA_REF)
    assert user_folder("hf://" + GEMMA_REF) == home / "sae-files" / Path(GEMMA_REF)
    assert user_folder("demo-sae") == home / "sae-files" / "shipped" / "demo-sae"
    local = write_gemma_scope(tmp_path).path
    assert user_folder(str(local)) is None
    assert feature_files_folder(str(local)) == local
    assert feature_files_folder(str(local / "params.npz")) == local
    with pytest.raises(SAELoadError, match="cannot name a folder"):
        user_folder("owner/repo/../../etc")


def test_a_hub_sae_loads_the_users_statistics_and_labels(tmp_path, monkeypatch):
    snapshot = tmp_path / "gemma-scope-2b-pt-res"
    written = write_gemma_scope(tmp_path, layer=5)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, **kw: str(snapshot))
    before = load_sae(GEMMA_REF)
    assert before.max_activation is None and before.labels == {}
    d_sae = written.tensors["W_enc"].shape[1]
    own = feature_files_folder(GEMMA_REF)
    own.mkdir(parents=True)
    maxima = torch.arange(d_sae, dtype=torch.float32) + 1
    save_file({"max_activation": maxima}, own / "feature_stats.safetensors")
    (own / "feature_labels.json").write_text(json.dumps({"3": "bridges"}))
    after = load_sae(GEMMA_REF)
    assert torch.equal(after.max_activation, maxima)
    assert after.labels == {3: "bridges"}
    # a local SAE of the same files reads only its own folder
    assert load_sae(written.path).max_activation is None


def test_the_shipped_sae_by_its_path_reads_the_users_labels_merged():
    """``demo-sae`` and the path of its folder are one SAE: labels imported for it show either
    way, added to its shipped labels (an import of some labels keeps the others)."""
    from steering.demo import SAE_DIR

    shipped = load_sae(SAE_DIR)
    own = user_folder("demo-sae")
    assert (
        user_folder(str(SAE_DIR)) == own == steering_home() / "sae-files" / "shipped" / "demo-sae"
    )
    assert user_folder(str(SAE_DIR / "cfg.json")) == own
    assert feature_files_folder(str(SAE_DIR)) == own
    own.mkdir(parents=True, exist_ok=True)
    (own / "feature_labels.json").write_text(json.dumps({"5": "imported five"}))
    try:
        for source in ("demo-sae", SAE_DIR, str(SAE_DIR)):
            labels = load_sae(source).labels
            assert labels[5] == "imported five"
            assert {i: t for i, t in labels.items() if i != 5} == {
                i: t for i, t in shipped.labels.items() if i != 5
            }
    finally:
        (own / "feature_labels.json").unlink()
