"""Configuration, the command line, atomic writes and the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmq_rec.cli import main
from mmq_rec.config import load_config, parse_overrides, to_yaml
from mmq_rec.recdata import DataError
from mmq_rec.recdata.io import atomic_dir, write_json
from mmq_rec.recdata.schema import RecDataset
from mmq_rec.recdata.synthetic import SyntheticConfig, synthetic_catalogue

# the demo preset, made smaller still
SMALL = ["--synthetic.num_items", "300", "--synthetic.num_users", "400", "--synthetic.num_topics", "8",
         "--encode.cache_dir", "", "--tokenize.mmq.epochs", "5", "--train.max_steps", "60", "--train.eval_every",
         "30", "--train.warmup_steps", "6", "--decode.valid_users", "200", "--ranker.epochs", "3"]


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
    ("eval:\n  buckets:\n    head_fraction: 1.5\n",
     r"c.yaml: field 'eval.buckets.head_fraction': must be in \(0, 1\) \(got 1.5\)$"),
    ("train:\n  schedule: cosinee\n", r"c.yaml: field 'train.schedule': must be one of cosine, inverse_sqrt"),
])
def test_bad_config_is_named(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(DataError, match=match):
        load_config(tmp_path / "c.yaml")


def test_text_settings_keep_numbers_as_typed():
    cfg = load_config(overrides=["--output_dir", "0123", "--tokenize.external.path", "1.50", "--train.lr", "1e-3",
                                 "--seed", "7"])
    assert cfg.output_dir == "0123" and cfg.tokenize.external.path == "1.50"
    assert cfg.train.lr == 1e-3 and cfg.seed == 7 and type(cfg.seed) is int
    assert "0123" in to_yaml(cfg)


def test_overrides_parse():
    assert parse_overrides(["--a.b", "3", "--c=x,y", "--d-e", "null"]) == {"a": {"b": 3}, "c": "x,y", "d_e": None}
    with pytest.raises(DataError, match="needs a value"):
        parse_overrides(["--seed"])
    # several values up to the next --key form a list; yes/no stay words on the command line
    assert parse_overrides(["--eval.ks", "5", "10", "20", "--x", "no", "--y=1", "2"]) == \
        {"eval": {"ks": [5, 10, 20]}, "x": "no", "y": [1, 2]}


# Each setting a run would refuse is refused when the configuration is built, naming the field.
@pytest.mark.parametrize("args,message", [
    (["--train.schedule", "cosinee"], "field 'train.schedule': must be one of cosine, inverse_sqrt, constant "
                                      "(got 'cosinee')"),
    (["--train.metric", "ndcg@100"], "field 'train.metric': its K must be one of eval.ks [5, 10, 20] "
                                     "(got 'ndcg@100')"),
    (["--train.metric", "mrr@10"], "field 'train.metric': must be recall@K or ndcg@K (got 'mrr@10')"),
    (["--eval.ks", "0"], "field 'eval.ks': must list cut-offs >= 1 (got [0])"),
    (["--generator.num_heads", "0"], "field 'generator.num_heads': must be >= 1 (got 0)"),
    (["--tokenize.mmq.codebook_size", "0"], "field 'tokenize.mmq.codebook_size': must be >= 1 (got 0)"),
    (["--train.batch_size", "0"], "field 'train.batch_size': must be >= 1 (got 0)"),
    (["--train.lr", "-1"], "field 'train.lr': must be > 0 (got -1.0)"),
    (["--decode.beam_width", "10"], "field 'decode.beam_width': must be >= max(eval.ks) = 20 (got 10)"),
    (["--eval.ks", "5", "10", "50"], "field 'decode.beam_width': must be >= max(eval.ks) = 50 (got 20)"),
    (["--train.mixed_precision", "fp8"], "field 'train.mixed_precision': must be one of auto, no, bf16, fp16"),
    (["--tokenize.tokenizer", "letter"], "field 'tokenize.tokenizer': must be one of mmq, rqvae"),
    (["--tokenize.rqkmeans.mode", "mixed"], "field 'tokenize.rqkmeans.mode': must be one of fused, separate"),
    (["--generator.dropout", "1"], "field 'generator.dropout': must be in [0, 1) (got 1.0)"),
    (["--encode.collaborative.window", "-1"], "field 'encode.collaborative.window': must be >= 0 (got -1)"),
    (["--train.seed", "3"], "field 'train.seed': is always set from 'seed' (0); set 'seed' instead (got 3)"),
    (["--train.batch_size", "true"], "field 'train.batch_size': expected int, got True"),
    (["--encode.text.model", "a", "b"], "field 'encode.text.model': expected str, got ['a', 'b']"),
    (["--data.dataset", "null"], "field 'data.dataset': expected str, got null"),
])
def test_config_refuses_what_a_run_would(capsys, args, message):
    with pytest.raises(DataError) as e:
        load_config(overrides=args)
    assert str(e.value).startswith(message)
    assert main(["config", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmq config: error: {message}") and err.count("\n") == 1 and "Traceback" not in err


def test_defaults_are_checked_too(monkeypatch):
    # a section nobody overrode is still validated (here: a default made invalid)
    from mmq_rec.config import Config

    def bad_default():
        cfg = Config()
        cfg.tokenize.rqvae.levels = 0
        return cfg

    monkeypatch.setattr("mmq_rec.config.Config", bad_default)
    with pytest.raises(DataError, match=r"^field 'tokenize.rqvae.levels': must be >= 1 \(got 0\)$"):
        load_config(overrides=["--seed", "1"])


def test_layers_are_checked_together(tmp_path):
    # ks from the file, the beam width from the command line: only the combination is checked
    (tmp_path / "c.yaml").write_text("eval:\n  ks: [10, 50]\n")
    assert load_config(tmp_path / "c.yaml", ["--decode.beam_width", "50"]).eval.ks == [10, 50]
    with pytest.raises(DataError, match=r"^field 'decode.beam_width': must be >= max"):
        load_config(tmp_path / "c.yaml")


def test_empty_means_none_for_optional_settings(tmp_path):
    assert load_config(overrides=["--encode.cache_dir", ""]).encode.cache_dir is None
    assert load_config(overrides=["--encode.cache_dir", "null"]).encode.cache_dir is None
    assert load_config(overrides={"encode": {"cache_dir": None}}).encode.cache_dir is None
    (tmp_path / "c.yaml").write_text("encode:\n  cache_dir: ~\n  text:\n    device: null\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.encode.cache_dir is None and cfg.encode.text.device is None
    assert load_config().encode.cache_dir == "~/.cache/mmq-rec/embeddings"
    # '' for a list is the empty list; null is refused rather than read as a string
    assert load_config(overrides=["--encode.attributes.numeric_fields", ""]).encode.attributes.numeric_fields == []
    with pytest.raises(DataError, match=r"field 'eval.ks': expected a list, got null \(write \[\] for an empty"):
        load_config(overrides=["--eval.ks", "null"])


def test_list_overrides_space_separated_or_yaml():
    cfg = load_config(overrides=["--encode.text.fields", "movie_title", "class", "--eval.ks", "5", "10", "20"])
    assert cfg.encode.text.fields == ["movie_title", "class"] and cfg.eval.ks == [5, 10, 20]
    assert load_config(overrides=["--eval.ks", "[5, 10]"]).eval.ks == [5, 10]
    assert load_config(overrides=["--eval.ks", "5,10"]).eval.ks == [5, 10]
    assert load_config(overrides=["--eval.ks", "10"]).eval.ks == [10]  # one value: a one-element list
    cfg = load_config(overrides=["--encode.modalities", "text", "--seed", "4"])
    assert cfg.encode.modalities == ["text"] and cfg.seed == 4


def test_derived_settings_follow_their_source():
    cfg = load_config(overrides=["--seed", "7", "--data.max_history", "10"])
    assert cfg.train.seed == cfg.tokenize.mmq.seed == cfg.synthetic.seed == 7
    assert cfg.generator.max_history == 10
    assert load_config(overrides=["--seed", "7", "--train.seed", "7"]).train.seed == 7  # the same value is fine


def test_preset_under_file_and_overrides():
    cfg = load_config(overrides=["--train.max_steps", "60"], preset="demo")
    assert cfg.generator.d_model == 64 and cfg.train.max_steps == 60 and cfg.output_dir == "runs/demo"
    with pytest.raises(DataError, match=r"^field 'preset': unknown preset 'tiny' \(known: demo\)$"):
        load_config(preset="tiny")
    with pytest.raises(DataError, match=r"^field 'demo': unknown configuration key"):  # the demo is a preset now
        load_config(overrides=["--demo.train_steps", "60"])


def test_printed_config_loads_back(tmp_path):
    cfg = load_config(overrides=["--seed", "5", "--eval.ks", "10", "--encode.cache_dir", ""])
    (tmp_path / "c.yaml").write_text(to_yaml(cfg))
    assert load_config(tmp_path / "c.yaml") == cfg
    # editing the printed seed is enough: the copies of it are comments
    (tmp_path / "c.yaml").write_text(to_yaml(cfg).replace("\nseed: 5", "\nseed: 6", 1))
    assert load_config(tmp_path / "c.yaml").train.seed == 6


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


@pytest.fixture
def one_thread():
    """Multi-threaded float reductions may split differently when the machine is busy (other
    jobs, a parallel test run): one thread makes two runs comparable digit for digit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_demo_runs_and_is_deterministic(tmp_path, capsys, one_thread):
    assert main(["demo", "--output", str(tmp_path / "a"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC DATA" in out and "kNN(collaborative)" in out and "MMQ + generator" in out
    assert "[tokenize] tokenizer mmq" in out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    results = {k: v["metrics"] for k, v in report["systems"].items()}
    assert results["popularity"]["all"]["users"] == 400
    assert results["MMQ + generator"]["all"]["invalid_rate"] == 0.0
    assert "[finetune] id+sid ranker and MMQ tokenizer fine-tuned" in out and "changed SID" in out
    for row in ("ranker (id)", "ranker (id+sid_prefix)", "generate(50) -> ranker (id+sid_prefix)", "ranker (id+sid)",
                "ranker (id+sid, MMQ stage 2)", "ranker (id+sid_prefix, calibrated)"):
        assert results[row]["all"]["users"] == 400 and results[row]["all"]["invalid_rate"] == 0.0
    assert f"report -> {tmp_path / 'a' / 'report.html'}" in out and report["answers"][0].startswith("Best overall")
    assert (tmp_path / "a" / "ranker-id_sid_prefix" / "best" / "model.safetensors").exists()
    assert (tmp_path / "a" / "ranker-id_sid-stage2" / "best" / "tokenizer" / "quality.json").exists()
    assert "[rank] id+sid_prefix ranker calibrated to the item-ID ranker's validation recall@10" in out
    cal = json.loads((tmp_path / "a" / "ranker-id_sid_prefix-calibrated" / "ranker.json").read_text())
    assert cal["config"]["popularity_correction"] == cal["calibration"]["chosen"]
    assert (tmp_path / "a" / "generator" / "best" / "model.safetensors").exists()
    assert (tmp_path / "a" / "report.md").read_text().startswith("# MMQ-Rec demo (synthetic data)")
    assert RecDataset.load(tmp_path / "a" / "data").num_items == 300
    # planted structure: the image features separate image styles, the text features do not
    s = report["modality_structure"]
    assert s["image"]["image_style"] > 0.8 and s["text"]["image_style"] < 0.5
    assert main(["demo", "--output", str(tmp_path / "b"), "--json", *SMALL]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["synthetic"] is True
    assert again["test"] == {k: v["runs"][0]["metrics"] for k, v in report["systems"].items()}


def test_encode_command(tmp_path, capsys, monkeypatch):
    ds = synthetic_catalogue(SyntheticConfig(num_items=120, num_users=80, seed=0))
    ds.save(tmp_path / "ds")
    monkeypatch.chdir(tmp_path)  # '' disables the cache: nothing may be written into the working directory
    assert main(["encode", "--dataset", str(tmp_path / "ds"), "--modalities", "image", "attributes",
                 "collaborative", "--json", "--encode.cache_dir", ""]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    info = json.loads(capsys.readouterr().out)
    assert info["modalities"]["image"] == [120, 64]
    m = np.load(tmp_path / "ds" / "embeddings" / "collaborative.npy")
    assert m.shape[0] == 120 and m.dtype == np.float32
    assert main(["encode", "--dataset", str(tmp_path / "ds"), "--modalities", "smell"]) == 2
    assert "unknown modality 'smell'" in capsys.readouterr().err
