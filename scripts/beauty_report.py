"""Write benchmarks/beauty.md + beauty.json from finished `mmq train` runs and `mmq evaluate --json` outputs.

    python scripts/beauty_report.py --run "LABEL=RUN_DIR:EVAL.json[,EXCLUDED.json]" [--run ...] \
        --commands FILE.sh [--headline LABEL] [--wide LABEL=EVAL.json] [--previous benchmarks/beauty.json] \
        [--page DIR]

Runs that share a LABEL are seeds of one configuration: the report gives their mean ± std (sample
standard deviation) and a row per run. EXCLUDED.json is the same run evaluated with
`--exclude-history`; `--wide` is an evaluation with a beam of 200 and Recall@50/100/200;
`--headline` names the configuration whose means go to the JSON's `headline`; `--previous` keeps
the configurations of an earlier page exactly as they were measured (with their commands);
`--page DIR` also writes the new configurations as an `mmq benchmark`-style page (report.json,
.md, .html with figures), which `mmq report` composes with other pages (e.g. the rankers').
Nothing is computed here beyond that: it collects what the runs measured (test metrics per
popularity bucket, training steps, time and device, validation history, tokenizer quality) beside
the exact commands."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from mmq_rec.benchmark import compose_report, environment, system_entry, write_report_files
from mmq_rec.eval.report import BUCKET_TITLES, mean_std, metrics_table
from mmq_rec.recdata.io import write_json, write_text

HERE = Path(__file__).resolve().parent.parent
PUBLISHED = [  # ../shared/docs/PROTOCOL.md: (R@5, N@5, R@10, N@10), not run here
    ("TIGER (paper)", 0.0454, 0.0321, 0.0648, 0.0384),
    ("SASRec, full softmax, measured on this data (PROTOCOL.md)", 0.0545, 0.0314, 0.0848, 0.0412),
]


def load_run(run_dir: Path, eval_path: Path, excluded_path: Path | None) -> dict:
    state = json.loads((run_dir / "checkpoint" / "trainer_state.json").read_text())
    gen = json.loads((run_dir / "best" / "generator.json").read_text())
    fingerprint = json.loads((run_dir / "fingerprint.json").read_text()) if (run_dir / "fingerprint.json").is_file() else {}
    tok_quality = json.loads((Path(gen["tokenizer_dir"]) / "quality.json").read_text())
    run = {"run_dir": str(run_dir), "training": {k: v for k, v in state.items() if k != "history"},
           "train_device": gen.get("train_device") or _requested(fingerprint.get("device")),
           "valid_history": state["history"], "generator": gen,
           "tokenizer": {k: tok_quality[k] for k in ("tokenizer", "sid_length", "collision_rate", "utilisation",
                                                     "entropy")},
           "test": json.loads(eval_path.read_text())}
    if excluded_path is not None:
        run["test_excluded"] = json.loads(excluded_path.read_text())
        if not run["test_excluded"].get("exclude_history"):
            raise SystemExit(f"{excluded_path}: not an evaluation with --exclude-history")
    return run


def _requested(device: str | None) -> str:
    """A run from before runs recorded their device: what its configuration asked for."""
    return f"{device} (as configured; not recorded by the run)" if device else "not recorded"


def _device(run: dict, cpu_count: int | None = None) -> str:
    """Runs of an earlier page recorded only the evaluation device, on that page's machine."""
    if run.get("train_device"):
        return run["train_device"]
    if run.get("test", {}).get("device") == "cpu" and cpu_count:
        return f"cpu ({cpu_count} cores)"
    return "not recorded"


def _spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(float(np.mean(values)), fmt)} ± {format(float(np.std(values, ddof=1)), fmt)}"


def _headline(runs: list[dict], result: dict) -> dict:
    devices = sorted({_device(r) for r in runs})
    return {"device": "; ".join(devices), "minutes": round(max(r["training"]["train_seconds"] for r in runs) / 60, 1),
            "seeds": sorted(r["generator"]["seed"] for r in runs if r["generator"].get("seed") is not None),
            "recall@10": result["all"]["recall@10"], "ndcg@10": result["all"]["ndcg@10"],
            "tail_recall@10": result["tail"]["recall@10"],
            "std": {k: result["all"][f"{k}_std"] for k in ("recall@10", "ndcg@10")}}


def _headline_text(label: str, runs: list[dict], result: dict) -> str:
    h = _headline(runs, result)
    return (f"**Headline** ({label}): test R@10 {h['recall@10']:.4f} ± {h['std']['recall@10']:.4f}, "
            f"N@10 {h['ndcg@10']:.4f} ± {h['std']['ndcg@10']:.4f}, tail R@10 {h['tail_recall@10']:.4f}; "
            f"{len(runs)} seeds, each trained at most {h['minutes']} minutes on {h['device']}.")


def write_page(page: Path, groups: dict[str, list[dict]], ks: list[int], commands: str) -> None:
    """The new configurations as the `mmq benchmark` page shows systems: test metrics per bucket over
    the seeds, validation curves (first seed), tokenizer quality, device and commands."""
    systems, curves, tokenizers = {}, {}, {}
    for label, runs in groups.items():
        tok = runs[0]["tokenizer"]["tokenizer"]
        systems[f"generator {label}"] = system_entry("generator", [
            {"seed": r["generator"].get("seed"), "metrics": r["test"]["metrics"],
             "users_per_second": r["test"].get("users_per_second"), "device": _device(r),
             "train_minutes": r["training"]["train_seconds"] / 60} for r in runs], tokenizer=tok)
        curves[f"generator {label}"] = {"unit": "step", "metric": "ndcg@10",
                                        "points": [[h["step"], h["ndcg@10"]] for h in runs[0]["valid_history"]]}
        quality = json.loads((Path(runs[0]["generator"]["tokenizer_dir"]) / "quality.json").read_text())
        tokenizers.setdefault(tok, quality)
    first = next(iter(groups.values()))[0]
    report = compose_report(
        f"Generators on {first['generator'].get('dataset', 'Beauty')}", systems, ks,
        dataset=first["generator"].get("dataset", ""),
        subtitle="Test split, leave-one-out, full catalogue, beam 20, history not excluded; checkpoints chosen "
                 "on validation NDCG@10; mean ± std over seeds. Written by scripts/beauty_report.py (beauty.md "
                 "has the history-excluded and wide-beam tables).",
        environment_=environment(_device(first)), command=commands,
        config=json.dumps({k: first["generator"][k] for k in first["generator"] if k not in ("valid",)}, indent=1),
        tokenizers=tokenizers, curves=curves, curve_seed=first["generator"].get("seed"))
    page.mkdir(parents=True, exist_ok=True)
    write_report_files(report, page)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR:EVAL_JSON (repeat a LABEL per seed)")
    ap.add_argument("--commands", required=True, help="shell file with the exact commands that were run")
    ap.add_argument("--notes", default="", help="Markdown file with notes to append")
    ap.add_argument("--headline", help="LABEL of the configuration whose means are the JSON's `headline`")
    ap.add_argument("--wide", action="append", default=[], help="LABEL=EVAL_JSON: a beam-200 evaluation (R@50/100/200)")
    ap.add_argument("--previous", help="an earlier beauty.json whose configurations are kept as measured")
    ap.add_argument("--page", help="also write the new configurations as an `mmq benchmark`-style page into this directory")
    ap.add_argument("--out", default=str(HERE / "benchmarks"))
    args = ap.parse_args()
    groups: dict[str, list[dict]] = {}
    for spec in args.run:
        label, _, rest = spec.partition("=")
        run_dir, _, evals = rest.rpartition(":")
        eval_path, _, excluded = evals.partition(",")
        groups.setdefault(label, []).append(load_run(Path(run_dir), Path(eval_path), Path(excluded) if excluded else None))
    new_labels = list(groups)
    previous_commands, wide = "", {}
    if args.previous:
        prev = json.loads(Path(args.previous).read_text())
        previous_commands = "\n\n".join(c for c in (prev.get("commands", ""), prev.get("previous_commands", "")) if c)
        wide.update(prev.get("wide_beam", {}))
        cpus = prev.get("machine", {}).get("cpu_count")
        for label, conf in prev["configurations"].items():
            if label in groups:
                raise SystemExit(f"--previous {args.previous}: configuration {label!r} is also a new --run label")
            groups[label] = [{**r, "train_device": _device(r, cpus)} for r in conf["runs"]]
    ks = [5, 10, 20]
    results = {label: mean_std([r["test"]["metrics"] for r in runs]) for label, runs in groups.items()}
    machine = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()}
    devices = sorted({_device(r) for runs in groups.values() for r in runs})
    parts = ["# Amazon Beauty, full protocol: generative retrieval",
             "Leave-one-out (TIGER/P5), history 20, full catalogue, beam 20, test split; each run's best "
             "checkpoint was chosen on validation NDCG@10 only. Where a configuration has several runs (seeds), "
             "cells are mean ± sample std over them. Training devices, as the runs recorded them: "
             + "; ".join(devices) + ". Every number below was produced by the commands at the end of this page."]
    if args.headline:
        parts.append(_headline_text(args.headline, groups[args.headline], results[args.headline]))
    rows = ["| configuration | runs | device | SID length | collisions | steps | train time | valid NDCG@10 (best) | "
            "test decode | invalid-ID rate |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, runs in groups.items():
        q = runs[0]["tokenizer"]
        rows.append(f"| {label} | {len(runs)} | {_device(runs[0])} | {q['sid_length']} | {q['collision_rate']:.4f} | "
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
    excluded = {label: mean_std([r["test_excluded"]["metrics"] for r in runs]) for label, runs in groups.items()
                if all("test_excluded" in r for r in runs)}
    if excluded:
        parts += ["## History excluded (RecBole / eSASRec convention)",
                  "The same checkpoints, decoded so that no item already in the user's history is recommended "
                  "(Beauty has no repeat purchases); the TIGER protocol above does not exclude them.",
                  metrics_table(excluded, "all", ks)]
    for spec in args.wide:
        label, _, path = spec.partition("=")
        wide[label] = json.loads(Path(path).read_text())
    if wide:
        wks = sorted({int(k.split("@")[1]) for w in wide.values() for k in w["metrics"]["all"] if k.startswith("recall@")})
        rows = ["| configuration (one run) | beam | users | " + " | ".join(f"R@{k}" for k in wks) + " |",
                "|---|---:|---:|" + "---:|" * len(wks)]
        rows += [f"| {label} | {w['beam_width']} | {w['metrics']['all']['users']:,} | "
                 + " | ".join(f"{w['metrics']['all'][f'recall@{k}']:.4f}" for k in wks) + " |" for label, w in wide.items()]
        parts += ["## Wide beams: the generator as a candidate retriever", "\n".join(rows)]
    pub = ["| model (published, not run here) | R@5 | N@5 | R@10 | N@10 |", "|---|---:|---:|---:|---:|"]
    pub += [f"| {n} | {a:.4f} | {b:.4f} | {c:.4f} | {d:.4f} |" for n, a, b, c, d in PUBLISHED]
    parts += ["## For reference", "\n".join(pub)]
    if args.notes:
        parts += ["## Notes", Path(args.notes).read_text().strip()]
    commands = Path(args.commands).read_text().strip()
    parts += ["## Commands", "```bash\n" + commands + "\n```"]
    if previous_commands:
        parts += ["## Commands of the earlier runs (kept from the previous page)", "```bash\n" + previous_commands + "\n```"]
    out = Path(args.out)
    write_text(out / "beauty.md", "\n\n".join(parts) + "\n")
    doc = {"machine": machine, "devices": devices, "commands": commands, "previous_commands": previous_commands,
           "new_configurations": new_labels,
           "configurations": {label: {"mean_std": results[label], "runs": runs} for label, runs in groups.items()}}
    if args.headline:
        doc = {"headline": _headline(groups[args.headline], results[args.headline]), **doc}
    if excluded:
        doc["history_excluded"] = excluded
    if wide:
        doc["wide_beam"] = wide
    write_json(out / "beauty.json", doc)
    if args.page:
        write_page(Path(args.page), {label: groups[label] for label in new_labels}, ks, commands)
    print(f"wrote {out / 'beauty.md'}")


if __name__ == "__main__":
    main()
