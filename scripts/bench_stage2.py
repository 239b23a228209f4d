"""MMQ stage 2 on one dataset: each downstream model on stage-1 SIDs and on the same SIDs after
stage 2, beside RQ-KMeans SIDs -> benchmarks/stage2.md + .json (and, with --page, a report page).

    python scripts/bench_stage2.py --dataset DATA --work WORK_DIR --seeds 0 1 2 \\
        --row 'NAME=KIND TOKENIZER_DIR [OVERRIDES]' [--row ...] [--page DIR] [-- OVERRIDES]

KIND is one of
- `ranker`, `generator`: the plain model trained on the tokenizer's SIDs;
- `ranker-stage2:BASE`: MMQ stage 2 with the ranker, started from row BASE's ranker of the same seed
  (`--finetune.init_from`; BASE must be a `ranker` row on the same MMQ or RQ-KMeans tokenizer);
- `generator-stage2:BASE`: MMQ stage 2 with the generator (trained from scratch beside the
  tokenizer), compared with row BASE.
Each row's words after the tokenizer directory are configuration overrides, added to the common
OVERRIDES. Every run lives in WORK_DIR/NAME-s<seed> and is reused or resumed when rerun
(`--stopped-rows`: ranker runs taken as they stand, those stopped before early stopping marked so). Every run is
evaluated on the validation and the test split (all users, full catalogue); a stage-2 row's gain
over its base is judged on validation, and the test column is reported beside it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmq_rec.benchmark import compose_report, environment, split_overrides, system_entry, write_report_files
from mmq_rec.eval.report import mean_std
from mmq_rec.pipeline import Pipeline
from mmq_rec.recdata.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent.parent
BUCKETS = ("all", "head", "tail", "long_tail", "cold")
KINDS = ("ranker", "generator", "ranker-stage2", "generator-stage2")


def parse_row(spec: str) -> dict[str, Any]:
    name, sep, rest = spec.partition("=")
    words = shlex.split(rest)
    if not sep or len(words) < 2:
        sys.exit(f"bench_stage2: --row {spec!r}: expected 'NAME=KIND TOKENIZER_DIR [OVERRIDES]'")
    kind, _, base = words[0].partition(":")
    if kind not in KINDS or bool(base) != kind.endswith("stage2"):
        sys.exit(f"bench_stage2: --row {name}: KIND must be ranker, generator, ranker-stage2:BASE or "
                 f"generator-stage2:BASE (got {words[0]!r})")
    return {"name": name, "kind": kind, "base": base or None, "tokenizer": words[1], "overrides": words[2:]}


def main() -> None:
    argv, overrides = split_overrides(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset")
    ap.add_argument("--work", help="directory for the training runs (reused when rerun)")
    ap.add_argument("--row", action="append", help="'NAME=KIND TOKENIZER_DIR [OVERRIDES]'")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="instead of running: write one page from earlier outputs (their .json files), e.g. the "
                         "calls of scripts/gpu_stage2.sh; needs only --out and --page")
    ap.add_argument("--note", default="", help="a sentence for the page, under its first line")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--single-seed-rows", nargs="+", default=[], metavar="NAME",
                    help="rows run at the first seed only (e.g. 40-minute generators)")
    ap.add_argument("--stopped-rows", nargs="+", default=[], metavar="NAME",
                    help="ranker rows whose runs are evaluated as they stand (their best epoch so far), not "
                         "trained further: runs stopped by hand, marked so in the page")
    ap.add_argument("--only", nargs="+", default=[], metavar="NAME",
                    help="train and evaluate these rows alone (the others still define their bases): one "
                         "of several processes that share a GPU; a later run without it writes the page")
    ap.add_argument("--finished-only", action="store_true",
                    help="leave out the runs not trained and evaluated yet (no RUN/bench_eval.json) instead of "
                         "training them; the page lists them")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads (default: all cores)")
    ap.add_argument("--out", default=str(HERE / "benchmarks" / "stage2"))
    ap.add_argument("--page", help="also write a report page (report.html/.md/.json) into this directory")
    args = ap.parse_args(argv)
    if args.merge:
        if not any(a == "--out" or a.startswith("--out=") for a in argv):
            ap.error("--merge needs --out (the default is the CPU benchmark's own page)")
        *parts, notes = merged(args.merge)
        args.note = args.note or " ".join(notes)
        write_outputs(args, *parts)
        return
    if not (args.dataset and args.work and args.row):
        ap.error("--dataset, --work and --row are required (unless --merge)")
    rows = {r["name"]: r for r in map(parse_row, args.row)}
    for r in rows.values():
        if r["base"] and (r["base"] not in rows or rows[r["base"]]["kind"] != r["kind"].split("-")[0]):
            sys.exit(f"bench_stage2: --row {r['name']}: BASE must name a {r['kind'].split('-')[0]} row")
        if r["kind"] == "ranker-stage2" and r["base"] in args.single_seed_rows and r["name"] not in args.single_seed_rows:
            sys.exit(f"bench_stage2: --row {r['name']} starts from {r['base']}, which runs one seed: list it in "
                     "--single-seed-rows too")
    for opt in ("single_seed_rows", "stopped_rows", "only"):
        unknown = set(getattr(args, opt)) - set(rows)
        if unknown:
            sys.exit(f"bench_stage2: --{opt.replace('_', '-')}: no such row: {', '.join(sorted(unknown))}")
    if any(not rows[n]["kind"].startswith("ranker") for n in args.stopped_rows):
        sys.exit("bench_stage2: --stopped-rows: ranker rows only")
    torch.set_num_threads(max(1, args.threads))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    work = Path(args.work)
    runs: dict[str, list[dict[str, Any]]] = {}
    missing: list[str] = []
    for seed in args.seeds:  # every row's first seed before any row's second
        for name, r in rows.items():
            if (seed != args.seeds[0] and name in args.single_seed_rows) or (args.only and name not in args.only):
                continue
            out = work / f"{name}-s{seed}"
            if args.finished_only and not (out / "bench_eval.json").exists():
                missing.append(f"{name} seed {seed}")
                log(f"== {name}, seed {seed}: not finished, left out")
                continue
            extra = []
            if r["kind"] == "ranker-stage2":
                extra = ["--finetune.init_from", str(work / f"{r['base']}-s{seed}" / "best")]
            pipe = Pipeline.from_config(overrides=[*overrides, *r["overrides"], *extra, "--seed", str(seed)],
                                        show_progress=False, log=log)
            ds = pipe.dataset(args.dataset)
            log(f"== {name} ({r['kind']}), seed {seed} -> {out}")
            finetune = r["kind"].endswith("stage2")
            ranker = r["kind"].startswith("ranker")
            stopped = None
            if name in args.stopped_rows:  # evaluated as it stands: its best epoch so far
                state = read_json(out / "checkpoint" / "state.json")
                trained = {"train_seconds": state["train_seconds"], "best_model": str(out / "best")}
                rc = pipe.cfg.ranker
                if state["bad_epochs"] < rc.patience and state["epoch"] < rc.epochs:  # not finished by itself
                    stopped = {"epochs": state["epoch"], "best_epoch": state["best_epoch"]}
            else:
                trained = (pipe.rank_train if ranker else pipe.train)(ds, r["tokenizer"], out, finetune=finetune)
            res = evaluated(pipe, ds, args.dataset, out, ranker)
            minutes = trained["train_seconds"] / 60
            q = read_json(Path(trained["best_model"]) / "tokenizer" / "quality.json") if finetune else \
                read_json(Path(r["tokenizer"]) / "quality.json")
            runs.setdefault(name, []).append({
                "seed": seed, "run": str(out), "train_minutes": round(minutes, 1), "device": res["test"].get("device", ""),
                "valid": res["valid"]["metrics"], "test": res["test"]["metrics"],
                "users_per_second": res["test"].get("users_per_second"),
                "tokenizer": q.get("tokenizer"), "sid_length": q.get("sid_length"),
                "stage2": q.get("stage2"), "stopped_by_hand": stopped, "modalities": q.get("modalities"),
                "token_order": read_json(Path(r["tokenizer"]) / "config.json")["config"].get("token_order")})
    if not runs:
        sys.exit("bench_stage2: no run has finished: nothing to write")
    cmd = "python scripts/bench_stage2.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    device = next(iter(runs.values()))[0]["device"]
    write_outputs(args, [cmd], environment(device), overrides, rows, runs, missing)


def merged(paths: list[str]) -> tuple[list[str], dict, list[str], dict, dict, list[str], list[str]]:
    """The commands, environment, overrides, rows, runs, unfinished runs and notes of several earlier
    outputs (e.g. two calls on a GPU machine) as one benchmark: a row defined twice must read the
    same, a run may come from one output only, and all must come from the same kind of device."""
    cmds, envs, rows, runs, missing, notes = [], [], {}, {}, [], []
    overrides = None
    for path in paths:
        d = read_json(Path(path))
        cmds.append(d["command"])
        envs.append(d["environment"])
        if overrides is not None and d["overrides"] != overrides:
            sys.exit(f"bench_stage2: --merge: {path} has other common overrides than the outputs before it")
        overrides = d["overrides"]
        for name, r in d["rows"].items():
            if rows.setdefault(name, {"name": name, **r}) != {"name": name, **r}:
                sys.exit(f"bench_stage2: --merge: row {name} is defined differently in {path}")
        for name, rs in d["runs"].items():
            have = {x["seed"] for x in runs.get(name, [])}
            if have & {x["seed"] for x in rs}:
                sys.exit(f"bench_stage2: --merge: row {name} has a run of the same seed in two outputs")
            runs[name] = sorted(runs.get(name, []) + rs, key=lambda x: x["seed"])
        missing += d.get("not_finished", [])
        notes += [d["note"]] if d.get("note") and d["note"] not in notes else []
    if len({(e["device"], e["GPU"]) for e in envs}) > 1:
        sys.exit("bench_stage2: --merge: the outputs were measured on different devices")
    done = {f"{n} seed {x['seed']}" for n, rs in runs.items() for x in rs}
    missing = list(dict.fromkeys(m for m in missing if m not in done))
    runs = {n: runs[n] for n in rows if n in runs}  # the rows' order
    return cmds, envs[0], overrides or [], rows, runs, missing, notes


def write_outputs(args, cmds: list[str], env: dict, overrides: list[str], rows: dict, runs: dict,
                  missing: list[str]) -> None:
    summary = summarise(rows, runs)
    cmd = " && ".join(cmds)
    out = Path(args.out)  # a stem: a row name in it may hold a dot (tau0.03)
    out = out.with_suffix("") if out.suffix in (".json", ".md") else out
    write_json(out.with_name(out.name + ".json"), {
        "generated_by": "scripts/bench_stage2.py", "command": cmd, "environment": env, "overrides": overrides,
        **summary, "rows": {n: {k: v for k, v in r.items() if k != "name"} for n, r in rows.items()}, "runs": runs,
        "not_finished": missing, **({"note": args.note} if args.note else {})})
    write_text(out.with_name(out.name + ".md"), render(cmd, env, rows, runs, summary, missing, args.note))
    if args.page:
        systems = {n: system_entry(rows[n]["kind"].split("-")[0], [
            {"seed": x["seed"], "metrics": x["test"], "device": x["device"], "train_minutes": x["train_minutes"],
             "users_per_second": x["users_per_second"]} for x in rs]) for n, rs in runs.items()}
        report = compose_report("MMQ stage 2: stage-1 and fine-tuned SIDs, generator and ranker", systems, [5, 10, 20],
                                subtitle="Test split, leave-one-out, full catalogue; mean ± std over seeds. Written by "
                                "scripts/bench_stage2.py (stage2.md beside it has validation and the SID changes).",
                                environment_=env, command=cmd)
        Path(args.page).mkdir(parents=True, exist_ok=True)
        write_report_files(report, Path(args.page))


def evaluated(pipe: Pipeline, ds, dataset: str, out: Path, ranker: bool) -> dict[str, dict]:
    """Validation and test results of run `out`'s best model, kept in `out/bench_eval.json` and reused
    while the model's weights and the evaluation settings are the same."""
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in (out / "best").glob("*.safetensors"))
    c = pipe.cfg
    key = json.loads(json.dumps({"weights": weights, "dataset": str(Path(dataset).resolve()),
                                 **{k: dataclasses.asdict(getattr(c, k)) for k in ("data", "eval", "decode")},
                                 "seed": c.seed}, default=str))
    cache = out / "bench_eval.json"
    if cache.exists() and (old := read_json(cache)).get("key") == key:
        return old["results"]
    evaluate = pipe.rank_evaluate if ranker else pipe.evaluate
    res = json.loads(json.dumps({s: evaluate(ds, out / "best", split_name=s) for s in ("valid", "test")}, default=str))
    write_json(cache, {"key": key, "results": res})
    return res


def summarise(rows: dict[str, dict], runs: dict[str, list[dict]]) -> dict[str, Any]:
    """The headline numbers: for stage 2 the row whose validation R@10 gains most over its base
    (compared on the seeds both have), and the best MMQ and RQ-KMeans generators by validation."""
    def r10(name: str, split: str, seeds: set[int] | None = None) -> float:
        vals = [x[split]["all"]["recall@10"] for x in runs.get(name, []) if seeds is None or x["seed"] in seeds]
        return float(np.mean(vals)) if vals else float("nan")

    out: dict[str, Any] = {"stage2": {}}
    for name, r in rows.items():
        if r["base"] and name in runs and r["base"] in runs:
            seeds = {x["seed"] for x in runs[name]} & {x["seed"] for x in runs[r["base"]]}
            out["stage2"][name] = {"base": r["base"], "seeds": sorted(seeds),
                                   **{f"{s}_recall10_{w}": r10(n, s, seeds) for s in ("valid", "test")
                                      for w, n in (("stage1", r["base"]), ("stage2", name))}}
    if out["stage2"]:
        best = max(out["stage2"], key=lambda n: out["stage2"][n]["valid_recall10_stage2"]
                   - out["stage2"][n]["valid_recall10_stage1"])
        b = out["stage2"][best]
        out.update(stage2_row=best, stage1_recall10=b["test_recall10_stage1"], stage2_recall10=b["test_recall10_stage2"],
                   stage2_valid_gain=b["valid_recall10_stage2"] - b["valid_recall10_stage1"])
    gens = [n for n, r in rows.items() if r["kind"].startswith("generator") and n in runs]
    for tok, key in (("mmq", "mmq_generator"), ("rqkmeans", "rqkmeans_generator")):
        cands = [n for n in gens if runs[n][0]["tokenizer"] == tok]
        if cands:
            best = max(cands, key=lambda n: r10(n, "valid"))
            out[f"{key}_row"], out[f"{key}_recall10"] = best, r10(best, "test")
    return out


def render(cmd: str, env: dict, rows: dict, runs: dict, summary: dict, missing: list[str], note: str = "") -> str:
    def cell(rs: list[dict], split: str, bucket: str) -> str:
        v = [x[split][bucket]["recall@10"] for x in rs if "recall@10" in x[split].get(bucket, {})]
        return f"{np.mean(v):.4f}" + (f" ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else "") if v else "–"

    def sids(x: dict) -> str:
        mods = "+".join(x.get("modalities") or [])
        order = f"; order {', '.join(x['token_order'])}" if x.get("token_order") else ""
        return f"{x['tokenizer']}, {x['sid_length']} tokens ({mods}{order})"

    head = ("| row | kind | SIDs | seeds | " + " | ".join(f"valid R@10 {b}" for b in ("all", "tail"))
            + " | valid N@10 | " + " | ".join(f"test R@10 {b}" for b in BUCKETS) + " | test N@10 | minutes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, rs in runs.items():
        r = rows[name]
        n10 = {s: mean_std([x[s] for x in rs])["all"]["ndcg@10"] for s in ("valid", "test")}
        stop = "".join(f" (stopped by hand after epoch {x['stopped_by_hand']['epochs']}, best so far "
                       f"{x['stopped_by_hand']['best_epoch']}, seed {x['seed']})" for x in rs if x.get("stopped_by_hand"))
        lines.append(f"| {name}{stop} | {r['kind']}{':' + r['base'] if r['base'] else ''} | {sids(rs[0])} | {', '.join(str(x['seed']) for x in rs)} | "
                     f"{cell(rs, 'valid', 'all')} | {cell(rs, 'valid', 'tail')} | {n10['valid']:.4f} | "
                     + " | ".join(cell(rs, "test", b) for b in BUCKETS)
                     + f" | {n10['test']:.4f} | {np.mean([x['train_minutes'] for x in rs]):.1f} |")
    out = ["# MMQ stage 2: stage-1 and fine-tuned SIDs, for the generator and the ranker",
           f"Measured on {env.get('device', '')} ({env.get('machine', '')}), torch {env.get('torch', '')}. "
           "All users of each split, full catalogue, history not excluded. A stage-2 row is judged against its "
           "base on validation; test is shown beside it and chooses nothing." + (f" {note}" if note else ""),
           f"Command: `{cmd}`", "\n".join(lines)]
    if missing:
        out.append("Left out, not finished (out of time, or failed: see the run logs): " + "; ".join(missing) + ".")
    if summary.get("stage2"):
        s2 = ["| stage-2 row | base | seeds | valid R@10 stage 1 → 2 | test R@10 stage 1 → 2 | items whose SID changed "
              "| collision rate before → after | utilisation after (mean) |", "|---|---|---|---|---|---:|---|---:|"]
        for name, v in summary["stage2"].items():
            st = runs[name][0].get("stage2") or {}
            changed = np.mean([(x.get("stage2") or {}).get("changed_sids", {}).get("items", np.nan) for x in runs[name]])
            before, after = st.get("before", {}), st.get("after", {})
            s2.append(f"| {name} | {v['base']} | {', '.join(map(str, v['seeds']))} | {v['valid_recall10_stage1']:.4f} → "
                      f"{v['valid_recall10_stage2']:.4f} | {v['test_recall10_stage1']:.4f} → "
                      f"{v['test_recall10_stage2']:.4f} | {changed:.1%} | {before.get('collision_rate', '–')} → "
                      f"{after.get('collision_rate', '–')} | "
                      f"{np.mean(after['utilisation']) if after.get('utilisation') else float('nan'):.3f} |")
        out += ["## Stage 2 against its base (same downstream model, same stage-1 SIDs)", "\n".join(s2)]
    keys = ("stage2_row", "stage1_recall10", "stage2_recall10", "mmq_generator_row", "mmq_generator_recall10",
            "rqkmeans_generator_row", "rqkmeans_generator_recall10")
    out += ["## Headline (the JSON's keys)", "\n".join(
        f"- `{k}`: {summary[k]:.4f}" if isinstance(summary[k], float) else f"- `{k}`: {summary[k]}"
        for k in keys if k in summary)]
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    main()
