"""Leave-one-out split (TIGER / P5 protocol).

For a user with items s_0 .. s_{n-1}: the test target is s_{n-1}, the validation target s_{n-2},
and the training part s_0 .. s_{n-3}, from which every prefix predicts its next item. Each example
sees at most `max_history` items before its target. Users with fewer than 3 items have no
validation/test example; their items all go to training and they are counted in
`Split.short_users`.

A split that cannot be evaluated or trained on (no user with 3 items, no training example left)
is a DataError saying what the data lacks, rather than an empty array failing somewhere later."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmq_rec.recdata.errors import DataError

PAD = -1


@dataclass
class SplitPart:
    """Examples of one split part. `histories` is (E, max_history) int64, right-aligned, padded with -1."""

    users: np.ndarray  # (E,) user index
    histories: np.ndarray  # (E, H)
    targets: np.ndarray  # (E,) item index

    def __len__(self) -> int:
        return len(self.targets)

    def history_lists(self) -> list[np.ndarray]:
        return [h[h != PAD] for h in self.histories]


@dataclass
class Split:
    train: SplitPart
    valid: SplitPart
    test: SplitPart
    train_sequences: list[np.ndarray]  # per user, the training part (used for popularity, collaborative)
    num_items: int
    max_history: int
    short_users: int = 0
    cold_items: np.ndarray | None = None  # items held out of training (cold-start split)

    def summary(self) -> dict[str, int]:
        return {"train_examples": len(self.train), "valid_users": len(self.valid), "test_users": len(self.test),
                "short_users": self.short_users,
                "cold_items": 0 if self.cold_items is None else len(self.cold_items)}


def _part(users: list[int], histories: list[np.ndarray], targets: list[int], h: int) -> SplitPart:
    hist = np.full((len(histories), h), PAD, dtype=np.int64)
    for row, seq in enumerate(histories):
        seq = seq[-h:]
        if len(seq):
            hist[row, h - len(seq):] = seq
    return SplitPart(np.asarray(users, dtype=np.int64), hist, np.asarray(targets, dtype=np.int64))


def _split(sequences: Sequence[np.ndarray], num_items: int, max_history: int,
           train_filter: np.ndarray | None) -> Split:
    if max_history < 1:
        raise ValueError("max_history must be >= 1")
    tr_u, tr_h, tr_t = [], [], []
    va_u, va_h, va_t = [], [], []
    te_u, te_h, te_t = [], [], []
    train_seqs, short = [], 0
    for u, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        if len(seq) >= 3:
            train = seq[:-2]
            va_u.append(u), va_h.append(seq[-2 - max_history:-2]), va_t.append(int(seq[-2]))
            te_u.append(u), te_h.append(seq[-1 - max_history:-1]), te_t.append(int(seq[-1]))
        else:
            train, short = seq, short + 1
        if train_filter is not None:
            train = train[~train_filter[train]]
        train_seqs.append(train)
        for t in range(1, len(train)):
            tr_u.append(u), tr_h.append(train[max(0, t - max_history):t]), tr_t.append(int(train[t]))
    _check_usable(sequences, len(va_t), len(tr_t), train_filter is not None)
    return Split(_part(tr_u, tr_h, tr_t, max_history), _part(va_u, va_h, va_t, max_history),
                 _part(te_u, te_h, te_t, max_history), train_seqs, num_items, max_history, short)


def _check_usable(sequences: Sequence[np.ndarray], evaluated: int, train_examples: int, cold: bool) -> None:
    """Validation/test need users with >= 3 items; training needs a user whose training part has
    >= 2 items (a user with >= 4 items, or a short user with 2)."""
    n = len(sequences)
    if n == 0:
        raise DataError("leave-one-out split: the dataset has no users")
    if evaluated == 0:
        lengths = np.bincount([min(len(s), 3) for s in sequences], minlength=4)
        raise DataError(f"leave-one-out split: 0 of {n:,} users have >= 3 items ({lengths[2]:,} have 2, "
                        f"{lengths[1]:,} have 1); each validation/test user needs 3 (a training item, "
                        "the validation target and the test target)")
    if train_examples == 0:
        cause = "after holding the cold-start items out, " if cold else ""
        raise DataError(f"leave-one-out split: {cause}no training example is left ({evaluated:,} of {n:,} users "
                        "have >= 3 items, but a training example needs a user with >= 4 items, "
                        "or a user with exactly 2)")


def leave_one_out(sequences: Sequence[np.ndarray], num_items: int, max_history: int = 20) -> Split:
    """Split per-user chronological item sequences (see module docstring)."""
    return _split(sequences, num_items, max_history, None)


def cold_start_split(sequences: Sequence[np.ndarray], num_items: int, fraction: float, seed: int = 0,
                     max_history: int = 20) -> Split:
    """Leave-one-out, but a random `fraction` of items is removed from every training sequence, so
    those items are never seen in training. Validation/test targets and histories keep them: a
    test user whose target is held out measures cold-start recommendation."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"cold-start fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(num_items, size=max(1, round(fraction * num_items)), replace=False))
    mask = np.zeros(num_items, dtype=bool)
    mask[cold] = True
    split = _split(sequences, num_items, max_history, mask)
    split.cold_items = cold
    return split
