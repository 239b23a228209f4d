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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recdata.errors import DataError
from recdata.io import atomic_dir

FORMAT_VERSION = 1


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
    ) -> RecDataset:
        """Build from per-user item-index sequences (already in chronological order).

        Users with an empty sequence are an error: the loader decides and counts what to drop."""
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
        return cls(name=name, items=items_table(items), interactions=interactions,
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
        for key in ("format", "dropped", "filtering"):
            if key in self.meta:
                out[key] = self.meta[key]
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the dataset directory atomically (replacing an existing one)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
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
        path = Path(path)
        info_path = path / "dataset.json"
        if not info_path.is_file():
            raise DataError("not a dataset directory (no dataset.json); create one with `mmq prepare`",
                            path=path)
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg}", path=info_path, line=e.lineno) from None
        if info.get("format_version") != FORMAT_VERSION:
            raise DataError(f"unsupported format_version {info.get('format_version')!r}",
                            path=info_path, field="format_version")
        items = datasets.Dataset(pq.read_table(path / "items.parquet"))
        interactions = datasets.Dataset(pq.read_table(path / "interactions.parquet"))
        features = {}
        for fname in info.get("features", []):
            features[fname] = load_feature_matrix(path / "features" / f"{fname}.npy", items.num_rows)
        meta = {k: v for k, v in info.items() if k not in ("format_version", "name", "counts", "features")}
        return cls(name=info["name"], items=items, interactions=interactions, features=features, meta=meta)


def items_table(items: Sequence[dict[str, Any]]) -> datasets.Dataset:
    """Columns are the union of the rows' keys (missing values become null); `item_id` first, as str."""
    keys: dict[str, None] = {"item_id": None}
    for row in items:
        keys.update(dict.fromkeys(row))
    cols = {k: [row.get(k) for row in items] for k in keys}
    cols["item_id"] = [str(v) for v in cols["item_id"]]
    return datasets.Dataset(pa.table(cols))


def load_feature_matrix(path: str | Path, num_items: int | None = None) -> np.ndarray:
    """Load an items x d `.npy` matrix (never unpickled) and check it: 2-D, finite, right row count."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError("feature file not found", path=path) from None
    except ValueError as e:
        raise DataError(f"not a plain .npy array ({e})", path=path) from None
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
