"""The discriminative ranker: a causal transformer over the history items (SASRec-style) whose item
representation is built from semantic-ID embeddings, item-ID embeddings, or both.

Item representations (`RankerConfig.representation`), each a (num_items, d) matrix used both as
the history's input embeddings and as the output layer (scores are dot products):
- `id`: one row per item (this is SASRec);
- `sid`: one table per semantic SID position, the item's rows averaged;
- `sid_prefix`: one row per SID prefix (c1), (c1, c2), ..., averaged (hashed into
  `prefix_table_size` rows when set and the prefixes are more);
- `id+sid`, `id+sid_prefix`: both, `combine`d by a sum or by a popularity gate
  g(n) = sigmoid(a log(1 + n) + b) (n: the item's training count; a, b learned):
  e = g e_id + (1 - g) e_sid, so rare items lean on their SID part; or by `level_gate`, one
  popularity weight per part: w = softmax(a log(1 + n) + b) over the ID row and each SID
  level's row (a, b: one pair per part, learned), e = sum_j w_j e_j. An item never seen in
  training has no trained ID row: its representation is its SID part alone (weight 0).
The disambiguation token is not used: it numbers colliding items and means nothing across items."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import atomic_dir, read_json, write_json
from mmq_rec.tokenizer.sid import SID_TABLE_FILE, SIDTable
from mmq_rec.tokenizer.training import resolve_device

ALIGN_ITEMS = 1024
"""Items drawn per training step for `RankerConfig.align_loss`."""
REPRESENTATIONS = ("id", "sid", "sid_prefix", "id+sid", "id+sid_prefix")
COMBINES = ("sum", "gate", "level_gate")
LOSSES = ("full", "sampled")


@dataclass
class RankerConfig:
    representation: str = "id+sid_prefix"
    """Item representation: id, sid, sid_prefix, id+sid or id+sid_prefix (see `mmq_rec.ranker.model`)."""
    combine: str = "gate"
    """How id+sid* join the two parts: sum, gate (a learned popularity gate; cold items use the SID part),
    or level_gate (a learned popularity weight for the ID row and for each SID level's row)."""
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.3
    max_history: int = 20
    """Items of history the ranker reads (follows data.max_history)."""
    id_dropout: float = 0.0
    """id+sid*: in training, the share of items (drawn afresh each step) represented by their SID part
    alone, as unseen items are, so that the SID part learns to stand for an item by itself."""
    id_min_count: int = 0
    """id+sid*: items with fewer training interactions than this have no ID part (weight 0, in training
    and at ranking time): they are represented by their SID part alone, as unseen items are."""
    sid_loss: float = 0.0
    """id+sid*: weight of a second cross-entropy whose output layer is the items' SID parts alone
    (the history read as usual), so that the SID part learns to score items by itself, as it does
    for rare items (mostly SID under the gate) and unseen ones."""
    align_loss: float = 0.0
    """id+sid*: weight of an InfoNCE loss that aligns each item's ID row with its own SID part (cosine
    similarity / `align_tau`, against the other items of a uniform draw of ALIGN_ITEMS items seen in
    training, both directions), so that a rare item's ID row is pulled towards what its SID's codes
    and prefixes learned from the items that share them."""
    align_tau: float = 0.1
    """Temperature of `align_loss`."""
    logit_adjust: float = 0.0
    """Training only: the softmax logits get + tau log(1 + n) (n: the item's training count), the logit-adjusted
    loss of Menon et al. (2021), so that the scores learn what the popularity prior does not explain."""
    prefix_table_size: int = 0
    """sid_prefix: rows of the prefix table; 0 = one row per distinct prefix, else prefixes are hashed into this many."""
    loss: str = "full"
    """full (softmax over the whole catalogue) or sampled (shared negatives with a log-Q correction)."""
    num_negatives: int = 1024
    """sampled loss: negatives per batch, drawn by training popularity."""
    epochs: int = 30
    """Most passes over the training windows."""
    batch_size: int = 256
    """Training windows per step."""
    lr: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 2
    """Stop after this many epochs without a better validation metric."""
    metric: str = "ndcg@10"
    """Validation metric for early stopping and checkpoint choice."""
    popularity_correction: float = 0.0
    """At ranking time only (training is unchanged): every item's score is lowered by T log(1 + n), n its
    training count, which moves recall from popular items to rare ones. `mmq rank calibrate` chooses T
    on validation (the largest T that keeps a floor of overall accuracy)."""
    candidates: list[int] = field(default_factory=lambda: [50, 100, 200])
    """Generate -> rank: numbers of generator candidates (beam width) to re-rank."""
    fusion_weights: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 1.0, 3.0])
    """Generate -> rank: weights w of the generator's log-probability in `ranker score + w log p`, chosen on validation."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"representation: must be one of {', '.join(REPRESENTATIONS)} "
                             f"(got {self.representation!r})")
        if self.combine not in COMBINES:
            raise ValueError(f"combine: must be one of {', '.join(COMBINES)} (got {self.combine!r})")
        if self.loss not in LOSSES:
            raise ValueError(f"loss: must be one of {', '.join(LOSSES)} (got {self.loss!r})")
        for name in ("d_model", "num_layers", "num_heads", "max_history", "num_negatives", "epochs", "batch_size",
                     "patience"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name}: must be >= 1 (got {getattr(self, name)!r})")
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads: must divide d_model = {self.d_model} (got {self.num_heads!r})")
        for name in ("dropout", "id_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: must be in [0, 1) (got {getattr(self, name)!r})")
        if not self.sid_loss >= 0 or (self.sid_loss and "+" not in self.representation):
            raise ValueError(f"sid_loss: must be >= 0, and > 0 only for id+sid or id+sid_prefix (got "
                             f"{self.sid_loss!r} with {self.representation!r})")
        if not self.align_loss >= 0 or (self.align_loss and "+" not in self.representation):
            raise ValueError(f"align_loss: must be >= 0, and > 0 only for id+sid or id+sid_prefix (got "
                             f"{self.align_loss!r} with {self.representation!r})")
        if not self.align_tau > 0:
            raise ValueError(f"align_tau: must be > 0 (got {self.align_tau!r})")
        if not self.id_min_count >= 0 or (self.id_min_count and "+" not in self.representation):
            raise ValueError(f"id_min_count: must be >= 0, and > 0 only for id+sid or id+sid_prefix (got "
                             f"{self.id_min_count!r} with {self.representation!r})")
        if not self.logit_adjust >= 0:
            raise ValueError(f"logit_adjust: must be >= 0 (got {self.logit_adjust!r})")
        if not self.popularity_correction >= 0:
            raise ValueError(f"popularity_correction: must be >= 0 (got {self.popularity_correction!r})")
        if not self.prefix_table_size >= 0:
            raise ValueError(f"prefix_table_size: must be >= 0 (got {self.prefix_table_size!r})")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"lr: must be > 0 and weight_decay >= 0 (got {self.lr!r}, {self.weight_decay!r})")
        if not self.candidates or not all(c >= 1 for c in self.candidates):
            raise ValueError(f"candidates: must list beam widths >= 1 (got {self.candidates!r})")
        if not self.fusion_weights or not all(w >= 0 for w in self.fusion_weights):
            raise ValueError(f"fusion_weights: must list weights >= 0 (got {self.fusion_weights!r})")
        kind, _, k = self.metric.partition("@")
        if kind not in ("recall", "ndcg") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"metric: must be recall@K or ndcg@K (got {self.metric!r})")

    @property
    def uses_id(self) -> bool:
        return self.representation.startswith("id")

    @property
    def sid_part(self) -> str | None:
        """"sid", "sid_prefix" or None (the `id` ranker)."""
        return self.representation.split("+")[-1] if self.representation != "id" else None


def prefix_rows(codes: np.ndarray, table_size: int = 0) -> tuple[np.ndarray, int]:
    """(N, L) semantic codes -> ((N, L) row of each item's length-1..L prefix, number of rows).
    Rows number the distinct prefixes in order of first appearance; with `table_size` > 0 and more
    prefixes than that, each prefix is hashed (a stable hash of its length and codes) instead."""
    codes = np.asarray(codes, dtype=np.int64)
    n, length = codes.shape
    rows = np.zeros((n, length), dtype=np.int64)
    keys = [[(p, *map(int, codes[i, :p + 1])) for p in range(length)] for i in range(n)]
    distinct = {k: None for row in keys for k in row}
    if table_size and len(distinct) > table_size:
        for i, row in enumerate(keys):
            for p, key in enumerate(row):
                h = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
                rows[i, p] = int.from_bytes(h, "little") % table_size
        return rows, table_size
    index = {k: r for r, k in enumerate(distinct)}
    for i, row in enumerate(keys):
        rows[i] = [index[k] for k in row]
    return rows, len(index)


class ItemRepresentation(nn.Module):
    """All items' representations, (num_items, d), from the buffers it owns: the semantic codes,
    the prefix rows and the training counts (so `.to(device)` moves everything)."""

    def __init__(self, cfg: RankerConfig, codes: np.ndarray, codebook_sizes: list[int], counts: np.ndarray,
                 num_prefix_rows: int | None = None, prefix_index: np.ndarray | None = None):
        super().__init__()
        d, n = cfg.d_model, len(codes)
        self.cfg = cfg
        codes = np.asarray(codes, dtype=np.int64)
        self.register_buffer("counts", torch.as_tensor(np.asarray(counts, dtype=np.float32)))
        self.id_emb = nn.Embedding(n, d) if cfg.uses_id else None
        self.sid_emb = None
        part = cfg.sid_part
        if part == "sid":
            sizes = torch.as_tensor(list(codebook_sizes)[:codes.shape[1]], dtype=torch.long)
            offsets = torch.cumsum(sizes, 0) - sizes
            self.register_buffer("sid_rows", torch.as_tensor(codes) + offsets)
            self.sid_emb = nn.Embedding(int(sizes.sum()), d)
        elif part == "sid_prefix":
            if prefix_index is None:
                prefix_index, num_prefix_rows = prefix_rows(codes, cfg.prefix_table_size)
            self.register_buffer("sid_rows", torch.as_tensor(prefix_index, dtype=torch.long))
            self.sid_emb = nn.Embedding(int(num_prefix_rows), d)
        if self.sid_emb is not None:
            # A row (code or prefix) that no training item uses gets only negative gradients (its items
            # are never a target) and would rank its items last: pooling skips such rows, so an item
            # unseen in training is represented by the codes and prefixes it shares with seen items.
            rows = self.sid_rows
            trained = torch.zeros(self.sid_emb.num_embeddings, dtype=torch.bool)
            trained[rows[torch.as_tensor(np.asarray(counts) > 0)].reshape(-1)] = True
            self.register_buffer("sid_keep", trained[rows].float())
        self.gate = self.level_gate = None
        if self.sid_emb is not None and self.id_emb is not None:
            if cfg.combine == "gate":
                self.gate = nn.Parameter(torch.tensor([1.0, -2.0]))  # g = sigmoid(a log(1 + n) + b)
            elif cfg.combine == "level_gate":
                self.level_gate = nn.Parameter(torch.zeros(2, 1 + self.sid_rows.shape[1]))  # rows a, b; ID first
        for emb in (self.id_emb, self.sid_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=d ** -0.5)

    @property
    def num_items(self) -> int:
        return len(self.counts)

    def sid_part(self) -> torch.Tensor:
        """(N, d): the mean of each item's code (sid) or prefix (sid_prefix) rows that training items use."""
        keep = self.sid_keep[..., None]
        return (self.sid_emb(self.sid_rows) * keep).sum(1) / keep.sum(1).clamp(min=1.0)

    def id_weight(self) -> torch.Tensor:
        """(N, 1) weight of the ID part: 1 (sum) or the gate, and 0 for items unseen in training
        (and, in training, for the `id_dropout` share of items)."""
        seen = self.id_weight_mask()
        if self.gate is None:
            return seen
        return torch.sigmoid(self.gate[0] * torch.log1p(self.counts) + self.gate[1])[:, None] * seen

    def level_weights(self) -> torch.Tensor:
        """level_gate: (N, 1 + L) weights of the ID row and each SID level's row, summing to 1; 0 for
        the ID row of an item unseen in training (or dropped by `id_dropout`) and for SID rows that
        no training item uses."""
        a, b = self.level_gate
        logits = a * torch.log1p(self.counts)[:, None] + b
        keep = torch.cat([self.id_weight_mask(), self.sid_keep], dim=1) > 0
        return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=1).nan_to_num(0.0)

    def id_weight_mask(self) -> torch.Tensor:
        """(N, 1): 1 for items whose ID row is used (seen in training, at least `id_min_count` times, and not
        dropped this step), else 0."""
        seen = (self.counts >= max(1, self.cfg.id_min_count)).float()[:, None]
        if self.training and self.cfg.id_dropout > 0:
            seen = seen * (torch.rand_like(seen) >= self.cfg.id_dropout).float()
        return seen

    def align_loss(self, sid: torch.Tensor | None = None) -> torch.Tensor:
        """`RankerConfig.align_loss`'s InfoNCE between the ID rows and the SID parts (`sid`: the SID
        parts, when already computed) of ALIGN_ITEMS items drawn among those seen in training."""
        seen = torch.nonzero(self.counts > 0).squeeze(1)
        pick = seen[torch.randperm(len(seen), device=seen.device)[:ALIGN_ITEMS]]
        sid = self.sid_part() if sid is None else sid
        logits = F.normalize(self.id_emb(pick), dim=-1) @ F.normalize(sid[pick], dim=-1).T / self.cfg.align_tau
        same = torch.arange(len(pick), device=logits.device)
        return (F.cross_entropy(logits, same) + F.cross_entropy(logits.T, same)) / 2

    def forward(self, sid: torch.Tensor | None = None) -> torch.Tensor:
        """(N, d) item representations (`sid`: the SID part, when already computed)."""
        if self.sid_emb is None:
            return self.id_emb.weight
        if self.level_gate is not None:
            if sid is not None:
                raise ValueError("level_gate weighs each SID level's row: it takes no pooled SID part")
            w = self.level_weights()
            return w[:, :1] * self.id_emb.weight + (w[:, 1:, None] * self.sid_emb(self.sid_rows)).sum(1)
        sid = self.sid_part() if sid is None else sid
        if self.id_emb is None:
            return sid
        w = self.id_weight()
        if self.gate is None:
            return w * self.id_emb.weight + sid
        return w * self.id_emb.weight + (1 - w) * sid


class SequentialRanker(nn.Module):
    """Causal transformer over right-aligned, -1 padded item histories; `scores` = the last
    position's state · every item's representation."""

    def __init__(self, cfg: RankerConfig, items: ItemRepresentation):
        super().__init__()
        self.cfg, self.items = cfg, items
        d = cfg.d_model
        self.pos_emb = nn.Embedding(cfg.max_history, d)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(d, cfg.num_heads, dim_feedforward=4 * d, dropout=cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.pos_emb.weight.device

    def encode(self, histories: torch.Tensor, item_emb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, W) item rows (-1 = padding, on the left) -> (B, W, d) states; position t has read
        items <= t only, and never a padding position other than itself."""
        b, w = histories.shape
        if w > self.cfg.max_history:
            histories, w = histories[:, -self.cfg.max_history:], self.cfg.max_history
        item_emb = self.items() if item_emb is None else item_emb
        pad = histories < 0
        x = F.embedding(histories.clamp(min=0), item_emb) * math.sqrt(self.cfg.d_model)
        x = x.masked_fill(pad[..., None], 0.0) + self.pos_emb.weight[self.cfg.max_history - w:]
        x = self.drop(x)
        future = torch.ones(w, w, dtype=torch.bool, device=histories.device).triu(1)
        eye = torch.eye(w, dtype=torch.bool, device=histories.device)
        blocked = future[None] | (pad[:, None, :] & ~eye[None])  # (B, W, W): True = may not attend
        mask = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device).masked_fill(blocked, float("-inf"))
        mask = mask.repeat_interleave(self.cfg.num_heads, dim=0)
        return self.norm(self.encoder(x, mask=mask))

    def score_bias(self, popularity_correction: float | None = None) -> torch.Tensor | None:
        """(num_items,) amount added to every ranking score: -T log(1 + n) (T: `popularity_correction`,
        by default the config's; n: the item's training count), or None when T = 0."""
        t = self.cfg.popularity_correction if popularity_correction is None else popularity_correction
        return -t * torch.log1p(self.items.counts) if t else None

    def scores(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, H) histories -> (B, num_items) ranking scores of every item as the next one."""
        item_emb = self.items()
        sc = self.encode(histories, item_emb)[:, -1] @ item_emb.T
        bias = self.score_bias()
        return sc if bias is None else sc + bias

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, neg_items: torch.Tensor | None = None,
             neg_logq: torch.Tensor | None = None, item_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-item cross-entropy over every non-padding target of (B, W) windows: full
        softmax, or (given shared negatives and their log sampling probabilities) sampled
        softmax with the log-Q correction and accidental hits masked. `item_emb`: the item
        representations, when already computed."""
        item_emb = self.items() if item_emb is None else item_emb
        h = self.encode(inputs, item_emb)
        keep = targets >= 0
        h, t = h[keep], targets[keep]
        prior = self.cfg.logit_adjust * torch.log1p(self.items.counts) if self.cfg.logit_adjust else None
        loss = _cross_entropy(h, t, item_emb, neg_items, neg_logq, prior)
        sid = self.items.sid_part() if self.cfg.sid_loss or self.cfg.align_loss else None
        if self.cfg.sid_loss:
            loss = loss + self.cfg.sid_loss * _cross_entropy(h, t, sid, neg_items, neg_logq, prior)
        if self.cfg.align_loss:
            loss = loss + self.cfg.align_loss * self.items.align_loss(sid)
        return loss


def _cross_entropy(h: torch.Tensor, t: torch.Tensor, item_emb: torch.Tensor, neg_items: torch.Tensor | None,
                   neg_logq: torch.Tensor | None, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Next-item cross-entropy of states `h` with targets `t` over the output rows `item_emb`: the
    full softmax, or the sampled one (see `SequentialRanker.loss`); `prior` (num_items,) is added
    to every item's logit (`RankerConfig.logit_adjust`)."""
    if neg_items is None:
        logits = h @ item_emb.T
        return F.cross_entropy(logits if prior is None else logits + prior, t)
    pos = (h * item_emb[t]).sum(-1, keepdim=True)
    neg = h @ item_emb[neg_items].T - neg_logq[None]
    if prior is not None:
        pos, neg = pos + prior[t][:, None], neg + prior[neg_items][None]
    neg = neg.masked_fill(neg_items[None] == t[:, None], float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long, device=t.device))


RANKER_FILE = "ranker.json"
WEIGHTS_FILE = "model.safetensors"
ITEMS_FILE = "items.json"


def build_ranker(cfg: RankerConfig, table: SIDTable, counts: np.ndarray, **kw: Any) -> SequentialRanker:
    """A freshly initialised ranker (seeded by `cfg.seed`) over `table`'s items; `counts` are
    the items' training interaction counts."""
    if len(counts) != len(table):
        raise ValueError(f"{len(counts)} item counts for a SID table of {len(table)} items")
    torch.manual_seed(cfg.seed)
    codes = table.codes[:, :table.num_semantic]
    return SequentialRanker(cfg, ItemRepresentation(cfg, codes, table.codebook_sizes, counts, **kw))


def save_ranker(model: SequentialRanker, table: SIDTable, path: str | Path, info: dict[str, Any] | None = None,
                overwrite: bool = False, titles: list[str] | None = None,
                extra: Callable[[Path], None] | None = None) -> Path:
    """One directory: ranker.json (config + what it was trained on), model.safetensors (every
    tensor, buffers included), sid_table.json (the SIDs it was trained with) and, given titles,
    items.json (item id -> title, for readable recommendations); `extra(dir)` adds more files.
    Written atomically."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(path, "ranker", overwrite=overwrite) as tmp:
        if extra is not None:
            extra(tmp)
        save_file(state, str(tmp / WEIGHTS_FILE))
        table.save(tmp / SID_TABLE_FILE)
        write_json(tmp / RANKER_FILE, {"config": asdict(model.cfg), "num_items": len(table), **(info or {})})
        if titles is not None:
            write_json(tmp / ITEMS_FILE, dict(zip(table.item_ids, titles, strict=True)))
    return Path(path)


def load_ranker(path: str | Path, device: str | torch.device | None = "cpu"
                ) -> tuple[SequentialRanker, SIDTable, dict[str, Any]]:
    """(model in eval mode on `device`, its SID table, the rest of ranker.json)."""
    path = Path(path)
    if not (path / RANKER_FILE).is_file():
        raise DataError("not a ranker directory (no ranker.json); train one with `mmq rank train`", path=path)
    info = read_json(path / RANKER_FILE)
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise DataError("expected a JSON object with a config", path=path / RANKER_FILE)
    fields = RankerConfig.__dataclass_fields__
    try:
        cfg = RankerConfig(**{k: v for k, v in info["config"].items() if k in fields})
    except (TypeError, ValueError) as e:
        raise DataError(f"bad ranker config ({e})", path=path / RANKER_FILE) from None
    table = SIDTable.load(path / SID_TABLE_FILE)
    state = load_file(str(path / WEIGHTS_FILE))
    kw = {}
    if "items.sid_rows" in state and cfg.sid_part == "sid_prefix":
        kw = {"prefix_index": state["items.sid_rows"].numpy(), "num_prefix_rows": state["items.sid_emb.weight"].shape[0]}
    model = build_ranker(cfg, table, state["items.counts"].numpy(), **kw)
    model.load_state_dict(state)
    rest = {k: v for k, v in info.items() if k != "config"}
    if (path / ITEMS_FILE).is_file():
        rest["titles"] = read_json(path / ITEMS_FILE)
    return model.to(resolve_device(device)).eval(), table, rest
