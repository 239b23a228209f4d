"""MMQ stage 2 settings and helpers shared by every downstream model that fine-tunes the MMQ
tokenizer (the generator: `generator/stage2.py`; the ranker: `ranker/stage2.py`).

The same fine-tuning applies to RQ-KMeans: a tokenizer is fine-tunable when its
`finetune_model()` gives a module with `names`, `codebook_size`, `quantizers` (residual
quantizers), `expert_latents`, `quantize`, `soft_indices` and `losses` (`MMQModel`,
`RQKMeansModel`), `finetune_features()` its inputs, and `with_finetuned()` the tokenizer back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mmq_rec.tokenizer.mmq import restart_dead

SCHEDULES = ("joint", "alternating")
TOKENIZER_DIR = "tokenizer"
"""Where a fine-tuned model's directory keeps its fine-tuned tokenizer."""


@dataclass
class FinetuneConfig:
    tau: float = 0.1
    """Temperature of the soft index softmax over cosine scores (RQ-KMeans: squared distances per dimension;
    MMQ does not report it: tune it on validation)."""
    alpha: float = 0.5
    """alpha': weight of MMQ's multimodal reconstruction loss beside the downstream loss (paper: 0.5)."""
    beta: float = 0.5
    """beta': weight of MMQ's per-modality auxiliary reconstruction loss (paper: 0.5)."""
    schedule: str = "alternating"
    """joint (downstream model and tokenizer every epoch) or alternating (downstream epochs, then
    tokenizer epochs with the downstream model frozen, ...)."""
    alternate_every: int = 1
    """alternating: epochs per phase; the first phase trains the downstream model (the tokenizer frozen)."""
    tokenizer_lr: float = 1e-4
    """Learning rate of the tokenizer's parameters (the downstream model keeps its own)."""
    restart_dead: bool = True
    """After an epoch that trained the tokenizer, restart codewords no item uses."""
    init_from: str = ""
    """A trained downstream model (for the ranker: a plain ranker directory trained on this
    tokenizer's stage-1 SIDs, same architecture) whose weights start stage 2; the alternating
    schedule then begins with a tokenizer phase. Empty: the downstream model starts fresh."""

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau: must be > 0 (got {self.tau!r})")
        for name in ("alpha", "beta"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0 (got {getattr(self, name)!r})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if not self.alternate_every >= 1:
            raise ValueError(f"alternate_every: must be >= 1 (got {self.alternate_every!r})")
        if not self.tokenizer_lr > 0:
            raise ValueError(f"tokenizer_lr: must be > 0 (got {self.tokenizer_lr!r})")


FINETUNABLE = ("mmq", "rqkmeans")
"""Tokenizer kinds whose codes come from trainable codebooks."""


def check_tokenizer(tokenizer: Any) -> None:
    kind = getattr(tokenizer, "kind", type(tokenizer).__name__)
    if kind not in FINETUNABLE:
        raise ValueError(f"stage 2 fine-tunes an MMQ or RQ-KMeans tokenizer (this one is {kind!r}): "
                         "tokenize with --tokenizer mmq or rqkmeans")


def tokenizer_phase(ft: FinetuneConfig, epoch: int) -> bool:
    """Whether epoch `epoch` (from 1) trains the tokenizer (a warm start, `init_from`, begins with it)."""
    return ft.schedule == "joint" or ((epoch - 1) // ft.alternate_every + bool(ft.init_from)) % 2 == 1


def changed_share(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """Share of items whose SID changed, overall and per position."""
    diff = np.asarray(before) != np.asarray(after)
    return {"items": round(float(diff.any(axis=1).mean()), 6),
            "per_position": [round(float(v), 6) for v in diff.mean(axis=0)]}


@torch.no_grad()
def restart_all(model: nn.Module, latents: list[torch.Tensor], gen: torch.Generator) -> int:
    """Restart the dead codewords of every expert's quantizer on `latents` (every item's expert
    outputs); returns how many were restarted."""
    return sum(restart_dead(q, z, gen) for q, z in zip(model.quantizers, latents, strict=True))


@torch.no_grad()
def carry_rows(table: torch.Tensor, before: torch.Tensor, after: torch.Tensor, k: int) -> None:
    """After a dead-code restart, for an embedding `table` whose row `p * k + code` embeds code
    `code` at SID position p: the row of each restarted code (one no item used `before`, some use
    `after`) becomes the mean of the rows its new items had, position by position, so no item is
    read through an untrained row."""
    for pos in range(after.shape[1]):
        was_used = torch.zeros(k, dtype=torch.bool, device=after.device)
        was_used[before[:, pos]] = True
        moved = ~was_used[after[:, pos]]
        if not moved.any():
            continue
        new_rows = pos * k + after[moved, pos]
        total = torch.zeros_like(table).index_add_(0, new_rows, table[pos * k + before[moved, pos]])
        count = torch.zeros(len(table), dtype=table.dtype, device=table.device)
        count.index_add_(0, new_rows, torch.ones(len(new_rows), dtype=table.dtype, device=table.device))
        hit = count > 0
        table[hit] = total[hit] / count[hit, None]
