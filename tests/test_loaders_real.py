"""Loaders on the real files in ../shared/data, and `mmq prepare --json` on them."""

from __future__ import annotations

import json

import numpy as np

from mmq_rec.cli import main
from mmq_rec.recdata.loaders import load_p5, load_tiktok, load_unisrec
from mmq_rec.recdata.schema import RecDataset


def prepare_json(capsys, *args) -> dict:
    assert main(["prepare", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_beauty_jsonl_and_p5_agree(beauty, data_dir):
    p5 = load_p5(data_dir / "amazon-beauty" / "p5")
    for ds in (beauty, p5):
        assert (ds.num_users, ds.num_items, ds.num_interactions) == (22363, 12101, 198502)
    asin_jsonl = np.array(beauty.items["asin"])
    asin_p5 = np.array(p5.item_ids())
    seq_a, seq_b = beauty.sequences(), p5.sequences()
    assert len(seq_a) == len(seq_b)
    for a, b in zip(seq_a, seq_b, strict=True):
        assert list(asin_jsonl[a]) == list(asin_p5[b])
    assert p5.user_ids()[:2] == ["A1YJEY40YUW4SE", "A60XNB876KYML"]


def test_beauty_items_keep_their_fields(beauty):
    row = beauty.items[0]
    assert row["item_id"] == "0" and row["asin"] == "B004756YJA"
    assert row["categories"] == ["Beauty", "Makeup", "Nails", "Nail Polish"]
    assert beauty.sequences()[0].tolist() == [0, 1, 2, 3, 4]


def test_scientific_unisrec(data_dir):
    ds = load_unisrec(data_dir / "amazon-scientific")
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (8317, 4344, 58492)
    assert ds.items[0]["categories"][0] == "Industrial & Scientific"
    assert all(t for t in ds.items["title"][:50])


def test_tiktok_features_and_split(data_dir):
    ds = load_tiktok(data_dir / "tiktok")
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (9308, 6710, 68722)
    assert set(ds.features) == {"image", "audio"}
    assert ds.features["image"].shape == (6710, 128) and ds.features["image"].dtype == np.float32
    assert set(ds.interactions["split"]) == {"train", "valid", "test"}


def test_prepare_json_counts(capsys, tmp_path, data_dir):
    beauty = prepare_json(capsys, "--format", "jsonl", "--input", str(data_dir / "amazon-beauty"),
                          "--output", str(tmp_path / "b"))
    p5 = prepare_json(capsys, "--format", "p5", "--input", str(data_dir / "amazon-beauty" / "p5"),
                      "--output", str(tmp_path / "p"))
    sci = prepare_json(capsys, "--format", "unisrec", "--input", str(data_dir / "amazon-scientific"),
                       "--output", str(tmp_path / "s"))
    for stats in (beauty, p5):
        assert (stats["users"], stats["items"], stats["interactions"]) == (22363, 12101, 198502)
    assert (sci["users"], sci["items"], sci["interactions"]) == (8317, 4344, 58492)
    reloaded = RecDataset.load(tmp_path / "b")
    assert reloaded.num_interactions == 198502
    assert [s.tolist() for s in reloaded.sequences()[:50]] == \
        [s.tolist() for s in RecDataset.load(tmp_path / "p").sequences()[:50]]
