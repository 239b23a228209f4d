"""Item tokenizers (MMQ and baselines), the SID table and its quality numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmq_rec.cli import main
from mmq_rec.recdata import DataError
from mmq_rec.recdata.synthetic import SyntheticConfig, synthetic_catalogue
from mmq_rec.tokenizer.api import Tokenization, tokenize
from mmq_rec.tokenizer.baselines import (
    ExternalConfig,
    ExternalTokenizer,
    RandomConfig,
    RandomTokenizer,
    RQKMeansConfig,
    RQKMeansTokenizer,
    RQVAEConfig,
    RQVAETokenizer,
)
from mmq_rec.tokenizer.mmq import MMQConfig, MMQModel, MMQTokenizer, orthogonal_loss
from mmq_rec.tokenizer.quantizer import Codebook
from mmq_rec.tokenizer.sid import SIDTable, disambiguate, quality

TINY = dict(codebook_size=16, latent_dim=8, hidden_dim=32, gate_hidden_dim=8, epochs=3, batch_size=64)


@pytest.fixture(scope="module")
def mods():
    ds = synthetic_catalogue(SyntheticConfig(num_items=300, num_users=50, dim=16, seed=2))
    return {"text": ds.features["text"], "image": ds.features["image"]}, ds.item_ids()


# ------------------------------------------------------------------ SID table
def test_disambiguation_by_hand():
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0]])
    full, group = disambiguate(codes)
    assert group == 3 and full[:, 2].tolist() == [0, 1, 0, 2, 1]
    unique, g = disambiguate(np.array([[0], [1]]))
    assert g == 1 and unique.shape == (2, 1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(1, 4), st.integers(1, 5), st.integers(0, 10**6))
def test_no_duplicate_sids_after_disambiguation(n, length, k, seed):
    codes = np.random.default_rng(seed).integers(0, k, (n, length))
    table = SIDTable.from_codes([str(i) for i in range(n)], codes, [k] * length)
    assert table.is_unique()
    assert np.array_equal(table.codes[:, :length], codes)
    q = quality(codes, [k] * length)
    assert table.codebook_sizes[-1] == q["largest_collision_group"] or table.sid_length == length
    assert 0.0 <= q["collision_rate"] < 1.0 and all(0 < u <= 1 for u in q["utilisation"])


def test_quality_by_hand():
    q = quality(np.array([[0, 1], [0, 1], [1, 0], [2, 0]]), [4, 2])
    assert q["utilisation"] == [0.75, 1.0]
    assert q["entropy"] == [1.5, 1.0]
    assert q["collision_rate"] == 0.25 and q["items_in_collisions"] == 0.5 and q["largest_collision_group"] == 2


def test_sid_strings_and_bad_table(tmp_path):
    t = SIDTable.from_codes(["a", "b"], np.array([[12, 201], [12, 7]]), [256, 256])
    assert t.to_string(0) == "<s0_12><s1_201>"
    t.save(tmp_path / "t.json")
    again = SIDTable.load(tmp_path / "t.json")
    assert again.item_ids == t.item_ids and np.array_equal(again.codes, t.codes)
    (tmp_path / "bad.json").write_text(json.dumps({"num_semantic": 1, "codebook_sizes": [2],
                                                   "items": {"a": [0], "b": [0]}}))
    with pytest.raises(DataError, match="two items share a SID"):
        SIDTable.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="outside its codebook"):
        SIDTable.from_codes(["a"], np.array([[3]]), [2])


# ------------------------------------------------------------------ MMQ
def test_mmq_same_seed_same_sids_and_round_trip(mods, tmp_path):
    m, ids = mods
    a = tokenize(MMQTokenizer(MMQConfig(**TINY, seed=5)), m, ids, show_progress=False)
    b = tokenize(MMQTokenizer(MMQConfig(**TINY, seed=5)), m, ids, show_progress=False)
    assert np.array_equal(a.table.codes, b.table.codes)
    assert a.table.num_semantic == 6 and a.table.is_unique()
    q = a.quality
    assert len(q["utilisation"]) == 6 and set(q["reconstruction_loss"]) == {"total", "text", "image"}
    a.save_pretrained(tmp_path / "tok")
    loaded = Tokenization.from_pretrained(tmp_path / "tok")
    assert loaded.table.item_ids == a.table.item_ids and np.array_equal(loaded.table.codes, a.table.codes)
    assert loaded.table.codes.dtype == a.table.codes.dtype and loaded.quality == json.loads(json.dumps(q))
    assert np.array_equal(loaded.tokenizer.encode(m), a.tokenizer.encode(m))
    c = tokenize(MMQTokenizer(MMQConfig(**TINY, seed=6)), m, ids, show_progress=False)
    assert not np.array_equal(c.table.codes, a.table.codes)


def test_orthogonal_loss_zero_iff_orthonormal():
    cfg = MMQConfig(**TINY)
    model = MMQModel({"a": 4, "b": 3}, cfg)
    experts = model.shared
    assert orthogonal_loss(experts) > 0
    with torch.no_grad():
        # give the two experts' weights disjoint supports: their flattened vectors are orthogonal
        for e, (lo, hi) in zip(experts, [(0, 4), (4, 8)], strict=True):
            for p in e.parameters():
                if p.dim() > 1:
                    p.zero_()
            e[0].weight[lo:hi] = torch.randn(hi - lo, e[0].weight.shape[1])
            e[2].weight[lo:hi] = torch.randn(hi - lo, e[2].weight.shape[1])
    assert orthogonal_loss(experts).item() == pytest.approx(0.0, abs=1e-10)
    assert orthogonal_loss(torch.nn.ModuleList([experts[0]])).item() == 0.0


def test_gradients_reach_experts_through_quantizer():
    torch.manual_seed(0)
    model = MMQModel({"a": 5, "b": 6}, MMQConfig(**TINY))
    xs = [torch.randn(32, 5), torch.randn(32, 6)]
    model.losses(xs)["recon"].backward()  # the reconstruction sees experts only through quantized codes
    for e in [*model.shared, *model.specific["a"], *model.specific["b"]]:
        assert e[0].weight.grad is not None and e[0].weight.grad.abs().sum() > 0
    assert model.gates["a"][0].weight.grad.abs().sum() > 0


def test_soft_index_is_one_hot_forward_with_soft_gradient():
    cb = Codebook(8, 4, "cosine")
    z = torch.randn(5, 4, requires_grad=True)
    ind = cb.soft_index(z, tau=0.5)
    assert torch.allclose(ind.sum(-1), torch.ones(5)) and set(ind.detach().flatten().tolist()) <= {0.0, 1.0}
    (ind * torch.arange(8.0)).sum().backward()
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("bad,match", [
    ({"text": np.full((300, 16), np.nan, dtype=np.float32)}, r"'text' has NaN/inf in 300 rows \(first: item row 0\)"),
    ({"text": np.zeros((299, 16))}, "disagree on the number of items"),
    ({"text": np.zeros((300, 0))}, "'text' is empty"),
])
def test_bad_modalities_are_named(mods, bad, match):
    m, ids = mods
    with pytest.raises(DataError, match=match):
        MMQTokenizer(MMQConfig(**TINY)).fit({**m, **bad}, show_progress=False)


def test_ablation_shapes(mods):
    m, ids = mods
    shared_only = MMQTokenizer(MMQConfig(**{**TINY, "num_specific_experts": 0, "num_shared_experts": 3}))
    assert shared_only.fit(m, show_progress=False).encode(m).shape == (300, 3)
    deep = MMQTokenizer(MMQConfig(**{**TINY, "depth": 2, "distance": "l2"})).fit(m, show_progress=False)
    assert deep.encode(m).shape == (300, 12) and len(deep.codebook_sizes()) == 12



def test_token_order_permutes_the_sid_groups(mods, tmp_path):
    m, ids = mods
    cfg = {**TINY, "num_shared_experts": 2, "num_specific_experts": 1, "depth": 2, "seed": 3}
    plain = tokenize(MMQTokenizer(MMQConfig(**cfg)), m, ids, show_progress=False)
    tok = MMQTokenizer(MMQConfig(**cfg, token_order=["image", "shared", "text"]))
    ordered = tokenize(tok, m, ids, show_progress=False)
    # same experts (the order changes no training), the SID groups moved: shared 4, text 2, image 2 tokens
    perm = [6, 7, 0, 1, 2, 3, 4, 5]
    assert np.array_equal(ordered.tokenizer.encode(m), plain.tokenizer.encode(m)[:, perm])
    assert np.array_equal(ordered.table.codes[:, :8], plain.table.codes[:, :8][:, perm])
    # stage 2's soft index follows the same order
    model = tok.finetune_model()
    xs = tok.finetune_features(m)
    ind = model.soft_indices(model.expert_latents(xs), tau=0.5)
    assert torch.equal(ind.argmax(-1), model.quantize(xs)[1])
    ordered.save_pretrained(tmp_path / "tok")
    loaded = Tokenization.from_pretrained(tmp_path / "tok")
    assert np.array_equal(loaded.tokenizer.encode(m), ordered.tokenizer.encode(m))
    with pytest.raises(ValueError, match=r"token_order: must list each of \['shared', 'text', 'image'\] once"):
        MMQTokenizer(MMQConfig(**cfg, token_order=["image", "text"])).fit(m, show_progress=False)


def test_cli_refuses_a_token_order_without_the_modalities(tmp_path, capsys):
    assert main(["tokenize", "--dataset", str(tmp_path / "missing"), "--modalities", "text", "attributes",
                 "--tokenize.mmq.token_order", "collaborative,shared,text"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmq tokenize: error: field 'tokenize.mmq.token_order': must list each of "
                          "['shared', 'text', 'attributes'] once") and err.count("\n") == 1

# ------------------------------------------------------------------ baselines
@pytest.mark.parametrize("mode,length", [("fused", 3), ("separate", 6)])
def test_rq_baselines(mods, mode, length, tmp_path):
    m, ids = mods
    rqk = tokenize(RQKMeansTokenizer(RQKMeansConfig(mode=mode, codebook_size=16)), m, ids, show_progress=False)
    rqv = tokenize(RQVAETokenizer(RQVAEConfig(mode=mode, codebook_size=16, epochs=2, hidden_dims=[32, 16],
                                              latent_dim=8)), m, ids, show_progress=False)
    for t in (rqk, rqv):
        assert t.table.num_semantic == length and t.table.is_unique()
        t.save_pretrained(tmp_path / t.tokenizer.kind)
        loaded = Tokenization.from_pretrained(tmp_path / t.tokenizer.kind)
        assert np.array_equal(loaded.tokenizer.encode(m), t.tokenizer.encode(m))
    # residual k-means reconstruction improves on the all-zero (mean) reconstruction of standardised input
    assert rqk.quality["reconstruction_loss"]["total"] < 1.0


@pytest.mark.parametrize("make,message", [
    (lambda: MMQConfig(codebook_size=0), r"^codebook_size: must be >= 1 \(got 0\)$"),
    (lambda: MMQConfig(distance="dot"), r"^distance: must be one of cosine, l2 \(got 'dot'\)$"),
    (lambda: MMQConfig(num_shared_experts=0, num_specific_experts=0), r"^num_shared_experts: MMQ needs at least one"),
    (lambda: MMQConfig(lr=0.0), r"^lr: must be > 0"),
    (lambda: RQVAEConfig(mode="mixed"), r"^mode: must be one of fused, separate \(got 'mixed'\)$"),
    (lambda: RQVAEConfig(hidden_dims=[64, 0]), r"^hidden_dims: every width must be >= 1"),
    (lambda: RQKMeansConfig(levels=0), r"^levels: must be >= 1 \(got 0\)$"),
    (lambda: RandomConfig(length=0), r"^length: must be >= 1 \(got 0\)$"),
])
def test_tokenizer_configs_refuse_bad_values(make, message):
    # "<field>: <reason>", which mmq config reports as field 'tokenize.<tokenizer>.<field>'
    with pytest.raises(ValueError, match=message):
        make()


def test_cli_tokenize_refuses_bad_setting_before_any_work(tmp_path, capsys):
    assert main(["tokenize", "--dataset", str(tmp_path / "missing"), "--tokenize.mmq.codebook_size", "0"]) == 2
    assert capsys.readouterr().err == ("mmq tokenize: error: field 'tokenize.mmq.codebook_size': must be >= 1 "
                                       "(got 0)\n")


def test_random_and_external(mods, tmp_path):
    m, ids = mods
    r = tokenize(RandomTokenizer(RandomConfig(length=6, codebook_size=16, seed=1)), m, ids, show_progress=False)
    assert r.table.num_semantic == 6 and r.quality["reconstruction_loss"] is None
    table = {iid: [f"<a_{i % 7}>", f"<b_{i % 5}>"] for i, iid in enumerate(ids)}
    (tmp_path / "ext.json").write_text(json.dumps(table))
    e = tokenize(ExternalTokenizer(ExternalConfig(str(tmp_path / "ext.json")), ids), {}, ids, show_progress=False)
    assert e.table.codes[8, :2].tolist() == [1, 3] and e.table.codebook_sizes[:2] == [7, 5]
    del table[ids[4]]
    (tmp_path / "ext.json").write_text(json.dumps(table))
    with pytest.raises(DataError, match=f"item '{ids[4]}' of the dataset has no SID"):
        ExternalTokenizer(ExternalConfig(str(tmp_path / "ext.json")), ids).fit({})


def test_letter_table_on_beauty(data_dir, beauty):
    ids = beauty.item_ids()
    e = tokenize(ExternalTokenizer(ExternalConfig(str(data_dir / "amazon-beauty" / "letter.index.json")), ids),
                 {}, ids, show_progress=False)
    assert e.table.num_semantic == 4 and e.table.codebook_sizes[:4] == [256, 256, 256, 256]
    assert e.table.codes[0, :4].tolist() == [183, 70, 232, 6] and e.table.is_unique()


def test_cli_tokenize_json(tmp_path, capsys):
    synthetic_catalogue(SyntheticConfig(num_items=200, num_users=60, seed=0)).save(tmp_path / "ds")
    args = ["tokenize", "--dataset", str(tmp_path / "ds"), "--modalities", "text", "image", "--json",
            "--encode.cache_dir", "", "--tokenize.mmq.codebook_size", "16", "--tokenize.mmq.epochs", "2"]
    assert main([*args, "--output", str(tmp_path / "t1")]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("utilisation", "entropy", "collision_rate", "sid_length", "num_items", "unique_sids"):
        assert key in out
    assert out["num_items"] == out["unique_sids"] == 200 and len(out["utilisation"]) == 6
    assert main([*args, "--output", str(tmp_path / "t2")]) == 0
    capsys.readouterr()
    a = json.loads((tmp_path / "t1" / "sid_table.json").read_text())
    b = json.loads((tmp_path / "t2" / "sid_table.json").read_text())
    assert a == b  # deterministic for a seed
