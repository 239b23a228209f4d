"""Fit a tokenizer, build the SID table, measure it, save and load the result."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import read_json
from mmq_rec.tokenizer.base import ItemTokenizer, Modalities, read_config
from mmq_rec.tokenizer.baselines import ExternalTokenizer, RandomTokenizer, RQKMeansTokenizer, RQVAETokenizer
from mmq_rec.tokenizer.mmq import MMQTokenizer
from mmq_rec.tokenizer.sid import SID_TABLE_FILE, SIDTable

TOKENIZERS: dict[str, type[ItemTokenizer]] = {
    cls.kind: cls for cls in (MMQTokenizer, RQVAETokenizer, RQKMeansTokenizer, RandomTokenizer, ExternalTokenizer)}
QUALITY_FILE = "quality.json"


@dataclass
class Tokenization:
    tokenizer: ItemTokenizer
    table: SIDTable
    quality: dict[str, Any]

    def save_pretrained(self, path: str | Path, overwrite: bool = False) -> Path:
        return self.tokenizer.save_pretrained(path, {SID_TABLE_FILE: self.table.to_json(), QUALITY_FILE: self.quality},
                                              overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenization:
        path = Path(path)
        info = read_config(path)
        kind = info["tokenizer_type"]
        if kind not in TOKENIZERS:
            raise DataError(f"unknown tokenizer_type {kind!r}", path=path / "config.json", field="tokenizer_type")
        tok = TOKENIZERS[kind]._from_dir(path, info)
        quality_path = path / QUALITY_FILE
        quality = read_json(quality_path) if quality_path.exists() else {}
        return cls(tok, SIDTable.load(path / SID_TABLE_FILE), quality)


def reconstruction_loss(tokenizer: ItemTokenizer, modalities: Modalities) -> dict[str, float] | None:
    """MSE between each standardised modality and its reconstruction from the codes, and the total
    (over all dimensions of the concatenation)."""
    rec = tokenizer.reconstruct(modalities)
    if rec is None or tokenizer.standardizer is None:
        return None
    std = tokenizer.standardizer(modalities)
    per = {m: float(np.mean((rec[m] - std[m]) ** 2)) for m in std}
    dims = {m: std[m].shape[1] for m in std}
    total = sum(per[m] * dims[m] for m in std) / sum(dims.values())
    return {"total": round(total, 6), **{m: round(v, 6) for m, v in per.items()}}


def tokenize(tokenizer: ItemTokenizer, modalities: Modalities, item_ids: Sequence[str],
             show_progress: bool = True, accelerator=None, device: str | None = None) -> Tokenization:
    """Fit (trained tokenizers on `accelerator`, else on `device`; None: CUDA when available),
    encode every item, make SIDs unique, and compute the quality numbers."""
    t0 = time.perf_counter()
    tokenizer.fit(modalities, show_progress=show_progress, accelerator=accelerator, device=device)
    codes = tokenizer.encode(modalities)
    wall = time.perf_counter() - t0
    if len(codes) != len(item_ids):
        raise DataError(f"{len(codes)} codes for {len(item_ids)} items", field="modalities")
    table = SIDTable.from_codes(item_ids, codes, tokenizer.codebook_sizes())
    return Tokenization(tokenizer, table, {**table_quality(tokenizer, table, modalities), "wall_time_s": round(wall, 2)})


def table_quality(tokenizer: ItemTokenizer, table: SIDTable, modalities: Modalities) -> dict[str, Any]:
    """The quality numbers of a tokenizer's SID table (all but the wall time)."""
    return {
        **table.quality(),
        "tokenizer": tokenizer.kind,
        "semantic_length": table.num_semantic,
        "sid_length": table.sid_length,
        "disambiguation_size": table.codebook_sizes[-1] if table.sid_length > table.num_semantic else 0,
        "unique_sids": int(len(np.unique(table.codes, axis=0))),
        "reconstruction_loss": reconstruction_loss(tokenizer, modalities),
        "modalities": {m: int(np.asarray(v).shape[1]) for m, v in modalities.items()},
    }


def format_quality(q: dict[str, Any]) -> str:
    rec = q.get("reconstruction_loss")
    rec_s = "n/a" if not rec else f"{rec['total']:.4f} (" + ", ".join(
        f"{k} {v:.4f}" for k, v in rec.items() if k != "total") + ")"
    return "\n".join([
        f"tokenizer {q['tokenizer']}: {q['num_items']:,} items, SID length {q['sid_length']} "
        f"({q['semantic_length']} semantic + {q['sid_length'] - q['semantic_length']} disambiguation)",
        f"  utilisation per position: {q['utilisation']}",
        f"  entropy (bits) per position: {q['entropy']}",
        f"  collision rate before disambiguation: {q['collision_rate']:.4f} "
        f"(items sharing a tuple {q['items_in_collisions']:.4f}, largest group {q['largest_collision_group']})",
        f"  unique SIDs after disambiguation: {q['unique_sids']:,} / {q['num_items']:,}",
        f"  reconstruction loss (standardised MSE): {rec_s}",
        f"  wall time: {q['wall_time_s']:.1f}s",
    ])
