"""Benchmark: MMQ against its ablations and the baseline tokenizers, on Amazon Beauty
(text + attributes) and TikTok (real image + audio features).

    python scripts/bench_tokenizer.py [--datasets beauty tiktok] [--only NAME ...] [--out benchmarks]

For each variant: reconstruction loss (standardised MSE, total and per modality), utilisation and
entropy per SID position, collision rate before disambiguation, largest collision group, SID
length, wall time (fit + encode; modality encoding is cached and timed separately).
Writes benchmarks/tokenizer.json and benchmarks/tokenizer.md after every variant."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mmq_rec.config import load_config
from mmq_rec.eval.split import leave_one_out
from mmq_rec.pipeline import build_modalities
from mmq_rec.recdata.io import write_json, write_text
from mmq_rec.recdata.loaders import load_jsonl, load_tiktok
from mmq_rec.tokenizer.api import tokenize
from mmq_rec.tokenizer.baselines import (
    ExternalConfig,
    ExternalTokenizer,
    RandomConfig,
    RandomTokenizer,
    RQKMeansConfig,
    RQKMeansTokenizer,
    RQVAEConfig,
    RQVAETokenizer,
)
from mmq_rec.tokenizer.mmq import MMQConfig, MMQTokenizer

HERE = Path(__file__).resolve().parent.parent
DATA = HERE.parent / "shared" / "data"


def variants(base: MMQConfig, modalities: list[str], extra_modality: str | None):
    """(name, description, tokenizer factory, modalities to use)."""
    n_mod = len(modalities)
    v = [
        ("mmq", "MMQ, default config", lambda: MMQTokenizer(base), modalities),
        ("mmq K=64", "codebook size 64", lambda: MMQTokenizer(replace(base, codebook_size=64)), modalities),
        ("mmq K=128", "codebook size 128", lambda: MMQTokenizer(replace(base, codebook_size=128)), modalities),
        ("mmq w/o orthogonal", "γ = 0", lambda: MMQTokenizer(replace(base, gamma=0.0)), modalities),
        ("mmq w/o aux recon", "β = 0", lambda: MMQTokenizer(replace(base, beta=0.0)), modalities),
        ("mmq L2", "L2 instead of cosine matching", lambda: MMQTokenizer(replace(base, distance="l2")), modalities),
        ("mmq shared only", f"Ns = {base.num_shared_experts + base.num_specific_experts * n_mod}, Nm = 0 (same length)",
         lambda: MMQTokenizer(replace(base, num_shared_experts=base.num_shared_experts
                                      + base.num_specific_experts * n_mod, num_specific_experts=0)), modalities),
        ("mmq specific only", f"Ns = 0, Nm = {(base.num_shared_experts + base.num_specific_experts * n_mod) // n_mod} "
                              "(same length)",
         lambda: MMQTokenizer(replace(base, num_shared_experts=0, num_specific_experts=(
             base.num_shared_experts + base.num_specific_experts * n_mod) // n_mod)), modalities),
    ]
    if extra_modality is not None:
        v.append((f"mmq + {extra_modality}", f"adds the {extra_modality} modality (2 more specific experts: "
                  f"SID length {base.num_shared_experts + base.num_specific_experts * (n_mod + 1)})",
                  lambda: MMQTokenizer(base), [*modalities, extra_modality]))
    v += [
        ("rqvae MA", "TIGER RQ-VAE on the concatenation, 3 x 256", lambda: RQVAETokenizer(RQVAEConfig()), modalities),
        ("rqvae MS", "one RQ-VAE per modality, 3 x 256 each", lambda: RQVAETokenizer(RQVAEConfig(mode="separate")),
         modalities),
        ("rqkmeans MA", "residual k-means on the concatenation, 3 x 256", lambda: RQKMeansTokenizer(RQKMeansConfig()),
         modalities),
        ("rqkmeans MS", "residual k-means per modality, 3 x 256 each",
         lambda: RQKMeansTokenizer(RQKMeansConfig(mode="separate")), modalities),
        ("random", "uniform random codes, 6 x 256", lambda: RandomTokenizer(RandomConfig()), modalities),
    ]
    return v


def md_table(rows: list[dict]) -> str:
    head = ("| variant | SID len | recon total | recon per modality | utilisation (min / per position) | "
            "entropy bits (per position) | collision rate | largest group | wall s |")
    lines = [head, "|---|---:|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        q = r["quality"]
        rec = q["reconstruction_loss"]
        per = ", ".join(f"{k} {v:.3f}" for k, v in rec.items() if k != "total") if rec else "–"
        lines.append(
            f"| {r['name']} | {q['semantic_length']}+{q['sid_length'] - q['semantic_length']} | "
            f"{rec['total']:.4f} | {per} | " if rec else
            f"| {r['name']} | {q['semantic_length']}+{q['sid_length'] - q['semantic_length']} | – | – | ")
        lines[-1] += (f"{min(q['utilisation']):.3f} / {', '.join(f'{u:.2f}' for u in q['utilisation'])} | "
                      f"{', '.join(f'{e:.2f}' for e in q['entropy'])} | {q['collision_rate']:.4f} | "
                      f"{q['largest_collision_group']} | {q['wall_time_s']:.1f} |")
    return "\n".join(lines)


def write_outputs(out: Path, results: dict) -> None:
    write_json(out / "tokenizer.json", results)
    m = results["machine"]
    parts = [
        "# Tokenizer benchmark",
        f"Command: `{results['command']}`. Machine: {m['cpu_count']} CPU cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), device {m['device']}. Seed {results['seed']}.",
        "Reconstruction loss is the MSE of the standardised (per-dimension z-scored) modality embeddings "
        "reconstructed from the codes, so it is comparable across tokenizers (1.0 = predicting the mean). "
        "Utilisation = share of a position's codewords used by at least one item; collision rate = "
        "1 − unique code tuples / items, before the disambiguation token. Wall time = fit + encode, "
        "modality encoding excluded (cached across runs; its first cost is in benchmarks/encoding.md).",
    ]
    for ds_name, ds in results["datasets"].items():
        parts.append(f"## {ds_name}: {ds['items']:,} items, modalities {ds['modalities']}")
        parts.append(f"Loading the modality embeddings (cached): {ds['encoding_s']} s.")
        parts.append(md_table(ds["variants"]))
        parts.append("\n".join(f"- **{r['name']}**: {r['description']}" for r in ds["variants"]))
    if results.get("notes"):
        parts.append("## Notes\n" + results["notes"])
    write_text(out / "tokenizer.md", "\n\n".join(parts) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["beauty", "tiktok"])
    ap.add_argument("--only", nargs="*", help="run only these variant names")
    ap.add_argument("--out", default=str(HERE / "benchmarks"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    existing = json.loads((out / "tokenizer.json").read_text()) if (out / "tokenizer.json").exists() else {}
    results = {
        "command": "python scripts/bench_tokenizer.py " + " ".join(f"--datasets {' '.join(args.datasets)}".split()),
        "seed": args.seed,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "device": "cuda" if torch.cuda.is_available() else "cpu", "platform": platform.platform()},
        "datasets": existing.get("datasets", {}),
        "notes": existing.get("notes", ""),
    }
    base = MMQConfig(seed=args.seed)
    for name in args.datasets:
        t0 = time.perf_counter()
        if name == "beauty":
            ds = load_jsonl(DATA / "amazon-beauty")
            cfg = load_config(overrides={"seed": args.seed, "encode": {"modalities": ["text", "attributes",
                                                                                      "collaborative"]}})
            split = leave_one_out(ds.sequences(), ds.num_items)
            mods = build_modalities(ds, cfg, split, show_progress=False)
            modalities, letter = ["text", "attributes"], DATA / "amazon-beauty" / "letter.index.json"
            extra = "collaborative"
        else:
            ds = load_tiktok(DATA / "tiktok")
            mods, modalities, letter, extra = dict(ds.features), ["image", "audio"], None, None
        enc_s = round(time.perf_counter() - t0, 1)
        entry = results["datasets"].get(name, {"variants": []})
        entry.update({"items": ds.num_items, "modalities": modalities, "encoding_s": enc_s})
        done = {r["name"]: r for r in entry["variants"]}
        for vname, desc, factory, use in variants(base, modalities, extra):
            if args.only and vname not in args.only:
                continue
            res = tokenize(factory(), {m: mods[m] for m in use}, ds.item_ids(), show_progress=False)
            done[vname] = {"name": vname, "description": desc, "modalities": use, "quality": res.quality}
            entry["variants"] = list(done.values())
            results["datasets"][name] = entry
            write_outputs(out, results)
            q = res.quality
            print(f"[{name}] {vname}: util min {min(q['utilisation']):.3f} collisions {q['collision_rate']:.4f} "
                  f"recon {q['reconstruction_loss']['total'] if q['reconstruction_loss'] else '-'} "
                  f"{q['wall_time_s']}s", flush=True)
        if letter is not None and (not args.only or "LETTER (external)" in args.only):
            res = tokenize(ExternalTokenizer(ExternalConfig(str(letter)), ds.item_ids()), {}, ds.item_ids(),
                           show_progress=False)
            done["LETTER (external)"] = {"name": "LETTER (external)", "description": "published LETTER SIDs "
                                         "(letter.index.json), 4 x 256", "modalities": [], "quality": res.quality}
            entry["variants"] = list(done.values())
            results["datasets"][name] = entry
            write_outputs(out, results)
    print(f"wrote {out / 'tokenizer.md'}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
