"""Named configuration presets: partial configurations applied over the defaults and under any
YAML file or command-line override (`load_config(..., preset="demo")`). A preset is data, never a
second wiring of the stages."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # `mmq demo`: small sizes so every stage runs in a few minutes on 2 CPU cores.
    "demo": {
        "output_dir": "runs/demo",
        "encode": {"modalities": ["text", "image"]},
        "tokenize": {"tokenizer": "mmq", "mmq": {"codebook_size": 32, "epochs": 60}},
        "generator": {"input_mode": "item", "d_model": 64, "num_layers": 2, "num_decoder_layers": 2,
                      "d_ff": 256, "num_heads": 4, "d_kv": 16},
        # item mode trains on all positions: a batch is 32 user windows (about 250 targets)
        "train": {"max_steps": 800, "eval_every": 200, "batch_size": 32, "warmup_steps": 80, "lr": 3e-3},
        "ranker": {"epochs": 20, "patience": 3, "lr": 3e-3, "candidates": [50]},
    },
}
