"""Modality encoders: real text model (bundled, offline), attributes, collaborative, image, cache."""

from __future__ import annotations

import numpy as np
import pytest

from mmq_rec.recdata import DataError
from mmq_rec.tokenizer.encoders import (
    AttributeEncoderConfig,
    CollaborativeConfig,
    EmbeddingCache,
    ImageEncoderConfig,
    TextEncoderConfig,
    encode_attributes,
    encode_collaborative,
    encode_images,
    encode_texts,
    item_texts,
)
from mmq_rec.tokenizer.encoders.text import resolve_model

ITEMS = [
    {"item_id": "a", "title": "Red nail polish", "brand": "OPI", "categories": ["Beauty", "Nails"], "price": 9.0},
    {"item_id": "b", "title": "Crimson nail lacquer", "brand": "OPI", "categories": ["Beauty", "Nails"], "price": 10.0},
    {"item_id": "c", "title": "Anti-dandruff shampoo", "brand": "Head", "categories": ["Beauty", "Hair"], "price": None},
    {"item_id": "d", "title": "Volumising shampoo", "brand": "Head", "categories": ["Beauty", "Hair"], "price": 4.0},
]


def test_item_texts_skip_empty_fields():
    texts = item_texts(ITEMS, ["title", "brand", "categories", "description"])
    assert texts[0] == "Title: Red nail polish. Brand: OPI. Categories: Beauty > Nails"
    assert item_texts([{"title": "", "brand": None}], ["title", "brand"]) == [""]


@pytest.mark.slow
def test_text_encoder_bundled_model_and_cache(tmp_path):
    cache = EmbeddingCache(tmp_path)
    texts = item_texts(ITEMS, TextEncoderConfig().fields)
    emb = encode_texts(texts, TextEncoderConfig(), cache, show_progress=False)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[2, 1]  # nail items vs shampoos
    assert len(list(tmp_path.glob("text-*.npy"))) == 1
    again = encode_texts(texts, TextEncoderConfig(), cache, show_progress=False)
    assert cache.hits == 1 and np.array_equal(again, emb)
    # the same model through an explicit local path (how a user points at a downloaded model)
    local = encode_texts(texts[:2], TextEncoderConfig(model=resolve_model("all-MiniLM-L6-v2")), None, False)
    np.testing.assert_allclose(local, emb[:2], atol=1e-5)


def test_attributes_deterministic_and_meaningful():
    cfg = AttributeEncoderConfig(min_count=1, dim=8)
    a = encode_attributes(ITEMS, cfg)
    assert a.shape[0] == 4 and a.shape[1] <= 8 and a.dtype == np.float32
    assert np.array_equal(a, encode_attributes(ITEMS, cfg))
    sims = a @ a.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[0, 3]


def test_attributes_real_beauty(beauty):
    a = encode_attributes(beauty.items)
    assert a.shape == (12101, 64) and np.isfinite(a).all()
    nn = np.argsort(-(a @ a[0]))[1:6]
    cats = beauty.items["categories"]
    assert sum(cats[int(i)] == cats[0] for i in nn) >= 4


def test_attributes_empty_is_an_error():
    with pytest.raises(ValueError, match="attribute modality is empty"):
        encode_attributes([{"item_id": "x"}, {"item_id": "y"}])


def test_collaborative_uses_training_only():
    train = [np.array([0, 1, 2]), np.array([0, 1]), np.array([2, 3]), np.array([1, 0])]
    emb = encode_collaborative(train, num_items=6, config=CollaborativeConfig(dim=4))
    assert emb.shape == (6, 4)
    assert np.all(emb[4:] == 0)  # items 4, 5 never appear in training
    assert np.array_equal(emb, encode_collaborative(train, 6, CollaborativeConfig(dim=4)))


def test_cooccurrence_window_counts_pairs_up_to_window_apart():
    from mmq_rec.tokenizer.encoders.collaborative import cooccurrence

    def pairs(seqs, window):
        m = cooccurrence([np.array(s) for s in seqs], 5, window).toarray()
        assert np.array_equal(m, m.T)
        return {(int(i), int(j)): int(m[i, j]) for i, j in zip(*np.nonzero(np.triu(m)), strict=True)}

    # 0 1 2 3: distance 1 -> (0,1) (1,2) (2,3); distance 2 -> (0,2) (1,3); distance 3 -> (0,3)
    assert pairs([[0, 1, 2, 3]], 1) == {(0, 1): 1, (1, 2): 1, (2, 3): 1}
    assert pairs([[0, 1, 2, 3]], 2) == {(0, 1): 1, (1, 2): 1, (2, 3): 1, (0, 2): 1, (1, 3): 1}
    everything = {(0, 1): 1, (1, 2): 1, (2, 3): 1, (0, 2): 1, (1, 3): 1, (0, 3): 1}
    assert pairs([[0, 1, 2, 3]], 0) == pairs([[0, 1, 2, 3]], 3) == pairs([[0, 1, 2, 3]], 9) == everything
    # an item next to itself is no pair; the same pair in two places counts twice
    assert pairs([[4, 4, 1, 4]], 1) == {(1, 4): 2}
    assert pairs([[2], []], 5) == {}


def test_encoder_configs_refuse_bad_values():
    with pytest.raises(ValueError, match=r"^window: must be >= 0 \(got -1\)$"):
        CollaborativeConfig(window=-1)
    with pytest.raises(ValueError, match=r"^batch_size: must be >= 1"):
        TextEncoderConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"^fields: must list at least one item column"):
        TextEncoderConfig(fields=[])
    with pytest.raises(ValueError, match=r"^dim: must be >= 1"):
        AttributeEncoderConfig(dim=0)
    with pytest.raises(ValueError, match=r"^timeout_s: must be > 0"):
        ImageEncoderConfig(timeout_s=0)


def test_cache_key_includes_encoder_version(tmp_path, monkeypatch):
    from mmq_rec.tokenizer.encoders import collaborative

    train = [np.array([0, 1, 2]), np.array([0, 1]), np.array([2, 3]), np.array([1, 0])]
    cache = EmbeddingCache(tmp_path)
    fresh = encode_collaborative(train, 6, CollaborativeConfig(dim=4), cache)
    (cached,) = tmp_path.iterdir()
    assert cached.name.startswith(f"collaborative-v{collaborative.ENCODER_VERSION}-")
    np.save(cached, np.zeros_like(fresh))  # what an older version of the encoder computed
    assert np.all(encode_collaborative(train, 6, CollaborativeConfig(dim=4), cache) == 0) and cache.hits == 1
    # the encoder changes (its version is bumped): the old matrix is not read, the new one is stored beside it
    monkeypatch.setattr(collaborative, "ENCODER_VERSION", collaborative.ENCODER_VERSION + 1)
    assert np.array_equal(encode_collaborative(train, 6, CollaborativeConfig(dim=4), cache), fresh)
    assert cache.hits == 1 and len(list(tmp_path.iterdir())) == 2


def _tiny_vit(path):
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64)
    ViTModel(cfg).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def test_image_encoder_random_vit(tmp_path):
    from PIL import Image

    model = _tiny_vit(tmp_path / "vit")
    rng = np.random.default_rng(0)
    refs = []
    for k in range(3):
        arr = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"img{k}.png")
        refs.append(f"img{k}.png")
    refs.append(None)  # an item without an image
    cfg = ImageEncoderConfig(model=model, batch_size=2)
    cache = EmbeddingCache(tmp_path / "cache")
    enc = encode_images(refs, cfg, base_dir=tmp_path, cache=cache, show_progress=False)
    assert enc.embeddings.shape == (4, 32) and enc.missing == 1
    np.testing.assert_allclose(np.linalg.norm(enc.embeddings[:3], axis=1), 1.0, atol=1e-5)
    assert np.all(enc.embeddings[3] == 0)
    assert not np.allclose(enc.embeddings[0], enc.embeddings[1])
    again = encode_images(refs, cfg, base_dir=tmp_path, cache=cache, show_progress=False)
    assert cache.hits == 1 and np.array_equal(again.embeddings, enc.embeddings)
    with pytest.raises(DataError, match="cannot read image 'nope.png' of item row 0"):
        encode_images(["nope.png"], cfg, base_dir=tmp_path, show_progress=False)
    skipped = encode_images(["nope.png", "img0.png"], ImageEncoderConfig(model=model, skip_unreadable=True),
                            base_dir=tmp_path, show_progress=False)
    assert skipped.unreadable == 1 and np.allclose(skipped.embeddings[1], enc.embeddings[0], atol=1e-5)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="not a readable image"):
        encode_images(["bad.png"], cfg, base_dir=tmp_path, show_progress=False)


def test_damaged_cache_entry_is_recomputed(tmp_path, capsys):
    from mmq_rec.tokenizer.encoders.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path)
    first = cache.get_or_compute("x", "k" * 24, lambda: np.ones((3, 2)), version=1)
    path = cache.path("x", "k" * 24, 1)
    path.write_bytes(b"\x93NUMPY garbage")
    again = cache.get_or_compute("x", "k" * 24, lambda: np.ones((3, 2)), version=1)
    assert np.array_equal(first, again) and str(path) in capsys.readouterr().err
    assert np.array_equal(np.load(path), first)  # replaced by a good entry
