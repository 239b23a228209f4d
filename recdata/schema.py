"""The two tables every stage reads, kept as Hugging Face `datasets` (Arrow in memory, parquet on disk).

- items: one row per item, row i is item index i. Column `item_id` (str, the dataset's own key)
  plus whatever the source has: `title`, `description`, `brand`, `categories` (list of str,
  coarse to fine), `price` (float or null), `sales_rank`, `image` (path or URL), ...
- interactions: one row per event, grouped by user and ordered inside a user:
  `user_id` (str), `user` (int32, 0-based user index in order of first appearance),
  `item` (int32, row of the item table), `position` (int32, 0-based order within the user),
  optionally `timestamp` (float64, seconds) and `split` (str, for sources that ship a split).
- features: optional precomputed per-item matrices (name -> float32 array, items x d), stored
  as `features/<name>.npy`.

A dataset directory holds `items.parquet`, `interactions.parquet`, `features/` and
`dataset.json` (name, source format, counts, and what the loader dropped on request)."""

from __future__ import annotations

import json
import numbers
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import atomic_dir

FORMAT_VERSION = 1

# Feature names become file names (features/<name>.npy): no path separators, no hidden files.
_FEATURE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
# Item columns the encoders read: a nested object there is always a mistake in the source.
_READ_FIELDS = ("title", "description", "brand", "categories", "sales_type", "image", "price", "sales_rank")
_REPREPARE = "the dataset directory is damaged: re-run `mmq prepare` to rebuild it"


@dataclass
class RecDataset:
    name: str
    items: datasets.Dataset
    interactions: datasets.Dataset
    features: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_sequences(
        cls,
        name: str,
        items: Sequence[dict[str, Any]],
        user_ids: Sequence[str],
        sequences: Sequence[Sequence[int]],
        *,
        timestamps: Sequence[Sequence[float]] | None = None,
        splits: Sequence[Sequence[str]] | None = None,
        features: dict[str, np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
        item_where: Sequence[tuple[str, int | None]] | None = None,
    ) -> RecDataset:
        """Build from per-user item-index sequences (already in chronological order).

        Users with an empty sequence are an error: the loader decides and counts what to drop.
        `item_where` gives each item's (file, line), so a bad item value can be pointed at."""
        if len(user_ids) != len(sequences):
            raise DataError(f"{len(user_ids)} user ids but {len(sequences)} sequences")
        if not items:
            raise DataError("the dataset has no items")
        if not sequences or not any(len(s) for s in sequences):
            raise DataError("the dataset has no interactions (empty after loading/filtering)")
        num_items = len(items)
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        if (lengths == 0).any():
            bad = int(np.flatnonzero(lengths == 0)[0])
            raise DataError(f"user {user_ids[bad]!r} has no interactions")
        flat = np.fromiter((i for s in sequences for i in s), dtype=np.int64, count=int(lengths.sum()))
        if flat.min() < 0 or flat.max() >= num_items:
            raise DataError(f"interaction refers to item index outside [0, {num_items})")
        cols: dict[str, Any] = {
            "user_id": np.repeat(np.array([str(u) for u in user_ids], dtype=object), lengths).tolist(),
            "user": np.repeat(np.arange(len(sequences), dtype=np.int32), lengths),
            "item": flat.astype(np.int32),
            "position": np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
        }
        if timestamps is not None:
            cols["timestamp"] = np.array([t for ts in timestamps for t in ts], dtype=np.float64)
        if splits is not None:
            cols["split"] = [s for ss in splits for s in ss]
        interactions = datasets.Dataset(pa.table(cols))
        return cls(name=name, items=items_table(items, item_where), interactions=interactions,
                   features=dict(features or {}), meta=dict(meta or {}))

    # ------------------------------------------------------------------ views
    @property
    def num_items(self) -> int:
        return self.items.num_rows

    @property
    def num_users(self) -> int:
        users = self.interactions.data.column("user").to_numpy()
        return int(users.max()) + 1 if len(users) else 0

    @property
    def num_interactions(self) -> int:
        return self.interactions.num_rows

    def item_ids(self) -> list[str]:
        return self.items.data.column("item_id").to_pylist()

    def user_ids(self) -> list[str]:
        users = self.interactions.data.column("user").to_numpy()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ids = self.interactions.data.column("user_id")
        return [ids[int(i)].as_py() for i in starts]

    def sequences(self) -> list[np.ndarray]:
        """Per-user item-index arrays (int64) in chronological order, indexed by `user`."""
        users = self.interactions.data.column("user").to_numpy()
        items = self.interactions.data.column("item").to_numpy().astype(np.int64)
        bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
        return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=False)]

    def stats(self) -> dict[str, Any]:
        lengths = np.diff(np.flatnonzero(np.r_[True, np.diff(
            self.interactions.data.column("user").to_numpy()) != 0, True]))
        out: dict[str, Any] = {
            "name": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "mean_sequence_length": round(float(lengths.mean()), 4) if len(lengths) else 0.0,
            "min_sequence_length": int(lengths.min()) if len(lengths) else 0,
            "max_sequence_length": int(lengths.max()) if len(lengths) else 0,
            "item_columns": list(self.items.column_names),
            "features": {k: list(v.shape) for k, v in self.features.items()},
        }
        for key in ("format", "dropped", "filtering", "ratings", "repeats", "tied_target_users"):
            if key in self.meta:
                out[key] = self.meta[key]
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the dataset directory atomically (replacing only an earlier dataset of ours, or,
        with `overwrite`, any output of ours; see `recdata.io.check_output`)."""
        path = Path(path)
        for fname in self.features:  # before anything is written: names become file names
            check_feature_name(fname)
        with atomic_dir(path, "dataset", overwrite=overwrite) as tmp:
            pq.write_table(self.items.data.table, tmp / "items.parquet")
            pq.write_table(self.interactions.data.table, tmp / "interactions.parquet")
            if self.features:
                (tmp / "features").mkdir()
                for fname, arr in self.features.items():
                    np.save(tmp / "features" / f"{fname}.npy", np.ascontiguousarray(arr, dtype=np.float32),
                            allow_pickle=False)
            info = {"format_version": FORMAT_VERSION, "name": self.name, **self.meta,
                    "counts": {"users": self.num_users, "items": self.num_items,
                               "interactions": self.num_interactions},
                    "features": sorted(self.features)}
            (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> RecDataset:
        """Read a dataset directory; anything missing or unreadable is a DataError naming the file."""
        path = Path(path)
        info_path = path / "dataset.json"
        if not info_path.is_file():
            if (path / "items.parquet").exists() or (path / "interactions.parquet").exists():
                raise _damaged(info_path, "file not found")
            raise DataError("not a dataset directory (no dataset.json); create one with `mmq prepare`",
                            path=path)
        try:
            info = json.loads(info_path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise _damaged(info_path, f"invalid JSON ({e.msg})", line=e.lineno) from None
        except (OSError, UnicodeDecodeError) as e:
            raise _damaged(info_path, f"cannot read ({e})") from None
        if not isinstance(info, dict):
            raise _damaged(info_path, "expected a JSON object")
        if info.get("format_version") != FORMAT_VERSION:
            raise DataError(f"unsupported format_version {info.get('format_version')!r} (this version reads "
                            f"{FORMAT_VERSION}; re-run `mmq prepare`)", path=info_path, field="format_version")
        feature_names = info.get("features", [])
        if not isinstance(info.get("name"), str):
            raise _damaged(info_path, "missing or not a string", field="name")
        if not isinstance(feature_names, list) or not all(isinstance(f, str) for f in feature_names):
            raise _damaged(info_path, "expected a list of names", field="features")
        for fname in feature_names:  # they become file names: never read outside features/
            check_feature_name(fname, path=info_path)
        counts = info.get("counts") if isinstance(info.get("counts"), dict) else {}
        items = _read_table(path / "items.parquet", ("item_id",), counts.get("items"))
        interactions = _read_table(path / "interactions.parquet", ("user_id", "user", "item", "position"),
                                   counts.get("interactions"))
        _check_interactions(path / "interactions.parquet", interactions, items.num_rows)
        features = {}
        for fname in feature_names:
            try:
                features[fname] = load_feature_matrix(path / "features" / f"{fname}.npy", items.num_rows)
            except DataError as e:
                raise _damaged(path / "features" / f"{fname}.npy", e.reason) from None
        meta = {k: v for k, v in info.items() if k not in ("format_version", "name", "counts", "features")}
        return cls(name=info["name"], items=datasets.Dataset(items),
                   interactions=datasets.Dataset(interactions), features=features, meta=meta)


def _damaged(path: Path, reason: str, line: int | None = None, field: str | None = None) -> DataError:
    return DataError(f"{reason}; {_REPREPARE}", path=path, line=line, field=field)


def _read_table(path: Path, required: tuple[str, ...], rows: Any) -> pa.Table:
    if not path.is_file():
        raise _damaged(path, "file not found")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise _damaged(path, f"not a readable parquet file ({str(e).splitlines()[0] if str(e) else e!r})") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise _damaged(path, f"missing column(s) {missing}")
    if isinstance(rows, int) and table.num_rows != rows:
        raise _damaged(path, f"has {table.num_rows} rows but dataset.json says {rows}")
    return table


def _check_interactions(path: Path, table: pa.Table, num_items: int) -> None:
    """What every stage relies on: users grouped and numbered 0.. in order, items inside the catalogue."""
    for col in ("user", "item", "position"):
        if table.column(col).null_count or not pa.types.is_integer(table.column(col).type):
            raise _damaged(path, "expected integers without nulls", field=col)
    users = table.column("user").to_numpy()
    items = table.column("item").to_numpy()
    if len(users) and (users[0] != 0 or not np.isin(np.diff(users), (0, 1)).all()):
        raise _damaged(path, "users are not grouped and numbered 0, 1, ...", field="user")
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        raise _damaged(path, f"an item index lies outside the {num_items} items of items.parquet", field="item")


def check_feature_name(name: str, path: str | Path | None = None) -> str:
    """A feature name becomes `features/<name>.npy`, so only letters, digits, '_', '-' and '.' are
    allowed, not starting with '.' (no path separators, no `..`, no hidden files)."""
    if not isinstance(name, str) or not _FEATURE_NAME.fullmatch(name):
        raise DataError(f"invalid feature name {name!r}: use only letters, digits, '_', '-' and '.', "
                        "not starting with '.'", path=path, field="features")
    return name


def items_table(items: Sequence[dict[str, Any]],
                where: Sequence[tuple[str, int | None]] | None = None) -> datasets.Dataset:
    """Columns are the union of the rows' keys (missing values become null); `item_id` first, as str.

    A value Arrow cannot store beside the column's other values (text in a numeric column, a
    nested object as a title) is a DataError naming the item's file, line and field."""
    keys: dict[str, None] = {"item_id": None}
    for row in items:
        keys.update(dict.fromkeys(row))
    cols = {k: [row.get(k) for row in items] for k in keys}
    cols["item_id"] = [str(v) for v in cols["item_id"]]
    try:
        table, failure = pa.table(cols), None
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
        table, failure = None, e
    # Arrow is fast and usually right, so the row-by-row search runs only for a column that
    # failed or came out nested (Arrow happily turns {"en": ...} titles into a struct column).
    for name, values in cols.items():
        if table is None or (name in _READ_FIELDS and not _plain(table.schema.field(name).type)):
            _find_bad_value(name, values, cols["item_id"], where)
    if table is None:
        raise DataError(f"cannot build the item table ({failure})")
    return datasets.Dataset(table)


def _plain(t: pa.DataType) -> bool:
    def scalar(x: pa.DataType) -> bool:
        return (pa.types.is_string(x) or pa.types.is_large_string(x) or pa.types.is_integer(x)
                or pa.types.is_floating(x) or pa.types.is_boolean(x) or pa.types.is_null(x))
    return scalar(t) or (pa.types.is_list(t) and scalar(t.value_type))


def _kind(value: Any) -> str:
    """What a JSON value is, in words. "nested: ..." is storable but never right in a column the
    encoders read; "bad: ..." cannot be stored at all."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, numbers.Real):
        return "a number" if not isinstance(value, int) or -2**63 <= value < 2**63 else "bad: a too large integer"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "nested: a JSON object"
    if isinstance(value, (list, tuple)):
        inner = {_kind(v) for v in value if v is not None}
        bad = sorted(k for k in inner if k.startswith("bad"))
        if bad:
            return "bad: a list holding " + bad[0].removeprefix("bad: ")
        if len(inner) > 1:
            return "bad: a list mixing " + " and ".join(sorted(inner))
        if inner and not inner <= {"text", "a number", "a boolean"}:
            return "nested: a list holding lists or objects"
        return "a list of " + {"text": "text", "a number": "numbers", "a boolean": "booleans"}[inner.pop()] \
            if inner else "an empty list"
    return type(value).__name__


def _find_bad_value(name: str, values: list, ids: list[str], where: Sequence | None) -> None:
    """Raise for the first value that cannot be stored, is nested in a column the encoders read,
    or differs in kind from most of the column's values (the majority is what the source meant)."""
    kinds = [None if v is None else _kind(v) for v in values]
    common = Counter(k for k in kinds if k is not None and k != "an empty list").most_common(1)
    expected = common[0][0] if common else None
    for i, k in enumerate(kinds):
        if k is None:
            continue
        fits = k == expected or (k == "an empty list" and (expected or "a list").startswith("a list"))
        if fits and not k.startswith("bad") and not (k.startswith("nested") and name in _READ_FIELDS):
            continue
        path, line = where[i] if where is not None else (None, None)
        got = k.split(": ", 1)[1] if k.startswith(("bad", "nested")) else k
        want = f"; most items have {expected}" if expected and ":" not in expected and not fits else ""
        raise DataError(f"item {ids[i]!r}: unexpected value: {got}{want}", path=path, line=line, field=name)


def load_feature_matrix(path: str | Path, num_items: int | None = None) -> np.ndarray:
    """Load an items x d `.npy` matrix (never unpickled) and check it: 2-D, finite, right row count."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError("feature file not found", path=path) from None
    except (ValueError, EOFError, OSError) as e:  # pickled, truncated, a directory, unreadable
        raise DataError(f"not a plain .npy array ({e})", path=path) from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"expected a numeric .npy matrix, got {getattr(arr, 'dtype', type(arr).__name__)}",
                        path=path)
    if arr.ndim != 2:
        raise DataError(f"expected an items x d matrix, got shape {arr.shape}", path=path)
    if num_items is not None and arr.shape[0] != num_items:
        raise DataError(f"has {arr.shape[0]} rows but the dataset has {num_items} items", path=path)
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise DataError(f"{int(bad.sum())} rows contain NaN/inf (first: row {int(np.flatnonzero(bad)[0])})",
                        path=path)
    return arr
