"""SID vocabulary, prefix trie and constrained beam search (property-based, against brute force
and against HF generate), model save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from mmq_rec.generator.beam import constrained_beam_search, prefix_allowed_tokens
from mmq_rec.generator.model import GeneratorConfig, SIDCodec, build_model, load_generator, save_generator
from mmq_rec.generator.objective import GeneratorLoss, all_position_windows, decode_targets, encode, is_causal
from mmq_rec.generator.trie import PrefixTrie
from mmq_rec.generator.vocab import SIDVocab, user_bucket
from mmq_rec.recdata.errors import DataError
from mmq_rec.tokenizer.sid import SIDTable

# equal encoder and decoder depth: HF generate mis-sizes its cache for T5 when they differ
# (the per-prefix objective: a bidirectional encoder, as HF generate runs it; the causal encoder
# of the all-position objective has its own tests below)
TINY = GeneratorConfig(num_layers=2, num_decoder_layers=2, d_model=16, d_ff=32, num_heads=2, d_kv=8, dropout=0.0,
                       max_history=4, objective="prefix")


def catalogue(seed: int, n: int, length: int, k: int) -> SIDTable:
    codes = np.random.default_rng(seed).integers(0, k, (n, length))
    return SIDTable.from_codes([f"i{j}" for j in range(n)], codes, [k] * length)


def tiny_model(table: SIDTable, mode: str, seed: int):
    torch.manual_seed(seed)
    codec = SIDCodec(table, mode)
    cfg = GeneratorConfig(**{**TINY.__dict__, "input_mode": mode})
    return build_model(codec.vocab, cfg).eval(), codec


def histories(seed: int, users: int, n: int) -> torch.Tensor:
    h = torch.from_numpy(np.random.default_rng(seed).integers(-1, n, (users, 4)))
    h[:, -1] = h[:, -1].clamp_min(0)  # at least one real item
    return h


@torch.no_grad()
def exact_scores(model, codec: SIDCodec, hist: torch.Tensor) -> torch.Tensor:
    """log p(SID of every item | history) by teacher forcing: (users, items)."""
    n = len(codec.table)
    labels = codec.labels(torch.arange(n))  # (n, L)
    out = torch.empty(len(hist), n)
    for u in range(len(hist)):
        enc = codec.encoder_inputs(model, hist[u:u + 1].expand(n, -1))
        dec_in = torch.cat([torch.zeros(n, 1, dtype=torch.long), labels[:, :-1]], dim=1)
        logp = F.log_softmax(model(**enc, decoder_input_ids=dec_in).logits.float(), dim=-1)
        out[u] = logp.gather(2, labels.unsqueeze(2)).squeeze(2).sum(1)
    return out


# ------------------------------------------------------------------ vocabulary
def test_vocab_tokenizer_round_trip(tmp_path):
    vocab = SIDVocab([256, 256, 256, 3])
    tok = vocab.hf_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    s = "<s0_12><s1_201><s2_7><s3_0>"
    ids = again(s, add_special_tokens=False)["input_ids"]
    assert ids == vocab.to_tokens(np.array([12, 201, 7, 0])).tolist()
    assert again.decode(ids) == s
    assert vocab.size == 3 + 256 * 3 + 3 and vocab.slice(1) == (259, 515)


def test_user_tokens():
    vocab = SIDVocab([8, 8], user_buckets=5)
    assert vocab.size == 3 + 16 + 5 and vocab.token_strings()[-1] == "<u4>"
    ids = vocab.user_tokens([f"user{i}" for i in range(200)])
    assert ids.min() >= 19 and ids.max() < vocab.size and len(set(ids.tolist())) == 5
    assert (vocab.user_tokens(["user7"]) == ids[7]).all()  # a user always hashes to the same token
    assert user_bucket("user7", 5) == ids[7] - 19
    table = catalogue(0, 10, 2, 8)
    for mode in ("flat", "item"):
        codec = SIDCodec(table, mode, user_buckets=5)
        model = build_model(codec.vocab, GeneratorConfig(**{**TINY.__dict__, "input_mode": mode, "user_buckets": 5}))
        hist = torch.tensor([[-1, 0, 3, 4], [1, 2, 3, 4]])
        users = codec.user_tokens(["a", "b"])
        enc = codec.encoder_inputs(model, hist, users)
        plain = SIDCodec(table, mode).encoder_inputs(model, hist)
        assert enc["attention_mask"].shape[1] == plain["attention_mask"].shape[1] + 1
        assert (enc["attention_mask"][:, 0] == 1).all()
        if mode == "flat":
            assert (enc["input_ids"][:, 0] == users).all()
        with pytest.raises(ValueError, match="user"):
            codec.encoder_inputs(model, hist)


TITLES = ["Maybelline Great Lash Mascara, Blackest Black", "Neutrogena Hydro Boost gel cream 50ml",
          "L'Oreal Paris Voluminous Original mascara", "Burt's Bees lip balm, 4 pack"] * 40


def test_text_sid_tokenizer(tmp_path):
    vocab = SIDVocab([16, 16, 4])
    tok = vocab.text_tokenizer(TITLES, text_vocab_size=400)
    sid_only = vocab.hf_tokenizer()
    for s in ["bought <s0_12><s1_3><s2_1> Great Lash Mascara", "Crème brûlée 日本 <s0_1>", "<s0_12><s1_3><s2_1>"]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s  # lossless, unseen characters included (byte fallback)
    ids = tok("<s0_12><s1_3><s2_1>", add_special_tokens=False)["input_ids"]
    assert ids == sid_only("<s0_12><s1_3><s2_1>", add_special_tokens=False)["input_ids"]  # same SID ids
    # the subword vocabulary was learnt: a frequent word is fewer pieces than characters
    assert len(tok.tokenize("mascara")) < len("mascara")
    assert len(tok) > vocab.size + 256
    again = vocab.text_tokenizer(TITLES, text_vocab_size=400)
    assert again.get_vocab() == tok.get_vocab()  # deterministic
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    s = "Lash <s0_2><s1_15><s2_3>"
    assert loaded(s)["input_ids"] == tok(s)["input_ids"]
    with pytest.raises(ValueError, match="non-empty"):
        vocab.text_tokenizer(["", "  "])


# ------------------------------------------------------------------ trie
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 60), st.integers(1, 3), st.integers(1, 5))
def test_trie_matches_brute_force(seed, n, length, k):
    table = catalogue(seed, n, length, k)
    trie = PrefixTrie(table.codes, table.codebook_sizes)
    codes = table.codes
    # walk every item's path; at each level the mask must equal the brute-force continuation set
    nodes = torch.zeros(len(codes), dtype=torch.long)
    for level in range(table.sid_length):
        mask = trie.allowed(level, nodes)
        for i, row in enumerate(codes):
            prefix = row[:level]
            expect = {int(r[level]) for r in codes if tuple(r[:level]) == tuple(prefix)}
            assert set(torch.nonzero(mask[i]).flatten().tolist()) == expect
        nodes = trie.step(level, nodes, torch.from_numpy(codes[:, level]))
    assert trie.items(nodes).tolist() == list(range(len(codes)))


# ------------------------------------------------------------------ beam search
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.integers(1, 30), st.integers(1, 3), st.integers(2, 4),
       st.sampled_from(["flat", "item"]))
def test_exhaustive_beam_equals_exact_scoring(seed, n, length, k, mode):
    table = catalogue(seed, n, length, k)
    model, codec = tiny_model(table, mode, seed)
    trie = PrefixTrie(table.codes, table.codebook_sizes)
    hist = histories(seed, 3, n)
    top_k = min(5, n)
    items, scores = constrained_beam_search(model, codec.encoder_inputs(model, hist), trie, codec.vocab,
                                            beam_width=n, top_k=top_k)
    exact = exact_scores(model, codec, hist)
    for u in range(len(hist)):
        assert len(set(items[u].tolist())) == top_k and (items[u] >= 0).all()
        np.testing.assert_allclose(scores[u].numpy(), exact[u, items[u]].numpy(), atol=1e-4)
        best = torch.sort(exact[u], descending=True).values[:top_k]
        np.testing.assert_allclose(scores[u].numpy(), best.numpy(), atol=1e-4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.integers(8, 40), st.integers(2, 4), st.integers(2, 6), st.integers(2, 8),
       st.sampled_from(["flat", "item"]))
def test_beam_equals_hf_generate(seed, n, length, k, beam, mode):
    table = catalogue(seed, n, length, k)
    model, codec = tiny_model(table, mode, seed)
    trie = PrefixTrie(table.codes, table.codebook_sizes)
    hist = histories(seed, 4, n)
    top_k = min(beam, 5)
    enc = codec.encoder_inputs(model, hist)
    items, scores = constrained_beam_search(model, enc, trie, codec.vocab, beam_width=beam, top_k=top_k)
    out = model.generate(**enc, num_beams=beam, num_return_sequences=top_k, max_new_tokens=table.sid_length,
                         prefix_allowed_tokens_fn=prefix_allowed_tokens(table.codes, codec.vocab, 0),
                         length_penalty=0.0, do_sample=False, output_scores=True, return_dict_in_generate=True)
    index = table.index()
    offsets = torch.as_tensor(codec.vocab.offsets)
    hf_items = torch.tensor([index[tuple((s[1:] - offsets).tolist())] for s in out.sequences]).view(len(hist), top_k)
    hf_scores = out.sequences_scores.view(len(hist), top_k)
    np.testing.assert_allclose(scores.numpy(), hf_scores.numpy(), atol=1e-4)
    for u in range(len(hist)):
        for r in range(top_k):
            tied = (scores[u] - scores[u, r]).abs() < 1e-5
            assert hf_items[u, r].item() in items[u][tied].tolist()


def test_k_larger_than_catalogue_and_sparse_prefixes():
    table = SIDTable.from_codes(["a", "b", "c"], np.array([[0, 0], [0, 3], [2, 1]]), [4, 4])
    model, codec = tiny_model(table, "flat", 0)
    trie = PrefixTrie(table.codes, table.codebook_sizes)
    hist = torch.tensor([[-1, -1, 0, 1], [2, 2, 2, 2]])
    items, scores = constrained_beam_search(model, codec.encoder_inputs(model, hist), trie, codec.vocab,
                                            beam_width=2, top_k=10)
    assert items.shape == (2, 10)
    for row, sc in zip(items, scores, strict=True):
        real = row[row >= 0].tolist()
        assert sorted(real) == [0, 1, 2] and torch.isinf(sc[row < 0]).all()


def test_large_catalogue_decodes_only_real_items():
    table = catalogue(3, 5000, 3, 32)
    model, codec = tiny_model(table, "item", 1)
    trie = PrefixTrie(table.codes, table.codebook_sizes)
    items, _ = constrained_beam_search(model, codec.encoder_inputs(model, histories(0, 16, 5000)), trie,
                                       codec.vocab, beam_width=20, top_k=20)
    assert ((items >= 0) & (items < 5000)).all()
    assert all(len(set(r.tolist())) == 20 for r in items)


def test_save_and_load_generator(tmp_path):
    table = catalogue(0, 20, 2, 4)
    model, codec = tiny_model(table, "item", 0)
    save_generator(tmp_path / "g", model, codec, GeneratorConfig(**{**TINY.__dict__, "input_mode": "item"}),
                   titles=[f"t{i}" for i in range(len(table))])
    assert isinstance(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "g"), type(model))
    m2, c2, cfg2, _ = load_generator(tmp_path / "g")
    assert cfg2.input_mode == "item" and np.array_equal(c2.table.codes, table.codes)
    hist = histories(1, 2, 20)
    with torch.no_grad():
        a = model(**codec.encoder_inputs(model, hist), labels=codec.labels(torch.tensor([1, 2]))).loss
        b = m2(**c2.encoder_inputs(m2, hist), labels=c2.labels(torch.tensor([1, 2]))).loss
    assert torch.allclose(a, b)


def causal_model(table: SIDTable, seed: int):
    torch.manual_seed(seed)
    codec = SIDCodec(table, "item")
    cfg = GeneratorConfig(**{**TINY.__dict__, "input_mode": "item", "objective": "all_positions", "max_history": 6})
    return build_model(codec.vocab, cfg).eval(), codec


def test_all_position_loss_equals_single_prefix_forward():
    """Each position's loss from one windowed pass equals the single-prefix forward of the same
    causal model (right-aligned prefix, as at inference)."""
    table = catalogue(5, 40, 3, 6)
    model, codec = causal_model(table, 0)
    assert is_causal(model)
    seqs = [np.array([3, 7, 1, 9, 22, 5, 8, 30, 2]), np.array([4, 11]), np.array([6, 1, 0, 13, 17])]
    inputs, targets, _ = all_position_windows(seqs, 6)
    assert sorted(int(t) for t in targets[targets >= 0]) == sorted(int(x) for s in seqs for x in s[1:])
    net = GeneratorLoss(model, codec.item_tokens, "item", True, False).eval()
    x, t = torch.from_numpy(inputs), torch.from_numpy(targets)
    with torch.no_grad():
        losses = net.position_losses(net.encoder_inputs(x, None), t)
        expected = []
        for r, p in zip(*np.nonzero(targets >= 0), strict=True):
            prefix = inputs[r, : p + 1]
            hist = torch.full((1, 6), -1, dtype=torch.long)
            valid = prefix[prefix >= 0]
            hist[0, 6 - len(valid):] = torch.from_numpy(valid)
            enc_in = codec.encoder_inputs(model, hist)
            hidden = encode(model, enc_in)
            out = model(encoder_outputs=(hidden,), attention_mask=enc_in["attention_mask"],
                        labels=codec.labels(torch.tensor([targets[r, p]])))
            expected.append(out.loss)
    assert losses.shape == (len(expected),)
    torch.testing.assert_close(losses, torch.stack(expected), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="user tokens"):
        GeneratorConfig(input_mode="item", objective="all_positions", user_buckets=8)
    # the causal mask matters: a bidirectional encoder lets early positions see later items
    with torch.no_grad():
        enc_in = net.encoder_inputs(x, None)
        causal = encode(model, enc_in)
        model.config.causal_encoder = False
        assert not torch.allclose(encode(model, enc_in)[0, 0], causal[0, 0], atol=1e-4)


def test_causal_model_beam_search_is_exact_and_reloads(tmp_path):
    table = catalogue(6, 30, 3, 5)
    model, codec = causal_model(table, 1)
    hist = histories(2, 5, 30)
    with torch.no_grad():
        enc_in = codec.encoder_inputs(model, hist)
        hidden = encode(model, enc_in)
        n = len(table)
        ref = torch.empty(len(hist), n)
        for u in range(len(hist)):
            out = model(encoder_outputs=(hidden[u:u + 1].expand(n, -1, -1),),
                        attention_mask=enc_in["attention_mask"][u:u + 1].expand(n, -1),
                        labels=codec.labels(torch.arange(n)))
            lp = F.log_softmax(out.logits.float(), dim=-1)
            ref[u] = lp.gather(2, codec.labels(torch.arange(n)).unsqueeze(2)).squeeze(2).sum(1)
    items, scores = constrained_beam_search(model, enc_in, PrefixTrie(table.codes, table.codebook_sizes), codec.vocab,
                                            beam_width=n, top_k=5)
    torch.testing.assert_close(scores, ref.topk(5, dim=1).values, atol=1e-4, rtol=0)
    cfg = GeneratorConfig(**{**TINY.__dict__, "input_mode": "item", "objective": "all_positions", "max_history": 6})
    save_generator(tmp_path / "g", model, codec, cfg)
    again, _, loaded_cfg, _ = load_generator(tmp_path / "g")
    assert is_causal(again) and loaded_cfg.all_positions


def test_item_id_embedding_trains_saves_and_leaves_unseen_items_to_their_sids(tmp_path):
    table = catalogue(7, 30, 3, 5)
    torch.manual_seed(0)
    codec = SIDCodec(table, "item")
    cfg = GeneratorConfig(**{**TINY.__dict__, "input_mode": "item", "objective": "all_positions",
                             "max_history": 6, "item_id_embedding": True})
    model = build_model(codec.vocab, cfg)
    net = GeneratorLoss(model, codec.item_tokens, "item", True, False, item_embedding=True)
    assert net.item_embedding.shape == (31, 16) and not net.item_embedding.any()
    x = torch.tensor([[-1, -1, 1, 2, 3, 4], [-1, -1, -1, -1, 5, 6]])
    t = torch.tensor([[-1, -1, 2, 3, 4, 7], [-1, -1, -1, -1, 6, 8]])
    optim = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        optim.zero_grad()
        net(x, t).backward()
        optim.step()
    seen = {1, 2, 3, 4, 5, 6}
    rows = net.item_embedding.detach()
    assert all(rows[i].abs().sum() > 0 for i in seen)
    # items never in a history (and the padding row) keep zero rows: their SID tokens alone
    assert not rows[[i for i in range(31) if i not in seen]].any()
    codec.item_embedding = net.item_embedding
    model.eval()
    hist = histories(3, 4, 30)
    with torch.no_grad():
        with_ids = encode(model, codec.encoder_inputs(model, hist))
    save_generator(tmp_path / "g", model, codec, cfg)
    m2, c2, cfg2, _ = load_generator(tmp_path / "g")
    assert cfg2.item_id_embedding
    with torch.no_grad():
        torch.testing.assert_close(encode(m2, c2.encoder_inputs(m2, hist)), with_ids)
        c2.item_embedding = None
        assert not torch.allclose(encode(m2, c2.encoder_inputs(m2, hist)), with_ids)
    (tmp_path / "g" / "item_embedding.safetensors").unlink()
    with pytest.raises(DataError, match="item embedding"):
        load_generator(tmp_path / "g")
    with pytest.raises(ValueError, match="item_id_embedding"):
        GeneratorConfig(input_mode="flat", item_id_embedding=True)


@pytest.mark.parametrize("train_mode", [False, True])
def test_decode_targets_equals_the_t5_forward(train_mode):
    """The all-position decoder (cross-attention keys/values projected once per window) computes
    T5's own forward on per-target copies of the encoder states, dropout included."""
    table = catalogue(8, 30, 3, 5)
    torch.manual_seed(0)
    codec = SIDCodec(table, "item")
    cfg = GeneratorConfig(**{**TINY.__dict__, "input_mode": "item", "objective": "all_positions",
                             "max_history": 6, "dropout": 0.2})
    model = build_model(codec.vocab, cfg).train(train_mode)
    hidden = torch.randn(3, 6, 16)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]])
    row, pos = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([2, 5, 0, 3, 5, 5])
    labels = codec.labels(torch.tensor([4, 9, 1, 0, 29, 17]))
    visible = (torch.arange(6)[None] <= pos[:, None]) & mask[row].bool()
    torch.manual_seed(1)
    ref = model(encoder_outputs=(hidden[row],), attention_mask=visible.long(),
                decoder_input_ids=model._shift_right(labels)).logits
    torch.manual_seed(1)
    ours = decode_targets(model, hidden, mask, row, pos, labels)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    if train_mode:  # dropout is live: another draw gives other logits
        assert not torch.allclose(decode_targets(model, hidden, mask, row, pos, labels), ref)


def test_fingerprints_leave_out_later_options_at_their_old_behaviour():
    from mmq_rec.config import fingerprint_view
    base = {"input_mode": "item", "d_model": 128}
    assert fingerprint_view("generator", {**base, "item_id_embedding": False}) == base  # old runs stay valid
    assert fingerprint_view("generator", {**base, "item_id_embedding": True}) == {**base, "item_id_embedding": True}
