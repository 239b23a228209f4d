"""Collaborative modality from training interactions only: item co-occurrence -> PPMI -> SVD.

Two items co-occur when one user interacted with both at most `window` positions apart (1: adjacent
items only; 0: anywhere in the sequence). The positive pointwise mutual information of that
symmetric count matrix, factorised by a seeded randomized SVD, gives item vectors U·sqrt(S) (rows
L2-normalised). Items never seen in training get a zero vector: the caller must pass training
sequences only, never validation or test targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mmq_rec.tokenizer.encoders._linalg import l2_normalise, randomized_svd
from mmq_rec.tokenizer.encoders.cache import EmbeddingCache, content_hash

ENCODER_VERSION = 2
"""Part of the cache key; bump when the computation changes (2: the window counts up to `window`
positions apart, it stopped one short before)."""


@dataclass
class CollaborativeConfig:
    dim: int = 64
    """Output dimension (randomized SVD rank)."""
    window: int = 5
    """Co-occurrence window: items at most this many positions apart co-occur (0 = the whole sequence)."""
    seed: int = 0

    def __post_init__(self) -> None:
        # Errors read "<field>: <reason>"; mmq.config reports them under the full dotted key.
        if not self.dim >= 1:
            raise ValueError(f"dim: must be >= 1 (got {self.dim!r})")
        if not self.window >= 0:
            raise ValueError(f"window: must be >= 0 (got {self.window!r})")


def cooccurrence(train_sequences: Sequence[np.ndarray], num_items: int, window: int) -> sp.csr_matrix:
    """Symmetric counts of item pairs 1..`window` positions apart (all distances when window <= 0);
    an item paired with itself is not counted."""
    rows, cols = [], []
    for seq in train_sequences:
        seq = np.asarray(seq, dtype=np.int64)
        n = len(seq)
        max_distance = n - 1 if window <= 0 else min(window, n - 1)
        for d in range(1, max_distance + 1):
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

    return (cache or EmbeddingCache(None)).get_or_compute("collaborative", key, compute, version=ENCODER_VERSION)
