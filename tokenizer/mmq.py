"""MMQ stage 1: the shared-specific mixture-of-quantization tokenizer (see ../shared/docs/MMQ.md).

- Ns shared experts read the concatenation of all (standardised) modality embeddings; Nm
  specific experts per modality read only that modality; each modality's specific experts are
  mixed by a softmax gate computed from that modality (an MLP with bias).
- Every expert owns a codebook of K codewords (cosine matching by default, L2 as an ablation),
  optionally residual with `depth` levels; the straight-through estimator carries gradients.
- SID = shared experts' tokens, then each modality's experts' tokens (the trie's order), or the
  groups in the order `token_order` names.
- Loss = α·MSE(decoder(gated sum of quantized outputs), concat input)
       + β·Σ_m MSE(aux_decoder_m(shared + modality m's gated quantized outputs), input_m)
       + γ·Σ_groups ||V Vᵀ − I||²_F   (V: each expert's flattened, L2-normalised weights)
       + Σ VQ codebook/commitment terms.
- Codebooks start from k-means (faiss) on the initial expert outputs; codewords no item uses are
  restarted on random expert outputs after every epoch."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmq_rec.tokenizer.base import ItemTokenizer, Modalities
from mmq_rec.tokenizer.kmeans import kmeans
from mmq_rec.tokenizer.quantizer import DISTANCES, ResidualQuantizer
from mmq_rec.tokenizer.training import train_model


@dataclass
class MMQConfig:
    num_shared_experts: int = 2
    """Ns: experts over the concatenated modalities (paper: 2)."""
    num_specific_experts: int = 2
    """Nm: experts per modality (paper: 2)."""
    codebook_size: int = 256
    """K codewords per expert codebook (chosen on Beauty in benchmarks/tokenizer.md)."""
    depth: int = 1
    """Residual levels inside each expert (tokens per expert)."""
    distance: str = "cosine"
    """Codeword matching: cosine (MMQ) or l2 (ablation)."""
    latent_dim: int = 32
    hidden_dim: int = 256
    gate_hidden_dim: int = 64
    alpha: float = 12.0
    """Weight of the multimodal reconstruction loss."""
    beta: float = 10.0
    """Weight of the per-modality auxiliary reconstruction loss."""
    gamma: float = 0.005
    """Weight of the orthogonal regularisation within each expert group."""
    vq_weight: float = 1.0
    """Weight of the codebook + commitment terms."""
    commitment: float = 0.25
    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    kmeans_init: bool = True
    dead_code_restart: bool = True
    token_order: list[str] = field(default_factory=list)
    """SID order of the expert groups, "shared" and the modality names (each group's experts keep
    their order), e.g. [collaborative, shared, attributes, text]; empty: shared, then the
    modalities in input order. The first tokens are the ones the generator decodes first."""
    seed: int = 0

    def __post_init__(self) -> None:
        # Errors read "<field>: <reason>"; mmq.config reports them under the full dotted key.
        for name in ("codebook_size", "depth", "latent_dim", "hidden_dim", "gate_hidden_dim", "epochs", "batch_size"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name}: must be >= 1 (got {getattr(self, name)!r})")
        for name in ("num_shared_experts", "num_specific_experts", "alpha", "beta", "gamma", "vq_weight",
                     "commitment", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0 (got {getattr(self, name)!r})")
        if self.num_shared_experts + self.num_specific_experts == 0:
            raise ValueError("num_shared_experts: MMQ needs at least one shared or specific expert (both are 0)")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance: must be one of {', '.join(DISTANCES)} (got {self.distance!r})")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0 (got {self.lr!r})")
        if len(set(self.token_order)) != len(self.token_order):
            raise ValueError(f"token_order: names must not repeat (got {self.token_order!r})")

    def groups(self, modalities: list[str]) -> list[str]:
        """The expert groups present with these modalities, in the default SID order."""
        return (["shared"] if self.num_shared_experts else []) + (list(modalities) if self.num_specific_experts else [])

    def check_token_order(self, modalities: list[str]) -> None:
        groups = self.groups(modalities)
        if self.token_order and sorted(self.token_order) != sorted(groups):
            raise ValueError(f"token_order: must list each of {groups} once (got {self.token_order!r})")


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))


def orthogonal_loss(experts: nn.ModuleList) -> torch.Tensor:
    """||V Vᵀ − I||²_F with V = each expert's weight matrices flattened and L2-normalised (0 for < 2 experts)."""
    if len(experts) < 2:
        return torch.zeros(())
    v = torch.stack([torch.cat([p.flatten() for n, p in e.named_parameters() if p.dim() > 1]) for e in experts])
    v = F.normalize(v, dim=-1)
    gram = v @ v.T
    return (gram - torch.eye(len(experts), device=v.device)).pow(2).sum()


class MMQModel(nn.Module):
    def __init__(self, dims: dict[str, int], cfg: MMQConfig):
        super().__init__()
        if cfg.num_shared_experts < 0 or cfg.num_specific_experts < 0 or \
                cfg.num_shared_experts + cfg.num_specific_experts == 0:
            raise ValueError("MMQ needs at least one shared or specific expert")
        self.names = list(dims)
        self.cfg = cfg
        concat, h, z = sum(dims.values()), cfg.hidden_dim, cfg.latent_dim
        self.shared = nn.ModuleList(mlp(concat, h, z) for _ in range(cfg.num_shared_experts))
        self.specific = nn.ModuleDict({m: nn.ModuleList(mlp(d, h, z) for _ in range(cfg.num_specific_experts))
                                       for m, d in dims.items()})
        self.gates = nn.ModuleDict({m: mlp(d, cfg.gate_hidden_dim, max(cfg.num_specific_experts, 1))
                                    for m, d in dims.items()})
        n_experts = cfg.num_shared_experts + cfg.num_specific_experts * len(dims)
        self.quantizers = nn.ModuleList(ResidualQuantizer(cfg.codebook_size, z, cfg.depth, cfg.distance, cfg.commitment)
                                        for _ in range(n_experts))
        self.decoder = mlp(z, h, concat)
        self.aux_decoders = nn.ModuleDict({m: mlp(z, h, d) for m, d in dims.items()})
        cfg.check_token_order(self.names)
        sizes = {"shared": cfg.num_shared_experts * cfg.depth,
                 **{m: cfg.num_specific_experts * cfg.depth for m in self.names}}
        groups, positions, start = cfg.groups(self.names), {}, 0
        for g in groups:  # each group's positions in the experts' order
            positions[g], start = list(range(start, start + sizes[g])), start + sizes[g]
        # SID position i holds expert-order position perm[i]
        self.perm = [p for g in (cfg.token_order or groups) for p in positions[g]]

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    def expert_latents(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Continuous outputs of every expert, in SID order (shared, then each modality's)."""
        cat = torch.cat(xs, dim=-1)
        out = [e(cat) for e in self.shared]
        for m, x in zip(self.names, xs, strict=True):
            out += [e(x) for e in self.specific[m]]
        return out

    def quantize(self, xs: list[torch.Tensor], latents: list[torch.Tensor] | None = None
                 ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(straight-through quantized outputs per expert, (B, L) codes, VQ loss); `latents`: the
        experts' outputs when already computed."""
        qs, codes, vq = [], [], xs[0].new_zeros(())
        latents = self.expert_latents(xs) if latents is None else latents
        for q_mod, z in zip(self.quantizers, latents, strict=True):
            q, c, loss = q_mod(z)
            qs.append(q), codes.append(c)
            vq = vq + loss
        return qs, torch.cat(codes, dim=1)[:, self.perm], vq

    def mix(self, xs: list[torch.Tensor], qs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gated sum of all quantized outputs, and per modality: shared + that modality's gated outputs."""
        ns, nm = self.cfg.num_shared_experts, self.cfg.num_specific_experts
        shared = sum(qs[:ns]) if ns else torch.zeros_like(qs[0])
        total, per_modality = shared, {}
        for i, (m, x) in enumerate(zip(self.names, xs, strict=True)):
            part = qs[ns + i * nm: ns + (i + 1) * nm]
            if nm:
                g = torch.softmax(self.gates[m](x), dim=-1)
                mixed = sum(g[:, j:j + 1] * part[j] for j in range(nm))
            else:
                mixed = torch.zeros_like(shared)
            per_modality[m] = shared + mixed
            total = total + mixed
        return total, per_modality

    def soft_indices(self, latents: list[torch.Tensor], tau: float) -> torch.Tensor:
        """Stage 2's soft indexing: (B, L, K) one-hots of the SID positions (every expert's levels,
        in SID order) whose gradient is that of softmax(scores / tau); K = `codebook_size`."""
        soft = [q.soft_index(z, tau) for q, z in zip(self.quantizers, latents, strict=True)]
        return torch.cat(soft, dim=1)[:, self.perm]

    def losses(self, xs: list[torch.Tensor], latents: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        qs, codes, vq = self.quantize(xs, latents)
        total, per_mod = self.mix(xs, qs)
        cat = torch.cat(xs, dim=-1)
        recon = F.mse_loss(self.decoder(total), cat)
        aux = {m: F.mse_loss(self.aux_decoders[m](per_mod[m]), x) for m, x in zip(self.names, xs, strict=True)}
        orth = orthogonal_loss(self.shared).to(cat.device) + sum(
            orthogonal_loss(self.specific[m]).to(cat.device) for m in self.names)
        return {"recon": recon, "aux": sum(aux.values()), "orth": orth, "vq": vq, "codes": codes,
                **{f"aux_{m}": a for m, a in aux.items()}}

    def forward(self, *xs: torch.Tensor) -> dict[str, Any]:
        parts = self.losses(list(xs))
        c = self.cfg
        loss = c.alpha * parts["recon"] + c.beta * parts["aux"] + c.gamma * parts["orth"] + c.vq_weight * parts["vq"]
        return {"loss": loss, "logs": {"loss": loss.detach(), "recon": parts["recon"].detach(),
                                       "aux": parts["aux"].detach(), "orth": parts["orth"].detach(),
                                       "vq": parts["vq"].detach()}}

    @torch.no_grad()
    def reconstruct(self, xs: list[torch.Tensor]) -> torch.Tensor:
        qs, _, _ = self.quantize(xs)
        return self.decoder(self.mix(xs, qs)[0])


class MMQTokenizer(ItemTokenizer):
    kind = "mmq"

    def __init__(self, config: MMQConfig | None = None):
        super().__init__(config or MMQConfig())
        self.model: MMQModel | None = None
        self._log: list[dict[str, float]] = []

    @classmethod
    def config_from_dict(cls, cfg: Any) -> MMQConfig:
        return MMQConfig(**(cfg or {}))

    def _tensors(self, std: dict[str, np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(std[m]) for m in self.modality_dims]

    def fit(self, modalities: Modalities, show_progress: bool = True, accelerator=None,
            device: str | torch.device | None = None) -> MMQTokenizer:
        """Train on `accelerator`, else on `device` (None: CUDA when available); k-means init runs
        before, on the CPU; the fitted model is kept on the CPU."""
        cfg = self.config
        std = self._fit_inputs(modalities)
        torch.manual_seed(cfg.seed)
        self.model = MMQModel(self.modality_dims, cfg)
        xs = self._tensors(std)
        gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.kmeans_init:
            with torch.no_grad():
                for i, (q, z) in enumerate(zip(self.model.quantizers, self.model.expert_latents(xs), strict=True)):
                    init_residual_kmeans(q, z, cfg.seed + 1000 * i)

        on_device: list[torch.Tensor] = []  # the catalogue on the training device, moved once

        def end_of_epoch(model: MMQModel, epoch: int) -> dict[str, float]:
            if not cfg.dead_code_restart or epoch == cfg.epochs - 1:
                return {}
            with torch.no_grad():
                if not on_device:
                    dev = next(model.parameters()).device
                    on_device.extend(x.to(dev) for x in xs)
                lat = model.expert_latents(on_device)
                restarted = sum(restart_dead(q, z, gen) for q, z in zip(model.quantizers, lat, strict=True))
            return {"restarted_codes": float(restarted)}

        self._log = train_model(self.model, xs, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                seed=cfg.seed, weight_decay=cfg.weight_decay, accelerator=accelerator,
                                on_epoch_end=end_of_epoch, desc="mmq", show_progress=show_progress, device=device)
        self.model.cpu().eval()
        return self

    def _require_model(self) -> MMQModel:
        if self.model is None:
            raise RuntimeError("MMQTokenizer is not fitted")
        return self.model

    @torch.no_grad()
    def encode(self, modalities: Modalities, batch_size: int = 4096) -> np.ndarray:
        model = self._require_model().eval()
        xs = self._tensors(self._inputs(modalities))
        out = [model.quantize([x[i:i + batch_size] for x in xs])[1] for i in range(0, len(xs[0]), batch_size)]
        return torch.cat(out).numpy().astype(np.int64)

    def codebook_sizes(self) -> list[int]:
        cfg = self.config
        n_experts = cfg.num_shared_experts + cfg.num_specific_experts * max(len(self.modality_dims), 1)
        return [cfg.codebook_size] * (n_experts * cfg.depth)

    @torch.no_grad()
    def reconstruct(self, modalities: Modalities) -> dict[str, np.ndarray]:
        model = self._require_model().eval()
        xs = self._tensors(self._inputs(modalities))
        rec = model.reconstruct(xs).numpy()
        out, start = {}, 0
        for m, d in self.modality_dims.items():
            out[m] = rec[:, start:start + d]
            start += d
        return out

    def finetune_model(self) -> MMQModel:
        return copy.deepcopy(self._require_model()).train()

    def finetune_features(self, modalities: Modalities) -> list[torch.Tensor]:
        return self._tensors(self._inputs(modalities))

    def with_finetuned(self, model: MMQModel) -> MMQTokenizer:
        tok = copy.copy(self)
        tok.model, tok._log = copy.deepcopy(model).cpu().eval(), []
        return tok

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), **{f"model.{k}": v for k, v in self._require_model().state_dict().items()}}

    def load_state(self, tensors) -> None:
        super().load_state(tensors)
        self.model = MMQModel(self.modality_dims, self.config)
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.model.eval()

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)


@torch.no_grad()
def init_residual_kmeans(rq: ResidualQuantizer, z: torch.Tensor, seed: int) -> None:
    """k-means (spherical for cosine levels) on the expert's outputs, level by level on residuals.
    faiss runs on the host: `z` may live on any device, the centroids are copied back to the codebook's."""
    residual = rq.levels[0].prepare(z)
    for d, level in enumerate(rq.levels):
        level.init_from(kmeans(residual.cpu().numpy(), level.size, seed=seed + d, spherical=level.distance == "cosine"))
        residual = residual - level.codewords()[level.scores(residual).argmax(-1)]


@torch.no_grad()
def restart_dead(rq: ResidualQuantizer, z: torch.Tensor, gen: torch.Generator) -> int:
    """Restart the dead codewords of every level; `z` on the quantizer's device, `gen` a CPU generator."""
    residual = rq.levels[0].prepare(z)
    restarted = 0
    for level in rq.levels:
        codes = level.scores(residual).argmax(-1)
        n = level.restart_dead(residual, torch.bincount(codes, minlength=level.size), gen)
        if n:
            codes = level.scores(residual).argmax(-1)
            restarted += n
        residual = residual - level.codewords()[codes]
    return restarted
