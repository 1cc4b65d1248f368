#!/usr/bin/env bash
# The GPU benchmark suite in one device call (under 10 minutes on an H100): lmnb vs HF
# transformers on dummy:qwen3-0.6b and dummy:llama3-8b (bf16). Logs and JSON go to $OUT.
#   bash bench/run_gpu.sh [models...]      default: qwen3-0.6b llama3-8b
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
# the constrained decoder needs interegular; a wheel in .whl/ is installed when missing
if ls .whl/interegular-*.whl >/dev/null 2>&1 && ! python3 -c "import interegular" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/interegular-*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
MODELS=${*:-qwen3-0.6b llama3-8b}
for m in $MODELS; do
  case $m in
    llama3-8b) opts="--kv-gb 24 --hf-requests 64" ;;
    *)         opts="--kv-gb 16 --hf-requests 64" ;;
  esac
  timeout ${SUITE_TIMEOUT:-420} python3 bench/gpu_suite.py --model "dummy:$m" $opts --out "$OUT/gpu_$m.json" \
    2>&1 | tee "$OUT/suite_$m.log" | grep -v '^#'
done
