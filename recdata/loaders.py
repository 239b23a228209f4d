"""Loaders for the prepared formats the field uses. Each returns a `RecDataset`.

Every loader refuses bad input with a `DataError` naming the file and line: malformed lines,
duplicate item ids, interactions with unknown items (unless `drop_unknown=True`, which drops and
counts them), and a dataset left empty. All take the same real-world options: `min_rating`
(where the source has ratings; an error where it has none) and `drop_repeats`; what they find
and remove is reported in `meta` (see `_build.finish`)."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmq_rec.recdata._build import (
    ItemIndex,
    as_rating,
    finish,
    iter_json_lines,
    iter_lines,
    new_drops,
    no_ratings,
    open_text,
    read_json,
    require,
)
from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.schema import RecDataset, check_feature_name, load_feature_matrix

FORMATS = ("jsonl", "p5", "unisrec", "recbole", "amazon2014", "amazon2018", "amazon2023", "tiktok")
"""The formats `mmq prepare --format` reads (amazon* are raw dumps, read by `recdata.amazon`)."""

# "Industrial & Scientific,Industrial Electrical" separates with a bare comma, while names such
# as "Arts, Crafts & Sewing" contain ", ": split only on commas not followed by a space.
_CATEGORY_SPLIT = re.compile(r",(?! )")


def split_categories(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [c.strip() for c in _CATEGORY_SPLIT.split(value) if c.strip()]
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for v in value:
            out.extend(split_categories(v) if isinstance(v, (list, tuple)) else [str(v).strip()])
        return [c for c in out if c]
    return [str(value)]


def _find(path: Path, pattern: str, what: str) -> Path:
    hits = sorted(path.glob(pattern))
    if len(hits) != 1:
        raise DataError(f"expected exactly one {what} file matching {pattern!r}, found {len(hits)}", path=path)
    return hits[0]


def _aligned(obj: dict[str, Any], key: str, items: list, present: bool | None, path: Path, line: int) -> list | None:
    """An optional per-item list (`timestamps`, `ratings`): on every line or none, as long as `items`."""
    value = obj.get(key)
    if (value is not None) != present or (value is not None and (not isinstance(value, list)
                                                                 or len(value) != len(items))):
        raise DataError(f"`{key}` must be present on every line or none, as a list as long as `items`",
                        path=path, line=line, field=key)
    return value


# --------------------------------------------------------------------------- JSONL
def load_jsonl(path: str | Path, *, drop_unknown: bool = False, name: str | None = None,
               min_rating: float | None = None, drop_repeats: bool = False) -> RecDataset:
    """`items.jsonl` (one object per item, `item_id` required) + `sequences.jsonl` (one user per line:
    `user_id` or `reviewer_id`, `items` = item ids in order, optional `timestamps` and `ratings`)."""
    path = Path(path)
    items_path, seq_path = path / "items.jsonl", path / "sequences.jsonl"
    drops = new_drops(drop_unknown, min_rating, drop_repeats)
    index = ItemIndex()
    for lineno, obj in iter_json_lines(items_path):
        key = require(obj, "item_id", items_path, lineno, (int, str))
        index.add(key, obj, items_path, lineno)
    users: list[str] = []
    seqs: list[list[int]] = []
    stamps: list[list[float]] = []
    ratings: list[list[float | None]] = []
    has_ts = has_rt = None
    for lineno, obj in iter_json_lines(seq_path):
        user = obj.get("user_id", obj.get("reviewer_id"))
        if user is None:
            raise DataError("missing required field (user_id or reviewer_id)", path=seq_path, line=lineno,
                            field="user_id")
        raw = require(obj, "items", seq_path, lineno, list)
        if has_ts is None:  # the first line decides whether every line carries them
            has_ts, has_rt = obj.get("timestamps") is not None, obj.get("ratings") is not None
            if min_rating is not None and not has_rt:
                raise DataError("--min-rating needs ratings, and the lines carry no `ratings` list",
                                path=seq_path, line=lineno, field="min_rating")
        ts = _aligned(obj, "timestamps", raw, has_ts, seq_path, lineno)
        rt = _aligned(obj, "ratings", raw, has_rt, seq_path, lineno)
        seq, st, rs = [], [], []
        for j, key in enumerate(raw):
            idx = index.lookup(key, seq_path, lineno, drops if drop_unknown else None)
            if idx is None:
                continue
            seq.append(idx)
            if ts is not None:
                try:
                    st.append(float(ts[j]))
                except (TypeError, ValueError):
                    raise DataError(f"not a number: {ts[j]!r}", path=seq_path, line=lineno,
                                    field="timestamps") from None
            if rt is not None:
                rs.append(as_rating(rt[j], seq_path, lineno, "ratings"))
                if rs[-1] is None and min_rating is not None:
                    raise DataError("missing rating (--min-rating needs one for every interaction)",
                                    path=seq_path, line=lineno, field="ratings")
        users.append(str(user))
        seqs.append(seq)
        stamps.append(st)
        ratings.append(rs)
    return finish(name or path.name, "jsonl", index, users, seqs, drops, [items_path, seq_path],
                  timestamps=stamps if has_ts else None, ratings=ratings if has_rt else None,
                  min_rating=min_rating, drop_repeats=drop_repeats, inter_path=seq_path)


# --------------------------------------------------------------------------- P5
def load_p5(path: str | Path, *, drop_unknown: bool = False, name: str | None = None,
            min_rating: float | None = None, drop_repeats: bool = False) -> RecDataset:
    """P5's `sequential_data.txt` (`user item item ...`, 1-based ids) + `datamaps.json`.

    Item `p5 id k` becomes row k-1 and its `item_id` is the ASIN from `id2item`; P5 has no item text."""
    path = Path(path)
    seq_path, maps_path = path / "sequential_data.txt", path / "datamaps.json"
    if min_rating is not None:
        raise no_ratings("p5", seq_path)
    drops = new_drops(drop_unknown, min_rating, drop_repeats)
    maps = read_json(maps_path)
    for key in ("id2item", "id2user"):
        if not isinstance(maps, dict) or not isinstance(maps.get(key), dict):
            raise DataError("missing or not an object", path=maps_path, field=key)
    try:
        id2item = sorted(((int(k), v) for k, v in maps["id2item"].items()))
    except ValueError:
        raise DataError("keys must be integer ids", path=maps_path, field="id2item") from None
    if [k for k, _ in id2item] != list(range(1, len(id2item) + 1)):
        raise DataError("item ids must be 1..N without gaps", path=maps_path, field="id2item")
    index = ItemIndex()
    for _, asin in id2item:
        index.add(asin, {}, maps_path, None)
    users: list[str] = []
    seqs: list[list[int]] = []
    for lineno, line in iter_lines(seq_path):
        parts = line.split()
        if not all(p.isdigit() for p in parts):
            raise DataError("expected integer ids separated by spaces", path=seq_path, line=lineno)
        user, raw = parts[0], parts[1:]
        seq = []
        for p in raw:
            pid = int(p)
            asin = maps["id2item"].get(p) if 1 <= pid <= len(index) else None
            idx = index.lookup(asin if asin is not None else f"p5:{p}", seq_path, lineno,
                               drops if drop_unknown else None)
            if idx is not None:
                seq.append(idx)
        users.append(str(maps["id2user"].get(user, user)))
        seqs.append(seq)
    return finish(name or path.name, "p5", index, users, seqs, drops, [seq_path, maps_path],
                  drop_repeats=drop_repeats)


# --------------------------------------------------------------------------- UniSRec / LETTER
def load_unisrec(path: str | Path, *, drop_unknown: bool = False, name: str | None = None,
                 min_rating: float | None = None, drop_repeats: bool = False) -> RecDataset:
    """UniSRec/LETTER JSON: `X.inter.json` (`{user: [item, ...]}`) + `X.item.json` (`{item: {fields}}`).

    `categories` given as one comma-separated string is split into a list."""
    path = Path(path)
    inter_path = _find(path, "*.inter.json", "interaction")
    item_path = _find(path, "*.item.json", "item")
    if min_rating is not None:
        raise no_ratings("unisrec", inter_path)
    drops = new_drops(drop_unknown, min_rating, drop_repeats)
    raw_items = read_json(item_path)
    if not isinstance(raw_items, dict):
        raise DataError("expected an object {item_id: {fields}}", path=item_path)
    index = ItemIndex()
    for key, fields in raw_items.items():
        if not isinstance(fields, dict):
            raise DataError("item entry must be an object", path=item_path, field=str(key))
        row = dict(fields)
        if "categories" in row:
            row["categories"] = split_categories(row["categories"])
        index.add(key, row, item_path, None)
    raw_inter = read_json(inter_path)
    if not isinstance(raw_inter, dict):
        raise DataError("expected an object {user_id: [item ids]}", path=inter_path)
    users, seqs = [], []
    for user, raw in raw_inter.items():
        if not isinstance(raw, list):
            raise DataError("expected a list of item ids", path=inter_path, field=str(user))
        seq = []
        for key in raw:
            idx = index.lookup(key, inter_path, None, drops if drop_unknown else None)
            if idx is not None:
                seq.append(idx)
        users.append(str(user))
        seqs.append(seq)
    return finish(name or inter_path.name.split(".")[0], "unisrec", index, users, seqs, drops,
                  [inter_path, item_path], drop_repeats=drop_repeats)


# --------------------------------------------------------------------------- RecBole atomic files
_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def _recbole_rows(path: Path):
    """Yield (lineno, {field: value}) from a RecBole atomic file with a typed header."""
    lines = iter_lines(path, strip=False)  # keep empty trailing fields: they are values too
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataError("empty file (expected a typed header such as item_id:token)", path=path) from None
    fields = []
    for col in header.split("\t"):
        fname, _, ftype = col.strip().partition(":")
        if ftype not in _RECBOLE_TYPES:
            raise DataError(f"header column {col!r} needs a type in {_RECBOLE_TYPES}", path=path, line=1)
        fields.append((fname, ftype))
    for lineno, line in lines:
        values = line.split("\t")
        if len(values) != len(fields):
            raise DataError(f"expected {len(fields)} tab-separated values, got {len(values)}", path=path,
                            line=lineno)
        row: dict[str, Any] = {}
        for (fname, ftype), v in zip(fields, values, strict=True):
            try:
                if ftype == "token":
                    row[fname] = v
                elif ftype == "token_seq":
                    row[fname] = v.split() if v else []
                elif ftype == "float":
                    row[fname] = float(v) if v.strip() else None
                else:
                    row[fname] = [float(x) for x in v.split()]
            except ValueError:
                raise DataError(f"not a {ftype}: {v!r}", path=path, line=lineno, field=fname) from None
        yield lineno, row


def load_recbole(path: str | Path, *, drop_unknown: bool = False, name: str | None = None,
                 min_rating: float | None = None, drop_repeats: bool = False) -> RecDataset:
    """RecBole atomic files: `X.inter` (needs `user_id`, `item_id`; a `timestamp` orders each user's
    items, ties kept in file order; an optional `rating`) and optionally `X.item` (without it the
    catalogue is the set of items seen in `X.inter`)."""
    path = Path(path)
    inter_path = path if path.is_file() else _find(path, "*.inter", ".inter")
    item_candidates = sorted(inter_path.parent.glob(inter_path.stem + ".item"))
    drops = new_drops(drop_unknown, min_rating, drop_repeats)
    index = ItemIndex()
    if item_candidates:
        for lineno, row in _recbole_rows(item_candidates[0]):
            index.add(require(row, "item_id", item_candidates[0], lineno), row, item_candidates[0], lineno)
    per_user: dict[str, list[tuple[float, int, int, float | None]]] = {}
    has_ts = has_rt = None
    for lineno, row in _recbole_rows(inter_path):
        user = require(row, "user_id", inter_path, lineno)
        key = require(row, "item_id", inter_path, lineno)
        if has_ts is None:
            has_ts, has_rt = "timestamp" in row, "rating" in row
            if min_rating is not None and not has_rt:
                raise DataError("--min-rating needs ratings, and the header has no `rating` column",
                                path=inter_path, line=1, field="min_rating")
        if not item_candidates and key not in index:
            index.add(key, {}, inter_path, lineno)
        idx = index.lookup(key, inter_path, lineno, drops if drop_unknown else None)
        if idx is None:
            continue
        ts = row.get("timestamp")
        if has_ts and ts is None:
            raise DataError("missing timestamp", path=inter_path, line=lineno, field="timestamp")
        rating = as_rating(row.get("rating"), inter_path, lineno, "rating")
        if rating is None and min_rating is not None:
            raise DataError("missing rating (--min-rating needs one for every interaction)", path=inter_path,
                            line=lineno, field="rating")
        per_user.setdefault(user, []).append((ts if has_ts else 0.0, lineno, idx, rating))
    users, seqs, stamps, ratings = [], [], [], []
    for user, events in per_user.items():
        events.sort(key=lambda e: (e[0], e[1]))
        users.append(user)
        seqs.append([e[2] for e in events])
        stamps.append([e[0] for e in events])
        ratings.append([e[3] for e in events])
    sources = [inter_path, *item_candidates]
    return finish(name or inter_path.stem, "recbole", index, users, seqs, drops, sources,
                  timestamps=stamps if has_ts else None, ratings=ratings if has_rt else None,
                  min_rating=min_rating, drop_repeats=drop_repeats)


# --------------------------------------------------------------------------- CSV + .npy (TikTok)
def load_tiktok(path: str | Path, *, drop_unknown: bool = False, name: str | None = None,
                min_rating: float | None = None, drop_repeats: bool = False) -> RecDataset:
    """MMGCN-style micro-video data: `train.csv`/`valid.csv`/`test.csv` (`user_id,item_id`, a random
    split with no time order, kept in the `split` column) and per-item `*_feat.npy` matrices that
    become the features `image`, `audio`, ... Items are the rows of those matrices."""
    path = Path(path)
    if min_rating is not None:
        raise no_ratings("tiktok", path)
    drops = new_drops(drop_unknown, min_rating, drop_repeats)
    feats = {p.name.removesuffix(".npy").removesuffix("_feat"): p for p in sorted(path.glob("*.npy"))}
    if not feats:
        raise DataError("no *.npy feature matrices found", path=path)
    for fname, fpath in feats.items():
        check_feature_name(fname, path=fpath)
    matrices = {k: load_feature_matrix(p) for k, p in feats.items()}
    rows = {m.shape[0] for m in matrices.values()}
    if len(rows) != 1:
        raise DataError(f"feature matrices disagree on the number of items: "
                        f"{ {k: m.shape[0] for k, m in matrices.items()} }", path=path)
    n = rows.pop()
    index = ItemIndex()
    for i in range(n):
        index.add(i, {}, path, None)
    per_user: dict[str, tuple[list[int], list[str]]] = {}
    sources = []
    for split in ("train", "valid", "test"):
        csv_path = path / f"{split}.csv"
        if not csv_path.exists():
            continue
        sources.append(csv_path)
        with open_text(csv_path) as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader, [])]
                if header != ["user_id", "item_id"]:
                    raise DataError(f"expected header user_id,item_id, got {header}", path=csv_path, line=1)
                for lineno, rec in enumerate(reader, start=2):
                    if not rec:
                        continue  # a blank line
                    if len(rec) != 2 or not rec[1].strip().isdigit():
                        raise DataError(f"expected user_id,item_id with an integer item, got {rec}",
                                        path=csv_path, line=lineno)
                    idx = index.lookup(int(rec[1]), csv_path, lineno, drops if drop_unknown else None)
                    if idx is None:
                        continue
                    seq, sp = per_user.setdefault(rec[0].strip(), ([], []))
                    seq.append(idx)
                    sp.append(split)
            except (csv.Error, UnicodeDecodeError) as e:
                raise DataError(f"cannot read ({e})", path=csv_path, line=reader.line_num) from None
    if not sources:
        raise DataError("no train.csv / valid.csv / test.csv found", path=path)
    users = list(per_user)
    ds = finish(name or path.name, "tiktok", index, users, [per_user[u][0] for u in users], drops,
                sources, splits=[per_user[u][1] for u in users], extra_meta={"ordered": False},
                drop_repeats=drop_repeats)
    ds.features.update(matrices)
    return ds


def parse_feature_specs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """`NAME=PATH.npy` specs as (name, path), checked before anything is read or written: the
    name becomes a file name in the dataset directory, and each name may be given once."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        fname, sep, fpath = spec.partition("=")
        if not sep or not fname or not fpath:
            raise DataError(f"expected NAME=PATH.npy, got {spec!r}", field="features")
        check_feature_name(fname)
        if fname in (n for n, _ in out):
            raise DataError(f"feature {fname!r} is given twice", field="features")
        out.append((fname, fpath))
    return out


def attach_features(ds: RecDataset, specs: Sequence[str]) -> RecDataset:
    """Attach `name=path.npy` feature matrices (rows aligned with the item table). A name the
    dataset already has (TikTok ships `image` and `audio`) is refused rather than replaced."""
    parsed = parse_feature_specs(specs)
    for fname, _ in parsed:
        if fname in ds.features:
            raise DataError(f"the dataset already has a feature named {fname!r}; choose another name",
                            field="features")
    for fname, fpath in parsed:
        ds.features[fname] = load_feature_matrix(fpath, ds.num_items)
    return ds
