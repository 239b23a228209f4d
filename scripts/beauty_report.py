"""Write benchmarks/beauty.md + beauty.json from finished `mmq train` runs and `mmq evaluate --json` outputs.

    python scripts/beauty_report.py --run "LABEL=RUN_DIR:EVAL.json" [--run ...] --commands FILE.sh

Nothing is computed here: it collects what the runs measured (test metrics per popularity bucket,
training steps and time, validation history, tokenizer quality) beside the exact commands."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from eval.report import BUCKET_TITLES, metrics_table
from recdata.io import write_json, write_text

HERE = Path(__file__).resolve().parent.parent
PUBLISHED = [  # ../shared/docs/PROTOCOL.md: (R@5, N@5, R@10, N@10), not run here
    ("TIGER (paper)", 0.0454, 0.0321, 0.0648, 0.0384),
    ("SASRec, full softmax, measured on this data (PROTOCOL.md)", 0.0545, 0.0314, 0.0848, 0.0412),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR:EVAL_JSON")
    ap.add_argument("--commands", required=True, help="shell file with the exact commands that were run")
    ap.add_argument("--notes", default="", help="Markdown file with notes to append")
    ap.add_argument("--out", default=str(HERE / "benchmarks"))
    args = ap.parse_args()
    runs = {}
    for spec in args.run:
        label, _, rest = spec.partition("=")
        run_dir, _, eval_path = rest.rpartition(":")
        state = json.loads((Path(run_dir) / "checkpoint" / "trainer_state.json").read_text())
        ev = json.loads(Path(eval_path).read_text())
        gen = json.loads((Path(run_dir) / "best" / "generator.json").read_text())
        tok_quality = json.loads((Path(gen["tokenizer_dir"]) / "quality.json").read_text())
        runs[label] = {"training": {k: v for k, v in state.items() if k != "history"}, "valid_history": state["history"],
                       "generator": gen, "tokenizer": {k: tok_quality[k] for k in (
                           "tokenizer", "sid_length", "collision_rate", "utilisation", "entropy")}, "test": ev}
    ks = [5, 10, 20]
    results = {label: r["test"]["metrics"] for label, r in runs.items()}
    machine = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()}
    parts = ["# Amazon Beauty, full protocol: generative retrieval",
             "Leave-one-out (TIGER/P5), history 20, full catalogue, beam 20, test split; the best checkpoint was "
             "chosen on validation NDCG@10 only. Device: CPU (" + f"{os.cpu_count()} cores" + "), no GPU lent to this "
             "task. Every number below was produced by the commands at the end of this page."]
    rows = ["| SIDs | tokenizer SID length | collisions | steps | train time | best step (valid NDCG@10) | "
            "test decode | invalid-ID rate |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for label, r in runs.items():
        t, q, ev = r["training"], r["tokenizer"], r["test"]
        rows.append(f"| {label} | {q['sid_length']} | {q['collision_rate']:.4f} | {t['step']:,} | "
                    f"{t['train_seconds'] / 60:.0f} min | {t['best_step']} ({t['best_metric']:.4f}) | "
                    f"{ev['decode_seconds']:.0f} s ({ev['users_per_second']} users/s) | "
                    f"{ev['metrics']['all']['invalid_rate']:.4f} |")
    parts.append("\n".join(rows))
    for g in BUCKET_TITLES:
        if any(r.get(g, {}).get("users") for r in results.values()):
            parts += [f"## {BUCKET_TITLES[g]}", metrics_table(results, g, ks)]
    pub = ["| model (published, not run here) | R@5 | N@5 | R@10 | N@10 |", "|---|---:|---:|---:|---:|"]
    pub += [f"| {n} | {a:.4f} | {b:.4f} | {c:.4f} | {d:.4f} |" for n, a, b, c, d in PUBLISHED]
    parts += ["## For reference", "\n".join(pub)]
    if args.notes:
        parts += ["## Notes", Path(args.notes).read_text().strip()]
    commands = Path(args.commands).read_text().strip()
    parts += ["## Commands", "```bash\n" + commands + "\n```"]
    out = Path(args.out)
    write_text(out / "beauty.md", "\n\n".join(parts) + "\n")
    write_json(out / "beauty.json", {"machine": machine, "device": "cpu", "runs": runs, "commands": commands})
    print(f"wrote {out / 'beauty.md'}")


if __name__ == "__main__":
    main()
