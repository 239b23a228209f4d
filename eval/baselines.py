"""Reference recommenders that need no training beyond counting: they anchor every report.

- popularity: the most popular training items, the same list for everyone;
- content kNN: score items by cosine similarity to the mean embedding of the user's last
  `last_n` history items, in any modality embedding. History items are not excluded (a user may
  re-buy), matching how generative retrieval is scored."""

from __future__ import annotations

import numpy as np

from mmq_rec.eval.split import PAD


def popularity_rankings(popularity: np.ndarray, num_users: int, k: int) -> np.ndarray:
    order = np.lexsort((np.arange(len(popularity)), -popularity))[:k]
    return np.tile(order, (num_users, 1))


def knn_rankings(embeddings: np.ndarray, histories: np.ndarray, k: int, last_n: int = 3,
                 batch_size: int = 1024) -> np.ndarray:
    """(U, k) item indices. `histories` is (U, H), right-aligned and padded with -1."""
    emb = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    recent = histories[:, -last_n:]
    out = np.empty((len(histories), k), dtype=np.int64)
    for start in range(0, len(histories), batch_size):
        h = recent[start:start + batch_size]
        valid = (h != PAD)[..., None]
        query = (emb[np.where(h == PAD, 0, h)] * valid).sum(axis=1)
        scores = query @ emb.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start:start + batch_size] = np.take_along_axis(top, order, axis=1)
    return out
