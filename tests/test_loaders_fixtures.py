"""Every loader on small fixture files in the exact source schemas, including malformed input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from fixtures import (
    GOOD_ITEMS,
    ITEMS,
    expected_sequence,
    windows_style,
    write_amazon2014,
    write_amazon2018,
    write_amazon2023,
    write_jsonl,
    write_p5,
    write_recbole,
    write_tiktok,
    write_unisrec,
)

from mmq_rec.cli import main
from mmq_rec.recdata import DataError
from mmq_rec.recdata.amazon import load_amazon
from mmq_rec.recdata.loaders import (
    attach_features,
    load_jsonl,
    load_p5,
    load_recbole,
    load_tiktok,
    load_unisrec,
)
from mmq_rec.recdata.schema import RecDataset


def seq_ids(ds: RecDataset, user: str) -> list[str]:
    ids = ds.item_ids()
    return [ids[i] for i in ds.sequences()[ds.user_ids().index(user)]]


@pytest.mark.parametrize("writer,version", [(write_amazon2014, "2014"), (write_amazon2018, "2018"),
                                            (write_amazon2023, "2023")])
def test_amazon_dumps_kcore_and_order(tmp_path, writer, version):
    ds = load_amazon(writer(tmp_path / version), version=version)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (6, 5, 30)
    assert ds.meta["filtering"] == {"k": 5, "rounds": 2, "removed_users": 1, "removed_items": 1,
                                    "removed_interactions": 3}
    for u in ("u0", "u3"):
        assert seq_ids(ds, u) == expected_sequence(u)
    ts = np.array(ds.interactions["timestamp"])
    users = np.array(ds.interactions["user"])
    assert all(np.all(np.diff(ts[users == u]) >= 0) for u in range(6))
    row = ds.items[ds.item_ids().index("i1")]
    assert row["title"] == "Title i1" and row["brand"] == "Acme"
    assert row["categories"][0] in ("Beauty", "All Beauty")


def test_amazon2014_metadata_fields(tmp_path):
    ds = load_amazon(write_amazon2014(tmp_path), version="2014")
    row = ds.items[ds.item_ids().index("i2")]
    assert row["categories"] == ["Beauty", "Makeup", "Sub0"]  # first category path
    assert row["price"] == 5.5 and row["sales_rank"] == 1002 and row["sales_type"] == "Beauty"
    assert row["image"] == "http://img/i2.jpg"


def test_amazon2018_price_and_rank_strings(tmp_path):
    ds = load_amazon(write_amazon2018(tmp_path), version="2018")
    row = ds.items[ds.item_ids().index("i1")]
    assert row["price"] == 2.99 and row["sales_rank"] == 2234 and row["description"] == "About i1"


def test_amazon_kcore_can_be_relaxed(tmp_path):
    ds = load_amazon(write_amazon2014(tmp_path), version="2014", kcore_k=1)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (7, 6, 33)
    assert seq_ids(ds, "u0")[0] == "i9"  # the oldest review comes first


def test_amazon_2014_meta_is_never_evaluated(tmp_path):
    d = write_amazon2014(tmp_path)
    (d / "meta_Beauty.json.gz").unlink()
    with gzip.open(d / "meta_Beauty.json.gz", "wt") as f:
        f.write("{'asin': 'i0'}\n__import__('os').system('echo pwned')\n")
    with pytest.raises(DataError, match=r"meta_Beauty.json.gz:2: neither JSON nor a Python dict literal"):
        load_amazon(d, version="2014")


def test_amazon_unknown_items_error_or_counted(tmp_path):
    d = write_amazon2014(tmp_path)
    with gzip.open(d / "reviews_Beauty_5.json.gz", "at") as f:
        f.write(json.dumps({"reviewerID": "u0", "asin": "ghost", "unixReviewTime": 1}) + "\n")
    with pytest.raises(DataError, match=r"reviews_Beauty_5.json.gz:34: field 'asin': review of item 'ghost'"):
        load_amazon(d, version="2014")
    ds = load_amazon(d, version="2014", drop_unknown=True)
    assert ds.meta["dropped"] == {"unknown_item_interactions": 1}


def test_amazon_empty_after_kcore_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no interactions left after 50-core"):
        load_amazon(write_amazon2014(tmp_path), version="2014", kcore_k=50)


def test_amazon_missing_field_names_line(tmp_path):
    d = write_amazon2023(tmp_path)
    with open(d / "All_Beauty.jsonl", "a") as f:
        f.write(json.dumps({"user_id": "u1", "timestamp": 5}) + "\n")
    with pytest.raises(DataError, match=r"All_Beauty.jsonl:34: field 'parent_asin'|All_Beauty.jsonl:34: field 'asin'"):
        load_amazon(d, version="2023")


def test_recbole_orders_by_timestamp(tmp_path):
    ds = load_recbole(write_recbole(tmp_path))
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (6, 5, 30)
    assert seq_ids(ds, "u2") == expected_sequence("u2")
    row = ds.items[0]
    assert row["title"] == ["nice", "thing", "i0"] and row["price"] == 0.5


def test_recbole_without_item_file(tmp_path):
    d = write_recbole(tmp_path)
    (d / "toy.item").unlink()
    ds = load_recbole(d / "toy.inter")
    assert ds.num_items == 5 and ds.items.column_names == ["item_id"]


@pytest.mark.parametrize("line,match", [
    ("u9\ti0\t5", r"toy.inter:32: expected 4 tab-separated values, got 3"),
    ("u9\ti0\t5\tyesterday", r"toy.inter:32: field 'timestamp': not a float"),
])
def test_recbole_malformed(tmp_path, line, match):
    d = write_recbole(tmp_path)
    with open(d / "toy.inter", "a") as f:
        f.write(line + "\n")
    with pytest.raises(DataError, match=match):
        load_recbole(d)


def test_recbole_untyped_header(tmp_path):
    d = write_recbole(tmp_path)
    (d / "toy.item").write_text("item_id\ttitle\n")
    with pytest.raises(DataError, match=r"toy.item:1: header column 'item_id' needs a type"):
        load_recbole(d)


# ------------------------------------------------------------------ JSONL / P5 / UniSRec
def test_jsonl_malformed_line(tmp_path):
    d = write_jsonl(tmp_path, GOOD_ITEMS, [{"user_id": 0, "items": [0, 1]}])
    with open(d / "sequences.jsonl", "a") as f:
        f.write('{"user_id": 1, "items": [0, \n')
    with pytest.raises(DataError, match=r"sequences.jsonl:2: malformed JSON"):
        load_jsonl(d)


def test_jsonl_duplicate_item(tmp_path):
    d = write_jsonl(tmp_path, GOOD_ITEMS + [{"item_id": 1, "title": "again"}], [{"user_id": 0, "items": [0]}])
    with pytest.raises(DataError, match=r"items.jsonl:4: field 'item_id': duplicate item id '1' \(first defined at .*items.jsonl:2\)"):
        load_jsonl(d)


def test_jsonl_unknown_item_error_then_counted(tmp_path):
    d = write_jsonl(tmp_path, GOOD_ITEMS, [{"user_id": 0, "items": [0, 7, 1]}, {"user_id": 1, "items": [9]}])
    with pytest.raises(DataError, match=r"sequences.jsonl:1: field 'item': interaction with unknown item '7'"):
        load_jsonl(d)
    ds = load_jsonl(d, drop_unknown=True)
    assert ds.meta["dropped"] == {"unknown_item_interactions": 2, "users_left_empty": 1}
    assert ds.num_users == 1 and ds.sequences()[0].tolist() == [0, 1]


def test_jsonl_missing_field_and_empty(tmp_path):
    d = write_jsonl(tmp_path, GOOD_ITEMS, [{"user_id": 0}])
    with pytest.raises(DataError, match=r"sequences.jsonl:1: field 'items': missing required field"):
        load_jsonl(d)
    d = write_jsonl(tmp_path / "e", GOOD_ITEMS, [{"user_id": 0, "items": [5]}])
    with pytest.raises(DataError, match="no interactions"):
        load_jsonl(d, drop_unknown=True)


def test_jsonl_timestamps_are_kept(tmp_path):
    d = write_jsonl(tmp_path, GOOD_ITEMS, [{"user_id": "a", "items": [2, 0], "timestamps": [10, 20]}])
    ds = load_jsonl(d)
    assert ds.interactions["timestamp"] == [10.0, 20.0]


def test_p5_malformed_and_unknown(tmp_path):
    (tmp_path / "datamaps.json").write_text(json.dumps(
        {"id2item": {"1": "A", "2": "B"}, "id2user": {"1": "alice"}}))
    (tmp_path / "sequential_data.txt").write_text("1 1 2\n2 2 x\n")
    with pytest.raises(DataError, match=r"sequential_data.txt:2: expected integer ids"):
        load_p5(tmp_path)
    (tmp_path / "sequential_data.txt").write_text("1 1 2\n2 2 3\n")
    with pytest.raises(DataError, match=r"sequential_data.txt:2: field 'item': interaction with unknown item"):
        load_p5(tmp_path)
    ds = load_p5(tmp_path, drop_unknown=True)
    assert ds.user_ids() == ["alice", "2"] and ds.item_ids() == ["A", "B"]
    assert [s.tolist() for s in ds.sequences()] == [[0, 1], [1]]


def test_unisrec_malformed_json_names_line(tmp_path):
    (tmp_path / "X.item.json").write_text('{\n "0": {"title": "a"},\n "1": {"title": "b",}\n}\n')
    (tmp_path / "X.inter.json").write_text('{"u": [0, 1]}')
    with pytest.raises(DataError, match=r"X.item.json:3: malformed JSON"):
        load_unisrec(tmp_path)


def test_features_must_align(tmp_path):
    d = write_jsonl(tmp_path, GOOD_ITEMS, [{"user_id": 0, "items": [0, 1]}])
    ds = load_jsonl(d)
    np.save(tmp_path / "ok.npy", np.ones((3, 4), dtype=np.float16))
    np.save(tmp_path / "short.npy", np.ones((2, 4)))
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    attach_features(ds, [f"img={tmp_path / 'ok.npy'}"])
    assert ds.features["img"].dtype == np.float32
    with pytest.raises(DataError, match=r"short.npy: has 2 rows but the dataset has 3 items"):
        attach_features(ds, [f"x={tmp_path / 'short.npy'}"])
    with pytest.raises(DataError, match=r"nan.npy: 1 rows contain NaN/inf \(first: row 1\)"):
        attach_features(ds, [f"x={tmp_path / 'nan.npy'}"])
    ds.save(tmp_path / "saved")
    again = RecDataset.load(tmp_path / "saved")
    assert np.array_equal(again.features["img"], ds.features["img"])


def test_cli_reports_errors_with_exit_code(tmp_path, capsys):
    d = write_jsonl(tmp_path, GOOD_ITEMS, [{"user_id": 0, "items": [0, 8]}])
    rc = main(["prepare", "--format", "jsonl", "--input", str(d), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "sequences.jsonl:1" in err and "unknown item '8'" in err
    assert not (tmp_path / "o").exists()
    rc = main(["prepare", "--format", "jsonl", "--input", str(d), "--output", str(tmp_path / "o"),
               "--drop-unknown", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["dropped"] == {"unknown_item_interactions": 1} and out["interactions"] == 1


def test_cli_prepare_amazon_and_recbole(tmp_path, capsys):
    write_amazon2014(tmp_path / "raw")
    assert main(["prepare", "--format", "amazon2014", "--input", str(tmp_path / "raw"),
                 "--output", str(tmp_path / "a"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["users"], out["items"], out["interactions"]) == (6, 5, 30)
    assert out["filtering"]["removed_users"] == 1
    write_recbole(tmp_path / "rb")
    assert main(["prepare", "--format", "recbole", "--input", str(tmp_path / "rb"),
                 "--output", str(tmp_path / "r")]) == 0
    assert "6 users / 5 items / 30 interactions" in capsys.readouterr().out
    assert RecDataset.load(tmp_path / "r").item_ids() == ITEMS


# ------------------------------------------------------------------ real-world input
SOURCES = {  # format: (write a small source into a directory, load it)
    "jsonl": (lambda d: write_jsonl(d, GOOD_ITEMS + [{"item_id": "é", "title": "café"}],
                                    [{"user_id": 0, "items": [0, 1, "é"], "timestamps": [1, 2, 3]}]), load_jsonl),
    "p5": (write_p5, load_p5),
    "unisrec": (write_unisrec, load_unisrec),
    "recbole": (write_recbole, load_recbole),
    "tiktok": (write_tiktok, load_tiktok),
    "amazon2014": (write_amazon2014, lambda d: load_amazon(d, version="2014")),
    "amazon2023": (write_amazon2023, lambda d: load_amazon(d, version="2023")),
}


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_bom_and_crlf_are_read_like_plain_utf8(tmp_path, fmt):
    write, load = SOURCES[fmt]
    plain = load(write(tmp_path / "plain") or tmp_path / "plain")
    write(tmp_path / "win")
    windows_style(tmp_path / "win")
    ds = load(tmp_path / "win")
    assert ds.item_ids() == plain.item_ids() and ds.user_ids() == plain.user_ids()
    assert [s.tolist() for s in ds.sequences()] == [s.tolist() for s in plain.sequences()]
    assert ds.items.to_list() == plain.items.to_list()


def test_utf16_is_named(tmp_path):
    d = write_jsonl(tmp_path, GOOD_ITEMS, [{"user_id": 0, "items": [0]}])
    (d / "items.jsonl").write_bytes((d / "items.jsonl").read_text().encode("utf-16"))
    with pytest.raises(DataError, match=r"items.jsonl: is UTF-16 encoded; save it as UTF-8"):
        load_jsonl(d)


# ------------------------------------------------------------------ ratings, repeats, tied timestamps
def low_for_u0_i4(user, item):
    return 2.0 if (user, item) == ("u0", "i4") else 5.0


@pytest.mark.parametrize("writer,version", [(write_amazon2014, "2014"), (write_amazon2023, "2023")])
def test_amazon_min_rating_applies_before_kcore(tmp_path, writer, version):
    d = writer(tmp_path, rating=low_for_u0_i4)
    ds = load_amazon(d, version=version)
    assert ds.num_interactions == 30 and ds.meta["ratings"] == {
        "rated_interactions": 33, "below_4": 1, "min_rating": None, "distribution": {"2": 1, "5": 32}}
    ds = load_amazon(d, version=version, min_rating=4)
    # u0 keeps 4 reviews and falls to the 5-core with u6 and i9
    assert ds.meta["dropped"] == {"below_min_rating": 1} and ds.meta["ratings"]["min_rating"] == 4
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (5, 5, 25) and "u0" not in ds.user_ids()


def test_recbole_and_jsonl_min_rating(tmp_path):
    ds = load_recbole(write_recbole(tmp_path / "rb", rating=low_for_u0_i4), min_rating=3)
    assert ds.num_interactions == 29 and seq_ids(ds, "u0") == [i for i in expected_sequence("u0") if i != "i4"]
    d = write_jsonl(tmp_path / "j", GOOD_ITEMS, [{"user_id": "a", "items": [0, 1, 2], "ratings": [1, 5, 4.5]},
                                                 {"user_id": "b", "items": [1], "ratings": [2]}])
    ds = load_jsonl(d, min_rating=4)
    assert ds.meta["dropped"] == {"below_min_rating": 2, "users_left_empty": 1}
    assert ds.user_ids() == ["a"] and ds.sequences()[0].tolist() == [1, 2]
    assert ds.meta["ratings"]["distribution"] == {"1": 1, "2": 1, "4.5": 1, "5": 1}


@pytest.mark.parametrize("fmt", ["jsonl", "p5", "unisrec", "tiktok"])
def test_min_rating_without_ratings_is_an_error(tmp_path, fmt):
    write, load = SOURCES[fmt]
    write(tmp_path)
    with pytest.raises(DataError, match=r"field 'min_rating': --min-rating needs ratings"):
        load(tmp_path, min_rating=4)


def test_bad_or_missing_rating_names_line(tmp_path):
    d = write_jsonl(tmp_path, GOOD_ITEMS, [{"user_id": "a", "items": [0, 1], "ratings": [5, "great"]}])
    with pytest.raises(DataError, match=r"sequences.jsonl:1: field 'ratings': rating must be a number"):
        load_jsonl(d)
    d = write_amazon2023(tmp_path / "a")
    with open(d / "All_Beauty.jsonl", "a") as f:
        f.write(json.dumps({"user_id": "u1", "parent_asin": "i0", "timestamp": 5}) + "\n")
    with pytest.raises(DataError, match=r"All_Beauty.jsonl:34: field 'rating': missing rating"):
        load_amazon(d, version="2023", min_rating=3)


def test_repeats_counted_and_dropped_keeping_the_first(tmp_path):
    d = write_jsonl(tmp_path / "r", GOOD_ITEMS, [{"user_id": "a", "items": [0, 1, 0, 2, 1]},
                                                 {"user_id": "b", "items": [2, 2]}, {"user_id": "c", "items": [1]}])
    ds = load_jsonl(d)
    assert ds.meta["repeats"] == {"interactions": 3, "users": 2} and ds.num_interactions == 8
    ds = load_jsonl(d, drop_repeats=True)
    assert ds.meta["dropped"] == {"repeat_interactions": 3}
    assert [s.tolist() for s in ds.sequences()] == [[0, 1, 2], [2], [1]]
    d = write_amazon2014(tmp_path / "a")  # u1 reviews i0 again, last: dropped before the k-core
    with gzip.open(d / "reviews_Beauty_5.json.gz", "at") as f:
        f.write(json.dumps({"reviewerID": "u1", "asin": "i0", "unixReviewTime": 1_500_000_000, "overall": 3}) + "\n")
    assert seq_ids(load_amazon(d), "u1")[-1] == "i0"
    ds = load_amazon(d, drop_repeats=True)
    assert ds.meta["dropped"] == {"repeat_interactions": 1} and seq_ids(ds, "u1") == expected_sequence("u1")


def test_tied_target_timestamps_are_counted(tmp_path):
    d = write_jsonl(tmp_path, GOOD_ITEMS, [
        {"user_id": "test-tie", "items": [0, 1, 2], "timestamps": [1, 5, 5]},
        {"user_id": "valid-tie", "items": [0, 1, 2, 0], "timestamps": [1, 5, 5, 9]},
        {"user_id": "early-tie", "items": [0, 1, 2, 1], "timestamps": [1, 1, 5, 9]},
        {"user_id": "short", "items": [0, 1], "timestamps": [1, 1]}])
    assert load_jsonl(d).meta["tied_target_users"] == 2
    assert "tied_target_users" not in load_p5(write_p5(tmp_path / "p5")).meta  # no timestamps, no ties


def test_cli_prepare_reports_ratings_repeats_and_ties(tmp_path, capsys):
    write_recbole(tmp_path / "rb", rating=low_for_u0_i4)
    with open(tmp_path / "rb" / "toy.inter", "a") as f:
        f.write("u1\ti0\t5\t1400500000\n")  # a repeat, and u1's new last item (no tie)
    with open(tmp_path / "rb" / "toy.inter", "a") as f:
        f.write("u2\ti3\t5\t1400500000\nu2\ti1\t5\t1400500000\n")  # u2's test target decided by a tie
    assert main(["prepare", "--format", "recbole", "--input", str(tmp_path / "rb"), "--output",
                 str(tmp_path / "o"), "--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["ratings"]["below_4"] == 1 and out["repeats"] == {"interactions": 3, "users": 2}
    assert out["tied_target_users"] == 1
    assert "all 33 rated interactions are taken as positives (1 are rated below 4" in cap.err
    assert "3 repeat interactions" in cap.err and "warning: 1 users have a validation or test target" in cap.err
    saved = json.loads((tmp_path / "o" / "dataset.json").read_text())
    assert saved["repeats"] == out["repeats"] and saved["tied_target_users"] == 1
    assert main(["prepare", "--format", "recbole", "--input", str(tmp_path / "rb"), "--output",
                 str(tmp_path / "o"), "--json", "--min-rating", "4", "--drop-repeats"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["dropped"] == {"below_min_rating": 1, "repeat_interactions": 3} and out["interactions"] == 29
    assert "taken as positives" not in cap.err and "repeat interactions" not in cap.err
    rc = main(["prepare", "--format", "p5", "--input", str(write_p5(tmp_path / "p5")), "--output",
               str(tmp_path / "o5"), "--min-rating", "4"])
    assert rc == 2 and "--min-rating needs ratings, and the p5 format carries none" in capsys.readouterr().err


# ------------------------------------------------------------------ item values
def test_nested_title_names_file_line_and_field(tmp_path):
    d = write_jsonl(tmp_path, GOOD_ITEMS[:1] + [{"item_id": 1, "title": {"en": "x"}}], [{"user_id": 0, "items": [0]}])
    with pytest.raises(DataError, match=r"items.jsonl:2: field 'title': item '1': unexpected value: a JSON object"):
        load_jsonl(d)
    d = write_jsonl(tmp_path / "l", GOOD_ITEMS + [{"item_id": 3, "title": ["a", "b"]}], [{"user_id": 0, "items": [0]}])
    with pytest.raises(DataError, match=r"items.jsonl:4: field 'title': .*a list of text; most items have text"):
        load_jsonl(d)
    d = write_jsonl(tmp_path / "p", GOOD_ITEMS + [{"item_id": 3, "price": "n/a"}] + [{"item_id": k, "price": k} for k in (4, 5)],
                    [{"user_id": 0, "items": [0]}])
    with pytest.raises(DataError, match=r"items.jsonl:4: field 'price': item '3'"):
        load_jsonl(d)
    (tmp_path / "u" / "X.item.json").parent.mkdir()
    write_unisrec(tmp_path / "u")
    (tmp_path / "u" / "X.item.json").write_text(json.dumps({"0": {"title": {"en": "a"}}, "1": {"title": "b"}}))
    with pytest.raises(DataError, match=r"X.item.json: field 'title': item '0'"):
        load_unisrec(tmp_path / "u")
    d = write_amazon2023(tmp_path / "a")
    with open(d / "meta_All_Beauty.jsonl", "a") as f:
        f.write(json.dumps({"parent_asin": "zz", "title": {"en": "x"}}) + "\n")
    with pytest.raises(DataError, match=r"meta_All_Beauty.jsonl:7: field 'title': expected text"):
        load_amazon(d, version="2023")


# ------------------------------------------------------------------ dataset directory
def saved_dataset(tmp_path):
    d = write_jsonl(tmp_path / "src", GOOD_ITEMS, [{"user_id": 0, "items": [0, 1, 2]}])
    ds = load_jsonl(d)
    np.save(tmp_path / "f.npy", np.ones((3, 2)))
    attach_features(ds, [f"img={tmp_path / 'f.npy'}"])
    return ds.save(tmp_path / "ds")


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "items.parquet").write_bytes(b"PAR1 not really"), r"items.parquet: not a readable parquet"),
    (lambda d: (d / "interactions.parquet").unlink(), r"interactions.parquet: file not found"),
    (lambda d: (d / "dataset.json").write_text("{"), r"dataset.json:1: invalid JSON"),
    (lambda d: (d / "dataset.json").unlink(), r"dataset.json: file not found"),
    (lambda d: (d / "features" / "img.npy").write_bytes(b"\x93NUMPY"), r"img.npy: not a plain .npy array"),
    (lambda d: (d / "features" / "img.npy").unlink(), r"img.npy: feature file not found"),
])
def test_damaged_dataset_dir_says_reprepare(tmp_path, damage, match):
    d = saved_dataset(tmp_path)
    damage(d)
    with pytest.raises(DataError, match=match + r".*re-run `mmq prepare`"):
        RecDataset.load(d)


def test_feature_names_cannot_escape_the_dataset_dir(tmp_path, capsys):
    d = saved_dataset(tmp_path)
    info = json.loads((d / "dataset.json").read_text())
    (d / "dataset.json").write_text(json.dumps({**info, "features": ["../../etc/x"]}))
    with pytest.raises(DataError, match=r"dataset.json: field 'features': invalid feature name '../../etc/x'"):
        RecDataset.load(d)
    ds = load_jsonl(tmp_path / "src")
    for bad in ("../../X", ".hidden", "a/b", "", "a\\b"):
        with pytest.raises(DataError, match="invalid feature name|expected NAME=PATH"):
            attach_features(ds, [f"{bad}={tmp_path / 'f.npy'}"])
    ds.features["../x"] = np.ones((3, 2), dtype=np.float32)
    with pytest.raises(DataError, match="invalid feature name"):
        ds.save(tmp_path / "never")
    assert not (tmp_path / "never").exists()
    rc = main(["prepare", "--format", "jsonl", "--input", str(tmp_path / "src"), "--output", str(tmp_path / "o"),
               "--features", f"../../X={tmp_path / 'f.npy'}"])
    assert rc == 2 and "invalid feature name '../../X'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
