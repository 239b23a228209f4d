"""Benchmark: generator training throughput, the old loop against the new one, side by side in
one run, on Beauty with the TIGER-size model in item input mode.

    python scripts/bench_training.py [--steps 40] [--batch 256]

- old: the loop as it was before (a DataLoader collating TensorDataset rows each step, accelerate
  preparing loader and scheduler, the loss read back every step, plain AdamW), per-prefix objective;
- new, prefix: `generator.train.train_generator` (device-resident rows sliced by index, loss read
  every `log_every` steps, fused AdamW where available), TIGER's per-prefix objective;
- new, all positions: the same loop with the all-position objective (one causal encoder pass per
  user window, every position a target); its batch holds as many windows as give about the same
  number of targets per step as the per-prefix batch. It runs twice: with the decoder as it was
  first built (T5's own forward on a copy of the window's encoder states per target, so the
  cross-attention keys/values are projected once per target) and with `decode_targets` (projected
  once per window).
Throughput = training targets (next-item predictions) per second over `--steps` optimizer steps
after 3 warm-up steps. SIDs: LETTER's published table (no encoding needed; throughput does not
depend on the SIDs' quality). Writes benchmarks/training.json and benchmarks/training.md."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from mmq_rec.eval.split import leave_one_out
from mmq_rec.generator.model import GeneratorConfig, SIDCodec, build_model
from mmq_rec.generator.objective import GeneratorLoss, all_position_windows, causal_mask
from mmq_rec.generator.train import TrainConfig, train_generator
from mmq_rec.recdata.io import write_json, write_text
from mmq_rec.recdata.loaders import load_jsonl
from mmq_rec.tokenizer.api import tokenize
from mmq_rec.tokenizer.baselines import ExternalConfig, ExternalTokenizer

HERE = Path(__file__).resolve().parent.parent
WARMUP = 3


def old_loop(codec: SIDCodec, hist: torch.Tensor, tgt: torch.Tensor, cfg: GeneratorConfig, batch: int,
             steps: int) -> float:
    """The previous training loop, kept here as the baseline: seconds for `steps` steps after warm-up."""
    accelerator = Accelerator(mixed_precision="no")
    torch.manual_seed(0)
    model = build_model(codec.vocab, cfg)
    loader = DataLoader(TensorDataset(hist, tgt), batch_size=batch, shuffle=True)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0)
    model, optim, loader, sched = accelerator.prepare(model, optim, loader, sched)
    model.train()
    done, t0 = 0, None
    for h, t in loader:
        if done == WARMUP:
            t0 = time.perf_counter()
        inputs = codec.encoder_inputs(model, h)
        loss = model(**inputs, labels=codec.labels(t)).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        loss.item()  # the old loop read the loss back every step
        done += 1
        if done == WARMUP + steps:
            return time.perf_counter() - t0
    raise RuntimeError("not enough batches for the requested steps")


def new_loop(codec: SIDCodec, hist: torch.Tensor, tgt: torch.Tensor, cfg: GeneratorConfig, batch: int,
             steps: int) -> float:
    """`train_generator` for WARMUP + steps steps, minus a separate WARMUP-step run (setup and
    warm-up cancel out), with no validation."""
    def run(n: int) -> float:
        with tempfile.TemporaryDirectory() as d:
            state = train_generator(codec, hist, tgt, cfg, TrainConfig(batch_size=batch, max_steps=n, eval_every=10**6,
                                                                       log_every=50, warmup_steps=1), d,
                                    validate=None, show_progress=False)
        return state["train_seconds"]
    return run(WARMUP + steps) - run(WARMUP)


def t5_decoder_position_losses(self: GeneratorLoss, inputs: dict[str, torch.Tensor], targets: torch.Tensor
                               ) -> torch.Tensor:
    """`GeneratorLoss.position_losses` as first built, kept here as the baseline: T5's forward on
    per-target copies of the encoder states."""
    mask = inputs["attention_mask"]
    hidden = self.t5.get_encoder()(inputs_embeds=inputs["inputs_embeds"],
                                   attention_mask=causal_mask(mask, inputs["inputs_embeds"].dtype)).last_hidden_state
    row, pos = (targets >= 0).nonzero(as_tuple=True)
    visible = (torch.arange(hidden.shape[1], device=mask.device)[None] <= pos[:, None]) & mask[row].bool()
    labels = self.item_tokens[targets[row, pos]]
    out = self.t5(encoder_outputs=(hidden[row],), attention_mask=visible.long(),
                  decoder_input_ids=self.t5._shift_right(labels))
    per_token = torch.nn.functional.cross_entropy(out.logits.float().transpose(1, 2), labels, reduction="none")
    return per_token.mean(dim=1)


@contextlib.contextmanager
def t5_decoder():
    kept = GeneratorLoss.position_losses
    GeneratorLoss.position_losses = t5_decoder_position_losses
    try:
        yield
    finally:
        GeneratorLoss.position_losses = kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(HERE.parent / "shared" / "data" / "amazon-beauty"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default=str(HERE / "benchmarks"))
    args = ap.parse_args()

    ds = load_jsonl(args.data)
    split = leave_one_out(ds.sequences(), ds.num_items)
    letter = ExternalTokenizer(ExternalConfig(path=str(Path(args.data) / "letter.index.json")), ds.item_ids())
    sid = tokenize(letter, {}, ds.item_ids(), show_progress=False).table
    prefix_cfg = GeneratorConfig(input_mode="item", objective="prefix")
    all_cfg = GeneratorConfig(input_mode="item", objective="all_positions")
    codec = SIDCodec(sid, "item")
    hist, tgt = torch.from_numpy(split.train.histories), torch.from_numpy(split.train.targets)
    w_in, w_tg, _ = all_position_windows(split.train_sequences, 20)
    per_window = float((w_tg >= 0).sum() / len(w_tg))
    window_batch = max(1, round(args.batch / per_window))

    rows = []
    windows = (all_cfg, torch.from_numpy(w_in), torch.from_numpy(w_tg), window_batch, per_window)
    for name, fn, patch, cfg, h, t, b, targets_per_row in (
            ("old loop, per-prefix objective", old_loop, contextlib.nullcontext, prefix_cfg, hist, tgt, args.batch, 1.0),
            ("new loop, per-prefix objective", new_loop, contextlib.nullcontext, prefix_cfg, hist, tgt, args.batch, 1.0),
            ("new loop, all-position objective, T5's decoder forward", new_loop, t5_decoder, *windows),
            ("new loop, all-position objective", new_loop, contextlib.nullcontext, *windows)):
        with patch():
            seconds = fn(codec, h, t, cfg, b, args.steps)
        targets = args.steps * b * targets_per_row
        rows.append({"loop": name, "batch_rows": b, "targets_per_step": round(b * targets_per_row, 1),
                     "seconds": round(seconds, 2), "targets_per_second": round(targets / seconds, 1)})
        print(rows[-1], file=sys.stderr, flush=True)
    old, new_prefix, t5_dec, new_all = (r["targets_per_second"] for r in rows)
    result = {"device": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU"
              if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": args.steps,
              "command": "python scripts/bench_training.py " + " ".join(sys.argv[1:]),
              "train_targets": int(len(tgt)), "windows": int(len(w_in)), "targets_per_window": round(per_window, 2),
              "rows": rows, "speedup": round(new_all / old, 2), "speedup_loop_only": round(new_prefix / old, 2),
              "speedup_decoder": round(new_all / t5_dec, 2)}
    out = Path(args.out)
    write_json(out / "training.json", result)
    table_md = ["| loop | rows per step | targets per step | seconds | targets / s |", "|---|---:|---:|---:|---:|"]
    table_md += [f"| {r['loop']} | {r['batch_rows']} | {r['targets_per_step']} | {r['seconds']} | "
                 f"{r['targets_per_second']:,.0f} |" for r in rows]
    write_text(out / "training.md", "\n".join([
        "# Generator training throughput: old loop vs new loop",
        f"Measured side by side in one run on {result['device']}, torch {result['torch']}, {result['threads']} "
        f"threads; Beauty training split ({result['train_targets']:,} targets, {result['windows']:,} user windows, "
        f"{per_window:.2f} targets per window), TIGER-size T5 in item input mode, LETTER SIDs, "
        f"{args.steps} optimizer steps after {WARMUP} warm-up steps, fp32.",
        "", "\n".join(table_md), "",
        f"**Speedup (new loop with the all-position objective ÷ old loop): {result['speedup']}×**; the loop "
        f"changes alone (same per-prefix objective): {result['speedup_loop_only']}×; the all-position decoder "
        f"that projects cross-attention keys/values once per window instead of once per target: "
        f"{result['speedup_decoder']}×.", "",
        "Command: `" + result["command"].strip() + "`", ""]))
    print(out / "training.md")


if __name__ == "__main__":
    main()
