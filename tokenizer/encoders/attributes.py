"""Attribute modality: structured fields -> a dense vector per item.

Method (chosen for being parameter-free, deterministic and robust to sparse, noisy catalogues):
1. Each item becomes a bag of tokens:
   - list fields (categories): every path prefix, e.g. `Beauty`, `Beauty>Makeup`,
     `Beauty>Makeup>Nails`, so deeper shared paths mean more shared tokens;
   - categorical fields (brand, sales_type): `brand=opi` (lower-cased);
   - numeric fields (price, sales_rank): the quantile bin of log1p(value) among the items that
     have one (`price#3`), plus its neighbouring bins at half weight so close values stay close;
     a missing value becomes `price#missing`.
2. Tokens seen in fewer than `min_count` items are dropped (they carry no similarity).
3. TF-IDF weighting, rows L2-normalised; then a seeded randomized SVD to `dim` dimensions and
   rows L2-normalised again. Items with no surviving token get a zero vector."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmq_rec.tokenizer.encoders._linalg import l2_normalise, randomized_svd
from mmq_rec.tokenizer.encoders.cache import EmbeddingCache, content_hash

ENCODER_VERSION = 1
"""Part of the cache key; bump when the computation changes."""


@dataclass
class AttributeEncoderConfig:
    list_fields: list[str] = field(default_factory=lambda: ["categories"])
    """Columns holding a coarse-to-fine path; every prefix becomes a token."""
    categorical_fields: list[str] = field(default_factory=lambda: ["brand", "sales_type"])
    """Columns whose (lower-cased) value becomes one token."""
    numeric_fields: list[str] = field(default_factory=lambda: ["price", "sales_rank"])
    """Columns binned by quantiles of log1p(value)."""
    numeric_bins: int = 10
    """Quantile bins per numeric column."""
    min_count: int = 2
    """Tokens in fewer items than this are dropped."""
    dim: int = 64
    """Output dimension (randomized SVD rank)."""
    seed: int = 0

    def __post_init__(self) -> None:
        # Errors read "<field>: <reason>"; mmq.config reports them under the full dotted key.
        for name in ("numeric_bins", "min_count", "dim"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name}: must be >= 1 (got {getattr(self, name)!r})")
        if not (self.list_fields or self.categorical_fields or self.numeric_fields):
            raise ValueError("list_fields: list_fields, categorical_fields and numeric_fields are all empty "
                             "(the attribute modality would have no tokens)")


def _numeric_tokens(values: list[Any], name: str, bins: int) -> list[list[tuple[str, float]]]:
    x = np.array([float(v) if isinstance(v, (int, float)) and np.isfinite(v) else np.nan for v in values])
    present = ~np.isnan(x)
    out: list[list[tuple[str, float]]] = [[(f"{name}#missing", 1.0)] for _ in values]
    if present.any():
        logs = np.log1p(np.clip(x[present], 0, None))
        edges = np.unique(np.quantile(logs, np.linspace(0, 1, bins + 1)[1:-1]))
        b = np.searchsorted(edges, logs, side="right")
        nb = len(edges) + 1
        for i, bi in zip(np.flatnonzero(present), b, strict=True):
            toks = [(f"{name}#{bi}", 1.0)]
            toks += [(f"{name}#{j}", 0.5) for j in (bi - 1, bi + 1) if 0 <= j < nb]
            out[i] = toks
    return out


def attribute_tokens(items: Sequence[dict[str, Any]], config: AttributeEncoderConfig
                     ) -> list[list[tuple[str, float]]]:
    rows = items.to_list() if hasattr(items, "to_list") else list(items)
    columns = set(rows[0]) if rows else set()
    bags: list[list[tuple[str, float]]] = [[] for _ in rows]
    for f in config.list_fields:
        if f not in columns:
            continue
        for bag, row in zip(bags, rows, strict=True):
            path = [str(v).strip() for v in (row.get(f) or []) if str(v).strip()]
            bag.extend((f"{f}={'>'.join(path[: d + 1])}", 1.0) for d in range(len(path)))
    for f in config.categorical_fields:
        if f not in columns:
            continue
        for bag, row in zip(bags, rows, strict=True):
            v = row.get(f)
            if v is not None and str(v).strip():
                bag.append((f"{f}={str(v).strip().lower()}", 1.0))
    for f in config.numeric_fields:
        if f not in columns:
            continue
        for bag, toks in zip(bags, _numeric_tokens([r.get(f) for r in rows], f, config.numeric_bins),
                             strict=True):
            bag.extend(toks)
    return bags


def encode_attributes(items: Sequence[dict[str, Any]] | Any, config: AttributeEncoderConfig | None = None,
                      cache: EmbeddingCache | None = None) -> np.ndarray:
    """float32 (num_items, <= dim) attribute embeddings (see module docstring)."""
    config = config or AttributeEncoderConfig()
    bags = attribute_tokens(items, config)
    key = content_hash("attributes", bags, config.__dict__)

    def compute() -> np.ndarray:
        df = Counter(tok for bag in bags for tok in {t for t, _ in bag})
        vocab = {t: j for j, t in enumerate(sorted(t for t, c in df.items() if c >= config.min_count))}
        n = len(bags)
        if not vocab:
            raise ValueError("no attribute token occurs in min_count items: the attribute modality is empty "
                             f"(fields {config.list_fields + config.categorical_fields + config.numeric_fields})")
        idf = np.log((1 + n) / (1 + np.array([df[t] for t in sorted(vocab, key=vocab.get)]))) + 1.0
        rows, cols, vals = [], [], []
        for i, bag in enumerate(bags):
            for t, w in bag:
                j = vocab.get(t)
                if j is not None:
                    rows.append(i), cols.append(j), vals.append(w * idf[j])
        x = sp.csr_matrix((vals, (rows, cols)), shape=(n, len(vocab)), dtype=np.float64)
        x.sum_duplicates()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
        x = sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ x
        u, s, _ = randomized_svd(x, config.dim, seed=config.seed)
        return l2_normalise(u * s).astype(np.float32)

    return (cache or EmbeddingCache(None)).get_or_compute("attributes", key, compute, version=ENCODER_VERSION)
