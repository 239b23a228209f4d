"""Benchmark: constrained beam search (generator/beam.py) against HF `generate` with
`prefix_allowed_tokens_fn`, on the same TIGER-size model, in the same run.

    python scripts/bench_decoding.py [--model RUN/best] [--users 1000] [--sizes 10000 100000 1000000] [--device cuda]

- Beauty test users (leave-one-out), beam 20, top-20, both input modes (flat, item).
- The HF baseline is the fair one peers use: its callback is a dictionary lookup of the
  precomputed valid next tokens per prefix.
- Each decoder runs at its own best batch size from {32, 128, 512} (chosen on a warm-up slice).
- Reported: users/s, speedup, identical top-K (items and order; ties within 1e-5 may swap),
  max score difference, invalid-ID rate, peak memory growth while decoding one batch (fresh
  process: RSS on the CPU, allocated GPU memory with `--device cuda`), and our decoder's time as
  the catalogue grows (random unique SIDs, 3 x 256 + disambiguation).
Without `--model` the models are TIGER-size with random weights (decoding cost does not depend on
training); with `--model` that trained model is used for its input mode. `--data` is the Beauty
JSONL folder or a prepared dataset directory (`mmq prepare`). `--device` (default cpu): where both
decoders run; on a GPU both decode on it and each timing ends with the results on the host.
Writes benchmarks/decoding.json and benchmarks/decoding.md (`--out` for another folder)."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from transformers.modeling_outputs import BaseModelOutput

from mmq_rec.eval.metrics import invalid_rate
from mmq_rec.eval.split import leave_one_out
from mmq_rec.generator.beam import constrained_beam_search, prefix_allowed_tokens
from mmq_rec.generator.model import GeneratorConfig, SIDCodec, build_model, load_generator
from mmq_rec.generator.objective import encode
from mmq_rec.generator.trie import PrefixTrie
from mmq_rec.recdata.io import write_json, write_text
from mmq_rec.recdata.loaders import load_jsonl
from mmq_rec.recdata.schema import RecDataset
from mmq_rec.tokenizer.sid import SIDTable
from mmq_rec.tokenizer.training import resolve_device

HERE = Path(__file__).resolve().parent.parent
BATCH_SIZES = (32, 128, 512)


def mem_key(args) -> str:
    return "peak_gpu_mb" if args.device.startswith("cuda") else "peak_rss_mb"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu (no GPU)"


def peak_mb(mode: str, decoder: str, bs: int, args) -> float:
    """Peak memory growth (MB) while `decoder` decodes one batch of `bs` users, measured in a
    fresh Python process: on the CPU the kernel's peak-RSS mark (VmHWM, reset just before
    decoding) minus the RSS then (Linux only); on a GPU torch's peak allocated memory minus the
    allocation then. A fresh process per measurement, because an allocator keeps what an earlier
    run freed."""
    cmd = [sys.executable, __file__, "--memory-probe", mode, decoder, str(bs), "--data", args.data,
           "--beam", str(args.beam), "--k", str(args.k), "--device", args.device] + \
        (["--model", args.model] if args.model else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])[mem_key(args)]


def memory_probe(args) -> None:
    mode, decoder, bs = args.memory_probe[0], args.memory_probe[1], int(args.memory_probe[2])
    test_hist, table, trained, cfg = setup(args)
    model, codec = model_for(mode, table, trained, cfg, args.device)
    hist = test_hist[:bs]
    trie = PrefixTrie(table.codes, table.codebook_sizes).to(args.device)
    fn, index = prefix_allowed_tokens(table.codes, codec.vocab, 0), table.index()
    gc.collect()
    gpu = args.device.startswith("cuda")
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets the kernel's peak-RSS mark (VmHWM)
        base = psutil.Process().memory_info().rss
    with torch.no_grad():
        if decoder == "ours":
            ours(model, codec, trie, hist, args.beam, args.k, bs)
        else:
            hf(model, codec, fn, index, hist, args.beam, args.k, bs)
    if gpu:
        peak = torch.cuda.max_memory_allocated()
    else:
        status = Path("/proc/self/status").read_text()
        peak = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1]) * 1024
    print(json.dumps({mem_key(args): round((peak - base) / 2**20, 1)}))


def ours(model, codec, trie, hist, beam, k, bs):
    items, scores = [], []
    for s in range(0, len(hist), bs):
        it, sc = constrained_beam_search(model, codec.encoder_inputs(model, hist[s:s + bs]), trie, codec.vocab, beam, k)
        items.append(it.cpu())  # results on the host, as a caller needs them (on a GPU: the batch's one sync)
        scores.append(sc.cpu())
    return torch.cat(items), torch.cat(scores)


def hf(model, codec, fn, index, hist, beam, k, bs):
    offsets = torch.as_tensor(codec.vocab.offsets)
    items, scores = [], []
    for s in range(0, len(hist), bs):
        enc = codec.encoder_inputs(model, hist[s:s + bs])
        # the encoder pass as the model defines it (causal for the all-position objective)
        hidden = BaseModelOutput(last_hidden_state=encode(model, enc))
        out = model.generate(encoder_outputs=hidden, attention_mask=enc["attention_mask"], num_beams=beam, num_return_sequences=k, max_new_tokens=codec.vocab.sid_length,
                             prefix_allowed_tokens_fn=fn, length_penalty=0.0, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
        seqs = (out.sequences[:, 1:].cpu() - offsets).tolist()
        items.append(torch.tensor([index.get(tuple(q), -2) for q in seqs]).view(-1, k))
        scores.append(out.sequences_scores.view(-1, k).cpu())
    return torch.cat(items), torch.cat(scores)


def timed(fn, *args):
    t0 = time.perf_counter()
    res = fn(*args)
    return res, time.perf_counter() - t0


def profile(run, hist, bs, gpu: bool = False, top: int = 6) -> list[dict]:
    """Where one batch's decode time goes: the `top` operators by self CPU time (torch.profiler),
    each as a share of the batch's total, plus the time spent in Python outside operators. On a
    GPU: operators by self GPU time, and the share of the batch the GPU sat idle (waiting on
    Python, callbacks, kernel launches and host syncs)."""
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        run(hist, bs)
        wall = time.perf_counter() - t0

    def self_s(e) -> float:
        return (e.self_device_time_total if gpu else e.self_cpu_time_total) / 1e6

    ops = sorted(prof.key_averages(), key=self_s, reverse=True)
    rows = [{"op": e.key, "share": round(self_s(e) / wall, 3), "calls": e.count} for e in ops[:top]]
    busy = sum(self_s(e) for e in ops)
    rows.append({"op": "(GPU idle)" if gpu else "(outside operators: Python, callbacks)",
                 "share": round(max(0.0, 1 - busy / wall), 3), "calls": None})
    return rows


def same_topk(a_items, a_scores, b_items, b_scores) -> tuple[float, float]:
    """(share of users with the same list up to ties, max |score difference|)."""
    same = 0
    for ai, asc, bi in zip(a_items, a_scores, b_items, strict=True):
        ok = True
        for r in range(len(ai)):
            tied = (asc - asc[r]).abs() < 1e-5
            ok &= bi[r].item() in ai[tied].tolist()
        same += ok
    return same / len(a_items), float((a_scores - b_scores).abs().max())


def setup(args):
    """(test histories, SID table, trained model or None, its generator config or None)."""
    ds = RecDataset.load(args.data) if (Path(args.data) / "dataset.json").exists() else load_jsonl(args.data)
    test = leave_one_out(ds.sequences(), ds.num_items).test
    idx = np.random.default_rng(0).choice(len(test), min(args.users, len(test)), replace=False)
    test_hist = torch.from_numpy(test.histories[np.sort(idx)])
    if args.model:
        trained, codec, cfg, _ = load_generator(args.model)
        return test_hist, codec.table, trained.to(args.device), cfg
    rng = np.random.default_rng(1)
    table = SIDTable.from_codes(ds.item_ids(), rng.integers(0, 256, (ds.num_items, 3)), [256] * 3)
    return test_hist, table, None, None


def model_for(mode, table, trained, cfg, device: str = "cpu"):
    """The trained model if it has this input mode, else a TIGER-size one with random weights (seed 0),
    on `device`, with the SID codec's table there too."""
    codec = SIDCodec(table, mode).to(device)
    if trained is not None and cfg.input_mode == mode:
        return trained, codec
    torch.manual_seed(0)
    return build_model(codec.vocab, GeneratorConfig(input_mode=mode)).eval().to(device), codec


@torch.no_grad()
def compare_mode(mode, table, test_hist, args, trained=None, cfg=None):
    model, codec = model_for(mode, table, trained, cfg, args.device)
    trie = PrefixTrie(table.codes, table.codebook_sizes).to(args.device)
    fn = prefix_allowed_tokens(table.codes, codec.vocab, 0)
    index = table.index()
    warm = test_hist[: args.warmup]
    row = {"mode": mode, "trained": model is trained}
    best = {}
    runs = (("ours", lambda h, bs: ours(model, codec, trie, h, args.beam, args.k, bs)),
            ("hf", lambda h, bs: hf(model, codec, fn, index, h, args.beam, args.k, bs)))
    for name, run in runs:
        per_bs = {}
        for bs in BATCH_SIZES:
            _, sec = timed(run, warm, bs)
            per_bs[bs] = round(len(warm) / sec, 1)
        bs = max(per_bs, key=per_bs.get)
        (items, scores), sec = timed(run, test_hist, bs)
        best[name] = (items, scores)
        row[name] = {"warmup_users_per_s": per_bs, "batch_size": bs, "users_per_s": round(len(test_hist) / sec, 1),
                     "seconds": round(sec, 2), mem_key(args): peak_mb(mode, name, bs, args),
                     "invalid_rate": invalid_rate(items.numpy(), len(table))}
        print(f"[{mode}] {name}: {row[name]}", flush=True)
    row["profile"] = {name: profile(run, test_hist[: row[name]["batch_size"]], row[name]["batch_size"],
                                    args.device.startswith("cuda")) for name, run in runs}
    frac, diff = same_topk(*best["ours"], *best["hf"])
    row.update(speedup=round(row["ours"]["users_per_s"] / row["hf"]["users_per_s"], 2),
               identical_topk_share=round(frac, 4), max_score_diff=diff)
    return row


@torch.no_grad()
def growth(sizes, args):
    rows = []
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for n in sizes:
        codes = rng.integers(0, 256, (n, 3))
        table = SIDTable.from_codes([str(i) for i in range(n)], codes, [256] * 3)
        t0 = time.perf_counter()
        trie = PrefixTrie(table.codes, table.codebook_sizes)
        build = time.perf_counter() - t0
        trie.to(args.device)
        codec = SIDCodec(table, "flat").to(args.device)
        model = build_model(codec.vocab, GeneratorConfig()).eval().to(args.device)
        hist = torch.from_numpy(rng.integers(0, n, (args.growth_users, 20)))
        (items, _), sec = timed(ours, model, codec, trie, hist, args.beam, args.k, 128)
        trie_mb = sum(t.numel() * t.element_size() for t in [*trie.ptr, *trie.tokens, *trie.keys, trie.leaf_item]) / 2**20
        rows.append({"items": n, "sid_length": table.sid_length, "trie_build_s": round(build, 2),
                     "trie_mb": round(trie_mb, 1), "users_per_s": round(len(hist) / sec, 1),
                     "invalid_rate": invalid_rate(items.numpy(), n)})
        print(f"[growth] {rows[-1]}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parent / "shared" / "data" / "amazon-beauty"))
    ap.add_argument("--model", help="trained generator directory (its SID table and input mode are used)")
    ap.add_argument("--users", type=int, default=1000, help="Beauty test users decoded per decoder")
    ap.add_argument("--warmup", type=int, default=512,
                    help="users used to pick each decoder's batch size (at least the largest batch size)")
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--growth-users", type=int, default=256)
    ap.add_argument("--out", default=str(HERE / "benchmarks"))
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where both decoders run")
    ap.add_argument("--memory-probe", nargs=3, metavar=("MODE", "DECODER", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.device = str(resolve_device(args.device))
    if args.memory_probe:
        return memory_probe(args)

    test_hist, table, trained, cfg = setup(args)
    modes = [compare_mode(mode, table, test_hist, args, trained, cfg) for mode in ("flat", "item")]
    grow = growth(args.sizes, args)
    result = {
        "command": " ".join(["python", "scripts/bench_decoding.py", *sys.argv[1:]]),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "device": device_name(args.device), "platform": platform.platform()},
        "beam": args.beam, "top_k": args.k, "users": len(test_hist), "sid_length": table.sid_length,
        "speedup": min(m["speedup"] for m in modes),
        "speedup_by_mode": {m["mode"]: m["speedup"] for m in modes},
        "invalid_rate": max(m["ours"]["invalid_rate"] for m in modes),
        "modes": modes, "catalogue_growth": grow,
    }
    out = Path(args.out)
    gpu = args.device.startswith("cuda")
    write_json(out / "decoding.json", result)
    lines = [
        "# Decoding benchmark: constrained beam search vs HF generate", "",
        f"Command: `{result['command']}`. Machine: {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), decoding on {device_name(args.device)}. Beam {args.beam}, "
        f"top-{args.k}, {len(test_hist):,} "
        f"Beauty test users (a fixed random sample), SID length {table.sid_length}, TIGER-size T5 "
        "(4+4 layers, d_model 128, 6 heads x 64, d_ff 1024)"
        + (", trained." if args.model else ", random weights (decoding cost does not depend on training)."), "",
        f"| input mode | decoder | best batch | users/s | peak {'GPU memory' if gpu else 'RSS'} growth (MB) | "
        "invalid rate |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in modes:
        for name, label in (("ours", "trie beam search (ours)"), ("hf", "HF generate + prefix_allowed_tokens_fn")):
            r = m[name]
            lines.append(f"| {m['mode']} | {label} | {r['batch_size']} | {r['users_per_s']} | {r[mem_key(args)]} | "
                         f"{r['invalid_rate']:.4f} |")
    lines += ["", ("Peak GPU memory growth: one batch at that decoder's best batch size, in a fresh process (torch's "
                   "peak allocated memory, reset just before decoding)." if gpu else
                   "Peak RSS growth: one batch at that decoder's best batch size, in a fresh process (the kernel's "
                   "peak-RSS mark reset just before decoding)."), ""]
    lines += [f"- **{m['mode']}**: speedup {m['speedup']}x; identical top-{args.k} for {m['identical_topk_share']:.1%} "
              f"of users (ties within 1e-5 may swap); max score difference {m['max_score_diff']:.2e}." for m in modes]
    lines += ["", "## Where the time goes (one batch at each decoder's best batch size, torch.profiler)", "",
              f"Share of the batch's wall time per operator (torch.profiler self {'GPU' if gpu else 'CPU'} time), "
              "top operators first; the last entry is "
              + ("the time the GPU sat idle (Python, HF's callback, launches, host syncs)." if gpu else
                 "the time outside any operator (Python, HF's callback and bookkeeping)."), ""]
    for m in modes:
        for name in ("ours", "hf"):
            prof_rows = ", ".join(f"`{p['op']}` {p['share']:.0%}" for p in m["profile"][name])
            lines.append(f"- **{m['mode']}, {name}**: {prof_rows}")
    lines += ["", "## Catalogue growth (our decoder, flat mode, random SIDs 3 x 256 + disambiguation)", "",
              "| items | SID length | trie build (s) | trie arrays (MB) | users/s | invalid rate |",
              "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {g['items']:,} | {g['sid_length']} | {g['trie_build_s']} | {g['trie_mb']} | {g['users_per_s']} | "
              f"{g['invalid_rate']:.4f} |" for g in grow]
    write_text(out / "decoding.md", "\n".join(lines) + "\n")
    print(f"wrote {out / 'decoding.md'}")


if __name__ == "__main__":
    main()
