"""Leave-one-out split, popularity buckets and every metric against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmq_rec.eval.buckets import BucketConfig, popularity_buckets
from mmq_rec.eval.metrics import coverage_at_k, evaluate_rankings, invalid_rate, ndcg_at_k, recall_at_k
from mmq_rec.eval.report import mean_std, metrics_table
from mmq_rec.eval.split import PAD, cold_start_split, leave_one_out
from mmq_rec.recdata import DataError

D = [1 / math.log2(r + 1) for r in range(1, 25)]  # discount of rank r (1-based) is D[r-1]


# ------------------------------------------------------------------ split
def test_leave_one_out_by_hand():
    seqs = [np.array([5, 6, 7, 8, 9]), np.array([1, 2]), np.array([3, 4, 3])]
    s = leave_one_out(seqs, num_items=10, max_history=2)
    assert s.test.users.tolist() == [0, 2] and s.test.targets.tolist() == [9, 3]
    assert s.test.histories.tolist() == [[7, 8], [3, 4]]
    assert s.valid.targets.tolist() == [8, 4] and s.valid.histories.tolist() == [[6, 7], [PAD, 3]]
    # training: user 0 part [5,6,7] -> (5)->6, (5,6)->7; user 1 (short) [1,2] -> (1)->2; user 2 [3] -> none
    assert s.train.targets.tolist() == [6, 7, 2]
    assert s.train.histories.tolist() == [[PAD, 5], [5, 6], [PAD, 1]]
    assert s.train.users.tolist() == [0, 0, 1]
    assert s.short_users == 1
    assert [t.tolist() for t in s.train_sequences] == [[5, 6, 7], [1, 2], [3]]


def test_history_is_capped_at_20(beauty):
    s = leave_one_out(beauty.sequences(), beauty.num_items)
    assert s.test.histories.shape == (22363, 20) and len(s.train) == 198502 - 3 * 22363
    longest = int(np.argmax([len(x) for x in beauty.sequences()]))
    seq = beauty.sequences()[longest]
    row = int(np.flatnonzero(s.test.users == longest)[0])
    assert s.test.histories[row].tolist() == seq[-21:-1].tolist()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=12), min_size=1, max_size=8),
       st.integers(1, 5))
def test_split_never_leaks_targets(seqs, h):
    seqs = [np.array(x) for x in seqs]
    train_parts = [x[:-2] if len(x) >= 3 else x for x in seqs]
    if not any(len(x) >= 3 for x in seqs) or not any(len(p) >= 2 for p in train_parts):
        with pytest.raises(DataError, match="leave-one-out split"):  # nothing to evaluate or train on
            leave_one_out(seqs, 10, h)
        return
    s = leave_one_out(seqs, 10, h)
    for part in (s.train, s.valid, s.test):
        assert part.histories.shape[1] == h
        for u, hist, t in zip(part.users, part.history_lists(), part.targets, strict=True):
            full = seqs[u].tolist()
            # the history is exactly the items right before the target's position
            cut = len(full) - (1 if part is s.test else 2) if part is not s.train else None
            if cut is not None:
                assert t == full[cut] and hist.tolist() == full[max(0, cut - h):cut]
    assert len(s.train) == sum(max(len(p) - 1, 0) for p in train_parts)


@pytest.mark.parametrize("seqs,match", [
    ([[1, 2], [3], [4, 5]], r"0 of 3 users have >= 3 items \(2 have 2, 1 have 1\); each validation/test user needs 3"),
    ([[1, 2, 3], [4, 5, 6]], r"no training example is left \(2 of 2 users have >= 3 items, but a training "
                             r"example needs a user with >= 4 items, or a user with exactly 2\)"),
    ([], "the dataset has no users"),
])
def test_degenerate_splits_are_clear_errors(seqs, match):
    with pytest.raises(DataError, match=match):
        leave_one_out([np.array(x) for x in seqs], 10)


def test_cold_start_split_that_empties_training_is_an_error():
    seqs = [np.array([0, 1, 2, 3])]  # the only training example is 0 -> 1
    for seed in range(20):  # a seed that holds item 0 or 1 out leaves no training example
        if {0, 1} & set(np.random.default_rng(seed).choice(4, size=2, replace=False).tolist()):
            with pytest.raises(DataError, match="after holding the cold-start items out, no training example"):
                cold_start_split(seqs, 4, fraction=0.5, seed=seed)
            return
    raise AssertionError("no seed held item 0 or 1 out")


def test_cold_start_split_holds_items_out():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 50, size=8) for _ in range(40)]
    s = cold_start_split(seqs, 50, fraction=0.2, seed=3)
    assert len(s.cold_items) == 10
    seen = np.concatenate(s.train_sequences)
    assert not np.isin(seen, s.cold_items).any()
    assert not np.isin(s.train.targets, s.cold_items).any()
    assert np.array_equal(s.test.targets, np.array([x[-1] for x in seqs]))
    assert np.array_equal(cold_start_split(seqs, 50, 0.2, seed=3).cold_items, s.cold_items)
    with pytest.raises(ValueError):
        cold_start_split(seqs, 50, fraction=1.5)


# ------------------------------------------------------------------ buckets
def test_buckets_by_hand():
    # popularity over 10 items: item 0 x5, item 1 x4, item 2 x3, item 3 x3, items 4..7 x1, items 8, 9 never
    train = [np.array([0, 0, 0, 0, 0, 1, 1, 1, 1]), np.array([2, 2, 2, 3, 3, 3, 4, 5, 6, 7])]
    b = popularity_buckets(train, 10)
    assert b.popularity.tolist() == [5, 4, 3, 3, 1, 1, 1, 1, 0, 0]
    assert np.flatnonzero(b.masks["head"]).tolist() == [0, 1]  # top 20% = 2 items
    assert np.flatnonzero(b.masks["tail"]).tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    assert np.flatnonzero(b.masks["long_tail"]).tolist() == [7, 8, 9]  # bottom ceil(2.5) = 3 items
    assert np.flatnonzero(b.masks["cold"]).tolist() == [8, 9]
    users = b.of_targets(np.array([0, 9, 3]))
    assert users["head"].tolist() == [True, False, False] and users["cold"].tolist() == [False, True, False]
    b2 = popularity_buckets(train, 10, BucketConfig(head_fraction=0.4, long_tail_fraction=0.1))
    assert np.flatnonzero(b2.masks["head"]).tolist() == [0, 1, 2, 3]
    assert np.flatnonzero(b2.masks["long_tail"]).tolist() == [9]


def test_buckets_use_training_only(beauty):
    s = leave_one_out(beauty.sequences(), beauty.num_items)
    b = popularity_buckets(s.train_sequences, beauty.num_items)
    assert b.popularity.sum() == 198502 - 2 * 22363
    assert b.sizes()["head"] == math.ceil(0.2 * 12101) and b.sizes()["long_tail"] == math.ceil(0.25 * 12101)


# ------------------------------------------------------------------ metrics
RANKED = np.array([[3, 1, 2, 7], [0, 5, 4, 1], [9, 8, 6, 5]])
TARGETS = np.array([1, 4, 0])


def test_recall_ndcg_single_target_by_hand():
    assert recall_at_k(RANKED, TARGETS, 1).tolist() == [0, 0, 0]
    assert recall_at_k(RANKED, TARGETS, 2).tolist() == [1, 0, 0]
    assert recall_at_k(RANKED, TARGETS, 3).tolist() == [1, 1, 0]
    np.testing.assert_allclose(ndcg_at_k(RANKED, TARGETS, 3), [D[1], D[2], 0.0])
    np.testing.assert_allclose(ndcg_at_k(RANKED, TARGETS, 2), [D[1], 0.0, 0.0])


def test_recall_ndcg_several_targets_by_hand():
    targets = [np.array([1, 2, 9]), np.array([0]), np.array([6, 5])]
    np.testing.assert_allclose(recall_at_k(RANKED, targets, 3), [2 / 3, 1.0, 1 / 2])
    np.testing.assert_allclose(recall_at_k(RANKED, targets, 4), [2 / 3, 1.0, 1.0])
    # user 0: hits at ranks 2,3; ideal with 3 targets and k=3: ranks 1,2,3
    np.testing.assert_allclose(ndcg_at_k(RANKED, targets, 3),
                               [(D[1] + D[2]) / (D[0] + D[1] + D[2]), 1.0, D[2] / (D[0] + D[1])])


def test_duplicate_entries_count_once():
    ranked = np.array([[1, 1, 2]])
    assert recall_at_k(ranked, [np.array([1, 2])], 3).tolist() == [1.0]
    np.testing.assert_allclose(ndcg_at_k(ranked, [np.array([1, 2])], 3), [(D[0] + D[2]) / (D[0] + D[1])])


def test_coverage_and_invalid_rate_by_hand():
    assert coverage_at_k(RANKED, 10, 2) == 0.6  # {3,1,0,5,9,8}
    ranked = np.array([[1, -2, 12, -1], [0, 3, -1, -1]])
    assert invalid_rate(ranked, 10) == pytest.approx(2 / 5)  # -2 and 12 invalid; -1 is padding
    assert invalid_rate(ranked, 10, k=1) == 0.0
    assert coverage_at_k(ranked, 10, 4) == 0.3


def test_evaluate_rankings_strata():
    groups = {"head": np.array([True, False, True]), "cold": np.array([False, False, False])}
    res = evaluate_rankings(RANKED, TARGETS, 10, ks=(2, 3), groups=groups)
    assert res["all"]["users"] == 3 and res["all"]["recall@3"] == pytest.approx(2 / 3)
    assert res["head"]["users"] == 2 and res["head"]["recall@3"] == pytest.approx(0.5)
    assert res["head"]["ndcg@3"] == pytest.approx(D[1] / 2)
    assert res["cold"] == {"users": 0}
    assert res["all"]["invalid_rate"] == 0.0
    with pytest.raises(ValueError, match="exceeds"):
        evaluate_rankings(RANKED, TARGETS, 10, ks=(5,))


def test_mean_std_over_seeds_and_table():
    runs = [{"all": {"users": 10, "recall@10": r, "ndcg@10": n, "coverage@10": 0.5}}
            for r, n in ((0.1, 0.05), (0.2, 0.07), (0.3, 0.09))]
    agg = mean_std(runs)["all"]
    assert agg["runs"] == 3 and agg["users"] == 10
    assert agg["recall@10"] == pytest.approx(0.2) and agg["recall@10_std"] == pytest.approx(0.1)
    assert agg["ndcg@10"] == pytest.approx(0.07) and agg["ndcg@10_std"] == pytest.approx(0.02)
    table = metrics_table({"three seeds": {"all": agg}, "one run": mean_std(runs[:1])}, "all", [10])
    assert "| three seeds | 10 | 0.2000 ± 0.1000 | 0.0700 ± 0.0200 | 0.500 ± 0.000 |" in table
    assert "| one run | 10 | 0.1000 | 0.0500 | 0.500 |" in table
