"""The whole pipeline on a CUDA GPU, with `--device cuda`: tokenize (MMQ, dead-code restarts on
the GPU) -> train -> evaluate -> recommend, in one process as the demo and the Python API run
it; decoding makes no host sync inside the beam search. Skipped on machines without a GPU
(scripts/gpu_check.sh runs it on one); tests/test_device.py has the CPU-side checks."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import mmq_rec.generator.train as gen_train
import mmq_rec.tokenizer.mmq as mmq_module
from mmq_rec.cli import main
from mmq_rec.generator.beam import constrained_beam_search
from mmq_rec.pipeline import Pipeline
from mmq_rec.recdata.synthetic import SyntheticConfig, synthetic_catalogue
from mmq_rec.tokenizer.api import tokenize
from mmq_rec.tokenizer.baselines import RQVAEConfig, RQVAETokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = ["--generator.num_layers", "2", "--generator.num_decoder_layers", "2", "--generator.d_model", "32",
        "--generator.d_ff", "64", "--generator.num_heads", "2", "--generator.d_kv", "16",
        "--generator.input_mode", "item", "--train.batch_size", "32", "--train.warmup_steps", "5",
        "--train.lr", "3e-3", "--train.patience", "100", "--decode.valid_users", "100",
        "--decode.batch_size", "64", "--train.log_every", "5"]
OURS = tuple(os.path.join("generator", f) for f in ("beam.py", "trie.py", "objective.py", "model.py"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic catalogue tokenized and a generator trained on it, both with --device cuda;
    records where the tokenizer's restarts and the generator's training ran."""
    d = tmp_path_factory.mktemp("cuda")
    synthetic_catalogue(SyntheticConfig(num_items=200, num_users=300, num_topics=6, seed=0)).save(d / "ds")
    seen: dict[str, set[str]] = {"restart": set(), "train": set()}
    restart, accelerator = mmq_module.restart_dead, gen_train.make_accelerator

    def spy_restart(rq, z, gen):
        seen["restart"] |= {z.device.type, next(rq.parameters()).device.type}
        return restart(rq, z, gen)

    def spy_accelerator(*args, **kwargs):
        acc = accelerator(*args, **kwargs)
        seen["train"].add(f"{acc.device.type}/{acc.mixed_precision}")
        return acc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmq_module, "restart_dead", spy_restart)
        mp.setattr(gen_train, "make_accelerator", spy_accelerator)
        # few epochs over a large codebook: some codewords die and are restarted on the GPU
        assert main(["tokenize", "--dataset", str(d / "ds"), "--tokenizer", "mmq", "--modalities", "text", "image",
                     "--output", str(d / "tok"), "--tokenize.mmq.codebook_size", "64", "--tokenize.mmq.epochs", "4",
                     "--encode.cache_dir", "", "--json", "--device", "cuda"]) == 0
        assert main(["train", "--dataset", str(d / "ds"), "--tokenizer-dir", str(d / "tok"), "--output",
                     str(d / "gen"), "--train.max_steps", "20", "--train.eval_every", "10", *TINY, "--json",
                     "--device", "cuda"]) == 0
    assert seen == {"restart": {"cuda"}, "train": {"cuda/bf16"}}
    return d


def test_tokenize_train_evaluate_recommend_on_cuda(run, capsys):
    capsys.readouterr()
    tok = json.loads((run / "tok" / "quality.json").read_text())
    assert tok["unique_sids"] == tok["num_items"] == 200
    state = json.loads((run / "gen" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 20 and len(state["history"]) == 2
    # bf16 mixed precision trained finite weights (a NaN would still decode real items)
    weights = load_file(run / "gen" / "best" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())

    for dtype in ("float32", "bfloat16"):
        assert main(["evaluate", "--dataset", str(run / "ds"), "--model", str(run / "gen" / "best"), "--json",
                     "--device", "cuda:0", "--decode.dtype", dtype]) == 0
        ev = json.loads(capsys.readouterr().out)
        assert ev["device"] == "cuda:0" and ev["dtype"] == dtype
        assert ev["users"] == 300 and ev["metrics"]["all"]["invalid_rate"] == 0.0

    assert main(["recommend", "--model", str(run / "gen" / "best"), "--history", "syn00003", "syn00010", "--k", "7",
                 "--json", "--device", "cuda"]) == 0
    recs = json.loads(capsys.readouterr().out)["recommendations"]
    assert len({r["item_id"] for r in recs}) == 7 and recs == sorted(recs, key=lambda r: -r["score"])


def test_recommender_keeps_everything_on_the_gpu(run):
    pipe = Pipeline.from_config(overrides=["--device", "cuda"], show_progress=False)
    rec = pipe.recommender(run / "gen" / "best")
    assert rec.model.device.type == rec.trie.device.type == rec.codec.item_tokens.device.type == "cuda"
    assert all(t.is_cuda for arrays in (rec.trie.ptr, rec.trie.tokens, rec.trie.keys) for t in arrays)
    hist = rec.histories_tensor([[0, 1, 2], [5], [7, 7, 9, 11]])
    enc = rec.codec.encoder_inputs(rec.model, hist)
    assert enc["inputs_embeds"].is_cuda and enc["attention_mask"].is_cuda
    torch.cuda.synchronize()
    # CUDA's own sync detector: every host sync warns, naming the Python line that caused it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            items, scores = constrained_beam_search(rec.model, enc, rec.trie, rec.codec.vocab, beam_width=20, top_k=20)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    ours = [f"{os.path.basename(w.filename)}:{w.lineno}" for w in caught
            if "synchroniz" in str(w.message) and w.filename.endswith(OURS)]
    assert ours == []
    assert items.is_cuda and scores.is_cuda
    items = items.cpu().numpy()
    assert ((items >= 0) & (items < 200)).all() and all(len(set(r)) == 20 for r in items.tolist())
    # the same search on the CPU gives the same lists (float32 on both; near-ties may swap)
    cpu = pipe.recommender(run / "gen" / "best").to("cpu")
    cpu_items, _ = cpu.rank(hist, k=20, beam_width=20)
    overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(items.tolist(), cpu_items.tolist(), strict=True)])
    assert overlap > 0.8


def test_rqvae_restarts_on_cuda():
    ds = synthetic_catalogue(SyntheticConfig(num_items=300, num_users=50, dim=16, seed=2))
    mods = {"text": ds.features["text"], "image": ds.features["image"]}
    cfg = RQVAEConfig(codebook_size=64, epochs=3, hidden_dims=[32, 16], latent_dim=8, dead_code_restart=True)
    res = tokenize(RQVAETokenizer(cfg), mods, ds.item_ids(), show_progress=False, device="cuda")
    assert res.table.is_unique() and res.table.num_semantic == 3
    assert any(row.get("restarted_codes") for row in res.tokenizer.training_log())


@pytest.mark.parametrize("target", ["generator", "ranker"])
def test_stage2_finetunes_on_cuda(run, target, capsys):
    """MMQ stage 2 with each downstream model on the GPU: the soft-indexed training runs there and
    the exported tokenizer gives unique SIDs."""
    small = ["--encode.cache_dir", "", "--ranker.representation", "sid", "--ranker.d_model", "16", "--ranker.epochs", "2",
             "--ranker.batch_size", "32", "--train.max_steps", "10", "--train.eval_every", "5", *TINY]
    out = run / f"stage2-{target}"
    assert main(["finetune", "--for", target, "--dataset", str(run / "ds"), "--tokenizer-dir", str(run / "tok"),
                 "--output", str(out), "--device", "cuda", "--json", *small]) == 0
    q = json.loads((out / "best" / "tokenizer" / "quality.json").read_text())
    assert q["unique_sids"] == q["num_items"] == 200
    assert q["stage2"]["finetune"]["tau"] > 0 and len(q["stage2"]["changed_sids"]["per_position"]) == q["semantic_length"]
    run_cfg = (out / "config.yaml").read_text()
    assert "device: cuda" in run_cfg
    weights = load_file(out / "best" / "tokenizer" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
