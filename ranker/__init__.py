"""Ranking stage: a sequential ranker over semantic-ID (and item-ID) embeddings, its training, and
re-ranking a generator's candidates."""

from mmq_rec.ranker.model import (
           REPRESENTATIONS,
           RankerConfig,
           SequentialRanker,
           build_ranker,
           load_ranker,
           save_ranker,
)
from mmq_rec.ranker.rank import CORRECTION_GRID, candidate_scores, correction_sweep, rank_full, rerank

__all__ = ["REPRESENTATIONS", "RankerConfig", "SequentialRanker", "build_ranker", "load_ranker", "save_ranker",
           "CORRECTION_GRID", "candidate_scores", "correction_sweep", "rank_full", "rerank"]
