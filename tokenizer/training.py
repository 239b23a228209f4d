"""The accelerate training loop shared by trained tokenizers (MMQ, RQ-VAE).

The model's forward takes a batch of tensors and returns {"loss": scalar, "logs": {name: float}}.
The loop runs unchanged on CPU, one GPU or under `accelerate launch`; AdamW with a cosine decay
to 10% of the learning rate; seeded shuffling, so a CPU run is deterministic."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm


def train_model(model: nn.Module, inputs: Sequence[torch.Tensor], *, epochs: int, batch_size: int, lr: float,
                seed: int, weight_decay: float = 0.0, accelerator: Accelerator | None = None,
                on_epoch_end: Callable[[nn.Module, int], dict[str, float]] | None = None,
                desc: str = "train", show_progress: bool = True) -> list[dict[str, float]]:
    """Train in place; returns one log row per epoch (mean of each logged value, plus whatever
    `on_epoch_end(model, epoch)` returns)."""
    set_seed(seed)
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    loader = DataLoader(TensorDataset(*inputs), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / total)))
    prepared, optim, loader, sched = accelerator.prepare(model, optim, loader, sched)
    log: list[dict[str, float]] = []
    bar = tqdm(range(epochs), desc=desc, disable=not show_progress or not accelerator.is_local_main_process)
    for epoch in bar:
        prepared.train()
        sums: dict[str, float] = defaultdict(float)
        seen = 0
        for batch in loader:
            out = prepared(*batch)
            accelerator.backward(out["loss"])
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            n = len(batch[0])
            seen += n
            for k, v in out["logs"].items():
                sums[k] += float(v) * n
        row = {"epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()}}
        if on_epoch_end is not None:
            prepared.eval()
            row.update(on_epoch_end(accelerator.unwrap_model(prepared), epoch))
        log.append(row)
        bar.set_postfix(loss=f"{row.get('loss', 0.0):.4f}")
    return log
