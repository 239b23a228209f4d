"""One quantizer interface: a codebook matched by cosine similarity (MMQ) or L2 distance.

Forward returns the straight-through quantized vector, the codes and the VQ loss
(codebook term ||sg(z) - e||² + `commitment` · ||z - sg(e)||²). `soft_index` gives MMQ's stage-2
soft one-hot (`soft + sg(hard - soft)`): exactly discrete forward, gradients through `soft`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DISTANCES = ("cosine", "l2")


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int, distance: str = "cosine", commitment: float = 0.25):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.size, self.dim, self.distance, self.commitment = size, dim, distance, commitment
        self.weight = nn.Parameter(torch.randn(size, dim) / dim**0.5)

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        """The space codes live in: unit vectors for cosine matching, raw vectors for L2."""
        return F.normalize(z, dim=-1) if self.distance == "cosine" else z

    def codewords(self) -> torch.Tensor:
        return self.prepare(self.weight)

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K) similarity: cosine, or negative squared L2 distance. Higher is closer."""
        w = self.codewords()
        zp = self.prepare(z)
        if self.distance == "cosine":
            return zp @ w.T
        return -(zp.pow(2).sum(-1, keepdim=True) - 2 * zp @ w.T + w.pow(2).sum(-1))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, d) -> (z_q (B, d) straight-through, codes (B,) long, vq loss scalar)."""
        zp = self.prepare(z)
        codes = self.scores(z).argmax(dim=-1)
        e = self.codewords()[codes]
        loss = F.mse_loss(e, zp.detach()) + self.commitment * F.mse_loss(zp, e.detach())
        return zp + (e - zp).detach(), codes, loss

    def soft_index(self, z: torch.Tensor, tau: float, scale: float = 1.0) -> torch.Tensor:
        """(B, K) one-hot in the forward pass whose gradient is that of softmax(scale * scores / tau)."""
        scores = self.scores(z)
        soft = torch.softmax(scale * scores / tau, dim=-1)
        hard = F.one_hot(scores.argmax(dim=-1), self.size).to(soft.dtype)  # the codes `forward` gives
        return soft + (hard - soft).detach()

    @torch.no_grad()
    def init_from(self, centroids: np.ndarray) -> None:
        """Set the codewords from host centroids (copied onto the codebook's device)."""
        self.weight.copy_(torch.from_numpy(np.asarray(centroids, dtype=np.float32)))

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> int:
        """Move codewords used by no item onto randomly chosen current inputs (plus a little noise).
        `z` and `counts` live on the codebook's device; `generator` is a CPU generator: the picks
        and the noise are drawn on the CPU whatever the device (a CPU run stays bit-identical, and
        a GPU run draws the same numbers) and then moved there."""
        dead = torch.nonzero(counts == 0).flatten()
        if len(dead) == 0 or len(z) == 0:
            return 0
        pick = torch.randint(0, len(z), (len(dead),), generator=generator).to(z.device)
        zp = self.prepare(z[pick])
        noise = torch.randn(zp.shape, generator=generator).to(zp.device) * 0.01 * \
            zp.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        self.weight[dead] = zp + noise
        return len(dead)


class ResidualQuantizer(nn.Module):
    """`depth` codebooks applied to successive residuals; the first uses `distance`, deeper levels
    match residuals by L2 (a residual's length matters, so cosine matching would discard it)."""

    def __init__(self, size: int, dim: int, depth: int = 1, distance: str = "cosine", commitment: float = 0.25):
        super().__init__()
        self.levels = nn.ModuleList(
            Codebook(size, dim, distance if d == 0 else "l2", commitment) for d in range(depth))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, d) -> (z_q (B, d) straight-through, codes (B, depth) long, vq loss)."""
        target = self.levels[0].prepare(z)  # what the sum of codewords approximates
        residual, quantized = target, torch.zeros_like(target)
        codes, loss = [], target.new_zeros(())
        for level in self.levels:
            _, c, level_loss = level(residual)
            e = level.codewords()[c]
            quantized = quantized + e
            residual = residual - e.detach()
            codes.append(c)
            loss = loss + level_loss
        return target + (quantized - target).detach(), torch.stack(codes, dim=1), loss

    def soft_index(self, z: torch.Tensor, tau: float, scale: float = 1.0) -> torch.Tensor:
        """(B, depth, K) soft one-hots, level by level: each level's on the residual its hard
        codewords leave (the forward pass is the hard codes' exactly; gradients flow through the
        softmax of every level into `z` and the codewords). `scale` multiplies the scores."""
        residual = self.levels[0].prepare(z)
        out = []
        for level in self.levels:
            ind = level.soft_index(residual, tau, scale)
            out.append(ind)
            residual = residual - ind @ level.codewords()
        return torch.stack(out, dim=1)
