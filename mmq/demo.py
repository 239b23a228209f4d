"""`mmq demo`: every stage that exists, offline, on the built-in synthetic catalogue."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from eval.baselines import knn_rankings, popularity_rankings
from eval.buckets import popularity_buckets
from eval.metrics import evaluate_rankings
from eval.report import metrics_table, write_report
from generator.model import SIDCodec
from generator.recommend import Recommender
from generator.train import train_generator
from mmq.config import Config
from mmq.pipeline import build_modalities, make_split, make_validator, rank_part, sample_part, titles_of
from recdata.synthetic import synthetic_catalogue
from tokenizer.api import format_quality, tokenize
from tokenizer.mmq import MMQTokenizer

BANNER = "SYNTHETIC DATA: a generated catalogue and generated users, not real behaviour."


def neighbour_agreement(emb: np.ndarray, labels: np.ndarray, sample: int = 500, seed: int = 0) -> float:
    """Share of sampled items whose nearest neighbour (cosine) has the same latent label."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(emb), size=min(sample, len(emb)), replace=False)
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = e[idx] @ e.T
    sims[np.arange(len(idx)), idx] = -np.inf
    return float((labels[sims.argmax(axis=1)] == labels[idx]).mean())


def run_demo(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    log(f"== MMQ-Rec demo. {BANNER}")
    cfg.synthetic.seed = cfg.seed
    ds = synthetic_catalogue(cfg.synthetic)
    ds.save(out / "data")
    s = ds.stats()
    log(f"[data] {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions, "
        f"mean sequence length {s['mean_sequence_length']:.2f} -> {out / 'data'}")

    split = make_split(ds, cfg)
    buckets = popularity_buckets(split.train_sequences, ds.num_items, cfg.eval.buckets)
    log(f"[split] leave-one-out: {split.summary()}; item buckets {buckets.sizes()}")

    cfg.encode.modalities = ["text", "image", "attributes", "collaborative"]
    t0 = time.perf_counter()
    modalities = build_modalities(ds, cfg, split, show_progress=False)
    log(f"[encode] {', '.join(f'{k} {v.shape[1]}-d' for k, v in modalities.items())} "
        f"({time.perf_counter() - t0:.1f}s)")
    latent = {k: np.array(ds.items[f"latent_{k}"]) for k in ("topic", "text_style", "image_style")}
    structure = {m: {k: round(neighbour_agreement(e, lab, seed=cfg.seed), 3) for k, lab in latent.items()}
                 for m, e in modalities.items()}
    for m, agr in structure.items():
        log(f"[encode] {m:13s} nearest neighbour shares: " + ", ".join(f"{k} {v:.2f}" for k, v in agr.items()))

    # stage 1: MMQ semantic IDs from the text and image modalities
    d = cfg.demo
    mmq_cfg = cfg.tokenize.mmq
    mmq_cfg.codebook_size, mmq_cfg.epochs, mmq_cfg.seed = d.codebook_size, d.tokenizer_epochs, cfg.seed
    tok = tokenize(MMQTokenizer(mmq_cfg), {m: modalities[m] for m in ("text", "image")}, ds.item_ids(),
                   show_progress=False)
    tok.save_pretrained(out / "tokenizer")
    log("[tokenize] " + format_quality(tok.quality).replace("\n", "\n[tokenize] "))

    # stage 2: the seq2seq generator, selected on validation NDCG@10
    import torch

    g = cfg.generator
    g.d_model, g.num_layers, g.num_decoder_layers, g.d_ff = d.d_model, d.layers, d.layers, 4 * d.d_model
    g.num_heads, g.d_kv, g.input_mode = 4, d.d_model // 4, d.input_mode
    t = cfg.train
    t.max_steps, t.eval_every, t.batch_size, t.seed = d.train_steps, d.eval_every, d.batch_size, cfg.seed
    t.warmup_steps, t.lr = min(t.warmup_steps, d.train_steps // 10), 3e-3
    codec = SIDCodec(tok.table, g.input_mode)
    validate = make_validator(codec, sample_part(split.valid, cfg.decode.valid_users, cfg.seed), cfg, ds.num_items)

    t0 = time.perf_counter()
    state = train_generator(codec, torch.from_numpy(split.train.histories), torch.from_numpy(split.train.targets),
                            g, t, out / "generator", validate, show_progress=False, titles=titles_of(ds))
    log(f"[train] {state['step']} steps in {time.perf_counter() - t0:.0f}s; best validation NDCG@10 "
        f"{state['best_metric']:.4f} at step {state['best_step']} -> {out / 'generator' / 'best'}")
    best = Recommender.from_pretrained(out / "generator" / "best")

    ks = cfg.eval.ks
    kmax = max(ks)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for part_name in ("valid", "test"):
        part = getattr(split, part_name)
        groups = buckets.of_targets(part.targets)
        rankings = {"MMQ + generator": rank_part(best, part, cfg),
                    "popularity": popularity_rankings(buckets.popularity, len(part), kmax)}
        for m, e in modalities.items():
            rankings[f"kNN({m})"] = knn_rankings(e, part.histories, kmax)
        for model, ranked in rankings.items():
            res = evaluate_rankings(ranked, part.targets, ds.num_items, ks, groups)
            results.setdefault(part_name, {})[model] = res
    md, js = write_report(
        out / "report", "MMQ-Rec demo (synthetic data)", results["test"], ks,
        preamble=f"{BANNER}\n\nTest split, leave-one-out, full-catalogue ranking. Generated by `mmq demo`.",
        extra={"validation": results["valid"], "dataset": s, "split": split.summary(),
               "buckets": buckets.sizes(), "modality_structure": structure, "tokenizer": tok.quality,
               "training": {k: v for k, v in state.items() if k != "history"}})
    log("[eval] test users, all:\n" + metrics_table(results["test"], "all", ks))
    log("[eval] test users whose target is a long-tail item:\n" + metrics_table(results["test"], "long_tail", ks))
    elapsed = time.perf_counter() - t_start
    log(f"[done] report -> {md} and {js} ({elapsed:.1f}s). {BANNER}")
    return {"synthetic": True, "dataset": s, "split": split.summary(), "buckets": buckets.sizes(),
            "modality_structure": structure, "tokenizer": tok.quality, "test": results["test"], "report": str(md),
            "seconds": elapsed}
