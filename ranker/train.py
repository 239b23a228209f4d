"""Training the ranker: every position of every training window a target, full-softmax (or
sampled, log-Q corrected) cross-entropy, one validation per epoch, early stopping and the best
epoch kept; a checkpoint after each epoch, so rerunning the same command resumes.

The shuffling and dropout of epoch e are seeded from (seed, e): a resumed run trains exactly as
an uninterrupted one would."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mmq_rec.ranker.model import WEIGHTS_FILE, SequentialRanker, save_ranker
from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import atomic_dir, read_json, write_json
from mmq_rec.tokenizer.sid import SIDTable
from mmq_rec.tokenizer.training import make_accelerator

CHECKPOINT = "checkpoint"
BEST = "best"


def _optimizer_tensors(optim: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optim.state_dict()
    tensors = {f"{i}.{name}": v.detach().cpu().contiguous() for i, st in sd["state"].items()
               for name, v in st.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(optim: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    optim.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def read_checkpoint(run: str | Path) -> dict[str, Any] | None:
    """The state of an interrupted run (None if there is none); a damaged one is a DataError."""
    ck = Path(run) / CHECKPOINT
    if not ck.is_dir():
        return None
    try:
        state = read_json(ck / "state.json")
        missing = [k for k in ("epoch", "best_epoch", "best_metric", "bad_epochs", "history", "optimizer_meta")
                   if k not in state]
        if missing:
            raise ValueError(f"state.json lacks {missing}")
        state["model"] = load_file(str(ck / WEIGHTS_FILE))
        state["optimizer"] = load_file(str(ck / "optimizer.safetensors"))
    except Exception as e:  # safetensors, JSON and shape errors come in many types
        raise DataError(f"cannot read the ranker checkpoint ({type(e).__name__}); rerun with --overwrite to start "
                        "afresh", path=ck) from None
    return state


def _check_continuation(history: list[dict[str, Any]], epochs: int, patience: int, metric: str, run: Path) -> None:
    """A run resumed with fewer epochs or a smaller patience than it already trained under would
    report a run that its settings would have stopped earlier: refuse it."""
    best, bad = -1.0, 0
    for e, row in enumerate(history, start=1):
        if e > epochs or bad >= patience:
            raise DataError(f"this run already trained {len(history)} epochs, past where --ranker.epochs {epochs} / "
                            f"--ranker.patience {patience} stop; use the earlier values, another --output, or "
                            "--overwrite", path=run)
        value = row[f"valid_{metric}"]
        best, bad = (value, 0) if value > best else (best, bad + 1)


def check_single_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DataError("the ranker trains in one process (it takes minutes on a CPU); run it without "
                        "accelerate launch / torchrun")


@dataclass
class TrainingHooks:
    """What a variant of the ranker's training (MMQ stage 2) changes in the loop, each optional:
    the optimizer's parameter groups, a call at the start of every epoch, one at its end (before
    validation; its dict joins the epoch's history row), and how the best epoch is saved."""

    param_groups: Callable[[SequentialRanker], list[dict[str, Any]]] | None = None
    on_epoch_start: Callable[[SequentialRanker, int], None] | None = None
    on_epoch_end: Callable[[SequentialRanker, int], dict[str, Any]] | None = None
    save_best: Callable[[SequentialRanker, Path, dict[str, Any]], None] | None = None


def train_ranker(model: SequentialRanker, inputs: np.ndarray, targets: np.ndarray, table: SIDTable,
                 validate: Callable[[SequentialRanker], dict[str, float]], output: str | Path,
                 info: dict[str, Any] | None = None, show_progress: bool = True,
                 device: str | torch.device | None = None,
                 log: Callable[[str], None] = print, titles: list[str] | None = None,
                 hooks: TrainingHooks | None = None) -> dict[str, Any]:
    """Train `model` on (N, W) windows with (N, W) next-item targets (-1: no target), keeping the
    epoch best on `validate` in OUTPUT/best (a `save_ranker` directory, or what `hooks.save_best`
    writes). Returns the run state."""
    check_single_process()
    cfg = model.cfg
    output = Path(output)
    hooks = hooks or TrainingHooks()
    acc = make_accelerator(device)
    optim = torch.optim.Adam(hooks.param_groups(model) if hooks.param_groups else model.parameters(), lr=cfg.lr,
                             weight_decay=cfg.weight_decay)
    model, optim = acc.prepare(model, optim)
    dev = acc.device
    x = torch.as_tensor(inputs, device=dev)
    y = torch.as_tensor(targets, device=dev)
    neg_p = None
    if cfg.loss == "sampled":  # popularity^0.75 (word2vec's choice), every item possible
        q = (model.items.counts.double() + 1).pow(0.75)
        neg_p = (q / q.sum()).to(dev)
    state: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_metric": -1.0, "bad_epochs": 0, "history": [],
                             "train_seconds": 0.0}
    ck = read_checkpoint(output)
    if ck is not None:
        _check_continuation(ck["history"], cfg.epochs, cfg.patience, cfg.metric, output / CHECKPOINT)
        try:
            model.load_state_dict(ck.pop("model"))
            _load_optimizer(optim, ck.pop("optimizer"), ck.pop("optimizer_meta"))  # moved to the parameters' device
        except (RuntimeError, KeyError, ValueError) as e:
            raise DataError(f"the ranker checkpoint does not fit this model ({type(e).__name__}); rerun with "
                            "--overwrite to start afresh", path=output / CHECKPOINT) from None
        state.update(ck)
        log(f"resuming the ranker after epoch {state['epoch']} (best {cfg.metric} {state['best_metric']:.4f} "
            f"at epoch {state['best_epoch']})")
    n = len(x)
    steps = (n + cfg.batch_size - 1) // cfg.batch_size
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        model.train()
        if hooks.on_epoch_start:
            hooks.on_epoch_start(model, epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout and negatives of this epoch
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).to(dev)
        total = torch.zeros((), device=dev)
        for s in tqdm(range(steps), desc=f"ranker epoch {epoch}", disable=not show_progress, leave=False):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            if neg_p is None:
                loss = model.loss(x[idx], y[idx])
            else:
                neg = torch.multinomial(neg_p, cfg.num_negatives, replacement=True)
                loss = model.loss(x[idx], y[idx], neg, torch.log(neg_p[neg] * cfg.num_negatives).float())
            optim.zero_grad(set_to_none=True)
            acc.backward(loss)
            optim.step()
            total += loss.detach()
        extra = hooks.on_epoch_end(model, epoch) if hooks.on_epoch_end else {}
        seconds = time.perf_counter() - t0
        metrics = validate(model)
        model.train()
        value = metrics[cfg.metric]
        row = {"epoch": epoch, "loss": round(float(total) / steps, 5), "seconds": round(seconds, 1),
               **{f"valid_{k}": round(v, 5) for k, v in metrics.items()}, **extra}
        state["history"].append(row)
        state["train_seconds"] += seconds
        state["epoch"] = epoch
        if value > state["best_metric"]:
            state.update(best_metric=value, best_epoch=epoch, bad_epochs=0)
            best_info = {**(info or {}), "epoch": epoch, f"valid_{cfg.metric}": value}
            if hooks.save_best:
                hooks.save_best(acc.unwrap_model(model), output / BEST, best_info)
            else:
                save_ranker(acc.unwrap_model(model), table, output / BEST, best_info, overwrite=True, titles=titles)
        else:
            state["bad_epochs"] += 1
        log(f"ranker epoch {epoch}: loss {row['loss']:.4f}, valid {cfg.metric} {value:.4f} (best "
            f"{state['best_metric']:.4f} at epoch {state['best_epoch']}), {seconds:.0f}s")
        _save_checkpoint(output, model, optim, state)
    state["stopped"] = "patience" if state["bad_epochs"] >= cfg.patience else "epochs"
    return state


def _save_checkpoint(output: Path, model: SequentialRanker, optim: torch.optim.Optimizer,
                     state: dict[str, Any]) -> None:
    tensors, meta = _optimizer_tensors(optim)
    with atomic_dir(output / CHECKPOINT, "ranker-checkpoint", overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "state.json", {**json.loads(json.dumps(state)), "optimizer_meta": meta})
