"""Recommending with a trained generator: histories in, real items with scores out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmq_rec.generator.beam import constrained_beam_search
from mmq_rec.generator.model import ITEMS_FILE, SIDCodec, load_generator
from mmq_rec.generator.trie import PrefixTrie
from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import read_json
from mmq_rec.tokenizer.training import resolve_device

# weights' dtypes for decoding: bfloat16 is faster on GPUs; scores then differ in the last digits
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Recommendation:
    item_id: str
    item: int
    score: float
    sid: str
    title: str | None = None


class Recommender:
    """A generator with its SID table and prefix trie, all on one device (the model's; `to` moves them)."""

    def __init__(self, model, codec: SIDCodec, max_history: int = 20, titles: dict[str, str] | None = None):
        self.model = model.eval() if model is not None else None
        self.titles = titles or {}
        self.codec = codec
        self.max_history = max_history
        self.trie = PrefixTrie(codec.table.codes, codec.table.codebook_sizes)
        self._row = {iid: i for i, iid in enumerate(codec.table.item_ids)}
        if model is not None:
            self.to(model.device)
        self.info: dict = {}  # what generator.json records beside the model config (split, dataset, ...)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        dtype: str = "float32") -> Recommender:
        """Load a trained generator onto `device` (cpu, cuda, cuda:N; None: CUDA when available),
        its weights in `dtype` (float32 or bfloat16)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(DTYPES)} (got {dtype!r})")
        model, codec, cfg, info = load_generator(path)
        model.to(device=resolve_device(device), dtype=DTYPES[dtype])
        items = Path(path) / ITEMS_FILE
        rec = cls(model, codec, cfg.max_history, read_json(items) if items.exists() else None)
        rec.info = info
        return rec

    @property
    def device(self) -> torch.device:
        return self.trie.device

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Recommender:
        """Move the model, the item -> token table and the trie to `device` (once: decoding then
        copies nothing per batch but the histories), and cast the model's weights to `dtype`."""
        if self.model is not None:
            self.model.to(device=device, dtype=dtype)
        if device is not None:
            self.codec.to(device)
            self.trie.to(device)
        return self

    def histories_tensor(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Right-aligned (B, max_history) item rows, -1 padded (older items beyond the cap are dropped)."""
        out = torch.full((len(histories), self.max_history), -1, dtype=torch.long)
        for r, h in enumerate(histories):
            h = list(h)[-self.max_history:]
            if h:
                out[r, -len(h):] = torch.as_tensor(h)
        return out

    @torch.no_grad()
    def rank(self, histories: torch.Tensor, k: int = 10, beam_width: int = 20, batch_size: int = 256,
             show_progress: bool = False, users: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, H) item-row histories -> (items (B, k) with -1 padding, scores (B, k)). `users`: the
        B user ids, needed by a generator with hashed user tokens (ignored by one without)."""
        user_tokens = None
        if self.codec.uses_users:
            if users is None or any(u is None for u in users):
                raise DataError("this generator was trained with hashed user tokens: give each history its "
                                "user id", field="user_id")
            user_tokens = self.codec.user_tokens(users).to(self.model.device)
        histories = histories.to(self.model.device)  # one transfer; the batches are slices of it
        items, scores = [], []
        for s in tqdm(range(0, len(histories), batch_size), desc="decode", disable=not show_progress):
            h = histories[s:s + batch_size]
            enc = self.codec.encoder_inputs(self.model, h, None if user_tokens is None else user_tokens[s:s + batch_size])
            it, sc = constrained_beam_search(self.model, enc, self.trie, self.codec.vocab, beam_width, k)
            items.append(it.cpu().numpy())  # the batch's one read-back, after its whole search
            scores.append(sc.cpu().numpy())
        if not items:  # no histories (e.g. one process's empty share of the validation users)
            return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
        return np.concatenate(items), np.concatenate(scores)

    def rows(self, item_ids: Sequence[str]) -> list[int]:
        unknown = [i for i in item_ids if str(i) not in self._row]
        if unknown:
            raise DataError(f"unknown item id(s) {unknown[:5]} (not in the model's SID table)", field="history")
        return [self._row[str(i)] for i in item_ids]

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10, beam_width: int = 20,
                  users: Sequence[str] | None = None) -> list[list[Recommendation]]:
        """Histories of item ids (oldest first) -> top-k recommendations per history (`users`: their
        user ids, for a generator with hashed user tokens)."""
        hist = self.histories_tensor([self.rows(h) for h in histories])
        items, scores = self.rank(hist, k, beam_width, users=users)
        ids = self.codec.table.item_ids
        return [[Recommendation(ids[i], int(i), float(s), self.codec.table.to_string(int(i)), self.titles.get(ids[i]))
                 for i, s in zip(row_i, row_s, strict=True) if i >= 0] for row_i, row_s in zip(items, scores, strict=True)]
