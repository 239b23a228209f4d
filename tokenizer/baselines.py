"""Baseline tokenizers behind the same interface as MMQ.

- RQ-VAE (TIGER): MLP encoder 512-256-128 -> 32-d latent, `levels` residual L2 codebooks of K,
  mirrored decoder, loss = MSE + codebook + β·commitment (β = 0.25), k-means initialisation.
- RQ-KMeans: residual k-means with faiss.
Both run `fused` (MA: concatenate the standardised modalities, then quantize) or `separate`
(MS: quantize each modality alone, concatenate the codes in modality order).
- Random IDs: uniform codes of the same length and K (a floor: no content at all).
- External: a published SID table such as LETTER's `letter.index.json`."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import read_json
from mmq_rec.tokenizer.base import ItemTokenizer, Modalities
from mmq_rec.tokenizer.kmeans import assign, residual_kmeans
from mmq_rec.tokenizer.mmq import init_residual_kmeans, restart_dead
from mmq_rec.tokenizer.quantizer import ResidualQuantizer
from mmq_rec.tokenizer.training import train_model

MODES = ("fused", "separate")


def _groups(mode: str, std: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs to quantize: one fused matrix (MA) or one per modality (MS)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return {"fused": np.concatenate(list(std.values()), axis=1)} if mode == "fused" else dict(std)


def _check_mode(mode: str) -> None:
    # Errors read "<field>: <reason>"; mmq.config reports them under the full dotted key.
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {', '.join(MODES)} (got {mode!r})")


def _check_at_least(cfg: Any, low: int, *names: str) -> None:
    """Each named field of `cfg` must be >= low (`not >=` also refuses NaN)."""
    for name in names:
        if not getattr(cfg, name) >= low:
            raise ValueError(f"{name}: must be >= {low} (got {getattr(cfg, name)!r})")


def _split_back(mode: str, rec: dict[str, np.ndarray], dims: dict[str, int]) -> dict[str, np.ndarray]:
    if mode == "separate":
        return rec
    out, start = {}, 0
    for m, d in dims.items():
        out[m] = rec["fused"][:, start:start + d]
        start += d
    return out


# --------------------------------------------------------------------------- RQ-VAE
@dataclass
class RQVAEConfig:
    mode: str = "fused"
    """fused (MA) or separate (MS: one RQ-VAE per modality, codes concatenated)."""
    levels: int = 3
    codebook_size: int = 256
    latent_dim: int = 32
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])
    commitment: float = 0.25
    """TIGER's β."""
    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    kmeans_init: bool = True
    dead_code_restart: bool = False
    """Off by default, as in TIGER."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        _check_at_least(self, 1, "levels", "codebook_size", "latent_dim", "epochs", "batch_size")
        _check_at_least(self, 0, "commitment")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0 (got {self.lr!r})")
        if not all(isinstance(h, int) and h >= 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims: every width must be >= 1 (got {self.hidden_dims!r})")


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, d_in: int, cfg: RQVAEConfig):
        super().__init__()
        self.encoder = _mlp([d_in, *cfg.hidden_dims, cfg.latent_dim])
        self.quantizer = ResidualQuantizer(cfg.codebook_size, cfg.latent_dim, cfg.levels, "l2", cfg.commitment)
        self.decoder = _mlp([cfg.latent_dim, *reversed(cfg.hidden_dims), d_in])

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        q, _, vq = self.quantizer(self.encoder(x))
        recon = F.mse_loss(self.decoder(q), x)
        loss = recon + vq
        return {"loss": loss, "logs": {"loss": loss.detach(), "recon": recon.detach(), "vq": vq.detach()}}


class RQVAETokenizer(ItemTokenizer):
    kind = "rqvae"

    def __init__(self, config: RQVAEConfig | None = None):
        super().__init__(config or RQVAEConfig())
        self.models: dict[str, RQVAE] = {}
        self._log: list[dict[str, float]] = []

    @classmethod
    def config_from_dict(cls, cfg: Any) -> RQVAEConfig:
        return RQVAEConfig(**(cfg or {}))

    def fit(self, modalities: Modalities, show_progress: bool = True, accelerator=None,
            device: str | torch.device | None = None) -> RQVAETokenizer:
        """Train on `accelerator`, else on `device` (None: CUDA when available); k-means init runs
        before, on the CPU; the fitted models are kept on the CPU."""
        cfg = self.config
        groups = _groups(cfg.mode, self._fit_inputs(modalities))
        gen = torch.Generator().manual_seed(cfg.seed)
        for gi, (name, x) in enumerate(groups.items()):
            torch.manual_seed(cfg.seed + gi)
            model = RQVAE(x.shape[1], cfg)
            xt = torch.from_numpy(x)
            if cfg.kmeans_init:
                with torch.no_grad():
                    init_residual_kmeans(model.quantizer, model.encoder(xt), cfg.seed + 1000 * gi)

            on_device: list[torch.Tensor] = []  # this group's inputs on the training device, moved once

            def end(m: RQVAE, epoch: int, xt=xt, on_device=on_device) -> dict[str, float]:
                if not cfg.dead_code_restart or epoch == cfg.epochs - 1:
                    return {}
                with torch.no_grad():
                    if not on_device:
                        on_device.append(xt.to(next(m.parameters()).device))
                    z = m.encoder(on_device[0])
                return {"restarted_codes": float(restart_dead(m.quantizer, z, gen))}

            log = train_model(model, [xt], epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                              seed=cfg.seed + gi, accelerator=accelerator, on_epoch_end=end,
                              desc=f"rqvae[{name}]", show_progress=show_progress, device=device)
            self._log += [{"group": name, **row} for row in log]
            self.models[name] = model.cpu().eval()
        return self

    @torch.no_grad()
    def encode(self, modalities: Modalities) -> np.ndarray:
        groups = _groups(self.config.mode, self._inputs(modalities))
        return np.concatenate([self.models[n].quantizer(self.models[n].encoder(torch.from_numpy(x)))[1].numpy()
                               for n, x in groups.items()], axis=1).astype(np.int64)

    @torch.no_grad()
    def reconstruct(self, modalities: Modalities) -> dict[str, np.ndarray]:
        groups = _groups(self.config.mode, self._inputs(modalities))
        rec = {}
        for n, x in groups.items():
            m = self.models[n]
            rec[n] = m.decoder(m.quantizer(m.encoder(torch.from_numpy(x)))[0]).numpy()
        return _split_back(self.config.mode, rec, self.modality_dims)

    def codebook_sizes(self) -> list[int]:
        n_groups = 1 if self.config.mode == "fused" else max(len(self.modality_dims), 1)
        return [self.config.codebook_size] * (self.config.levels * n_groups)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = super().state_tensors()
        for n, m in self.models.items():
            out.update({f"model.{n}.{k}": v for k, v in m.state_dict().items()})
        return out

    def load_state(self, tensors) -> None:
        super().load_state(tensors)
        names = ["fused"] if self.config.mode == "fused" else list(self.modality_dims)
        dims = {"fused": sum(self.modality_dims.values()), **self.modality_dims}
        for n in names:
            m = RQVAE(dims[n], self.config)
            prefix = f"model.{n}."
            m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            self.models[n] = m.eval()


# --------------------------------------------------------------------------- RQ-KMeans
@dataclass
class RQKMeansConfig:
    mode: str = "fused"
    """fused (MA) or separate (MS)."""
    levels: int = 3
    codebook_size: int = 256
    niter: int = 25
    """k-means iterations per level."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        _check_at_least(self, 1, "levels", "codebook_size", "niter")


class RQKMeansModel(nn.Module):
    """RQ-KMeans's centroids as trainable codebooks, so that MMQ's stage 2 can fine-tune RQ-KMeans
    SIDs too (the same soft indexing and losses): one L2 residual quantizer per input group
    (`fused`: one), started from the k-means centroids, so its codes are RQ-KMeans's. The interface
    stage 2 reads, as `MMQModel`'s: `names`, `codebook_size`, `quantizers`, `expert_latents` (the
    standardised inputs themselves: nothing precedes the codebooks), `quantize`, `soft_indices` and
    `losses` (`recon`: the MSE of the residual reconstruction, the k-means objective, through which
    the codewords train; `aux`: 0).

    A squared distance grows with the input's dimension, so soft indexing scores a codeword by the
    squared distance per dimension: `tau` then means the same at any width."""

    def __init__(self, books: dict[str, list[np.ndarray]]):
        super().__init__()
        self.names = list(books)
        self.codebook_size = int(len(next(iter(books.values()))[0]))
        self.quantizers = nn.ModuleList()
        for levels in books.values():
            rq = ResidualQuantizer(self.codebook_size, int(levels[0].shape[1]), len(levels), distance="l2")
            for level, c in zip(rq.levels, levels, strict=True):
                level.init_from(c)
            self.quantizers.append(rq)

    def expert_latents(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(xs)

    def quantize(self, xs: list[torch.Tensor], latents: list[torch.Tensor] | None = None
                 ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(straight-through quantized inputs per group, (B, L) codes, VQ loss)."""
        out = [rq(x) for rq, x in zip(self.quantizers, xs, strict=True)]
        return [o[0] for o in out], torch.cat([o[1] for o in out], dim=1), sum(o[2] for o in out)

    def soft_indices(self, latents: list[torch.Tensor], tau: float) -> torch.Tensor:
        """(B, L, K) soft one-hots of the SID positions (see `MMQModel.soft_indices`)."""
        return torch.cat([rq.soft_index(z, tau, scale=1.0 / z.shape[-1])
                          for rq, z in zip(self.quantizers, latents, strict=True)], dim=1)

    def losses(self, xs: list[torch.Tensor], latents: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        recon, codes = xs[0].new_zeros(()), []
        for rq, x in zip(self.quantizers, xs, strict=True):
            residual, total = x, torch.zeros_like(x)
            for level in rq.levels:
                c = level.scores(residual).argmax(-1)
                e = level.codewords()[c]
                total, residual = total + e, residual - e.detach()
                codes.append(c)
            recon = recon + F.mse_loss(total, x)
        return {"recon": recon / len(xs), "aux": xs[0].new_zeros(()), "codes": torch.stack(codes, dim=1)}


class RQKMeansTokenizer(ItemTokenizer):
    kind = "rqkmeans"

    def __init__(self, config: RQKMeansConfig | None = None):
        super().__init__(config or RQKMeansConfig())
        self.centroids: dict[str, list[np.ndarray]] = {}

    @classmethod
    def config_from_dict(cls, cfg: Any) -> RQKMeansConfig:
        return RQKMeansConfig(**(cfg or {}))

    def fit(self, modalities: Modalities, show_progress: bool = True, accelerator=None,
            device: str | torch.device | None = None) -> RQKMeansTokenizer:
        cfg = self.config
        for gi, (name, x) in enumerate(_groups(cfg.mode, self._fit_inputs(modalities)).items()):
            _, books = residual_kmeans(x, cfg.levels, cfg.codebook_size, seed=cfg.seed + 100 * gi, niter=cfg.niter)
            self.centroids[name] = books
        return self

    def _codes_and_recon(self, modalities: Modalities) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        codes, rec = [], {}
        for name, x in _groups(self.config.mode, self._inputs(modalities)).items():
            residual = x.copy()
            for c in self.centroids[name]:
                a = assign(residual, c)
                residual -= c[a]
                codes.append(a)
            rec[name] = x - residual
        return np.stack(codes, axis=1), rec

    def encode(self, modalities: Modalities) -> np.ndarray:
        return self._codes_and_recon(modalities)[0]

    def reconstruct(self, modalities: Modalities) -> dict[str, np.ndarray]:
        return _split_back(self.config.mode, self._codes_and_recon(modalities)[1], self.modality_dims)

    def codebook_sizes(self) -> list[int]:
        n_groups = 1 if self.config.mode == "fused" else max(len(self.modality_dims), 1)
        return [self.config.codebook_size] * (self.config.levels * n_groups)

    def finetune_model(self) -> RQKMeansModel:
        if not self.centroids:
            raise RuntimeError("RQKMeansTokenizer is not fitted")
        return RQKMeansModel(self.centroids).train()

    def finetune_features(self, modalities: Modalities) -> list[torch.Tensor]:
        return [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                for x in _groups(self.config.mode, self._inputs(modalities)).values()]

    def with_finetuned(self, model: RQKMeansModel) -> RQKMeansTokenizer:
        tok = copy.copy(self)
        tok.centroids = {n: [level.weight.detach().cpu().numpy().copy() for level in rq.levels]
                         for n, rq in zip(model.names, model.quantizers, strict=True)}
        return tok

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = super().state_tensors()
        for n, books in self.centroids.items():
            out.update({f"centroids.{n}.{i}": torch.from_numpy(c) for i, c in enumerate(books)})
        return out

    def load_state(self, tensors) -> None:
        super().load_state(tensors)
        names = ["fused"] if self.config.mode == "fused" else list(self.modality_dims)
        self.centroids = {n: [tensors[f"centroids.{n}.{i}"].numpy() for i in range(self.config.levels)]
                          for n in names}


# --------------------------------------------------------------------------- random and external
@dataclass
class RandomConfig:
    length: int = 6
    codebook_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        _check_at_least(self, 1, "length", "codebook_size")


class RandomTokenizer(ItemTokenizer):
    """Uniform random codes: the same length and K as the tokenizer it stands in for."""

    kind = "random"

    def __init__(self, config: RandomConfig | None = None):
        super().__init__(config or RandomConfig())
        self._codes: np.ndarray | None = None

    @classmethod
    def config_from_dict(cls, cfg: Any) -> RandomConfig:
        return RandomConfig(**(cfg or {}))

    def fit(self, modalities: Modalities, show_progress: bool = True, accelerator=None,
            device: str | torch.device | None = None) -> RandomTokenizer:
        n = len(next(iter(modalities.values())))
        self._fit_inputs(modalities)
        rng = np.random.default_rng(self.config.seed)
        self._codes = rng.integers(0, self.config.codebook_size, (n, self.config.length), dtype=np.int64)
        return self

    def encode(self, modalities: Modalities) -> np.ndarray:
        if self._codes is None:
            raise RuntimeError("RandomTokenizer is not fitted")
        return self._codes.copy()

    def codebook_sizes(self) -> list[int]:
        return [self.config.codebook_size] * self.config.length

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), "codes": torch.from_numpy(self.encode({}))}

    def load_state(self, tensors) -> None:
        super().load_state(tensors)
        self._codes = tensors["codes"].numpy().astype(np.int64)


_TOKEN = re.compile(r"<([A-Za-z]+)_(\d+)>")


@dataclass
class ExternalConfig:
    path: str = ""
    """JSON file {item_id: ["<a_183>", "<b_70>", ...]} (LETTER format) or {item_id: [183, 70, ...]}."""


class ExternalTokenizer(ItemTokenizer):
    """Codes read from a published SID table, aligned to the dataset's item ids."""

    kind = "external"

    def __init__(self, config: ExternalConfig | None = None, item_ids: list[str] | None = None):
        super().__init__(config or ExternalConfig())
        self.item_ids = item_ids
        self._codes: np.ndarray | None = None
        self._sizes: list[int] = []

    @classmethod
    def config_from_dict(cls, cfg: Any) -> ExternalConfig:
        return ExternalConfig(**(cfg or {}))

    def fit(self, modalities: Modalities, show_progress: bool = True, accelerator=None,
            device: str | torch.device | None = None) -> ExternalTokenizer:
        path = Path(self.config.path)
        if self.item_ids is None:
            raise ValueError("ExternalTokenizer needs the dataset's item ids")
        table = read_json(path)
        if not isinstance(table, dict):
            raise DataError("expected an object {item_id: [tokens]}", path=path)
        rows = []
        for iid in self.item_ids:
            if iid not in table:
                raise DataError(f"item {iid!r} of the dataset has no SID in the table", path=path, field=iid)
            rows.append([self._parse(t, path, iid) for t in table[iid]])
        if len({len(r) for r in rows}) != 1:
            raise DataError("SIDs of different lengths", path=path)
        self._codes = np.array(rows, dtype=np.int64)
        self._sizes = [int(c) + 1 for c in self._codes.max(axis=0)]
        self.modality_dims = {}
        return self

    @staticmethod
    def _parse(token: Any, path: Path, iid: str) -> int:
        if isinstance(token, int):
            return token
        m = _TOKEN.fullmatch(str(token))
        if not m:
            raise DataError(f"cannot read token {token!r} (expected like <a_183> or an integer)", path=path,
                            field=iid)
        return int(m.group(2))

    def encode(self, modalities: Modalities) -> np.ndarray:
        if self._codes is None:
            raise RuntimeError("ExternalTokenizer is not fitted")
        return self._codes.copy()

    def codebook_sizes(self) -> list[int]:
        return list(self._sizes)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"codes": torch.from_numpy(self.encode({})), "sizes": torch.tensor(self._sizes)}

    def load_state(self, tensors) -> None:
        self._codes = tensors["codes"].numpy().astype(np.int64)
        self._sizes = tensors["sizes"].tolist()
