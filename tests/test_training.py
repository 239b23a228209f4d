"""Generator training: resume after a kill, two-process `accelerate launch`, recommend/evaluate commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmq_rec.cli import main
from mmq_rec.recdata.synthetic import SyntheticConfig, synthetic_catalogue

TINY = ["--generator.num_layers", "2", "--generator.num_decoder_layers", "2", "--generator.d_model", "32",
        "--generator.d_ff", "64", "--generator.num_heads", "2", "--generator.d_kv", "16",
        "--train.batch_size", "32", "--train.warmup_steps", "5", "--train.lr", "3e-3", "--train.patience", "100",
        "--decode.valid_users", "100", "--decode.batch_size", "100", "--train.log_every", "5"]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    synthetic_catalogue(SyntheticConfig(num_items=150, num_users=200, num_topics=6, seed=0)).save(d / "ds")
    assert main(["tokenize", "--dataset", str(d / "ds"), "--tokenizer", "rqkmeans", "--modalities", "text",
                 "image", "--output", str(d / "tok"), "--tokenize.rqkmeans.codebook_size", "8", "--json",
                 "--encode.cache_dir", ""]) == 0
    return d


def train_cmd(d: Path, out: Path, steps: int, every: int) -> list[str]:
    return [sys.executable, "-m", "mmq_rec.cli", "train", "--dataset", str(d / "ds"), "--tokenizer-dir", str(d / "tok"),
            "--output", str(out), "--json", "--train.max_steps", str(steps), "--train.eval_every", str(every),
            *TINY]


def test_killed_run_resumes_and_matches_uninterrupted(tokenized, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = subprocess.run(train_cmd(tokenized, tmp_path / "full", 120, 20), capture_output=True, text=True, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(train_cmd(tokenized, tmp_path / "cut", 120, 20), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    state_file = tmp_path / "cut" / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 300
    while not state_file.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state_file.read_text())["step"]
    assert killed_at < 120, "the run finished before it could be interrupted"
    again = subprocess.run(train_cmd(tokenized, tmp_path / "cut", 120, 20), capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from step {killed_at}" in again.stdout + again.stderr
    a = json.loads((tmp_path / "full" / "checkpoint" / "trainer_state.json").read_text())
    b = json.loads((tmp_path / "cut" / "checkpoint" / "trainer_state.json").read_text())
    assert b["finished"] and b["step"] == a["step"] == 120
    assert [h["step"] for h in b["history"]] == [20, 40, 60, 80, 100, 120]
    assert b["history"] == a["history"]  # same validation numbers as the uninterrupted run
    assert (tmp_path / "cut" / "best" / "model.safetensors").exists()


# Two processes on CPU through torchrun (`accelerate launch --cpu --num_processes 2` starts a
# single process on a machine without GPUs); the training code sees the same process group.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m"]


def test_two_process_launch(tokenized, tmp_path):
    res = subprocess.run([*TORCHRUN, *train_cmd(tokenized, tmp_path / "ddp", 20, 10)[2:]], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 20 and len(state["history"]) == 2
    assert (tmp_path / "ddp" / "best" / "config.json").exists()


def test_train_evaluate_recommend_commands(tokenized, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_cmd(tokenized, out, 30, 15)[3:]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["steps"] == 30 and trained["best_step"] in (15, 30)
    assert list((out / "logs").rglob("events.out.tfevents*")), "no TensorBoard log written"
    assert main(["evaluate", "--dataset", str(tokenized / "ds"), "--model", str(out / "best"), "--json",
                 "--report", str(tmp_path / "rep")]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["users"] == 200 and ev["metrics"]["all"]["invalid_rate"] == 0.0
    assert ev["metrics"]["head"]["users"] + ev["metrics"]["tail"]["users"] == 200
    assert (tmp_path / "rep.md").read_text().startswith("# Generator evaluation")
    assert main(["recommend", "--model", str(out / "best"), "--history", "syn00003", "syn00010", "--k", "7",
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)["recommendations"]
    assert len(rec) == 7 and len({r["item_id"] for r in rec}) == 7
    assert all(r["title"] and r["sid"].startswith("<s0_") for r in rec)
    assert rec == sorted(rec, key=lambda r: -r["score"])
    users = tmp_path / "users.jsonl"
    users.write_text('{"user_id": "a", "history": ["syn00001"]}\n{"user_id": "b", "history": ["syn00002", "syn00004"]}\n')
    assert main(["recommend", "--model", str(out / "best"), "--users-file", str(users), "--k", "3", "--json"]) == 0
    assert [u["user_id"] for u in json.loads(capsys.readouterr().out)] == ["a", "b"]
    assert main(["recommend", "--model", str(out / "best"), "--history", "nope"]) == 2
    assert "unknown item id(s) ['nope']" in capsys.readouterr().err


def test_hashed_user_tokens(tokenized, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_cmd(tokenized, out, 20, 10)[3:] + ["--generator.user_buckets", "16",
                                                         "--generator.input_mode", "item"]) == 0
    capsys.readouterr()
    info = json.loads((out / "best" / "generator.json").read_text())
    assert info["user_buckets"] == 16
    assert main(["evaluate", "--dataset", str(tokenized / "ds"), "--model", str(out / "best"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["all"]["invalid_rate"] == 0.0
    history = ["--model", str(out / "best"), "--history", "syn00003", "syn00010", "--k", "5", "--json"]
    assert main(["recommend", *history]) == 2
    assert "user id" in capsys.readouterr().err
    scores = {}
    for user in ("u0001", "u0002"):
        assert main(["recommend", *history, "--user", user]) == 0
        scores[user] = [r["score"] for r in json.loads(capsys.readouterr().out)["recommendations"]]
    assert scores["u0001"] != scores["u0002"]  # the user token reaches the model


def test_time_budget_shapes_the_run(tokenized, tmp_path, capsys):
    """A 2-minute budget on a small dataset: the run is laid out from its measured step time, so
    it leaves warmup, decays, validates several times and ends inside the budget. The defaults
    (warmup 500, validation every 1000 of 20,000 steps) would never validate on a slow machine."""
    out = tmp_path / "budget"
    args = ["train", "--dataset", str(tokenized / "ds"), "--tokenizer-dir", str(tokenized / "tok"),
            "--output", str(out), "--json", "--train.max_minutes", "2", *TINY, "--train.warmup_steps", "500",
            "--train.max_steps", "1000000"]
    t0 = time.perf_counter()
    assert main(args) == 0
    elapsed = time.perf_counter() - t0
    run = json.loads(capsys.readouterr().out)
    plan, history = run["plan"], run["history"]
    # laid out with warmup at most a tenth of the run; re-fits at each validation may shorten the run
    # after warmup has passed, so the final plan only keeps warmup inside it
    assert plan["calibrated"] and plan["warmup_steps"] < plan["total_steps"]
    assert run["steps"] > plan["warmup_steps"], "never left warmup"
    assert len(history) >= 3, history
    assert elapsed < 2 * 60 + 45
    # the learning rate decayed: the last logged lr is below the peak
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["plan"] == plan


def test_baseline_command_matches_evaluate_table(tokenized, capsys):
    ds = str(tokenized / "ds")
    assert main(["baseline", "--dataset", ds, "--method", "popularity", "--json"]) == 0
    pop = json.loads(capsys.readouterr().out)
    assert pop["users"] == 200 and pop["metrics"]["head"]["users"] + pop["metrics"]["tail"]["users"] == 200
    assert main(["baseline", "--dataset", ds, "--method", "knn", "--modality", "image", "--split", "valid"]) == 0
    out = capsys.readouterr().out
    assert "| knn(image) | 200 |" in out and "[long_tail]" in out


def test_pipeline_api_is_what_the_cli_runs(tokenized, tmp_path):
    """The README's Python API: the same object the command line calls, same numbers."""
    from mmq_rec.pipeline import Pipeline

    pipe = Pipeline.from_config(overrides=[*TINY, "--train.max_steps", "10", "--train.eval_every", "5"],
                                show_progress=False)
    ds = pipe.dataset(tokenized / "ds")
    run = pipe.train(ds, tokenized / "tok", tmp_path / "gen")
    assert run["steps"] == 10 and len(run["history"]) == 2
    test = pipe.evaluate(ds, run["best_model"])
    recs = pipe.recommend(run["best_model"], [["syn00001", "syn00002"]], k=4)
    assert len(recs[0]) == 4 and test["metrics"]["all"]["invalid_rate"] == 0.0
    assert pipe.baseline(ds, "popularity")["metrics"]["all"]["users"] == test["users"]
    from mmq_rec.config import load_config

    stored = load_config(tmp_path / "gen" / "config.yaml")  # the stored configuration loads back as is
    assert stored.train.max_steps == 10 and stored.generator.d_model == 32


def test_split_settings_travel_with_the_model(tokenized, tmp_path, capsys):
    """A generator trained under one split is never evaluated under another: a cold-start
    evaluation would otherwise score items the model trained on as cold."""
    out = tmp_path / "run"
    assert main(train_cmd(tokenized, out, 4, 2)[3:]) == 0
    capsys.readouterr()
    info = json.loads((out / "best" / "generator.json").read_text())
    assert info["split"] == {"max_history": 20, "cold_start_fraction": 0.0, "seed": None}
    base = ["evaluate", "--dataset", str(tokenized / "ds"), "--model", str(out / "best")]
    assert main([*base, "--eval.cold_start_fraction", "0.1"]) == 2
    assert "eval.cold_start_fraction" in capsys.readouterr().err
    assert main([*base, "--data.max_history", "10"]) == 2
    assert "data.max_history" in capsys.readouterr().err


def launch_2(tokenized, out, *extra):
    return subprocess.run([*TORCHRUN, *train_cmd(tokenized, out, 20, 10)[2:], *extra], capture_output=True,
                          text=True, timeout=900)


def test_two_processes_schedule_follows_optimizer_steps(tokenized, tmp_path):
    """accelerate steps a prepared scheduler once per process; ours steps once per optimizer
    step, so the learning rate at step 10 of 20 is the single-process one. Item mode: the
    all-position objective under DDP, validation split across the ranks."""
    from mmq_rec.generator.train import TrainConfig, _lr_lambda, initial_plan

    res = launch_2(tokenized, tmp_path / "ddp", "--generator.input_mode", "item", "--train.batch_size", "8")
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / "checkpoint" / "trainer_state.json").read_text())
    cfg = TrainConfig(max_steps=20, warmup_steps=5, lr=3e-3)
    assert state["step"] == 20 and [h["step"] for h in state["history"]] == [10, 20]
    assert state["history"][0]["lr"] == pytest.approx(3e-3 * _lr_lambda(cfg, initial_plan(cfg))(10))
    assert (tmp_path / "ddp" / "checkpoint" / "rng_rank1.safetensors").exists(), "rank 1's state was not saved"


def test_two_processes_time_budget_stops_cleanly(tokenized, tmp_path):
    res = launch_2(tokenized, tmp_path / "ddp", "--train.max_minutes", "0.25", "--train.max_steps", "100000")
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / "checkpoint" / "trainer_state.json").read_text())
    assert state["finished"] and state["plan"]["calibrated"] and len(state["history"]) >= 2


def test_refit_plan_follows_the_machine_speed():
    """After calibration, each validation re-fits the run's length to the time left at the step
    cost measured so far: shorter when the machine slowed down, longer (up to max_steps) when it
    sped up; the cadence stays, and a warmup already passed is not moved."""
    from mmq_rec.generator.train import TrainConfig, refit_plan

    cfg = TrainConfig(max_minutes=10, max_steps=5000, warmup_steps=500)
    plan = {"total_steps": 1000, "warmup_steps": 100, "eval_every": 200, "eval_from": 10, "calibrated": True}
    # 210 steps in 210 s of steps (1 s/step, as calibrated) and 300 s elapsed: 4 validations of 10 s left
    same = refit_plan(cfg, plan, 210, 210.0, 300.0, 10.0)
    assert same["total_steps"] == 210 + int((600 - 300 - 40) / 1.0) and same["eval_every"] == 200
    assert same["warmup_steps"] == 100 and same["eval_from"] == 10  # warmup passed: kept
    slow = refit_plan(cfg, plan, 210, 420.0, 500.0, 10.0)  # 2 s/step, 500 s gone: 60 s of steps left
    assert slow["total_steps"] == 210 + int((600 - 500 - 40) / 2.0) == 240
    assert refit_plan(cfg, plan, 210, 210.0, 700.0, 10.0)["total_steps"] == 210  # no time left: stop here
    fast = refit_plan(cfg, plan, 210, 21.0, 300.0, 10.0)  # 0.1 s/step
    assert fast["total_steps"] == min(5000, 210 + int(260 / 0.1)) == 2810
    early = refit_plan(cfg, {**plan, "warmup_steps": 400}, 50, 500.0, 500.0, 10.0)  # in warmup, 10 s/step
    assert early["total_steps"] < 400 and early["warmup_steps"] == max(1, early["total_steps"] // 10)
