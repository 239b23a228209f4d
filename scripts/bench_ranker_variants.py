"""Ranker variants, one seed each, compared on validation by popularity bucket (the test column is
shown but chooses nothing) -> benchmarks/ranker_variants.md + .json. Written for the question
"what lifts tail recall", where one seed's validation numbers screen ideas before 3-seed runs.

    python scripts/bench_ranker_variants.py --dataset DATA --work WORK_DIR \\
        --variant 'NAME=TOKENIZER_DIR --ranker.representation id+sid_prefix ...' [--variant ...] \\
        [--logit-adjust 0.1 0.3] [-- OVERRIDES]

Each variant is an `mmq rank train` run in WORK_DIR/NAME (reused or resumed when rerun); its words
after the tokenizer directory are configuration overrides, added to the common OVERRIDES.
`--logit-adjust T ...` also scores the first two variants with `score - T log(1 + n)` (n: the
item's training count), a popularity correction applied at ranking time."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from mmq_rec.benchmark import split_overrides
from mmq_rec.eval.metrics import evaluate_rankings
from mmq_rec.pipeline import Pipeline
from mmq_rec.ranker.rank import rank_full
from mmq_rec.recdata.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent.parent
BUCKETS = ("all", "head", "tail", "long_tail", "cold")


def adjusted_recall(pipe: Pipeline, ds, run: Path, split_name: str, tau: float) -> dict[str, float]:
    """R@10 by bucket of a trained ranker whose scores are lowered by tau * log(1 + training count)."""
    part = getattr(pipe.split(ds), split_name)
    top, _ = rank_full(pipe.ranker(run / "best", ds), part.histories, 10, popularity_correction=tau)
    res = evaluate_rankings(top, part.targets, ds.num_items, [10], pipe.buckets(ds).of_targets(part.targets))
    return {b: res[b]["recall@10"] for b in BUCKETS if b in res}


def main() -> None:
    argv, overrides = split_overrides(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--variant", action="append", required=True, help="'NAME=TOKENIZER_DIR [OVERRIDES]'")
    ap.add_argument("--logit-adjust", nargs="*", type=float, default=[])
    ap.add_argument("--out", default=str(HERE / "benchmarks" / "ranker_variants"))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    rows, runs = {}, {}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        tok, *extra = shlex.split(rest)
        pipe = Pipeline.from_config(overrides=[*overrides, *extra], show_progress=False, log=log)
        ds = pipe.dataset(args.dataset)
        run = Path(args.work) / name
        log(f"== {name}: {tok} {' '.join(extra)}")
        trained = pipe.rank_train(ds, tok, run)
        q = read_json(Path(tok) / "quality.json")
        rows[name] = {"tokenizer": tok, "sids": f"{q['tokenizer']} {q['codebook_sizes']}, {'+'.join(q['modalities'])}",
                      "overrides": extra, "epochs": trained["epochs"],
                      "best_epoch": trained["best_epoch"], "train_minutes": round(trained["train_seconds"] / 60, 1),
                      **{s: {b: v["recall@10"] for b, v in pipe.rank_evaluate(ds, run / "best", split_name=s)
                             ["metrics"].items() if b in BUCKETS} for s in ("valid", "test")}}
        runs[name] = (pipe, ds, run)
    adjusted = {}
    for name in list(runs)[:2] if args.logit_adjust else []:
        pipe, ds, run = runs[name]
        adjusted[name] = {str(t): {s: adjusted_recall(pipe, ds, run, s, t) for s in ("valid", "test")}
                          for t in args.logit_adjust}
    env = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d")}
    cmd = "python scripts/bench_ranker_variants.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_json(Path(args.out).with_suffix(".json"), {"generated_by": "scripts/bench_ranker_variants.py",
                                                     "command": cmd, "environment": env, "overrides": overrides,
                                                     "variants": rows, "logit_adjusted": adjusted})
    write_text(Path(args.out).with_suffix(".md"), render(cmd, env, rows, adjusted))


def render(cmd: str, env: dict, rows: dict, adjusted: dict) -> str:
    first = next(iter(rows))

    def cells(r: dict, ref: dict) -> str:
        return " | ".join(f"{r[b]:.4f}" for b in BUCKETS if b in r) + f" | {r['tail'] / max(ref['tail'], 1e-12):.2f}×"

    head = "| variant | SIDs (tokenizer, codebooks, modalities) | overrides | epochs (best) | " + " | ".join(
        f"valid R@10 {b}" for b in BUCKETS) + f" | valid tail / {first}'s | " + " | ".join(
        f"test R@10 {b}" for b in BUCKETS) + f" | test tail / {first}'s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['sids']} | `{' '.join(r['overrides'])}` | {r['epochs']} ({r['best_epoch']}) | "
                     + cells(r["valid"], rows[first]["valid"]) + " | " + cells(r["test"], rows[first]["test"]) + " |")
    out = ["# Ranker variants: what lifts tail recall (one seed, chosen on validation)",
           f"Measured on the CPU ({env['machine']}, torch {env['torch']}), {env['date']}. One seed per variant: "
           "differences under about 0.003 are within seed noise (see the 3-seed std in ranker.md). "
           "Buckets: head = the top 20% of items by training count, tail = the rest, long tail = the bottom 25%.",
           f"Command: `{cmd}`", "\n".join(lines)]
    if adjusted:
        names = list(adjusted)
        al = ["| T | " + " | ".join(f"{n}: valid all | valid tail | test all | test tail" for n in names)
              + (f" | tail {names[1]} / {names[0]}, valid | test |" if len(names) == 2 else " |")]
        al.append("|" + "---:|" * (al[0].count("|") - 1))
        for t in adjusted[names[0]]:
            r = [adjusted[n][t] for n in names]
            line = f"| {t} | " + " | ".join(f"{x['valid']['all']:.4f} | {x['valid']['tail']:.4f} | {x['test']['all']:.4f} | "
                                           f"{x['test']['tail']:.4f}" for x in r)
            if len(r) == 2:
                line += " | " + " | ".join(f"{r[1][s]['tail'] / max(r[0][s]['tail'], 1e-12):.2f}×" for s in ("valid", "test"))
            al.append(line + " |")
        out += ["## Popularity correction at ranking time: score − T·log(1 + n)",
                "n is the item's training count; T = 0 is the trained ranker as it is.", "\n".join(al)]
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    main()
