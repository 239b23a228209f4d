"""Training the generator with accelerate: a plain loop that runs unchanged on CPU, one GPU or
under `accelerate launch` with several processes.

AdamW, linear warmup then cosine or inverse-square-root decay, gradient accumulation and
clipping, bf16 on GPU. Every `eval_every` optimizer steps the caller's `validate(model)` runs on
the *validation* split (main process; the result is broadcast), the best model is saved with
`save_pretrained` into `OUT/best`, and training stops after `patience` evaluations without
improvement. A checkpoint (accelerate state + trainer_state.json) is written atomically to
`OUT/checkpoint` at every evaluation; starting again with the same output directory resumes
from it, mid-epoch included (seeded per-epoch order + skipped batches). TensorBoard logs go to `OUT/logs`.

Batches are index slices of training tensors that live on the device (no per-example collation),
the loss is read back every `log_every` steps (no host sync per step), AdamW is fused where torch
has it. The objective (`generator/objective.py`) is TIGER's per-prefix one or, in item mode, the
all-position one over user windows.

With a wall-clock budget (`max_minutes`) the run is laid out from what it measures: after a few
steps it validates once, times a step and a validation, and sets the total steps, warmup and
validation cadence so the schedule decays and validation runs several times inside the budget."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mmq_rec.generator.model import GeneratorConfig, SIDCodec, build_model, save_generator
from mmq_rec.generator.objective import GeneratorLoss
from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import atomic_dir, write_json
from mmq_rec.tokenizer.training import describe_device, make_accelerator, resolve_device

STATE_FILE = "trainer_state.json"
SCHEDULES = ("cosine", "inverse_sqrt", "constant")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass
class TrainConfig:
    batch_size: int = 256
    """Examples per optimizer step and process (before gradient accumulation)."""
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"
    """cosine (to 10% of lr), inverse_sqrt (TIGER) or constant, after linear warmup."""
    warmup_steps: int = 500
    max_steps: int = 20000
    max_minutes: float = 0.0
    """Wall-clock training budget (0 = none): past it, training validates, checkpoints and stops."""
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"
    """auto = bf16 on CUDA, none on CPU; or no / bf16 / fp16."""
    eval_every: int = 1000
    """Optimizer steps between validation runs (and checkpoints)."""
    patience: int = 5
    """Stop after this many validations without a better validation metric."""
    metric: str = "ndcg@10"
    """Validation metric for early stopping and best-checkpoint selection."""
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        # Errors read "<field>: <reason>"; mmq.config reports them under the full dotted key.
        # `not x >= 1` (rather than `x < 1`) also refuses NaN.
        for name in ("batch_size", "max_steps", "grad_accum", "eval_every", "patience", "log_every"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name}: must be >= 1 (got {getattr(self, name)!r})")
        for name in ("warmup_steps", "weight_decay", "max_minutes"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0 (got {getattr(self, name)!r})")
        for name in ("lr", "max_grad_norm"):  # a clipping norm of 0 would zero every gradient
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0 (got {getattr(self, name)!r})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision: must be one of {', '.join(MIXED_PRECISION)} "
                             f"(got {self.mixed_precision!r})")
        # the validator reports recall@K and ndcg@K; that K is one of eval.ks is checked by mmq.config
        kind, _, k = self.metric.partition("@")
        if kind not in ("recall", "ndcg") or not k.isdigit() or int(k) < 1 or k != str(int(k)):
            raise ValueError(f"metric: must be recall@K or ndcg@K (got {self.metric!r})")


@dataclass
class GeneratorHooks:
    """What a variant of the generator's training (MMQ stage 2) changes in the loop, each optional:
    the loss module built around the fresh T5 model (default `GeneratorLoss`), the optimizer's
    parameter groups, a call at the start of every epoch (net, epoch from 1, whether a run resumes
    mid-epoch), one before every validation (its dict joins the validation's history row), and how
    the best model is saved (default `save_generator` with the caller's codec)."""

    build_loss: Callable[[Any], torch.nn.Module] | None = None
    param_groups: Callable[[torch.nn.Module], list[dict[str, Any]]] | None = None
    on_epoch_start: Callable[[torch.nn.Module, int, bool], None] | None = None
    before_validate: Callable[[torch.nn.Module], dict[str, Any]] | None = None
    save_best: Callable[[Path, torch.nn.Module, dict[str, Any]], None] | None = None


def _lr_lambda(cfg: TrainConfig, plan: dict[str, Any]) -> Callable[[int], float]:
    """Warmup then decay over the *planned* run (`plan` may be re-laid by a time budget)."""
    def f(step: int) -> float:
        warmup, total = plan["warmup_steps"], plan["total_steps"]
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "inverse_sqrt":
            return math.sqrt(max(warmup, 1) / (step + 1))
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


def initial_plan(cfg: TrainConfig) -> dict[str, Any]:
    return {"total_steps": cfg.max_steps, "warmup_steps": cfg.warmup_steps, "eval_every": cfg.eval_every,
            "eval_from": 0, "calibrated": cfg.max_minutes <= 0}


def budget_plan(cfg: TrainConfig, step: int, step_seconds: float, elapsed: float, eval_seconds: float
                ) -> dict[str, Any]:
    """Lay out the rest of a `max_minutes` run from the measured cost of a step (`step_seconds`
    for the first `step` steps, validation excluded) and of a validation: as many steps as fit in
    the time left after `elapsed` beside ~5 validations (at least 3), warmup at most a tenth of the
    run, and the decay ending at the last step. Never more than `max_steps`."""
    per_step = step_seconds / max(step, 1)
    remaining = 60 * cfg.max_minutes - elapsed
    n_evals = 5
    steps_left = int((remaining - n_evals * eval_seconds) / per_step)
    if steps_left < 5 * n_evals:  # validation dominates: validate less often
        n_evals = 3
        steps_left = max(int((remaining - n_evals * eval_seconds) / per_step), n_evals)
    total = min(cfg.max_steps, step + steps_left)
    return {"total_steps": total, "warmup_steps": min(cfg.warmup_steps, max(1, total // 10)),
            "eval_every": max(1, math.ceil((total - step) / n_evals)), "eval_from": step, "calibrated": True,
            "seconds_per_step": round(per_step, 4), "seconds_per_validation": round(eval_seconds, 2)}


def refit_plan(cfg: TrainConfig, plan: dict[str, Any], step: int, step_seconds: float, elapsed: float,
               eval_seconds: float) -> dict[str, Any]:
    """At a validation of a calibrated `max_minutes` run: the run's length re-fitted to the time
    left at the step cost measured so far (`step_seconds` for `step` steps, validations excluded),
    since a machine shared with other jobs slows down or speeds up after the calibration. The
    validation cadence is kept, and so is a warmup already passed."""
    per_step = step_seconds / max(step, 1)
    evals_left = math.ceil(max(0, plan["total_steps"] - step) / plan["eval_every"])
    steps_left = int((60 * cfg.max_minutes - elapsed - evals_left * eval_seconds) / per_step)
    total = max(step, min(cfg.max_steps, step + steps_left))
    warmup = plan["warmup_steps"] if step >= plan["warmup_steps"] else min(plan["warmup_steps"], max(1, total // 10))
    return {**plan, "total_steps": total, "warmup_steps": warmup, "seconds_per_step": round(per_step, 4),
            "seconds_per_validation": round(eval_seconds, 2)}


def _calibration_due(cfg: TrainConfig, step: int, seconds: float) -> bool:
    """Time to measure the step cost: a few steps in, after 3% of the budget (at least 3 s)."""
    return step >= 5 and seconds >= max(3.0, 0.03 * 60 * cfg.max_minutes)


def _damaged(ckpt: Path, e: Exception) -> DataError:
    return DataError(f"cannot resume from this checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                     "delete the folder to start afresh, or rerun with --overwrite", path=ckpt)


def read_checkpoint_state(run_dir: str | Path) -> dict[str, Any] | None:
    """The trainer state of the run's checkpoint (None when there is none); a damaged one is a
    DataError naming it. Cheap, so callers check it before writing anything."""
    path = Path(run_dir) / "checkpoint" / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not {"step", "plan", "history", "finished"} <= state.keys():
            raise ValueError("missing keys")
    except (OSError, ValueError) as e:
        raise _damaged(path.parent, e) from None
    return state


def train_generator(codec: SIDCodec, train_histories: torch.Tensor, train_targets: torch.Tensor,
                    model_cfg: GeneratorConfig, cfg: TrainConfig, output_dir: str | Path,
                    validate: Callable[[Any], dict[str, float]] | None = None,
                    show_progress: bool = True, extra_info: dict[str, Any] | None = None,
                    titles: list[str] | None = None, train_users: torch.Tensor | None = None,
                    device: str | None = None, hooks: GeneratorHooks | None = None) -> dict[str, Any]:
    """Train (or resume) and return the trainer state: steps, best step and metric, history, and
    the plan (total steps, warmup, validation cadence; derived from the measured step time when
    `cfg.max_minutes` is set). Rows: per-prefix histories (E, H) and targets (E,), or for the
    all-position objective windows (N, W) and targets (N, W) (`objective.all_position_windows`).
    `train_users`: each row's user-token id, required when the codec has user tokens. `device`:
    cpu, cuda or cuda:N (None: CUDA when available; under `accelerate launch`, each process's GPU).
    `hooks`: a variant of the loop (see `GeneratorHooks`)."""
    if codec.uses_users and train_users is None:
        raise ValueError("the generator has hashed user tokens: pass train_users")
    out = Path(output_dir)
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if resolve_device(device).type == "cuda" else "no"
    accelerator = make_accelerator(
        device, mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum, log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        # the item -> token table is a buffer every rank builds identically: no per-step broadcast
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    accelerator.wait_for_everyone()  # rank 0 has checked, claimed and fingerprinted the run directory
    set_seed(cfg.seed)
    hooks = hooks or GeneratorHooks()
    model = build_model(codec.vocab, model_cfg)
    net = hooks.build_loss(model) if hooks.build_loss else GeneratorLoss(
        model, codec.item_tokens, model_cfg.input_mode, model_cfg.all_positions, codec.uses_users,
        model_cfg.item_id_embedding)
    optim = _adamw(hooks.param_groups(net) if hooks.param_groups else net.parameters(), cfg, accelerator.device)
    plan = initial_plan(cfg)
    # The scheduler is not given to accelerate.prepare, which would step it once per process:
    # it is stepped here once per optimizer step, whatever the number of processes.
    sched = torch.optim.lr_scheduler.LambdaLR(optim, _lr_lambda(cfg, plan))
    net, optim = accelerator.prepare(net, optim)
    accelerator.register_for_checkpointing(sched)
    model = accelerator.unwrap_model(net).t5
    train_device = describe_device(accelerator.device)
    # validation and the saved model read the item embedding being trained (the same tensor)
    codec.item_embedding = accelerator.unwrap_model(net).item_embedding
    # training data lives on the device; batches are index slices of a seeded permutation
    columns = [t.to(accelerator.device) for t in
               (train_histories, train_targets, *([train_users] if codec.uses_users else []))]
    shard = _Shard(len(train_targets), cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes)
    accelerator.init_trackers("generator", config={**asdict(cfg), **asdict(model_cfg)})

    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None, "best_step": None,
                             "bad_evals": 0, "history": [], "finished": False, "train_seconds": 0.0, "plan": plan}
    ckpt = out / "checkpoint"
    saved = read_checkpoint_state(out)
    if saved is not None:
        try:
            accelerator.load_state(str(ckpt))
        except Exception as e:  # a damaged file raises anything from OSError to safetensors errors
            raise _damaged(ckpt, e) from None
        _load_rng(ckpt, accelerator.process_index)
        state = saved
        plan.update(state["plan"])
        state["plan"] = plan
        _log(accelerator, f"resuming from step {state['step']} (epoch {state['epoch']}, batch {state['batch_in_epoch']})")
    if state["finished"]:
        return state

    def evaluate_and_checkpoint(out_of_time: bool, calibrate: bool = False) -> bool:
        """Validate, keep the best model, (calibrate: lay out the budgeted run,) checkpoint; True
        when training should stop."""
        metrics = None
        t_eval = time.perf_counter()
        extra = hooks.before_validate(accelerator.unwrap_model(net)) if hooks.before_validate else {}
        if validate is not None:
            model.eval()
            if accelerator.num_processes > 1 and hasattr(validate, "shard"):
                # every rank decodes its share of the validation users; rank 0 scores them all
                parts = gather_object([validate.shard(model, accelerator.process_index, accelerator.num_processes)])
                metrics = validate.combine(parts) if accelerator.is_main_process else None
            elif accelerator.is_main_process:
                metrics = validate(model)
            model.train()
        metrics = broadcast_object_list([metrics])[0]
        if metrics is not None:
            value = metrics[cfg.metric]
            improved = state["best_metric"] is None or value > state["best_metric"]
            state["history"].append({"step": state["step"], "lr": sched.get_last_lr()[0], **metrics, **extra})
            accelerator.log({f"valid/{k}": v for k, v in metrics.items()}, step=state["step"])
            if improved:
                state.update(best_metric=value, best_step=state["step"], bad_evals=0)
                if accelerator.is_main_process:
                    info = {"step": state["step"], "valid": metrics, "train_device": train_device,
                            "processes": accelerator.num_processes, **(extra_info or {})}
                    if hooks.save_best:
                        hooks.save_best(out / "best", accelerator.unwrap_model(net), info)
                    else:
                        save_generator(out / "best", model, codec, model_cfg, info, titles)
            else:
                state["bad_evals"] += 1
            _log(accelerator, f"step {state['step']}: valid {cfg.metric} {value:.4f} "
                              f"(best {state['best_metric']:.4f} at {state['best_step']})")
        state["eval_seconds"] = time.perf_counter() - t_eval
        # the time of the steps alone: train_seconds (measured before this validation) less the earlier ones
        earlier = state.get("validation_seconds", 0.0)
        state["validation_seconds"] = earlier + state["eval_seconds"]
        if cfg.max_minutes > 0 and plan["calibrated"] and not calibrate and not out_of_time:
            plan.update(broadcast_object_list([refit_plan(
                cfg, plan, state["step"], state["train_seconds"] - earlier, time.perf_counter() - t0,
                state["eval_seconds"])])[0])
            bar.total = plan["total_steps"]
        if calibrate:  # before the checkpoint, so that a resumed run continues this very plan
            new = budget_plan(cfg, state["step"], state["train_seconds"] - earlier, time.perf_counter() - t0,
                              state["eval_seconds"])
            plan.update(broadcast_object_list([new])[0])
            bar.total = plan["total_steps"]
            bar.refresh()
            _log(accelerator, f"time budget {cfg.max_minutes} min: {plan['total_steps']} steps, warmup "
                              f"{plan['warmup_steps']}, validation every {plan['eval_every']} steps "
                              f"({plan['seconds_per_step']} s/step, {plan['seconds_per_validation']} s/validation)")
        stop = state["bad_evals"] >= cfg.patience or state["step"] >= plan["total_steps"] or out_of_time
        state["finished"] = stop
        accelerator.wait_for_everyone()
        # every rank saves its own state (its RNG streams) into the directory rank 0 makes atomic
        with atomic_dir(ckpt, "checkpoint") if accelerator.is_main_process else contextlib.nullcontext() as tmp:
            where = broadcast_object_list([str(tmp) if accelerator.is_main_process else None])[0]
            # tied embeddings make accelerate warn that it dropped shared tensors; they reload tied
            logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
            accelerator.save_state(where, safe_serialization=True)
            _save_rng(Path(where), accelerator.process_index)  # accelerate writes rank 0's streams only
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                write_json(Path(where) / STATE_FILE, state)
        accelerator.wait_for_everyone()
        return stop

    model.train()
    bar = tqdm(total=plan["total_steps"], initial=state["step"], desc="train", disable=not show_progress
               or not accelerator.is_local_main_process)
    t0 = time.perf_counter() - state["train_seconds"]
    running, n_running = torch.zeros((), device=accelerator.device), 0
    stop = False
    while not stop:
        if hooks.on_epoch_start:
            hooks.on_epoch_start(accelerator.unwrap_model(net), state["epoch"] + 1, state["batch_in_epoch"] > 0)
        order = shard.epoch_order(state["epoch"]).to(accelerator.device)
        for b in range(state["batch_in_epoch"], shard.batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            with accelerator.accumulate(net):
                loss = net(*(c[idx] for c in columns))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
                optim.step()
                optim.zero_grad(set_to_none=True)
            state["batch_in_epoch"] += 1
            running += loss.detach()  # no host sync per step: the loss is read every log_every steps
            n_running += 1
            if not accelerator.sync_gradients:
                continue
            sched.step()
            state["step"] += 1
            bar.update(1)
            if state["step"] % cfg.log_every == 0:
                mean = (running / n_running).item()
                accelerator.log({"train/loss": mean, "train/lr": sched.get_last_lr()[0]}, step=state["step"])
                bar.set_postfix(loss=f"{mean:.3f}")
                running, n_running = torch.zeros_like(running), 0
            state["train_seconds"] = time.perf_counter() - t0
            # the clock is rank 0's: every rank takes the same time decisions, or collectives hang
            out_of_time = cfg.max_minutes > 0 and _main_decides(
                accelerator, state["train_seconds"] >= 60 * cfg.max_minutes)
            calibrate = not plan["calibrated"] and _main_decides(
                accelerator, _calibration_due(cfg, state["step"], state["train_seconds"]))
            if calibrate or out_of_time or state["step"] >= plan["total_steps"] or \
                    (state["step"] - plan["eval_from"]) % plan["eval_every"] == 0:
                stop = evaluate_and_checkpoint(out_of_time, calibrate and not out_of_time)
                if stop:
                    break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    bar.close()
    # Every rank reaches the end before the process group is torn down, and the DDP wrapper that holds
    # it is released first: once, in a 2-process CPU run, rank 1 stayed blocked for good while freeing
    # its wrapper after rank 0 had already exited.
    accelerator.wait_for_everyone()
    net = optim = None  # noqa: F841 (the closures above hold them too)
    accelerator.free_memory()
    accelerator.end_training()
    return state


def _main_decides(accelerator: Accelerator, flag: bool) -> bool:
    """`flag` as computed on the main process, the same on every rank."""
    if accelerator.num_processes == 1:
        return flag
    return bool(broadcast_object_list([flag])[0])


def _log(accelerator: Accelerator, message: str) -> None:
    """Progress goes to stderr (stdout is kept for results, e.g. `--json`)."""
    if accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)


def _save_rng(directory: Path, rank: int) -> None:
    """This rank's torch random streams (dropout masks), as safetensors (nothing pickled)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    save_file(states, str(directory / f"rng_rank{rank}.safetensors"))


def _load_rng(directory: Path, rank: int) -> None:
    path = directory / f"rng_rank{rank}.safetensors"
    if not path.exists():
        return
    states = load_file(str(path))
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class _Shard:
    """This process's batches of an epoch: a permutation seeded by (seed, epoch), cut into equal
    shares per process (the remainder that does not divide evenly is left out of that epoch), so
    a resumed run re-creates the same order and skips the batches it has done."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_rank = n // world
        if self.per_rank == 0:
            raise DataError(f"{n} training rows cannot be shared by {world} processes")
        self.batches = math.ceil(self.per_rank / batch_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.n, generator=g)[: self.per_rank * self.world]
        return perm.view(self.per_rank, self.world)[:, self.rank].contiguous()


def _adamw(params: Any, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over `params` (parameters or parameter groups), fused into one kernel where this
    torch build has it for the device."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
