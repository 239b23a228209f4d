"""MMQ stage 2 with the ranker: soft indexing, the fine-tuning loop, export, the command; the same
fine-tuning of RQ-KMeans's codebooks."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from mmq_rec import pipeline as pipeline_module
from mmq_rec.cli import main
from mmq_rec.ranker import RankerConfig, build_ranker, load_ranker
from mmq_rec.ranker.stage2 import (
    FinetuneConfig,
    build_stage2,
    carry_rows,
    export,
    stage2_hooks,
    tokenizer_phase,
)
from mmq_rec.ranker.train import train_ranker
from mmq_rec.recdata.synthetic import SyntheticConfig, synthetic_catalogue
from mmq_rec.tokenizer.api import Tokenization, format_quality, table_quality
from mmq_rec.tokenizer.baselines import RQKMeansConfig, RQKMeansTokenizer
from mmq_rec.tokenizer.mmq import MMQConfig, MMQTokenizer
from mmq_rec.tokenizer.sid import SIDTable

N = 40
L = 5  # 1 shared expert + 2 specific experts for each of 2 modalities


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    mods = {"text": rng.normal(size=(N, 12)).astype(np.float32), "image": rng.normal(size=(N, 6)).astype(np.float32)}
    tok = MMQTokenizer(MMQConfig(num_shared_experts=1, num_specific_experts=2, codebook_size=6, latent_dim=8,
                                 hidden_dim=16, gate_hidden_dim=8, epochs=3, batch_size=16)).fit(mods, show_progress=False)
    codes = tok.encode(mods)
    table = SIDTable.from_codes([f"i{i}" for i in range(N)], codes, tok.codebook_sizes())
    counts = np.r_[rng.integers(1, 9, size=N - 4), np.zeros(4)]  # four items unseen in training
    return tok, mods, table, counts


def cfg(representation="sid", **kw) -> RankerConfig:
    return RankerConfig(representation=representation, d_model=8, num_heads=2, max_history=5, dropout=0.0, **kw)


HIST = torch.as_tensor(np.array([[-1, -1, 0, 1, 2], [-1, -1, -1, -1, 4], [3, 3, 1, 0, 5]]))


def test_soft_indices_are_the_hard_codes_and_carry_gradients(fitted):
    tok, mods, table, counts = fitted
    model = build_stage2(cfg(), FinetuneConfig(tau=0.5), tok, mods, counts)
    items = model.items
    ind = items.soft_indices()
    assert ind.shape == (N, L, 6)
    hard = torch.nn.functional.one_hot(torch.as_tensor(table.codes[:, :L]), 6).float()
    assert torch.allclose(ind, hard, atol=1e-6) and (ind[hard == 0] == 0).all()
    # the downstream loss alone reaches the experts and the codebooks
    model.ft.alpha = model.ft.beta = 0.0
    model.loss(HIST, torch.where(HIST >= 0, (HIST + 1) % N, -1)).backward()
    mmq = items.tokenizer
    assert mmq.shared[0][0].weight.grad.abs().sum() > 0
    assert mmq.specific["image"][0][0].weight.grad.abs().sum() > 0
    assert all(q.levels[0].weight.grad.abs().sum() > 0 for q in mmq.quantizers)
    # the reconstruction terms reach the gates too
    model.zero_grad()
    model.ft.alpha = model.ft.beta = 0.5
    model.loss(HIST, torch.where(HIST >= 0, (HIST + 1) % N, -1)).backward()
    assert mmq.gates["text"][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("representation", ["sid", "id+sid"])
def test_scores_equal_a_plain_ranker_on_the_same_sids(fitted, representation):
    tok, mods, table, counts = fitted
    counts = counts.copy()
    counts[table.codes[:, 0] == table.codes[-1, 0]] = 0  # a first-position code no training item uses
    model = build_stage2(cfg(representation), FinetuneConfig(), tok, mods, counts).eval()
    plain = build_ranker(cfg(representation), table, counts).eval()
    assert plain.items.sid_keep.min() == 0, "some item has a row that pooling skips"
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("items.tokenizer.")}
    plain.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(model.items(), plain.items(), atol=1e-6)
        assert torch.allclose(model.scores(HIST), plain.scores(HIST), atol=1e-5)
        assert model.items()[counts == 0].abs().sum(1).min() > 0, "unseen items read the rows trained items use"


def test_wrong_tokenizer_or_representation_is_refused(fitted):
    tok, mods, table, counts = fitted
    with pytest.raises(ValueError, match="representation"):
        build_stage2(cfg("sid_prefix"), FinetuneConfig(), tok, mods, counts)
    with pytest.raises(ValueError, match="modalities"):
        build_stage2(cfg(), FinetuneConfig(), tok, {"text": mods["text"]}, counts)
    with pytest.raises(ValueError, match="schedule"):
        FinetuneConfig(schedule="both")


CALLS = itertools.count()


def train(fitted, tmp_path, ft: FinetuneConfig, epochs: int, seed: int = 0):
    tok, mods, table, counts = fitted
    model = build_stage2(cfg(epochs=epochs, patience=epochs, seed=seed, lr=1e-2, batch_size=16), ft, tok, mods,
                         counts)
    rng = np.random.default_rng(1)
    windows = rng.integers(0, N - 4, size=(64, 5))
    targets = np.roll(windows, -1, axis=1)
    targets[:, -1] = -1

    def validate(m):  # a larger value each time, so every epoch is the best so far
        return {"ndcg@10": float(next(CALLS))}

    base_quality = {**table_quality(tok, table, mods), "wall_time_s": 1.0}
    hooks = stage2_hooks(model, table.item_ids, mods, table.codes[:, :table.num_semantic], tok, base_quality)
    state = train_ranker(model, windows, targets, table, validate, tmp_path, {"seed": seed}, False, "cpu",
                         lambda s: None, hooks=hooks)
    return model, state


def test_finetuning_exports_a_ranker_and_tokenizer_that_agree(fitted, tmp_path):
    tok, mods, table, counts = fitted
    ft = FinetuneConfig(schedule="joint", tau=0.3, tokenizer_lr=3e-2)
    model, state = train(fitted, tmp_path / "run", ft, epochs=3)
    assert [h["phase"] for h in state["history"]] == ["joint"] * 3
    plain, new_table, new_tok = export(model, table.item_ids, tok)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.scores(HIST), plain.eval().scores(HIST), atol=1e-5)
    assert new_table.is_unique()
    # the saved ranker is a plain `sid` ranker on the new SIDs; the saved tokenizer gives them
    loaded, saved_table, info = load_ranker(tmp_path / "run" / "best")
    assert np.array_equal(saved_table.codes, new_table.codes)
    with torch.no_grad():
        assert torch.allclose(loaded.scores(HIST), plain.scores(HIST), atol=1e-5)
    saved_tok = Tokenization.from_pretrained(tmp_path / "run" / "best" / "tokenizer")
    assert np.array_equal(saved_tok.tokenizer.encode(mods), new_table.codes[:, :L])
    assert np.array_equal(saved_tok.table.codes, new_table.codes)
    s2 = info["stage2"]
    changed = (new_table.codes[:, :L] != table.codes[:, :L])
    assert s2["changed_sids"]["items"] == pytest.approx(changed.any(axis=1).mean(), abs=1e-6)
    assert s2["changed_sids"]["items"] > 0, "three epochs at a high tokenizer lr move some items"
    assert saved_tok.quality["stage2"]["before"] == table.quality()
    assert saved_tok.quality["tokenizer"] == "mmq" and "reconstruction loss" in format_quality(saved_tok.quality)
    assert info["tokenizer_dir"] == str(tmp_path / "run" / "best" / "tokenizer")
    assert state["history"][-1]["changed_sids"] == pytest.approx(changed.any(axis=1).mean(), abs=1e-6)


def test_alternating_freezes_one_side_per_epoch(fitted, tmp_path):
    ft = FinetuneConfig(schedule="alternating", tokenizer_lr=1e-2, restart_dead=False)  # restarts move rows
    assert [tokenizer_phase(ft, e) for e in (1, 2, 3, 4)] == [False, True, False, True]
    tok = fitted[0]
    start = {k: v.clone() for k, v in tok.model.state_dict().items()}
    m1, s1 = train(fitted, tmp_path / "run", ft, epochs=1)
    after1 = {k: v.clone() for k, v in m1.state_dict().items()}
    assert all(torch.equal(after1[f"items.tokenizer.{k}"], v) for k, v in start.items()), "epoch 1 trains the ranker"
    m2, s2 = train(fitted, tmp_path / "run", ft, epochs=2)  # resumes for epoch 2: the tokenizer's turn
    after2 = m2.state_dict()
    assert [h["phase"] for h in s2["history"]] == ["ranker", "tokenizer"]
    ranker_keys = [k for k in after1 if not k.startswith("items.tokenizer.")]
    assert all(torch.equal(after1[k], after2[k]) for k in ranker_keys)
    assert any(not torch.equal(after1[k], after2[k]) for k in after1 if k.startswith("items.tokenizer."))


def test_restarted_codes_start_from_their_items_old_rows(fitted):
    tok, mods, table, counts = fitted
    items = build_stage2(cfg(), FinetuneConfig(), tok, mods, counts).items
    w = items.sid_emb.weight.detach().clone()
    before = torch.zeros((4, L), dtype=torch.long)
    before[:, 0] = torch.tensor([0, 0, 1, 1])
    after = before.clone()
    after[:, 0] = torch.tensor([0, 5, 1, 5])  # code 5 was dead; items 1 and 3 moved onto it
    after[2, 1] = 3  # moved onto a code in use before: not a restart, its row stays
    before[0, 1] = 3
    carry_rows(items, before, after)
    new = items.sid_emb.weight.detach()
    assert torch.allclose(new[5], (w[0] + w[1]) / 2)
    changed = (new != w).any(1).nonzero().flatten().tolist()
    assert changed == [5]


def test_same_seed_same_sids(fitted, tmp_path):
    ft = FinetuneConfig(schedule="joint", tokenizer_lr=3e-2)
    a, _ = train(fitted, tmp_path / "a", ft, epochs=2)
    b, _ = train(fitted, tmp_path / "b", ft, epochs=2)
    assert torch.equal(a.items.hard_codes(), b.items.hard_codes())
    assert (tmp_path / "a" / "best" / "sid_table.json").read_text() == (tmp_path / "b" / "best" / "sid_table.json").read_text()


@pytest.fixture(scope="module", params=["fused", "separate"])
def fitted_rqk(request, fitted):
    _, mods, _, counts = fitted
    tok = RQKMeansTokenizer(RQKMeansConfig(mode=request.param, levels=2, codebook_size=5, niter=5)).fit(mods)
    table = SIDTable.from_codes([f"i{i}" for i in range(N)], tok.encode(mods), tok.codebook_sizes())
    return tok, mods, table, counts


def test_rqkmeans_codebooks_fine_tune_like_mmq(fitted_rqk, tmp_path):
    """The fine-tuning ports to RQ-KMeans: its centroids become trainable codebooks whose hard codes
    are RQ-KMeans's, the ranker's loss reaches every level, and the export gives a tokenizer whose
    encode is the new table."""
    tok, mods, table, counts = fitted_rqk
    length = table.num_semantic
    model = build_stage2(cfg(), FinetuneConfig(tau=0.5, alpha=0.0, beta=0.0), tok, mods, counts)
    ind = model.items.soft_indices()
    hard = torch.nn.functional.one_hot(torch.as_tensor(table.codes[:, :length]), 5).float()
    assert ind.shape == (N, length, 5) and torch.allclose(ind, hard, atol=1e-6)
    model.loss(HIST, torch.where(HIST >= 0, (HIST + 1) % N, -1)).backward()
    assert all(level.weight.grad.abs().sum() > 0 for q in model.items.tokenizer.quantizers for level in q.levels)
    model, state = train(fitted_rqk, tmp_path / "run", FinetuneConfig(schedule="joint", tau=0.3, tokenizer_lr=0.3),
                         epochs=3)
    plain, new_table, new_tok = export(model, table.item_ids, tok)
    assert new_table.is_unique() and new_tok.kind == "rqkmeans"
    assert state["history"][-1]["changed_sids"] > 0, "three epochs at a high tokenizer lr move some items"
    saved = Tokenization.from_pretrained(tmp_path / "run" / "best" / "tokenizer")
    assert np.array_equal(saved.tokenizer.encode(mods), saved.table.codes[:, :length])
    assert np.array_equal(tok.encode(mods), table.codes[:, :length]), "the stage-1 tokenizer is left as it was"


def test_finetune_command(tmp_path, capsys, monkeypatch):
    synthetic_catalogue(SyntheticConfig(num_items=120, num_users=150, num_topics=5, seed=0)).save(tmp_path / "ds")
    tok = ["tokenize", "--dataset", str(tmp_path / "ds"), "--modalities", "text", "--json", "--encode.cache_dir", ""]
    assert main([*tok, "--tokenizer", "mmq", "--output", str(tmp_path / "tok"), "--tokenize.mmq.codebook_size", "8",
                 "--tokenize.mmq.epochs", "5"]) == 0
    assert main([*tok, "--tokenizer", "random", "--output", str(tmp_path / "rtok")]) == 0
    capsys.readouterr()
    run = ["rank", "train", "--dataset", str(tmp_path / "ds"), "--finetune", "--encode.cache_dir", "", "--ranker.d_model", "16",
           "--ranker.epochs", "2", "--ranker.batch_size", "32", "--ranker.representation", "sid"]
    assert main([*run, "--tokenizer-dir", str(tmp_path / "tok"), "--output", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "stage 2:" in out and "changed SID" in out and str(tmp_path / "r" / "best" / "tokenizer") in out
    assert main(["rank", "evaluate", "--dataset", str(tmp_path / "ds"), "--ranker", str(tmp_path / "r" / "best"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["all"]["invalid_rate"] == 0.0
    # the fine-tuned tokenizer is a tokenizer directory the generator can train on
    assert main(["train", "--dataset", str(tmp_path / "ds"), "--tokenizer-dir", str(tmp_path / "r" / "best" / "tokenizer"),
                 "--output", str(tmp_path / "gen"), "--json", "--train.max_steps", "2", "--train.eval_every", "2",
                 "--generator.d_model", "16", "--generator.num_layers", "1", "--generator.num_decoder_layers", "1",
                 "--generator.d_kv", "8", "--generator.num_heads", "2", "--generator.d_ff", "32",
                 "--decode.valid_users", "20"]) == 0
    capsys.readouterr()
    # a warm start from a plain ranker on the stage-1 SIDs: the alternating schedule begins with a
    # tokenizer epoch, in which the ranker's weights stay those of the plain ranker (no dead-code
    # restart, which would move the rows of restarted codes)
    plain = ["rank", "train", "--dataset", str(tmp_path / "ds"), "--encode.cache_dir", "", "--ranker.d_model", "16",
             "--ranker.epochs", "1", "--ranker.batch_size", "32", "--ranker.representation", "sid"]
    assert main([*plain, "--tokenizer-dir", str(tmp_path / "tok"), "--output", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    warm = [*run[:run.index("--ranker.epochs")], "--ranker.epochs", "1", *run[run.index("--ranker.epochs") + 2:],
            "--tokenizer-dir", str(tmp_path / "tok"), "--finetune.tokenizer_lr", "0.05",
            "--finetune.restart_dead", "false", "--finetune.init_from", str(tmp_path / "p" / "best")]
    assert main([*warm, "--output", str(tmp_path / "w"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [h["phase"] for h in res["history"]] == ["tokenizer"]
    p_model, p_table, _ = load_ranker(tmp_path / "p" / "best")
    w_model, w_table, _ = load_ranker(tmp_path / "w" / "best")
    assert torch.equal(p_model.pos_emb.weight, w_model.pos_emb.weight)
    assert torch.equal(p_model.items.sid_emb.weight, w_model.items.sid_emb.weight)
    assert not np.array_equal(p_table.codes, w_table.codes), "the tokenizer epoch moved some items"
    # a warm start must fit: same architecture, trained on this tokenizer's SIDs
    assert main([*warm, "--output", str(tmp_path / "w2"), "--ranker.d_model", "8"]) == 2
    err = capsys.readouterr().err
    assert "d_model (16 vs 8)" in err and len(err.splitlines()) == 1
    assert main([*plain, "--tokenizer-dir", str(tmp_path / "rtok"), "--output", str(tmp_path / "pr")]) == 0
    capsys.readouterr()
    assert main([*warm[:-1], str(tmp_path / "pr" / "best"), "--output", str(tmp_path / "w3")]) == 2
    err = capsys.readouterr().err
    assert "not trained on the tokenizer's SIDs" in err and len(err.splitlines()) == 1
    # an RQ-KMeans tokenizer is fine-tuned the same way, at another seed than it was fitted with
    # (the seeded attribute encoder is rebuilt with the tokenizer's seed)
    assert main([*tok[:tok.index("text") + 1], "attributes", *tok[tok.index("text") + 1:], "--tokenizer", "rqkmeans",
                 "--output", str(tmp_path / "qtok"), "--tokenize.rqkmeans.levels", "2",
                 "--tokenize.rqkmeans.codebook_size", "8"]) == 0
    capsys.readouterr()
    seeds = []
    build = pipeline_module.build_modalities
    monkeypatch.setattr(pipeline_module, "build_modalities",
                        lambda ds, c, *a, **k: seeds.append(c.encode.attributes.seed) or build(ds, c, *a, **k))
    assert main([*run[:run.index("--ranker.epochs")], "--ranker.epochs", "2", *run[run.index("--ranker.epochs") + 2:],
                 "--tokenizer-dir", str(tmp_path / "qtok"), "--finetune.tau", "0.03", "--finetune.schedule", "joint",
                 "--seed", "1", "--output", str(tmp_path / "q")]) == 0
    assert seeds and set(seeds) == {0}
    assert "stage 2:" in capsys.readouterr().out
    assert Tokenization.from_pretrained(tmp_path / "q" / "best" / "tokenizer").tokenizer.kind == "rqkmeans"
    # one-line errors: not an MMQ or RQ-KMeans tokenizer; a representation without a soft form
    assert main([*run, "--tokenizer-dir", str(tmp_path / "rtok"), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "MMQ or RQ-KMeans tokenizer" in err and "'random'" in err and len(err.splitlines()) == 1
    assert main([*run, "--tokenizer-dir", str(tmp_path / "tok"), "--output", str(tmp_path / "y"),
                 "--ranker.representation", "sid_prefix"]) == 2
    assert "ranker.representation" in capsys.readouterr().err
