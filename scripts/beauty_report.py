"""Write benchmarks/beauty.md + beauty.json from finished `mmq train` runs and `mmq evaluate --json` outputs.

    python scripts/beauty_report.py --run "LABEL=RUN_DIR:EVAL.json" [--run ...] --commands FILE.sh

Runs that share a LABEL are seeds of one configuration: the report gives their mean ± std (sample
standard deviation) and a row per run. Nothing is computed here beyond that: it collects what the
runs measured (test metrics per popularity bucket, training steps and time, validation history,
tokenizer quality) beside the exact commands."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from mmq_rec.eval.report import BUCKET_TITLES, mean_std, metrics_table
from mmq_rec.recdata.io import write_json, write_text

HERE = Path(__file__).resolve().parent.parent
PUBLISHED = [  # ../shared/docs/PROTOCOL.md: (R@5, N@5, R@10, N@10), not run here
    ("TIGER (paper)", 0.0454, 0.0321, 0.0648, 0.0384),
    ("SASRec, full softmax, measured on this data (PROTOCOL.md)", 0.0545, 0.0314, 0.0848, 0.0412),
]


def load_run(run_dir: Path, eval_path: Path) -> dict:
    state = json.loads((run_dir / "checkpoint" / "trainer_state.json").read_text())
    gen = json.loads((run_dir / "best" / "generator.json").read_text())
    tok_quality = json.loads((Path(gen["tokenizer_dir"]) / "quality.json").read_text())
    return {"run_dir": str(run_dir), "training": {k: v for k, v in state.items() if k != "history"},
            "valid_history": state["history"], "generator": gen,
            "tokenizer": {k: tok_quality[k] for k in ("tokenizer", "sid_length", "collision_rate", "utilisation",
                                                      "entropy")},
            "test": json.loads(eval_path.read_text())}


def _spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(float(np.mean(values)), fmt)} ± {format(float(np.std(values, ddof=1)), fmt)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR:EVAL_JSON (repeat a LABEL per seed)")
    ap.add_argument("--commands", required=True, help="shell file with the exact commands that were run")
    ap.add_argument("--notes", default="", help="Markdown file with notes to append")
    ap.add_argument("--out", default=str(HERE / "benchmarks"))
    args = ap.parse_args()
    groups: dict[str, list[dict]] = {}
    for spec in args.run:
        label, _, rest = spec.partition("=")
        run_dir, _, eval_path = rest.rpartition(":")
        groups.setdefault(label, []).append(load_run(Path(run_dir), Path(eval_path)))
    ks = [5, 10, 20]
    results = {label: mean_std([r["test"]["metrics"] for r in runs]) for label, runs in groups.items()}
    machine = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()}
    parts = ["# Amazon Beauty, full protocol: generative retrieval",
             "Leave-one-out (TIGER/P5), history 20, full catalogue, beam 20, test split; each run's best "
             "checkpoint was chosen on validation NDCG@10 only. Where a configuration has several runs (seeds), "
             "cells are mean ± sample std over them. Device: CPU (" + f"{os.cpu_count()} cores" + "), no GPU lent "
             "to this task. Every number below was produced by the commands at the end of this page."]
    rows = ["| configuration | runs | SID length | collisions | steps | train time | valid NDCG@10 (best) | "
            "test decode | invalid-ID rate |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, runs in groups.items():
        q = runs[0]["tokenizer"]
        rows.append(f"| {label} | {len(runs)} | {q['sid_length']} | {q['collision_rate']:.4f} | "
                    f"{_spread([r['training']['step'] for r in runs], '.0f')} | "
                    f"{_spread([r['training']['train_seconds'] / 60 for r in runs], '.0f')} min | "
                    f"{_spread([r['training']['best_metric'] for r in runs], '.4f')} | "
                    f"{_spread([r['test']['users_per_second'] for r in runs], '.0f')} users/s | "
                    f"{max(r['test']['metrics']['all']['invalid_rate'] for r in runs):.4f} |")
    parts.append("\n".join(rows))
    for g in BUCKET_TITLES:
        if any(r.get(g, {}).get("users") for r in results.values()):
            parts += [f"## {BUCKET_TITLES[g]}", metrics_table(results, g, ks)]
    per_run = ["| configuration | run | steps | best step (valid NDCG@10) | R@10 | N@10 | tail R@10 |",
               "|---|---|---:|---|---:|---:|---:|"]
    for label, runs in groups.items():
        for r in runs:
            t, m = r["training"], r["test"]["metrics"]
            run = Path(r["run_dir"])
            per_run.append(f"| {label} | {run.parent.name}/{run.name} | {t['step']:,} | {t['best_step']} "
                           f"({t['best_metric']:.4f}) | {m['all']['recall@10']:.4f} | {m['all']['ndcg@10']:.4f} | "
                           f"{m.get('tail', {}).get('recall@10', float('nan')):.4f} |")
    parts += ["## Every run", "\n".join(per_run)]
    pub = ["| model (published, not run here) | R@5 | N@5 | R@10 | N@10 |", "|---|---:|---:|---:|---:|"]
    pub += [f"| {n} | {a:.4f} | {b:.4f} | {c:.4f} | {d:.4f} |" for n, a, b, c, d in PUBLISHED]
    parts += ["## For reference", "\n".join(pub)]
    if args.notes:
        parts += ["## Notes", Path(args.notes).read_text().strip()]
    commands = Path(args.commands).read_text().strip()
    parts += ["## Commands", "```bash\n" + commands + "\n```"]
    out = Path(args.out)
    write_text(out / "beauty.md", "\n\n".join(parts) + "\n")
    write_json(out / "beauty.json", {"machine": machine, "device": "cpu", "commands": commands,
                                     "configurations": {label: {"mean_std": results[label], "runs": runs}
                                                        for label, runs in groups.items()}})
    print(f"wrote {out / 'beauty.md'}")


if __name__ == "__main__":
    main()
