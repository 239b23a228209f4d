"""The one wiring of the stages: config -> data -> split -> modalities -> tokenizer -> generator ->
evaluation. The `mmq` command line, `mmq demo` and a notebook all call this object; the stages
themselves take arrays and datasets, never configuration files.

    from mmq_rec.pipeline import Pipeline
    pipe = Pipeline.from_config(overrides={"train": {"max_minutes": 10}})
    ds = pipe.dataset("data/beauty")
    tok = pipe.tokenize(ds, "runs/beauty/tok")
    run = pipe.train(ds, "runs/beauty/tok", "runs/beauty/gen")
    report = pipe.evaluate(ds, run["best_model"])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmq_rec.config import MODALITIES, Config, fingerprint_view, load_config, to_dict, to_yaml, updated
from mmq_rec.eval.baselines import knn_rankings, popularity_rankings
from mmq_rec.eval.buckets import PopularityBuckets, popularity_buckets
from mmq_rec.eval.metrics import evaluate_rankings
from mmq_rec.eval.split import Split, SplitPart, cold_start_split, leave_one_out
from mmq_rec.generator.model import SIDCodec
from mmq_rec.generator.objective import all_position_windows
from mmq_rec.generator.recommend import DTYPES, Recommendation, Recommender
from mmq_rec.generator.stage2 import stage2_generator_hooks, stage2_table
from mmq_rec.generator.train import read_checkpoint_state, train_generator
from mmq_rec.ranker.model import RANKER_FILE, WEIGHTS_FILE, SequentialRanker, build_ranker, load_ranker
from mmq_rec.ranker.rank import CORRECTION_GRID, candidate_scores, correction_sweep, rank_full, rerank
from mmq_rec.ranker.stage2 import TOKENIZER_DIR, build_stage2, stage2_hooks, warm_start
from mmq_rec.ranker.train import check_single_process, train_ranker
from mmq_rec.ranker.train import read_checkpoint as read_ranker_checkpoint
from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import atomic_dir, check_output, claim_dir, read_json, write_json, write_text
from mmq_rec.recdata.schema import RecDataset
from mmq_rec.tokenizer.api import TOKENIZERS, Tokenization, tokenize
from mmq_rec.tokenizer.baselines import ExternalTokenizer
from mmq_rec.tokenizer.encoders import (
    EmbeddingCache,
    encode_attributes,
    encode_collaborative,
    encode_images,
    encode_texts,
    item_texts,
)
from mmq_rec.tokenizer.finetune import check_tokenizer
from mmq_rec.tokenizer.sid import SIDTable
from mmq_rec.tokenizer.training import resolve_device

BASELINES = ("popularity", "knn")
# Cheap modalities are built first, so a modality that cannot be built fails before minutes of
# text or image encoding are spent.
_COST = {"attributes": 0, "collaborative": 0, "text": 1, "image": 1}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_split(ds: RecDataset, cfg: Config) -> Split:
    if ds.meta.get("ordered") is False:
        raise DataError(f"dataset {ds.name!r} has no interaction order; leave-one-out needs chronological "
                        "sequences", field="data.dataset")
    if cfg.eval.cold_start_fraction > 0:
        return cold_start_split(ds.sequences(), ds.num_items, cfg.eval.cold_start_fraction, cfg.seed,
                                cfg.data.max_history)
    return leave_one_out(ds.sequences(), ds.num_items, cfg.data.max_history)


def build_modalities(ds: RecDataset, cfg: Config, split: Split | None = None, dataset_dir: str | Path | None = None,
                     show_progress: bool = True, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """One float32 (num_items, d) matrix per modality (`names`, default `cfg.encode.modalities`).

    A modality named like a feature matrix stored with the dataset uses that matrix; otherwise
    `text`, `attributes`, `image` and `collaborative` run their encoders (cached on disk)."""
    names = list(names or cfg.encode.modalities)
    for name in names:
        if name not in ds.features and name not in MODALITIES:
            raise DataError(f"unknown modality {name!r}: use one of {MODALITIES} or a stored feature "
                            f"({sorted(ds.features)})", field="encode.modalities")
    if "text" in names and "text" not in ds.features:
        present = [f for f in cfg.encode.text.fields if f in ds.items.column_names]
        if not present:
            raise DataError(f"the item table has none of the text fields {cfg.encode.text.fields} "
                            f"(columns: {ds.items.column_names})", field="encode.text.fields")
    if "image" in names and "image" not in ds.features and cfg.encode.image.field not in ds.items.column_names:
        raise DataError(f"the item table has no {cfg.encode.image.field!r} column and no precomputed 'image' "
                        "features", field="encode.image.field")
    cache = EmbeddingCache(cfg.encode.cache_dir or None)
    out: dict[str, np.ndarray] = {}
    for name in sorted(names, key=lambda n: 0 if n in ds.features else _COST[n]):
        if name in ds.features:
            out[name] = ds.features[name]
        elif name == "text":
            texts = item_texts(ds.items, cfg.encode.text.fields, cfg.encode.text.max_chars)
            if not any(texts):
                raise DataError(f"no item has any of the text fields {cfg.encode.text.fields}",
                                field="encode.text.fields")
            out[name] = encode_texts(texts, _on_device(cfg.encode.text, cfg.device), cache, show_progress)
        elif name == "attributes":
            try:
                out[name] = encode_attributes(ds.items, cfg.encode.attributes, cache)
            except ValueError as e:
                raise DataError(f"{e}; choose other modalities (e.g. --modalities text)",
                                field="encode.modalities") from None
        elif name == "image":
            out[name] = encode_images(ds.items[cfg.encode.image.field], _on_device(cfg.encode.image, cfg.device),
                                      base_dir=dataset_dir, cache=cache, show_progress=show_progress).embeddings
        else:  # collaborative
            split = split or make_split(ds, cfg)
            try:
                out[name] = encode_collaborative(split.train_sequences, ds.num_items, cfg.encode.collaborative, cache)
            except ValueError as e:
                raise DataError(f"{e}; choose other modalities", field="encode.modalities") from None
    return {name: out[name] for name in names}


def _on_device(encoder_cfg: Any, device: str | None) -> Any:
    """An encoder's settings with the top-level `device` where the encoder names none."""
    return encoder_cfg if encoder_cfg.device or not device else dataclasses.replace(encoder_cfg, device=device)


def make_tokenizer(cfg: Config, item_ids: list[str] | None = None):
    """The configured item tokenizer (its seed is resolved from the top-level seed by the config)."""
    name = cfg.tokenize.tokenizer
    if name not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {name!r}; choose from {sorted(TOKENIZERS)}", field="tokenize.tokenizer")
    sub = getattr(cfg.tokenize, name)
    if name == "external":
        if not sub.path:
            raise DataError("the external tokenizer needs a SID table (--tokenize.external.path FILE)",
                            field="tokenize.external.path")
        return ExternalTokenizer(sub, item_ids)
    return TOKENIZERS[name](sub)


def titles_of(ds: RecDataset) -> list[str] | None:
    return [t or "" for t in ds.items["title"]] if "title" in ds.items.column_names else None


def sample_part(part: SplitPart, n: int, seed: int) -> SplitPart:
    """A fixed random subset of a split part (all of it when n is 0 or larger)."""
    if n <= 0 or n >= len(part):
        return part
    idx = np.sort(np.random.default_rng(seed).choice(len(part), n, replace=False))
    return SplitPart(part.users[idx], part.histories[idx], part.targets[idx])


def rank_part(rec: Recommender, part: SplitPart, cfg: Config, show_progress: bool = False,
              user_ids: list[str] | None = None, exclude_history: bool = False) -> np.ndarray:
    """Top-max(ks) items for every example of a split part (`user_ids`: the dataset's, for a
    generator with hashed user tokens). `exclude_history`: the beam's whole list is decoded and
    the items of each history are dropped from it before the top max(ks) are taken."""
    users = [user_ids[u] for u in part.users] if user_ids is not None and rec.codec.uses_users else None
    kmax = max(cfg.eval.ks)
    width = exclusion_beam(cfg, part.histories.shape[1]) if exclude_history else cfg.decode.beam_width
    items, _ = rec.rank(torch.from_numpy(part.histories), k=width if exclude_history else kmax, beam_width=width,
                        batch_size=cfg.decode.batch_size, show_progress=show_progress, users=users)
    if exclude_history:
        seen = _in_history(items, part.histories)
        order = np.argsort(seen, axis=1, kind="stable")  # unseen items first, in beam order
        items = np.take_along_axis(np.where(seen, -1, items), order, axis=1)
    return items[:, :kmax]


def exclusion_beam(cfg: Config, history_length: int) -> int:
    """The beam width that still fills the top max(ks) after a full history's items are dropped."""
    return max(cfg.decode.beam_width, max(cfg.eval.ks) + history_length)


def _in_history(items: np.ndarray, histories: np.ndarray) -> np.ndarray:
    """(U, K) mask: the item is one of the user's history items (-1 never is)."""
    return (items[:, :, None] == histories[:, None, :]).any(axis=2) & (items >= 0)


def training_rows(split: Split, cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The generator's training rows for its objective: (histories (E, H), targets (E,), user (E,))
    per prefix, or (windows (N, W), targets (N, W), user (N,)) for the all-position objective."""
    if cfg.generator.all_positions:
        return all_position_windows(split.train_sequences, cfg.data.max_history)
    return split.train.histories, split.train.targets, split.train.users


def split_settings(cfg: Config) -> dict[str, Any]:
    """What decides the split: stored with every tokenizer and generator, checked where they are used."""
    return {"max_history": cfg.data.max_history, "cold_start_fraction": cfg.eval.cold_start_fraction,
            "seed": cfg.seed if cfg.eval.cold_start_fraction > 0 else None}


SPLIT_KEYS = {"max_history": "data.max_history", "cold_start_fraction": "eval.cold_start_fraction", "seed": "seed"}


def check_split(stored: dict[str, Any] | None, cfg: Config, path: str | Path, what: str) -> None:
    """Refuse to use an artefact under another split than the one it was made with (a cold-start
    evaluation would otherwise score items the model trained on as cold). Artefacts from before
    split settings were recorded (None) are taken as they are."""
    if stored is None:
        return
    now = split_settings(cfg)
    for key, setting in SPLIT_KEYS.items():
        if stored.get(key) != now[key]:
            raise DataError(f"this {what} was made with {setting} = {stored.get(key)!r}, this run has "
                            f"{now[key]!r}: use the same split (--{setting} {stored.get(key)})", path=path,
                            field=setting)


class Validator:
    """validate(model) -> Recall/NDCG@ks on a fixed set of validation users (the trie is built
    once). Under several processes, `shard` decodes one process's share and `combine` scores
    the gathered shares, so validation is split across ranks."""

    def __init__(self, codec: SIDCodec, valid: SplitPart, cfg: Config, num_items: int,
                 user_ids: list[str] | None = None):
        self.rec = Recommender(None, codec, cfg.data.max_history)
        self.valid, self.cfg, self.num_items, self.user_ids = valid, cfg, num_items, user_ids

    def shard(self, model, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
        """(example indices, their top-K items) for this rank's share of the users."""
        idx = np.arange(rank, len(self.valid), world)
        part = SplitPart(self.valid.users[idx], self.valid.histories[idx], self.valid.targets[idx])
        self.rec.model = model.eval()
        items = rank_part(self.rec, part, self.cfg, user_ids=self.user_ids)
        model.train()
        return idx, items

    def combine(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        k = max(self.cfg.eval.ks)
        items = np.full((len(self.valid), k), -1, dtype=np.int64)
        for idx, rows in parts:
            items[idx] = rows
        res = evaluate_rankings(items, self.valid.targets, self.num_items, self.cfg.eval.ks)["all"]
        return {key: v for key, v in res.items() if key.startswith(("recall@", "ndcg@"))}

    def __call__(self, model) -> dict[str, float]:
        return self.combine([self.shard(model, 0, 1)])


def make_validator(codec: SIDCodec, valid: SplitPart, cfg: Config, num_items: int,
                   user_ids: list[str] | None = None) -> Validator:
    return Validator(codec, valid, cfg, num_items, user_ids)


def is_main_process() -> bool:
    """False on the non-zero ranks of `accelerate launch` / torchrun, so that only one process
    writes a shared output (the environment variables are set by the launcher)."""
    return os.environ.get("RANK", "0") == "0"


class Pipeline:
    """Config -> data -> split -> modalities -> tokenizer -> generator -> evaluation, one object.

    `log` receives one-line progress messages (default: stderr, so stdout stays for results);
    `show_progress` switches the tqdm bars."""

    def __init__(self, cfg: Config | None = None, *, show_progress: bool = True,
                 log: Callable[[str], None] | None = None):
        self.cfg = cfg or load_config()
        self.show_progress = show_progress
        self.log = log or _stderr
        self._splits: dict[int, Split] = {}
        self._candidates: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._recommenders: dict[str, Recommender] = {}

    @classmethod
    def from_config(cls, path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                    preset: str | None = None, **kwargs: Any) -> Pipeline:
        """Defaults <- preset (e.g. "demo") <- YAML file <- overrides (see `mmq_rec.config.load_config`)."""
        return cls(load_config(path, overrides, preset=preset), **kwargs)

    # ------------------------------------------------------------------ data
    def dataset(self, path: str | Path | None = None) -> RecDataset:
        path = path or self.cfg.data.dataset
        if not path:
            raise DataError("no dataset given (--dataset DIR)", field="data.dataset")
        ds = RecDataset.load(path)
        ds.meta.setdefault("path", str(path))
        return ds

    def split(self, ds: RecDataset) -> Split:
        """The configured split of `ds`, computed once per dataset object."""
        if id(ds) not in self._splits:
            self._splits[id(ds)] = make_split(ds, self.cfg)
        return self._splits[id(ds)]

    def buckets(self, ds: RecDataset) -> PopularityBuckets:
        return popularity_buckets(self.split(ds).train_sequences, ds.num_items, self.cfg.eval.buckets)

    def modalities(self, ds: RecDataset, names: Sequence[str] | None = None,
                   seed: int | None = None) -> dict[str, np.ndarray]:
        """The items' modality matrices (`names`, default `encode.modalities`); `seed`: build them
        as a run with that top-level seed would (the seeded encoders follow it), e.g. a
        tokenizer's own seed."""
        cfg = self.cfg if seed is None or seed == self.cfg.seed else updated(self.cfg, {"seed": seed})
        needs_split = "collaborative" in (names or cfg.encode.modalities)
        return build_modalities(ds, cfg, self.split(ds) if needs_split else None, ds.meta.get("path"),
                                self.show_progress, names)

    # ------------------------------------------------------------------ stage 1: item tokenizer
    def tokenize(self, ds: RecDataset, output: str | Path | None = None, overwrite: bool = False) -> Tokenization:
        """Build the modalities (none for an external table), fit the tokenizer, build the SID
        table and, when `output` is given, save it there (checked before any work is done)."""
        if output is not None:
            external = self.cfg.tokenize.external.path if self.cfg.tokenize.tokenizer == "external" else None
            check_output(output, "tokenizer", overwrite=overwrite, inputs=(ds.meta.get("path"), external))
        tokenizer = make_tokenizer(self.cfg, ds.item_ids())
        mods = {} if self.cfg.tokenize.tokenizer == "external" else self.modalities(ds)
        result = tokenize(tokenizer, mods, ds.item_ids(), show_progress=self.show_progress, device=self.cfg.device)
        # a tokenizer that read the collaborative modality saw one split's training data
        result.quality["modalities"] = list(mods)
        result.quality["split"] = split_settings(self.cfg)
        if output is not None and is_main_process():
            result.save_pretrained(output, overwrite=overwrite)
        return result

    # ------------------------------------------------------------------ stage 2: generator
    def train(self, ds: RecDataset, tokenizer_dir: str | Path, output: str | Path,
              overwrite: bool = False, finetune: bool = False) -> dict[str, Any]:
        """Train the generator on the training split, selecting on validation (a fixed sample of
        users). Rerunning with the same output directory resumes. `finetune`: MMQ stage 2
        (`cfg.finetune`, see `mmq_rec.generator.stage2`), the MMQ (or RQ-KMeans) tokenizer trained with the
        generator's loss; OUTPUT/best is then a generator on the re-derived SIDs and
        OUTPUT/best/tokenizer the fine-tuned tokenizer."""
        cfg = self.cfg
        tok = self.load_tokenization(tokenizer_dir)
        table = self._checked_table(ds, tokenizer_dir, tok)
        titles = titles_of(ds)
        fingerprint_extra, hooks, current_table = {}, None, None
        if finetune:  # built and checked before the run directory is claimed
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise DataError("stage 2 for the generator trains in one process: run it without accelerate "
                                "launch / torchrun")
            if not cfg.generator.input_mode == "item" or not cfg.generator.all_positions:
                raise DataError("stage 2 for the generator needs the item input mode with the all-position "
                                "objective", field="generator.input_mode" if cfg.generator.input_mode != "item"
                                else "generator.objective")
            if cfg.finetune.init_from:
                raise DataError("a warm start is built for the ranker's stage 2 only (mmq rank train --finetune)",
                                field="finetune.init_from")
            mods, base, fingerprint_extra = self._stage2_inputs(ds, tokenizer_dir, tok, table)
            k = tok.tokenizer.codebook_sizes()[0]
            group = table.codebook_sizes[-1] if table.sid_length > table.num_semantic else 1
            table = stage2_table(ds.item_ids(), base, k, max(group, k))
            codec = SIDCodec(table, cfg.generator.input_mode)
            hooks, current_table = stage2_generator_hooks(
                cfg.generator, cfg.finetune, codec, tok.tokenizer, mods, tok.quality, titles,
                {k: tok.quality[k] for k in ("modalities", "split") if k in tok.quality}, cfg.seed)
        else:
            codec = SIDCodec(table, cfg.generator.input_mode, cfg.generator.user_buckets)
        if is_main_process():  # the other ranks wait for this at the start of training
            self._open_run(output, "generator-run", (ds.meta.get("path"), tokenizer_dir),
                           {**self._run_fingerprint(ds, table), **fingerprint_extra}, read_checkpoint_state, overwrite)
        split = self.split(ds)
        user_ids = ds.user_ids()
        valid = sample_part(split.valid, cfg.decode.valid_users, cfg.seed)
        if finetune:
            def validate(model) -> dict[str, float]:  # decodes with the SIDs of the latest refresh
                current = SIDCodec(current_table(), cfg.generator.input_mode)
                current.item_embedding = codec.item_embedding
                return make_validator(current, valid, cfg, ds.num_items, user_ids)(model)
        else:
            validate = make_validator(codec, valid, cfg, ds.num_items, user_ids)
        hist, tgt, rows_user = training_rows(split, cfg)
        train_users = codec.user_tokens([user_ids[u] for u in rows_user]) if codec.uses_users else None
        t0 = time.perf_counter()
        state = train_generator(codec, torch.from_numpy(hist), torch.from_numpy(tgt),
                                cfg.generator, cfg.train, output, validate, self.show_progress,
                                extra_info={"dataset": ds.name, "tokenizer_dir": str(tokenizer_dir), "seed": cfg.seed,
                                            "valid_users": cfg.decode.valid_users, "split": split_settings(cfg)},
                                titles=titles, train_users=train_users, device=cfg.device, hooks=hooks)
        extra = {}
        if finetune:
            best = read_json(Path(output) / "best" / "generator.json")
            extra = {"tokenizer_dir": str(Path(output) / "best" / TOKENIZER_DIR), "stage2": best.get("stage2")}
        return {**extra, "output": str(output), "best_model": str(Path(output) / "best"), "steps": state["step"],
                "best_step": state["best_step"], f"best_valid_{cfg.train.metric}": state["best_metric"],
                "train_seconds": round(state["train_seconds"], 1), "wall_seconds": round(time.perf_counter() - t0, 1),
                "plan": state.get("plan"), "history": state["history"]}

    def _stage2_inputs(self, ds: RecDataset, tokenizer_dir: str | Path, tok: Tokenization, table: SIDTable
                       ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
        """(the modalities a fine-tunable tokenizer reads, its stage-1 semantic codes, the fingerprint
        entries of a stage-2 run: its settings, the tokenizer's weights and the modalities)."""
        try:
            check_tokenizer(tok.tokenizer)
        except ValueError as e:
            raise DataError(str(e), path=tokenizer_dir) from None
        # the modalities the tokenizer was fitted on: the seeded encoders followed its seed, which
        # a stage-2 run with another seed (e.g. seeds 1 and 2 of a benchmark) must not change
        mods = self.modalities(ds, tok.quality.get("modalities") or None, seed=getattr(tok.tokenizer.config, "seed", None))
        base = table.codes[:, :table.num_semantic]
        # another machine or torch build may round a near-tie the other way for a few items (seen:
        # an MMQ table made here, read on a GPU machine); other modalities change far more items
        differ = int((tok.tokenizer.encode(mods) != base).any(axis=1).sum())
        if differ > max(1, NEAR_TIES * len(base)):
            raise DataError(f"the tokenizer does not give its own SIDs from this configuration's modalities for "
                            f"{differ} of {len(base)} items (were encode.* settings different when it was "
                            "tokenized?)", path=tokenizer_dir)
        if differ:
            self.log(f"note: {differ} of {len(base)} items' SIDs re-encode differently here (near-ties); stage 2 "
                     "re-derives them, and counts changed SIDs against the table")
        weights = {k: _digest(v.detach().cpu().numpy().tobytes()) for k, v in tok.tokenizer.state_tensors().items()}
        return mods, base, {"finetune": fingerprint_view("finetune", to_dict(self.cfg)["finetune"]),
                            "tokenizer": _digest(json.dumps(weights, sort_keys=True).encode()),
                            "modalities": {m: _digest(np.ascontiguousarray(v).tobytes()) for m, v in sorted(mods.items())}}

    def _run_fingerprint(self, ds: RecDataset, table) -> dict[str, Any]:
        """What a training run's results depend on: a rerun with any of it changed is another run."""
        c = to_dict(self.cfg)
        return {"seed": c["seed"], "data": {"max_history": c["data"]["max_history"]},
                "processes": int(os.environ.get("WORLD_SIZE", "1")), "device": c.get("device"),
                "cold_start_fraction": c["eval"]["cold_start_fraction"],
                "generator": fingerprint_view("generator", c["generator"]),
                "train": c["train"], "valid_users": c["decode"]["valid_users"], "metric_ks": c["eval"]["ks"],
                "dataset": dataset_digest(ds),
                "sid_table": _table_digest(table)}

    def _open_run(self, output: str | Path, kind: str, inputs: tuple, fingerprint: dict[str, Any],
                  read_checkpoint: Callable[[str | Path], Any], overwrite: bool) -> None:
        """Check, claim and stamp a training run directory before anything trains: a damaged
        checkpoint or a run under other settings stops here (`overwrite` starts it afresh)."""
        check_output(output, kind, overwrite=overwrite, inputs=inputs, replaces=False)
        if not overwrite:
            read_checkpoint(output)  # a damaged checkpoint stops the run before anything is written
            _check_run_fingerprint(Path(output), fingerprint)
        claim_dir(output, kind, overwrite=overwrite, inputs=inputs)
        _start_run(Path(output), fingerprint, fresh=overwrite)
        write_text(Path(output) / "config.yaml", to_yaml(self.cfg) + "\n")

    # ------------------------------------------------------------------ loading artefacts
    @staticmethod
    def load_tokenization(path: str | Path) -> Tokenization:
        return _load_artefact(Tokenization.from_pretrained, path, "tokenizer", "mmq tokenize")

    def recommender(self, model_dir: str | Path) -> Recommender:
        """A trained generator on the configured device, in `decode.dtype` (read on the CPU first, so
        that only reading can be reported as a damaged directory)."""
        rec = _load_artefact(lambda p: Recommender.from_pretrained(p, device="cpu"), model_dir, "generator",
                             "mmq train")
        return rec.to(resolve_device(self.cfg.device), DTYPES[self.cfg.decode.dtype])

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, ds: RecDataset, split_name: str, rank: Callable[[SplitPart], np.ndarray],
                  max_users: int = 0) -> dict[str, Any]:
        if split_name not in ("valid", "test"):
            raise DataError(f"unknown split {split_name!r} (valid or test)", field="split")
        split = self.split(ds)
        part = sample_part(getattr(split, split_name), max_users, self.cfg.seed)
        buckets = self.buckets(ds)
        t0 = time.perf_counter()
        items = rank(part)
        seconds = max(time.perf_counter() - t0, 1e-9)
        groups = {**buckets.of_targets(part.targets), **buckets.deciles_of_targets(part.targets)}
        res = evaluate_rankings(items, part.targets, ds.num_items, self.cfg.eval.ks, groups)
        return {"split": split_name, "users": len(part), "decode_seconds": round(seconds, 1),
                "users_per_second": round(len(part) / seconds, 1), "metrics": res, "buckets": buckets.sizes()}

    def evaluate(self, ds: RecDataset, model_dir: str | Path, split_name: str = "test",
                 exclude_history: bool = False) -> dict[str, Any]:
        """Full-catalogue evaluation of a trained generator, stratified by popularity bucket
        (`exclude_history`: items the user already has are never recommended)."""
        rec = self.recommender(model_dir)
        if rec.codec.table.item_ids != ds.item_ids():
            raise DataError("the model's SID table does not match the dataset's items", path=model_dir)
        check_split(rec.info.get("split"), self.cfg, model_dir, "generator")
        out = self._evaluate(ds, split_name, lambda part: rank_part(rec, part, self.cfg, self.show_progress,
                                                                     ds.user_ids(), exclude_history))
        width = exclusion_beam(self.cfg, self.cfg.data.max_history) if exclude_history else self.cfg.decode.beam_width
        return {**out, "beam_width": width, "device": str(rec.model.device),
                "dtype": self.cfg.decode.dtype, "exclude_history": exclude_history}

    def baseline(self, ds: RecDataset, method: str, split_name: str = "test",
                 modality: str | None = None) -> dict[str, Any]:
        """A reference recommender on the same split, buckets and metrics as `evaluate`:
        `popularity` (training counts) or `knn` (cosine to the last items, in `modality`)."""
        kmax = max(self.cfg.eval.ks)
        if method == "popularity":
            pop = self.buckets(ds).popularity
            return {"method": method, **self._evaluate(ds, split_name,
                                                        lambda part: popularity_rankings(pop, len(part), kmax))}
        if method == "knn":
            modality = modality or self.cfg.encode.modalities[0]
            emb = self.modalities(ds, [modality])[modality]
            return {"method": method, "modality": modality,
                    **self._evaluate(ds, split_name, lambda part: knn_rankings(emb, part.histories, kmax))}
        raise DataError(f"unknown baseline {method!r}; choose from {BASELINES}", field="method")

    # ------------------------------------------------------------------ stage 3: ranker
    def _checked_table(self, ds: RecDataset, tokenizer_dir: str | Path, tok: Tokenization | None = None) -> SIDTable:
        tok = self.load_tokenization(tokenizer_dir) if tok is None else tok
        if tok.table.item_ids != ds.item_ids():
            raise DataError("the SID table's items are not the dataset's items (tokenize this dataset first)",
                            path=tokenizer_dir)
        if "collaborative" in tok.quality.get("modalities", []):
            check_split(tok.quality.get("split"), self.cfg, tokenizer_dir, "tokenizer (its collaborative modality)")
        return tok.table

    def rank_train(self, ds: RecDataset, tokenizer_dir: str | Path, output: str | Path,
                   overwrite: bool = False, finetune: bool = False) -> dict[str, Any]:
        """Train the ranker (`cfg.ranker`) on the training split, every position a target, keeping
        the epoch best on validation (all validation users) in OUTPUT/best. Rerunning resumes.
        `finetune`: MMQ stage 2 (`cfg.finetune`, see `mmq_rec.ranker.stage2`), the MMQ (or RQ-KMeans) tokenizer
        trained with the ranker's loss; OUTPUT/best is then a ranker on the re-derived SIDs and
        OUTPUT/best/tokenizer the fine-tuned tokenizer."""
        cfg = self.cfg
        check_single_process()
        tok = self.load_tokenization(tokenizer_dir)
        table = self._checked_table(ds, tokenizer_dir, tok)
        if finetune and cfg.ranker.combine == "level_gate":
            raise DataError("stage 2 joins the ID and SID parts by sum or gate (its SID part is one pooled soft "
                            "row)", field="ranker.combine")
        if finetune and cfg.ranker.sid_part != "sid":
            raise DataError(f"stage 2 needs sid or id+sid, whose SID tokens have a soft form (got "
                            f"{cfg.ranker.representation!r})", field="ranker.representation")
        c = to_dict(cfg)
        # more epochs or patience continue the same run (the learning rate does not depend on them)
        ranker = {k: v for k, v in fingerprint_view("ranker", c["ranker"]).items()
                  if k not in ("epochs", "patience", "candidates", "fusion_weights")}
        fingerprint = {"seed": cfg.seed, "ranker": ranker, "split": split_settings(cfg), "device": c.get("device"),
                       "metric_ks": c["eval"]["ks"], "dataset": dataset_digest(ds), "sid_table": _table_digest(table)}
        counts = self.buckets(ds).popularity
        titles = titles_of(ds)
        hooks = None
        if finetune:  # built and checked before the run directory is claimed
            mods, base, extra = self._stage2_inputs(ds, tokenizer_dir, tok, table)
            try:
                model = build_stage2(cfg.ranker, cfg.finetune, tok.tokenizer, mods, counts)
            except ValueError as e:
                raise DataError(str(e), path=tokenizer_dir) from None
            if cfg.finetune.init_from:
                extra["init_from"] = self._warm_start(model, ds, table, cfg.finetune.init_from)
            hooks = stage2_hooks(model, ds.item_ids(), mods, base, tok.tokenizer, tok.quality, titles,
                                 {k: tok.quality[k] for k in ("modalities", "split") if k in tok.quality})
            fingerprint.update(extra)
        else:
            model = build_ranker(cfg.ranker, table, counts)
        self._open_run(output, "ranker-run", (ds.meta.get("path"), tokenizer_dir), fingerprint,
                       read_ranker_checkpoint, overwrite)
        split = self.split(ds)
        windows, targets, _ = all_position_windows(split.train_sequences, cfg.data.max_history)
        valid, ks = split.valid, cfg.eval.ks

        def validate(m: SequentialRanker) -> dict[str, float]:
            items, _ = rank_full(m, valid.histories, max(ks))
            res = evaluate_rankings(items, valid.targets, ds.num_items, ks)["all"]
            return {k: v for k, v in res.items() if k.startswith(("recall@", "ndcg@"))}

        info = {"dataset": ds.name, "tokenizer_dir": str(tokenizer_dir), "seed": cfg.seed,
                "split": split_settings(cfg), "train_items": int((counts > 0).sum())}
        t0 = time.perf_counter()
        state = train_ranker(model, windows, targets, table, validate, output, info, self.show_progress,
                             cfg.device, self.log, titles, hooks)
        extra = {}
        if finetune:
            best = read_json(Path(output) / "best" / "ranker.json")
            extra = {"tokenizer_dir": str(Path(output) / "best" / TOKENIZER_DIR), "stage2": best.get("stage2")}
        return {**extra, "output": str(output), "best_model": str(Path(output) / "best"), "epochs": state["epoch"],
                "best_epoch": state["best_epoch"], f"best_valid_{cfg.ranker.metric}": state["best_metric"],
                "stopped": state["stopped"], "train_seconds": round(state["train_seconds"], 1),
                "wall_seconds": round(time.perf_counter() - t0, 1), "history": state["history"]}

    def _warm_start(self, model: SequentialRanker, ds: RecDataset, table: SIDTable, init_from: str) -> str:
        """Load the plain ranker `init_from` (trained on `table`, this tokenizer's stage-1 SIDs) into
        the stage-2 `model`; returns the digest of its weights (for the run's fingerprint)."""
        plain = self.ranker(init_from, ds)
        if not np.array_equal(plain.table.codes, table.codes):
            raise DataError("finetune.init_from: this ranker was not trained on the tokenizer's SIDs (train it with "
                            "mmq rank train on the same --tokenizer-dir)", path=init_from)
        try:
            warm_start(model, plain.cpu())
        except ValueError as e:
            raise DataError(str(e), path=init_from) from None
        return _digest(Path(init_from, WEIGHTS_FILE).read_bytes())

    def ranker(self, ranker_dir: str | Path, ds: RecDataset | None = None) -> SequentialRanker:
        """A trained ranker on the configured device; with `ds`, checked to be trained on its items
        and under this split."""
        model, table, info = _load_artefact(lambda p: load_ranker(p, "cpu"), ranker_dir, "ranker", "mmq rank train")
        if ds is not None:
            if table.item_ids != ds.item_ids():
                raise DataError("the ranker's SID table is not this dataset's (its items differ): train the ranker "
                                "on this dataset", path=ranker_dir)
            check_split(info.get("split"), self.cfg, ranker_dir, "ranker")
        model.table, model.titles = table, info.get("titles") or {}
        return model.to(resolve_device(self.cfg.device))

    def _generator_candidates(self, rec: Recommender, part: SplitPart, n: int, user_ids: list[str]
                              ) -> tuple[np.ndarray, np.ndarray]:
        """The generator's top-n (beam width n) for a split part, decoded once per pipeline (several
        rankers re-rank the same candidates)."""
        key = (id(rec), n, _digest(part.users.tobytes() + part.histories.tobytes()))
        if key not in self._candidates:
            users = [user_ids[u] for u in part.users] if rec.codec.uses_users else None
            self._candidates[key] = rec.rank(torch.from_numpy(part.histories), k=n, beam_width=n,
                                             batch_size=self.cfg.decode.batch_size, show_progress=self.show_progress,
                                             users=users)
        return self._candidates[key]

    def rank_evaluate(self, ds: RecDataset, ranker_dir: str | Path, split_name: str = "test",
                      generator: str | Path | None = None, candidates: int | None = None,
                      exclude_history: bool = False, max_users: int = 0) -> dict[str, Any]:
        """The ranker over the full catalogue or, with `generator`, re-ranking the generator's top
        `candidates` (beam search of that width). The fusion weight of the generator's
        log-probability is chosen on validation users (`decode.valid_users` of them) from
        `ranker.fusion_weights`. `max_users` > 0 evaluates a fixed random sample of users."""
        cfg = self.cfg
        model = self.ranker(ranker_dir, ds)
        kmax = max(cfg.eval.ks)
        split = self.split(ds)
        if generator is None:
            def rank(part: SplitPart) -> np.ndarray:
                return rank_full(model, part.histories, kmax, exclude_history=exclude_history)[0]
            out = self._evaluate(ds, split_name, rank, max_users)
            return {**out, "mode": "full", "exclude_history": exclude_history, "device": str(model.device)}
        n = candidates or cfg.ranker.candidates[0]
        if n < kmax:
            raise DataError(f"must be >= max(eval.ks) = {kmax} (got {n})", field="candidates")
        weights = Path(generator) / "model.safetensors"
        key = f"{Path(generator).resolve()}:{weights.stat().st_mtime_ns if weights.exists() else 0}"
        if key not in self._recommenders:  # kept, with its decoded candidates, for the next ranker
            self._recommenders[key] = self.recommender(generator)
        rec = self._recommenders[key]
        if rec.codec.table.item_ids != ds.item_ids():
            raise DataError("the generator's SID table does not match the dataset's items", path=generator)
        check_split(rec.info.get("split"), cfg, generator, "generator")
        user_ids = ds.user_ids()
        valid = sample_part(split.valid, cfg.decode.valid_users, cfg.seed)
        v_items, v_gen = self._generator_candidates(rec, valid, n, user_ids)
        v_rank = candidate_scores(model, valid.histories, v_items)
        choice = {}
        for w in cfg.ranker.fusion_weights:
            top, _ = rerank(v_items, v_rank, v_gen, w, kmax)
            choice[w] = evaluate_rankings(top, valid.targets, ds.num_items, cfg.eval.ks)["all"][cfg.ranker.metric]
        weight = max(choice, key=lambda w: (choice[w], -w))

        held = []

        def rank(part: SplitPart) -> np.ndarray:
            items, gen = self._generator_candidates(rec, part, n, user_ids)
            if exclude_history:
                items = np.where(_in_history(items, part.histories), -1, items)
            held.append(float((items == part.targets[:, None]).any(axis=1).mean()))
            return rerank(items, candidate_scores(model, part.histories, items), gen, weight, kmax)[0]
        out = self._evaluate(ds, split_name, rank, max_users)
        return {**out, "mode": "generate->rank", "candidates": n, "fusion_weight": weight, "candidate_recall": held[0],
                "exclude_history": exclude_history,
                f"valid_{cfg.ranker.metric}_by_weight": {str(w): round(v, 5) for w, v in choice.items()},
                "device": str(model.device)}

    def rank_calibrate(self, ds: RecDataset, ranker_dir: str | Path, output: str | Path, *,
                       reference: str | Path | None = None, floor: float | None = None,
                       max_drop: float | None = None, grid: Sequence[float] = CORRECTION_GRID,
                       metric: str = "recall@10", overwrite: bool = False) -> dict[str, Any]:
        """Choose the ranker's popularity correction T (`ranker.popularity_correction`: scores lowered
        by T log(1 + n) at ranking time) on the validation split, every user: the largest T of `grid`
        whose overall `metric` is still at least a floor; the floor is the `reference` ranker's
        validation `metric` (e.g. the item-ID ranker's, as trained), a given `floor`, or the ranker's
        own value at T = 0 less a `max_drop` share. When no T reaches the floor, T = 0. OUTPUT is a
        copy of the ranker directory with T set (the input is left as it is) and the sweep recorded
        in its ranker.json under "calibration". Test is never read."""
        if sum(x is not None for x in (reference, floor, max_drop)) != 1:
            raise DataError("give exactly one of a reference ranker, a floor or a max drop", field="floor")
        kind, _, k = metric.partition("@")
        if kind not in ("recall", "ndcg") or not k.isdigit() or int(k) < 1:
            raise DataError(f"must be recall@K or ndcg@K (got {metric!r})", field="metric")
        if max_drop is not None and not 0 <= max_drop < 1:
            raise DataError(f"must be in [0, 1) (got {max_drop!r})", field="max_drop")
        if floor is not None and not floor >= 0:
            raise DataError(f"must be >= 0 (got {floor!r})", field="floor")
        ts = sorted({0.0, *map(float, grid)})
        if ts[0] < 0:
            raise DataError(f"corrections must be >= 0 (got {ts[0]})", field="grid")
        if Path(output).resolve() == Path(ranker_dir).resolve():
            raise DataError("the calibrated ranker is written to a new directory: give another --output",
                            path=output)
        check_output(output, "ranker", overwrite=overwrite)
        model = self.ranker(ranker_dir, ds)
        valid = self.split(ds).valid
        groups = self.buckets(ds).of_targets(valid.targets)

        def score(items: np.ndarray) -> dict[str, float]:
            res = evaluate_rankings(items, valid.targets, ds.num_items, [int(k)], groups)
            return {g: float(v[metric]) for g, v in res.items() if metric in v}

        sweep = {t: score(items) for t, items in correction_sweep(model, valid.histories, ts, int(k)).items()}
        source = {"max_drop": max_drop} if max_drop is not None else {"floor": floor}
        if reference is not None:
            ref = self.ranker(reference, ds)
            floor = score(rank_full(ref, valid.histories, int(k))[0])["all"]
            source = {"reference": str(reference), "reference_correction": ref.cfg.popularity_correction}
        elif max_drop is not None:
            floor = (1 - max_drop) * sweep[0.0]["all"]
        ok = [t for t in ts if sweep[t]["all"] >= floor]
        chosen = max(ok) if ok else 0.0
        calibration = {"metric": metric, "split": "valid", "users": len(valid), "floor": floor, **source,
                       "chosen": chosen, "floor_met": bool(ok), "source": str(ranker_dir),
                       "sweep": {str(t): v for t, v in sweep.items()}}
        info = read_json(Path(ranker_dir) / RANKER_FILE)
        info["config"] = {**info["config"], "popularity_correction": chosen}
        with atomic_dir(output, "ranker", overwrite=overwrite) as tmp:
            shutil.copytree(ranker_dir, tmp, dirs_exist_ok=True)
            write_json(tmp / RANKER_FILE, {**info, "calibration": calibration})
        return {"output": str(output), **calibration}

    # ------------------------------------------------------------------ serving
    def recommend(self, model_dir: str | Path | None, histories: Sequence[Sequence[str]], k: int = 10,
                  users: Sequence[str | None] | None = None,
                  ranker_dir: str | Path | None = None) -> list[list[Recommendation]]:
        """Top-k real items for each history of item ids (oldest first): by the generator's beam
        search (`model_dir`), by the ranker over the whole catalogue (`ranker_dir`), or generate ->
        rank (both: the generator's top `ranker.candidates[0]` ordered by the ranker)."""
        if k < 1:
            raise DataError(f"must be at least 1 (got {k})", field="k")
        if ranker_dir is None:
            if model_dir is None:
                raise DataError("give a generator (--model) or a ranker (--ranker), or both", field="model")
            rec = self.recommender(model_dir)
            return rec.recommend(histories, k=k, beam_width=max(self.cfg.decode.beam_width, k),
                                 users=users if rec.codec.uses_users else None)
        model = self.ranker(ranker_dir)
        table = model.table
        index = {iid: i for i, iid in enumerate(table.item_ids)}
        hist = np.full((len(histories), model.cfg.max_history), -1, dtype=np.int64)
        for r, h in enumerate(histories):
            unknown = [i for i in h if str(i) not in index]
            if unknown:
                raise DataError(f"unknown item id(s) {unknown[:5]} (not in the ranker's SID table)", field="history")
            rows = [index[str(i)] for i in h][-model.cfg.max_history:]
            if rows:
                hist[r, -len(rows):] = rows
        if model_dir is None:
            items, scores = rank_full(model, hist, k)
        else:
            rec = self.recommender(model_dir)
            if rec.codec.table.item_ids != table.item_ids:
                raise DataError("the generator and the ranker were trained on different items", path=model_dir)
            n = max(k, self.cfg.ranker.candidates[0])
            cand, _ = rec.rank(torch.from_numpy(hist), k=n, beam_width=n,
                               users=list(users) if rec.codec.uses_users and users is not None else None)
            items, scores = rerank(cand, candidate_scores(model, hist, cand), k=k)
        ids, titles = table.item_ids, model.titles
        return [[Recommendation(ids[i], int(i), float(s), table.to_string(int(i)), titles.get(ids[i]))
                 for i, s in zip(row_i, row_s, strict=True) if i >= 0 and np.isfinite(s)]
                for row_i, row_s in zip(items, scores, strict=True)]


NEAR_TIES = 0.005
"""Stage 2 accepts a tokenizer whose re-encoded SIDs differ from its table for at most this share of items."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _table_digest(table: SIDTable) -> str:
    return _digest(json.dumps(table.to_json(), sort_keys=True).encode())


def dataset_digest(ds: RecDataset) -> dict[str, Any]:
    return {"items": ds.num_items, "users": ds.num_users, "interactions": ds.num_interactions,
            "sequences": _digest(np.concatenate(ds.sequences()).tobytes()
                                 + np.array([len(q) for q in ds.sequences()]).tobytes())}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _read_fingerprint(run: Path) -> dict[str, Any] | None:
    path = run / "fingerprint.json"
    if not path.exists():
        return None
    try:
        return read_json(path)
    except DataError as e:
        raise DataError(f"{e.reason}; rerun with --overwrite to start the run afresh", path=path) from None


def _check_run_fingerprint(run: Path, fingerprint: dict[str, Any]) -> None:
    """A run directory trained under other settings, data or SIDs is never resumed as if it were
    this run: stop with the differences (`--overwrite` starts it afresh instead)."""
    old = _read_fingerprint(run)
    if old is not None and old != fingerprint:
        a, b = _flat(old), _flat(fingerprint)
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        raise DataError(f"holds a run with other settings or data (differs in: {', '.join(diff[:8])}); "
                        "choose another --output, or --overwrite to start it afresh", path=run)


def _start_run(run: Path, fingerprint: dict[str, Any], fresh: bool) -> None:
    """Record the run's fingerprint; `fresh` (or a run directory without one) clears any training
    state of ours first, so nothing of an earlier run is resumed."""
    if fresh or not (run / "fingerprint.json").exists():
        for sub in ("checkpoint", "best", "logs"):
            if (run / sub).is_dir():
                shutil.rmtree(run / sub)
    write_json(run / "fingerprint.json", fingerprint)


def _load_artefact(load: Callable[[Any], Any], path: str | Path, what: str, command: str) -> Any:
    """Load a saved artefact; a missing or corrupted one is a DataError that names it and says what to do."""
    if not Path(path).is_dir():
        raise DataError(f"no {what} directory here (write one with `{command}`)", path=path)
    try:
        return load(path)
    except DataError:
        raise
    except Exception as e:  # corrupted safetensors / JSON / tokenizer files raise many types
        raise DataError(f"cannot read this {what} directory ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                        f"it is incomplete or corrupted: write it again with `{command}`", path=path) from None
