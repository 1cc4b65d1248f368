#!/usr/bin/env bash
# One device call for the merged tree: every GPU test, then the grammar cases of the GPU
# suite (json_decode, json_many: 64 requests with 64 schemas) and the vision benchmark.
# Extra workloads for the suite can be named in $1 (comma-separated). Logs go to $OUT.
source "$(dirname "$0")/gpu_env.sh"
timeout ${TEST_TIMEOUT:-240} python3 -m pytest tests/gpu tests/runtime/test_overlap.py tests/runtime/test_lifecycle.py \
  tests/vision/test_llava_gpu.py -q -m gpu -n 6 -p no:cacheprovider --ignore=tests/gpu/test_gpu_flashinfer.py \
  -rs 2>&1 | tee "$OUT/pytest.log" | tail -8
timeout ${SUITE_TIMEOUT:-150} python3 bench/gpu_suite.py --model dummy:llama3-8b --kv-gb 24 \
  --only "json_decode,json_many${1:+,$1}" --out "$OUT/gpu_suite.json" 2>&1 | tee "$OUT/suite.log" | grep -v '^#'
BENCH_TIMEOUT=${VISION_TIMEOUT:-150} OUT="$OUT" bash bench/run_gpu_vision.sh 2>&1 | tail -8
