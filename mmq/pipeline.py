"""Wiring: config -> data -> split -> modality embeddings -> ... Stages get arrays, never configs files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.buckets import popularity_buckets
from eval.metrics import evaluate_rankings
from eval.split import Split, SplitPart, cold_start_split, leave_one_out
from generator.model import SIDCodec
from generator.recommend import Recommender
from generator.train import train_generator
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


def titles_of(ds: RecDataset) -> list[str] | None:
    return [t or "" for t in ds.items["title"]] if "title" in ds.items.column_names else None


def sample_part(part: SplitPart, n: int, seed: int) -> SplitPart:
    """A fixed random subset of a split part (all of it when n is 0 or larger)."""
    if n <= 0 or n >= len(part):
        return part
    idx = np.sort(np.random.default_rng(seed).choice(len(part), n, replace=False))
    return SplitPart(part.users[idx], part.histories[idx], part.targets[idx])


def rank_part(rec: Recommender, part: SplitPart, cfg: Config, show_progress: bool = False,
              user_ids: list[str] | None = None) -> np.ndarray:
    """Top-max(ks) items for every example of a split part (`user_ids`: the dataset's, for a
    generator with hashed user tokens)."""
    users = [user_ids[u] for u in part.users] if user_ids is not None and rec.codec.uses_users else None
    items, _ = rec.rank(torch.from_numpy(part.histories), k=max(cfg.eval.ks), beam_width=cfg.decode.beam_width,
                        batch_size=cfg.decode.batch_size, show_progress=show_progress, users=users)
    return items


def make_validator(codec: SIDCodec, valid: SplitPart, cfg: Config, num_items: int,
                   user_ids: list[str] | None = None):
    """validate(model) -> Recall/NDCG@ks on the given validation users (the trie is built once)."""
    rec = Recommender(None, codec, cfg.data.max_history)

    def validate(model) -> dict[str, float]:
        rec.model = model.eval()
        res = evaluate_rankings(rank_part(rec, valid, cfg, user_ids=user_ids), valid.targets, num_items,
                                cfg.eval.ks)["all"]
        model.train()
        return {k: v for k, v in res.items() if k.startswith(("recall@", "ndcg@"))}

    return validate


def run_train(ds: RecDataset, cfg: Config, tokenizer_dir: str | Path, output_dir: str | Path,
              show_progress: bool = True) -> dict[str, Any]:
    """Train the generator on the training split; select on validation NDCG (a fixed sample of users)."""
    table = Tokenization.from_pretrained(tokenizer_dir).table
    if table.item_ids != ds.item_ids():
        raise DataError("the SID table's items are not the dataset's items (tokenize this dataset first)",
                        path=tokenizer_dir)
    cfg.train.seed = cfg.seed
    cfg.generator.max_history = cfg.data.max_history
    split = make_split(ds, cfg)
    codec = SIDCodec(table, cfg.generator.input_mode, cfg.generator.user_buckets)
    user_ids = ds.user_ids()
    validate = make_validator(codec, sample_part(split.valid, cfg.decode.valid_users, cfg.seed), cfg, ds.num_items,
                              user_ids)
    train_users = codec.user_tokens([user_ids[u] for u in split.train.users]) if codec.uses_users else None
    t0 = time.perf_counter()
    state = train_generator(codec, torch.from_numpy(split.train.histories), torch.from_numpy(split.train.targets),
                            cfg.generator, cfg.train, output_dir, validate, show_progress,
                            extra_info={"dataset": ds.name, "tokenizer_dir": str(tokenizer_dir), "seed": cfg.seed,
                                        "valid_users": cfg.decode.valid_users}, titles=titles_of(ds),
                            train_users=train_users)
    return {"output": str(output_dir), "best_model": str(Path(output_dir) / "best"), "steps": state["step"],
            "best_step": state["best_step"], f"best_valid_{cfg.train.metric}": state["best_metric"],
            "train_seconds": round(state["train_seconds"], 1), "wall_seconds": round(time.perf_counter() - t0, 1),
            "history": state["history"]}


def run_evaluate(ds: RecDataset, cfg: Config, model_dir: str | Path, split_name: str = "test",
                 show_progress: bool = True) -> dict[str, Any]:
    """Full-catalogue evaluation of a trained generator, stratified by popularity bucket."""
    rec = Recommender.from_pretrained(model_dir)
    if rec.codec.table.item_ids != ds.item_ids():
        raise DataError("the model's SID table does not match the dataset's items", path=model_dir)
    split = make_split(ds, cfg)
    part = getattr(split, split_name)
    buckets = popularity_buckets(split.train_sequences, ds.num_items, cfg.eval.buckets)
    t0 = time.perf_counter()
    items = rank_part(rec, part, cfg, show_progress, ds.user_ids())
    seconds = time.perf_counter() - t0
    res = evaluate_rankings(items, part.targets, ds.num_items, cfg.eval.ks, buckets.of_targets(part.targets))
    return {"split": split_name, "users": len(part), "decode_seconds": round(seconds, 1),
            "users_per_second": round(len(part) / seconds, 1), "beam_width": cfg.decode.beam_width,
            "device": str(rec.model.device), "metrics": res, "buckets": buckets.sizes()}
