"""The item-tokenizer interface every tokenizer implements (MMQ, RQ-VAE, RQ-KMeans, random, external),
input checks, and the per-modality standardisation they share."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.io import atomic_dir, read_json

Modalities = Mapping[str, np.ndarray]
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def check_modalities(modalities: Modalities) -> int:
    """Raise a clear error for an empty modality, NaN/inf values or mismatched row counts; return N."""
    if not modalities:
        raise DataError("no modality given", field="modalities")
    rows = {}
    for name, m in modalities.items():
        m = np.asarray(m)
        if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
            raise DataError(f"modality {name!r} is empty or not an items x d matrix (shape {m.shape})",
                            field=f"modalities.{name}")
        bad = ~np.isfinite(m).all(axis=1)
        if bad.any():
            raise DataError(f"modality {name!r} has NaN/inf in {int(bad.sum())} rows (first: item row "
                            f"{int(np.flatnonzero(bad)[0])})", field=f"modalities.{name}")
        rows[name] = m.shape[0]
    if len(set(rows.values())) != 1:
        raise DataError(f"modalities disagree on the number of items: {rows}", field="modalities")
    return next(iter(rows.values()))


class Standardizer:
    """Per-dimension z-scores fitted per modality, so that reconstruction losses are comparable
    across encoders of different scales (and across tokenizers)."""

    def __init__(self, stats: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.stats = stats

    @classmethod
    def fit(cls, modalities: Modalities) -> Standardizer:
        stats = {}
        for name, m in modalities.items():
            m = np.asarray(m, dtype=np.float64)
            mean, std = m.mean(axis=0), m.std(axis=0)
            stats[name] = (mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32))
        return cls(stats)

    def __call__(self, modalities: Modalities) -> dict[str, np.ndarray]:
        missing = set(self.stats) - set(modalities)
        if missing:
            raise DataError(f"missing modalities {sorted(missing)} (the tokenizer was fitted on "
                            f"{list(self.stats)})", field="modalities")
        out = {}
        for name, (mean, std) in self.stats.items():
            m = np.asarray(modalities[name], dtype=np.float32)
            if m.shape[1] != len(mean):
                raise DataError(f"modality {name!r} has {m.shape[1]} dimensions, the tokenizer expects "
                                f"{len(mean)}", field=f"modalities.{name}")
            out[name] = (m - mean) / std
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        t = {}
        for name, (mean, std) in self.stats.items():
            t[f"standardizer.{name}.mean"] = torch.from_numpy(mean)
            t[f"standardizer.{name}.std"] = torch.from_numpy(std)
        return t

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], names: list[str]) -> Standardizer:
        return cls({n: (tensors[f"standardizer.{n}.mean"].numpy(), tensors[f"standardizer.{n}.std"].numpy())
                    for n in names})


class ItemTokenizer(ABC):
    """Maps per-item modality matrices to code tuples. Subclasses set `kind` and implement
    fit / encode / codebook_sizes and, when they have weights, `state_tensors` / `load_state`."""

    kind: ClassVar[str]

    def __init__(self, config: Any = None):
        self.config = config
        self.modality_dims: dict[str, int] = {}
        self.standardizer: Standardizer | None = None

    @abstractmethod
    def fit(self, modalities: Modalities, show_progress: bool = True, accelerator: Any = None,
            device: str | torch.device | None = None) -> ItemTokenizer:
        """Fit on the items' modalities. Trained tokenizers run on `accelerator`, else on `device`
        (None: CUDA when available); the others ignore both."""

    @abstractmethod
    def encode(self, modalities: Modalities) -> np.ndarray:
        """(N, L) int64 codes, before disambiguation."""

    @abstractmethod
    def codebook_sizes(self) -> list[int]: ...

    def reconstruct(self, modalities: Modalities) -> dict[str, np.ndarray] | None:
        """Per-modality reconstruction of the *standardised* input from the codes (None if the
        tokenizer has no decoder)."""
        return None

    def training_log(self) -> list[dict[str, float]]:
        return getattr(self, "_log", [])

    # ------------------------------------------------------------------ stage 2
    # Tokenizers whose codes come from trainable codebooks (MMQ, RQ-KMeans) can be fine-tuned by
    # a downstream model (`mmq_rec.tokenizer.finetune`); the others refuse.
    def finetune_model(self) -> torch.nn.Module:
        """A trainable copy of the model that gives the codes (see `tokenizer.finetune`)."""
        raise ValueError(f"stage 2 cannot fine-tune a {self.kind!r} tokenizer")

    def finetune_features(self, modalities: Modalities) -> list[torch.Tensor]:
        """The inputs `finetune_model()` reads (standardised), one tensor per input group."""
        raise ValueError(f"stage 2 cannot fine-tune a {self.kind!r} tokenizer")

    def with_finetuned(self, model: torch.nn.Module) -> ItemTokenizer:
        """A copy of this tokenizer that gives the fine-tuned `model`'s codes."""
        raise ValueError(f"stage 2 cannot fine-tune a {self.kind!r} tokenizer")

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.standardizer.tensors() if self.standardizer else {}

    def load_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if any(k.startswith("standardizer.") for k in tensors):
            self.standardizer = Standardizer.from_tensors(tensors, list(self.modality_dims))

    def _fit_inputs(self, modalities: Modalities) -> dict[str, np.ndarray]:
        check_modalities(modalities)
        self.modality_dims = {k: int(np.asarray(v).shape[1]) for k, v in modalities.items()}
        self.standardizer = Standardizer.fit(modalities)
        return self.standardizer(modalities)

    def _inputs(self, modalities: Modalities) -> dict[str, np.ndarray]:
        check_modalities(modalities)
        if self.standardizer is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return self.standardizer(modalities)

    def save_pretrained(self, path: str | Path, extra_files: Mapping[str, Any] | None = None,
                        overwrite: bool = False) -> Path:
        """Write `config.json` + `model.safetensors` (+ JSON `extra_files`) atomically (replacing
        only an earlier tokenizer directory, or with `overwrite` any output of ours)."""
        from dataclasses import asdict, is_dataclass

        cfg = asdict(self.config) if is_dataclass(self.config) else self.config
        with atomic_dir(path, "tokenizer", overwrite=overwrite) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(
                {"tokenizer_type": self.kind, "config": cfg, "modality_dims": self.modality_dims,
                 "codebook_sizes": self.codebook_sizes()}, indent=2) + "\n")
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_tensors().items()}
            if tensors:
                save_file(tensors, str(tmp / WEIGHTS_FILE))
            for name, obj in (extra_files or {}).items():
                (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
        return Path(path)

    @classmethod
    def _from_dir(cls, path: Path, info: dict[str, Any]) -> ItemTokenizer:
        tok = cls(cls.config_from_dict(info.get("config")))
        tok.modality_dims = dict(info.get("modality_dims", {}))
        weights = path / WEIGHTS_FILE
        tok.load_state(load_file(str(weights)) if weights.exists() else {})
        return tok

    @classmethod
    def config_from_dict(cls, cfg: Any) -> Any:
        return cfg


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    f = path / CONFIG_FILE
    if not f.is_file():
        raise DataError("not a tokenizer directory (no config.json)", path=path)
    info = read_json(f)
    if "tokenizer_type" not in info:
        raise DataError("missing required field", path=f, field="tokenizer_type")
    return info
