"""MMQ stage 2 for the ranker: behaviour-aware fine-tuning of the MMQ tokenizer with the ranker's loss
(see ../shared/docs/MMQ.md, "Stage 2").

The ranker reads each item's SID tokens through soft indexing: per SID position,
`ind = softmax(cos(z, codebook) / tau) + stopgrad(hard - soft)` and the position's embedding is
`ind @ table`. The forward pass is the hard codes' (the same scores as a plain `sid` ranker on
the argmax SIDs), while the ranker's cross-entropy reaches the MMQ experts and codebooks. The loss
is `L_rank + alpha' L_recon + beta' L_aux` (MMQ's multimodal and per-modality reconstructions of
stage 1, through which the gates train too; paper: alpha' = beta' = 0.5).

Schedules: `joint` trains everything every epoch; `alternating` trains the ranker alone for
`alternate_every` epochs, then the tokenizer alone (the ranker frozen), and so on (ETEGRec,
SIGIR'25, found joint straight-through training can collapse codebooks). After every epoch that
trained the tokenizer, codewords no item uses are restarted on random items' expert outputs, and
the embedding row of a restarted code starts as the mean of the rows its new items had, so no item
is read through an untrained row; the history records utilisation, restarts and the share of items
whose SID changed.

The best epoch is exported as what the rest of the project reads: SIDs re-derived by argmax,
collisions re-resolved (`SIDTable.from_codes`), a plain ranker with those SIDs (its scores equal
the fine-tuned model's), and the fine-tuned tokenizer as its own directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmq_rec.ranker.model import ItemRepresentation, RankerConfig, SequentialRanker, build_ranker, save_ranker
from mmq_rec.ranker.train import TrainingHooks
from mmq_rec.tokenizer.api import Tokenization, table_quality
from mmq_rec.tokenizer.base import ItemTokenizer
from mmq_rec.tokenizer.finetune import (  # noqa: F401  (FinetuneConfig, tokenizer_phase: part of this module's API)
    TOKENIZER_DIR,
    FinetuneConfig,
    changed_share,
    check_tokenizer,
    restart_all,
    tokenizer_phase,
)
from mmq_rec.tokenizer.finetune import carry_rows as carry_sid_rows
from mmq_rec.tokenizer.sid import SIDTable, quality


def check_finetunable(cfg: RankerConfig, tokenizer: Any) -> None:
    """Stage 2 needs an MMQ or RQ-KMeans tokenizer with equal codebooks and a ranker that reads SID tokens one
    table per position (`sid` or `id+sid`): a prefix row has no soft form."""
    check_tokenizer(tokenizer)
    if cfg.sid_part != "sid":
        raise ValueError(f"representation: stage 2 needs sid or id+sid, whose SID tokens have a soft form "
                         f"(got {cfg.representation!r})")


class SoftSIDItems(ItemRepresentation):
    """The `sid` item representation read through the tokenizer model's soft indices (MMQ's or
    RQ-KMeans's, see `tokenizer.finetune`). Owns that model and the catalogue's (standardised)
    features, so `.to(device)` moves everything; the features are not saved with the weights
    (they are the dataset's)."""

    def __init__(self, cfg: RankerConfig, tokenizer_model: nn.Module, features: list[torch.Tensor],
                 counts: np.ndarray, tau: float):
        with torch.no_grad():
            codes = tokenizer_model.quantize(features)[1].numpy()
        k = tokenizer_model.codebook_size
        super().__init__(cfg, codes, [k] * codes.shape[1], counts)
        self.tokenizer = tokenizer_model
        self.tau = tau
        self.codebook_size = k
        for i, x in enumerate(features):
            self.register_buffer(f"feature{i}", x, persistent=False)
        self.frozen_codes: torch.Tensor | None = None  # the SIDs, while the tokenizer is frozen

    def features(self) -> list[torch.Tensor]:
        return [getattr(self, f"feature{i}") for i in range(len(self.tokenizer.names))]

    def latents(self) -> list[torch.Tensor]:
        return self.tokenizer.expert_latents(self.features())

    def soft_indices(self, latents: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(N, L, K) soft one-hots of every item's SID positions."""
        return self.tokenizer.soft_indices(self.latents() if latents is None else latents, self.tau)

    @torch.no_grad()
    def hard_codes(self) -> torch.Tensor:
        """(N, L) the items' current SIDs (before disambiguation)."""
        return self.tokenizer.quantize(self.features())[1]

    def sid_part(self, ind: torch.Tensor | None = None) -> torch.Tensor:
        """As the plain `sid` part (the mean of the rows that training items use), with each row
        read as `ind @ table`: equal to it in the forward pass. While the tokenizer is frozen,
        the rows of `frozen_codes` are read directly."""
        if ind is None and self.frozen_codes is not None:
            codes = self.frozen_codes
        else:
            ind = self.soft_indices() if ind is None else ind
            codes = ind.detach().argmax(-1)  # ind is exactly 0 off the hard code
        length, k = codes.shape[1], self.codebook_size
        rows = codes + torch.arange(length, device=codes.device) * k
        trained = torch.zeros(self.sid_emb.num_embeddings, dtype=torch.bool, device=codes.device)
        trained[rows[self.counts > 0].reshape(-1)] = True
        keep = trained[rows].to(self.sid_emb.weight.dtype)
        if ind is None:
            pooled = (self.sid_emb(rows) * keep[..., None]).sum(1)
        else:
            pooled = torch.einsum("nlk,lkd->nd", ind * keep[..., None], self.sid_emb.weight.view(length, k, -1))
        return pooled / keep.sum(1, keepdim=True).clamp(min=1.0)


class Stage2Ranker(SequentialRanker):
    """A ranker over `SoftSIDItems` whose loss adds MMQ's reconstruction terms."""

    items: SoftSIDItems

    def __init__(self, cfg: RankerConfig, items: SoftSIDItems, ft: FinetuneConfig):
        super().__init__(cfg, items)
        self.ft = ft

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, neg_items: torch.Tensor | None = None,
             neg_logq: torch.Tensor | None = None, item_emb: torch.Tensor | None = None) -> torch.Tensor:
        items = self.items
        if items.frozen_codes is not None:  # a ranker-only epoch
            return super().loss(inputs, targets, neg_items, neg_logq)
        latents = items.latents()
        emb = items(items.sid_part(items.soft_indices(latents)))
        loss = super().loss(inputs, targets, neg_items, neg_logq, item_emb=emb)
        if self.ft.alpha or self.ft.beta:
            parts = items.tokenizer.losses(items.features(), latents)
            loss = loss + self.ft.alpha * parts["recon"] + self.ft.beta * parts["aux"]
        return loss


def build_stage2(cfg: RankerConfig, ft: FinetuneConfig, tokenizer: ItemTokenizer, modalities: dict[str, np.ndarray],
                 counts: np.ndarray) -> Stage2Ranker:
    """A fresh ranker (seeded by `cfg.seed`) over a copy of `tokenizer`'s model (`finetune_model`), reading the
    items' `modalities` (the ones the tokenizer was fitted on, same dimensions)."""
    check_finetunable(cfg, tokenizer)
    if set(modalities) != set(tokenizer.modality_dims) or any(
            np.asarray(modalities[m]).shape[1] != d for m, d in tokenizer.modality_dims.items()):
        got = {m: int(np.asarray(v).shape[1]) for m, v in modalities.items()}
        raise ValueError(f"modalities: the tokenizer was fitted on {tokenizer.modality_dims}, got {got}")
    features = tokenizer.finetune_features(modalities)
    if len(features[0]) != len(counts):
        raise ValueError(f"{len(counts)} item counts for {len(features[0])} items")
    torch.manual_seed(cfg.seed)
    items = SoftSIDItems(cfg, tokenizer.finetune_model(), features, counts, ft.tau)
    return Stage2Ranker(cfg, items, ft)


REBUILT = {"items.sid_rows", "items.sid_keep", "items.counts"}  # buffers a ranker derives from its SIDs
ARCHITECTURE = ("representation", "combine", "d_model", "num_layers", "num_heads", "max_history")


def warm_start(model: Stage2Ranker, plain: SequentialRanker) -> None:
    """Start `model` from a plain ranker's weights (`finetune.init_from`); `plain` must have the same
    architecture (the caller checks it was trained on the tokenizer's stage-1 SIDs)."""
    diff = [k for k in ARCHITECTURE if getattr(plain.cfg, k) != getattr(model.cfg, k)]
    if diff:
        raise ValueError("init_from: the ranker differs from this configuration in "
                         + ", ".join(f"{k} ({getattr(plain.cfg, k)!r} vs {getattr(model.cfg, k)!r})" for k in diff))
    state = {k: v for k, v in plain.state_dict().items() if k not in REBUILT}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or {k for k in missing if not k.startswith("items.tokenizer.")} - REBUILT:
        raise ValueError(f"init_from: the ranker's weights do not fit ({sorted(missing)[:3]}, {unexpected[:3]})")


def stage2_hooks(model: Stage2Ranker, item_ids: list[str], modalities: dict[str, np.ndarray], base_codes: np.ndarray,
                 tokenizer: ItemTokenizer, base_quality: dict[str, Any], titles: list[str] | None = None,
                 quality_extra: dict[str, Any] | None = None) -> TrainingHooks:
    """The training loop's hooks for stage 2 (see the module docstring). `base_codes`: the stage-1
    SIDs before disambiguation, against which changes are counted; `base_quality`: the stage-1
    tokenization's quality numbers. The best epoch is saved as a ranker directory with the
    re-derived SID table and, in its `tokenizer/`, the fine-tuned tokenizer (its quality.json holds
    the new quality numbers, `quality_extra` (e.g. the modalities it reads) and under `stage2` the
    semantic quality before and after and the changed SIDs)."""
    base_semantic = quality(base_codes, [model.items.codebook_size] * base_codes.shape[1])
    ft = model.ft
    tok_params = list(model.items.tokenizer.parameters())
    tok_ids = {id(p) for p in tok_params}

    def param_groups(m: SequentialRanker) -> list[dict[str, Any]]:
        return [{"params": [p for p in m.parameters() if id(p) not in tok_ids]},
                {"params": tok_params, "lr": ft.tokenizer_lr, "weight_decay": 0.0}]

    def on_epoch_start(m: SequentialRanker, epoch: int) -> None:
        train_tok = tokenizer_phase(ft, epoch)
        for p in m.parameters():
            p.requires_grad_(train_tok if id(p) in tok_ids else (ft.schedule == "joint" or not train_tok))
        m.items.frozen_codes = None if train_tok else m.items.hard_codes()

    def on_epoch_end(m: SequentialRanker, epoch: int) -> dict[str, Any]:
        items = m.items
        restarted = 0
        if tokenizer_phase(ft, epoch) and ft.restart_dead:
            gen = torch.Generator().manual_seed(m.cfg.seed * 7919 + epoch)
            before = items.hard_codes()
            with torch.no_grad():
                restarted = restart_all(items.tokenizer, items.latents(), gen)
            if restarted:
                carry_rows(items, before, items.hard_codes())
        codes = items.hard_codes().cpu().numpy()
        q = quality(codes, [items.codebook_size] * codes.shape[1])
        for p in m.parameters():  # every parameter trainable again between epochs (validation, saving)
            p.requires_grad_(True)
        items.frozen_codes = None
        return {"phase": "tokenizer" if tokenizer_phase(ft, epoch) and ft.schedule == "alternating" else
                ("joint" if ft.schedule == "joint" else "ranker"),
                "restarted_codes": restarted, "utilisation": round(float(np.mean(q["utilisation"])), 4),
                "collision_rate": q["collision_rate"], "changed_sids": changed_share(base_codes, codes)["items"]}

    def save_best(m: SequentialRanker, path: Path, info: dict[str, Any]) -> None:
        plain, table, tok = export(m, item_ids, tokenizer)
        report = {"before": base_semantic, "after": table.quality(),
                  "changed_sids": changed_share(base_codes, table.codes[:, :table.num_semantic])}
        tq = {**base_quality, **table_quality(tok, table, modalities), **(quality_extra or {}),
              "stage2": {**report, "finetune": vars(ft).copy(), "ranker_epoch": info.get("epoch")}}

        def write_tokenizer(tmp: Path) -> None:
            Tokenization(tok, table, tq).save_pretrained(tmp / TOKENIZER_DIR)

        save_ranker(plain, table, path, {**info, "tokenizer_dir": str(path / TOKENIZER_DIR),
                                         "stage1_tokenizer_dir": info.get("tokenizer_dir"), "stage2": report},
                    overwrite=True, titles=titles, extra=write_tokenizer)

    return TrainingHooks(param_groups, on_epoch_start, on_epoch_end, save_best)


def carry_rows(items: SoftSIDItems, before: torch.Tensor, after: torch.Tensor) -> None:
    """After a dead-code restart: the SID-embedding row of each restarted code becomes the mean of
    the rows its new items had (`tokenizer.finetune.carry_rows`)."""
    carry_sid_rows(items.sid_emb.weight, before, after, items.codebook_size)


@torch.no_grad()
def export(model: Stage2Ranker, item_ids: list[str], base: ItemTokenizer
           ) -> tuple[SequentialRanker, SIDTable, ItemTokenizer]:
    """(a plain ranker on the re-derived SIDs with the fine-tuned weights, its SID table, the
    fine-tuned tokenizer on the CPU: `base`, the stage-1 tokenizer, with the fine-tuned
    model). The plain ranker scores exactly as `model` does."""
    items = model.items
    codes = items.hard_codes().cpu().numpy()
    table = SIDTable.from_codes(item_ids, codes, [items.codebook_size] * codes.shape[1])
    plain = build_ranker(model.cfg, table, items.counts.cpu().numpy())
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("items.tokenizer.") and k not in REBUILT}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if unexpected or set(missing) - REBUILT:
        raise RuntimeError(f"stage-2 export: the plain ranker's weights differ ({missing}, {unexpected})")
    tok = base.with_finetuned(items.tokenizer)
    return plain.to(model.device).train(model.training), table, tok
