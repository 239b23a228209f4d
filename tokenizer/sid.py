"""The semantic-ID table: item <-> code tuple, unique thanks to a trailing disambiguation token,
plus the quality numbers reported after every tokenization."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import read_json, write_json

SID_TABLE_FILE = "sid_table.json"


def disambiguate(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Append a trailing token numbering the items that share a code tuple (0, 1, 2, ... in item
    order), TIGER-style. The token's vocabulary is the largest collision group; without any
    collision no token is added. Returns (codes with the extra column or unchanged, group size)."""
    codes = np.asarray(codes, dtype=np.int64)
    if len(codes) == 0:
        return codes, 0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    largest = int(counts.max())
    if largest == 1:
        return codes, 1
    order = np.argsort(inverse, kind="stable")
    rank = np.empty(len(codes), dtype=np.int64)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank[order] = np.arange(len(codes)) - np.repeat(starts, counts)
    return np.concatenate([codes, rank[:, None]], axis=1), largest


def quality(codes: np.ndarray, codebook_sizes: Sequence[int]) -> dict[str, Any]:
    """Utilisation (share of codewords used) and entropy (bits; and normalised by log2 K) per SID
    position, collision rate before disambiguation (1 - unique tuples / items), the share of
    items that share their tuple with another, and the largest collision group."""
    codes = np.asarray(codes, dtype=np.int64)
    n, length = codes.shape
    util, ent, ent_norm = [], [], []
    for p in range(length):
        k = int(codebook_sizes[p])
        counts = np.bincount(codes[:, p], minlength=k)
        prob = counts[counts > 0] / n
        h = float(-(prob * np.log2(prob)).sum())
        util.append(round(float((counts > 0).sum() / k), 4))
        ent.append(round(h, 4))
        ent_norm.append(round(float(h / np.log2(k)), 4) if k > 1 else 1.0)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return {
        "num_items": n,
        "sid_length": length,
        "codebook_sizes": [int(k) for k in codebook_sizes],
        "utilisation": util,
        "entropy": ent,
        "entropy_normalised": ent_norm,
        "unique_tuples": int(len(counts)),
        "collision_rate": round(1.0 - len(counts) / n, 6) if n else 0.0,
        "items_in_collisions": round(float(counts[counts > 1].sum() / n), 6) if n else 0.0,
        "largest_collision_group": int(counts.max()) if n else 0,
    }


@dataclass
class SIDTable:
    """`codes[i]` is item i's SID: `num_semantic` semantic tokens, then (if any collision) the
    disambiguation token. `codebook_sizes[p]` is the vocabulary of position p."""

    item_ids: list[str]
    codes: np.ndarray  # (N, L) int64
    codebook_sizes: list[int]
    num_semantic: int

    @classmethod
    def from_codes(cls, item_ids: Sequence[str], codes: np.ndarray, codebook_sizes: Sequence[int]) -> SIDTable:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or len(codes) != len(item_ids):
            raise ValueError(f"codes must be (num_items={len(item_ids)}, L), got {codes.shape}")
        if len(codebook_sizes) != codes.shape[1]:
            raise ValueError(f"{len(codebook_sizes)} codebook sizes for {codes.shape[1]} positions")
        if (codes < 0).any() or (codes >= np.asarray(codebook_sizes)).any():
            raise ValueError("a code is outside its codebook")
        full, group = disambiguate(codes)
        sizes = list(map(int, codebook_sizes)) + ([group] if full.shape[1] > codes.shape[1] else [])
        return cls([str(i) for i in item_ids], full, sizes, codes.shape[1])

    @property
    def sid_length(self) -> int:
        return self.codes.shape[1]

    def __len__(self) -> int:
        return len(self.item_ids)

    def is_unique(self) -> bool:
        return len(np.unique(self.codes, axis=0)) == len(self.codes)

    def index(self) -> dict[tuple[int, ...], int]:
        """SID tuple -> item row."""
        return {tuple(map(int, c)): i for i, c in enumerate(self.codes)}

    def to_string(self, item: int) -> str:
        """Readable SID, e.g. `<s0_12><s1_201><s2_7><s3_0>`."""
        return "".join(f"<s{p}_{int(c)}>" for p, c in enumerate(self.codes[item]))

    def quality(self) -> dict[str, Any]:
        """Quality of the semantic part (before disambiguation)."""
        return quality(self.codes[:, : self.num_semantic], self.codebook_sizes[: self.num_semantic])

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {"num_semantic": self.num_semantic, "codebook_sizes": self.codebook_sizes,
                "items": {iid: [int(c) for c in row] for iid, row in zip(self.item_ids, self.codes, strict=True)}}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SIDTable:
        path = Path(path)
        data = read_json(path)
        for key in ("num_semantic", "codebook_sizes", "items"):
            if key not in data:
                raise DataError("missing required field", path=path, field=key)
        ids = list(data["items"])
        codes = np.array([data["items"][i] for i in ids], dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != len(data["codebook_sizes"]):
            raise DataError("every SID must have one code per codebook", path=path, field="items")
        table = cls(ids, codes, [int(k) for k in data["codebook_sizes"]], int(data["num_semantic"]))
        if not table.is_unique():
            raise DataError("two items share a SID", path=path, field="items")
        return table
