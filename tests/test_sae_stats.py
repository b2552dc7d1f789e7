"""``steering sae-stats``: streamed feature statistics equal a brute-force computation over the
full activation matrix, a stopped run resumes to the same result, the demo world's statistics
are reproduced, and ``load_sae`` reads what was written."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from random_saes import random_sae
from safetensors import safe_open
from tiny_models import tiny_model, tiny_tokenizer

from steering.cli import main
from steering.demo import SAE_DIR, SEED, load_demo
from steering.errors import SteeringError
from steering.features import stats as stats_mod
from steering.features.corpus import Corpus, Document, demo_corpus, open_corpus, sequences
from steering.features.stats import LEFT, NO_TOKEN, WINDOW, compute_feature_stats
from steering.features.stats_run import CHECKPOINT_INFO, CHECKPOINT_TENSORS, run_sae_stats
from steering.formats import FEATURE_CONTEXTS_FILE, FEATURE_STATS_FILE, load_sae
from steering.formats.feature_files import user_folder
from steering.formats.writer import save_sae
from steering.models import SteerableModel, find_layers

WORDS = (
    "the a bridge golden gate cat dog sea is big red fog san francisco hello how are you".split()
)
CONTEXT = 24


def steerable(arch: str) -> SteerableModel:
    net = tiny_model(arch)
    layers, template = find_layers(net)
    return SteerableModel(net, tiny_tokenizer(), layers, template)


def write_corpus(path: Path, n: int = 14, seed: int = 0) -> Path:
    """Paragraphs of random words, each starting with the BOS; some longer than CONTEXT."""
    rng = random.Random(seed)
    docs = [
        "<bos> " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 2 * CONTEXT + 5)))
        for _ in range(n)
    ]
    path.write_text("\n\n".join(docs) + "\n")
    return path


def brute_force(model: SteerableModel, sae, corpus: Corpus, top_k: int):
    """Everything from the full activation matrix: each sequence alone through the full model
    (hidden states), every counted token's window built by hand."""
    tok = model.tokenizer
    xs, windows = [], []
    for seq in sequences(corpus, tok, CONTEXT):
        ids = torch.tensor([seq])
        with torch.inference_mode():
            out = model.model(input_ids=ids, output_hidden_states=True)
        layer = sae.hook.layer + (1 if sae.hook.site == "resid_post" else 0)
        hidden = out.hidden_states[layer][0]
        marked = [NO_TOKEN if t == tok.bos_token_id else t for t in seq]
        for pos, token in enumerate(seq):
            if token == tok.bos_token_id:
                continue
            xs.append(hidden[pos])
            window = [
                marked[p] if 0 <= p < len(seq) else NO_TOKEN
                for p in range(pos - LEFT, pos - LEFT + WINDOW)
            ]
            windows.append(window)
    x = torch.stack(xs)
    with torch.inference_mode():
        acts = sae.encode(x).float()  # (N, d_sae): the whole matrix, at once
    fired = (acts > 0).sum(0)
    order = acts.sort(dim=0, descending=True)
    return {
        "tokens": len(x),
        "max": acts.max(0).values.clamp(min=0),
        "frequency": fired / len(x),
        "mean": acts.sum(0) / fired.clamp(min=1),
        "fired": fired,
        "top_values": order.values[:top_k].T.clamp(min=0),  # (d_sae, k)
        "top_rows": order.indices[:top_k].T,
        "next_values": order.values[top_k].clamp(min=0),
        "windows": torch.tensor(windows, dtype=torch.int32),
    }


@pytest.mark.parametrize(
    "arch,activation,site",
    [
        ("llama", "relu", "resid_post"),
        ("gpt2", "jumprelu", "resid_pre"),
        ("qwen2", "topk", "resid_post"),
    ],
)
def test_streamed_statistics_equal_brute_force(tmp_path, arch, activation, site):
    model = steerable(arch)
    sae = random_sae(64, 96, 1, seed=3, activation=activation, site=site)
    corpus = open_corpus(str(write_corpus(tmp_path / "c.txt")))
    top_k = 5
    stats = compute_feature_stats(
        model, sae, corpus, context_size=CONTEXT, batch_size=3, top_k=top_k, chunk_tokens=7
    )
    ref = brute_force(model, sae, corpus, top_k)
    assert stats.finished and stats.tokens == ref["tokens"] and stats.tokens % 7 != 0
    assert torch.equal(stats.fired, ref["fired"])
    torch.testing.assert_close(stats.max_activation, ref["max"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.frequency, ref["frequency"], rtol=0, atol=0)
    torch.testing.assert_close(stats.mean_activation, ref["mean"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.top_values, ref["top_values"], rtol=1e-5, atol=1e-6)
    assert (stats.max_activation > 0).sum() > 20  # the check is about live features
    # the windows of the kept contexts: compared where the value has no near-tie to swap with
    compared = 0
    for f in range(sae.d_sae):
        values = torch.cat([ref["top_values"][f], ref["next_values"][f : f + 1]])
        for j in range(top_k):
            gap = (values - values[j]).abs()
            gap[j] = float("inf")
            if values[j] > 0 and gap.min() > 1e-4:
                want = ref["windows"][ref["top_rows"][f, j]]
                assert torch.equal(stats.top_windows[f, j], want), (f, j)
                compared += 1
    assert compared > 100
    assert (stats.top_windows[stats.top_values == 0] == NO_TOKEN).all()


def test_batch_and_chunk_sizes_do_not_change_the_statistics(tmp_path):
    model = steerable("llama")
    sae = random_sae(64, 96, 2, seed=1)
    corpus = open_corpus(str(write_corpus(tmp_path / "c.txt")))
    a = compute_feature_stats(model, sae, corpus, context_size=CONTEXT, batch_size=1, top_k=4)
    b = compute_feature_stats(
        model, sae, corpus, context_size=CONTEXT, batch_size=5, top_k=4, chunk_tokens=3
    )
    assert torch.equal(a.fired, b.fired) and a.tokens == b.tokens
    torch.testing.assert_close(a.top_values, b.top_values, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.total, b.total, rtol=1e-9, atol=1e-5)


def _files(folder: Path) -> tuple[dict, dict, dict]:
    with safe_open(folder / FEATURE_STATS_FILE, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        metadata = f.metadata()
    return tensors, metadata, json.loads((folder / FEATURE_CONTEXTS_FILE).read_text())


def test_a_run_stopped_by_max_tokens_resumes_to_the_uninterrupted_result(tmp_path):
    model = steerable("llama")
    sae = random_sae(64, 96, 1, seed=2)
    corpus = open_corpus(str(write_corpus(tmp_path / "c.txt", n=20)))
    kwargs = dict(context_size=CONTEXT, batch_size=2, top_k=6)
    whole = run_sae_stats(model, sae, corpus, tmp_path / "whole", **kwargs)
    assert whole.complete and not (tmp_path / "whole" / CHECKPOINT_INFO).exists()
    part = run_sae_stats(model, sae, corpus, tmp_path / "part", max_tokens=100, **kwargs)
    assert part.complete and not part.corpus_finished and 0 < part.stats.tokens <= 100
    assert (tmp_path / "part" / CHECKPOINT_INFO).is_file()  # to extend the sample
    meta = _files(tmp_path / "part")[1]  # a deliberate sample: final statistics
    assert (meta["complete"], meta["corpus_finished"], meta["max_tokens"]) == (
        "true",
        "false",
        "100",
    )
    assert meta["tokens"] == str(part.stats.tokens)
    with pytest.raises(SteeringError, match="--overwrite"):
        run_sae_stats(model, sae, corpus, tmp_path / "part", **kwargs)
    with pytest.raises(SteeringError, match="top_k: 6 then, 5 now"):
        run_sae_stats(model, sae, corpus, tmp_path / "part", resume=True, **{**kwargs, "top_k": 5})
    more = run_sae_stats(
        model, sae, corpus, tmp_path / "part", max_tokens=250, resume=True, **kwargs
    )
    assert 100 < more.stats.tokens <= 250 and more.complete and not more.corpus_finished
    done = run_sae_stats(model, sae, corpus, tmp_path / "part", resume=True, **kwargs)
    assert done.complete and not (tmp_path / "part" / CHECKPOINT_INFO).exists()
    a, meta_a, ctx_a = _files(tmp_path / "whole")
    b, meta_b, ctx_b = _files(tmp_path / "part")
    assert set(a) == {"max_activation", "frequency", "mean_activation"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert ctx_a == ctx_b and meta_a == meta_b and meta_a["complete"] == "true"
    umask = os.umask(0)
    os.umask(umask)
    for name in (FEATURE_STATS_FILE, FEATURE_CONTEXTS_FILE):  # the same mode, as the umask says
        assert (tmp_path / "whole" / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert (meta_a["corpus_finished"], meta_a["max_tokens"]) == ("true", "none")
    assert meta_a["tokens"] == str(whole.stats.tokens) and meta_a["context_size"] == str(CONTEXT)


def test_ctrl_c_stops_after_the_batch_and_resumes_to_the_same_result(tmp_path):
    model = steerable("gpt2")
    sae = random_sae(64, 96, 1, seed=4)
    base = open_corpus(str(write_corpus(tmp_path / "c.txt", n=12)))

    def interrupted():  # the user presses Ctrl-C while the 6th document is read
        for i, doc in enumerate(base.documents()):
            if i == 5:
                signal.raise_signal(signal.SIGINT)
            yield doc

    corpus = Corpus(base.description, interrupted)
    kwargs = dict(context_size=CONTEXT, batch_size=2, top_k=3)
    live = run_sae_stats(model, sae, base, tmp_path / "a", max_tokens=60, **kwargs)
    before = {
        n: (tmp_path / "a" / n).read_bytes() for n in (FEATURE_STATS_FILE, FEATURE_CONTEXTS_FILE)
    }
    stopped = run_sae_stats(model, sae, corpus, tmp_path / "a", overwrite=True, **kwargs)
    assert not stopped.complete and live.stats.sequences < stopped.stats.sequences < 20
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [f.name for f in stopped.files] == [CHECKPOINT_TENSORS, CHECKPOINT_INFO]
    after = {n: (tmp_path / "a" / n).read_bytes() for n in before}
    assert after == before  # the live statistics that load_sae reads are left alone
    done = run_sae_stats(model, sae, base, tmp_path / "a", resume=True, **kwargs)
    whole = run_sae_stats(model, sae, base, tmp_path / "b", **kwargs)
    assert done.complete and done.stats.tokens == whole.stats.tokens
    for x, y in zip(_files(tmp_path / "a")[:1], _files(tmp_path / "b")[:1]):
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_demo_world_statistics_match_the_shipped_computation():
    """On a prefix of the demo corpus: what train_sae computed in memory (all activations at
    once, features.statistics), and the shipped max activations bound it from above."""
    from steering.demo import features
    from steering.demo.corpus import make_corpus
    from steering.demo.train_sae import SAE_DIALOGUES, layer_activations

    model, sae = load_demo()
    stats = compute_feature_stats(
        model, sae, demo_corpus(), context_size=256, batch_size=32, max_tokens=8_000
    )
    dialogues = make_corpus(SAE_DIALOGUES, SEED + 100)[: stats.sequences]
    acts = layer_activations(model, dialogues)
    ref = features.statistics(sae, acts.x)
    assert stats.tokens == len(acts.x) > 6_000
    torch.testing.assert_close(stats.max_activation, ref.max_activation, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.frequency, ref.frequency, rtol=0, atol=0)
    shipped = load_sae(SAE_DIR).max_activation
    assert (stats.max_activation <= shipped + 1e-5).all()
    assert (stats.max_activation >= shipped - 1e-5).sum() > 50  # maxima reached in the prefix


def test_cli_writes_next_to_a_local_sae_and_load_sae_reads_it(tmp_path, capsys):
    net, tok = tiny_model("llama"), tiny_tokenizer()
    net.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    sae_dir = save_sae(random_sae(64, 96, 1, seed=5, max_activation=None), tmp_path / "sae")
    corpus = write_corpus(tmp_path / "c.txt")
    argv = ["sae-stats", str(sae_dir), "--model", str(tmp_path / "model"), "--corpus", str(corpus)]
    argv += ["--context-size", str(CONTEXT), "--quiet", "--json", "--top-k", "4"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] and summary["out"] == str(sae_dir) and summary["tokens"] > 200
    sae = load_sae(sae_dir)
    written, metadata, contexts = _files(sae_dir)
    assert torch.equal(sae.max_activation, written["max_activation"])
    assert torch.equal(sae.mean_activation, written["mean_activation"])
    live = int(written["max_activation"].argmax())
    assert sae.max_activation_of(live) == float(written["max_activation"][live]) > 0
    assert sae.contexts[live][0].activation == pytest.approx(sae.max_activation_of(live))
    assert len(sae.contexts[live]) == len(contexts[str(live)]) <= 4
    assert metadata["tokens"] == str(summary["tokens"]) and summary["dead_features"] == int(
        (written["frequency"] == 0).sum()
    )
    assert torch.equal(sae.select([live, 0]).mean_activation, written["mean_activation"][[live, 0]])
    assert main(argv) == 1  # the statistics are there: not overwritten silently
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_cli_demo_world_writes_to_the_users_folder_never_the_shipped_files(capsys):
    def digest() -> str:
        return hashlib.sha256(
            b"".join(p.read_bytes() for p in sorted(SAE_DIR.iterdir()))
        ).hexdigest()

    before = digest()
    for sae in ([], [str(SAE_DIR)]):
        argv = ["sae-stats", *sae, "--max-tokens", "1500", "--quiet", "--json", "--overwrite"]
        assert main(argv) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["out"] == str(user_folder("demo-sae"))
        assert summary["complete"] and not summary["corpus_finished"]
        assert summary["tokens"] <= 1500
    assert digest() == before
    written = _files(user_folder("demo-sae"))[0]["max_activation"]
    assert torch.equal(load_sae("demo-sae").max_activation, written)


def _cli_world(tmp_path: Path) -> list[str]:
    """A saved tiny model, a local SAE and a corpus: the sae-stats command line for them."""
    net, tok = tiny_model("llama"), tiny_tokenizer()
    net.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    sae_dir = save_sae(random_sae(64, 96, 1, seed=7, max_activation=None), tmp_path / "sae")
    corpus = write_corpus(tmp_path / "c.txt", n=12)
    argv = ["sae-stats", str(sae_dir), "--model", str(tmp_path / "model"), "--corpus", str(corpus)]
    return argv + ["--context-size", str(CONTEXT), "--quiet", "--batch-size", "2"]


def test_cli_ctrl_c_keeps_the_live_statistics_and_exits_130(tmp_path, capsys, monkeypatch):
    import steering.features.corpus as corpus_mod

    argv = _cli_world(tmp_path)
    sae_dir = Path(argv[1])
    assert main([*argv, "--max-tokens", "60"]) == 0  # a sample: final statistics
    out = capsys.readouterr().out
    assert "cut at --max-tokens 60" in out
    assert main(["sae-info", str(sae_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    tokens = int(_files(sae_dir)[1]["tokens"])
    assert 0 < tokens <= 60
    assert {k: v for k, v in info.items() if k.startswith("stats_")} == {
        "stats_tokens": tokens,
        "stats_corpus": "file c.txt",
        "stats_complete": True,
        "stats_corpus_finished": False,
        "stats_max_tokens": 60,
    }
    live = load_sae(sae_dir).max_activation
    opened = corpus_mod.open_corpus

    def stopping(*args, **kwargs):  # Ctrl-C while the 6th document is read
        base = opened(*args, **kwargs)

        def documents():
            for i, doc in enumerate(base.documents()):
                if i == 5:
                    signal.raise_signal(signal.SIGINT)
                yield doc

        return Corpus(base.description, documents)

    monkeypatch.setattr(corpus_mod, "open_corpus", stopping)
    assert main([*argv, "--overwrite"]) == 130
    captured = capsys.readouterr()
    assert f"continue with --resume --out {sae_dir}" in captured.err
    assert torch.equal(load_sae(sae_dir).max_activation, live)  # unchanged
    monkeypatch.setattr(corpus_mod, "open_corpus", opened)
    assert main([*argv, "--resume"]) == 0
    assert "(done)" in capsys.readouterr().out
    assert main(["sae-info", str(sae_dir)]) == 0
    text = capsys.readouterr().out
    assert "stats_complete         True" in text and "stats_corpus_finished  True" in text


def test_cli_messages_for_out_context_size_and_counts(tmp_path, capsys):
    argv = _cli_world(tmp_path)
    capsys.readouterr()  # the model's saving bars
    (tmp_path / "taken").write_text("x")
    bogus = [*argv[:2], "--model", str(tmp_path / "no-model"), *argv[4:]]
    assert main([*bogus, "--out", str(tmp_path / "taken" / "stats")]) == 1  # before the model
    assert capsys.readouterr().err.strip() == (
        f"error: --out {tmp_path / 'taken' / 'stats'}: {tmp_path / 'taken'} is a file, not a "
        "folder (give a folder; it is created when missing)"
    )
    for size in ("0", "1"):
        assert main([*argv, "--context-size", size]) == 1
        assert capsys.readouterr().err.strip() == f"error: --context-size {size} must be 2 or more"
    out = ["--out", str(tmp_path / "o"), "--overwrite"]
    assert main([*argv, *out, "--context-size", "100000", "--json"]) == 0
    captured = capsys.readouterr()
    used = json.loads(captured.out)["context_size"]
    assert 2 <= used < 100000
    assert captured.err == (
        f"--context-size 100000 is more than the model's context: using {used} tokens\n"
    )
    (tmp_path / "one.txt").write_text("hello\n")
    assert main([*argv, *out, "--corpus", str(tmp_path / "one.txt")]) == 0
    assert "1 token in 1 sequence (done)" in capsys.readouterr().out


def test_without_a_terminal_progress_is_a_line_per_interval(tmp_path, capsys):
    import re

    model = steerable("llama")
    corpus = open_corpus(str(write_corpus(tmp_path / "c.txt", n=6)))
    sae = random_sae(64, 96, 1, seed=8)
    kwargs = dict(context_size=CONTEXT, batch_size=2, top_k=2)
    stats = compute_feature_stats(model, sae, corpus, max_tokens=10_000, log_every=0, **kwargs)
    lines = capsys.readouterr().err.splitlines()
    counted = [re.fullmatch(r"sae-stats: (\d+) of 10000 tokens, (\d+) sequences, \d+ tokens/s", x)
               for x in lines]  # fmt: skip
    assert all(counted) and len(lines) == (stats.sequences + 1) // 2  # one per batch
    assert [int(m.group(2)) for m in counted if m][-1] == stats.sequences
    assert [int(m.group(1)) for m in counted if m][-1] == stats.tokens
    compute_feature_stats(model, sae, corpus, log_every=3600, **kwargs)
    compute_feature_stats(model, sae, corpus, **kwargs)
    assert capsys.readouterr().err == ""  # none within the hour; none when not asked


def test_bad_settings_are_refused(tmp_path):
    model = steerable("llama")
    corpus = open_corpus(str(write_corpus(tmp_path / "c.txt")))
    with pytest.raises(SteeringError, match="d_in=32"):
        compute_feature_stats(model, random_sae(32, 8, 1), corpus, context_size=CONTEXT)
    with pytest.raises(SteeringError, match="top-k 21 must be in 1..20"):
        compute_feature_stats(model, random_sae(64, 8, 1), corpus, context_size=8, top_k=21)
    with pytest.raises(SteeringError, match="no checkpoint"):
        run_sae_stats(model, random_sae(64, 8, 1), corpus, tmp_path, context_size=8, resume=True)
    empty = Corpus("nothing", lambda: iter([Document(text="")]))
    with pytest.raises(
        SteeringError, match=r"no token was counted: the corpus \(nothing\) is empty$"
    ):
        run_sae_stats(model, random_sae(64, 8, 1), empty, tmp_path / "e", context_size=8)
    assert main(["sae-stats", "--max-tokens", "0"]) == 1
    assert stats_mod.default_chunk(1 << 30) == 1 and stats_mod.default_chunk(16) == 4096


def test_the_bench_times_the_same_tokens_and_reports_peak_memory():
    from transformers import AutoTokenizer

    from steering.bench import stats as bench_stats
    from steering.bench.setup import Settings
    from steering.demo import MODEL_DIR

    model = steerable("llama")
    sae = random_sae(64, 96, 1, seed=6)
    corpus = bench_stats.bench_corpus(3)
    found = bench_stats.measure_speed(model, sae, corpus, 40, repeats=1, label="tiny")
    assert found["tokens"] == 3 * bench_stats.CONTEXT  # no BOS: every word is a counted token
    assert set(found["tokens_per_s"]) == {"forward", "forward_encode", "sae_stats"}
    assert all(v > 0 for v in found["tokens_per_s"].values())
    assert found["sae_stats_vs_forward_encode"] > 0 and found["layers"] == 4
    memory = bench_stats.peak_memory_child("demo", 5, Settings())
    dialogues = list(itertools.islice(demo_corpus().documents(), 5))
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    lengths = [len(tok(d.text, add_special_tokens=False)["input_ids"]) - 1 for d in dialogues]
    assert memory["tokens"] == sum(lengths)  # the BOS of each chat left out
    assert memory["rss_peak_mib"] > 0
    printed = bench_stats.table({"tiny": {**found, "memory": [memory]}})
    assert f"{memory['tokens']} tokens" in printed and "forward + SAE encode" in printed


def test_after_sae_stats_the_shipped_gemma_presets_run_in_max_act(tmp_path, monkeypatch, capsys):
    """The Gemma Scope presets clamp in multiples of max activation, which Gemma Scope does not
    ship: refused before ``sae-stats``, planned at value x the computed max activation after
    (the presets of the layer-10 SAE; those of layer 20 differ only in the reference)."""
    import huggingface_hub.constants
    from hub_cache import gemma_scope_sae, snapshot, tiny_gemma2_it

    from steering.errors import PresetError
    from steering.presets.library import read_preset_file
    from steering.presets.saes import SAEResolver
    from steering.presets.to_plan import to_plan

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    tiny_gemma2_it(cache, layers=11)
    model_dir = snapshot(cache, "google/gemma-2-2b-it")
    root = Path(__file__).resolve().parents[1] / "presets"
    presets = [read_preset_file(p) for p in sorted(root.glob("gemma-2-2b-it-*.json"))]
    presets = [p for p in presets if "layer_10/" in p.saes[0].ref]  # one SAE keeps it quick
    assert len(presets) == 3
    firing: dict[str, set[int]] = {}
    for preset in presets:
        (declared,) = preset.saes
        firing.setdefault(declared.ref, set()).update(e.feature for e in preset.edits)
    for ref, features in firing.items():
        layer, l0 = (int(part.split("_")[-1]) for part in ref.split("/")[2::2])
        assert gemma_scope_sae(cache, layer, l0, tuple(sorted(features))) == ref
    with pytest.raises(PresetError, match="steering sae-stats google/gemma-scope-2b-pt-res"):
        to_plan(presets[0], SAEResolver().resolve(presets[0]))
    corpus = tmp_path / "c.jsonl"
    chats = [[{"role": "user", "content": f"tell me about {w}"}] for w in WORDS[:6]]
    corpus.write_text("\n".join(json.dumps({"messages": c}) for c in chats) + "\n")
    for ref in firing:
        argv = ["sae-stats", ref, "--model", str(model_dir), "--corpus", str(corpus), "--quiet"]
        argv += ["--top-k", "3"]
        assert main(argv) == 0
        assert str(user_folder(ref) / FEATURE_STATS_FILE) in capsys.readouterr().out
    resolver = SAEResolver()
    for preset in presets:
        (edit,) = to_plan(preset, resolver.resolve(preset)).edits
        written = _files(user_folder(preset.saes[0].ref))[0]["max_activation"][edit.feature]
        assert written > 0 and edit.unit == "max_act"
        assert edit.raw_value == pytest.approx(preset.edits[0].value * float(written))
