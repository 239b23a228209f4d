"""Evaluation stage: the leave-one-out protocol, popularity buckets, metrics and reports."""

from mmq_rec.eval.buckets import BucketConfig, PopularityBuckets, popularity_buckets
from mmq_rec.eval.metrics import evaluate_rankings, ndcg_at_k, recall_at_k
from mmq_rec.eval.split import Split, SplitPart, cold_start_split, leave_one_out

__all__ = [
    "BucketConfig", "PopularityBuckets", "popularity_buckets", "evaluate_rankings", "ndcg_at_k",
    "recall_at_k", "Split", "SplitPart", "cold_start_split", "leave_one_out",
]
