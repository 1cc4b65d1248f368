#!/usr/bin/env bash
# The FP8 KV cache on the GPU in one device call (< 9 minutes on an H200): the GPU tests
# of the KV kernels and backends (FP8 and plain, vs torch references; CUDA-graph replay;
# FP8 KV vs bf16 KV models), then bench/fp8_bench.py on dummy:llama3-8b with bf16, FP8
# weights and FP8 weights + FP8 KV side by side: the decode attention kernel alone over
# bf16 / FP8 pools (every FP8 shape of the sweep, split counts, the extend kernel),
# batch-1 latency, the 256-request throughput workload, accuracy. Logs and JSON go to $OUT.
#   bash bench/fp8kv_check.sh [model]
# Environment: TEST_K (a pytest -k selection), PARTS and MODES (fp8_bench.py's --only and
# --modes), TEST_TIMEOUT / BENCH_TIMEOUT (seconds). The attention kernels alone, e.g.:
#   TEST_K="decode or extend or backend_fp8 or graph_replay or model_matches" \
#   PARTS=kv_kernels,throughput,latency bash bench/fp8kv_check.sh
source "$(dirname "$0")/gpu_env.sh"
XDIST="-n 6"
python3 -c "import xdist" 2>/dev/null || XDIST=""
export LMNB_ERR_LOG="$OUT/kv_errors.tsv"
LMNB_FP8_TUNE=0 timeout ${TEST_TIMEOUT:-200} python3 -m pytest tests/gpu/test_gpu_kv_fp8.py \
  tests/gpu/test_gpu_attention_kernels.py tests/gpu/test_gpu_attention_backend.py \
  tests/gpu/test_gpu_fused_kernels.py -q -m gpu ${TEST_K:+-k "$TEST_K"} $XDIST \
  -p no:cacheprovider -rs 2>&1 | tee "$OUT/pytest_kv.log" | tail -25
awk -F'\t' '{sub(/\[.*/, "", $1); k=$1" "$2; if (!(k in m) || $3+0 > m[k]) m[k]=$3+0}
  END {for (k in m) printf "maxerr %s %.3e\n", k, m[k]}' "$OUT/kv_errors.tsv" 2>/dev/null | sort \
  | grep kv_fp8 | tee "$OUT/kv_maxerr.txt"
m=${1:-llama3-8b}
timeout ${BENCH_TIMEOUT:-330} python3 bench/fp8_bench.py --model "dummy:$m" \
  --only ${PARTS:-kv_kernels,latency,throughput,accuracy} --modes ${MODES:-bf16,fp8,fp8kv} \
  --out "$OUT/fp8kv_$m.json" 2>&1 | tee "$OUT/fp8kv_bench_$m.log" | grep -v '^#'
