"""Small files in the exact schemas of the raw Amazon dumps and RecBole, written by the tests."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

# users u0..u5 review items i0..i4 in a user-specific time order; u6 (2 reviews) and i9 (1 review)
# fall to 5-core filtering.
USERS = [f"u{k}" for k in range(6)]
ITEMS = [f"i{k}" for k in range(5)]


def review_events() -> list[tuple[str, str, int]]:
    events = []
    for u, user in enumerate(USERS):
        for j, item in enumerate(ITEMS):
            # times deliberately not in file order: user u's j-th line happens at (5 - j) days + u
            events.append((user, item, 1_400_000_000 + (5 - j) * 86400 + u))
    events += [("u6", "i0", 1_400_000_000), ("u6", "i1", 1_400_000_001), ("u0", "i9", 1_300_000_000)]
    return events


def expected_sequence(user: str) -> list[str]:
    evs = sorted((t, i) for u, i, t in review_events() if u == user and i != "i9")
    return [i for _, i in evs]


def write_lines(path: Path, lines: list[str], gz: bool) -> Path:
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def five_stars(user: str, item: str) -> float:
    return 5.0


def write_amazon2014(d: Path, rating: Callable[[str, str], float] = five_stars) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    reviews = [json.dumps({"reviewerID": u, "asin": i, "reviewerName": "N", "helpful": [0, 0],
                           "reviewText": "ok", "overall": rating(u, i), "summary": "s", "unixReviewTime": t,
                           "reviewTime": "01 1, 2014"}) for u, i, t in review_events()]
    meta = [repr({"asin": i, "title": f"Title {i}", "price": 3.5 + k, "imUrl": f"http://img/{i}.jpg",
                  "related": {"also_bought": ["x"]}, "salesRank": {"Beauty": 1000 + k}, "brand": "Acme",
                  "categories": [["Beauty", "Makeup", f"Sub{k % 2}"], ["Other"]]})
            for k, i in enumerate(ITEMS + ["i9", "unused"])]
    write_lines(d / "reviews_Beauty_5.json.gz", reviews, gz=True)
    write_lines(d / "meta_Beauty.json.gz", meta, gz=True)
    return d


def write_amazon2018(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    reviews = [json.dumps({"overall": 5.0, "verified": True, "reviewTime": "09 1, 2016", "reviewerID": u,
                           "asin": i, "style": {"Size:": " 1"}, "reviewerName": "N", "reviewText": "t",
                           "summary": "s", "unixReviewTime": t}) for u, i, t in review_events()]
    meta = [json.dumps({"category": ["All Beauty", f"Sub{k}"], "tech1": "", "description": [f"About {i}"],
                        "fit": "", "title": f"Title {i}", "also_buy": [], "brand": "Acme", "feature": ["soft"],
                        "rank": f"{k + 1},234 in Beauty & Personal Care (", "also_view": [],
                        "main_cat": "All Beauty", "price": f"${k + 1}.99", "asin": i, "imageURL": [],
                        "imageURLHighRes": [f"http://img/{i}.jpg"]})
            for k, i in enumerate(ITEMS + ["i9"])]
    write_lines(d / "All_Beauty_5.json.gz", reviews, gz=True)
    write_lines(d / "meta_All_Beauty.json.gz", meta, gz=True)
    return d


def write_amazon2023(d: Path, rating: Callable[[str, str], float] = five_stars) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    reviews = [json.dumps({"rating": rating(u, i), "title": "t", "text": "x", "images": [], "asin": i + "-v",
                           "parent_asin": i, "user_id": u, "timestamp": t * 1000, "helpful_vote": 0,
                           "verified_purchase": True}) for u, i, t in review_events()]
    meta = [json.dumps({"main_category": "All Beauty", "title": f"Title {i}", "average_rating": 4.5,
                        "rating_number": 3, "features": ["f"], "description": ["d"],
                        "price": None if k == 0 else 9.5, "images": [{"thumb": "t", "large": f"L{i}",
                                                                      "variant": "MAIN", "hi_res": None}],
                        "videos": [], "store": "Acme", "categories": ["Beauty", "Skin"], "details": {},
                        "parent_asin": i, "bought_together": None})
            for k, i in enumerate(ITEMS + ["i9"])]
    write_lines(d / "All_Beauty.jsonl", reviews, gz=False)
    write_lines(d / "meta_All_Beauty.jsonl", meta, gz=False)
    return d


def write_recbole(d: Path, name: str = "toy", rating: Callable[[str, str], float] = five_stars) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{i}\t{rating(u, i):g}\t{t}" for u, i, t in review_events() if i != "i9" and u != "u6"]
    item = ["item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float"]
    item += [f"{i}\tnice thing {i}\tBeauty Makeup\tAcme\t{k}.5" for k, i in enumerate(ITEMS)]
    (d / f"{name}.inter").write_text("\n".join(inter) + "\n")
    (d / f"{name}.item").write_text("\n".join(item) + "\n")
    return d


def write_tiktok(d: Path) -> Path:
    """Three CSV splits over 4 items and their image/audio feature matrices."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(d / "image_feat.npy", rng.normal(size=(4, 3)).astype(np.float32))
    np.save(d / "audio_feat.npy", rng.normal(size=(4, 2)).astype(np.float32))
    for split, rows in (("train", ["a,0", "a,1", "b,2", "b,3"]), ("valid", ["a,2", "b,0"]), ("test", ["a,3", "b,1"])):
        (d / f"{split}.csv").write_text("user_id,item_id\n" + "\n".join(rows) + "\n")
    return d


def windows_style(d: Path) -> None:
    """Rewrite every text file under `d` as Windows tools write UTF-8: a byte-order mark and CRLF line ends."""
    for p in sorted(d.rglob("*")):
        if p.suffix == ".npy" or not p.is_file():
            continue
        gz = p.suffix == ".gz"
        raw = gzip.decompress(p.read_bytes()) if gz else p.read_bytes()
        raw = b"\xef\xbb\xbf" + raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        p.write_bytes(gzip.compress(raw) if gz else raw)


def write_jsonl(d: Path, items: list[dict], seqs: list[dict]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (d / "sequences.jsonl").write_text("".join(json.dumps(x) + "\n" for x in seqs))
    return d


GOOD_ITEMS = [{"item_id": k, "title": f"t{k}"} for k in range(3)]


def write_p5(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "datamaps.json").write_text(json.dumps({"id2item": {"1": "A", "2": "B", "3": "C"}, "id2user": {"1": "al"}}))
    (d / "sequential_data.txt").write_text("1 1 2 3\n2 3 2\n")
    return d


def write_unisrec(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "X.item.json").write_text(json.dumps({"0": {"title": "a", "categories": "Lab,Tools"}, "1": {"title": "b"}}))
    (d / "X.inter.json").write_text(json.dumps({"u": ["0", "1", "0"], "v": ["1", "0"]}))
    return d
