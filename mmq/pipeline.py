"""Wiring: config -> data -> split -> modality embeddings -> ... Stages get arrays, never configs files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.split import Split, cold_start_split, leave_one_out
from mmq.config import MODALITIES, Config
from recdata.errors import DataError
from recdata.schema import RecDataset
from tokenizer.api import TOKENIZERS, Tokenization, tokenize
from tokenizer.baselines import ExternalTokenizer
from tokenizer.encoders import (
    EmbeddingCache,
    encode_attributes,
    encode_collaborative,
    encode_images,
    encode_texts,
    item_texts,
)


def make_split(ds: RecDataset, cfg: Config) -> Split:
    if ds.meta.get("ordered") is False:
        raise DataError(f"dataset {ds.name!r} has no interaction order; leave-one-out needs chronological "
                        "sequences", field="data.dataset")
    if cfg.eval.cold_start_fraction > 0:
        return cold_start_split(ds.sequences(), ds.num_items, cfg.eval.cold_start_fraction, cfg.seed,
                                cfg.data.max_history)
    return leave_one_out(ds.sequences(), ds.num_items, cfg.data.max_history)


def build_modalities(ds: RecDataset, cfg: Config, split: Split | None = None, dataset_dir: str | Path | None = None,
                     show_progress: bool = True) -> dict[str, np.ndarray]:
    """One float32 (num_items, d) matrix per configured modality.

    A modality named like a feature matrix stored with the dataset uses that matrix; otherwise
    `text`, `attributes`, `image` and `collaborative` run their encoders (cached on disk)."""
    cache = EmbeddingCache(cfg.encode.cache_dir or None)
    out: dict[str, np.ndarray] = {}
    for name in cfg.encode.modalities:
        if name in ds.features:
            out[name] = ds.features[name]
        elif name == "text":
            texts = item_texts(ds.items, cfg.encode.text.fields, cfg.encode.text.max_chars)
            if not any(texts):
                raise DataError(f"no item has any of the text fields {cfg.encode.text.fields}",
                                field="encode.text.fields")
            out[name] = encode_texts(texts, cfg.encode.text, cache, show_progress)
        elif name == "attributes":
            out[name] = encode_attributes(ds.items, cfg.encode.attributes, cache)
        elif name == "image":
            col = cfg.encode.image.field
            if col not in ds.items.column_names:
                raise DataError(f"the item table has no {col!r} column and no precomputed 'image' features",
                                field="encode.image.field")
            out[name] = encode_images(ds.items[col], cfg.encode.image, base_dir=dataset_dir, cache=cache,
                                      show_progress=show_progress).embeddings
        elif name == "collaborative":
            split = split or make_split(ds, cfg)
            out[name] = encode_collaborative(split.train_sequences, ds.num_items, cfg.encode.collaborative, cache)
        else:
            raise DataError(f"unknown modality {name!r}: use one of {MODALITIES} or a stored feature "
                            f"({sorted(ds.features)})", field="encode.modalities")
    return out


def make_tokenizer(cfg: Config, item_ids: list[str] | None = None):
    """The configured item tokenizer, seeded from the top-level seed."""
    name = cfg.tokenize.tokenizer
    if name not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {name!r}; choose from {sorted(TOKENIZERS)}", field="tokenize.tokenizer")
    sub = getattr(cfg.tokenize, name)
    if hasattr(sub, "seed"):
        sub.seed = cfg.seed
    if name == "external":
        if not sub.path:
            raise DataError("the external tokenizer needs a SID table (--tokenize.external.path FILE)",
                            field="tokenize.external.path")
        return ExternalTokenizer(sub, item_ids)
    return TOKENIZERS[name](sub)


def run_tokenize(ds: RecDataset, cfg: Config, dataset_dir: str | Path | None = None,
                 show_progress: bool = True) -> Tokenization:
    """Build the modalities (none for an external table), fit the tokenizer, build the SID table."""
    tokenizer = make_tokenizer(cfg, ds.item_ids())
    modalities = {} if cfg.tokenize.tokenizer == "external" else \
        build_modalities(ds, cfg, dataset_dir=dataset_dir, show_progress=show_progress)
    return tokenize(tokenizer, modalities, ds.item_ids(), show_progress=show_progress)
