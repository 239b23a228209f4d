#!/usr/bin/env bash
# The generator rows of the stage-2 benchmark (scripts/bench_stage2.py) on one CUDA GPU, several
# runs at once, inside a time budget -> benchmarks/stage2_gpu.md/.json and the report page
# benchmarks/beauty-stage2-gpu/ (copied into $OUT when that is set, with the logs and each run's
# small files). A run not finished by the deadline is left out and named on the page.
#
# Usage:
#   here (CPU), once:  bash scripts/gpu_stage2.sh prepare DATASET_DIR TOKENIZER_DIR...
#                      copies the tokenizers into .gpu/stage2/<basename> and writes .gpu/stage2/data: the
#                      dataset with the modality matrices the tokenizers read (text, attributes,
#                      collaborative) attached as features, since the GPU machine has no text encoder
#                      and no internet; then write .gpu/stage2/rows.txt, one bench_stage2 row per line
#                      ('NAME=KIND .gpu/stage2/TOKENIZER [OVERRIDES]'), most wanted first
#   GPU machine:       bash scripts/gpu_stage2.sh run
#                      e.g. run(command="bash scripts/gpu_stage2.sh run", carry=[".whl", ".gpu"], timeout_s=600)
#   dry run (CPU):     GPU_STAGE2_DEVICE=cpu GPU_STAGE2_SECONDS=240 bash scripts/gpu_stage2.sh run
# benchmarks/stage2_gpu.md was made so (Beauty, the tokenizers on a 2-core CPU, 1 to 2 minutes each):
#   mmq prepare --format jsonl --input ../shared/data/amazon-beauty --output /tmp/beauty/data
#   mmq tokenize --dataset /tmp/beauty/data --tokenizer rqkmeans --output /tmp/beauty/tok-rqk
#   mmq tokenize --dataset /tmp/beauty/data --tokenizer rqkmeans --output /tmp/beauty/tok-rqk-collab \
#     --modalities text attributes collaborative
#   M="--tokenizer mmq --tokenize.mmq.num_shared_experts 1 --tokenize.mmq.num_specific_experts 1"
#   mmq tokenize --dataset /tmp/beauty/data $M --output /tmp/s29/tok-mmq3
#   mmq tokenize --dataset /tmp/beauty/data $M --output /tmp/s31/tok-mmq-c4 --modalities text attributes collaborative
#   mmq tokenize --dataset /tmp/beauty/data $M --output /tmp/s31/tok-mmqc4-cf2 --modalities text attributes \
#     collaborative --tokenize.mmq.token_order collaborative,shared,attributes,text
#   bash scripts/gpu_stage2.sh prepare /tmp/beauty/data /tmp/beauty/tok-rqk /tmp/beauty/tok-rqk-collab \
#     /tmp/s31/tok-mmqc4-cf2                           (the rows as in the page's command)
#   GPU: bash scripts/gpu_stage2.sh run; then, with tok-mmq3, tok-mmq-c4 and rows2.txt carried instead of tok-rqk
#     (the 64 MiB limit): GPU_STAGE2_ROWS=.gpu/stage2/rows2.txt GPU_STAGE2_SKIP="gen-mmqc4cf gen-rqkcollab" \
#     GPU_STAGE2_JOBS=8 GPU_STAGE2_SECONDS=340 bash scripts/gpu_stage2.sh run
#   here: python scripts/bench_stage2.py --merge benchmarks/stage2_gpu_calls/call1.json \
#     benchmarks/stage2_gpu_calls/call2.json --out benchmarks/stage2_gpu --page benchmarks/beauty-stage2-gpu --note ...
# Settings (environment): GPU_STAGE2_SECONDS (budget, default 530), GPU_STAGE2_JOBS (runs at once,
# default 6), GPU_STAGE2_SEEDS (default "0 1 2"), GPU_STAGE2_DEVICE (default cuda), GPU_STAGE2_ROWS
# (default .gpu/stage2/rows.txt), GPU_STAGE2_SKIP (rows not run, e.g. bases run by an earlier call),
# GPU_STAGE2_OUT / GPU_STAGE2_PAGE (the page, default benchmarks/stage2_gpu and benchmarks/beauty-stage2-gpu).
# Ranker rows run too ('NAME=ranker TOKENIZER --ranker.representation ...'); a 'ranker-stage2:BASE' row's
# job waits for BASE's run of the same seed, which it starts from (list BASE first). Checked on the CPU
# with one-epoch ranker rows: GPU_STAGE2_DEVICE=cpu GPU_STAGE2_SEEDS=0 GPU_STAGE2_JOBS=2 \
#   GPU_STAGE2_ROWS=ROWS GPU_STAGE2_OUT=/tmp/x GPU_STAGE2_PAGE=/tmp/x-page bash scripts/gpu_stage2.sh run
# The machine needs the wheels gpu_check.sh's header names (on this image: datasets, dill,
# multiprocess, faiss-cpu) in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=.gpu/stage2
PY=${PYTHON:-python3}

if [[ "${1:-}" == prepare ]]; then
  (($# >= 3)) || { echo "usage: bash scripts/gpu_stage2.sh prepare DATASET_DIR TOKENIZER_DIR..." >&2; exit 2; }
  shift
  DATASET=$1
  shift
  mkdir -p "$ROOT"
  for t in "$@"; do
    [[ -f "$t/sid_table.json" ]] || { echo "$t: not a tokenizer directory (no sid_table.json)" >&2; exit 1; }
    rm -rf "${ROOT:?}/$(basename "$t")" && cp -r "$t" "$ROOT/" || exit 1
  done
  $PY - "$DATASET" "$ROOT/data" <<'EOF' || exit 1
import sys
from mmq_rec.pipeline import Pipeline

pipe = Pipeline.from_config(overrides=["--encode.modalities", "text", "attributes", "collaborative"], show_progress=False)
ds = pipe.dataset(sys.argv[1])
ds.features.update(pipe.modalities(ds, ["text", "attributes", "collaborative"], seed=0))
ds.save(sys.argv[2], overwrite=True)
print(f"{sys.argv[2]}: {ds.num_items} items, features {sorted(ds.features)}")
EOF
  exit 0
fi
[[ "${1:-}" == run ]] || { echo "usage: bash scripts/gpu_stage2.sh prepare DATASET TOKENIZER... | run" >&2; exit 2; }

START=$(date +%s)
DEADLINE=$((START + ${GPU_STAGE2_SECONDS:-530}))
MERGE_S=70  # the page is written in the last seconds: every run's results are cached by then
JOBS=${GPU_STAGE2_JOBS:-6}
DEVICE=${GPU_STAGE2_DEVICE:-cuda}
WORK=/tmp/mmq_stage2
rm -rf "$WORK" && mkdir -p "$WORK/logs" "$WORK/out"
LOGS="$WORK/logs" source scripts/gpu_env.sh  # the carried wheels, the checkout as mmq_rec
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
$PY -c "import mmq_rec.pipeline" || { echo "mmq_rec does not import: carry the missing wheels in .whl/"; exit 1; }
[[ "$DEVICE" == cuda ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

ROWS_FILE=${GPU_STAGE2_ROWS:-$ROOT/rows.txt}
PAGE_OUT=${GPU_STAGE2_OUT:-benchmarks/stage2_gpu}  # .md/.json
PAGE_DIR=${GPU_STAGE2_PAGE:-benchmarks/beauty-stage2-gpu}
[[ -f "$ROWS_FILE" ]] || { echo "$ROWS_FILE: no rows file (see this script's header)"; exit 1; }
mapfile -t LINES < <(grep -v '^\s*\(#\|$\)' "$ROWS_FILE")
ROWS=()
for l in "${LINES[@]}"; do ROWS+=(--row "$l"); done
COMMON=(-- --decode.valid_users 500 --device "$DEVICE")
bench() { $PY scripts/bench_stage2.py --dataset "$ROOT/data" --work "$WORK/runs" "${ROWS[@]}" "$@" "${COMMON[@]}"; }

running=0  # background jobs: the CUDA tests count as one while they run
if [[ "$DEVICE" == cuda ]]; then  # the CUDA tests beside the runs
  timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py >"$WORK/logs/test_cuda.log" 2>&1 &
  running=1
fi
# one job per row and seed, rows in the file's order, each row's seeds together
for l in "${LINES[@]}"; do
  name=${l%%=*}
  [[ " ${GPU_STAGE2_SKIP:-} " == *" $name "* ]] && continue
  kind=${l#*=}
  kind=${kind%% *}
  base=""  # a ranker stage-2 row starts from its base row's ranker of the same seed: its job waits for it
  [[ "$kind" == ranker-stage2:* ]] && base=${kind#ranker-stage2:}
  for seed in ${GPU_STAGE2_SEEDS:-0 1 2}; do
    while ((running >= JOBS)); do wait -n; running=$((running - 1)); done
    left=$((DEADLINE - MERGE_S - $(date +%s)))
    if ((left < 150)); then echo "$name seed $seed: not started, ${left} s left"; continue; fi
    echo "$(($(date +%s) - START)) s: $name seed $seed (limit $left s)"
    wait_base=""  # until the base job has ended (.done), then only if it wrote its results
    b=$(printf %q "$WORK/out/$base-s$seed")
    [[ -n "$base" ]] && wait_base="until [[ -f $b.done ]]; do sleep 5; done; [[ -f $b.json ]] || \
      { echo 'base run $base seed $seed did not finish'; exit 1; };"
    o=$(printf %q "$WORK/out/$name-s$seed")
    timeout -k 10 "$left" bash -c "$wait_base $(declare -f bench); $(declare -p PY ROOT WORK ROWS COMMON); \
      bench --seeds $seed --only $(printf %q "$name") --threads 1 --out $o; rc=\$?; touch $o.done; exit \$rc" \
      >"$WORK/logs/$name-s$seed.log" 2>&1 &
    running=$((running + 1))
  done
done
wait
echo "$(($(date +%s) - START)) s: runs done; writing the page"
timeout 300 bash -c "$(declare -f bench); $(declare -p PY ROOT WORK ROWS COMMON); bench --seeds ${GPU_STAGE2_SEEDS:-0 1 2} \
  --finished-only --out $(printf %q "$PAGE_OUT") --page $(printf %q "$PAGE_DIR")" >"$WORK/logs/merge.log" 2>&1 ||
  tail -n 20 "$WORK/logs/merge.log"
cat "$PAGE_OUT.md" 2>/dev/null
[[ -f "$WORK/logs/test_cuda.log" ]] && echo "tests/test_cuda.py: $(tail -n 1 "$WORK/logs/test_cuda.log")"
echo "$(($(date +%s) - START)) s in all"

if [[ -n "${OUT:-}" ]]; then
  cp "$PAGE_OUT.md" "$PAGE_OUT.json" "$OUT/" 2>/dev/null
  cp "$PAGE_DIR"/report.{html,md,json} "$OUT/" 2>/dev/null
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
  (cd "$WORK/runs" 2>/dev/null && tar -czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude=checkpoint --exclude=logs .)
fi
