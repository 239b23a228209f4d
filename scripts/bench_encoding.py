"""Benchmark: time to encode every Amazon Beauty item per modality (text, attributes, collaborative).

    python scripts/bench_encoding.py [--data ../shared/data/amazon-beauty] [--out benchmarks]

Writes benchmarks/encoding.json and benchmarks/encoding.md. No cache is used (every encoder runs)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from mmq_rec.eval.split import leave_one_out
from mmq_rec.recdata.io import write_json, write_text
from mmq_rec.recdata.loaders import load_jsonl
from mmq_rec.tokenizer.encoders import (
    AttributeEncoderConfig,
    CollaborativeConfig,
    TextEncoderConfig,
    encode_attributes,
    encode_collaborative,
    encode_texts,
    item_texts,
)
from mmq_rec.tokenizer.encoders.text import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent.parent
    ap.add_argument("--data", default=str(here.parent / "shared" / "data" / "amazon-beauty"))
    ap.add_argument("--out", default=str(here / "benchmarks"))
    ap.add_argument("--batch-size", type=int, default=TextEncoderConfig.batch_size)
    args = ap.parse_args()

    ds = load_jsonl(args.data)
    cfg = TextEncoderConfig(batch_size=args.batch_size)
    texts = item_texts(ds.items, cfg.fields, cfg.max_chars)
    t0 = time.perf_counter()
    from sentence_transformers import SentenceTransformer
    SentenceTransformer(resolve_model(cfg.model), device="cpu")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    text = encode_texts(texts, cfg, show_progress=False)
    text_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    attrs = encode_attributes(ds.items, AttributeEncoderConfig())
    attr_s = time.perf_counter() - t0
    split = leave_one_out(ds.sequences(), ds.num_items)
    t0 = time.perf_counter()
    collab = encode_collaborative(split.train_sequences, ds.num_items, CollaborativeConfig())
    collab_s = time.perf_counter() - t0

    result = {
        "dataset": "amazon-beauty", "items": ds.num_items,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "device": "cpu"},
        "text": {"model": cfg.model, "dim": int(text.shape[1]), "batch_size": cfg.batch_size,
                 "fields": cfg.fields, "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
                 "model_load_s": round(load_s, 2), "encode_s": round(text_s, 2),
                 "items_per_s": round(ds.num_items / text_s, 1)},
        "attributes": {"dim": int(attrs.shape[1]), "encode_s": round(attr_s, 2)},
        "collaborative": {"dim": int(collab.shape[1]), "encode_s": round(collab_s, 2)},
        "command": "python scripts/bench_encoding.py",
    }
    out = Path(args.out)
    write_json(out / "encoding.json", result)
    t = result["text"]
    md = f"""# Encoding benchmark: Amazon Beauty ({ds.num_items:,} items)

Command: `python scripts/bench_encoding.py` (no embedding cache; every encoder runs).
Machine: {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, no GPU.

| modality | encoder | dim | time (s) | items / s |
|---|---|---:|---:|---:|
| text | {t['model']} (sentence-transformers, batch {t['batch_size']}) | {t['dim']} | {t['encode_s']} | {t['items_per_s']} |
| attributes | TF-IDF tokens → randomized SVD | {result['attributes']['dim']} | {result['attributes']['encode_s']} | {round(ds.num_items / max(attr_s, 1e-9)):,} |
| collaborative | training co-occurrence → PPMI → SVD | {result['collaborative']['dim']} | {result['collaborative']['encode_s']} | {round(ds.num_items / max(collab_s, 1e-9)):,} |

Text fields: {', '.join(t['fields'])} (mean {t['mean_chars']} characters per item; Beauty has no
descriptions). Loading the text model took {t['model_load_s']} s, not counted above.
A second run with the same content and model reads the cached matrix instead.
"""
    write_text(out / "encoding.md", md)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
