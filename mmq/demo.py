"""`mmq demo`: every stage, offline, on the built-in synthetic catalogue.

The demo is the `demo` preset (mmq_rec/presets.py) run through the same `Pipeline` as the
command line: synthetic data -> modalities -> MMQ tokenizer -> generator -> rankers (item-ID,
SID, the SID one calibrated to the item-ID one's accuracy, and an id+sid ranker fine-tuned with the
tokenizer by MMQ stage 2) -> evaluation beside the reference recommenders. Every setting can be overridden as for any command."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmq_rec.benchmark import compose_report, environment, system_entry, write_report_files
from mmq_rec.config import to_yaml
from mmq_rec.eval.report import metrics_table
from mmq_rec.pipeline import Pipeline
from mmq_rec.recdata.io import claim_dir
from mmq_rec.recdata.synthetic import synthetic_catalogue
from mmq_rec.tokenizer.api import format_quality

BANNER = "SYNTHETIC DATA: a generated catalogue and generated users, not real behaviour."
STAGE2_EPOCHS = 4  # alternating: tokenizer, ranker, tokenizer, ranker
STAGE2_ROW = "id+sid, MMQ stage 2"
PROBED = ("text", "image", "attributes", "collaborative")  # modalities whose planted structure is checked


def neighbour_agreement(emb: np.ndarray, labels: np.ndarray, sample: int = 500, seed: int = 0) -> float:
    """Share of sampled items whose nearest neighbour (cosine) has the same latent label."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(emb), size=min(sample, len(emb)), replace=False)
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = e[idx] @ e.T
    sims[np.arange(len(idx)), idx] = -np.inf
    return float((labels[sims.argmax(axis=1)] == labels[idx]).mean())


def run_demo(pipe: Pipeline, output: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    cfg, log = pipe.cfg, pipe.log
    t_start = time.perf_counter()
    out = claim_dir(output or cfg.output_dir, "demo", overwrite=overwrite)
    log(f"== MMQ-Rec demo. {BANNER}")
    ds = synthetic_catalogue(cfg.synthetic)
    ds.save(out / "data")
    ds.meta["path"] = str(out / "data")
    s = ds.stats()
    log(f"[data] {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions, "
        f"mean sequence length {s['mean_sequence_length']:.2f} -> {out / 'data'}")

    split, buckets = pipe.split(ds), pipe.buckets(ds)
    log(f"[split] leave-one-out: {split.summary()}; item buckets {buckets.sizes()}")

    t0 = time.perf_counter()
    modalities = pipe.modalities(ds, PROBED)
    log(f"[encode] {', '.join(f'{k} {v.shape[1]}-d' for k, v in modalities.items())} "
        f"({time.perf_counter() - t0:.1f}s)")
    latent = {k: np.array(ds.items[f"latent_{k}"]) for k in ("topic", "text_style", "image_style")}
    structure = {m: {k: round(neighbour_agreement(e, lab, seed=cfg.seed), 3) for k, lab in latent.items()}
                 for m, e in modalities.items()}
    for m, agr in structure.items():
        log(f"[encode] {m:13s} nearest neighbour shares: " + ", ".join(f"{k} {v:.2f}" for k, v in agr.items()))

    # stage 1: semantic IDs (the preset's tokenizer over the preset's modalities)
    tok = pipe.tokenize(ds, out / "tokenizer")
    log("[tokenize] " + format_quality(tok.quality).replace("\n", "\n[tokenize] "))

    # stage 2: the seq2seq generator, selected on validation
    run = pipe.train(ds, out / "tokenizer", out / "generator", overwrite=overwrite)
    log(f"[train] {run['steps']} steps in {run['train_seconds']:.0f}s; best validation {cfg.train.metric} "
        f"{run[f'best_valid_{cfg.train.metric}']:.4f} at step {run['best_step']} -> {run['best_model']}")

    # stage 3: rankers, the item-ID one (SASRec) beside the configured SID one (and, for MMQ stage 2,
    # an id+sid one), selected on validation
    stage2 = cfg.tokenize.tokenizer == "mmq"
    rankers, rank_minutes, trained = {}, {}, {}
    for rep in dict.fromkeys(("id", cfg.ranker.representation) + (("id+sid",) if stage2 else ())):
        rp = Pipeline(dataclasses.replace(cfg, ranker=dataclasses.replace(cfg.ranker, representation=rep)),
                      show_progress=pipe.show_progress, log=lambda m: None)
        r = trained[rep] = rp.rank_train(ds, out / "tokenizer", out / f"ranker-{rep.replace('+', '_')}",
                                         overwrite=overwrite)
        rankers[rep], rank_minutes[rep] = r["best_model"], r["train_seconds"] / 60
        log(f"[rank] {rep} ranker: {r['epochs']} epochs in {r['train_seconds']:.0f}s; best validation "
            f"{cfg.ranker.metric} {r[f'best_valid_{cfg.ranker.metric}']:.4f} at epoch {r['best_epoch']}")

    # the SID ranker calibrated to the item-ID ranker's validation recall@10: the accuracy it has above
    # that, spent on rare items by a ranking-time popularity correction
    sid_rep = cfg.ranker.representation
    if sid_rep != "id":
        cal = pipe.rank_calibrate(ds, rankers[sid_rep], out / f"ranker-{sid_rep.replace('+', '_')}-calibrated",
                                  reference=rankers["id"], overwrite=overwrite)
        row = f"{sid_rep}, calibrated"
        rankers[row], rank_minutes[row] = cal["output"], rank_minutes[sid_rep]
        log(f"[rank] {sid_rep} ranker calibrated to the item-ID ranker's validation recall@10 "
            f"({cal['floor']:.4f}): T = {cal['chosen']}" + ("" if cal["floor_met"] else " (no T keeps it)"))

    # MMQ stage 2 with the ranker: the id+sid ranker and the tokenizer fine-tuned from that ranker
    # (a tokenizer epoch, a ranker epoch, twice)
    if stage2:
        base = trained["id+sid"]
        s2_cfg = dataclasses.replace(
            cfg, ranker=dataclasses.replace(cfg.ranker, representation="id+sid", epochs=STAGE2_EPOCHS),
            finetune=dataclasses.replace(cfg.finetune, init_from=base["best_model"]))
        r2 = Pipeline(s2_cfg, show_progress=pipe.show_progress, log=lambda m: None).rank_train(
            ds, out / "tokenizer", out / "ranker-id_sid-stage2", overwrite=overwrite, finetune=True)
        rankers[STAGE2_ROW], rank_minutes[STAGE2_ROW] = r2["best_model"], r2["train_seconds"] / 60
        s2 = r2["stage2"]
        log(f"[finetune] id+sid ranker and MMQ tokenizer fine-tuned {r2['epochs']} epochs from the id+sid ranker "
            f"(validation {cfg.ranker.metric} {base[f'best_valid_{cfg.ranker.metric}']:.4f} -> "
            f"{r2[f'best_valid_{cfg.ranker.metric}']:.4f}); {s2['changed_sids']['items']:.1%} of items changed SID, "
            f"collision rate {s2['before']['collision_rate']:.4f} -> {s2['after']['collision_rate']:.4f}")

    name = f"{cfg.tokenize.tokenizer.upper()} + generator"
    n = cfg.ranker.candidates[0]
    g2r = f"generate({n}) -> ranker ({cfg.ranker.representation})"
    results: dict[str, dict[str, Any]] = {}
    for part in ("valid", "test"):
        res = {name: pipe.evaluate(ds, run["best_model"], part)}
        for rep, path in rankers.items():
            res[f"ranker ({rep})"] = pipe.rank_evaluate(ds, path, part)
        res[g2r] = pipe.rank_evaluate(ds, rankers[cfg.ranker.representation], part, generator=run["best_model"],
                                      candidates=n)
        res["popularity"] = pipe.baseline(ds, "popularity", part)
        for m in modalities:
            res[f"kNN({m})"] = pipe.baseline(ds, "knn", part, modality=m)
        results[part] = res
    ks = cfg.eval.ks
    minutes = {name: run["train_seconds"] / 60, **{f"ranker ({r})": rank_minutes[r] for r in rankers},
               g2r: run["train_seconds"] / 60 + rank_minutes[cfg.ranker.representation]}
    kinds = {name: "generator", g2r: "generate→rank", **{f"ranker ({r})": "ranker" for r in rankers}}
    systems = {k: system_entry(kinds.get(k, "baseline"), [{
        "seed": cfg.seed, "metrics": r["metrics"], "users_per_second": r.get("users_per_second"),
        "device": r.get("device", "cpu"), "train_minutes": minutes.get(k)}]) for k, r in results["test"].items()}
    curves = {name: {"unit": "step", "metric": cfg.train.metric,
                     "points": [[h["step"], h[cfg.train.metric]] for h in run["history"] if cfg.train.metric in h]}}
    report = compose_report(
        "MMQ-Rec demo (synthetic data)", systems, ks, dataset=ds.name,
        subtitle=f"{BANNER} Test split, leave-one-out, full-catalogue ranking, one seed ({cfg.seed}). "
                 "Generated by `mmq demo`.",
        environment_=environment(systems[name]["device"]), command="mmq demo", config=to_yaml(cfg),
        tokenizers={cfg.tokenize.tokenizer: tok.quality}, curves=curves, curve_seed=cfg.seed)
    report.update(validation={k: r["metrics"] for k, r in results["valid"].items()}, dataset_stats=s,
                  split=split.summary(), buckets=buckets.sizes(), modality_structure=structure)
    files = write_report_files(report, out)
    test = {k: r["metrics"] for k, r in results["test"].items()}
    log("[eval] test users, all:\n" + metrics_table(test, "all", ks))
    log("[eval] test users whose target is a long-tail item:\n" + metrics_table(test, "long_tail", ks))
    elapsed = time.perf_counter() - t_start
    log(f"[done] report -> {files['html']} (also report.md, report.json; {elapsed:.1f}s). {BANNER}")
    return {"synthetic": True, "dataset": s, "split": split.summary(), "buckets": buckets.sizes(),
            "modality_structure": structure, "tokenizer": tok.quality, "test": test, "report": files,
            "answers": report["answers"],
            "seconds": elapsed}
