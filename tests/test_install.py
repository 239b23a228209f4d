"""The installed distribution is namespaced: `mmq_rec.tokenizer`, `mmq_rec.eval`, ... and no
generic top-level package (`tokenizer`, `eval`, `generator`, `recdata`, `mmq`) of ours."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_outside_the_checkout_only_the_namespace_imports(tmp_path):
    code = ("import importlib.util as u, mmq_rec.tokenizer, mmq_rec.eval, mmq_rec.generator, mmq_rec.recdata;"
            "print([n for n in ('tokenizer', 'eval', 'generator', 'recdata', 'mmq', 'ranker') if u.find_spec(n)])")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


@pytest.mark.slow
def test_built_wheel_has_only_the_namespace(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("mmq_rec-*.whl"))
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith((".dist-info", ".data"))} == {"mmq_rec"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "mmq_rec/tokenizer/mmq.py" in names and "mmq_rec/cli.py" in names and "mmq_rec/eval/metrics.py" in names
