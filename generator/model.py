"""The seq2seq generator: a Hugging Face T5 over the SID vocabulary, in two input modes.

- `flat` (TIGER): the encoder reads the SID tokens of the last `max_history` items, flattened.
- `item`: one encoder position per history item, its embedding the sum of its SID token embeddings.
The decoder emits the next item's SID tokens. A trained generator is a `save_pretrained`
directory: the T5 weights and config (loads with `AutoModelForSeq2SeqLM.from_pretrained`), the
SID tokenizer (`AutoTokenizer`), `generator.json` and the `sid_table.json` it decodes into."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

from mmq_rec.generator.objective import OBJECTIVES, history_inputs
from mmq_rec.generator.vocab import EOS, PAD, SIDVocab
from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import atomic_dir, read_json
from mmq_rec.tokenizer.sid import SID_TABLE_FILE, SIDTable

INPUT_MODES = ("flat", "item")
GENERATOR_FILE = "generator.json"


@dataclass
class GeneratorConfig:
    input_mode: str = "flat"
    """flat: SID tokens of the history, flattened (TIGER); item: one position per history item."""
    num_layers: int = 4
    num_decoder_layers: int = 4
    d_model: int = 128
    num_heads: int = 6
    d_kv: int = 64
    d_ff: int = 1024
    dropout: float = 0.1
    max_history: int = 20
    """History items the encoder sees (the protocol's 20)."""
    user_buckets: int = 0
    """TIGER's hashed user token: 0 = none; else user ids are hashed into this many `<u..>` tokens
    and the encoder input starts with the user's token (recommending then needs the user id)."""
    objective: str = "auto"
    """prefix: one example per (history, next item), bidirectional encoder (TIGER); all_positions
    (item mode only): a causal encoder over each user window, every position a target, one
    forward pass per window; auto: all_positions in item mode without user tokens, else prefix."""

    item_id_embedding: bool = False
    """item mode: add a learned per-item embedding to the sum of the item's SID token embeddings
    (zero-initialised, so an item in no training history keeps a zero row: its SID tokens alone)."""

    def __post_init__(self) -> None:
        # Errors read "<field>: <reason>"; mmq.config reports them under the full dotted key.
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode: must be one of {', '.join(INPUT_MODES)} (got {self.input_mode!r})")
        for name in ("num_layers", "num_decoder_layers", "d_model", "num_heads", "d_kv", "d_ff", "max_history"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name}: must be >= 1 (got {getattr(self, name)!r})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1) (got {self.dropout!r})")
        if not self.user_buckets >= 0:
            raise ValueError(f"user_buckets: must be >= 0 (got {self.user_buckets!r})")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: must be one of {', '.join(OBJECTIVES)} (got {self.objective!r})")
        if self.objective == "all_positions" and self.input_mode != "item":
            raise ValueError("objective: all_positions needs input_mode item (a flat history has no item positions)")
        if self.item_id_embedding and self.input_mode != "item":
            raise ValueError("item_id_embedding: needs input_mode item (a flat history has no item positions)")
        if self.objective == "all_positions" and self.user_buckets:
            # T5's relative position bias would see the user token at another distance from each
            # position than at inference, so the two objectives would train different models
            raise ValueError("objective: all_positions does not take user tokens (user_buckets > 0): use prefix")

    @property
    def all_positions(self) -> bool:
        return self.objective == "all_positions" or (self.objective == "auto" and self.input_mode == "item"
                                                     and not self.user_buckets)



def build_model(vocab: SIDVocab, cfg: GeneratorConfig) -> T5ForConditionalGeneration:
    if cfg.input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {cfg.input_mode!r}")
    if vocab.user_buckets != cfg.user_buckets:
        raise ValueError(f"the vocabulary has {vocab.user_buckets} user tokens, the config {cfg.user_buckets}")
    t5 = T5Config(vocab_size=vocab.size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
                  num_layers=cfg.num_layers, num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads,
                  dropout_rate=cfg.dropout, feed_forward_proj="relu", pad_token_id=PAD, eos_token_id=EOS,
                  decoder_start_token_id=PAD)
    t5.causal_encoder = cfg.all_positions  # saved in config.json; `objective.encode` reads it
    model = T5ForConditionalGeneration(t5)
    model.generation_config.decoder_start_token_id = PAD
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model


class SIDCodec:
    """Turns item-index histories and targets into model inputs, for one SID table."""

    def __init__(self, table: SIDTable, input_mode: str = "flat", user_buckets: int = 0):
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        if user_buckets < 0:
            raise ValueError(f"user_buckets must be >= 0, got {user_buckets}")
        self.table = table
        self.vocab = SIDVocab(table.codebook_sizes, user_buckets)
        self.input_mode = input_mode
        tokens = self.vocab.to_tokens(table.codes)
        # row N is the padding item (index -1 wraps to it)
        self.item_tokens = torch.from_numpy(np.concatenate([tokens, np.full((1, tokens.shape[1]), PAD)]))
        # (num_items + 1, d) per-item input embedding of an `item_id_embedding` model, last row zero
        self.item_embedding: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.item_tokens.device

    def to(self, device: str | torch.device) -> SIDCodec:
        """Keep the item -> token table on `device` (in place, once), where lookups then index it."""
        self.item_tokens = self.item_tokens.to(device)
        if self.item_embedding is not None:
            self.item_embedding = self.item_embedding.to(device)
        return self

    def labels(self, targets: torch.Tensor) -> torch.Tensor:
        """Item rows (any device) -> their SID tokens (..., L), on the table's device."""
        return self.item_tokens[targets.to(self.item_tokens.device)]

    @property
    def uses_users(self) -> bool:
        return self.vocab.user_buckets > 0

    def user_tokens(self, user_ids) -> torch.Tensor:
        """User ids -> their hashed user-token ids (B,)."""
        return torch.from_numpy(self.vocab.user_tokens([str(u) for u in user_ids]))

    def encoder_inputs(self, model: T5ForConditionalGeneration, histories: torch.Tensor,
                       users: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """histories (B, H) item indices, -1 = padding; users (B,) user-token ids from `user_tokens`,
        required when the vocabulary has user tokens (ignored otherwise) -> kwargs for the T5 encoder,
        on the model's device. The table moves to the model's device on first use and stays there."""
        dev = model.device
        if self.item_tokens.device != dev or (self.item_embedding is not None and self.item_embedding.device != dev):
            self.to(dev)
        if self.uses_users:
            if users is None:
                raise ValueError(f"this generator reads a hashed user token first (user_buckets="
                                 f"{self.vocab.user_buckets}): pass the users' ids")
            users = users.to(dev)
        return history_inputs(model, self.item_tokens, histories.to(dev), users if self.uses_users else None,
                              self.input_mode, self.item_embedding)


ITEMS_FILE = "items.json"
ITEM_EMBEDDING_FILE = "item_embedding.safetensors"


def save_generator(path: str | Path, model: T5ForConditionalGeneration, codec: SIDCodec, cfg: GeneratorConfig,
                   extra: dict[str, Any] | None = None, titles: list[str] | None = None,
                   add_files: Callable[[Path], None] | None = None, overwrite: bool = False) -> Path:
    """`titles` (one per SID-table item) are kept in items.json so recommendations can show them;
    `add_files(dir)` writes more into the directory before it is published; `overwrite`: replace
    an earlier output of ours at `path` even when it holds others (e.g. a fine-tuned tokenizer)."""
    with atomic_dir(path, "generator", overwrite=overwrite) as tmp:
        if titles is not None:
            (tmp / ITEMS_FILE).write_text(json.dumps(dict(zip(codec.table.item_ids, titles, strict=True))) + "\n")
        model.save_pretrained(tmp, safe_serialization=True)
        if cfg.item_id_embedding:
            if codec.item_embedding is None:
                raise ValueError("the config has item_id_embedding but the codec holds no item embedding")
            save_file({"weight": codec.item_embedding.detach().cpu().contiguous()}, tmp / ITEM_EMBEDDING_FILE)
        codec.vocab.hf_tokenizer().save_pretrained(tmp)
        (tmp / GENERATOR_FILE).write_text(json.dumps({**asdict(cfg), **(extra or {})}, indent=2) + "\n")
        codec.table.save(tmp / SID_TABLE_FILE)
        if add_files is not None:
            add_files(tmp)
    return Path(path)


def load_generator(path: str | Path) -> tuple[T5ForConditionalGeneration, SIDCodec, GeneratorConfig, dict]:
    path = Path(path)
    info_path = path / GENERATOR_FILE
    if not info_path.is_file():
        raise DataError("not a generator directory (no generator.json); train one with `mmq train`", path=path)
    info = read_json(info_path)
    if not isinstance(info, dict):
        raise DataError("expected a JSON object", path=info_path)
    fields = GeneratorConfig.__dataclass_fields__
    cfg = GeneratorConfig(**{k: v for k, v in info.items() if k in fields})
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    codec = SIDCodec(SIDTable.load(path / SID_TABLE_FILE), cfg.input_mode, cfg.user_buckets)
    if model.config.vocab_size != codec.vocab.size:
        raise DataError(f"model vocabulary {model.config.vocab_size} does not match the SID table "
                        f"({codec.vocab.size})", path=path)
    if cfg.item_id_embedding:
        codec.item_embedding = _item_embedding(path / ITEM_EMBEDDING_FILE, len(codec.item_tokens),
                                               model.config.d_model)
    return model, codec, cfg, {k: v for k, v in info.items() if k not in fields}


def _item_embedding(path: Path, rows: int, dim: int) -> torch.Tensor:
    if not path.is_file():
        raise DataError("missing: the generator has item_id_embedding but no item embedding file", path=path)
    try:
        weight = load_file(path).get("weight")
    except (SafetensorError, OSError) as e:
        raise DataError(f"unreadable safetensors file ({e})", path=path) from None
    if weight is None or tuple(weight.shape) != (rows, dim) or not weight.is_floating_point():
        raise DataError(f"expected a floating-point 'weight' tensor of shape ({rows}, {dim}) (SID-table "
                        f"items + padding, d_model)", path=path)
    return weight
