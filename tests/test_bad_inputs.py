"""Bad and hostile input across every command, as a new user would give it.

Each case runs the real command line and asserts: a non-zero exit, one error line
`mmq <command>: error: ...` that names the file, line or field, no traceback, and that no input
or unrelated file changed (every file under the shared fixtures and the case's own folder is
hashed before and after)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mmq_rec.cli import main
from mmq_rec.recdata.synthetic import SyntheticConfig, synthetic_catalogue

TINY = ["--generator.num_layers", "1", "--generator.num_decoder_layers", "1", "--generator.d_model", "32",
        "--generator.d_ff", "64", "--generator.num_heads", "2", "--generator.d_kv", "16",
        "--train.batch_size", "64", "--train.warmup_steps", "2", "--decode.valid_users", "50",
        "--encode.cache_dir", ""]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def jsonl_source(d: Path, n_users: int = 30, n_items: int = 20, length: int = 5, **item_extra) -> Path:
    rng = np.random.default_rng(0)
    write_jsonl(d / "items.jsonl", [{"item_id": f"i{k}", "title": f"Item {k}", **item_extra} for k in range(n_items)])
    write_jsonl(d / "sequences.jsonl", [{"user_id": f"u{u}", "items": [f"i{k}" for k in
                                         rng.choice(n_items, length, replace=False)]} for u in range(n_users)])
    return d


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """Shared inputs: a JSONL source, its prepared dataset, a synthetic dataset with stored
    features, its tokenizer and a tiny trained generator."""
    d = tmp_path_factory.mktemp("bad")
    src = jsonl_source(d / "src")
    assert main(["prepare", "--format", "jsonl", "--input", str(src), "--output", str(d / "ds")]) == 0
    synthetic_catalogue(SyntheticConfig(num_items=120, num_users=150, num_topics=6, seed=0)).save(d / "syn")
    assert main(["tokenize", "--dataset", str(d / "syn"), "--tokenizer", "rqkmeans", "--modalities", "text",
                 "image", "--output", str(d / "tok"), "--tokenize.rqkmeans.codebook_size", "8",
                 "--encode.cache_dir", ""]) == 0
    assert main(["train", "--dataset", str(d / "syn"), "--tokenizer-dir", str(d / "tok"), "--output",
                 str(d / "run"), "--train.max_steps", "6", "--train.eval_every", "3", *TINY]) == 0
    assert main(["rank", "train", "--dataset", str(d / "syn"), "--tokenizer-dir", str(d / "tok"), "--output",
                 str(d / "rank"), *RANK]) == 0
    return {"root": d, "src": src, "ds": d / "ds", "syn": d / "syn", "tok": d / "tok", "run": d / "run",
            "model": d / "run" / "best", "rank": d / "rank", "ranker": d / "rank" / "best"}


def snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@dataclass
class Case:
    id: str
    args: Callable[[dict[str, Path], Path], list[str]]
    expect: list[str]
    """Substrings of the error line: the file, line or field it names, and the gist."""
    setup: Callable[[dict[str, Path], Path], None] | None = None
    extra: list[str] = field(default_factory=list)


def copy(src_key: str, name: str):
    def setup(b: dict[str, Path], t: Path) -> None:
        shutil.copytree(b[src_key], t / name)
    return setup


def corrupt(src_key: str, name: str, file: str, data: bytes = b"\x00garbage{"):
    def setup(b: dict[str, Path], t: Path) -> None:
        shutil.copytree(b[src_key], t / name)
        (t / name / file).write_bytes(data)
    return setup


def foreign_dir(name: str):
    def setup(b: dict[str, Path], t: Path) -> None:
        (t / name).mkdir()
        (t / name / "thesis.tex").write_text("my only copy")
    return setup


def write(name: str, text: str):
    def setup(b: dict[str, Path], t: Path) -> None:
        (t / name).parent.mkdir(parents=True, exist_ok=True)
        (t / name).write_text(text, encoding="utf-8")
    return setup


def steps(*fns):
    def setup(b, t):
        for f in fns:
            f(b, t)
    return setup


def prep(src: str, out: str, *extra: str):
    return lambda b, t: ["prepare", "--format", "jsonl", "--input", src.format(**b, t=t),
                         "--output", out.format(**b, t=t), *extra]


def tok(ds: str, out: str, *extra: str):
    return lambda b, t: ["tokenize", "--dataset", ds.format(**b, t=t), "--output", out.format(**b, t=t), *extra]


def train(tok_dir: str, out: str, *extra: str, ds: str = "{syn}"):
    return lambda b, t: ["train", "--dataset", ds.format(**b, t=t), "--tokenizer-dir", tok_dir.format(**b, t=t),
                         "--output", out.format(**b, t=t), "--train.max_steps", "6", "--train.eval_every", "3",
                         *TINY, *extra]


RANK = ["--ranker.epochs", "1", "--ranker.d_model", "16", "--ranker.batch_size", "64"]


def rank_train(tok_dir: str, out: str, *extra: str, ds: str = "{syn}"):
    return lambda b, t: ["rank", "train", "--dataset", ds.format(**b, t=t), "--tokenizer-dir",
                         tok_dir.format(**b, t=t), "--output", out.format(**b, t=t), *RANK, *extra]


def rank_eval(ranker: str, *extra: str, ds: str = "{syn}"):
    return lambda b, t: ["rank", "evaluate", "--dataset", ds.format(**b, t=t), "--ranker", ranker.format(**b, t=t),
                         *[e.format(**b, t=t) for e in extra]]


def cmd(*parts: str):
    return lambda b, t: [p.format(**b, t=t) for p in parts]


CASES = [
    # ---------------------------------------------------------------- prepare: nothing is lost
    Case("prepare-output-is-input", prep("{src}", "{src}"), ["src", "input"]),
    Case("prepare-output-inside-is-parent-of-input", prep("{src}", "{root}"), ["input"]),
    Case("prepare-output-foreign-dir", prep("{src}", "{t}/mine"), ["mine", "did not write"],
         setup=foreign_dir("mine")),
    Case("prepare-output-is-a-file", prep("{src}", "{t}/notes.txt"), ["notes.txt", "not a directory"],
         setup=write("notes.txt", "keep me")),
    Case("prepare-other-kind-without-overwrite", prep("{src}", "{t}/tok"), ["tok", "--overwrite"],
         setup=copy("tok", "tok")),
    Case("prepare-would-delete-nested-output", prep("{src}", "{t}/ds"), ["embeddings", "--overwrite"],
         setup=lambda b, t: (shutil.copytree(b["ds"], t / "ds"),
                             main(["encode", "--dataset", str(t / "ds"), "--modalities", "collaborative",
                                   "--encode.cache_dir", ""]))),
    Case("prepare-feature-inside-output",
         lambda b, t: prep("{src}", "{t}/ds", "--features", f"x={t}/ds/f.npy")(b, t), ["input"],
         setup=lambda b, t: (shutil.copytree(b["ds"], t / "ds"), np.save(t / "ds" / "f.npy", np.zeros((20, 3), np.float32)))),
    Case("prepare-feature-name-escapes", prep("{src}", "{t}/out", "--features", "../../evil={t}/f.npy"),
         ["evil", "feature"], setup=lambda b, t: np.save(t / "f.npy", np.zeros((20, 3), np.float32))),
    Case("prepare-pickled-feature", prep("{src}", "{t}/out", "--features", "obj={t}/f.npy"), ["f.npy"],
         setup=lambda b, t: np.save(t / "f.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)),
    Case("prepare-feature-wrong-rows", prep("{src}", "{t}/out", "--features", "x={t}/f.npy"), ["f.npy"],
         setup=lambda b, t: np.save(t / "f.npy", np.zeros((7, 3), np.float32))),
    Case("prepare-missing-input", prep("{t}/nowhere", "{t}/out"), ["nowhere"]),
    Case("prepare-malformed-json-line", prep("{t}/s", "{t}/out"), ["items.jsonl:3"],
         setup=lambda b, t: (shutil.copytree(b["src"], t / "s"),
                             (t / "s" / "items.jsonl").write_text('{"item_id": "a"}\n{"item_id": "b"}\n{"item_id": \n'))),
    Case("prepare-unknown-item", prep("{t}/s", "{t}/out"), ["sequences.jsonl:1", "zzz"],
         setup=lambda b, t: (shutil.copytree(b["src"], t / "s"),
                             write_jsonl(t / "s" / "sequences.jsonl", [{"user_id": "a", "items": ["i1", "zzz", "i2"]}]))),
    Case("prepare-nested-title", prep("{t}/s", "{t}/out"), ["items.jsonl", "title"],
         setup=lambda b, t: (jsonl_source(t / "s"), write_jsonl(t / "s" / "items.jsonl", [
             {"item_id": f"i{k}", "title": {"en": "x"} if k == 2 else f"Item {k}"} for k in range(20)]))),
    Case("prepare-min-rating-without-ratings", prep("{src}", "{t}/out", "--min-rating", "4"), ["rating"]),
    Case("prepare-kcore-on-jsonl", prep("{src}", "{t}/out", "--kcore", "3"), ["kcore"]),
    # ---------------------------------------------------------------- settings refused up front
    Case("config-schedule-typo", cmd("config", "--train.schedule", "cosinee"), ["train.schedule", "cosinee"]),
    Case("config-metric-not-in-ks", cmd("config", "--train.metric", "ndcg@100"), ["train.metric"]),
    Case("config-ks-zero", cmd("config", "--eval.ks", "0"), ["eval.ks"]),
    Case("config-num-heads-zero", cmd("config", "--generator.num_heads", "0"), ["generator.num_heads"]),
    Case("config-codebook-zero", cmd("config", "--tokenize.mmq.codebook_size", "0"), ["tokenize.mmq.codebook_size"]),
    Case("config-batch-zero", cmd("config", "--train.batch_size", "0"), ["train.batch_size"]),
    Case("config-negative-lr", cmd("config", "--train.lr", "-1"), ["train.lr"]),
    Case("config-beam-below-k", cmd("config", "--decode.beam_width", "5"), ["beam_width"]),
    Case("config-not-a-number", cmd("config", "--seed", "many"), ["seed", "many"]),
    Case("config-unknown-key", cmd("config", "--train.lr_max", "1"), ["train.lr_max", "unknown"]),
    Case("config-yaml-python-tag", cmd("config", "--config", "{t}/c.yaml"), ["c.yaml"],
         setup=write("c.yaml", "seed: !!python/object/apply:os.system ['touch PWNED']\n")),
    Case("config-yaml-not-mapping", cmd("config", "--config", "{t}/c.yaml"), ["c.yaml", "mapping"],
         setup=write("c.yaml", "- 1\n- 2\n")),
    Case("config-file-missing", cmd("config", "--config", "{t}/none.yaml"), ["none.yaml", "not found"]),
    Case("config-override-without-value", cmd("config", "--seed"), ["--seed", "value"]),
    # ---------------------------------------------------------------- encode / tokenize
    Case("encode-unknown-modality", cmd("encode", "--dataset", "{ds}", "--modalities", "smell"), ["smell"]),
    Case("encode-missing-dataset", cmd("encode", "--dataset", "{t}/nothing"), ["nothing"]),
    Case("encode-corrupted-dataset", cmd("encode", "--dataset", "{t}/ds", "--modalities", "collaborative"),
         ["items.parquet", "mmq prepare"], setup=corrupt("ds", "ds", "items.parquet")),
    Case("tokenize-no-attributes", tok("{ds}", "{t}/tok"), ["attribute", "modalities"]),
    Case("tokenize-output-is-dataset", tok("{ds}", "{ds}", "--modalities", "collaborative"), ["input"]),
    Case("tokenize-output-foreign", tok("{ds}", "{t}/mine", "--modalities", "collaborative"), ["mine"],
         setup=foreign_dir("mine")),
    Case("tokenize-external-without-table", tok("{ds}", "{t}/tok", "--tokenizer", "external"),
         ["tokenize.external.path"]),
    Case("tokenize-external-malformed", tok("{ds}", "{t}/tok", "--tokenizer", "external", "--sid-table",
                                            "{t}/sids.json"), ["sids.json"], setup=write("sids.json", "{\"i0\": [1, 2\n")),
    # ---------------------------------------------------------------- train
    Case("train-missing-tokenizer", train("{t}/none", "{t}/run"), ["none", "mmq tokenize"]),
    Case("train-corrupted-sid-table", train("{t}/tok", "{t}/run"), ["tok"],
         setup=corrupt("tok", "tok", "sid_table.json")),
    Case("train-tokenizer-of-other-dataset", train("{tok}", "{t}/run", ds="{ds}"), ["tok", "items"]),
    Case("train-output-foreign", train("{tok}", "{t}/mine"), ["mine", "did not write"], setup=foreign_dir("mine")),
    Case("train-changed-settings", train("{tok}", "{t}/run", "--train.lr", "0.005"), ["run", "train.lr"],
         setup=copy("run", "run")),
    Case("train-corrupted-checkpoint", train("{tok}", "{t}/run", "--train.max_steps", "9"), ["checkpoint"],
         setup=lambda b, t: (shutil.copytree(b["run"], t / "run"),
                             (t / "run" / "checkpoint" / "trainer_state.json").write_text("{\"step\": "),
                             _refingerprint(t / "run", {"max_steps": 9}))),
    Case("train-bad-list-value", train("{tok}", "{t}/run", "--eval.ks", "5", "x"), ["eval.ks"]),
    # ---------------------------------------------------------------- evaluate / baseline
    Case("evaluate-missing-model", cmd("evaluate", "--dataset", "{syn}", "--model", "{t}/nomodel"), ["nomodel"]),
    Case("evaluate-corrupted-weights", cmd("evaluate", "--dataset", "{syn}", "--model", "{t}/m"),
         ["m", "mmq train"], setup=corrupt("model", "m", "model.safetensors")),
    Case("evaluate-corrupted-generator-json", cmd("evaluate", "--dataset", "{syn}", "--model", "{t}/m"),
         ["generator.json"], setup=corrupt("model", "m", "generator.json", b"{not json")),
    Case("evaluate-other-dataset", cmd("evaluate", "--dataset", "{ds}", "--model", "{model}"), ["best"]),
    Case("evaluate-report-over-user-file", cmd("evaluate", "--dataset", "{syn}", "--model", "{model}",
                                               "--report", "{t}/notes"), ["report", "notes"],
         setup=write("notes.md", "my notes")),
    Case("baseline-unknown-modality", cmd("baseline", "--dataset", "{ds}", "--method", "knn", "--modality", "smell"),
         ["smell"]),
    Case("baseline-too-short-histories", cmd("baseline", "--dataset", "{t}/short", "--method", "popularity"),
         ["3"], setup=lambda b, t: main(["prepare", "--format", "jsonl", "--input",
                                         str(jsonl_source(t / "s2", length=2)), "--output", str(t / "short")])),
    # ---------------------------------------------------------------- rank train / evaluate
    Case("rank-train-missing-tokenizer", rank_train("{t}/none", "{t}/r"), ["none", "mmq tokenize"]),
    Case("rank-train-tokenizer-of-other-dataset", rank_train("{tok}", "{t}/r", ds="{ds}"), ["tok", "items"]),
    Case("rank-train-output-foreign", rank_train("{tok}", "{t}/mine"), ["mine", "did not write"],
         setup=foreign_dir("mine")),
    Case("rank-train-changed-settings", rank_train("{tok}", "{t}/r", "--ranker.lr", "0.005"), ["r", "ranker.lr"],
         setup=copy("rank", "r")),
    Case("rank-train-corrupted-checkpoint", rank_train("{tok}", "{t}/r", "--ranker.epochs", "2"), ["checkpoint"],
         setup=lambda b, t: (shutil.copytree(b["rank"], t / "r"),
                             (t / "r" / "checkpoint" / "state.json").write_text("{\"epoch\": "))),
    Case("rank-train-bad-representation", rank_train("{tok}", "{t}/r", "--ranker.representation", "ids"),
         ["ranker.representation"]),
    Case("rank-train-bad-dropout", rank_train("{tok}", "{t}/r", "--ranker.id_dropout", "1"), ["ranker.id_dropout"]),
    Case("rank-evaluate-missing-ranker", rank_eval("{t}/norank"), ["norank", "mmq rank train"]),
    Case("rank-evaluate-corrupted-weights", rank_eval("{t}/r"), ["r", "mmq rank train"],
         setup=corrupt("ranker", "r", "model.safetensors")),
    Case("rank-evaluate-corrupted-json", rank_eval("{t}/r"), ["ranker.json"],
         setup=corrupt("ranker", "r", "ranker.json", b"{not json")),
    Case("rank-evaluate-other-dataset", rank_eval("{ranker}", ds="{ds}"), ["best", "not this dataset"]),
    Case("rank-evaluate-generator-not-a-model", rank_eval("{ranker}", "--model", "{tok}"), ["tok"]),
    Case("rank-evaluate-few-candidates", rank_eval("{ranker}", "--model", "{model}", "--candidates", "5"),
         ["candidates", "20"]),
    Case("rank-evaluate-report-over-user-file", rank_eval("{ranker}", "--report", "{t}/notes"), ["report", "notes"],
         setup=write("notes.json", "{}")),
    # ---------------------------------------------------------------- recommend
    Case("recommend-neither-model-nor-ranker", cmd("recommend", "--history", "syn00001"), ["model", "ranker"]),
    Case("recommend-ranker-unknown-item", cmd("recommend", "--ranker", "{ranker}", "--history", "nope"), ["nope"]),
    Case("recommend-ranker-not-a-ranker", cmd("recommend", "--ranker", "{model}", "--history", "syn00001"),
         ["best", "mmq rank train"]),
    Case("recommend-negative-k", cmd("recommend", "--model", "{model}", "--history", "syn00001", "--k", "-3"),
         ["--k"]),
    Case("recommend-zero-k", cmd("recommend", "--model", "{model}", "--history", "syn00001", "--k", "0"), ["--k"]),
    Case("recommend-history-string", cmd("recommend", "--model", "{model}", "--users-file", "{t}/u.jsonl"),
         ["u.jsonl:2", "history"], setup=write("u.jsonl", '{"user_id": "a", "history": ["syn00001"]}\n'
                                                         '{"user_id": "b", "history": "12"}\n')),
    Case("recommend-users-file-malformed", cmd("recommend", "--model", "{model}", "--users-file", "{t}/u.jsonl"),
         ["u.jsonl:1"], setup=write("u.jsonl", '{"user_id": "a", "history": [\n')),
    Case("recommend-unknown-item", cmd("recommend", "--model", "{model}", "--history", "nope"), ["nope"]),
    Case("recommend-nothing-given", cmd("recommend", "--model", "{model}"), ["history"]),
    Case("recommend-not-a-model", cmd("recommend", "--model", "{tok}", "--history", "syn00001"), ["tok"]),
    # ---------------------------------------------------------------- demo
    Case("demo-output-foreign", cmd("demo", "--output", "{t}/mine"), ["mine", "did not write"],
         setup=foreign_dir("mine")),
    Case("demo-bad-setting", cmd("demo", "--output", "{t}/d", "--generator.dropout", "1.5"), ["generator.dropout"]),
]


def _refingerprint(run: Path, train_changes: dict) -> None:
    """Make the copied run's fingerprint agree with the case's settings, so the resume is attempted."""
    fp = json.loads((run / "fingerprint.json").read_text())
    fp["train"].update(train_changes)
    (run / "fingerprint.json").write_text(json.dumps(fp))


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, base, tmp_path, capsys):
    if case.setup:
        case.setup(base, tmp_path)
    capsys.readouterr()
    before = snapshot(base["root"], tmp_path)
    code, err = run_cli(case.args(base, tmp_path), capsys)
    assert code == 2, f"exit {code}; stderr: {err[-1500:]}"
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err[-1500:]
    for s in case.expect:
        assert s in lines[0], f"{s!r} not in: {lines[0]}"
    assert snapshot(base["root"], tmp_path) == before, "an input or unrelated file changed"


def test_case_count():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


def test_error_from_a_real_process_has_no_traceback(base, tmp_path):
    """The installed entry point, as a user runs it: one line on stderr, exit code 2."""
    res = subprocess.run([sys.executable, "-m", "mmq_rec.cli", "prepare", "--format", "jsonl", "--input",
                          str(base["src"]), "--output", str(base["src"])], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("mmq prepare: error:")


def test_stray_temporary_folders_are_removed(base, tmp_path):
    """A kill during an atomic write leaves `.NAME.<pid>.*.tmp`; the next write removes it."""
    from mmq_rec.recdata.io import atomic_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stray = tmp_path / f".out.{dead}.abc.tmp"
    stray.mkdir()
    (stray / "half.bin").write_bytes(b"x")
    with atomic_dir(tmp_path / "out", "test") as d:
        (d / "a.txt").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_only_our_outputs(base, tmp_path, capsys):
    shutil.copytree(base["tok"], tmp_path / "tok")
    args = prep(str(base["src"]), "{t}/tok")(base, tmp_path)
    assert main([*args, "--overwrite"]) == 0
    assert (tmp_path / "tok" / "items.parquet").exists()
    foreign_dir("mine")(base, tmp_path)
    assert run_cli([*prep(str(base["src"]), "{t}/mine")(base, tmp_path), "--overwrite"], capsys)[0] == 2
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "my only copy"


def test_sweep_spares_live_and_lookalike_siblings_and_restores_an_orphaned_old(tmp_path):
    from mmq_rec.recdata.io import sweep_stale

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    lookalike = tmp_path / f".out.2024.{dead}.abc.tmp"  # a temp of a sibling named `out.2024`
    lookalike.mkdir()
    old = tmp_path / f".out.old-{dead}"  # killed between atomic_dir's two renames: the only copy
    old.mkdir()
    (old / "model.bin").write_text("weights")
    sweep_stale(tmp_path / "out")
    assert lookalike.exists() and (tmp_path / "out" / "model.bin").read_text() == "weights"


def test_overwrite_starts_an_identical_run_afresh(base, tmp_path, capsys):
    shutil.copytree(base["run"], tmp_path / "run")
    (tmp_path / "run" / "checkpoint" / "trainer_state.json").write_text("{broken")
    args = train("{tok}", "{t}/run")(base, tmp_path)
    assert run_cli(args, capsys)[0] == 2  # damaged: refused, and says --overwrite
    assert main([*args, "--overwrite", "--json"]) == 0
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["finished"]
