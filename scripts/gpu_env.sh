# Sourced by scripts/gpu_check.sh and scripts/gpu_stage2.sh on a bare CUDA machine (PY and LOGS set):
# installs the wheels carried in .whl/ into /tmp/site and, where mmq_rec is not installed, maps the
# checkout's folders onto the mmq_rec namespace in /tmp/mmq_src (as pyproject's package-dir does), so
# the code that runs is the working tree's.
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >"$LOGS/wheels.log" 2>&1 ||
    echo "installing the carried wheels failed: see $LOGS/wheels.log"
fi
if ! $PY -c "import mmq_rec" 2>/dev/null; then
  rm -rf /tmp/mmq_src && mkdir -p /tmp/mmq_src && cp -r mmq /tmp/mmq_src/mmq_rec
  for p in recdata tokenizer generator ranker eval; do ln -s "$PWD/$p" "/tmp/mmq_src/mmq_rec/$p"; done
  export PYTHONPATH="/tmp/mmq_src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export TOKENIZERS_PARALLELISM=false
