"""Benchmark: today's constrained beam search against an earlier revision of it, side by side.

    python scripts/bench_beam_versions.py [--rev f34a335] [--users 1000] [--repeats 3]

Answers "is decoding slower than before on the CPU?" with a ratio measured in one run, on one
machine: `generator/beam.py` and `generator/trie.py` are read from git revision `--rev` (default:
f34a335, right after the hardening issue landed, before any of the generator issue's changes; the
device changes of 237d401 moved the trie to the model's device and removed the host syncs from the
loop) and run beside the working tree's versions, on the same TIGER-size T5 with random weights
and a bidirectional encoder (decoding cost does not depend on training), the same Beauty test
users, the same batch sizes, beam and top-k. Repetitions alternate the two versions (old, new,
new, old, ...) so drift on a noisy machine hits both alike; the median users/s of each is
reported, with the ratio new / old and whether the two return the same items and scores.
Writes benchmarks/beam_versions.json and .md (`--out` for another folder). CPU only: the old
revision predates device support."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from mmq_rec.eval.split import leave_one_out
from mmq_rec.generator.beam import constrained_beam_search
from mmq_rec.generator.model import GeneratorConfig, SIDCodec, build_model
from mmq_rec.generator.trie import PrefixTrie
from mmq_rec.recdata.io import write_json, write_text
from mmq_rec.recdata.loaders import load_jsonl
from mmq_rec.recdata.schema import RecDataset
from mmq_rec.tokenizer.sid import SIDTable

HERE = Path(__file__).resolve().parent.parent


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=HERE, check=True, capture_output=True, text=True).stdout


def load_revision(rev: str) -> tuple[types.ModuleType, types.ModuleType, str]:
    """(beam module, trie module, full commit) of `generator/` at git revision `rev`, loaded as
    private modules (the installed package is left alone)."""
    commit = git("rev-parse", rev).strip()
    mods = []
    for name in ("trie", "beam"):
        mod = types.ModuleType(f"_old_{name}")
        mod.__file__ = f"{commit[:7]}:generator/{name}.py"
        exec(compile(git("show", f"{commit}:generator/{name}.py"), mod.__file__, "exec"), mod.__dict__)
        mods.append(mod)
    trie_mod, beam_mod = mods
    beam_mod.PrefixTrie = trie_mod.PrefixTrie
    return beam_mod, trie_mod, commit


def decode_all(search, model, codec, trie, hist, beam, k, bs):
    items, scores = [], []
    for s in range(0, len(hist), bs):
        it, sc = search(model, codec.encoder_inputs(model, hist[s:s + bs]), trie, codec.vocab, beam, k)
        items.append(it.cpu())
        scores.append(sc.cpu())
    return torch.cat(items), torch.cat(scores)


@torch.no_grad()
def compare(mode, batch, table, hist, old_beam, old_trie, args) -> dict:
    codec = SIDCodec(table, mode)
    torch.manual_seed(0)
    # the bidirectional (prefix-objective) encoder: the one the old revision knows
    model = build_model(codec.vocab, GeneratorConfig(input_mode=mode, objective="prefix")).eval()
    versions = {"old": (old_beam.constrained_beam_search, old_trie.PrefixTrie(table.codes, table.codebook_sizes)),
                "new": (constrained_beam_search, PrefixTrie(table.codes, table.codebook_sizes))}
    results, speeds = {}, {"old": [], "new": []}
    for search, trie in versions.values():  # warm-up
        decode_all(search, model, codec, trie, hist[:batch], args.beam, args.k, batch)
    for r in range(args.repeats):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for name in order:
            search, trie = versions[name]
            t0 = time.perf_counter()
            results[name] = decode_all(search, model, codec, trie, hist, args.beam, args.k, batch)
            speeds[name].append(len(hist) / (time.perf_counter() - t0))
        print(f"[{mode}, batch {batch}] repeat {r + 1}: old {speeds['old'][-1]:.1f}, new {speeds['new'][-1]:.1f} users/s", flush=True)
    old_ups, new_ups = statistics.median(speeds["old"]), statistics.median(speeds["new"])
    same_items = bool(torch.equal(results["old"][0], results["new"][0]))
    diff = float((results["old"][1] - results["new"][1]).abs().nan_to_num(0.0).max())
    return {"mode": mode, "batch_size": batch, "old_users_per_s": [round(s, 1) for s in speeds["old"]],
            "new_users_per_s": [round(s, 1) for s in speeds["new"]],
            "old_median": round(old_ups, 1), "new_median": round(new_ups, 1),
            "new_over_old": round(new_ups / old_ups, 3), "identical_items": same_items, "max_score_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="f34a335", help="git revision of the earlier beam search (default: %(default)s)")
    ap.add_argument("--data", default=str(HERE.parent / "shared" / "data" / "amazon-beauty"))
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 128],
                    help="users per batch, the same for both versions (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--out", default=str(HERE / "benchmarks"))
    args = ap.parse_args()

    old_beam, old_trie, commit = load_revision(args.rev)
    ds = RecDataset.load(args.data) if (Path(args.data) / "dataset.json").exists() else load_jsonl(args.data)
    test = leave_one_out(ds.sequences(), ds.num_items).test
    idx = np.sort(np.random.default_rng(0).choice(len(test), min(args.users, len(test)), replace=False))
    hist = torch.from_numpy(test.histories[idx])
    table = SIDTable.from_codes(ds.item_ids(), np.random.default_rng(1).integers(0, 256, (ds.num_items, 3)), [256] * 3)
    modes = [compare(mode, bs, table, hist, old_beam, old_trie, args) for mode in ("flat", "item") for bs in args.batch]
    head = git("rev-parse", "HEAD").strip()
    dirty = bool(git("status", "--porcelain", "--", "generator").strip())
    result = {
        "command": " ".join(["python", "scripts/bench_beam_versions.py", *sys.argv[1:]]),
        "old_revision": commit, "new_revision": head + (" + uncommitted changes in generator/" if dirty else ""),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "device": "cpu", "platform": platform.platform()},
        "users": len(hist), "batch_sizes": args.batch, "beam": args.beam, "top_k": args.k, "repeats": args.repeats,
        "sid_length": table.sid_length, "modes": modes,
        "min_new_over_old": min(m["new_over_old"] for m in modes),
    }
    out = Path(args.out)
    write_json(out / "beam_versions.json", result)
    lines = [
        "# Beam search, today vs an earlier revision (CPU, side by side in one run)", "",
        f"Command: `{result['command']}`. Old: `generator/beam.py` and `generator/trie.py` at {commit[:7]}; "
        f"new: the working tree at {result['new_revision'][:7]}. Machine: {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads). {len(hist):,} Beauty test users, batch "
        f"sizes {', '.join(map(str, args.batch))}, beam {args.beam}, top-{args.k}, SID length {table.sid_length}, TIGER-size T5 with random "
        f"weights. {args.repeats} repetitions per version, alternating old/new; median users/s.", "",
        "| input mode | batch | old users/s (median) | new users/s (median) | new / old | same items | max score diff | "
        "old runs | new runs |",
        "|---|---:|---:|---:|---:|---|---:|---|---|",
    ]
    lines += [f"| {m['mode']} | {m['batch_size']} | {m['old_median']} | {m['new_median']} | {m['new_over_old']:.3f} | "
              f"{'yes' if m['identical_items'] else 'NO'} | {m['max_score_diff']:.1e} | "
              f"{', '.join(map(str, m['old_users_per_s']))} | {', '.join(map(str, m['new_users_per_s']))} |"
              for m in modes]
    write_text(out / "beam_versions.md", "\n".join(lines) + "\n")
    print(f"wrote {out / 'beam_versions.md'}")


if __name__ == "__main__":
    main()
