"""One device everywhere, the parts a CPU can check: the `device` setting is validated up front
(a GPU this machine lacks is a one-line error), decoding keeps the trie and the item table on the
model's device and reads nothing back to the host inside the beam search, bfloat16 decoding.
The same flow on a real GPU is tests/test_cuda.py."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from mmq_rec.cli import main
from mmq_rec.config import load_config
from mmq_rec.generator.beam import constrained_beam_search
from mmq_rec.generator.model import GeneratorConfig, SIDCodec, build_model
from mmq_rec.generator.recommend import Recommender
from mmq_rec.recdata import DataError
from mmq_rec.tokenizer.sid import SIDTable
from mmq_rec.tokenizer.training import resolve_device

TINY = GeneratorConfig(num_layers=2, num_decoder_layers=2, d_model=16, d_ff=32, num_heads=2, d_kv=8, dropout=0.0,
                       max_history=4, objective="prefix")
COMMANDS = [
    ["tokenize", "--dataset", "missing"],
    ["train", "--dataset", "missing", "--tokenizer-dir", "missing"],
    ["evaluate", "--dataset", "missing", "--model", "missing"],
    ["recommend", "--model", "missing", "--history", "a"],
    ["baseline", "--dataset", "missing", "--method", "popularity"],
]


def recommender(n: int = 300, mode: str = "item", seed: int = 0, item_ids: bool = False) -> Recommender:
    """item_ids: a causal (all-position) model with a per-item input embedding."""
    codes = np.random.default_rng(seed).integers(0, 8, (n, 3))
    table = SIDTable.from_codes([f"i{j}" for j in range(n)], codes, [8] * 3)
    torch.manual_seed(seed)
    codec = SIDCodec(table, mode)
    extra = {"objective": "all_positions", "item_id_embedding": True} if item_ids else {}
    model = build_model(codec.vocab, GeneratorConfig(**{**TINY.__dict__, "input_mode": mode, **extra}))
    if item_ids:
        codec.item_embedding = torch.cat([torch.randn(n, model.config.d_model), torch.zeros(1, model.config.d_model)])
    return Recommender(model, codec, max_history=4)


def histories(users: int, n: int, seed: int = 1) -> torch.Tensor:
    h = torch.from_numpy(np.random.default_rng(seed).integers(-1, n, (users, 4)))
    h[:, -1] = h[:, -1].clamp_min(0)
    return h


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a CUDA GPU")
@pytest.mark.parametrize("args", COMMANDS, ids=[c[0] for c in COMMANDS])
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_one_line_error(args, device, capsys):
    assert main([*args, "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mmq {args[0]}: error: field 'device': {device} was asked for")
    assert "no usable CUDA GPU" in err and "use cpu" in err


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "mps"])
def test_unknown_device_is_refused_by_name(bad, capsys):
    assert main(["evaluate", "--dataset", "missing", "--model", "missing", "--device", bad]) == 2
    assert capsys.readouterr().err == (f"mmq evaluate: error: field 'device': must be cpu, cuda or cuda:N "
                                       f"(got {bad!r})\n")


def test_device_setting_resolves():
    assert load_config().device is None  # CUDA when available, else the CPU
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert load_config(overrides=["--device", "cpu"]).device == "cpu"
    assert load_config(overrides=["--device", ""]).device is None
    assert resolve_device("CPU") == torch.device("cpu") and load_config(overrides=["--device", "CPU"]).device == "cpu"
    with pytest.raises(DataError, match=r"field 'decode.dtype': must be one of float32, bfloat16 \(got 'float16'\)"):
        load_config(overrides=["--decode.dtype", "float16"])


def test_table_and_trie_live_on_the_models_device():
    rec = recommender()
    dev = rec.model.device
    assert rec.trie.device == rec.codec.item_tokens.device == dev
    assert all(t.device == dev for arrays in (rec.trie.ptr, rec.trie.tokens, rec.trie.keys) for t in arrays)
    # `to` moves all three and `encoder_inputs` / the search then use them where they are, without copies
    table = rec.codec.item_tokens
    rec.to("cpu")
    rec.rank(histories(8, 300), k=5, beam_width=5)
    assert rec.codec.item_tokens is table


# what reads a tensor back to the host (on a GPU: a sync that stalls the queued steps)
HOST_READS = ("cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")
OURS = tuple(os.path.join("generator", f) for f in ("beam.py", "trie.py", "objective.py", "model.py"))


@pytest.mark.parametrize("mode", ["flat", "item"])
def test_beam_search_reads_nothing_back_to_the_host(mode, monkeypatch):
    """No `.cpu()`, `.item()`, truth test, ... on a tensor from our decoding code (the caller
    moves the final items and scores once); tests/test_cuda.py checks the same with CUDA's
    sync detector."""
    rec = recommender(mode=mode)
    enc = rec.codec.encoder_inputs(rec.model, histories(6, 300))
    calls: list[tuple[str, str, int]] = []

    def spy(name: str):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.endswith(OURS):
                calls.append((name, os.path.basename(caller.f_code.co_filename), caller.f_lineno))
            return original(self, *args, **kwargs)

        return wrapped

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    items, scores = constrained_beam_search(rec.model, enc, rec.trie, rec.codec.vocab, beam_width=10, top_k=10)
    monkeypatch.undo()
    assert calls == []
    assert items.device == scores.device == rec.model.device
    assert ((items >= 0) & (items < 300)).all()


@pytest.mark.parametrize("item_ids", [False, True], ids=["sid-tokens", "causal+item-embedding"])
def test_bfloat16_decoding_returns_real_items(item_ids):
    rec = recommender(mode="item", item_ids=item_ids)
    hist = histories(16, 300)
    ref_items, _ = rec.rank(hist, k=10, beam_width=10)
    rec.to(dtype=torch.bfloat16)
    assert next(rec.model.parameters()).dtype == torch.bfloat16
    # the encoder reads inputs in the model's dtype (a float32 item embedding must not promote them)
    assert rec.codec.encoder_inputs(rec.model, hist)["inputs_embeds"].dtype == torch.bfloat16
    items, scores = rec.rank(hist, k=10, beam_width=10)
    assert ((items >= 0) & (items < 300)).all() and all(len(set(r)) == 10 for r in items.tolist())
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    # near-ties may swap, but the lists are mostly the same items
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(items.tolist(), ref_items.tolist(), strict=True)])
    assert overlap > 0.5
