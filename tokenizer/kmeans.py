"""k-means with faiss (seeded, so deterministic on CPU) and residual k-means."""

from __future__ import annotations

import faiss
import numpy as np


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 25, spherical: bool = False) -> np.ndarray:
    """(k, d) float32 centroids. With fewer distinct points than k, the remaining centroids are
    copies of random points plus small noise (they are then restarted by dead-code handling)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    rng = np.random.default_rng(seed)
    if n >= k:
        km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=spherical, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=max(256, n // k + 1))
        km.train(x)
        return km.centroids.copy()
    extra = x[rng.integers(0, n, k - n)] + 0.01 * rng.standard_normal((k - n, d)).astype(np.float32)
    return np.concatenate([x, extra]).astype(np.float32)


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)


def residual_kmeans(x: np.ndarray, levels: int, k: int, seed: int = 0, niter: int = 25
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Codes (N, levels) and the centroids of each level, each level fitted on the previous residual."""
    residual = np.ascontiguousarray(x, dtype=np.float32).copy()
    codes, books = [], []
    for level in range(levels):
        c = kmeans(residual, k, seed=seed + level, niter=niter)
        a = assign(residual, c)
        residual -= c[a]
        codes.append(a)
        books.append(c)
    return np.stack(codes, axis=1), books
