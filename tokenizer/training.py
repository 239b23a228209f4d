"""The accelerate training loop shared by trained tokenizers (MMQ, RQ-VAE), and the one choice of
device every stage makes (`resolve_device`, `make_accelerator`).

The model's forward takes a batch of tensors and returns {"loss": scalar, "logs": {name: float}}.
The loop runs unchanged on CPU, one GPU or under `accelerate launch`; AdamW with a cosine decay
to 10% of the learning rate; seeded shuffling, so a CPU run is deterministic."""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def describe_device(device: str | torch.device) -> str:
    """What ran a stage, in words: the GPU's name, or the CPU with its cores and torch threads."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """"cpu", "cuda" or "cuda:N" -> that torch device, checked to exist here; None picks CUDA when
    available (and not turned off by `accelerate launch --cpu`), else the CPU. Errors read
    "device: <reason>" (mmq.config reports them under the key `device`)."""
    if device is None or str(device) == "":
        use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        return torch.device("cuda" if torch.cuda.is_available() and not use_cpu else "cpu")
    text = str(device).strip().lower()
    if not _DEVICE.fullmatch(text):
        raise ValueError(f"device: must be cpu, cuda or cuda:N (got {device!r})")
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"device: {text} was asked for but this machine has no usable CUDA GPU "
                             f"(torch {torch.__version__}, {build}); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {text} was asked for but this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def make_accelerator(device: str | torch.device | None = None, **kwargs) -> Accelerator:
    """An Accelerator on `device` (see `resolve_device`; cpu -> `Accelerator(cpu=True)`, cuda ->
    accelerate's choice, which under `accelerate launch` is each process's own GPU, whatever the N
    of cuda:N). `kwargs` go to `Accelerator` (mixed precision, gradient accumulation, trackers)."""
    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one state per process, fixed by the first Accelerator: a later stage in
        # the same process (the demo, the Python API, tests) would silently keep the first stage's
        # device, or be refused its own mixed precision. A single process has no process group to
        # keep, so every stage starts from a fresh state, as it would in a process of its own.
        AcceleratorState._reset_state(reset_partial_state=True)
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)  # a single process runs on the current GPU: make it cuda:N
    return Accelerator(cpu=dev.type == "cpu", **kwargs)


def train_model(model: nn.Module, inputs: Sequence[torch.Tensor], *, epochs: int, batch_size: int, lr: float,
                seed: int, weight_decay: float = 0.0, accelerator: Accelerator | None = None,
                on_epoch_end: Callable[[nn.Module, int], dict[str, float]] | None = None,
                desc: str = "train", show_progress: bool = True,
                device: str | torch.device | None = None) -> list[dict[str, float]]:
    """Train in place; returns one log row per epoch (mean of each logged value, plus whatever
    `on_epoch_end(model, epoch)` returns). Runs on `accelerator`, else on `device` (None: CUDA
    when available); `on_epoch_end` receives the model on that device."""
    set_seed(seed)
    accelerator = accelerator or make_accelerator(device)
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
