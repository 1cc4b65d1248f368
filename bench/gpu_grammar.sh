#!/usr/bin/env bash
# Grammar masks on the GPU in one device call: the GPU tests that cover overlapped steps
# (grammars run ahead), batch masks and FP8 dispatch, then the grammar cases of the GPU
# suite (json_decode: 16 programs after 3k-token documents; json_many: 64 requests with
# 64 schemas) on dummy:llama3-8b. Logs and JSON go to $OUT.
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers, llguidance; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__, 'llguidance', llguidance.get_version() if hasattr(llguidance, 'get_version') else '')" | tee -a "$OUT/gpu.txt"
nproc | sed 's/^/cpus /' | tee -a "$OUT/gpu.txt"
LMNB_FP8_TUNE=0 timeout ${TEST_TIMEOUT:-150} python3 -m pytest tests/runtime/test_overlap.py tests/constrained/test_batch_masks.py \
  tests/gpu/test_gpu_fp8.py -q -n 4 -p no:cacheprovider -rs 2>&1 \
  | tee "$OUT/pytest.log" | tail -8
timeout ${SUITE_TIMEOUT:-170} python3 bench/gpu_suite.py --model dummy:llama3-8b --kv-gb 24 \
  --only "json_decode,json_many${1:+,$1}" --out "$OUT/gpu_suite.json" 2>&1 | tee "$OUT/suite.log" | grep -v '^#'
# FP8_PARTS=kernels,latency: the FP8 kernel table and batch-1 latency in the same call
if [ -n "${FP8_PARTS:-}" ]; then
  timeout ${FP8_TIMEOUT:-200} python3 bench/fp8_bench.py --model dummy:llama3-8b --only "$FP8_PARTS" \
    --out "$OUT/fp8_llama3-8b.json" 2>&1 | tee "$OUT/fp8_bench.log" | grep -v '^#'
fi
