"""The ranker: item representations, scores, re-ranking, training, resume, save/load, commands."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mmq_rec.cli import main
from mmq_rec.config import fingerprint_view
from mmq_rec.ranker import (
    RankerConfig,
    build_ranker,
    candidate_scores,
    correction_sweep,
    load_ranker,
    rank_full,
    rerank,
    save_ranker,
)
from mmq_rec.ranker.model import prefix_rows
from mmq_rec.recdata.synthetic import SyntheticConfig, synthetic_catalogue
from mmq_rec.tokenizer.sid import SIDTable

# 6 items, 2 semantic positions (codebooks 3 and 2) + a disambiguation token
CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 0], [2, 1], [0, 0]])
COUNTS = np.array([10, 3, 1, 0, 5, 2])


def table() -> SIDTable:
    return SIDTable.from_codes([f"i{i}" for i in range(6)], CODES, [3, 2])


def ranker(representation: str, seed: int = 0, **kw):
    return build_ranker(RankerConfig(representation=representation, d_model=8, num_heads=2, max_history=5,
                                     dropout=0.0, seed=seed, **kw), table(), COUNTS)


HIST = np.array([[-1, -1, 0, 1, 2], [-1, -1, -1, -1, 4], [3, 3, 1, 0, 5]])


def test_id_scores_are_a_dot_product_with_the_item_embeddings():
    m = ranker("id").eval()
    with torch.no_grad():
        state = m.encode(torch.as_tensor(HIST))[:, -1]
        expected = state @ m.items.id_emb.weight.T
        assert torch.allclose(m.scores(torch.as_tensor(HIST)), expected, atol=1e-6)
    top, sc = rank_full(m, HIST, 6)
    assert np.allclose(np.sort(sc, axis=1)[:, ::-1], np.sort(expected.numpy(), axis=1)[:, ::-1], atol=1e-5)


def test_sid_pooling_matches_a_hand_computation():
    m = ranker("sid")
    w = m.items.sid_emb.weight.detach()  # rows 0..2: position 0, rows 3..4: position 1
    expected = torch.stack([(w[c0] + w[3 + c1]) / 2 for c0, c1 in CODES])
    assert torch.allclose(m.items().detach(), expected)
    assert table().codes.shape[1] == 3, "the disambiguation token exists but is not used"


def test_prefix_rows_and_pooling():
    rows, n = prefix_rows(CODES)
    # prefixes: (0), (0,0), (0,1), (1), (1,0), (2), (2,1) -> 7 rows; items 0 and 5 share both
    assert n == 7 and (rows[0] == rows[5]).all() and rows[0, 0] == rows[1, 0] and rows[0, 1] != rows[1, 1]
    m = ranker("sid_prefix")
    w = m.items.sid_emb.weight.detach()
    assert torch.allclose(m.items().detach(), torch.stack([w[r].mean(0) for r in rows]))
    hashed, size = prefix_rows(CODES, table_size=4)
    assert size == 4 and hashed.max() < 4 and (hashed[0] == hashed[5]).all()
    assert (prefix_rows(CODES, table_size=4)[0] == hashed).all()  # a stable hash


def test_rows_no_training_item_uses_are_skipped():
    """An unseen item's own code or prefix only ever gets negative gradients: it is left out of the pooling."""
    t = SIDTable.from_codes(["a", "b", "c"], np.array([[0, 0], [0, 1], [1, 1]]), [2, 2])
    cfg = {"d_model": 8, "num_heads": 2, "max_history": 5}
    sid = build_ranker(RankerConfig(representation="sid", **cfg), t, np.array([4, 2, 0]))
    w = sid.items.sid_emb.weight.detach()
    assert torch.allclose(sid.items()[2].detach(), w[2 + 1])  # code 1 at position 0 is c's alone: skipped
    assert torch.allclose(sid.items()[0].detach(), (w[0] + w[2]) / 2)
    pre = build_ranker(RankerConfig(representation="sid_prefix", **cfg), t, np.array([4, 2, 0]))
    assert pre.items()[2].abs().sum() == 0  # both of c's prefixes are its own


@pytest.mark.parametrize("combine", ["sum", "gate"])
def test_cold_items_use_their_sid_part_alone(combine):
    m = ranker("id+sid_prefix", combine=combine)
    emb, sid = m.items().detach(), m.items.sid_part().detach()
    assert torch.allclose(emb[3], sid[3]) and emb[3].abs().sum() > 0  # item 3 was never trained on
    assert not torch.allclose(emb[0], sid[0])
    if combine == "gate":  # the gate grows with popularity
        g = m.items.id_weight().detach().squeeze(1)
        assert g[3] == 0 and g[0] > g[4] > g[1] > g[2] > 0


def test_level_gate_weighs_the_id_row_and_each_sid_level_by_popularity():
    m = ranker("id+sid_prefix", combine="level_gate")
    with torch.no_grad():
        m.items.level_gate.copy_(torch.tensor([[1.0, -1.0, 0.5], [-2.0, 1.0, 0.0]]))  # rows a, b; ID first
    w = m.items.level_weights().detach()
    assert torch.allclose(w.sum(1), torch.ones(6)) and w[3, 0] == 0  # item 3 is unseen: no ID row
    assert w[0, 0] > w[4, 0] > w[1, 0] > w[5, 0] > w[2, 0] > 0  # the ID share grows with the count
    rows = m.items.sid_rows
    e_id, e_sid = m.items.id_emb.weight.detach(), m.items.sid_emb.weight.detach()
    n = torch.as_tensor(COUNTS, dtype=torch.float32)
    for i in (0, 2):  # by hand: softmax(a log(1 + n) + b) over [ID, level 1, level 2]
        wi = torch.softmax(torch.tensor([1.0, -1.0, 0.5]) * torch.log1p(n[i]) + torch.tensor([-2.0, 1.0, 0.0]), 0)
        expected = wi[0] * e_id[i] + wi[1] * e_sid[rows[i, 0]] + wi[2] * e_sid[rows[i, 1]]
        assert torch.allclose(m.items()[i].detach(), expected, atol=1e-6)
    assert m.items()[3].abs().sum() > 0  # the cold item: its SID rows alone
    m.items()[0].sum().backward()
    assert m.items.level_gate.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pooled"):
        m.items(m.items.sid_part())


def test_rerank_returns_only_candidates_each_once():
    cands = np.array([[4, 2, 0, -1], [1, 5, 3, 0]])
    rk = np.array([[0.1, 0.9, 0.5, 0.0], [0.3, 0.2, 0.8, -1.0]])
    gen = np.array([[-0.1, -3.0, -2.0, -np.inf], [-1.0, -0.5, -4.0, -5.0]])
    items, _ = rerank(cands, rk, k=4)
    assert items.tolist() == [[2, 0, 4, -1], [3, 1, 5, 0]]
    items, _ = rerank(cands, rk, gen, weight=1.0, k=3)
    assert items.tolist() == [[4, 0, 2], [5, 1, 3]]
    m = ranker("id+sid")
    sc = candidate_scores(m, HIST[:2], cands)
    full = m.eval().scores(torch.as_tensor(HIST[:2])).detach().numpy()
    assert np.isneginf(sc[0, 3]) and np.allclose(sc[1], full[1, cands[1]], atol=1e-5)
    for row_c, row_i in zip(cands, rerank(cands, sc, k=4)[0], strict=True):
        assert sorted(row_i.tolist()) == sorted(row_c.tolist())


def test_exclude_history_and_same_seed_same_scores():
    a, b, c = ranker("id+sid_prefix", seed=3), ranker("id+sid_prefix", seed=3), ranker("id+sid_prefix", seed=4)
    h = torch.as_tensor(HIST)
    assert torch.equal(a.eval().scores(h), b.eval().scores(h))
    assert not torch.equal(a.scores(h), c.eval().scores(h))
    items, _ = rank_full(a, HIST, 3, exclude_history=True)
    for row, hist in zip(items, HIST, strict=True):
        assert not set(row.tolist()) & set(hist[hist >= 0].tolist())


def test_sampled_loss_runs_and_full_loss_ignores_padding():
    m = ranker("id+sid", loss="sampled")
    x = torch.as_tensor(HIST)
    y = torch.as_tensor([[-1, -1, 1, 2, 4], [-1, -1, -1, -1, 0], [3, 1, 0, 5, 2]])
    full = m.loss(x, y)
    y2 = y.clone()
    y2[0, :2] = -1
    assert torch.equal(full, m.loss(x, y2)) and full > 0
    neg = torch.tensor([0, 1, 2, 3, 4, 5])
    sampled = m.loss(x, y, neg, torch.full((6,), np.log(1.0)))
    assert torch.isfinite(sampled) and torch.allclose(sampled, full, atol=1e-5)  # every item drawn, q = 1/6 * 6


def test_sid_loss_adds_the_cross_entropy_of_the_sid_part_alone():
    x = torch.as_tensor(HIST)
    y = torch.as_tensor([[-1, -1, 1, 2, 4], [-1, -1, -1, -1, 0], [3, 1, 0, 5, 2]])
    plain, aux = ranker("id+sid_prefix"), ranker("id+sid_prefix", sid_loss=0.5)
    h = aux.encode(x)[y >= 0]
    by_hand = torch.nn.functional.cross_entropy(h @ aux.items.sid_part().T, y[y >= 0])
    assert torch.allclose(aux.loss(x, y), plain.loss(x, y) + 0.5 * by_hand, atol=1e-6)
    aux.loss(x, y).backward()
    assert aux.items.sid_emb.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="sid_loss"):
        RankerConfig(representation="sid", sid_loss=0.5)
    # runs fingerprinted before the option existed stay valid at its default
    assert "sid_loss" not in fingerprint_view("ranker", vars(RankerConfig()))
    assert fingerprint_view("ranker", vars(RankerConfig(sid_loss=0.5)))["sid_loss"] == 0.5


def test_logit_adjust_adds_the_log_count_prior_to_the_training_logits():
    x = torch.as_tensor(HIST)
    y = torch.as_tensor([[-1, -1, 1, 2, 4], [-1, -1, -1, -1, 0], [3, 1, 0, 5, 2]])
    m = ranker("id+sid_prefix", logit_adjust=0.7).eval()
    h, t = m.encode(x)[y >= 0], y[y >= 0]
    prior = 0.7 * torch.log1p(torch.as_tensor(COUNTS, dtype=torch.float32))
    logits = h @ m.items().T + prior
    assert torch.allclose(m.loss(x, y), torch.nn.functional.cross_entropy(logits, t), atol=1e-6)
    assert not torch.allclose(m.loss(x, y), ranker("id+sid_prefix").eval().loss(x, y), atol=1e-3)
    # sampled softmax: every item drawn once with q = 1 gives the full loss
    neg = torch.arange(6)
    assert torch.allclose(m.loss(x, y, neg, torch.zeros(6)), m.loss(x, y), atol=1e-5)
    # ranking is untouched: scores are the plain dot products
    assert torch.equal(m.scores(x), ranker("id+sid_prefix").eval().scores(x))
    with pytest.raises(ValueError, match="logit_adjust"):
        RankerConfig(logit_adjust=-1.0)
    assert "logit_adjust" not in fingerprint_view("ranker", vars(RankerConfig()))


@pytest.mark.parametrize("rep,kw", [("id", {}), ("sid", {}), ("id+sid", {"combine": "sum"}),
                                    ("sid_prefix", {"prefix_table_size": 4}), ("id+sid_prefix", {"id_dropout": 0.5}),
                                    ("id+sid", {"combine": "level_gate"})])
def test_every_representation_round_trips(tmp_path, rep, kw):
    m = ranker(rep, **kw).eval()
    save_ranker(m, table(), tmp_path / "r")
    m2, _, _ = load_ranker(tmp_path / "r")
    h = torch.as_tensor(HIST)
    assert torch.equal(m.scores(h), m2.scores(h)) and m2.cfg == m.cfg


def test_save_load_round_trip_and_bad_directories(tmp_path):
    m = ranker("id+sid_prefix", combine="gate").eval()
    save_ranker(m, table(), tmp_path / "r", {"split": {"max_history": 5}}, titles=list("abcdef"))
    m2, t2, info = load_ranker(tmp_path / "r")
    h = torch.as_tensor(HIST)
    assert torch.equal(m.scores(h), m2.scores(h)) and t2.item_ids == table().item_ids
    assert info["split"] == {"max_history": 5} and info["titles"]["i2"] == "c"
    from mmq_rec.recdata.errors import DataError

    with pytest.raises(DataError, match="not a ranker directory"):
        load_ranker(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(DataError):  # a folder that is not ours is never replaced
        save_ranker(m, table(), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    d = tmp_path_factory.mktemp("rank")
    synthetic_catalogue(SyntheticConfig(num_items=150, num_users=200, num_topics=6, seed=0)).save(d / "ds")
    assert main(["tokenize", "--dataset", str(d / "ds"), "--tokenizer", "rqkmeans", "--modalities", "text",
                 "--output", str(d / "tok"), "--tokenize.rqkmeans.codebook_size", "8", "--json",
                 "--encode.cache_dir", ""]) == 0
    assert main(["train", "--dataset", str(d / "ds"), "--tokenizer-dir", str(d / "tok"), "--output", str(d / "gen"),
                 "--json", "--train.max_steps", "6", "--train.eval_every", "3", "--generator.d_model", "32",
                 "--generator.num_layers", "1", "--generator.num_decoder_layers", "1", "--generator.d_kv", "16",
                 "--generator.num_heads", "2", "--generator.d_ff", "64", "--decode.valid_users", "50"]) == 0
    return d


SMALL = ["--ranker.d_model", "16", "--ranker.epochs", "4", "--ranker.batch_size", "32", "--ranker.lr", "3e-3"]


def rank_train(d, out, *extra):
    return main(["rank", "train", "--dataset", str(d / "ds"), "--tokenizer-dir", str(d / "tok"), "--output", str(out),
                 "--json", *SMALL, *extra])


def test_rank_commands_train_evaluate_recommend_and_resume(tokenized, tmp_path, capsys):
    d = tokenized
    assert rank_train(d, tmp_path / "r", "--ranker.epochs", "2") == 0
    first = json.loads(capsys.readouterr().out)
    assert first["epochs"] == 2 and len(first["history"]) == 2
    assert rank_train(d, tmp_path / "r") == 0  # more epochs: resumes after epoch 2
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["epochs"] == 4 and resumed["history"][:2] == first["history"]
    assert rank_train(d, tmp_path / "full") == 0
    full = json.loads(capsys.readouterr().out)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full["history"]]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]] == strip

    ev = ["rank", "evaluate", "--dataset", str(d / "ds"), "--ranker", str(tmp_path / "r" / "best"), "--json"]
    assert main(ev) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["users"] == 200 and res["metrics"]["all"]["invalid_rate"] == 0.0 and res["mode"] == "full"
    assert main([*ev, "--exclude-history"]) == 0
    assert json.loads(capsys.readouterr().out)["exclude_history"] is True

    assert main(["recommend", "--ranker", str(tmp_path / "r" / "best"), "--history", "syn00001", "syn00002",
                 "--k", "5", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)["recommendations"]
    assert len(recs) == 5 and len({r["item_id"] for r in recs}) == 5

    # fewer epochs than the run already trained: refused, not reported as if it were that run
    assert rank_train(d, tmp_path / "r", "--ranker.epochs", "3") == 2
    assert "already trained 4 epochs" in capsys.readouterr().err


def test_generate_then_rank(tokenized, tmp_path, capsys):
    d = tokenized
    assert rank_train(d, tmp_path / "r", "--ranker.epochs", "2") == 0
    capsys.readouterr()
    ev = ["rank", "evaluate", "--dataset", str(d / "ds"), "--ranker", str(tmp_path / "r" / "best"), "--model",
          str(d / "gen" / "best"), "--candidates", "30", "--json", "--decode.valid_users", "50"]
    assert main(ev) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["mode"] == "generate->rank" and res["candidates"] == 30 and res["fusion_weight"] in (0.0, 0.1, 0.3, 1, 3)
    assert 0 <= res["metrics"]["all"]["recall@20"] <= res["candidate_recall"]  # only candidates come back
    assert main([*ev, "--exclude-history"]) == 0
    assert json.loads(capsys.readouterr().out)["exclude_history"] is True
    assert main(["recommend", "--model", str(d / "gen" / "best"), "--ranker", str(tmp_path / "r" / "best"),
                 "--history", "syn00001", "--k", "5", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["recommendations"]) == 5


def test_damaged_checkpoint_weights_are_a_clear_error(tokenized, tmp_path, capsys):
    assert rank_train(tokenized, tmp_path / "r", "--ranker.epochs", "1") == 0
    capsys.readouterr()
    (tmp_path / "r" / "checkpoint" / "model.safetensors").write_bytes(b"garbage")
    assert rank_train(tokenized, tmp_path / "r", "--ranker.epochs", "2") == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and "--overwrite" in err and "Traceback" not in err


def test_rank_errors_are_one_line(tokenized, tmp_path, capsys):
    d = tokenized
    ev = ["rank", "evaluate", "--dataset", str(d / "ds")]
    assert main([*ev, "--ranker", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmq rank evaluate: error:") and "mmq rank train" in err and len(err.splitlines()) == 1
    # a ranker trained on another dataset's items
    synthetic_catalogue(SyntheticConfig(num_items=120, num_users=150, num_topics=5, seed=1)).save(tmp_path / "other")
    assert main(["tokenize", "--dataset", str(tmp_path / "other"), "--tokenizer", "random", "--modalities", "text",
                 "--output", str(tmp_path / "otok"), "--json", "--encode.cache_dir", ""]) == 0
    assert main(["rank", "train", "--dataset", str(tmp_path / "other"), "--tokenizer-dir", str(tmp_path / "otok"),
                 "--output", str(tmp_path / "or"), "--json", *SMALL, "--ranker.epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*ev, "--ranker", str(tmp_path / "or" / "best")]) == 2
    assert "not this dataset" in capsys.readouterr().err
    # the tokenizer of another dataset
    assert main(["rank", "train", "--dataset", str(d / "ds"), "--tokenizer-dir", str(tmp_path / "otok"),
                 "--output", str(tmp_path / "y"), *SMALL]) == 2
    assert "SID table's items are not the dataset's" in capsys.readouterr().err
    # a damaged ranker directory
    shutil.copytree(tmp_path / "or" / "best", tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"garbage")
    assert main([*ev, "--ranker", str(tmp_path / "bad")]) == 2
    assert "corrupted" in capsys.readouterr().err
    assert main([*ev, "--ranker", str(tmp_path / "or" / "best"), "--candidates", "50"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["rank", "train", "--dataset", str(d / "ds"), "--tokenizer-dir", str(d / "tok"),
                 "--ranker.representation", "ids"]) == 2
    assert "ranker.representation" in capsys.readouterr().err


def test_align_loss_pulls_each_id_row_towards_its_own_sid_part():
    x = torch.as_tensor(HIST)
    y = torch.as_tensor([[-1, -1, 1, 2, 4], [-1, -1, -1, -1, 0], [3, 1, 0, 5, 2]])
    plain, aligned = ranker("id+sid_prefix"), ranker("id+sid_prefix", align_loss=0.5, align_tau=0.2)
    items = aligned.items
    torch.manual_seed(3)
    total = aligned.loss(x, y)
    torch.manual_seed(3)  # the same draw of items (here: every item seen in training)
    pick = torch.nonzero(items.counts > 0).squeeze(1)[torch.randperm(int((items.counts > 0).sum()))]
    a = torch.nn.functional.normalize(items.id_emb.weight[pick], dim=-1)
    b = torch.nn.functional.normalize(items.sid_part()[pick], dim=-1)
    logits, same = a @ b.T / 0.2, torch.arange(len(pick))
    by_hand = (torch.nn.functional.cross_entropy(logits, same) + torch.nn.functional.cross_entropy(logits.T, same)) / 2
    assert torch.allclose(total, plain.loss(x, y) + 0.5 * by_hand, atol=1e-6)
    # an ID row that the alignment moves is that of an item seen in training, and never an unseen one
    items.id_emb.weight.grad = None
    items.align_loss().backward()
    grad = items.id_emb.weight.grad.abs().sum(1)
    assert (grad[items.counts > 0] > 0).all() and (grad[items.counts == 0] == 0).all()
    assert items.sid_emb.weight.grad.abs().sum() > 0
    for bad in ({"representation": "sid_prefix", "align_loss": 0.5}, {"align_loss": -1.0}, {"align_tau": 0.0}):
        with pytest.raises(ValueError, match="align_"):
            RankerConfig(**bad)
    assert "align_loss" not in fingerprint_view("ranker", vars(RankerConfig()))


@pytest.mark.parametrize("combine", ["sum", "gate", "level_gate"])
def test_items_rarer_than_id_min_count_are_their_sid_part_alone(combine):
    m = ranker("id+sid_prefix", combine=combine, id_min_count=3).eval()
    with torch.no_grad():
        rep = m.items()
        rows = m.items.sid_emb(m.items.sid_rows)
        sid = m.items.sid_part() if combine != "level_gate" else (m.items.level_weights()[:, 1:, None] * rows).sum(1)
    rare = torch.as_tensor(COUNTS < 3)  # counts 1, 0, 2: items 2, 3, 5
    assert torch.allclose(rep[rare], sid[rare], atol=1e-6)
    assert not torch.allclose(rep[~rare], sid[~rare], atol=1e-3)  # the others keep an ID part
    with pytest.raises(ValueError, match="id_min_count"):
        RankerConfig(representation="sid_prefix", id_min_count=3)
    assert "id_min_count" not in fingerprint_view("ranker", vars(RankerConfig()))


def test_rank_full_popularity_correction_lowers_scores_by_log_counts():
    m = ranker("id+sid_prefix").eval()
    with torch.no_grad():
        expected = m.scores(torch.as_tensor(HIST)) - 0.5 * torch.log1p(torch.as_tensor(COUNTS, dtype=torch.float32))
    items, scores = rank_full(m, HIST, 6, popularity_correction=0.5)
    assert np.allclose(scores, expected.sort(dim=1, descending=True).values.numpy(), atol=1e-6)
    assert np.array_equal(rank_full(m, HIST, 6)[0], rank_full(m, HIST, 6, popularity_correction=0.0)[0])
    # the ranker's own setting: used by scores, rank_full and candidate_scores alike; sweep = rank_full per T
    c = ranker("id+sid_prefix", popularity_correction=0.5).eval()
    assert torch.allclose(c.scores(torch.as_tensor(HIST)), expected, atol=1e-6)
    assert np.array_equal(rank_full(c, HIST, 6)[0], items)
    cand = np.array([[4, 0, -1], [2, 3, 1], [5, 1, 0]])
    plain = candidate_scores(m, HIST, cand)
    bias = 0.5 * np.log1p(COUNTS[cand.clip(min=0)])
    assert np.allclose(candidate_scores(c, HIST, cand), np.where(cand < 0, -np.inf, plain - bias), atol=1e-6)
    sweep = correction_sweep(m, HIST, [0.0, 0.5, 2.0], 4)
    for t, top in sweep.items():
        assert np.array_equal(top, rank_full(m, HIST, 4, popularity_correction=t)[0])
    assert not np.array_equal(sweep[0.0], sweep[2.0])
    with pytest.raises(ValueError, match="popularity_correction"):
        RankerConfig(popularity_correction=-0.1)
    assert "popularity_correction" not in fingerprint_view("ranker", vars(RankerConfig()))


def test_rank_calibrate_chooses_the_largest_correction_above_the_floor(tokenized, tmp_path, capsys):
    d = tokenized
    assert rank_train(d, tmp_path / "id", "--ranker.representation", "id", "--ranker.epochs", "2") == 0
    assert rank_train(d, tmp_path / "sid", "--ranker.epochs", "2") == 0
    capsys.readouterr()
    src = tmp_path / "sid" / "best"
    before = {f.name: f.read_bytes() for f in src.iterdir() if f.is_file()}
    cal = ["rank", "calibrate", "--dataset", str(d / "ds"), "--ranker", str(src), "--json"]
    assert main([*cal, "--output", str(tmp_path / "c"), "--max-drop", "0.3"]) == 0
    res = json.loads(capsys.readouterr().out)
    values = {float(t): v["all"] for t, v in res["sweep"].items()}
    assert res["floor"] == pytest.approx(0.7 * values[0.0]) and res["floor_met"]
    assert values[res["chosen"]] >= res["floor"] and all(v < res["floor"] for t, v in values.items()
                                                         if t > res["chosen"])
    assert {f.name: f.read_bytes() for f in src.iterdir() if f.is_file()} == before  # the input is left as it is
    model, _, info = load_ranker(tmp_path / "c")
    assert model.cfg.popularity_correction == res["chosen"] and info["calibration"]["chosen"] == res["chosen"]
    # the calibrated ranker ranks as the sweep said it would
    ev = ["rank", "evaluate", "--dataset", str(d / "ds"), "--split", "valid", "--json"]
    assert main([*ev, "--ranker", str(tmp_path / "c")]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["all"]["recall@10"] == pytest.approx(values[res["chosen"]])
    # against a reference ranker: its validation recall@10 is the floor
    assert main([*cal, "--output", str(tmp_path / "c2"), "--reference", str(tmp_path / "id" / "best")]) == 0
    res2 = json.loads(capsys.readouterr().out)
    assert main([*ev, "--ranker", str(tmp_path / "id" / "best")]) == 0
    assert res2["floor"] == pytest.approx(json.loads(capsys.readouterr().out)["metrics"]["all"]["recall@10"])
    # a floor no correction reaches: T = 0, said so
    assert main([*cal, "--output", str(tmp_path / "c3"), "--floor", "2", "--grid", "0.1", "0.5"]) == 0
    res3 = json.loads(capsys.readouterr().out)
    assert res3["chosen"] == 0.0 and not res3["floor_met"] and set(res3["sweep"]) == {"0.0", "0.1", "0.5"}
    # never over the input, nor over an existing output without --overwrite; exactly one floor
    assert main([*cal, "--output", str(src), "--max-drop", "0.1"]) == 2
    assert "another --output" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    assert main([*cal, "--output", str(tmp_path / "mine"), "--max-drop", "0.1"]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*cal, "--output", str(tmp_path / "c4")])
    assert main([*cal, "--output", str(tmp_path / "c4"), "--max-drop", "1.5"]) == 2
    assert "max_drop" in capsys.readouterr().err
