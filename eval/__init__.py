"""Evaluation stage: the leave-one-out protocol, popularity buckets, metrics and reports."""

from eval.buckets import BucketConfig, PopularityBuckets, popularity_buckets
from eval.metrics import evaluate_rankings, ndcg_at_k, recall_at_k
from eval.split import Split, SplitPart, cold_start_split, leave_one_out

__all__ = [
    "BucketConfig", "PopularityBuckets", "popularity_buckets", "evaluate_rankings", "ndcg_at_k",
    "recall_at_k", "Split", "SplitPart", "cold_start_split", "leave_one_out",
]
