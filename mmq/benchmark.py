"""`mmq benchmark` and `mmq report`: the head vs long-tail report.

`run_benchmark` runs the pipeline for every tokenizer in `benchmark.tokenizers` with the same
generator and ranker settings (`mmq_stage2`: MMQ's tokenizer fine-tuned by stage 2 with the
generator, whose run is the generator row; the ranker trains on the SIDs it leaves), over
`benchmark.seeds`, plus the item-ID ranker (SASRec) and popularity, and writes OUTPUT/report.md,
report.json and report.html. Every stage lives in OUTPUT/stages/<stage>-<name>-<fingerprint>, the
fingerprint a hash of the settings and inputs the stage depends on: a rerun reuses (or resumes)
what did not change and redoes what did; an interrupted benchmark resumes.

`compose_report` turns evaluation results into the report dictionary that `render_html`
(eval/html.py) and `render_markdown` draw; `mmq report` composes one from earlier report.json
files and `--report` JSON files of `mmq evaluate` / `mmq rank evaluate` (runs trained elsewhere)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mmq_rec.config import STAGE2, Config, fingerprint_view, to_dict, to_yaml, updated
from mmq_rec.eval.html import render_html
from mmq_rec.eval.report import BUCKET_TITLES, GENERATED_BY, mean_std, metrics_table
from mmq_rec.pipeline import Pipeline, dataset_digest, split_settings
from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import claim_dir, read_json, write_json, write_text

PUBLISHED = {  # ../shared/docs/PROTOCOL.md (Amazon Beauty, leave-one-out, test split); never run here
    "amazon-beauty": [
        "TIGER (Rajput et al., NeurIPS 2023, paper): R@5 .0454, N@5 .0321, R@10 .0648, N@10 .0384",
        "MMQ (paper, HeterRec backbone): R@5 .0455, N@5 .0296, R@10 .0675, N@10 .0384",
        "RPG (paper): R@10 .0809, N@10 .0464",
        "SASRec with full-softmax cross-entropy, measured on this data by the protocol's authors "
        "(../shared/docs/PROTOCOL.md): R@10 .0848, N@10 .0412",
        "eSASRec (RecSys'25; user history excluded, another column): R@10 .0928, N@10 .0523",
    ],
}


STAGES_VERSION = 1
"""Part of every stage fingerprint: raised when a change to the code changes what a stage produces."""


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """A benchmark script's command line -> (its own arguments, the configuration overrides after `--`)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def environment(device: str) -> dict[str, str]:
    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"device": device, "GPU": cuda, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "git commit": commit, "date": time.strftime("%Y-%m-%d %H:%M")}


def system_entry(kind: str, runs: Sequence[Mapping[str, Any]], tokenizer: str | None = None) -> dict[str, Any]:
    """Several seeds' results of one system -> its report entry."""
    train = [r["train_minutes"] for r in runs if r.get("train_minutes") is not None]
    speed = [r["users_per_second"] for r in runs if r.get("users_per_second") is not None]
    return {"kind": kind, "tokenizer": tokenizer, "seeds": [r.get("seed") for r in runs],
            "metrics": mean_std([r["metrics"] for r in runs]),
            "train_minutes": float(np.mean(train)) if train else None,
            "users_per_second": float(np.mean(speed)) if speed else None,
            "device": runs[0].get("device", ""), "runs": list(runs)}


def answers(systems: Mapping[str, Mapping[str, Any]], ks: Sequence[int]) -> list[str]:
    """The sentences a reader wants first: the best system overall, on the tail and on cold items,
    by how much, at what cost."""
    k = 10 if 10 in ks else ks[0]
    key = f"recall@{k}"
    out = []
    for group, what in (("all", "overall"), ("tail", "on tail items"), ("long_tail", "on long-tail items"),
                        ("cold", "on cold items (never seen in training)")):
        scored = sorted(((s["metrics"].get(group, {}).get(key), n) for n, s in systems.items()
                         if s["metrics"].get(group, {}).get("users")), reverse=True)
        if not scored:
            if group == "cold":
                out.append("Cold items: no test user's target is an item unseen in training under this split "
                           "(set eval.cold_start_fraction to hold items out).")
            continue
        (v1, n1), users = scored[0], systems[scored[0][1]]["metrics"][group]["users"]
        if not v1:
            out.append(f"{what[0].upper()}{what[1:]}: R@{k} is 0 for every system ({users:,} test users).")
            continue
        line = f"Best {what}: {n1}, R@{k} {v1:.4f}"
        if len(scored) > 1:
            v2, n2 = scored[1]
            rel = f" ({v1 / v2:.2f}×)" if v2 > 0 else ""
            line += f", ahead of {n2} ({v2:.4f}) by {v1 - v2:+.4f}{rel}"
        cost = systems[n1].get("train_minutes")
        out.append(line + f"; {users:,} test users" + (f"; {cost:.1f} training minutes per run." if cost else "."))
    return out


def compose_report(title: str, systems: Mapping[str, Mapping[str, Any]], ks: Sequence[int], *,
                   subtitle: str = "", dataset: str = "", environment_: Mapping[str, Any] | None = None,
                   command: str = "", config: str = "", tokenizers: Mapping[str, Any] | None = None,
                   curves: Mapping[str, Any] | None = None, curve_seed: int | None = None) -> dict[str, Any]:
    return {"title": title, "subtitle": subtitle, "ks": list(ks), "answers": answers(systems, ks),
            "systems": dict(systems), "tokenizers": dict(tokenizers or {}), "curves": dict(curves or {}),
            "curve_seed": curve_seed, "published": PUBLISHED.get(dataset, []), "environment": dict(environment_ or {}),
            "command": command, "config": config, "dataset": dataset, "generated_by": GENERATED_BY}


def render_markdown(report: Mapping[str, Any]) -> str:
    systems, ks = report["systems"], report["ks"]
    table = {n: s["metrics"] for n, s in systems.items()}
    parts = [f"# {report['title']}", report.get("subtitle", "")]
    parts += ["\n".join(f"- {a}" for a in report.get("answers", []))]
    for g in BUCKET_TITLES:
        if any(g in r for r in table.values()):
            parts += [f"## {BUCKET_TITLES[g]}", metrics_table(table, g, ks)]
    parts += ["## Cost and validity", "| system | seeds | training minutes per run | test users / s | invalid-ID rate "
              "| device |\n|---|---|---:|---:|---:|---|\n"
              + "\n".join(f"| {n} | {', '.join(map(str, s.get('seeds', [])))} | "
                          f"{'–' if s.get('train_minutes') is None else format(s['train_minutes'], '.1f')} | "
                          f"{'–' if s.get('users_per_second') is None else format(s['users_per_second'], '.0f')} | "
                          f"{s['metrics'].get('all', {}).get('invalid_rate', 0):.4f} | {s.get('device', '')} |"
                          for n, s in systems.items())]
    if report.get("tokenizers"):
        parts += ["## Tokenizers", "| tokenizer | SID length | utilisation per position | collision rate | "
                  "tokenizer seconds |\n|---|---:|---|---:|---:|\n" + "\n".join(
                      f"| {n} | {q.get('sid_length')} | {q.get('utilisation')} | {q.get('collision_rate')} | "
                      f"{q.get('wall_time_s', '–')} |" for n, q in report["tokenizers"].items())]
    if report.get("published"):
        parts += ["## Published reference numbers (not run here)", "\n".join(f"- {p}" for p in report["published"])]
    env = report.get("environment", {})
    parts += ["## Environment", "\n".join(f"- {k}: {v}" for k, v in env.items()),
              f"Command: `{report.get('command', '')}`", "Figures: report.html.",
              "## Configuration", f"```yaml\n{report.get('config', '')}\n```"]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_report_files(report: Mapping[str, Any], out: Path) -> dict[str, str]:
    """report.json, report.md and report.html in `out` (each written atomically)."""
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    write_json(paths["json"], report)
    write_text(paths["md"], render_markdown(report))
    write_text(paths["html"], render_html(report))
    return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------- the benchmark run
class _Stages:
    """OUTPUT/stages/<stage>-<name>-<fingerprint>: results cached by what they depend on."""

    def __init__(self, root: Path):
        self.root = root / "stages"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str, name: str, fingerprint: Any) -> Path:
        return self.root / f"{stage}-{name.replace('+', '_')}-{_hash(fingerprint)}"

    def cached(self, stage: str, name: str, fingerprint: Any, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.path(stage, name, fingerprint).with_suffix(".json")
        if path.exists():
            try:
                return read_json(path)
            except DataError:
                pass  # a damaged result is recomputed
        result = compute()
        write_json(path, result)
        return result


def _eval_entry(res: Mapping[str, Any], seed: int, train_seconds: float | None) -> dict[str, Any]:
    return {"seed": seed, "metrics": res["metrics"], "users_per_second": res.get("users_per_second"),
            "device": res.get("device", ""), "train_minutes": None if train_seconds is None else train_seconds / 60}


def _file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _prepare_source(cfg: Config, stages: _Stages, log: Callable[[str], None]) -> Path:
    """`benchmark.source` prepared once into a stage keyed by the source's files."""
    from mmq_rec.cli import main as cli_main

    src = Path(cfg.benchmark.source).resolve()
    if not src.exists():
        raise DataError("the benchmark's source dataset does not exist", path=src, field="benchmark.source")
    files = sorted(p for p in ([src] if src.is_file() else src.rglob("*")) if p.is_file())
    fp = {"v": STAGES_VERSION, "source": str(src), "format": cfg.benchmark.source_format,
          "files": [[str(p.relative_to(src.parent)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
    out = stages.path("data", src.name, fp)
    if not (out / "dataset.json").exists():
        log(f"[benchmark] prepare {src} ({cfg.benchmark.source_format}) -> {out}")
        with contextlib.redirect_stdout(sys.stderr):  # stdout stays for --json
            code = cli_main(["prepare", "--format", cfg.benchmark.source_format, "--input", str(src), "--output",
                             str(out), "--overwrite"])
        if code != 0:
            raise DataError("could not prepare the dataset (see the error above)", field="benchmark.source")
    return out


def _trimmed(section: dict[str, Any], drop: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in drop}


def run_benchmark(cfg: Config, output: str | Path, *, show_progress: bool = True,
                  log: Callable[[str], None] = print, command: str = "", overwrite: bool = False) -> dict[str, Any]:
    bc = cfg.benchmark
    external = cfg.tokenize.external.path if "external" in bc.tokenizers else None
    out = claim_dir(output, "benchmark", overwrite=overwrite, inputs=(cfg.data.dataset or None, bc.source or None,
                                                                      external))
    stages = _Stages(out)
    if not cfg.data.dataset:
        if not bc.source:
            raise DataError("give a prepared dataset (--dataset DIR) or a raw one (benchmark.source)",
                            field="data.dataset")
        cfg = updated(cfg, {"data": {"dataset": str(_prepare_source(cfg, stages, log))}})
    base = Pipeline(cfg, show_progress=show_progress, log=log)
    ds = base.dataset()
    items_file = Path(ds.meta["path"]) / "items.parquet"
    data_fp = {"v": STAGES_VERSION, "name": ds.name, **dataset_digest(ds),
               "items_file": _file_digest(items_file) if items_file.exists() else None}
    env_fp = {"device": cfg.device, "processes": int(os.environ.get("WORLD_SIZE", "1"))}
    results: dict[str, list[dict[str, Any]]] = {}
    kinds: dict[str, tuple[str, str | None]] = {}
    tok_quality: dict[str, Any] = {}
    curves: dict[str, Any] = {}

    def tok_fingerprint(s: dict[str, Any], seed: int, tok: str) -> dict[str, Any]:
        encode = None if tok == "external" else {
            k: _trimmed(v, ("device", "batch_size")) if isinstance(v, dict) else v
            for k, v in s["encode"].items() if k != "cache_dir"}
        ext = _file_digest(cfg.tokenize.external.path) if tok == "external" else None
        return {"data": data_fp, "seed": seed, "encode": encode, "tokenize": tok, "settings": s["tokenize"][tok],
                "external_file": ext, "split": split_settings(cfg), "env": env_fp}

    def eval_fp(s: dict[str, Any], run: dict[str, Any], what: str) -> dict[str, Any]:
        """An evaluation depends on the model it reads (its run and best checkpoint), decoding and the protocol."""
        return {"run": run, "what": what, "eval": s["eval"], "decode": _trimmed(s["decode"], ("batch_size",)),
                "v": STAGES_VERSION}

    def add(name: str, kind: str, tok: str | None, entry: dict[str, Any]) -> None:
        results.setdefault(name, []).append(entry)
        kinds[name] = (kind, tok)

    def curve(history: list[dict[str, Any]], unit: str, key: str, metric: str) -> dict[str, Any]:
        return {"unit": unit, "metric": metric, "points": [[h[unit], h[key]] for h in history if key in h]}

    t_all = time.perf_counter()
    for seed in bc.seeds:
        first = seed == bc.seeds[0]
        for tok in bc.tokenizers:
            stage2 = tok == STAGE2  # MMQ's tokenizer, fine-tuned by the generator's run
            base_tok = "mmq" if stage2 else tok
            scfg = updated(cfg, {"seed": seed, "tokenize": {"tokenizer": base_tok}})
            pipe = Pipeline(scfg, show_progress=show_progress, log=log)
            s = to_dict(scfg)
            tok_fp = tok_fingerprint(s, seed, base_tok)
            tok_dir = stages.path("tokenizer", base_tok, tok_fp)
            if not (tok_dir / "quality.json").exists():
                log(f"[benchmark] seed {seed}: tokenize with {base_tok} -> {tok_dir}")
                pipe.tokenize(ds, tok_dir, overwrite=True)
            if not stage2:
                tok_quality.setdefault(tok, read_json(tok_dir / "quality.json"))
            label = {"mmq": "MMQ", "rqkmeans": "RQ-KMeans", "rqvae": "RQ-VAE", STAGE2: "MMQ + stage 2"}.get(tok, tok)
            gen_fp = {"tok": tok_fp, "generator": fingerprint_view("generator", s["generator"]), "train": s["train"],
                      "decode": {k: s["decode"][k] for k in ("valid_users", "beam_width")}, "ks": s["eval"]["ks"],
                      **({"finetune": s["finetune"]} if stage2 else {})}
            run = None
            if bc.generator:
                gen_dir = stages.path("generator", tok, gen_fp)
                log(f"[benchmark] seed {seed}: generator on {tok} SIDs -> {gen_dir}")
                run = pipe.train(ds, tok_dir, gen_dir, finetune=stage2)
                gen_id = {"dir": str(gen_dir), "steps": run["steps"], "best_step": run["best_step"]}
                res = stages.cached("eval", f"generator-{tok}", eval_fp(s, gen_id, "generator"),
                                    partial(pipe.evaluate, ds, run["best_model"]))
                name = f"generator ({label} SIDs)"
                add(name, "generator", tok, _eval_entry(res, seed, run["train_seconds"]))
                if first:
                    curves[name] = curve(run["history"], "step", cfg.train.metric, cfg.train.metric)
            if stage2:  # the ranker reads the SIDs stage 2 left (the generator run's fine-tuned tokenizer)
                tok_dir, tok_fp = Path(run["tokenizer_dir"]), {"stage2": gen_id}
                tok_quality.setdefault(tok, read_json(tok_dir / "quality.json"))
            if bc.ranker and cfg.ranker.representation != "id":
                rk_fp = {"tok": tok_fp, "ranker": _trimmed(s["ranker"], ("candidates", "fusion_weights")),
                         "ks": s["eval"]["ks"]}
                rk_dir = stages.path("ranker", f"{cfg.ranker.representation}-{tok}", rk_fp)
                log(f"[benchmark] seed {seed}: {cfg.ranker.representation} ranker on {tok} SIDs -> {rk_dir}")
                rk = pipe.rank_train(ds, tok_dir, rk_dir)
                rk_id = {"dir": str(rk_dir), "epochs": rk["epochs"], "best_epoch": rk["best_epoch"]}
                name = f"ranker {cfg.ranker.representation} ({label} SIDs)"
                res = stages.cached("eval", f"ranker-{tok}", eval_fp(s, rk_id, "ranker"),
                                    partial(pipe.rank_evaluate, ds, rk["best_model"]))
                add(name, "ranker", tok, _eval_entry(res, seed, rk["train_seconds"]))
                if first:
                    curves[name] = curve(rk["history"], "epoch", f"valid_{cfg.ranker.metric}", cfg.ranker.metric)
                if bc.generate_rank and run is not None:
                    n = cfg.ranker.candidates[0]
                    what = {"n": n, "fusion": s["ranker"]["fusion_weights"], "generator": gen_id}
                    res = stages.cached("eval", f"generate-rank-{tok}", eval_fp(s, rk_id, json.dumps(what)),
                                        partial(pipe.rank_evaluate, ds, rk["best_model"], generator=run["best_model"],
                                                candidates=n))
                    add(f"generate({n}) → rank ({label} SIDs)", "generate→rank", tok,
                        _eval_entry(res, seed, run["train_seconds"] + rk["train_seconds"]))
        if bc.ranker:  # the item-ID ranker (SASRec) reads no SIDs: once per seed, on the first table
            tok = "mmq" if bc.tokenizers[0] == STAGE2 else bc.tokenizers[0]
            icfg = updated(cfg, {"seed": seed, "tokenize": {"tokenizer": tok}, "ranker": {"representation": "id"}})
            pipe = Pipeline(icfg, show_progress=show_progress, log=log)
            s = to_dict(icfg)
            tok_fp = tok_fingerprint(s, seed, tok)  # the table the run directory records
            tok_dir = stages.path("tokenizer", tok, tok_fp)
            if not (tok_dir / "quality.json").exists():
                pipe.tokenize(ds, tok_dir, overwrite=True)
            rk_fp = {"tok": tok_fp, "ranker": _trimmed(s["ranker"], ("candidates", "fusion_weights")),
                     "ks": s["eval"]["ks"]}
            rk_dir = stages.path("ranker", "id", rk_fp)
            log(f"[benchmark] seed {seed}: item-ID ranker (SASRec) -> {rk_dir}")
            rk = pipe.rank_train(ds, tok_dir, rk_dir)
            rk_id = {"dir": str(rk_dir), "epochs": rk["epochs"], "best_epoch": rk["best_epoch"]}
            res = stages.cached("eval", "ranker-id", eval_fp(s, rk_id, "ranker"),
                                partial(pipe.rank_evaluate, ds, rk["best_model"]))
            name = "ranker id (SASRec, item IDs)"
            add(name, "ranker", None, _eval_entry(res, seed, rk["train_seconds"]))
            if first:
                curves[name] = curve(rk["history"], "epoch", f"valid_{cfg.ranker.metric}", cfg.ranker.metric)
        pipe = Pipeline(updated(cfg, {"seed": seed}), show_progress=show_progress, log=log)
        add("popularity", "baseline", None, _eval_entry(pipe.baseline(ds, "popularity"), seed, None))
    systems = {n: system_entry(kinds[n][0], rs, kinds[n][1]) for n, rs in results.items()}
    device = next((s["device"] for s in systems.values() if s["device"]), "cpu")
    report = compose_report(
        f"MMQ-Rec benchmark: {ds.name}", systems, cfg.eval.ks, dataset=ds.name,
        subtitle=f"{ds.num_users:,} users, {ds.num_items:,} items, {ds.num_interactions:,} interactions. Test split, "
                 f"leave-one-out, full catalogue, TIGER's protocol (history not excluded); every checkpoint chosen "
                 f"on validation. Seeds {bc.seeds}: mean ± sample std. Wall time "
                 f"{(time.perf_counter() - t_all) / 60:.1f} min (cached stages cost nothing).",
        environment_=environment(device), command=command, config=to_yaml(cfg), tokenizers=tok_quality,
        curves=curves, curve_seed=bc.seeds[0])
    report["files"] = write_report_files(report, out)
    return report


def compose_from_files(paths: Sequence[str | Path], title: str = "MMQ-Rec report") -> dict[str, Any]:
    """A report from earlier `mmq benchmark` outputs (their report.json) and `--report` JSON files
    of `mmq evaluate`, `mmq rank evaluate` and `mmq baseline` (each one system). A name met twice
    is prefixed with its source's folder; all sources must share their cut-offs and dataset."""
    systems: dict[str, Any] = {}
    ks, env, tokenizers, curves, dataset = None, {}, {}, {}, None

    def put(name: str, entry: dict[str, Any], source: Path) -> None:
        systems[name if name not in systems else f"{source.parent.name}/{name}"] = entry

    for p in paths:
        p = Path(p)
        f = p / "report.json" if p.is_dir() else p
        if not f.is_file():
            raise DataError("not a benchmark output directory (no report.json) or a report JSON file", path=p)
        data = read_json(f)
        if not isinstance(data, dict) or data.get("generated_by") != GENERATED_BY:
            raise DataError("not a report written by MMQ-Rec", path=f)
        if ks is not None and list(data.get("ks", [])) != list(ks):
            raise DataError(f"reports Recall/NDCG at {data.get('ks')}, the others at {ks}: compose reports with "
                            "the same eval.ks", path=f)
        ks = data.get("ks")
        name_of = data.get("dataset") if isinstance(data.get("dataset"), str) else None
        if name_of and dataset and name_of != dataset:
            raise DataError(f"is about dataset {name_of!r}, the others about {dataset!r}", path=f)
        dataset = dataset or name_of
        if "systems" in data:  # a benchmark's report
            for name, entry in data["systems"].items():
                put(name, entry, f)
            env = env or data.get("environment", {})
            tokenizers.update(data.get("tokenizers", {}))
            curves.update(data.get("curves", {}))
        elif "results" in data:  # one evaluation's --report
            tags = [t for t in (data.get("split") if data.get("split") != "test" else None,
                                "history excluded" if data.get("exclude_history") else None) if t]
            for name, metrics in data["results"].items():
                label = f"{name} [{f.stem}{', ' + ', '.join(tags) if tags else ''}]"
                put(label, system_entry(data.get("mode", "evaluation"), [{
                    "seed": None, "metrics": metrics, "users_per_second": data.get("users_per_second"),
                    "device": data.get("device", ""), "train_minutes": None}]), f)
        else:
            raise DataError("a report JSON without results", path=f)
    if not systems:
        raise DataError("no results in the given files", field="runs")
    return compose_report(title, systems, ks, dataset=dataset or "", environment_=env, tokenizers=tokenizers,
                          curves=curves, subtitle="Composed by `mmq report` from: " + ", ".join(str(p) for p in paths))
