"""Raw Amazon review + metadata dumps → a chronological, k-core filtered `RecDataset`.

Supported layouts (plain or gzip):
- 2014 (McAuley et al.): reviews `reviews_X_5.json.gz` (JSON lines: reviewerID, asin, unixReviewTime)
  and metadata `meta_X.json.gz` whose lines are *Python dict literals*; parsed with
  `ast.literal_eval`, never `eval`.
- 2018 (Ni et al.): the same fields, metadata as JSON lines (`category`, `imageURLHighRes`, price as "$x.yy").
- 2023 (Hou et al.): reviews `X.jsonl` (user_id, parent_asin, timestamp in ms) and `meta_X.jsonl`
  (parent_asin, title, store, categories, price, images, description, features).

Each user's reviews are ordered by time, ties kept in file order. k-core filtering (default 5)
repeats until every remaining user and item has at least k interactions; what it removes is
counted in `meta["filtering"]`. Reviews of items missing from the metadata are an error unless
`drop_unknown=True`, which drops and counts them. Ratings (`overall`, 2023: `rating`) are kept
for `min_rating`; the rating filter and `drop_repeats` apply before k-core filtering, so the
k-core holds on the data that is kept."""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from mmq_rec.recdata._build import Drops, ItemIndex, as_rating, curate, finish, iter_lines, new_drops
from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.loaders import split_categories
from mmq_rec.recdata.schema import RecDataset

_PRICE = re.compile(r"[-+]?\d[\d,]*\.?\d*")


def _parse_line(line: str, path: Path, lineno: int, literal: bool) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        if not literal:
            raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=lineno) from None
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e2:
            raise DataError(f"neither JSON nor a Python dict literal ({type(e2).__name__})", path=path,
                            line=lineno) from None
    if not isinstance(obj, dict):
        raise DataError(f"expected an object, got {type(obj).__name__}", path=path, line=lineno)
    return obj


def _price(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = _PRICE.search(str(value))
    return float(m.group(0).replace(",", "")) if m and m.group(0) not in (".",) else None


def _rank(value: Any) -> tuple[float | None, str | None]:
    """salesRank ({"Beauty": 123}) or rank ("1,234 in Beauty (" or a list of such strings)."""
    if isinstance(value, dict) and value:
        cat, r = next(iter(value.items()))
        return (float(r) if isinstance(r, (int, float)) else None), str(cat)
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str):
        m = re.match(r"\s*#?([\d,]+)\s+in\s+([^(]+)", value)
        if m:
            return float(m.group(1).replace(",", "")), m.group(2).strip()
    return None, None


def _text(value: Any, field: str) -> str:
    """Text, or a list of text (2018/2023 descriptions) joined; a nested object is a mistake, not
    something to stringify into the item's text."""
    if isinstance(value, (dict, list)) and any(isinstance(v, (dict, list))
                                               for v in (value.values() if isinstance(value, dict) else value)):
        raise DataError("expected text or a list of text, got nested JSON objects or lists", field=field)
    if isinstance(value, dict):
        raise DataError("expected text or a list of text, got a JSON object", field=field)
    if isinstance(value, list):
        return " ".join(str(v) for v in value if v)
    return "" if value is None else str(value)


def normalise_meta(obj: dict[str, Any]) -> dict[str, Any]:
    """One schema for 2014 / 2018 / 2023 metadata rows."""
    cats = obj.get("categories", obj.get("category"))
    if isinstance(cats, list) and cats and isinstance(cats[0], list):
        cats = cats[0]  # 2014: a list of category paths; the first is the main one
    sales_rank, sales_type = _rank(obj.get("salesRank", obj.get("rank")))
    image = obj.get("imUrl")
    for key in ("imageURLHighRes", "imageURL", "images"):
        if image is None and obj.get(key):
            first = obj[key][0] if isinstance(obj[key], list) else obj[key]
            image = (first.get("hi_res") or first.get("large")) if isinstance(first, dict) else first
    row = {
        "asin": obj.get("parent_asin") or obj.get("asin"),
        "title": _text(obj.get("title"), "title"),
        "brand": _text(obj.get("brand", obj.get("store")), "brand" if "brand" in obj else "store"),
        "categories": split_categories(cats),
        "price": _price(obj.get("price")),
        "sales_rank": sales_rank,
        "sales_type": sales_type or obj.get("main_category"),
        "description": _text(obj.get("description"), "description"),
        "image": image,
    }
    if obj.get("features") or obj.get("feature"):
        row["features_text"] = _text(obj.get("features") or obj.get("feature"),
                                     "features" if obj.get("features") else "feature")
    return row


def _review(obj: dict[str, Any], path: Path, lineno: int, version: str) -> tuple[str, str, float]:
    if version == "2023":
        keys = ("user_id", "parent_asin" if "parent_asin" in obj else "asin", "timestamp")
    else:
        keys = ("reviewerID", "asin", "unixReviewTime")
    vals = []
    for k in keys:
        if obj.get(k) is None:
            raise DataError("missing required field", path=path, line=lineno, field=k)
        vals.append(obj[k])
    try:
        ts = float(vals[2]) / (1000.0 if version == "2023" else 1.0)
    except (TypeError, ValueError):
        raise DataError(f"not a number: {vals[2]!r}", path=path, line=lineno, field=keys[2]) from None
    return str(vals[0]), str(vals[1]), ts


def kcore(events: list[tuple[str, str, float, int]], k: int) -> tuple[list[tuple[str, str, float, int]], dict]:
    """Repeatedly remove users and items with fewer than k interactions."""
    before = (len({e[0] for e in events}), len({e[1] for e in events}), len(events))
    rounds = 0
    while k > 1:
        users = Counter(e[0] for e in events)
        items = Counter(e[1] for e in events)
        kept = [e for e in events if users[e[0]] >= k and items[e[1]] >= k]
        rounds += 1
        if len(kept) == len(events):
            break
        events = kept
    after = (len({e[0] for e in events}), len({e[1] for e in events}), len(events))
    return events, {"k": k, "rounds": rounds, "removed_users": before[0] - after[0],
                    "removed_items": before[1] - after[1], "removed_interactions": before[2] - after[2]}


def find_dump_files(path: Path) -> tuple[Path, Path]:
    """(reviews, metadata) inside a directory: the metadata file name starts with `meta`."""
    files = [p for p in sorted(path.iterdir()) if p.is_file() and re.search(r"\.jsonl?(\.gz)?$", p.name)]
    meta = [p for p in files if p.name.startswith("meta")]
    reviews = [p for p in files if not p.name.startswith("meta")]
    if len(meta) != 1 or len(reviews) != 1:
        raise DataError(f"expected one reviews file and one meta_* file (.json/.jsonl, optionally .gz), "
                        f"found reviews={[p.name for p in reviews]} meta={[p.name for p in meta]}", path=path)
    return reviews[0], meta[0]


def _curate_events(events: list[tuple[str, str, float, int]], ratings: list[float | None],
                   min_rating: float | None, drop_repeats: bool, drops: Drops
                   ) -> tuple[list[tuple[str, str, float, int]], dict[str, Any]]:
    """The rating filter and repeat handling see each user's reviews in time order (ties: file
    order); the kept events come back in file order, which fixes the order of users as before."""
    per_user: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        per_user.setdefault(e[0], []).append(i)
    order = [sorted(idx, key=lambda i: (events[i][2], events[i][3])) for idx in per_user.values()]
    _, kept, report = curate([[events[i][1] for i in idx] for idx in order], {"event": order},
                             [[ratings[i] for i in idx] for idx in order], min_rating=min_rating,
                             drop_repeats=drop_repeats, drops=drops)
    return [events[i] for i in sorted(i for idx in kept["event"] for i in idx)], report


def load_amazon(path: str | Path, *, version: str = "2014", meta_path: str | Path | None = None,
                kcore_k: int = 5, drop_unknown: bool = False, name: str | None = None,
                min_rating: float | None = None, drop_repeats: bool = False) -> RecDataset:
    """Load a raw dump. `path` is the reviews file (then `meta_path` is needed) or a directory holding both.
    `version` is "2014" (also reads 2018) or "2023"."""
    if version not in ("2014", "2018", "2023"):
        raise DataError(f"unknown Amazon dump version {version!r}")
    drops = new_drops(drop_unknown, min_rating, drop_repeats)
    path = Path(path)
    reviews_path, meta_file = (find_dump_files(path) if path.is_dir() else (path, meta_path))
    if meta_file is None:
        raise DataError("the metadata file is required (pass --meta or a directory with both files)",
                        path=path)
    meta_file = Path(meta_file)
    metas: dict[str, tuple[dict[str, Any], int]] = {}
    for lineno, line in iter_lines(meta_file):
        try:
            row = normalise_meta(_parse_line(line, meta_file, lineno, literal=version != "2023"))
        except DataError as e:
            if e.path is not None:
                raise
            raise DataError(e.reason, path=meta_file, line=lineno, field=e.field) from None
        if not row["asin"]:
            raise DataError("missing required field", path=meta_file, line=lineno,
                            field="parent_asin" if version == "2023" else "asin")
        if row["asin"] in metas:
            if version == "2023":
                continue  # 2023 metadata lists a parent item once per variant: keep the first
            raise DataError(f"duplicate item id {row['asin']!r} (first at line {metas[row['asin']][1]})",
                            path=meta_file, line=lineno, field="asin")
        metas[row["asin"]] = (row, lineno)
    rating_key = "rating" if version == "2023" else "overall"
    events: list[tuple[str, str, float, int]] = []
    ratings: list[float | None] = []
    for lineno, line in iter_lines(reviews_path):
        obj = _parse_line(line, reviews_path, lineno, literal=False)
        user, asin, ts = _review(obj, reviews_path, lineno, version)
        if asin not in metas:
            if not drop_unknown:
                raise DataError(f"review of item {asin!r} that is not in {meta_file.name} (pass "
                                "--drop-unknown to drop and count such reviews)", path=reviews_path,
                                line=lineno, field="asin")
            drops.add("unknown_item_interactions")
            continue
        rating = as_rating(obj.get(rating_key), reviews_path, lineno, rating_key)
        if rating is None and min_rating is not None:
            raise DataError("missing rating (--min-rating needs one for every review)", path=reviews_path,
                            line=lineno, field=rating_key)
        events.append((user, asin, ts, lineno))
        ratings.append(rating)
    events, report = _curate_events(events, ratings, min_rating, drop_repeats, drops)
    events, filtering = kcore(events, kcore_k)
    if not events:
        asked = " and ".join(x for x, on in (("--min-rating", min_rating is not None),
                                             ("--drop-repeats", drop_repeats)) if on)
        raise DataError(f"no interactions left after {asked + ' and ' if asked else ''}{kcore_k}-core filtering",
                        path=reviews_path)
    index = ItemIndex()
    for asin in sorted({e[1] for e in events}, key=lambda a: metas[a][1]):
        row, lineno = metas[asin]
        index.add(asin, row, meta_file, lineno)
    per_user: dict[str, list[tuple[float, int, str]]] = {}
    for user, asin, ts, lineno in events:
        per_user.setdefault(user, []).append((ts, lineno, asin))
    users, seqs, stamps = [], [], []
    for user, evs in per_user.items():
        evs.sort()
        users.append(user)
        seqs.append([index.lookup(a, reviews_path, None, None) for _, _, a in evs])
        stamps.append([t for t, _, _ in evs])
    return finish(name or reviews_path.name.split(".")[0], f"amazon{version}", index, users, seqs, drops,
                  [reviews_path, meta_file], timestamps=stamps, extra_meta={"filtering": filtering},
                  report=report)
