#!/usr/bin/env bash
# One device call: the GPU tests (engine vs HF, graphs vs eager, overlap on vs off), then
# a subset of the suite on one model. Logs to $OUT.
#   bash bench/gpu_check.sh [model] [workloads]
source "$(dirname "$0")/gpu_env.sh"
timeout ${TEST_TIMEOUT:-240} python3 -m pytest tests/gpu tests/runtime/test_overlap.py \
  tests/runtime/test_lifecycle.py -q -m gpu -n 6 \
  -p no:cacheprovider --ignore=tests/gpu/test_gpu_flashinfer.py -rs 2>&1 | tee "$OUT/pytest.log" | tail -15
m=${1:-llama3-8b}
timeout ${SUITE_TIMEOUT:-300} python3 bench/gpu_suite.py --model "dummy:$m" --kv-gb 24 \
  --only "${2:-latency,overlap,throughput}" --out "$OUT/gpu_$m.json" 2>&1 | tee "$OUT/suite_$m.log" | grep -v '^#'
