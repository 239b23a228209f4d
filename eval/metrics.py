"""Full-catalogue ranking metrics, one function per metric.

`ranked` is an (U, L) int array of item indices, best first. Two special values may appear:
`PAD` (-1) where a model returned fewer than L items, and any other negative number or an index
>= num_items, which is an *invalid* ID (a decoded SID that is no real item). Targets are either
one item per user ((U,) int array) or several per user (a sequence of int arrays).

Formulas (per user, averaged over users):
- Recall@K = |top-K ∩ T| / |T|
- NDCG@K   = Σ_{r ≤ K, item_r ∈ T} 1/log2(r+1)  /  Σ_{r ≤ min(K, |T|)} 1/log2(r+1)
  (an item repeated in the list counts once, at its first rank)
- Coverage@K = |distinct valid items in all top-K lists| / num_items
- Invalid rate@K = invalid entries / non-PAD entries in the top-K lists"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PAD = -1
Targets = np.ndarray | Sequence[np.ndarray]


def _first_occurrence(topk: np.ndarray) -> np.ndarray:
    """Mask of entries that are the first occurrence of their value in their row."""
    order = np.argsort(topk, axis=1, kind="stable")
    sorted_vals = np.take_along_axis(topk, order, axis=1)
    first_sorted = np.ones_like(sorted_vals, dtype=bool)
    first_sorted[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


def _hits(ranked: np.ndarray, targets: Targets, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, k) bool hit matrix (first occurrences only) and (U,) number of targets per user."""
    topk = np.asarray(ranked, dtype=np.int64)[:, :k]
    if isinstance(targets, np.ndarray) and targets.ndim == 1:
        if len(targets) != len(topk):
            raise ValueError(f"{len(topk)} ranked lists but {len(targets)} targets")
        hits = topk == targets[:, None]
        n_targets = np.ones(len(topk), dtype=np.int64)
    else:
        if len(targets) != len(topk):
            raise ValueError(f"{len(topk)} ranked lists but {len(targets)} target sets")
        hits = np.zeros(topk.shape, dtype=bool)
        n_targets = np.zeros(len(topk), dtype=np.int64)
        for u, t in enumerate(targets):
            t = np.unique(np.asarray(t, dtype=np.int64))
            n_targets[u] = len(t)
            hits[u] = np.isin(topk[u], t)
    if (n_targets == 0).any():
        raise ValueError("every user needs at least one target")
    return hits & _first_occurrence(topk), n_targets


def recall_at_k(ranked: np.ndarray, targets: Targets, k: int) -> np.ndarray:
    """Per-user Recall@k, shape (U,)."""
    hits, n = _hits(ranked, targets, k)
    return hits.sum(axis=1) / n


def ndcg_at_k(ranked: np.ndarray, targets: Targets, k: int) -> np.ndarray:
    """Per-user NDCG@k with binary relevance, shape (U,)."""
    hits, n = _hits(ranked, targets, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts[: hits.shape[1]]).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(n, k) - 1]
    return dcg / ideal


def coverage_at_k(ranked: np.ndarray, num_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    topk = np.asarray(ranked, dtype=np.int64)[:, :k]
    valid = topk[(topk >= 0) & (topk < num_items)]
    return float(len(np.unique(valid)) / num_items)


def invalid_rate(ranked: np.ndarray, num_items: int, k: int | None = None) -> float:
    """Share of returned (non-PAD) entries in the top-k that are not real items."""
    topk = np.asarray(ranked, dtype=np.int64)[:, :k]
    returned = topk != PAD
    invalid = returned & ((topk < 0) | (topk >= num_items))
    n = int(returned.sum())
    return float(invalid.sum() / n) if n else 0.0


def evaluate_rankings(ranked: np.ndarray, targets: Targets, num_items: int, ks: Sequence[int] = (5, 10, 20),
                      groups: Mapping[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """Every metric for every k, over all users and per group (e.g. popularity bucket).

    Returns {"all": {"users": U, "recall@5": ..., "ndcg@5": ..., "coverage@5": ...,
    "invalid_rate": ...}, "<group>": {"users": n, "recall@5": ..., ...}, ...}.
    Coverage and invalid rate are computed on each group's own lists. A group with no users
    reports `users: 0` and no metric values."""
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be (users, list length), got shape {ranked.shape}")
    if max(ks) > ranked.shape[1]:
        raise ValueError(f"k={max(ks)} exceeds the ranked list length {ranked.shape[1]}")
    per_user = {}
    for k in ks:
        per_user[f"recall@{k}"] = recall_at_k(ranked, targets, k)
        per_user[f"ndcg@{k}"] = ndcg_at_k(ranked, targets, k)
    out: dict[str, dict[str, float]] = {}
    all_groups = {"all": np.ones(len(ranked), dtype=bool), **(groups or {})}
    for name, mask in all_groups.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(ranked),):
            raise ValueError(f"group {name!r} mask has shape {mask.shape}, expected ({len(ranked)},)")
        row: dict[str, float] = {"users": int(mask.sum())}
        if mask.any():
            for key, values in per_user.items():
                row[key] = float(values[mask].mean())
            for k in ks:
                row[f"coverage@{k}"] = coverage_at_k(ranked[mask], num_items, k)
            row["invalid_rate"] = invalid_rate(ranked[mask], num_items, max(ks))
        out[name] = row
    return out
