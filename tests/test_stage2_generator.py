"""MMQ stage 2 with the generator: the soft-indexed loss, the fine-tuning loop, export, the commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmq_rec.cli import main
from mmq_rec.generator.model import GeneratorConfig, SIDCodec, build_model, load_generator
from mmq_rec.generator.objective import GeneratorLoss
from mmq_rec.generator.recommend import Recommender
from mmq_rec.generator.stage2 import build_stage2_loss, stage2_generator_hooks, stage2_table
from mmq_rec.generator.train import TrainConfig, train_generator
from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.synthetic import SyntheticConfig, synthetic_catalogue
from mmq_rec.tokenizer.api import Tokenization, table_quality
from mmq_rec.tokenizer.baselines import RQKMeansConfig, RQKMeansTokenizer
from mmq_rec.tokenizer.finetune import FinetuneConfig
from mmq_rec.tokenizer.mmq import MMQConfig, MMQTokenizer

N, K = 40, 6


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    mods = {"text": rng.normal(size=(N, 12)).astype(np.float32), "image": rng.normal(size=(N, 6)).astype(np.float32)}
    tok = MMQTokenizer(MMQConfig(num_shared_experts=1, num_specific_experts=2, codebook_size=K, latent_dim=8,
                                 hidden_dim=16, gate_hidden_dim=8, epochs=3, batch_size=16)).fit(mods, show_progress=False)
    codes = tok.encode(mods)
    table = stage2_table([f"i{i}" for i in range(N)], codes, K, K)
    return tok, mods, table


def gcfg(**kw) -> GeneratorConfig:
    return GeneratorConfig(input_mode="item", d_model=16, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8,
                           d_ff=32, dropout=0.0, max_history=5, **kw)


HIST = torch.as_tensor(np.array([[-1, -1, 0, 1, 2], [-1, -1, -1, -1, 4], [3, 3, 1, 0, 5], [7, 8, 9, 10, 11]]))
TGT = torch.where(HIST >= 0, (HIST * 7 + 1) % N, -1)


def test_stage2_table_keeps_a_fixed_disambiguation_position(fitted):
    tok, mods, table = fitted
    assert table.sid_length == table.num_semantic + 1 and table.codebook_sizes[-1] == K
    assert table.is_unique()
    # no collision: the position is still there, constant
    assert stage2_table(list("abcde"), np.c_[np.arange(5), np.zeros(5, dtype=np.int64)], 8, 8).codes[:, -1].tolist() == [0] * 5
    same = np.zeros((5, 2), dtype=np.int64)  # five items on one SID, four disambiguation tokens
    with pytest.raises(DataError, match="5 items share one SID"):
        stage2_table(list("abcde"), same, 8, 4)


@pytest.mark.parametrize("item_embedding", [False, True])
def test_soft_loss_equals_the_plain_loss_and_reaches_the_tokenizer(fitted, item_embedding):
    tok, mods, table = fitted
    codec = SIDCodec(table, "item")
    cfg = gcfg(item_id_embedding=item_embedding)
    torch.manual_seed(0)
    net = build_stage2_loss(build_model(codec.vocab, cfg), codec, cfg, tok, mods, FinetuneConfig(alpha=0, beta=0))
    if item_embedding:
        with torch.no_grad():
            net.item_embedding[:-1] = torch.randn(N, 16)
    plain = GeneratorLoss(net.t5, codec.item_tokens, "item", True, False, item_embedding)
    if item_embedding:
        plain.item_embedding = net.item_embedding
    soft = net(HIST, TGT)
    assert torch.allclose(soft, plain(HIST, TGT), atol=1e-5)
    soft.backward()
    mmq = net.tokenizer
    assert mmq.shared[0][0].weight.grad.abs().sum() > 0
    assert mmq.specific["image"][0][0].weight.grad.abs().sum() > 0
    assert all(q.levels[0].weight.grad.abs().sum() > 0 for q in mmq.quantizers)
    # the reconstruction terms reach the gates too
    net.zero_grad()
    net.ft.alpha = net.ft.beta = 0.5
    net(HIST, TGT).backward()
    assert mmq.gates["text"][0].weight.grad.abs().sum() > 0


def finetune(fitted, out, ft: FinetuneConfig, steps: int = 8, seed: int = 0):
    tok, mods, table = fitted
    codec = SIDCodec(table, "item")
    cfg = gcfg()
    base_quality = {**table_quality(tok, table, mods), "wall_time_s": 1.0}
    hooks, current = stage2_generator_hooks(cfg, ft, codec, tok, mods, base_quality, seed=seed)
    rng = np.random.default_rng(1)
    windows = torch.as_tensor(rng.integers(0, N, size=(32, 5)))
    targets = torch.roll(windows, -1, dims=1)
    targets[:, -1] = -1
    calls = iter(range(100))

    def validate(model):  # a larger value each time, so every validation is the best so far
        assert current() is not None
        return {"ndcg@10": float(next(calls))}

    tc = TrainConfig(batch_size=8, lr=1e-2, warmup_steps=1, max_steps=steps, eval_every=4, seed=seed)
    state = train_generator(codec, windows, targets, cfg, tc, out, validate, show_progress=False, hooks=hooks)
    return state, current()


def test_finetuning_exports_a_generator_and_tokenizer_that_agree(fitted, tmp_path):
    tok, mods, table = fitted
    state, last = finetune(fitted, tmp_path / "run", FinetuneConfig(schedule="joint", tau=0.3, tokenizer_lr=3e-2))
    assert {"utilisation", "collision_rate", "changed_sids"} <= set(state["history"][-1])
    model, codec, cfg, info = load_generator(tmp_path / "run" / "best")
    assert np.array_equal(codec.table.codes, last.codes) and codec.table.is_unique()
    saved = Tokenization.from_pretrained(tmp_path / "run" / "best" / "tokenizer")
    semantic = saved.tokenizer.encode(mods)
    assert np.array_equal(semantic, last.codes[:, :last.num_semantic])
    assert saved.table.is_unique() and np.array_equal(saved.table.codes[:, :saved.table.num_semantic], semantic)
    changed = (semantic != table.codes[:, :table.num_semantic]).any(1).mean()
    assert info["stage2"]["changed_sids"]["items"] == pytest.approx(changed, abs=1e-6)
    assert saved.quality["stage2"]["after"]["collision_rate"] == info["stage2"]["after"]["collision_rate"]
    # the trie of the new SIDs decodes only real items
    rec = Recommender(model, codec, 5)
    items, _ = rec.rank(HIST, k=10, beam_width=10)
    assert (items >= 0).all() and (items < N).all()
    assert all(len(set(r.tolist())) == len(r) for r in items)


def test_rqkmeans_codebooks_fine_tune_with_the_generator(fitted, tmp_path):
    """The generator's stage 2 ports to RQ-KMeans: the soft loss is the plain one, it reaches every
    codebook level, and the exported tokenizer gives the generator's SIDs."""
    _, mods, _ = fitted
    tok = RQKMeansTokenizer(RQKMeansConfig(levels=2, codebook_size=K, niter=5)).fit(mods)
    table = stage2_table([f"i{i}" for i in range(N)], tok.encode(mods), K, K)
    codec, cfg = SIDCodec(table, "item"), gcfg()
    torch.manual_seed(0)
    net = build_stage2_loss(build_model(codec.vocab, cfg), codec, cfg, tok, mods, FinetuneConfig(alpha=0, beta=0))
    soft = net(HIST, TGT)
    assert torch.allclose(soft, GeneratorLoss(net.t5, codec.item_tokens, "item", True, False, False)(HIST, TGT), atol=1e-5)
    soft.backward()
    assert all(level.weight.grad.abs().sum() > 0 for level in net.tokenizer.quantizers[0].levels)
    state, last = finetune((tok, mods, table), tmp_path / "run", FinetuneConfig(schedule="joint", tau=0.3,
                                                                                 tokenizer_lr=0.05))
    saved = Tokenization.from_pretrained(tmp_path / "run" / "best" / "tokenizer")
    assert saved.tokenizer.kind == "rqkmeans"
    assert np.array_equal(saved.tokenizer.encode(mods), last.codes[:, :last.num_semantic])
    assert state["history"][-1]["changed_sids"] > 0, "a high tokenizer lr moves some items"


def test_alternating_freezes_one_side_per_epoch(fitted, tmp_path):
    tok, mods, table = fitted
    codec, cfg = SIDCodec(table, "item"), gcfg()
    hooks, _ = stage2_generator_hooks(cfg, FinetuneConfig(), codec, tok, mods, {})
    net = hooks.build_loss(build_model(codec.vocab, cfg))
    mmq = set(map(id, net.tokenizer.parameters()))
    for p in net.parameters():  # as if a gradient were left from the step before the phase changed
        p.grad = torch.ones_like(p)
    for epoch, trains_tokenizer in ((1, False), (2, True), (3, False)):
        hooks.on_epoch_start(net, epoch, False)
        assert net.tokenizer_frozen is not trains_tokenizer
        assert all(p.requires_grad == (trains_tokenizer if id(p) in mmq else not trains_tokenizer)
                   for p in net.parameters())
        assert all(p.grad is None for p in net.parameters() if not p.requires_grad)
    # in the loop: the first epoch (4 steps of 8) trains the generator alone, so the SIDs are stage 1's
    state, _ = finetune(fitted, tmp_path / "run", FinetuneConfig(tokenizer_lr=3e-2), steps=8)
    assert state["history"][0]["changed_sids"] == 0.0
    assert [h["phase"] for h in state["history"]] == ["generator", "tokenizer"]


def test_same_seed_same_sids(fitted, tmp_path):
    ft = FinetuneConfig(schedule="joint", tokenizer_lr=3e-2)
    _, a = finetune(fitted, tmp_path / "a", ft)
    _, b = finetune(fitted, tmp_path / "b", ft)
    assert np.array_equal(a.codes, b.codes)
    assert (tmp_path / "a" / "best" / "sid_table.json").read_text() == \
        (tmp_path / "b" / "best" / "sid_table.json").read_text()


def test_finetune_command_for_the_generator(tmp_path, capsys):
    synthetic_catalogue(SyntheticConfig(num_items=120, num_users=150, num_topics=5, seed=0)).save(tmp_path / "ds")
    tok = ["tokenize", "--dataset", str(tmp_path / "ds"), "--modalities", "text", "--json", "--encode.cache_dir", ""]
    assert main([*tok, "--tokenizer", "mmq", "--output", str(tmp_path / "tok"), "--tokenize.mmq.codebook_size", "8",
                 "--tokenize.mmq.epochs", "5"]) == 0
    capsys.readouterr()
    small = ["--generator.input_mode", "item", "--generator.d_model", "16", "--generator.num_layers", "1",
             "--generator.num_decoder_layers", "1", "--generator.d_kv", "8", "--generator.num_heads", "2",
             "--generator.d_ff", "32", "--decode.valid_users", "20", "--encode.cache_dir", ""]
    run = ["finetune", "--for", "generator", "--dataset", str(tmp_path / "ds"), "--tokenizer-dir", str(tmp_path / "tok"),
           "--train.max_steps", "6", "--train.eval_every", "3", "--train.batch_size", "32", *small]
    assert main([*run, "--output", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "stage 2:" in out and str(tmp_path / "g" / "best" / "tokenizer") in out
    assert main(["evaluate", "--dataset", str(tmp_path / "ds"), "--model", str(tmp_path / "g" / "best"), "--json",
                 *small]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["all"]["invalid_rate"] == 0.0
    # the fine-tuned tokenizer is a tokenizer directory a new generator trains on
    assert main(["train", "--dataset", str(tmp_path / "ds"), "--tokenizer-dir", str(tmp_path / "g" / "best" / "tokenizer"),
                 "--output", str(tmp_path / "g2"), "--json", "--train.max_steps", "2", "--train.eval_every", "2",
                 *small]) == 0
    capsys.readouterr()
    # one-line error: the flat input mode has no soft form here
    assert main([*run, "--output", str(tmp_path / "x"), "--generator.input_mode", "flat"]) == 2
    err = capsys.readouterr().err
    assert "item input mode" in err and len(err.splitlines()) == 1


def test_benchmark_runs_mmq_after_stage_2(tmp_path, capsys):
    synthetic_catalogue(SyntheticConfig(num_items=120, num_users=150, num_topics=5, seed=0)).save(tmp_path / "ds")
    (tmp_path / "c.yaml").write_text(f"""
output_dir: {tmp_path / 'out'}
benchmark: {{tokenizers: [mmq_stage2], seeds: [0], generate_rank: false}}
encode: {{modalities: [text], cache_dir: ''}}
tokenize: {{mmq: {{codebook_size: 8, epochs: 5}}}}
generator: {{input_mode: item, d_model: 16, num_layers: 1, num_decoder_layers: 1, d_ff: 32, num_heads: 2, d_kv: 8}}
train: {{max_steps: 6, eval_every: 3, warmup_steps: 1, batch_size: 32}}
decode: {{valid_users: 30}}
ranker: {{epochs: 1, d_model: 16, candidates: [30]}}
""")
    assert main(["benchmark", "--config", str(tmp_path / "c.yaml"), "--dataset", str(tmp_path / "ds"), "--json"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {"generator (MMQ + stage 2 SIDs)", "ranker id+sid_prefix (MMQ + stage 2 SIDs)",
            "ranker id (SASRec, item IDs)"} <= set(report["systems"])
    assert "changed_sids" in report["tokenizers"]["mmq_stage2"]["stage2"]
    capsys.readouterr()
    # stage 2 needs the generator in item mode: refused before anything runs
    assert main(["benchmark", "--config", str(tmp_path / "c.yaml"), "--dataset", str(tmp_path / "ds"),
                 "--output", str(tmp_path / "o2"), "--generator.input_mode", "flat"]) == 2
    err = capsys.readouterr().err
    assert "mmq_stage2" in err and len(err.splitlines()) == 1 and not (tmp_path / "o2").exists()


def test_stage2_accepts_a_near_tie_and_refuses_other_modalities(tmp_path, capsys):
    """A tokenizer whose re-encoding differs from its table for one item (a near-tie rounded the
    other way on another machine) starts stage 2 from its table; one that differs for many items
    (other modalities) is a one-line error that says how many."""
    synthetic_catalogue(SyntheticConfig(num_items=120, num_users=150, num_topics=5, seed=0)).save(tmp_path / "ds")
    assert main(["tokenize", "--dataset", str(tmp_path / "ds"), "--modalities", "text", "--json", "--encode.cache_dir",
                 "", "--tokenizer", "mmq", "--output", str(tmp_path / "tok"), "--tokenize.mmq.codebook_size", "8",
                 "--tokenize.mmq.epochs", "5"]) == 0
    path = tmp_path / "tok" / "sid_table.json"
    original = path.read_text()
    table = json.loads(original)
    taken = {tuple(v) for v in table["items"].values()}
    codes = next(iter(table["items"].values()))
    codes[0] = next(c for c in range(8) if tuple([c, *codes[1:]]) not in taken)  # still unique
    path.write_text(json.dumps(table))
    small = ["--generator.input_mode", "item", "--generator.d_model", "16", "--generator.num_layers", "1",
             "--generator.num_decoder_layers", "1", "--generator.d_kv", "8", "--generator.num_heads", "2",
             "--generator.d_ff", "32", "--decode.valid_users", "20", "--encode.cache_dir", "", "--train.max_steps", "2",
             "--train.eval_every", "2", "--train.batch_size", "32"]
    run = ["finetune", "--for", "generator", "--dataset", str(tmp_path / "ds"), "--tokenizer-dir", str(tmp_path / "tok"),
           *small]
    capsys.readouterr()
    assert main([*run, "--output", str(tmp_path / "g")]) == 0
    assert "1 of 120 items' SIDs re-encode differently here" in capsys.readouterr().err
    changed = json.loads((tmp_path / "g" / "best" / "tokenizer" / "quality.json").read_text())["stage2"]["changed_sids"]
    assert changed["items"] > 0  # counted against the table: at least the near-tie item differs
    table = json.loads(original)
    for codes in table["items"].values():  # every item's first token moved: not a near-tie
        codes[0] = (codes[0] + 1) % 8
    path.write_text(json.dumps(table))
    assert main([*run, "--output", str(tmp_path / "g2")]) == 2
    err = capsys.readouterr().err
    assert "for 120 of 120 items" in err and len(err.strip().splitlines()) == 1
