"""Benchmark reports a person wants to read: one Markdown table per popularity bucket, plus JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmq_rec.recdata.io import write_json, write_text

BUCKET_TITLES = {
    "all": "All test users",
    "head": "Head (target in the top 20% of items by training popularity)",
    "tail": "Tail (all other targets)",
    "long_tail": "Long tail (target in the bottom 25% of items)",
    "cold": "Cold (target never seen in training)",
}


GENERATED_BY = "mmq-rec report"


def _check_replaceable(md: Path, js: Path) -> None:
    from mmq_rec.recdata.errors import DataError

    if not md.exists() and not js.exists():
        return
    try:
        ours = json.loads(js.read_text(encoding="utf-8")).get("generated_by") == GENERATED_BY
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise DataError(f"{md.name} or {js.name} exists and is not an earlier MMQ-Rec report; refusing to "
                        "overwrite it (choose another --report)", path=md.parent, field="report")


def mean_std(runs: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-group metrics of several runs (e.g. seeds) -> their mean, with `<metric>_std` (sample
    standard deviation, 0 for one run) beside each metric and `runs` = how many runs have it. A
    group or metric missing from some runs (e.g. a group with no users under one seed's split) is
    averaged over the runs that have it; `users` is the largest count."""
    if not runs:
        raise ValueError("mean_std needs at least one run")
    out: dict[str, dict[str, float]] = {}
    groups = list(dict.fromkeys(g for r in runs for g in r))
    for group in groups:
        rows = [r[group] for r in runs if group in r]
        agg: dict[str, float] = {"users": max(row.get("users", 0) for row in rows), "runs": len(rows)}
        for key in dict.fromkeys(k for row in rows for k in row):
            if key == "users":
                continue
            vals = np.array([row[key] for row in rows if key in row], dtype=float)
            agg[key] = float(vals.mean())
            agg[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out[group] = agg
    return out


def _cell(row: Mapping[str, float], key: str, digits: int = 4) -> str:
    if row.get("runs", 1) > 1 and f"{key}_std" in row:
        return f"{row[key]:.{digits}f} ± {row[f'{key}_std']:.{digits}f}"
    return f"{row[key]:.{digits}f}"


def metrics_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], group: str, ks: Sequence[int]) -> str:
    """Markdown table: one row per model, Recall/NDCG@k columns, for one user group (mean ± std
    where a row aggregates several runs, see `mean_std`)."""
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    head = "| model | users | " + " | ".join(c.replace("recall", "R").replace("ndcg", "N") for c in cols) + \
           f" | coverage@{ks[-1]} |"
    lines = [head, "|---|---:|" + "---:|" * (len(cols) + 1)]
    for model, res in results.items():
        row = res.get(group, {})
        if not row.get("users"):
            lines.append(f"| {model} | 0 |" + " – |" * (len(cols) + 1))
            continue
        vals = " | ".join(_cell(row, c) for c in cols)
        lines.append(f"| {model} | {row['users']:,} | {vals} | {_cell(row, f'coverage@{ks[-1]}', 3)} |")
    return "\n".join(lines)


def write_report(path: str | Path, title: str, results: Mapping[str, Mapping[str, Mapping[str, float]]],
                 ks: Sequence[int], preamble: str = "", extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write `<path>.md` and `<path>.json` atomically; returns both paths. An existing pair is
    replaced only if its JSON is an earlier report of ours: a user's files are never overwritten."""
    path = Path(path)
    if path.suffix in (".md", ".json"):  # `--report out.md` means the pair out.md / out.json
        path = path.with_suffix("")
    _check_replaceable(path.with_name(path.name + ".md"), path.with_name(path.name + ".json"))
    groups = [g for g in BUCKET_TITLES if any(g in r for r in results.values())]
    parts = [f"# {title}", preamble.strip()] if preamble.strip() else [f"# {title}"]
    for g in groups:
        parts += [f"## {BUCKET_TITLES[g]}", metrics_table(results, g, ks)]
    md, js = path.with_name(path.name + ".md"), path.with_name(path.name + ".json")  # `r.seed1` keeps its dot
    write_text(md, "\n\n".join(parts) + "\n")
    write_json(js, {"title": title, "ks": list(ks), "results": results, **(extra or {}), "generated_by": GENERATED_BY})
    return md, js
