"""On-disk cache of modality matrices, keyed by a SHA-256 of the content and the encoder settings,
and by the encoder's code version: each encoder module has an `ENCODER_VERSION`, bumped whenever its
computation changes, so a changed encoder never reads a matrix cached by an older one."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmq_rec.recdata.io import write_npy


def content_hash(*parts: Any) -> str:
    """Stable hash of JSON-serialisable parts, numpy arrays and bytes."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str(part.dtype).encode() + str(part.shape).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def model_fingerprint(name: str) -> str:
    """Identify a local model directory by its file names, sizes and JSON configs; a hub id by its name."""
    p = Path(name)
    if not p.is_dir():
        return name
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file():
            h.update(f"{f.relative_to(p)}:{f.stat().st_size}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()


class EmbeddingCache:
    """`get_or_compute(kind, key, fn, version=V)` returns the cached matrix or computes and stores it
    atomically.

    A `None` (or empty) directory disables caching."""

    def __init__(self, directory: str | Path | None):
        self.directory = Path(directory).expanduser() if directory else None
        self.hits = 0

    def path(self, kind: str, key: str, version: int) -> Path | None:
        # the version is in the file name, so matrices of different encoder versions never collide
        return None if self.directory is None else self.directory / f"{kind}-v{version}-{key[:24]}.npy"

    def get_or_compute(self, kind: str, key: str, compute: Callable[[], np.ndarray], *, version: int
                       ) -> np.ndarray:
        """`version`: the encoder's ENCODER_VERSION (required, so no caller can forget it)."""
        path = self.path(kind, key, version)
        if path is not None and path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                # the cache is ours and derived: a damaged entry is recomputed and replaced
                print(f"warning: {path}: damaged cache entry ({type(e).__name__}); recomputing it", file=sys.stderr)
            else:
                self.hits += 1
                return cached
        out = np.ascontiguousarray(compute(), dtype=np.float32)
        if path is not None:
            write_npy(path, out)
        return out
