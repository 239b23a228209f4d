"""Configuration, the command line, atomic writes and the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmq.cli import main
from mmq.config import load_config, parse_overrides, to_yaml
from recdata import DataError
from recdata.io import atomic_dir, write_json
from recdata.schema import RecDataset
from recdata.synthetic import SyntheticConfig, synthetic_catalogue

SMALL = ["--synthetic.num_items", "300", "--synthetic.num_users", "400", "--synthetic.num_topics", "8",
         "--encode.cache_dir", "", "--demo.tokenizer_epochs", "5", "--demo.train_steps", "60", "--demo.eval_every",
         "30", "--decode.valid_users", "200"]


def test_defaults_yaml_then_cli(tmp_path):
    (tmp_path / "c.yaml").write_text("seed: 3\neval:\n  ks: [1, 5]\n  buckets:\n    head_fraction: 0.1\n")
    cfg = load_config(tmp_path / "c.yaml", ["--eval.ks", "5,10", "--encode.text.batch_size=7"])
    assert cfg.seed == 3 and cfg.eval.ks == [5, 10] and cfg.eval.buckets.head_fraction == 0.1
    assert cfg.encode.text.batch_size == 7 and cfg.data.max_history == 20
    assert load_config().eval.ks == [5, 10, 20]


@pytest.mark.parametrize("text,match", [
    ("eval:\n  kz: [1]\n", r"c.yaml: field 'eval.kz': unknown configuration key \(valid here: buckets"),
    ("seed: many\n", r"c.yaml: field 'seed': expected int, got 'many'"),
    ("seed: [1\n", r"c.yaml:2: invalid YAML"),
    ("eval:\n  buckets:\n    head_fraction: 1.5\n", r"head_fraction must be in \(0, 1\)"),
])
def test_bad_config_is_named(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(DataError, match=match):
        load_config(tmp_path / "c.yaml")


def test_overrides_parse():
    assert parse_overrides(["--a.b", "3", "--c=x,y", "--d-e", "null"]) == {"a": {"b": 3}, "c": "x,y", "d_e": None}
    with pytest.raises(DataError, match="needs a value"):
        parse_overrides(["--seed"])


def test_config_command_prints_documented_yaml(capsys):
    assert main(["config", "--seed", "9"]) == 0
    out = capsys.readouterr().out
    assert "seed: 9" in out and "# Items of history before each target" in out
    assert to_yaml(load_config()).count("head_fraction") == 1


def test_cli_unknown_override_fails(capsys):
    assert main(["config", "--nope.x", "1"]) == 2
    assert "unknown configuration key" in capsys.readouterr().err


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_synthetic_catalogue_is_deterministic_and_planted():
    a = synthetic_catalogue(SyntheticConfig(num_items=200, num_users=100, seed=1))
    b = synthetic_catalogue(SyntheticConfig(num_items=200, num_users=100, seed=1))
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences(), b.sequences(), strict=True))
    assert np.array_equal(a.features["text"], b.features["text"])
    assert min(len(s) for s in a.sequences()) >= 5
    # a user's items concentrate on few topics (drawn from latent interests)
    topic = np.array(a.items["latent_topic"])
    top_share = np.mean([np.bincount(topic[s]).max() / len(s) for s in a.sequences()])
    assert top_share > 0.4


def test_demo_runs_and_is_deterministic(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "a"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC DATA" in out and "kNN(collaborative)" in out and "MMQ + generator" in out
    assert "[tokenize] tokenizer mmq" in out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["results"]["popularity"]["all"]["users"] == 400
    assert report["results"]["MMQ + generator"]["all"]["invalid_rate"] == 0.0
    assert (tmp_path / "a" / "generator" / "best" / "model.safetensors").exists()
    assert (tmp_path / "a" / "report.md").read_text().startswith("# MMQ-Rec demo (synthetic data)")
    assert RecDataset.load(tmp_path / "a" / "data").num_items == 300
    # planted structure: the image features separate image styles, the text features do not
    s = report["modality_structure"]
    assert s["image"]["image_style"] > 0.8 and s["text"]["image_style"] < 0.5
    assert main(["demo", "--output", str(tmp_path / "b"), "--json", *SMALL]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["synthetic"] is True and again["test"] == report["results"]


def test_encode_command(tmp_path, capsys):
    ds = synthetic_catalogue(SyntheticConfig(num_items=120, num_users=80, seed=0))
    ds.save(tmp_path / "ds")
    assert main(["encode", "--dataset", str(tmp_path / "ds"), "--modalities", "image", "attributes",
                 "collaborative", "--json", "--encode.cache_dir", ""]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modalities"]["image"] == [120, 64]
    m = np.load(tmp_path / "ds" / "embeddings" / "collaborative.npy")
    assert m.shape[0] == 120 and m.dtype == np.float32
    assert main(["encode", "--dataset", str(tmp_path / "ds"), "--modalities", "smell"]) == 2
    assert "unknown modality 'smell'" in capsys.readouterr().err
