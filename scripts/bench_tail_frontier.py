"""Tail recall at matched overall accuracy: item-ID and SID rankers under a ranking-time popularity
correction, score - T log(1 + n) (n: the item's training count) -> benchmarks/tail_frontier.md + .json.

    python scripts/bench_tail_frontier.py --dataset DATA --id RUN_S0 RUN_S1 ... --sid RUN_S0 RUN_S1 ... \\
        [--t 0 0.05 0.1 0.2 0.3 0.5] [--out benchmarks/tail_frontier] [-- OVERRIDES]

--id and --sid name trained ranker runs (`mmq rank train` output directories), one per seed, in the
same seed order. For every run and T: R@10 overall and per popularity bucket, on validation and test.
A correction moves recall from the head to the tail; the question is how much tail each model buys at
a given overall accuracy. The matched operating point of a SID run is the largest T whose validation
R@10 is still at least its seed's item-ID run's at T = 0 (the plain SASRec): chosen on validation;
test is read there and chooses nothing."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmq_rec.benchmark import split_overrides
from mmq_rec.eval.metrics import evaluate_rankings
from mmq_rec.pipeline import Pipeline
from mmq_rec.ranker.rank import correction_sweep
from mmq_rec.recdata.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent.parent
BUCKETS = ("all", "head", "tail", "long_tail")
TRAINING_OPTIONS = ("logit_adjust", "sid_loss", "align_loss", "id_min_count", "id_dropout")


def sweep(pipe: Pipeline, ds, run: str, ts: list[float]) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {T: {bucket: R@10}}} of one trained ranker under score - T log(1 + n)."""
    model = pipe.ranker(Path(run) / "best", ds)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split_name in ("valid", "test"):
        part = getattr(pipe.split(ds), split_name)
        buckets = pipe.buckets(ds).of_targets(part.targets)
        out[split_name] = {}
        for t, top in correction_sweep(model, part.histories, ts, 10).items():
            res = evaluate_rankings(top, part.targets, ds.num_items, [10], buckets)
            out[split_name][str(t)] = {b: res[b]["recall@10"] for b in BUCKETS if b in res}
    return out


def matched(sid: dict, id_valid_all: float, ts: list[float]) -> str:
    """The largest T whose validation R@10 is at least `id_valid_all` (T = 0 when none is)."""
    ok = [t for t in ts if sid["valid"][str(t)]["all"] >= id_valid_all]
    return str(max(ok)) if ok else str(min(ts))


def main() -> None:
    argv, overrides = split_overrides(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--id", nargs="+", required=True, help="item-ID ranker runs, one per seed")
    ap.add_argument("--sid", nargs="+", required=True, help="SID ranker runs, one per seed (same order)")
    ap.add_argument("--t", nargs="+", type=float, default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--out", default=str(HERE / "benchmarks" / "tail_frontier"))
    args = ap.parse_args(argv)
    if len(args.id) != len(args.sid):
        ap.error(f"--id and --sid need one run per seed each (got {len(args.id)} and {len(args.sid)})")
    if 0.0 not in args.t:
        ap.error("--t must include 0 (the rankers as trained)")
    ts = sorted(set(args.t))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    pipe = Pipeline.from_config(overrides=overrides, show_progress=False)
    ds = pipe.dataset(args.dataset)
    seeds = []
    for id_run, sid_run in zip(args.id, args.sid, strict=True):
        cfg = {r: read_json(Path(r) / "best" / "ranker.json")["config"] for r in (id_run, sid_run)}
        a, b = sweep(pipe, ds, id_run, ts), sweep(pipe, ds, sid_run, ts)
        t = matched(b, a["valid"]["0.0"]["all"], ts)
        seeds.append({"seed": cfg[sid_run]["seed"], "id_run": id_run, "sid_run": sid_run,
                      "id_config": cfg[id_run], "sid_config": cfg[sid_run], "id": a, "sid": b, "matched_t": t})
        print(f"seed {seeds[-1]['seed']}: matched T {t}", file=sys.stderr, flush=True)
    env = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d")}
    cmd = "python scripts/bench_tail_frontier.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = summarise(seeds)
    write_json(Path(args.out + ".json"), {"generated_by": "scripts/bench_tail_frontier.py", "command": cmd,
                                         "environment": env, "t": ts, **summary, "seeds": seeds})
    write_text(Path(args.out + ".md"), render(cmd, env, ts, seeds, summary))


def summarise(seeds: list[dict]) -> dict:
    """Mean over seeds of the plain item-ID ranker, the plain SID ranker and the SID ranker at its matched T."""
    def mean(get) -> float:
        return float(np.mean([get(s) for s in seeds]))

    pick = {"id (T = 0)": lambda s, split: s["id"][split]["0.0"],
            "sid (T = 0)": lambda s, split: s["sid"][split]["0.0"],
            "sid (matched T)": lambda s, split: s["sid"][split][s["matched_t"]]}
    rows = {name: {split: {b: mean(lambda s, f=f, split=split, b=b: f(s, split)[b]) for b in BUCKETS}
                   for split in ("valid", "test")} for name, f in pick.items()}
    base = rows["id (T = 0)"]["test"]["tail"]
    return {"rows": rows, "matched_tail_ratio": rows["sid (matched T)"]["test"]["tail"] / max(base, 1e-12),
            "plain_tail_ratio": rows["sid (T = 0)"]["test"]["tail"] / max(base, 1e-12)}


def render(cmd: str, env: dict, ts: list[float], seeds: list[dict], summary: dict) -> str:
    def std(get) -> str:
        v = [get(s) for s in seeds]
        return f"{np.mean(v):.4f}" + (f" ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else "")

    head = ("| model | T | valid R@10 all | valid R@10 tail | test R@10 all | test R@10 head | test R@10 tail | "
            "test R@10 long_tail | test tail / item-ID's |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base = [s["id"]["test"]["0.0"]["tail"] for s in seeds]
    for name, get_t in (("item-ID ranker", lambda s: "0.0"), ("SID ranker", lambda s: "0.0"),
                        ("SID ranker, matched T", lambda s: s["matched_t"])):
        side = "id" if name.startswith("item") else "sid"
        cells = [std(lambda s, b=b, sp=sp, side=side, get_t=get_t: s[side][sp][get_t(s)][b])
                 for sp, b in (("valid", "all"), ("valid", "tail"), ("test", "all"), ("test", "head"),
                               ("test", "tail"), ("test", "long_tail"))]
        ratio = np.mean([s[side]["test"][get_t(s)]["tail"] for s in seeds]) / max(np.mean(base), 1e-12)
        lines.append(f"| {name} | {', '.join(get_t(s) for s in seeds)} | " + " | ".join(cells) + f" | {ratio:.2f}× |")
    sweep_head = "| T | " + " | ".join(f"{m}: valid all | valid tail | test all | test tail" for m in ("item-ID", "SID")) + " |"
    sw = [sweep_head, "|" + "---:|" * (sweep_head.count("|") - 1)]
    for t in ts:
        cells = [std(lambda s, m=m, sp=sp, b=b, t=t: s[m][sp][str(t)][b]) for m in ("id", "sid")
                 for sp, b in (("valid", "all"), ("valid", "tail"), ("test", "all"), ("test", "tail"))]
        sw.append(f"| {t} | " + " | ".join(cells) + " |")
    def options(c: dict) -> str:  # training options away from their defaults
        return "".join(f", {k} {c[k]}" for k in TRAINING_OPTIONS if c.get(k))

    runs = "; ".join(f"seed {s['seed']}: `{s['id_run']}` (`{s['id_config']['representation']}`"
                     f"{options(s['id_config'])}), `{s['sid_run']}` (`{s['sid_config']['representation']}`, combine "
                     f"`{s['sid_config']['combine']}`{options(s['sid_config'])})" for s in seeds)
    return "\n\n".join([
        "# Tail recall at matched overall accuracy: item-ID vs SID ranker",
        f"Measured on the CPU ({env['machine']}, torch {env['torch']}), {env['date']}; {len(seeds)} seed(s), "
        "mean ± sample std. Scores are lowered by T·log(1 + n) at ranking time (n: the item's training count), "
        "which moves recall from the head to the tail. The matched T of a SID run is the largest T whose "
        "validation R@10 is still at least its seed's item-ID ranker's (T = 0): the SID ranker is then read at "
        "the item-ID ranker's overall accuracy. T is chosen on validation; test chooses nothing. Buckets: head "
        "= the top 20% of items by training count, tail = the rest, long tail = the bottom 25%.",
        f"Command: `{cmd}`", f"Runs: {runs}.", "\n".join(lines),
        "## The whole sweep (mean over seeds)", "\n".join(sw)]) + "\n"


if __name__ == "__main__":
    main()
