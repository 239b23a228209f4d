"""Ranker benchmark -> benchmarks/ranker.md + ranker.json: every item representation over the full
catalogue (seeds: mean ± std), per popularity bucket, with the user's history kept (TIGER's
protocol) and excluded; a learning curve; the best SID ranker (chosen on validation) re-ranking a
generator's top-N candidates; and (--calibrate) that ranker calibrated to the item-ID ranker's
accuracy (`mmq rank calibrate --reference`, per seed).

    python scripts/bench_ranker.py --dataset DATA --tokenizer rqkmeans=TOK_DIR [--tokenizer mmq=TOK_DIR] \\
        --work WORK_DIR [--generator GEN_DIR] [--seeds 0 1 2] [--single-seed-rows LABEL ...] [--skip LABEL ...] \\
        [--calibrate] [--previous OLD_RANKER_JSON] [-- OVERRIDES]

Training runs live in WORK_DIR/<label>-s<seed> and are resumed or reused when the script is rerun
(each is an `mmq rank train` run directory). With --previous, a run whose directory is gone is read
from an earlier ranker.json (its recorded training summary and test metrics; marked as such in the
page), as is its generate -> rank section when no --generator is given; runs present in both are
checked to reproduce it. OVERRIDES are configuration overrides for every run (e.g. `--ranker.epochs 30`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmq_rec.benchmark import compose_report, environment, split_overrides, system_entry, write_report_files
from mmq_rec.config import to_yaml
from mmq_rec.eval.report import BUCKET_TITLES, mean_std, metrics_table
from mmq_rec.pipeline import Pipeline
from mmq_rec.recdata.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent.parent
PUBLISHED = [  # ../shared/docs/PROTOCOL.md, not run here
    "SASRec with full-softmax cross-entropy, measured on this data by the protocol's authors (d 64, 2 blocks): "
    "R@10 .0848 / N@10 .0412",
    "TIGER (paper): R@10 .0648 / N@10 .0384",
    "eSASRec (RecSys'25; history excluded): R@10 .0928 / N@10 .0523",
]


def _label(tok: str | None, rep: str) -> str:
    return rep if tok is None else f"{rep} ({tok})"


def _slug(label: str) -> str:
    return label.replace(", ", "-").replace(" ", "").replace("(", "-").replace(")", "").replace("+", "_")


def main() -> None:
    argv, overrides = split_overrides(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--tokenizer", action="append", required=True, help="NAME=TOKENIZER_DIR (repeatable)")
    ap.add_argument("--work", required=True, help="directory for the training runs (reused when rerun)")
    ap.add_argument("--representations", nargs="+", default=["id", "sid", "sid_prefix", "id+sid", "id+sid_prefix"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--single-seed-rows", nargs="*", default=[],
                    help="labels (e.g. 'sid (mmq)') trained with the first seed only, to save time")
    ap.add_argument("--skip", nargs="*", default=[], help="labels of rows not to run (e.g. 'sid_prefix (mmq)')")
    ap.add_argument("--generator", help="generator run's best/ directory, for generate -> rank")
    ap.add_argument("--candidates", nargs="+", type=int, default=[50, 100, 200])
    ap.add_argument("--rerank-users", type=int, default=0,
                    help="generate -> rank on a fixed random sample of this many test users (0 = all)")
    ap.add_argument("--calibrate", action="store_true",
                    help="add the best SID ranker calibrated to the same seed's item-ID ranker (validation R@10)")
    ap.add_argument("--previous", help="an earlier ranker.json: runs whose directories are gone are read from it")
    ap.add_argument("--out", default=str(HERE / "benchmarks" / "ranker"))
    ap.add_argument("--page", help="also write the `mmq benchmark` page (report.html/.md/.json) into this directory")
    args = ap.parse_args(argv)
    toks = dict(t.split("=", 1) for t in args.tokenizer)
    work = Path(args.work)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    def pipe_for(seed: int, rep: str | None = None) -> Pipeline:
        extra = ["--ranker.representation", rep] if rep else []
        return Pipeline.from_config(overrides=[*overrides, *extra, "--seed", str(seed)], show_progress=False,
                                    log=lambda s: print(s, file=sys.stderr, flush=True))

    evaluator = pipe_for(args.seeds[0])  # one split, one user sample for every run
    if evaluator.cfg.eval.cold_start_fraction > 0 and len(args.seeds) > 1:
        sys.exit("bench_ranker: a cold-start split is drawn by the seed: run one seed per invocation")
    if 10 not in evaluator.cfg.eval.ks:
        sys.exit("bench_ranker: the report is about Recall@10: eval.ks must include 10")
    ks = list(evaluator.cfg.eval.ks)
    ds = evaluator.dataset(args.dataset)
    rows: list[tuple[str, str, str]] = []  # (label, tokenizer name, representation)
    for rep in args.representations:
        if rep == "id":  # does not read the SIDs: one row, trained with the first tokenizer's table
            rows.append((_label(None, rep), next(iter(toks)), rep))
        else:
            rows += [(_label(t, rep), t, rep) for t in toks]
    rows = [r for r in rows if r[0] not in args.skip]
    previous = read_json(Path(args.previous)) if args.previous else None
    metric = evaluator.cfg.ranker.metric
    runs: dict[str, list[dict]] = {}
    reproduced: dict[str, float] = {}  # "label, seed s": largest |difference| from the previous page's test metrics
    for seed in args.seeds:  # every row's first seed before any row's second
        for label, tok, rep in rows:
            if seed != args.seeds[0] and label in args.single_seed_rows:
                continue
            out = work / f"{_slug(label)}-s{seed}"
            old = _previous_run(previous, label, seed, metric)
            if old is not None and not (out / "best").is_dir():
                print(f"== {label}, seed {seed}: read from {args.previous}", file=sys.stderr, flush=True)
                runs.setdefault(label, []).append(old)
                continue
            pipe = pipe_for(seed, rep)
            print(f"== {label}, seed {seed} -> {out}", file=sys.stderr, flush=True)
            trained = pipe.rank_train(pipe.dataset(args.dataset), toks[tok], out)
            full = evaluator.rank_evaluate(ds, out / "best")
            excl = evaluator.rank_evaluate(ds, out / "best", exclude_history=True)
            runs.setdefault(label, []).append({"seed": seed, "run": str(out), "train": trained, "test": full,
                                               "test_history_excluded": excl})
            if old is not None:
                reproduced[f"{label}, seed {seed}"] = _largest_difference(old["test"]["metrics"], full["metrics"])
    device = next((r["test"]["device"] for rs in runs.values() for r in rs if not r.get("previous")),
                  previous["environment"]["device"] if previous else "?")

    sid_labels = [label for label, _, rep in rows if rep != "id"]
    # rows are compared on the seeds they all have (single-seed rows have only the first)
    shared = set.intersection(*({r["seed"] for r in runs[lb]} for lb in sid_labels)) if sid_labels else set()

    def valid_mean(label: str) -> float:
        return float(np.mean([r["train"][f"best_valid_{metric}"] for r in runs[label] if r["seed"] in shared]))

    best_sid = max(sid_labels, key=valid_mean) if sid_labels else None
    id_label = next((label for label, _, rep in rows if rep == "id"), None)

    calibrated, id_calibrated_t, id_runs = None, [], []
    if args.calibrate and best_sid and id_label:
        calibrated = f"{best_sid}, calibrated"
        refs = {r["seed"]: r for r in runs[id_label]}
        for r in runs[best_sid]:
            if r["seed"] not in refs or r.get("previous") or refs[r["seed"]].get("previous"):
                sys.exit(f"bench_ranker: --calibrate needs the run directories of {best_sid} and {id_label}, seed "
                         f"{r['seed']} (one was read from --previous)")
            ref = Path(refs[r["seed"]]["run"]) / "best"
            # the same rule on the item-ID ranker itself (T = 0 leaves it as it is)
            id_out = work / f"{_slug(id_label)}-calibrated-s{r['seed']}"
            id_cal = evaluator.rank_calibrate(ds, ref, id_out, reference=ref)
            id_calibrated_t.append(id_cal["chosen"])
            id_runs.append({"seed": r["seed"], "run": str(id_out), "train": refs[r["seed"]]["train"],
                            "calibration": id_cal, "test": evaluator.rank_evaluate(ds, id_out),
                            "test_history_excluded": evaluator.rank_evaluate(ds, id_out, exclude_history=True)}
                           if id_cal["chosen"] else {**refs[r["seed"]], "calibration": id_cal})
            out = work / f"{_slug(calibrated)}-s{r['seed']}"
            cal = evaluator.rank_calibrate(ds, Path(r["run"]) / "best", out, reference=ref)
            print(f"== {calibrated}, seed {r['seed']}: T = {cal['chosen']} (item-ID ranker: {id_cal['chosen']}) "
                  f"-> {out}", file=sys.stderr, flush=True)
            runs.setdefault(calibrated, []).append({
                "seed": r["seed"], "run": str(out), "train": r["train"], "calibration": cal,
                "test": evaluator.rank_evaluate(ds, out), "test_history_excluded":
                    evaluator.rank_evaluate(ds, out, exclude_history=True)})
        if any(id_calibrated_t):  # else the row would repeat the item-ID ranker's
            runs[f"{id_label}, calibrated"] = id_runs
    agg = {label: mean_std([r["test"]["metrics"] for r in rs]) for label, rs in runs.items()}
    agg_excl = {label: mean_std([r["test_history_excluded"]["metrics"] for r in rs]) for label, rs in runs.items()}

    rerank: dict[str, dict] = {}
    rerank_previous = False
    if not args.generator and previous and previous.get("rerank") and previous.get("best_sid") == best_sid:
        rerank, rerank_previous = previous["rerank"], True
        words = shlex.split(previous["command"])
        args.generator = words[words.index("--generator") + 1] if "--generator" in words else "?"
    elif args.generator and best_sid:
        for n in args.candidates:
            per_seed = []
            for r in runs[best_sid]:
                g = evaluator.rank_evaluate(ds, Path(r["run"]) / "best", generator=args.generator, candidates=n,
                                            max_users=args.rerank_users)
                f = evaluator.rank_evaluate(ds, Path(r["run"]) / "best", max_users=args.rerank_users)
                per_seed.append({"seed": r["seed"], "generate_rank": g, "full_same_users": f})
            rerank[str(n)] = {"per_seed": per_seed,
                "users": per_seed[0]["generate_rank"]["users"],
                "generate_rank": mean_std([p["generate_rank"]["metrics"] for p in per_seed]),
                "full_same_users": mean_std([p["full_same_users"]["metrics"] for p in per_seed]),
                "candidate_recall": float(np.mean([p["generate_rank"]["candidate_recall"] for p in per_seed])),
                "fusion_weights": [p["generate_rank"]["fusion_weight"] for p in per_seed],
                "decode_seconds": [p["generate_rank"]["decode_seconds"] for p in per_seed],
            }
            rr = rerank[str(n)]
            full10 = rr["full_same_users"]["all"]["recall@10"]
            rr["ratio_recall@10"] = rr["generate_rank"]["all"]["recall@10"] / full10 if full10 > 0 else None

    summary = {}
    if id_label and best_sid:
        a, b = agg[id_label], agg[best_sid]
        summary = {
            "id_recall10": a["all"]["recall@10"], "id_tail_recall10": a["tail"]["recall@10"],
            "best_sid": best_sid, "best_sid_recall10": b["all"]["recall@10"],
            "best_sid_tail_recall10": b["tail"]["recall@10"],
            "best_sid_cold_recall10": b.get("cold", {}).get("recall@10"),  # None: no cold test user
            "tail_ratio": b["tail"]["recall@10"] / max(a["tail"]["recall@10"], 1e-12),
            "pipeline_to_full_ratio": max((v["ratio_recall@10"] for v in rerank.values()
                                           if v["ratio_recall@10"] is not None), default=None),
        }
        if calibrated:
            c = agg[calibrated]
            summary.update({
                "calibrated_sid": calibrated, "calibrated_t": [r["calibration"]["chosen"] for r in runs[calibrated]],
                "id_calibrated_t": id_calibrated_t,
                "calibrated_sid_recall10": c["all"]["recall@10"], "calibrated_sid_tail_recall10": c["tail"]["recall@10"],
                "calibrated_sid_cold_recall10": c.get("cold", {}).get("recall@10"),
                "calibrated_tail_ratio": c["tail"]["recall@10"] / max(a["tail"]["recall@10"], 1e-12)})
    env = {"device": device, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "torch": torch.__version__, "python": platform.python_version(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "date": time.strftime("%Y-%m-%d")}
    cmd = "python scripts/bench_ranker.py " + " ".join(sys.argv[1:])
    write_json(Path(args.out).with_suffix(".json"), {
        "generated_by": "scripts/bench_ranker.py", "command": cmd, "environment": env, "ks": ks,
        **summary, "config": {"overrides": overrides, "ranker": json.loads(json.dumps(evaluator.cfg.ranker.__dict__))},
        "results": agg, "results_history_excluded": agg_excl, "rerank": rerank,
        "previous": {"path": args.previous, "command": previous["command"], "date": previous["environment"]["date"],
                     "rerank_read": rerank_previous, "reproduced": reproduced} if previous else None,
        "runs": {label: [{"seed": r["seed"], "run": r["run"], "epochs": r["train"]["epochs"],
                          "best_epoch": r["train"]["best_epoch"], "train_seconds": r["train"]["train_seconds"],
                          f"best_valid_{metric}": r["train"][f"best_valid_{metric}"],
                          "valid_history": r["train"]["history"], "test": r["test"]["metrics"],
                          "test_history_excluded": r["test_history_excluded"]["metrics"],
                          **({"previous": True} if r.get("previous") else {}),
                          **({"calibration": {k: v for k, v in r["calibration"].items() if k != "output"}}
                             if "calibration" in r else {})} for r in rs]
                 for label, rs in runs.items()}})
    write_text(Path(args.out).with_suffix(".md"), render(args, cmd, env, runs, agg, agg_excl, rerank, summary,
                                                           best_sid, id_label, metric, ds.name, ks, previous,
                                                           reproduced, rerank_previous))
    if args.page:
        write_page(args, cmd, ds, runs, rerank, best_sid, ks, evaluator)
    print(json.dumps(summary, indent=1))


def _reproduced_text(reproduced: dict[str, float], close: float = 1e-3) -> str:
    """How the runs evaluated here compare with the same runs of the earlier page."""
    if not reproduced:
        return ""
    near = {k: v for k, v in reproduced.items() if v <= close}
    far = {k: v for k, v in reproduced.items() if v > close}
    out = f"Of the {len(reproduced)} runs trained or evaluated here that are also in it, "
    if near:
        out += (f"{len(near)} ({'; '.join(near)}) differ from its test metrics (every metric, every bucket) by at "
                f"most {max(near.values()):.1e}")
    if far:
        out += ("; " if near else "") + f"{len(far)} differ by more: " + "; ".join(
            f"{k} (up to {v:.4f})" for k, v in far.items())
    return out + "."


def _largest_difference(a: dict, b: dict) -> float:
    """Largest |a - b| over the metrics of every bucket (inf when the buckets or metrics differ)."""
    if a.keys() != b.keys() or any(a[g].keys() != b[g].keys() for g in a):
        return float("inf")
    return max((abs(a[g][k] - b[g][k]) for g in a for k in a[g]), default=0.0)


def _previous_run(previous: dict | None, label: str, seed: int, metric: str) -> dict | None:
    """A run of an earlier ranker.json in the shape this script's runs have (None: not there)."""
    old = next((r for r in (previous or {}).get("runs", {}).get(label, []) if r["seed"] == seed), None)
    if old is None:
        return None
    device = previous["environment"]["device"]
    return {"seed": seed, "run": old["run"], "previous": True,
            "train": {"epochs": old["epochs"], "best_epoch": old["best_epoch"], "train_seconds": old["train_seconds"],
                      f"best_valid_{metric}": old[f"best_valid_{metric}"], "history": old["valid_history"]},
            "test": {"metrics": old["test"], "device": device},
            "test_history_excluded": {"metrics": old["test_history_excluded"], "device": device}}


def write_page(args, cmd, ds, runs, rerank, best_sid, ks, evaluator) -> None:
    """The same rows as the `mmq benchmark` page (one HTML file with figures), plus generate -> rank."""
    def entry(res, seed, minutes):
        return {"seed": seed, "metrics": res["metrics"], "users_per_second": res.get("users_per_second"),
                "device": res.get("device", ""), "train_minutes": minutes}

    systems = {}
    for label, rs in runs.items():
        name = "ranker id (SASRec, item IDs)" if label == "id" else f"ranker {label}"
        systems[name] = system_entry("ranker", [entry(r["test"], r["seed"], r["train"]["train_seconds"] / 60)
                                                for r in rs])
    for n, v in rerank.items() if not args.rerank_users else ():  # a sample is not comparable with every user
        systems[f"generate({n}) → rank {best_sid}, {v['users']:,} sampled users"] = system_entry(
            "generate→rank", [entry(p["generate_rank"], p["seed"], None) for p in v["per_seed"]])
    systems["popularity"] = system_entry("baseline", [entry(evaluator.baseline(ds, "popularity"), 0, None)])
    curves = {("ranker id (SASRec, item IDs)" if label == "id" else f"ranker {label}"): {
        "unit": "epoch", "metric": "ndcg@10", "points": [[h["epoch"], h["valid_ndcg@10"]] for h in rs[0]["train"]["history"]]}
        for label, rs in runs.items() if "calibration" not in rs[0]}
    tokenizers = {name: json.loads((Path(path) / "quality.json").read_text()) for name, path in
                  (t.split("=", 1) for t in args.tokenizer)}
    report = compose_report(f"Rankers on {ds.name}: item-ID vs semantic-ID item representations", systems, ks,
                            dataset=ds.name, subtitle="Test split, leave-one-out, full catalogue, history not "
                            "excluded; checkpoints chosen on validation; mean ± std over seeds. Written by "
                            "scripts/bench_ranker.py (see ranker.md beside it for the history-excluded column).",
                            environment_=environment(systems[next(iter(systems))]["device"]), command=cmd,
                            config=to_yaml(evaluator.cfg), tokenizers=tokenizers, curves=curves,
                            curve_seed=args.seeds[0])
    Path(args.page).mkdir(parents=True, exist_ok=True)
    write_report_files(report, Path(args.page))


def _curve(runs: list[dict]) -> list[float]:
    """Mean validation R@10 per epoch over the seeds (as far as every seed trained)."""
    hist = [r["train"]["history"] for r in runs]
    n = min(len(h) for h in hist)
    return [float(np.mean([h[e]["valid_recall@10"] for h in hist])) for e in range(n)]


def render(args, cmd, env, runs, agg, agg_excl, rerank, summary, best_sid, id_label, metric, name, ks,
           previous=None, reproduced=None, rerank_previous=False) -> str:
    seeds = {label: len(rs) for label, rs in runs.items()}
    minutes = {label: np.mean([r["train"]["train_seconds"] for r in rs]) / 60 for label, rs in runs.items()}

    def epochs(r: dict) -> str:
        return (f"{r['train']['epochs']} ({r['train']['best_epoch']})" + ("†" if r.get("previous") else "")
                + (f", T = {r['calibration']['chosen']}" if "calibration" in r else ""))

    out = [f"# Ranker on {name}: item-ID vs semantic-ID item representations",
           f"Measured on {env['device']} ({env['machine']}, torch {env['torch']}), {env['date']}. "
           "Test split, leave-one-out, every user; mean ± sample std over seeds. Checkpoints chosen on validation "
           f"({metric}); nothing is selected on test.",
           f"Command: `{cmd}`",
           "| row | seeds | epochs (best) per seed | training minutes per run |\n|---|---:|---|---:|\n" + "\n".join(
               f"| {label} | {seeds[label]} | " + "; ".join(epochs(r) for r in runs[label])
               + f" | {minutes[label]:.1f} |" for label in runs)]
    if previous:
        read = [f"{label} (seeds {', '.join(str(r['seed']) for r in rs if r.get('previous'))})"
                for label, rs in runs.items() if any(r.get("previous") for r in rs)]
        out.append(f"**An earlier page.** `{args.previous}` was written on {previous['environment']['date']} by "
                   f"`{previous['command']}`. "
                   + (f"† marks runs whose directories were not kept: their training summary and test metrics are "
                      f"read from it ({', '.join(read)}). " if read else "")
                   + ("The generate → rank section is read from it (its generator was not kept; same best SID row). "
                      if rerank_previous else "")
                   + _reproduced_text(reproduced or {}))
    if summary:
        s = summary
        out.append(f"**Summary.** Item-ID ranker (SASRec): R@10 {s['id_recall10']:.4f}, tail {s['id_tail_recall10']:.4f}. "
                   f"Best SID ranker on validation, **{best_sid}**: R@10 {s['best_sid_recall10']:.4f}, tail "
                   f"{s['best_sid_tail_recall10']:.4f} ({s['tail_ratio']:.2f}× the item-ID ranker's), cold "
                   + ("n/a (no cold test user)" if s["best_sid_cold_recall10"] is None
                      else f"{s['best_sid_cold_recall10']:.4f}") + "." + (
                       f" Generate → rank keeps {s['pipeline_to_full_ratio']:.2f}× of the full-catalogue R@10 at best."
                       if s.get("pipeline_to_full_ratio") else ""))
        if "calibrated_sid" in s:
            out.append(
                f"**Calibrated to the item-ID ranker's accuracy** (`{s['calibrated_sid']}`): the same runs, their "
                "scores lowered by T·log(1 + n) at ranking time (n: the item's training count), T the largest of "
                "`mmq rank calibrate`'s grid whose validation R@10 is still at least the same seed's item-ID "
                f"ranker's (T = {', '.join(map(str, s['calibrated_t']))}; chosen on validation, every user). "
                f"R@10 {s['calibrated_sid_recall10']:.4f}, tail {s['calibrated_sid_tail_recall10']:.4f} "
                f"(**{s['calibrated_tail_ratio']:.2f}×** the item-ID ranker's), cold "
                + ("n/a" if s["calibrated_sid_cold_recall10"] is None else f"{s['calibrated_sid_cold_recall10']:.4f}")
                + ". The same rule applied to the item-ID ranker (its floor: its own validation R@10) chooses "
                f"T = {', '.join(map(str, s['id_calibrated_t']))}"
                + (": it leaves the item-ID ranker as it is. " if not any(s["id_calibrated_t"]) else
                   f" (row `{id_label}, calibrated`). ") + "The "
                "correction itself is not specific to SIDs: what the SID representation adds is overall accuracy "
                "above the item-ID ranker's, which T spends on the tail; the item-ID ranker has none to spend "
                "(benchmarks/tail_frontier.md sweeps T for both).")
    for g in BUCKET_TITLES:
        if any(g in r for r in agg.values()):
            out += [f"## {BUCKET_TITLES[g]}", metrics_table(agg, g, ks)]
    out += ["## History excluded (RecBole's and eSASRec's convention), all test users", metrics_table(agg_excl, "all", ks)]
    curves = {label: _curve(runs[label]) for label in (id_label, best_sid) if label}
    if curves:
        n = max(len(c) for c in curves.values())
        out += ["## Learning curve: validation R@10 by epoch (mean over seeds)",
                "| epoch | " + " | ".join(curves) + " |\n|---:|" + "---:|" * len(curves) + "\n" + "\n".join(
                    f"| {e + 1} | " + " | ".join(f"{c[e]:.4f}" if e < len(c) else "–" for c in curves.values()) + " |"
                    for e in range(n))]
    if rerank:
        users = next(iter(rerank.values()))["users"]
        lines = ["| candidates N | generator recall@N (candidates hold the target) | generate→rank R@10 | N@10 | "
                 "tail R@10 | full-catalogue R@10, same users | ratio | fusion weight (per seed, chosen on validation) |",
                 "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for n, v in rerank.items():
            g, f = v["generate_rank"], v["full_same_users"]
            lines.append(f"| {n} | {v['candidate_recall']:.4f} | {g['all']['recall@10']:.4f} | {g['all']['ndcg@10']:.4f} "
                         f"| {g['tail'].get('recall@10', 0):.4f} | {f['all']['recall@10']:.4f} | "
                         f"{'n/a' if v['ratio_recall@10'] is None else format(v['ratio_recall@10'], '.3f')} | "
                         f"{v['fusion_weights']} |")
        out += [f"## Generate → rank: {best_sid} re-ranking the generator's beam-search top N",
                f"Generator `{args.generator}`; {users:,} test users"
                + (" (a fixed random sample)" if args.rerank_users else "") + "."
                + (" † Read from the earlier page (see above), the same runs of this row." if rerank_previous else ""),
                "\n".join(lines)]
    out += ["## Published reference numbers (not run here; ../shared/docs/PROTOCOL.md)",
            "\n".join(f"- {p}" for p in PUBLISHED)]
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    main()
