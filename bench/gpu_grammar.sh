#!/usr/bin/env bash
# Grammar masks on the GPU in one device call: the GPU tests that cover overlapped steps
# (grammars run ahead), batch masks and FP8 dispatch, then the grammar cases of the GPU
# suite (json_decode: 16 programs after 3k-token documents; json_many: 64 requests with
# 64 schemas) on dummy:llama3-8b. Logs and JSON go to $OUT.
source "$(dirname "$0")/gpu_env.sh"
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
