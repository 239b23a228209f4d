"""Every loader on small fixture files in the exact source schemas, including malformed input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures import (
    ITEMS,
    expected_sequence,
    write_amazon2014,
    write_amazon2018,
    write_amazon2023,
    write_recbole,
)

from mmq.cli import main
from recdata import DataError
from recdata.amazon import load_amazon
from recdata.loaders import attach_features, load_jsonl, load_p5, load_recbole, load_unisrec
from recdata.schema import RecDataset


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
    import gzip
    with gzip.open(d / "meta_Beauty.json.gz", "wt") as f:
        f.write("{'asin': 'i0'}\n__import__('os').system('echo pwned')\n")
    with pytest.raises(DataError, match=r"meta_Beauty.json.gz:2: neither JSON nor a Python dict literal"):
        load_amazon(d, version="2014")


def test_amazon_unknown_items_error_or_counted(tmp_path):
    d = write_amazon2014(tmp_path)
    import gzip
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
def write_jsonl(d, items, seqs):
    d.mkdir(parents=True, exist_ok=True)
    (d / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (d / "sequences.jsonl").write_text("".join(json.dumps(x) + "\n" for x in seqs))
    return d


GOOD_ITEMS = [{"item_id": k, "title": f"t{k}"} for k in range(3)]


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
