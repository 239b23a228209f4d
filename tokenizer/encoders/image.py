"""Image modality: a transformers vision model over image files or URLs.

Any `AutoModel` checkpoint with an `AutoImageProcessor` works (ViT, CLIP's vision tower, DINOv2,
...; a hub id or a local directory). The item vector is `get_image_features` for CLIP-style
models, else the pooler output, else the mean of the last hidden states; rows L2-normalised.
Items without an image reference get a zero vector and are counted; an image that cannot be
read is an error naming the item, unless `skip_unreadable=True` (then zero and counted)."""

from __future__ import annotations

import hashlib
import io
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmq_rec.recdata.errors import DataError
from mmq_rec.tokenizer.encoders._linalg import l2_normalise
from mmq_rec.tokenizer.encoders.cache import EmbeddingCache, content_hash, model_fingerprint

ENCODER_VERSION = 1
"""Part of the cache key; bump when the computation changes."""


@dataclass
class ImageEncoderConfig:
    model: str = "google/vit-base-patch16-224-in21k"
    """A transformers vision checkpoint: hub id or local directory."""
    field: str = "image"
    """Item column holding a file path (relative to `base_dir`) or an http(s) URL."""
    batch_size: int = 32
    """Images per forward pass."""
    skip_unreadable: bool = False
    """Give unreadable images a zero vector (counted) instead of failing."""
    timeout_s: float = 20.0
    """Timeout for downloading an image URL."""
    device: str | None = None
    """torch device; None picks CUDA when available."""

    def __post_init__(self) -> None:
        # Errors read "<field>: <reason>"; mmq.config reports them under the full dotted key.
        if not self.model:
            raise ValueError("model: must name a transformers vision checkpoint or directory (got '')")
        if not self.field:
            raise ValueError("field: must name the item column holding image references (got '')")
        if not self.batch_size >= 1:
            raise ValueError(f"batch_size: must be >= 1 (got {self.batch_size!r})")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0 (got {self.timeout_s!r})")


@dataclass
class ImageEncoding:
    embeddings: np.ndarray  # (num_items, d) float32
    missing: int  # items without an image reference
    unreadable: int  # references that could not be read (only when skip_unreadable)


def _read_bytes(ref: str, base_dir: Path | None, timeout: float) -> bytes:
    if ref.startswith(("http://", "https://")):
        with urllib.request.urlopen(ref, timeout=timeout) as r:  # noqa: S310 (user-given URL)
            return r.read()
    p = Path(ref)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p.read_bytes()


def encode_images(refs: Sequence[str | None], config: ImageEncoderConfig | None = None,
                  base_dir: str | Path | None = None, cache: EmbeddingCache | None = None,
                  show_progress: bool = True) -> ImageEncoding:
    """Embed one image per item. The cache key hashes the image bytes (URLs: the URL) and the model."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    config = config or ImageEncoderConfig()
    base = Path(base_dir) if base_dir else None
    raw: list[bytes | None] = []
    unreadable = 0
    for i, ref in enumerate(refs):
        if not ref:
            raw.append(None)
            continue
        try:
            raw.append(_read_bytes(str(ref), base, config.timeout_s))
        except OSError as e:
            if not config.skip_unreadable:
                raise DataError(f"cannot read image {ref!r} of item row {i}: {e}", field=config.field) from None
            unreadable += 1
            raw.append(None)
    missing = sum(1 for r in refs if not r)
    digest = [hashlib.sha256(b).hexdigest() if b is not None else None for b in raw]
    key = content_hash("image", model_fingerprint(config.model), digest)

    def compute() -> np.ndarray:
        processor = AutoImageProcessor.from_pretrained(config.model)
        model = AutoModel.from_pretrained(config.model).eval()
        device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.to(device)
        present = [i for i, b in enumerate(raw) if b is not None]
        chunks: list[np.ndarray] = []
        for start in tqdm(range(0, len(present), config.batch_size), desc="image", disable=not show_progress):
            batch = present[start:start + config.batch_size]
            images = []
            for i in batch:
                try:
                    images.append(Image.open(io.BytesIO(raw[i])).convert("RGB"))
                except Exception as e:  # PIL raises many types for corrupt files
                    raise DataError(f"not a readable image ({e})", field=f"{config.field} of item row {i}") from None
            inputs = processor(images=images, return_tensors="pt").to(device)
            with torch.no_grad():
                if hasattr(model, "get_image_features"):
                    out = model.get_image_features(**inputs)
                    out = getattr(out, "pooler_output", out)
                else:
                    res = model(**inputs)
                    pooled = getattr(res, "pooler_output", None)
                    out = pooled if pooled is not None else res.last_hidden_state.mean(dim=1)
            chunks.append(out.float().cpu().numpy())
        dim = chunks[0].shape[1] if chunks else int(getattr(model.config, "hidden_size", 1))
        emb = np.zeros((len(raw), dim), dtype=np.float32)
        if present:
            emb[present] = np.concatenate(chunks)
        return l2_normalise(emb)

    emb = (cache or EmbeddingCache(None)).get_or_compute("image", key, compute, version=ENCODER_VERSION)
    return ImageEncoding(emb, missing, unreadable)

