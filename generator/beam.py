"""Constrained beam search over the prefix trie, batched, on the model's KV cache.

Where it saves work over `generate(..., prefix_allowed_tokens_fn=...)`:
- the first decoder step runs once per user, not once per beam (all beams are identical then),
  so cross-attention keys/values are computed once per user and the cache is then expanded;
- masking is a tensor gather over the trie's CSR arrays, not a Python callback per beam;
- only the current SID position's slice of the log-probabilities enters the top-k;
- beams never leave their user, so reordering touches only the self-attention cache.
Scores are sums of log-softmax over the full vocabulary, exactly what the model assigns (and what
HF beam search with `length_penalty=0` reports). Beams that run out of valid continuations are
dropped, never filled with invented items: every returned item exists; missing slots are -1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache, EncoderDecoderCache, T5ForConditionalGeneration

from generator.trie import PrefixTrie
from generator.vocab import SIDVocab


def project(model: T5ForConditionalGeneration, hidden: torch.Tensor) -> torch.Tensor:
    """Decoder hidden states -> vocabulary logits, as T5's forward computes them."""
    if getattr(model.config, "scale_decoder_outputs", getattr(model.config, "tie_word_embeddings", False)):
        hidden = hidden * (model.config.d_model ** -0.5)
    return model.lm_head(hidden)


@torch.no_grad()
def constrained_beam_search(model: T5ForConditionalGeneration, encoder_inputs: dict[str, torch.Tensor],
                            trie: PrefixTrie, vocab: SIDVocab, beam_width: int = 20, top_k: int = 10
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`top_k` items per user: (items (B, top_k) long, -1 where fewer exist; scores (B, top_k),
    -inf there). The beam is widened to `top_k` if narrower."""
    w = max(beam_width, top_k)
    dev = model.device
    enc = model.get_encoder()(**encoder_inputs).last_hidden_state
    mask = encoder_inputs["attention_mask"]
    b = enc.shape[0]
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    start = torch.full((b, 1), model.config.decoder_start_token_id, dtype=torch.long, device=dev)

    def step(tokens: torch.Tensor, enc_h: torch.Tensor, enc_mask: torch.Tensor, level: int) -> torch.Tensor:
        out = model.decoder(input_ids=tokens, encoder_hidden_states=enc_h, encoder_attention_mask=enc_mask,
                            past_key_values=cache, use_cache=True)
        logp = F.log_softmax(project(model, out.last_hidden_state[:, -1]).float(), dim=-1)
        lo, hi = vocab.slice(level)
        return logp[:, lo:hi]

    # level 0: one row per user
    nodes = torch.zeros(b, dtype=torch.long)
    lp = step(start, enc, mask, 0)
    lp = lp.masked_fill(~trie.allowed(0, nodes).to(dev), float("-inf"))
    k0 = min(w, lp.shape[1])
    scores, codes = lp.topk(k0, dim=1)
    if k0 < w:  # pad with dead beams
        scores = torch.cat([scores, scores.new_full((b, w - k0), float("-inf"))], dim=1)
        codes = torch.cat([codes, codes.new_zeros((b, w - k0))], dim=1)
    beam_rows = torch.arange(b, device=dev).repeat_interleave(w)
    cache.reorder_cache(beam_rows)
    enc, mask = enc[beam_rows], mask[beam_rows]
    scores, codes = scores.reshape(-1), codes.reshape(-1)
    alive = torch.isfinite(scores).cpu()
    nodes = torch.where(alive, trie.step(0, torch.zeros(b * w, dtype=torch.long), codes.cpu()), 0)
    last = codes

    for level in range(1, trie.length):
        lo, _ = vocab.slice(level - 1)
        lp = step((last + lo).unsqueeze(1), enc, mask, level)
        lp = lp.masked_fill(~trie.allowed(level, nodes).to(dev), float("-inf"))
        k = lp.shape[1]
        cand = (scores.unsqueeze(1) + lp).view(b, w * k)
        scores, idx = cand.topk(min(w, w * k), dim=1)
        if scores.shape[1] < w:
            pad = w - scores.shape[1]
            scores = torch.cat([scores, scores.new_full((b, pad), float("-inf"))], dim=1)
            idx = torch.cat([idx, idx.new_zeros((b, pad))], dim=1)
        parent = (idx // k + torch.arange(b, device=dev).unsqueeze(1) * w).reshape(-1)
        last = (idx % k).reshape(-1)
        scores = scores.reshape(-1)
        # a user's beams share cross-attention keys/values: only the self-attention cache moves
        cache.self_attention_cache.reorder_cache(parent)
        alive = torch.isfinite(scores).cpu()
        prev = nodes[parent.cpu()]
        nodes = torch.where(alive, trie.step(level, torch.where(alive, prev, 0), torch.where(alive, last.cpu(), 0)), 0)
        if level < trie.length - 1:
            # dead beams sit on node 0 of the next level with score -inf; they stay dead
            nodes = torch.where(alive, nodes, 0)

    items = torch.where(alive, trie.items(nodes), -1).view(b, w)
    scores = scores.view(b, w).cpu()
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
