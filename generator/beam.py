"""Constrained beam search over the prefix trie, batched, on the model's KV cache.

Where it saves work over `generate(..., prefix_allowed_tokens_fn=...)`:
- the first decoder step runs once per user, not once per beam (all beams are identical then);
- cross-attention keys/values are computed once per user and shared by its beams through a
  batched matmul, never copied per beam (`T5StepDecoder`);
- masking is a tensor gather over the trie's CSR arrays, not a Python callback per beam;
- only the current SID position's slice of the log-probabilities enters the top-k;
- reordering beams moves no cache memory: beams attend to their ancestors' rows in a per-user
  key/value pool through a mask, and only a small table of ancestor rows is reordered.
Scores are sums of log-softmax over the full vocabulary, exactly what the model assigns (and what
HF beam search with `length_penalty=0` reports). Beams that run out of valid continuations are
dropped, never filled with invented items: every returned item exists; missing slots are -1.

Everything stays on the model's device: the trie's arrays are moved there once, and the loop
reads nothing back to the host (no `.cpu()`, `.item()` or data-dependent shape), so on a GPU
the steps are queued without a sync; the caller moves the final items and scores to the host."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import T5ForConditionalGeneration

from mmq_rec.generator.objective import encode, project
from mmq_rec.generator.trie import PrefixTrie
from mmq_rec.generator.vocab import SIDVocab


class T5StepDecoder:
    """Incremental T5 decoding for beam search, computed with the model's own modules.

    Cross-attention keys/values are computed once per *user* and never copied per beam: a user's
    beams attend to them through a batched matmul. The self-attention cache is never reordered
    either: each user has one pool of key/value rows, one row per (step, beam) decoded so far, and
    every beam attends to its own ancestors in that pool through an additive mask. Beam
    reordering only updates a small table of ancestor rows, so no cache memory moves between
    steps."""

    def __init__(self, model: T5ForConditionalGeneration, enc: torch.Tensor, enc_mask: torch.Tensor,
                 width: int, length: int):
        self.dec = model.decoder
        self.model = model
        b = enc.shape[0]
        self.b, self.heads, self.d_kv = b, model.config.num_heads, model.config.d_kv
        self.cross = []
        for block in self.dec.block:
            att = block.layer[1].EncDecAttention
            k = att.k(enc).view(b, -1, self.heads, self.d_kv).transpose(1, 2)
            v = att.v(enc).view(b, -1, self.heads, self.d_kv).transpose(1, 2)
            self.cross.append((k, v))
        neg = torch.finfo(enc.dtype).min
        self.cross_bias = ((1.0 - enc_mask.to(enc.dtype)) * neg)[:, None, None, :]  # (B, 1, 1, S)
        cap = 1 + width * max(length - 1, 0)  # pool rows per user: step 0 has one row, later steps `width`
        shape = (b, self.heads, cap, self.d_kv)
        self.pool = [(enc.new_empty(shape), enc.new_empty(shape)) for _ in self.dec.block]
        self.col_step = torch.empty(cap, dtype=torch.long, device=enc.device)  # decode step of each pool row
        self.anc = torch.empty(b, 1, 0, dtype=torch.long, device=enc.device)  # (B, rows, t): ancestors' pool rows
        self.used = 0
        self.t = 0

    def reorder(self, parent: torch.Tensor) -> None:
        """parent (B, w): for each new beam, the user-local row of the last step it extends."""
        b, r = self.anc.shape[:2]
        own = torch.arange(self.used - r, self.used, device=parent.device).expand(b, r)
        lineage = torch.cat([self.anc, own.unsqueeze(2)], dim=2)  # (B, r, t): each row's ancestors and itself
        self.anc = lineage.gather(1, parent.unsqueeze(2).expand(-1, -1, lineage.shape[2]))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B x r,), r rows per user in the order of the last `reorder` -> log-softmax over
        the vocabulary (B x r, V)."""
        b, h, d = self.b, self.heads, self.d_kv
        m = tokens.shape[0]
        r = m // b
        lo, hi = self.used, self.used + r
        self.col_step[lo:hi] = self.t
        # additive self-attention bias (B, H, r, hi): T5's relative position bias on the pool rows
        # that are this row's ancestors or itself, -inf on every other row
        rel = self.dec.block[0].layer[0].SelfAttention.compute_bias(1, self.t + 1, device=tokens.device,
                                                                     past_seen_tokens=self.t)[0, :, 0]  # (H, t+1)
        rel = rel[:, self.col_step[:hi]]  # (H, hi)
        cols = torch.cat([self.anc, torch.arange(lo, hi, device=tokens.device).expand(b, r).unsqueeze(2)], dim=2)
        seen = torch.zeros(b, r, hi, dtype=torch.bool, device=tokens.device).scatter_(2, cols, True)
        neg = torch.finfo(rel.dtype).min
        self_bias = torch.where(seen.unsqueeze(1), rel[None, :, None, :], neg)

        x = self.dec.embed_tokens(tokens)[:, None, :]
        for i, block in enumerate(self.dec.block):
            sa = block.layer[0]
            att = sa.SelfAttention
            hs = sa.layer_norm(x)
            pk, pv = self.pool[i]
            q = att.q(hs).view(b, r, h, d).transpose(1, 2)  # (B, H, r, d)
            pk[:, :, lo:hi] = att.k(hs).view(b, r, h, d).transpose(1, 2)
            pv[:, :, lo:hi] = att.v(hs).view(b, r, h, d).transpose(1, 2)
            w = torch.softmax(q @ pk[:, :, :hi].transpose(2, 3) * att.scaling + self_bias, dim=-1)
            x = x + att.o((w @ pv[:, :, :hi]).transpose(1, 2).reshape(m, 1, h * d))

            ca = block.layer[1]
            att = ca.EncDecAttention
            q = att.q(ca.layer_norm(x)).view(b, r, h, d).transpose(1, 2)  # (B, H, r, d)
            ck, cv = self.cross[i]
            w = torch.softmax(q @ ck.transpose(2, 3) * att.scaling + self.cross_bias, dim=-1)
            x = x + att.o((w @ cv).transpose(1, 2).reshape(m, 1, h * d))

            ff = block.layer[2]
            x = x + ff.DenseReluDense(ff.layer_norm(x))
        self.used = hi
        self.t += 1
        hidden = self.dec.final_layer_norm(x)[:, -1]
        return F.log_softmax(project(self.model, hidden).float(), dim=-1)


@torch.no_grad()
def constrained_beam_search(model: T5ForConditionalGeneration, encoder_inputs: dict[str, torch.Tensor],
                            trie: PrefixTrie, vocab: SIDVocab, beam_width: int = 20, top_k: int = 10
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`top_k` items per user: (items (B, top_k) long, -1 where fewer exist; scores (B, top_k)
    float32, -inf there), both on the model's device. The beam is widened to `top_k` if narrower.
    A trie on another device is moved to the model's (once: it stays there)."""
    w = max(beam_width, top_k)
    dev = model.device
    if trie.device != dev:
        trie.to(dev)
    enc = encode(model, encoder_inputs)
    b = enc.shape[0]
    decoder = T5StepDecoder(model, enc, encoder_inputs["attention_mask"], w, trie.length)
    start = torch.full((b,), model.config.decoder_start_token_id, dtype=torch.long, device=dev)

    # level 0: one row per user (all beams are identical before the first token)
    lo, hi = vocab.slice(0)
    lp = decoder.step(start)[:, lo:hi]
    lp = lp.masked_fill(~trie.allowed(0, torch.zeros(b, dtype=torch.long, device=dev)), float("-inf"))
    k0 = min(w, lp.shape[1])
    scores, codes = lp.topk(k0, dim=1)
    if k0 < w:  # pad with dead beams
        scores = torch.cat([scores, scores.new_full((b, w - k0), float("-inf"))], dim=1)
        codes = torch.cat([codes, codes.new_zeros((b, w - k0))], dim=1)
    decoder.reorder(torch.zeros(b, w, dtype=torch.long, device=dev))
    scores, last = scores.reshape(-1), codes.reshape(-1)
    alive = torch.isfinite(scores)
    nodes = torch.where(alive, trie.step(0, torch.zeros(b * w, dtype=torch.long, device=dev), last), 0)

    for level in range(1, trie.length):
        prev_lo, _ = vocab.slice(level - 1)
        lo, hi = vocab.slice(level)
        lp = decoder.step(last + prev_lo)[:, lo:hi]
        lp = lp.masked_fill(~trie.allowed(level, nodes), float("-inf"))
        k = lp.shape[1]
        cand = (scores.unsqueeze(1) + lp).view(b, w * k)
        scores, idx = cand.topk(min(w, w * k), dim=1)
        if scores.shape[1] < w:
            pad = w - scores.shape[1]
            scores = torch.cat([scores, scores.new_full((b, pad), float("-inf"))], dim=1)
            idx = torch.cat([idx, idx.new_zeros((b, pad))], dim=1)
        local = idx // k  # beams never leave their user
        parent = (local + torch.arange(b, device=dev).unsqueeze(1) * w).reshape(-1)
        last = (idx % k).reshape(-1)
        scores = scores.reshape(-1)
        if level + 1 < trie.length:
            decoder.reorder(local)
        alive = torch.isfinite(scores)
        prev = torch.where(alive, nodes[parent], 0)
        # dead beams sit on node 0 of the next level with score -inf; they stay dead
        nodes = torch.where(alive, trie.step(level, prev, torch.where(alive, last, 0)), 0)

    items = torch.where(alive, trie.items(nodes), -1).view(b, w)
    scores = scores.view(b, w)
    if top_k <= w:
        return items[:, :top_k], scores[:, :top_k]
    return items, scores


def prefix_allowed_tokens(table_codes, vocab: SIDVocab, decoder_start: int):
    """The fair HF baseline's callback: a dictionary lookup of precomputed valid next tokens per
    prefix (prefixes as tuples of token ids after the decoder start token)."""
    tokens = vocab.to_tokens(table_codes)
    allowed: dict[tuple[int, ...], set[int]] = {}
    for row in tokens.tolist():
        for p in range(len(row)):
            allowed.setdefault(tuple(row[:p]), set()).add(row[p])
    allowed_lists = {k: sorted(v) for k, v in allowed.items()}

    def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return allowed_lists.get(tuple(input_ids.tolist()[1:]), [])

    return fn
