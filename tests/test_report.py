"""`mmq benchmark` and `mmq report`: stages cached by fingerprint, the three report files, and the
HTML page rendered by a real headless Chromium (skipped, with the reason, where none can be had)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mmq_rec.cli import main
from mmq_rec.recdata.synthetic import SyntheticConfig, synthetic_catalogue

CONFIG = """
output_dir: {out}
benchmark:
  tokenizers: [random, rqkmeans]
  seeds: [0, 1]
encode:
  modalities: [text]
  cache_dir: ''
tokenize:
  rqkmeans: {{codebook_size: 8}}
  random: {{codebook_size: 8}}
generator: {{d_model: 32, num_layers: 1, num_decoder_layers: 1, d_ff: 64, num_heads: 2, d_kv: 16}}
train: {{max_steps: 12, eval_every: 6, warmup_steps: 2, batch_size: 32}}
decode: {{valid_users: 100}}
ranker: {{epochs: 2, d_model: 16, candidates: [30]}}
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    synthetic_catalogue(SyntheticConfig(num_items=150, num_users=200, num_topics=6, seed=0)).save(d / "ds")
    (d / "c.yaml").write_text(CONFIG.format(out=d / "out"))
    assert main(["benchmark", "--config", str(d / "c.yaml"), "--dataset", str(d / "ds"), "--json"]) == 0
    return d


def test_benchmark_writes_the_report_and_reuses_its_stages(bench, capsys):
    out = bench / "out"
    report = json.loads((out / "report.json").read_text())
    names = set(report["systems"])
    assert {"generator (random SIDs)", "generator (RQ-KMeans SIDs)", "ranker id+sid_prefix (RQ-KMeans SIDs)",
            "generate(30) → rank (RQ-KMeans SIDs)", "ranker id (SASRec, item IDs)", "popularity"} <= names
    gen = report["systems"]["generator (RQ-KMeans SIDs)"]
    assert gen["seeds"] == [0, 1] and gen["metrics"]["all"]["runs"] == 2 and gen["metrics"]["all"]["users"] == 200
    assert "recall@10_std" in gen["metrics"]["all"] and gen["metrics"]["decile_1"]["users"] > 0
    assert report["answers"][0].startswith("Best overall:") and report["environment"]["git commit"]
    assert set(report["tokenizers"]) == {"random", "rqkmeans"}
    assert len(report["curves"]) == 5 and all(c["points"] for c in report["curves"].values())
    assert report["command"].startswith("mmq benchmark --config")
    md = (out / "report.md").read_text()
    assert "## Tail (all other targets)" in md and "Best overall" in md
    page = (out / "report.html").read_text()
    assert page.count("<img") >= 3 and page.count("<table") >= 5
    assert not re.search(r'(src|href)="https?://', page), "the page must not fetch anything"
    # a rerun reuses every stage: no training, same numbers
    stages = sorted(p.name for p in (out / "stages").iterdir())
    capsys.readouterr()
    assert main(["benchmark", "--config", str(bench / "c.yaml"), "--dataset", str(bench / "ds")]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (out / "stages").iterdir()) == stages
    again = json.loads((out / "report.json").read_text())
    assert again["systems"]["generator (RQ-KMeans SIDs)"]["metrics"] == gen["metrics"]
    # a changed setting redoes only the stages it reaches (the ranker's), the rest is reused
    assert main(["benchmark", "--config", str(bench / "c.yaml"), "--dataset", str(bench / "ds"),
                 "--ranker.epochs", "3", "--json"]) == 0
    new = sorted(p.name for p in (out / "stages").iterdir())
    added = set(new) - set(stages)
    assert added and all(n.startswith(("ranker-", "eval-ranker", "eval-generate")) for n in added)


def test_report_composes_runs_made_elsewhere(bench, tmp_path, capsys):
    ev = tmp_path / "gen-eval"
    run = next((bench / "out" / "stages").glob("generator-rqkmeans-*"))
    assert main(["evaluate", "--dataset", str(bench / "ds"), "--model", str(run / "best"), "--report", str(ev)]) == 0
    capsys.readouterr()
    assert main(["report", str(bench / "out"), str(ev) + ".json", "--output", str(tmp_path / "page"), "--json"]) == 0
    report = json.loads((tmp_path / "page" / "report.json").read_text())
    assert "generator [gen-eval]" in report["systems"] and "popularity" in report["systems"]
    assert main(["report", str(tmp_path / "nothing"), "--output", str(tmp_path / "p2")]) == 2
    assert "report.json" in capsys.readouterr().err


def _chromium() -> str | None:
    """A headless Chromium on the PATH (`.ci/run` installs Debian's `chromium` where it runs as root)."""
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_the_page_renders_in_a_real_browser(bench, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on the PATH (install Debian's `chromium`; .ci/run does where it is root)")
    page = (bench / "out" / "report.html").resolve()
    args = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*args, "--dump-dom", "--virtual-time-budget=5000", f"file://{page}#render-check"],
                         capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<pre id="render-check">([^<]*)</pre>', dom)
    assert m, "the page's render check did not run"
    check = json.loads(m.group(1))
    assert check["tables"] >= 5 and check["images"] >= 3 and check["broken"] == 0
    assert all(natural > 0 and w > 0 and h > 0 for natural, w, h in check["sizes"])
    shot = tmp_path / "report.png"
    subprocess.run([*args, f"--screenshot={shot}", "--window-size=1200,2400", f"file://{page}"],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
    keep = os.environ.get("MMQ_SCREENSHOT_DIR")  # e.g. to look at it after CI
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")


def test_answers_name_no_best_system_when_every_recall_is_zero():
    from mmq_rec.benchmark import answers

    def system(all_, cold):
        return {"metrics": {"all": {"recall@10": all_, "users": 100}, "cold": {"recall@10": cold, "users": 7}}}

    lines = answers({"a": system(0.05, 0.0), "b": system(0.04, 0.0)}, [5, 10])
    assert lines[0].startswith("Best overall: a, R@10 0.0500, ahead of b")
    assert lines[1] == "On cold items (never seen in training): R@10 is 0 for every system (7 test users)."
    assert answers({"a": system(0.05, 0.01), "b": system(0.04, 0.0)}, [10])[1].startswith("Best on cold items")
