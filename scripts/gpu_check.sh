#!/usr/bin/env bash
# GPU check of MMQ-Rec on a bare CUDA machine (Python with torch+CUDA and transformers, no
# internet), in under 8 minutes. Steps, each with a time limit, each reported whatever happens:
#   smoke     tests/test_cuda.py: tokenize (MMQ) -> train -> evaluate -> recommend with --device
#             cuda, in one process; no host sync in the beam search
#   bench     scripts/bench_decoding.py --device cuda: our constrained beam search vs HF generate
#             (TIGER-size models, random weights: decoding cost does not depend on training)
#   train     Beauty, item input mode, --train.max_minutes 4 (less if the steps before ran long,
#             so that the run ends inside the 8 minutes), on the GPU (bf16 mixed precision)
#   evaluate  its best model on the Beauty test split, on the GPU (float32, then bfloat16 if time is left)
# Writes benchmarks/gpu.md and benchmarks/gpu.json (GPU name, versions, every step's status and
# numbers) and copies them with the logs into $OUT when that is set.
#
# Usage: bash scripts/gpu_check.sh [DATA_DIR]        (default .gpu/beauty)
#
# DATA_DIR is prepared beforehand on any machine with the repository installed (CPU, a few minutes):
#   mmq prepare  --format jsonl --input ../shared/data/amazon-beauty --output .gpu/beauty/dataset
#   mmq tokenize --dataset .gpu/beauty/dataset --tokenizer rqkmeans --output .gpu/beauty/tokenizer
#
# mmq_rec is not installed there: the checkout's folders are mapped onto the mmq_rec namespace in
# /tmp/mmq_src (as pyproject's package-dir does), so the code checked is the working tree's.
# Its third-party imports are carried as wheels in .whl/ (ignored by git), installed with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
# mmq_rec imports at module level: datasets (-> pyarrow, pandas, python-dateutil, dill,
# multiprocess, xxhash, fsspec), faiss-cpu, scipy, accelerate (-> psutil), pillow, pyyaml,
# safetensors, tqdm; the tests need pytest (-> pluggy, iniconfig). Download what the machine lacks
# (the script's first lines of output name it; versions as in .venv):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl NAME==VERSION ...
# NAME==VERSION among: datasets==5.2.0 pyarrow==26.0.1 pandas==3.1.1 python-dateutil==4.0.0
#   dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 fsspec==2026.9.0 faiss-cpu==1.15.1 scipy==1.17.1
#   accelerate==1.15.0 psutil==7.2.2 pillow==13.0.0 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
# The device runner carries ignored paths up to 64 MiB in all (pyarrow, scipy and faiss-cpu are
# 25-45 MB each): carry only the missing ones. tensorboard is optional (without it, no training logs).
# Example: run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gpu"], timeout_s=540)
# Dry run of the script itself on a CPU: GPU_CHECK_DEVICE=cpu GPU_CHECK_MINUTES=0.5 bash scripts/gpu_check.sh DIR
set -uo pipefail  # not -e: a failed step is reported and the next one still runs

cd "$(dirname "$0")/.."
START=$(date +%s)
DEADLINE=$((START + 460))  # the report is written by 7 min 40 s
DATA=${1:-.gpu/beauty}
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
MINUTES=${GPU_CHECK_MINUTES:-4}
WORK=/tmp/mmq_gpu
rm -rf "$WORK" && mkdir -p "$WORK/logs"

LOGS="$WORK/logs" source scripts/gpu_env.sh  # the carried wheels, the checkout as mmq_rec

declare -A STATUS
ORDER=()
step() {  # step NAME LIMIT_S CMD...: stdout to $WORK/NAME.out, stderr to logs/NAME.log, status kept
  local name=$1 limit=$2 left t0 rc
  shift 2
  ORDER+=("$name")
  left=$((DEADLINE - $(date +%s)))
  ((limit > left)) && limit=$left
  if ((limit < 30)); then STATUS[$name]="skipped: no time left"; echo "$name: ${STATUS[$name]}"; return; fi
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/logs/$name.log"
  rc=$?
  STATUS[$name]="exit $rc after $(($(date +%s) - t0)) s$( ((rc == 124)) && echo " (time limit $limit s)")"
  echo "$name: ${STATUS[$name]}"
}

ORDER+=(imports)
if ! $PY -c "import torch, mmq_rec.cli, mmq_rec.pipeline, pytest
assert '$DEVICE' == 'cpu' or torch.cuda.is_available(), 'torch sees no CUDA GPU'" 2>"$WORK/logs/imports.log"; then
  STATUS[imports]="failed: $(tail -n 1 "$WORK/logs/imports.log")"
  echo "imports: ${STATUS[imports]} (carry the missing wheels in .whl/, see this script's header)"
else
  STATUS[imports]="ok"
  step smoke 120 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
  if [[ -d "$DATA/dataset" && -d "$DATA/tokenizer" ]]; then
    step bench 100 $PY scripts/bench_decoding.py --device "$DEVICE" --data "$DATA/dataset" --users 500 \
      --warmup 256 --sizes 10000 1000000 --out "$WORK/bench"
    # the budget, less what would not end before the deadline (start-up, the final validation and
    # the test evaluation after the run need about 75 s); the time limit leaves the run 45 s more
    read -r MINUTES TRAIN_LIMIT < <($PY -c "m = round(min($MINUTES, ($DEADLINE - $(date +%s) - 75) / 60), 2)
print(m, int(m * 60) + 45 if m >= 0.2 else 0)")
    step train "$TRAIN_LIMIT" $PY -m mmq_rec.cli train --dataset "$DATA/dataset" --tokenizer-dir "$DATA/tokenizer" \
      --output "$WORK/run" --device "$DEVICE" --generator.input_mode item --train.max_minutes "$MINUTES" --json
    step evaluate 60 $PY -m mmq_rec.cli evaluate --dataset "$DATA/dataset" --model "$WORK/run/best" \
      --device "$DEVICE" --json
    step evaluate_bf16 60 $PY -m mmq_rec.cli evaluate --dataset "$DATA/dataset" --model "$WORK/run/best" \
      --device "$DEVICE" --decode.dtype bfloat16 --json
  else
    ORDER+=(train)
    STATUS[train]="skipped: no prepared data in $DATA (see this script's header)"
    echo "train: ${STATUS[train]}"
  fi
fi

# the report: plain Python and json only, so that it is written even when mmq_rec cannot be imported
for k in "${ORDER[@]}"; do echo "$k=${STATUS[$k]}"; done >"$WORK/status.txt"
WORK="$WORK" DATA="$DATA" MINUTES="$MINUTES" ELAPSED=$(($(date +%s) - START)) $PY - <<'EOF'
import json, os, platform
from pathlib import Path

work, out = Path(os.environ["WORK"]), Path("benchmarks")
status = dict(line.split("=", 1) for line in (work / "status.txt").read_text().splitlines())


def last_json(name):
    """The JSON object a step printed last on stdout (None when it printed none)."""
    path = work / f"{name}.out"
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")] if path.exists() else []
    return json.loads(lines[-1]) if lines else None


def tail(name, n=12):
    """The last lines a step printed, stdout then stderr."""
    return [line for path in (work / f"{name}.out", work / "logs" / f"{name}.log") if path.exists()
            for line in path.read_text(errors="replace").splitlines()[-n:]]


versions = {}
try:
    import torch
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda,
                "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"}
    import transformers
    versions["transformers"] = transformers.__version__
except Exception as e:  # report whatever is known
    versions.setdefault("error", f"{type(e).__name__}: {e}")
smoke = (work / "smoke.out").read_text().strip().splitlines()[-1:] if (work / "smoke.out").exists() else []
train, test, test_bf16 = last_json("train"), last_json("evaluate"), last_json("evaluate_bf16")
bench_path = work / "bench" / "decoding.json"
bench = json.loads(bench_path.read_text()) if bench_path.exists() else None
result = {"command": "bash scripts/gpu_check.sh " + os.environ["DATA"], "elapsed_s": int(os.environ["ELAPSED"]),
          "machine": {**versions, "python": platform.python_version(), "cpu_count": os.cpu_count()},
          "status": status, "smoke": smoke[0] if smoke else None,
          "train": train and {k: train.get(k) for k in ("steps", "best_step", "best_valid_ndcg@10", "train_seconds",
                                                        "wall_seconds", "plan")},
          "test": test and {"users": test["users"], "users_per_second": test["users_per_second"],
                            "decode_seconds": test["decode_seconds"], "device": test["device"],
                            "all": test["metrics"]["all"]},
          "test_bfloat16": test_bf16 and {"users_per_second": test_bf16["users_per_second"],
                                          "all": test_bf16["metrics"]["all"]},
          "decoding": bench}
out.mkdir(exist_ok=True)
(out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")

md = ["# GPU check", "", f"Command: `{result['command']}` ({result['elapsed_s']} s). Device: "
      f"**{versions.get('device', '?')}**, torch {versions.get('torch', '?')} (CUDA {versions.get('cuda', '?')}), "
      f"transformers {versions.get('transformers', '?')}, Python {platform.python_version()}.", "",
      "| step | status |", "|---|---|"] + [f"| {k} | {v} |" for k, v in status.items()] + [""]
if smoke:
    md += [f"CUDA tests (tests/test_cuda.py): `{smoke[0]}`", ""]
if train:
    plan = train.get("plan") or {}
    md += [f"Beauty training (item mode, {os.environ['MINUTES']}-minute budget): {train['steps']} steps in {train['train_seconds']} s "
           f"({plan.get('seconds_per_step')} s/step, {plan.get('seconds_per_validation')} s/validation); best "
           f"validation NDCG@10 {train.get('best_valid_ndcg@10')} at step {train['best_step']}.", ""]
for name, res in (("float32", test), ("bfloat16", test_bf16)):
    if res:
        a = res["metrics"]["all"]
        md += [f"Test split, decoding in {name} on {res['device']}: {res['users']:,} users at {res['users_per_second']:,} "
               f"users/s; Recall@10 {a['recall@10']:.4f}, NDCG@10 {a['ndcg@10']:.4f}, invalid-ID rate "
               f"{a['invalid_rate']:.4f}.", ""]
if bench:
    md += [f"Decoding benchmark (scripts/bench_decoding.py on {bench['machine']['device']}; beam 20, top-20):", "",
           "| input mode | decoder | best batch | users/s | peak memory growth (MB) | identical top-20 |",
           "|---|---|---:|---:|---:|---:|"]
    for m in bench["modes"]:
        for name in ("ours", "hf"):
            r = m[name]
            mem = r.get("peak_gpu_mb", r.get("peak_rss_mb"))
            md.append(f"| {m['mode']} | {name} | {r['batch_size']} | {r['users_per_s']} | {mem} | "
                      f"{m['identical_topk_share']:.1%} |")
    md += ["", f"Speedup of ours over HF generate: {bench['speedup_by_mode']}. Catalogue growth (ours, flat): "
           + "; ".join(f"{g['items']:,} items {g['users_per_s']} users/s" for g in bench["catalogue_growth"]) + ".", ""]
failed = [k for k, v in status.items() if not (v == "ok" or v.startswith("exit 0"))]
for name in failed:
    md += [f"## {name}: {status[name]}", "", "```", *tail(name), "```", ""]
(out / "gpu.md").write_text("\n".join(md))
print("\n".join(md))
EOF

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT/logs" && cp benchmarks/gpu.md benchmarks/gpu.json "$OUT/" && cp "$WORK"/logs/*.log "$OUT/logs/"
  [[ -f "$WORK/bench/decoding.md" ]] && cp "$WORK/bench/decoding.md" "$WORK/bench/decoding.json" "$OUT/"
fi
