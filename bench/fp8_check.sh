#!/usr/bin/env bash
# FP8 on the GPU in one device call (< 9 minutes on an H200): the FP8 GPU tests (kernels
# vs torch references, CUDA-graph capture, FP8 vs bf16 models), then bench/fp8_bench.py
# (kernel GB/s, accuracy over 256 greedy steps, batch-1 latency vs roofline, decode-step
# graph time, the 256-request throughput workload; FP8 vs bf16 side by side) on
# dummy:llama3-8b. Logs and JSON go to $OUT.
#   bash bench/fp8_check.sh [model]
source "$(dirname "$0")/gpu_env.sh"
XDIST="-n 4"
python3 -c "import xdist" 2>/dev/null || XDIST=""
# the tests check every tile config explicitly; the timed choice is for the benchmark
export LMNB_ERR_LOG="$OUT/fp8_errors.tsv"
LMNB_FP8_TUNE=0 timeout ${TEST_TIMEOUT:-210} python3 -m pytest tests/gpu/test_gpu_fp8.py -q -m gpu $XDIST \
  -p no:cacheprovider -rs 2>&1 | tee "$OUT/pytest_fp8.log" | tail -20
awk -F'\t' '{sub(/\[.*/, "", $1); k=$1" "$2; if (!(k in m) || $3+0 > m[k]) m[k]=$3+0}
  END {for (k in m) printf "maxerr %s %.3e\n", k, m[k]}' "$OUT/fp8_errors.tsv" 2>/dev/null | sort | tee "$OUT/fp8_maxerr.txt"
m=${1:-llama3-8b}
timeout ${BENCH_TIMEOUT:-300} python3 bench/fp8_bench.py --model "dummy:$m" --out "$OUT/fp8_$m.json" \
  2>&1 | tee "$OUT/fp8_bench_$m.log" | grep -v '^#'
