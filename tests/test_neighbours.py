"""Decoder neighbours: chunked top-k cosine, exact against a brute-force (d_sae, d_sae) matrix,
dead features without NaN, and bad requests refused naming the value."""

from __future__ import annotations

import pytest
import torch
from random_saes import random_sae

from steering.errors import RequestError
from steering.features.neighbours import decoder_neighbours


def brute_force(W_dec: torch.Tensor, feature: int, top: int) -> tuple[list[int], list[float]]:
    """Every row's cosine with the feature's at once (dot with its unit direction over the
    row's norm), zero rows at cosine 0, the feature itself left out, sorted in Python."""
    W = W_dec.float()
    norms = W.norm(dim=1)
    row = (W @ (W[feature] / W[feature].norm())) / torch.where(norms > 0, norms, 1.0)
    row[feature] = -torch.inf
    ranked = sorted(range(W.shape[0]), key=lambda i: (-float(row[i]), i))[:top]
    return ranked, [float(row[i]) for i in ranked]


@pytest.mark.parametrize("chunk", [37, 64, 1000])  # smaller than d_sae and not dividing it
def test_neighbours_equal_a_brute_force_computation(chunk):
    sae = random_sae(24, 300, 1, seed=5)
    sae.W_dec[[3, 150, 299]] = 0.0  # dead features
    sae.W_dec[10] = sae.W_dec[0] * 2.5  # a feature along feature 0: cosine 1
    sae.labels = {10: "twin"}
    for copy in (5, 40, 77, 111, 260):  # exact copies of row 2: equal cosines, across chunks
        sae.W_dec[copy] = sae.W_dec[2]
    for feature in (0, 1, 2, 200, 298):
        found = decoder_neighbours(sae, feature, top=12, chunk=chunk)
        indices, cosines = brute_force(sae.W_dec, feature, 12)
        assert [n.index for n in found] == indices
        assert [n.cosine for n in found] == cosines  # exactly
    ties = decoder_neighbours(sae, 2, top=3, chunk=chunk)
    assert [n.index for n in ties] == [5, 40, 77]  # equal cosines: the lower index first
    first = decoder_neighbours(sae, 0, top=1, chunk=chunk)[0]
    assert (first.index, first.label) == (10, "twin") and first.cosine == pytest.approx(1.0)


def test_dead_features_rank_at_cosine_zero_without_nan():
    sae = random_sae(8, 10, 1, seed=2)
    sae.W_dec[1:] = 0.0
    sae.W_dec[9] = -sae.W_dec[0]
    found = decoder_neighbours(sae, 0, top=9, chunk=4)
    assert [(n.index, n.cosine) for n in found[:8]] == [(i, 0.0) for i in range(1, 9)]
    assert (found[8].index, found[8].cosine) == (9, pytest.approx(-1.0))


def test_bad_requests_name_the_value():
    sae = random_sae(8, 10, 1, seed=2)
    with pytest.raises(
        RequestError, match=r"feature: 10 is not a feature of this SAE \(valid: 0\.\.9\)"
    ):
        decoder_neighbours(sae, 10)
    with pytest.raises(RequestError, match=r"feature: -1 is not"):
        decoder_neighbours(sae, -1)
    with pytest.raises(RequestError, match=r"top: 0 must be a positive integer"):
        decoder_neighbours(sae, 0, top=0)
    assert len(decoder_neighbours(sae, 0, top=50)) == 9  # all the others
    sae.W_dec[4] = 0.0
    with pytest.raises(RequestError, match="feature: 4 has a zero decoder direction"):
        decoder_neighbours(sae, 4)


def test_the_command_prints_what_the_library_finds(tmp_path, capsys):
    import json

    from steering.cli import main
    from steering.formats import load_sae
    from steering.formats.writer import save_sae

    sae = random_sae(16, 40, 2, seed=7)
    sae.labels = {5: "five <b>"}
    save_sae(sae, tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    expected = decoder_neighbours(loaded, 3, top=4)
    assert main(["neighbours", str(tmp_path / "sae"), "3", "--top", "4", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(n["feature"], n["cosine"]) for n in printed["neighbours"]] == [
        (n.index, n.cosine) for n in expected
    ]
    assert main(["neighbours", str(tmp_path / "sae"), "3", "--top", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "feature 3: nearest by decoder"
    assert [(int(row.split()[0]), row.split()[-1]) for row in lines[2:]] == [
        (n.index, f"{n.cosine:.4f}") for n in expected
    ]
    assert main(["neighbours", str(tmp_path / "sae"), "40"]) == 1
    assert "feature: 40 is not a feature of this SAE (valid: 0..39)" in capsys.readouterr().err


def test_the_cache_computes_a_features_neighbours_once(monkeypatch):
    from steering.features import neighbours

    sae = random_sae(16, 50, 1, seed=9)
    calls = []
    real = neighbours.decoder_neighbours
    monkeypatch.setattr(
        neighbours, "decoder_neighbours", lambda *a, **k: calls.append(a[1:]) or real(*a, **k)
    )
    first = neighbours.cached_neighbours(sae, 4, top=5)
    assert first == real(sae, 4, top=5)
    sae.labels = {first[0].index: "named later"}  # labels are read at each call
    again = neighbours.cached_neighbours(sae, 4, top=3)
    assert [(n.index, n.cosine) for n in again] == [(n.index, n.cosine) for n in first[:3]]
    assert again[0].label == "named later"
    assert calls == [(4, neighbours.CACHED_TOP)]  # once, for the cached top
    assert len(neighbours.cached_neighbours(sae, 4, top=40)) == 40  # more than cached: anew
    assert neighbours.cached_neighbours(sae, 4, top=10) == real(sae, 4, top=10)
    assert calls == [(4, neighbours.CACHED_TOP), (4, 40)]
    with pytest.raises(RequestError, match="top: 0 must be a positive integer"):
        neighbours.cached_neighbours(sae, 4, top=0)


def test_the_feature_card_lists_the_nearest_features_escaped(tmp_path):
    from live_server import FEATURE, tiny_service

    from ui.cards import SHOWN_NEIGHBOURS, card_html, nearest_features
    from ui.features import FeatureRow

    service = tiny_service(tmp_path)
    try:
        sae = service.sae_for("tiny-sae")
        expected = decoder_neighbours(sae, FEATURE, top=SHOWN_NEIGHBOURS)
        sae.labels[expected[0].index] = "<b>bold</b> & more"
        row = FeatureRow("tiny-sae", FEATURE, "the Golden Gate Bridge")
        shown = nearest_features(service, row)
        assert [(n.index, n.cosine) for n in shown] == [(n.index, n.cosine) for n in expected]
        html = card_html(row, (), shown)
        first = expected[0]
        assert (
            f'<li>#{first.index} &lt;b&gt;bold&lt;/b&gt; &amp; more <span class="feature-meta">'
            f"({first.cosine:.2f})</span></li>"
        ) in html
        assert html.count("<li>#") == SHOWN_NEIGHBOURS and "<b>" not in html
        assert nearest_features(service, FeatureRow("elsewhere", 1, "x")) == ()
        assert "feature-neighbours" not in card_html(row)
    finally:
        service.close()


def test_the_feature_card_shows_the_features_statistics(tmp_path):
    from live_server import FEATURE, tiny_service

    from ui.cards import card_html, feature_statistics
    from ui.features import FeatureRow

    service = tiny_service(tmp_path)
    try:
        sae = service.sae_for("tiny-sae")
        row = FeatureRow("tiny-sae", FEATURE, "the Golden Gate Bridge")
        sae.max_activation = torch.zeros(sae.d_sae)
        sae.frequency = torch.zeros(sae.d_sae)
        sae.mean_activation = torch.zeros(sae.d_sae)
        sae.max_activation[FEATURE] = 4.5123
        sae.frequency[FEATURE] = 0.0127
        sae.mean_activation[FEATURE] = 1.25
        facts = feature_statistics(service, row)
        assert facts == ("max activation 4.51", "fires on 1.3% of tokens", "mean 1.25 when active")
        html = card_html(row, (), (), facts)
        assert "max activation 4.51 · fires on 1.3% of tokens · mean 1.25 when active" in html
        sae.max_activation = sae.frequency = sae.mean_activation = None
        assert feature_statistics(service, row) == ()
        assert "feature-stats" not in card_html(row, (), (), ())
        assert feature_statistics(service, FeatureRow("elsewhere", 1, "x")) == ()
        assert feature_statistics(service, FeatureRow("tiny-sae", sae.d_sae, "x")) == ()
    finally:
        service.close()
