from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"the shared datasets are missing: expected {DATA} (see README.md, section Data)")
    return DATA


@pytest.fixture(scope="session")
def beauty(data_dir):
    from mmq_rec.recdata.loaders import load_jsonl

    return load_jsonl(data_dir / "amazon-beauty")
