"""MMQ stage 2 for the generator: behaviour-aware fine-tuning of the MMQ tokenizer with the
generator's sequence loss (see ../shared/docs/MMQ.md, "Stage 2").

The generator reads every item through soft indexing: per semantic SID position p,
`ind = softmax(cos(z, codebook) / tau) + stopgrad(hard - soft)`, and the token's embedding is
`ind @ E_p` (E_p: the T5 embedding rows of position p's codes). The history items enter the
encoder as the sum of their tokens' embeddings (item input mode), the target's tokens enter the
decoder the same way (teacher forcing), and each target token is scored against its soft
one-hot: `-(ind · log p)`. The forward pass is the hard codes' (the loss equals the plain
generator's on the argmax SIDs), while the gradient reaches the MMQ experts and codebooks. The
loss is `L_gen + alpha' L_recon + beta' L_aux` (MMQ's reconstruction terms on the batch's items,
through which the gates train too). Only the items of a batch go through the tokenizer.

The SIDs are re-derived (argmax, collisions re-resolved) at the start of every epoch and before
every validation, which decodes with a trie of the current SIDs. The disambiguation position
keeps a fixed vocabulary of `max(stage-1 largest collision group, K)` tokens, so the model's
vocabulary does not change while collisions do. Schedules, dead-code restarts (token embedding
rows carried to the restarted codes) and the exported tokenizer are as for the ranker
(`ranker/stage2.py`). Item input mode with the all-position objective only (the project's
generator); the model trains from scratch beside the tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import T5ForConditionalGeneration

from mmq_rec.generator.model import GeneratorConfig, SIDCodec, save_generator
from mmq_rec.generator.objective import GeneratorLoss, causal_mask, decode_targets
from mmq_rec.generator.train import GeneratorHooks
from mmq_rec.recdata.errors import DataError
from mmq_rec.tokenizer.api import Tokenization, table_quality
from mmq_rec.tokenizer.base import ItemTokenizer
from mmq_rec.tokenizer.finetune import (
    TOKENIZER_DIR,
    FinetuneConfig,
    carry_rows,
    changed_share,
    check_tokenizer,
    restart_all,
    tokenizer_phase,
)
from mmq_rec.tokenizer.sid import SIDTable, disambiguate, quality


def check_generator(cfg: GeneratorConfig) -> None:
    if cfg.input_mode != "item" or not cfg.all_positions:
        raise ValueError("stage 2 for the generator needs the item input mode with the all-position objective "
                         "(--generator.input_mode item, objective auto or all_positions)")


def stage2_table(item_ids: list[str], codes: np.ndarray, k: int, disambiguation: int) -> SIDTable:
    """SIDs from semantic `codes` (N, L) with collisions resolved by a trailing token whose
    vocabulary is fixed at `disambiguation` (always present, so the model's vocabulary does not
    change as collisions do). A collision group larger than that is an error."""
    full, group = disambiguate(codes)
    if group > disambiguation:
        raise DataError(f"{group} items share one SID after fine-tuning, more than the {disambiguation} "
                        "disambiguation tokens: rerun with a lower finetune.tokenizer_lr (and --overwrite or "
                        "another --output)", field="finetune.tokenizer_lr")
    if full.shape[1] == codes.shape[1]:  # no collision: a constant token
        full = np.concatenate([full, np.zeros((len(full), 1), dtype=np.int64)], axis=1)
    return SIDTable([str(i) for i in item_ids], full, [k] * codes.shape[1] + [disambiguation], codes.shape[1])


class SoftSIDGeneratorLoss(GeneratorLoss):
    """The all-position generator loss with every item read through the tokenizer model's soft indices.
    Owns the T5 model, the tokenizer model and the catalogue's (standardised) features, so `.to(device)`
    moves everything; `item_tokens` holds the current hard SIDs (refreshed by `refresh`)."""

    def __init__(self, t5: T5ForConditionalGeneration, codec: SIDCodec, cfg: GeneratorConfig,
                 tokenizer_model: nn.Module, features: list[torch.Tensor], ft: FinetuneConfig):
        super().__init__(t5, codec.item_tokens, cfg.input_mode, True, False, cfg.item_id_embedding)
        self.tokenizer = tokenizer_model
        self.ft = ft
        self.item_ids = list(codec.table.item_ids)
        self.num_semantic = codec.table.num_semantic
        self.codebook_size = tokenizer_model.codebook_size
        self.disambiguation = codec.table.codebook_sizes[-1]
        for i, x in enumerate(features):
            self.register_buffer(f"feature{i}", x, persistent=False)
        offsets = torch.as_tensor(codec.vocab.offsets[: self.num_semantic])
        # (L_s, K): the token id of every (semantic position, code)
        self.register_buffer("token_ids", offsets[:, None] + torch.arange(self.codebook_size), persistent=False)
        self.tokenizer_frozen = False  # a generator-only epoch reads the hard SIDs

    def features(self, items: torch.Tensor | None = None) -> list[torch.Tensor]:
        xs = [getattr(self, f"feature{i}") for i in range(len(self.tokenizer.names))]
        return xs if items is None else [x[items] for x in xs]

    @torch.no_grad()
    def hard_codes(self) -> torch.Tensor:
        """(N, L_s) every item's current semantic codes."""
        return self.tokenizer.quantize(self.features())[1]

    @torch.no_grad()
    def refresh(self) -> SIDTable:
        """Re-derive the SIDs from the tokenizer (argmax, collisions re-resolved) into `item_tokens`."""
        codes = self.hard_codes().cpu().numpy()
        table = stage2_table(self.item_ids, codes, self.codebook_size, self.disambiguation)
        tokens = SIDCodec(table, "item").item_tokens
        self.item_tokens.copy_(tokens.to(self.item_tokens.device))
        return table

    def forward(self, histories: torch.Tensor, targets: torch.Tensor,
                users: torch.Tensor | None = None) -> torch.Tensor:
        if self.tokenizer_frozen:
            return super().forward(histories, targets)
        seen = histories >= 0
        has_target = targets >= 0
        items = torch.unique(torch.cat([histories[seen], targets[has_target]]))
        feats = self.features(items)
        emb = self.t5.get_input_embeddings().weight
        # the tokenizer in float32 even under bf16 autocast (GPU), so its codes are those `refresh` derives
        with torch.autocast(histories.device.type, enabled=False):
            latents = self.tokenizer.expert_latents(feats)
            ind = self.tokenizer.soft_indices(latents, self.ft.tau)  # (U, L_s, K)
            semantic = torch.einsum("ulk,lkd->uld", ind, emb[self.token_ids].float())  # (U, L_s, d)
        rest = self.item_tokens[items, self.num_semantic:]  # the disambiguation token(s), hard
        tokens = torch.cat([semantic, emb[rest]], dim=1)  # (U, L, d): each item's token embeddings
        where = torch.full((len(self.item_tokens),), -1, dtype=torch.long, device=items.device)
        where[items] = torch.arange(len(items), device=items.device)

        # encoder: one position per history item, the sum of its token embeddings (as `history_inputs`)
        pad = emb[self.item_tokens[-1]].sum(0)
        x = torch.where(seen[..., None], tokens.sum(1)[where[histories.clamp_min(0)]], pad)
        if self.item_embedding is not None:
            last = len(self.item_embedding) - 1
            x = x + nn.functional.embedding(torch.where(seen, histories, last), self.item_embedding, padding_idx=last)
        mask = seen.long()
        hidden = self.t5.get_encoder()(inputs_embeds=x, attention_mask=causal_mask(mask, x.dtype)).last_hidden_state

        # decoder: every target, teacher-forced with its tokens' (soft) embeddings
        row, pos = has_target.nonzero(as_tuple=True)
        u = where[targets[row, pos]]
        codes = ind.detach().argmax(-1)  # ind is exactly 0 off the hard code
        labels = torch.cat([self.token_ids[torch.arange(self.num_semantic, device=u.device), codes[u]], rest[u]], 1)
        logits = decode_targets(self.t5, hidden, mask, row, pos, labels, label_embeds=tokens[u]).float()
        logp = torch.log_softmax(logits, dim=-1)  # (E, L, V)
        sem_lp = logp[:, : self.num_semantic].gather(2, self.token_ids[None].expand(len(u), -1, -1))
        sem = -(ind[u].float() * sem_lp).sum(-1)  # (E, L_s): equals -log p(hard token) in the forward pass
        tail = -logp[:, self.num_semantic:].gather(2, labels[:, self.num_semantic:, None]).squeeze(2)
        loss = torch.cat([sem, tail], dim=1).mean(dim=1).mean()
        if self.ft.alpha or self.ft.beta:
            with torch.autocast(histories.device.type, enabled=False):
                parts = self.tokenizer.losses(feats, latents)
            loss = loss + self.ft.alpha * parts["recon"] + self.ft.beta * parts["aux"]
        return loss


def build_stage2_loss(t5: T5ForConditionalGeneration, codec: SIDCodec, cfg: GeneratorConfig,
                      tokenizer: ItemTokenizer, modalities: dict[str, np.ndarray],
                      ft: FinetuneConfig) -> SoftSIDGeneratorLoss:
    """The stage-2 loss module around a fresh `t5`, over a copy of `tokenizer`'s model (`finetune_model`) reading
    the items' `modalities` (those it was fitted on); `codec` from `stage2_table`'s SIDs."""
    check_tokenizer(tokenizer)
    check_generator(cfg)
    features = tokenizer.finetune_features(modalities)
    return SoftSIDGeneratorLoss(t5, codec, cfg, tokenizer.finetune_model(), features, ft)


def stage2_generator_hooks(cfg: GeneratorConfig, ft: FinetuneConfig, codec: SIDCodec, tokenizer: ItemTokenizer,
                           modalities: dict[str, np.ndarray], base_quality: dict[str, Any],
                           titles: list[str] | None = None, quality_extra: dict[str, Any] | None = None,
                           seed: int = 0) -> tuple[GeneratorHooks, Callable[[], SIDTable | None]]:
    """The training loop's hooks for stage 2, and a function giving the SIDs of the last refresh
    (what validation decodes with). The best model is saved as a generator directory with the
    re-derived SID table and, in its `tokenizer/`, the fine-tuned tokenizer (its quality.json holds
    the quality numbers, `quality_extra`, and under `stage2` the semantic quality before and after
    and the changed SIDs)."""
    base_codes = codec.table.codes[:, : codec.table.num_semantic]
    k = tokenizer.codebook_sizes()[0]
    base_semantic = quality(base_codes, [k] * base_codes.shape[1])
    current: dict[str, Any] = {"table": None, "phase": None, "restarted": 0}

    def build_loss(t5: T5ForConditionalGeneration) -> SoftSIDGeneratorLoss:
        return build_stage2_loss(t5, codec, cfg, tokenizer, modalities, ft)

    def tokenizer_ids(net: SoftSIDGeneratorLoss) -> set[int]:
        return {id(p) for p in net.tokenizer.parameters()}

    def param_groups(net: SoftSIDGeneratorLoss) -> list[dict[str, Any]]:
        tok_ids = tokenizer_ids(net)
        return [{"params": [p for p in net.parameters() if id(p) not in tok_ids]},
                {"params": list(net.tokenizer.parameters()), "lr": ft.tokenizer_lr, "weight_decay": 0.0}]

    def on_epoch_start(net: SoftSIDGeneratorLoss, epoch: int, resumed: bool) -> None:
        # restarts happen once, when the epoch starts (a resumed run's checkpoint has them)
        if epoch > 1 and not resumed and tokenizer_phase(ft, epoch - 1) and ft.restart_dead:
            gen = torch.Generator().manual_seed(seed * 7919 + epoch)
            before = net.hard_codes()
            with torch.no_grad():
                restarted = restart_all(net.tokenizer, net.tokenizer.expert_latents(net.features()), gen)
                current["restarted"] += restarted
                if restarted:
                    # the token rows of restarted codes start from the rows their new items had
                    k_ = net.codebook_size
                    emb = net.t5.get_input_embeddings().weight
                    rows = net.token_ids.reshape(-1)  # positions' blocks of K rows, in order
                    block = emb[rows].clone()
                    carry_rows(block, before, net.hard_codes(), k_)
                    emb[rows] = block
        train_tok = tokenizer_phase(ft, epoch)
        tok_ids = tokenizer_ids(net)
        for p in net.parameters():
            p.requires_grad_(train_tok if id(p) in tok_ids else (ft.schedule == "joint" or not train_tok))
            if not p.requires_grad:
                p.grad = None  # a gradient accumulated before the phase changed must not step a frozen side
        net.tokenizer_frozen = not train_tok
        current["phase"] = "joint" if ft.schedule == "joint" else ("tokenizer" if train_tok else "generator")
        current["table"] = net.refresh()

    def before_validate(net: SoftSIDGeneratorLoss) -> dict[str, Any]:
        table = current["table"] = net.refresh()
        codes = table.codes[:, : table.num_semantic]
        q = quality(codes, [k] * codes.shape[1])
        return {"phase": current["phase"], "restarted_codes": current["restarted"],
                "utilisation": round(float(np.mean(q["utilisation"])), 4), "collision_rate": q["collision_rate"],
                "changed_sids": changed_share(base_codes, codes)["items"]}

    def save_best(path: Path, net: SoftSIDGeneratorLoss, info: dict[str, Any]) -> None:
        table = current["table"]
        out_codec = SIDCodec(table, "item")
        out_codec.item_embedding = net.item_embedding
        codes = table.codes[:, : table.num_semantic]
        natural = SIDTable.from_codes(table.item_ids, codes, [k] * codes.shape[1])  # for new generators
        tok = tokenizer.with_finetuned(net.tokenizer)
        report = {"before": base_semantic, "after": natural.quality(), "changed_sids": changed_share(base_codes, codes)}
        tq = {**base_quality, **table_quality(tok, natural, modalities), **(quality_extra or {}),
              "stage2": {**report, "finetune": vars(ft).copy(), "generator_step": info.get("step")}}

        def write_tokenizer(tmp: Path) -> None:
            Tokenization(tok, natural, tq).save_pretrained(tmp / TOKENIZER_DIR)

        save_generator(path, net.t5, out_codec, cfg, {**info, "tokenizer_dir": str(path / TOKENIZER_DIR),
                                                        "stage1_tokenizer_dir": info.get("tokenizer_dir"),
                                                        "stage2": report}, titles, add_files=write_tokenizer,
                       overwrite=True)

    hooks = GeneratorHooks(build_loss, param_groups, on_epoch_start, before_validate, save_best)
    return hooks, lambda: current["table"]
