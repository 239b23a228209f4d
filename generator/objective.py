"""Training objectives of the generator, as one module that owns the T5 model and its tensors.

- `prefix` (TIGER): one example per (history, next item); the encoder is bidirectional.
- `all_positions` (item input mode; as RPG and SASRec train): one forward pass per user window
  of up to `max_history` items with a *causal* encoder; every position is a target, and the
  decoder for the item after position t cross-attends to encoder positions <= t only. The
  encoder runs once per window instead of once per prefix (in item mode it is most of the
  compute), and a position's loss equals the single-prefix forward of the same causal model
  (tested). A model trained this way carries `causal_encoder = True` in its config, and every
  encoder pass (`encode`) applies the causal mask, at inference too.

`GeneratorLoss` holds the T5 model, the item -> SID-token table as a buffer and, when the model
has one, the per-item input embedding, so `.to(device)` and accelerate's DDP wrapping cover
everything a training step touches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import T5ForConditionalGeneration

from mmq_rec.generator.vocab import PAD

OBJECTIVES = ("auto", "prefix", "all_positions")


def is_causal(model: T5ForConditionalGeneration) -> bool:
    return bool(getattr(model.config, "causal_encoder", False))


def causal_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) key-padding mask -> (B, 1, S, S) additive mask: position i sees valid j <= i.

    The most negative finite value (not -inf) keeps a query row with no valid key (a padding
    position, never a target) finite instead of NaN; its exp underflows to exactly 0 elsewhere."""
    s = mask.shape[1]
    allowed = torch.ones(s, s, dtype=torch.bool, device=mask.device).tril()[None] & mask.bool()[:, None, :]
    out = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def encode(model: T5ForConditionalGeneration, encoder_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The encoder's last hidden state (B, S, d), causal for a model trained on all positions."""
    if not is_causal(model):
        return model.get_encoder()(**encoder_inputs).last_hidden_state
    emb = encoder_inputs.get("inputs_embeds")
    dtype = emb.dtype if emb is not None else model.dtype
    inputs = {**encoder_inputs, "attention_mask": causal_mask(encoder_inputs["attention_mask"], dtype)}
    return model.get_encoder()(**inputs).last_hidden_state


def project(model: T5ForConditionalGeneration, hidden: torch.Tensor) -> torch.Tensor:
    """Decoder hidden states -> vocabulary logits, as T5's forward computes them."""
    if getattr(model.config, "scale_decoder_outputs", getattr(model.config, "tie_word_embeddings", False)):
        hidden = hidden * (model.config.d_model ** -0.5)
    return model.lm_head(hidden)


def _attend(att: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """T5's eager attention (no 1/sqrt(d) unless the module sets it), heads merged back: (E, L, H*d)."""
    w = torch.softmax(q @ k.transpose(2, 3) * att.scaling + bias, dim=-1)
    w = nn.functional.dropout(w, p=att.dropout, training=att.training)
    return (w @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def decode_targets(model: T5ForConditionalGeneration, hidden: torch.Tensor, mask: torch.Tensor,
                   row: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor,
                   label_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced decoder logits (E, L, V) of targets e = (window row[e], position pos[e]) with
    SID tokens `labels` (E, L): the decoder for target e reads the encoder states `hidden` (B, S, d)
    of its window at valid (`mask`, (B, S)) positions <= pos[e].

    The same computation as `model(encoder_outputs=(hidden[row],), attention_mask=visible,
    labels=labels).logits`, dropout included (tested equal), with the model's own modules; but the
    cross-attention keys and values are projected once per window and shared by the window's
    targets, instead of once per target (with ~6 targets per window that projection was most of
    the decoder's cost). `label_embeds` (E, L, d): the label tokens' input embeddings when they
    are not the embedding table's rows (MMQ stage 2 reads them through soft indices)."""
    dec = model.decoder
    heads, d_kv = model.config.num_heads, model.config.d_kv
    e, length = labels.shape
    b, s = hidden.shape[:2]
    if label_embeds is None:
        x = dec.embed_tokens(model._shift_right(labels))
    else:  # shifted right as `_shift_right` does: the start token, then every label but the last
        start = dec.embed_tokens(labels.new_full((e, 1), model.config.decoder_start_token_id))
        x = torch.cat([start, label_embeds[:, :-1]], dim=1)
    x = dec.dropout(x)
    neg = torch.finfo(x.dtype).min
    visible = (torch.arange(s, device=hidden.device)[None] <= pos[:, None]) & mask[row].bool()
    cross_bias = torch.zeros(e, 1, 1, s, dtype=x.dtype, device=x.device).masked_fill_(~visible[:, None, None], neg)
    causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
    self_bias = dec.block[0].layer[0].SelfAttention.compute_bias(length, length, device=x.device)
    self_bias = self_bias.to(x.dtype).masked_fill(~causal, neg)  # (1, H, L, L)
    for block in dec.block:
        sa, ca, ff = block.layer
        hs = sa.layer_norm(x)
        q, k, v = (lin(hs).view(e, length, heads, d_kv).transpose(1, 2)
                   for lin in (sa.SelfAttention.q, sa.SelfAttention.k, sa.SelfAttention.v))
        x = x + sa.dropout(sa.SelfAttention.o(_attend(sa.SelfAttention, q, k, v, self_bias)))
        att = ca.EncDecAttention
        q = att.q(ca.layer_norm(x)).view(e, length, heads, d_kv).transpose(1, 2)
        k = att.k(hidden).view(b, s, heads, d_kv).transpose(1, 2)[row]  # projected per window, read per target
        v = att.v(hidden).view(b, s, heads, d_kv).transpose(1, 2)[row]
        x = x + ca.dropout(att.o(_attend(att, q, k, v, cross_bias)))
        x = x + ff.dropout(ff.DenseReluDense(ff.layer_norm(x)))
    return project(model, dec.dropout(dec.final_layer_norm(x)))


def history_inputs(model: T5ForConditionalGeneration, item_tokens: torch.Tensor, histories: torch.Tensor,
                   users: torch.Tensor | None, input_mode: str,
                   item_embedding: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """T5 encoder kwargs for item-row histories (B, H), -1 = padding (`item_tokens` on the same
    device; its last row is the padding item). `users` (B,): hashed user-token ids read first, or
    None. flat: the SID tokens flattened; item: one position per item, the sum of its token
    embeddings, plus its row of `item_embedding` (num_items + 1, d) when the model has one."""
    tok = item_tokens[histories]  # (B, H, L)
    if input_mode == "flat":
        ids = tok.flatten(1)
        if users is not None:
            ids = torch.cat([users[:, None], ids], dim=1)
        return {"input_ids": ids, "attention_mask": (ids != PAD).long()}
    embed = model.get_input_embeddings()
    emb, mask = embed(tok).sum(dim=2), (histories >= 0).long()
    if item_embedding is not None:
        pad = item_embedding.shape[0] - 1
        emb = emb + nn.functional.embedding(torch.where(histories < 0, pad, histories), item_embedding,
                                            padding_idx=pad).to(emb.dtype)  # bf16 decoding: the model's dtype
    if users is not None:
        emb = torch.cat([embed(users[:, None]), emb], dim=1)
        mask = torch.cat([torch.ones_like(users[:, None]), mask], dim=1)
    return {"inputs_embeds": emb, "attention_mask": mask}


def all_position_windows(train_sequences: Sequence[np.ndarray], max_history: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user training sequences -> (inputs (N, W), targets (N, W), user (N,)), right-aligned
    and -1 padded, W = max_history. targets[n, t] is the item after inputs[n, t]; every training
    target appears in exactly one window. A sequence longer than W + 1 becomes overlapping
    windows W // 2 apart, ending at its last item; each keeps the targets of its last W // 2
    positions (the earliest window keeps all of its own), so every target sees at least
    W - W // 2 items of history, or all it has."""
    w = max_history
    stride = max(1, w // 2)
    rows_in, rows_tg, users = [], [], []
    for u, seq in enumerate(train_sequences):
        seq = np.asarray(seq, dtype=np.int64)
        end = len(seq) - 1  # index of the window's last target; targets are seq[1:]
        while end >= 1:
            start = max(0, end - w)  # inputs seq[start:end], targets seq[start + 1:end + 1]
            tg = seq[start + 1:end + 1].copy()
            if start > 0:  # a later window starts here: keep only this window's last `stride` targets
                tg[: len(tg) - stride] = -1
            rows_in.append(seq[start:end])
            rows_tg.append(tg)
            users.append(u)
            end = end - stride if start > 0 else 0
    inputs = np.full((len(rows_in), w), -1, dtype=np.int64)
    targets = np.full((len(rows_in), w), -1, dtype=np.int64)
    for r, (a, b) in enumerate(zip(rows_in, rows_tg, strict=True)):
        inputs[r, w - len(a):] = a
        targets[r, w - len(b):] = b
    return inputs, targets, np.asarray(users, dtype=np.int64)


class GeneratorLoss(nn.Module):
    """Mean next-item SID cross-entropy of a batch, under either objective.

    `item_tokens` (num_items + 1, L): each item's SID tokens, the last row the padding item (index
    -1 wraps to it); `user_offset` > 0 when the encoder reads a hashed user token first."""

    def __init__(self, t5: T5ForConditionalGeneration, item_tokens: torch.Tensor, input_mode: str,
                 all_positions: bool, uses_users: bool, item_embedding: bool = False):
        super().__init__()
        self.t5 = t5
        self.register_buffer("item_tokens", item_tokens.clone(), persistent=False)
        # zero-initialised: an item in no training history keeps a zero row (its SID tokens alone)
        self.item_embedding = (nn.Parameter(torch.zeros(len(item_tokens), t5.config.d_model))
                               if item_embedding else None)
        self.input_mode = input_mode
        self.all_positions = all_positions
        self.uses_users = uses_users

    def encoder_inputs(self, histories: torch.Tensor, users: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return history_inputs(self.t5, self.item_tokens, histories, users if self.uses_users else None,
                              self.input_mode, self.item_embedding)

    def forward(self, histories: torch.Tensor, targets: torch.Tensor,
                users: torch.Tensor | None = None) -> torch.Tensor:
        """prefix: histories (B, H), targets (B,). all_positions: histories (B, W) windows,
        targets (B, W) with -1 where a position has no target (no user tokens: see GeneratorConfig)."""
        inputs = self.encoder_inputs(histories, users)
        if not self.all_positions:
            return self.t5(**inputs, labels=self.item_tokens[targets]).loss
        return self.position_losses(inputs, targets).mean()

    def position_losses(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Loss of every (window, position) with a target, in row-major order (E,)."""
        mask = inputs["attention_mask"]
        hidden = self.t5.get_encoder()(inputs_embeds=inputs["inputs_embeds"],
                                       attention_mask=causal_mask(mask, inputs["inputs_embeds"].dtype)
                                       ).last_hidden_state
        row, pos = (targets >= 0).nonzero(as_tuple=True)
        labels = self.item_tokens[targets[row, pos]]
        # the decoder for the item after position t sees encoder positions <= t
        logits = decode_targets(self.t5, hidden, mask, row, pos, labels).float()
        per_token = nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return per_token.mean(dim=1)
