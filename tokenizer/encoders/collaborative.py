"""Collaborative modality from training interactions only: item co-occurrence -> PPMI -> SVD.

Two items co-occur when one user interacted with both within `window` positions. The positive
pointwise mutual information of that matrix, factorised by a seeded randomized SVD, gives item
vectors U·sqrt(S) (rows L2-normalised). Items never seen in training get a zero vector: the
caller must pass training sequences only, never validation or test targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tokenizer.encoders._linalg import l2_normalise, randomized_svd
from tokenizer.encoders.cache import EmbeddingCache, content_hash


@dataclass
class CollaborativeConfig:
    dim: int = 64
    """Output dimension (randomized SVD rank)."""
    window: int = 5
    """Co-occurrence window in positions (0 = the whole sequence)."""
    seed: int = 0


def cooccurrence(train_sequences: Sequence[np.ndarray], num_items: int, window: int) -> sp.csr_matrix:
    rows, cols = [], []
    for seq in train_sequences:
        seq = np.asarray(seq, dtype=np.int64)
        n = len(seq)
        span = n if window <= 0 else min(window, n)
        for d in range(1, span):
            rows.append(seq[:-d]), cols.append(seq[d:])
    if not rows:
        return sp.csr_matrix((num_items, num_items))
    r, c = np.concatenate(rows), np.concatenate(cols)
    keep = r != c
    r, c = r[keep], c[keep]
    m = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(num_items, num_items))
    return (m + m.T).tocsr()


def encode_collaborative(train_sequences: Sequence[np.ndarray], num_items: int,
                         config: CollaborativeConfig | None = None, cache: EmbeddingCache | None = None
                         ) -> np.ndarray:
    """float32 (num_items, <= dim) collaborative embeddings from training sequences."""
    config = config or CollaborativeConfig()
    flat = [np.asarray(s, dtype=np.int64) for s in train_sequences]
    key = content_hash("collaborative", np.concatenate(flat) if flat else np.zeros(0, np.int64),
                       np.array([len(s) for s in train_sequences]), num_items, config.__dict__)

    def compute() -> np.ndarray:
        c = cooccurrence(train_sequences, num_items, config.window).tocoo()
        total = c.sum()
        if total == 0:
            raise ValueError("no co-occurring training interactions: the collaborative modality is empty")
        row_sum = np.asarray(c.sum(axis=1)).ravel()
        pmi = np.log(c.data * total / (row_sum[c.row] * row_sum[c.col]))
        keep = pmi > 0
        ppmi = sp.csr_matrix((pmi[keep], (c.row[keep], c.col[keep])), shape=c.shape)
        u, s, _ = randomized_svd(ppmi, config.dim, seed=config.seed)
        return l2_normalise(u * np.sqrt(s)).astype(np.float32)

    return (cache or EmbeddingCache(None)).get_or_compute("collaborative", key, compute)
