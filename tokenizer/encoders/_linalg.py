"""Seeded randomized SVD (Halko et al. 2011) for sparse or dense matrices: deterministic on CPU."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def randomized_svd(x, rank: int, seed: int = 0, n_iter: int = 5, oversample: int = 10
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-`rank` SVD of x (m, n): returns U (m, r), S (r,), Vt (r, n) with r = min(rank, m, n)."""
    m, n = x.shape
    r = min(rank, m, n)
    k = min(r + oversample, m, n)
    rng = np.random.default_rng(seed)
    q = x @ rng.standard_normal((n, k))
    q, _ = np.linalg.qr(np.asarray(q))
    for _ in range(n_iter):
        z, _ = np.linalg.qr(np.asarray(x.T @ q))
        q, _ = np.linalg.qr(np.asarray(x @ z))
    b = np.asarray((x.T @ q).T) if sp.issparse(x) else q.T @ x
    ub, s, vt = np.linalg.svd(b, full_matrices=False)
    u = q @ ub
    # Fix the sign ambiguity so results do not depend on LAPACK details.
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    signs[signs == 0] = 1
    return u[:, :r] * signs[:r], s[:r], vt[:r] * signs[:r, None]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
