"""A prefix trie over the SID table, stored as sorted arrays so that decoding can mask and step
whole batches of beams with tensor operations (no per-beam Python).

Items are sorted lexicographically by SID. At level p every distinct prefix of length p is a
node, numbered in sorted order. Level p stores, for each node, its children as a CSR slice of
`tokens[p]` (codes in increasing order), and `keys[p] = node * K_p + code` (globally sorted), whose
position is the child's node id at level p + 1. Leaf ids at level L are ranks in the sorted
order, and `leaf_item` maps them back to item rows. Memory is O(N · L).

The arrays are torch tensors; `to(device)` moves them once to the model's device, and `allowed`,
`step` and `items` are fixed-shape tensor operations (no data-dependent sizes), so decoding on a
GPU steps the trie without a host sync."""

from __future__ import annotations

import numpy as np
import torch


class PrefixTrie:
    def __init__(self, codes: np.ndarray, codebook_sizes: list[int]):
        codes = np.asarray(codes, dtype=np.int64)
        n, length = codes.shape
        if n == 0:
            raise ValueError("cannot build a trie over an empty SID table")
        order = np.lexsort(codes.T[::-1])
        sc = codes[order]
        if n > 1 and not (np.diff(sc, axis=0) != 0).any(axis=1).all():
            raise ValueError("SIDs are not unique; disambiguate them first")
        self.length = length
        self.codebook_sizes = [int(k) for k in codebook_sizes]
        self.leaf_item = torch.from_numpy(order)
        self.ptr: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        # most children of any node per level: `allowed` gathers that many candidates per node, a
        # shape known here on the host, so the mask is built without reading counts back
        self.fanout: list[int] = []
        node = np.zeros(n, dtype=np.int64)  # node id of each sorted item at the current level
        for p in range(length):
            k = self.codebook_sizes[p]
            key = node * k + sc[:, p]
            new = np.r_[True, key[1:] != key[:-1]]
            ukeys = key[new]
            parent = ukeys // k
            num_nodes = int(node.max()) + 1
            ptr = np.searchsorted(parent, np.arange(num_nodes + 1))
            self.fanout.append(int(np.diff(ptr).max()))
            self.ptr.append(torch.from_numpy(ptr))
            self.tokens.append(torch.from_numpy(ukeys % k))
            self.keys.append(torch.from_numpy(ukeys))
            node = np.cumsum(new) - 1

    @property
    def device(self) -> torch.device:
        return self.leaf_item.device

    def to(self, device: str | torch.device) -> PrefixTrie:
        """Move every array to `device` (in place, once; a no-op where they already are)."""
        self.leaf_item = self.leaf_item.to(device)
        for arrays in (self.ptr, self.tokens, self.keys):
            arrays[:] = [a.to(device) for a in arrays]
        return self

    def allowed(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """(M,) node ids at `level` -> (M, K_level) bool mask of valid next codes (on the trie's device)."""
        ptr, toks, k = self.ptr[level], self.tokens[level], self.codebook_sizes[level]
        starts = ptr[nodes]
        counts = ptr[nodes + 1] - starts
        j = torch.arange(self.fanout[level], device=nodes.device)
        has = j < counts[:, None]  # (M, fanout): the node's j-th child exists
        cols = toks[(starts[:, None] + j).clamp_max(len(toks) - 1)]
        cols = torch.where(has, cols, k)  # missing children mark a spare column k, dropped below
        mask = torch.zeros(len(nodes), k + 1, dtype=torch.bool, device=nodes.device)
        return mask.scatter_(1, cols, True)[:, :k]

    def step(self, level: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Child node ids at level + 1 (for level L-1: leaf ranks). Pairs must be valid."""
        return torch.searchsorted(self.keys[level], nodes * self.codebook_sizes[level] + codes)

    def items(self, leaves: torch.Tensor) -> torch.Tensor:
        return self.leaf_item[leaves]

