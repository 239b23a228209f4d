"""Ranking with a trained ranker: over the whole catalogue, or re-ranking a generator's candidates."""

from __future__ import annotations

import numpy as np
import torch

from mmq_rec.ranker.model import SequentialRanker


@torch.no_grad()
def rank_full(model: SequentialRanker, histories: np.ndarray, k: int, batch_size: int = 1024,
              exclude_history: bool = False, popularity_correction: float | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(U, H) item-row histories (-1 padded) -> (top-k items (U, k), their scores) over the whole
    catalogue; `exclude_history` drops the items already in each history (-1 pads a list when
    fewer than k items are left); `popularity_correction` T lowers every score by T log(1 + the
    item's training count) (default: the ranker's own `cfg.popularity_correction`)."""
    was_training = model.training
    model.eval()
    dev = model.device
    k = min(k, model.items.num_items)
    item_emb = model.items()
    bias = model.score_bias(popularity_correction)
    out_items, out_scores = [], []
    for s in range(0, len(histories), batch_size):
        h = torch.as_tensor(histories[s:s + batch_size], device=dev)
        sc = model.encode(h, item_emb)[:, -1] @ item_emb.T
        if bias is not None:
            sc = sc + bias
        if exclude_history:
            rows = torch.arange(len(h), device=dev)[:, None].expand_as(h)
            keep = h >= 0
            sc[rows[keep], h[keep]] = float("-inf")
        top = sc.topk(k, dim=1)
        out_items.append(top.indices.masked_fill(torch.isneginf(top.values), -1).cpu().numpy())
        out_scores.append(top.values.float().cpu().numpy())
    model.train(was_training)
    if not out_items:
        return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
    return np.concatenate(out_items), np.concatenate(out_scores)


@torch.no_grad()
def candidate_scores(model: SequentialRanker, histories: np.ndarray, candidates: np.ndarray,
                     batch_size: int = 1024) -> np.ndarray:
    """The ranker's score of each candidate, (U, C) float32 (with its `cfg.popularity_correction`);
    -inf where a candidate is -1 (padding)."""
    was_training = model.training
    model.eval()
    dev = model.device
    item_emb = model.items()
    bias = model.score_bias()
    out = []
    for s in range(0, len(histories), batch_size):
        h = torch.as_tensor(histories[s:s + batch_size], device=dev)
        c = torch.as_tensor(candidates[s:s + batch_size], device=dev)
        state = model.encode(h, item_emb)[:, -1]
        sc = (state[:, None, :] * item_emb[c.clamp(min=0)]).sum(-1)
        if bias is not None:
            sc = sc + bias[c.clamp(min=0)]
        out.append(sc.masked_fill(c < 0, float("-inf")).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.empty((0, candidates.shape[1]), dtype=np.float32)


def rerank(candidates: np.ndarray, ranker_scores: np.ndarray, generator_scores: np.ndarray | None = None,
           weight: float = 0.0, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Order each user's candidates by `ranker score + weight * generator log-probability`
    (padding, -1, last); returns (items (U, k), fused scores). Only candidates come back, each
    as often as it was given (the generator returns each item once)."""
    fused = ranker_scores.astype(np.float64)
    if weight and generator_scores is not None:
        fused = fused + weight * generator_scores
    fused = np.where(candidates < 0, -np.inf, fused)
    order = np.argsort(-fused, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(fused, order, axis=1)


CORRECTION_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0)
"""Popularity corrections T tried by `mmq rank calibrate` by default."""


@torch.no_grad()
def correction_sweep(model: SequentialRanker, histories: np.ndarray, ts: list[float] | tuple[float, ...], k: int,
                     batch_size: int = 1024) -> dict[float, np.ndarray]:
    """{T: top-k items (U, k)} over the whole catalogue under each popularity correction T (the
    history is encoded once for all of them)."""
    was_training = model.training
    model.eval()
    dev = model.device
    k = min(k, model.items.num_items)
    item_emb = model.items()
    logn = torch.log1p(model.items.counts)
    out: dict[float, list[np.ndarray]] = {float(t): [] for t in ts}
    for s in range(0, len(histories), batch_size):
        h = torch.as_tensor(histories[s:s + batch_size], device=dev)
        sc = model.encode(h, item_emb)[:, -1] @ item_emb.T
        for t in out:
            out[t].append((sc - t * logn).topk(k, dim=1).indices.cpu().numpy())
    model.train(was_training)
    return {t: np.concatenate(v) if v else np.empty((0, k), dtype=np.int64) for t, v in out.items()}
