"""Item popularity buckets, computed from training interactions only.

Items are ranked by training popularity (descending; ties broken by item index, so the buckets
are deterministic). `head` = the top `head_fraction` of items, `tail` = the rest, `long_tail` =
the bottom `long_tail_fraction` (MMQ's long tail), `cold` = items with no training interaction.
`tail`, `long_tail` and `cold` overlap by design; `head` and `tail` partition the catalogue."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BUCKETS = ("head", "tail", "long_tail", "cold")


@dataclass
class BucketConfig:
    head_fraction: float = 0.2
    """Share of items (by training popularity) that form the head."""
    long_tail_fraction: float = 0.25
    """Share of least popular items that form the long tail."""

    def __post_init__(self) -> None:
        # Errors read "<field>: <reason>"; mmq.config reports them under the full dotted key.
        for name in ("head_fraction", "long_tail_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name}: must be in (0, 1) (got {v!r})")
        if self.head_fraction + self.long_tail_fraction > 1.0:
            raise ValueError(f"long_tail_fraction: head_fraction + long_tail_fraction must be <= 1, so the long "
                             f"tail stays out of the head (got {self.head_fraction!r} + {self.long_tail_fraction!r})")


@dataclass
class PopularityBuckets:
    popularity: np.ndarray  # (num_items,) training interaction counts
    masks: dict[str, np.ndarray]  # bucket -> (num_items,) bool

    def of_targets(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Bucket -> boolean mask over users, from each user's target item."""
        targets = np.asarray(targets, dtype=np.int64)
        return {b: m[targets] for b, m in self.masks.items()}

    def sizes(self) -> dict[str, int]:
        return {b: int(m.sum()) for b, m in self.masks.items()}

    def deciles_of_targets(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        """`decile_1` (the most popular tenth of items) .. `decile_10` -> boolean mask over users,
        from each user's target item (items ranked as for the buckets)."""
        n = len(self.popularity)
        order = np.lexsort((np.arange(n), -self.popularity))
        decile = np.empty(n, dtype=np.int64)
        decile[order] = np.arange(n) * 10 // max(n, 1)
        t = decile[np.asarray(targets, dtype=np.int64)]
        return {f"decile_{d + 1}": t == d for d in range(10)}


def popularity_buckets(train_sequences: Sequence[np.ndarray], num_items: int,
                       config: BucketConfig | None = None) -> PopularityBuckets:
    config = config or BucketConfig()
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_sequences]) if train_sequences else \
        np.zeros(0, dtype=np.int64)
    pop = np.bincount(flat, minlength=num_items)[:num_items]
    order = np.lexsort((np.arange(num_items), -pop))  # most popular first, ties by index
    rank = np.empty(num_items, dtype=np.int64)
    rank[order] = np.arange(num_items)
    n_head = math.ceil(config.head_fraction * num_items)
    n_long = math.ceil(config.long_tail_fraction * num_items)
    masks = {
        "head": rank < n_head,
        "tail": rank >= n_head,
        "long_tail": rank >= num_items - n_long,
        "cold": pop == 0,
    }
    return PopularityBuckets(pop, masks)
