#!/usr/bin/env bash
# The FP8 KV attention kernels on the GPU in one device call (~6 minutes on an H200): the
# GPU tests of the FP8 KV kernels and the plain attention kernels (vs torch references),
# then bench/fp8_bench.py on dummy:llama3-8b: the decode attention kernel alone over bf16 /
# FP8 pools (every FP8 shape of the sweep, split counts, the extend kernel), the
# 256-request throughput workload and batch-1 latency for bf16 / FP8 weights / FP8 weights
# + FP8 KV. Logs and JSON go to $OUT.
#   bash bench/fp8attn_check.sh [model]
source "$(dirname "$0")/gpu_env.sh"
XDIST="-n 12"
python3 -c "import xdist" 2>/dev/null || XDIST=""
export LMNB_ERR_LOG="$OUT/kv_errors.tsv"
LMNB_FP8_TUNE=0 timeout ${TEST_TIMEOUT:-110} python3 -m pytest tests/gpu/test_gpu_kv_fp8.py \
  tests/gpu/test_gpu_attention_kernels.py -q -m gpu -k "${TEST_K:-decode or extend or backend_fp8 or graph_replay or model_matches}" $XDIST -p no:cacheprovider -rs 2>&1 \
  | tee "$OUT/pytest_kv.log" | tail -15
awk -F'\t' '{sub(/\[.*/, "", $1); k=$1" "$2; if (!(k in m) || $3+0 > m[k]) m[k]=$3+0}
  END {for (k in m) printf "maxerr %s %.3e\n", k, m[k]}' "$OUT/kv_errors.tsv" 2>/dev/null | sort \
  | grep kv_fp8 | tee "$OUT/kv_maxerr.txt"
m=${1:-llama3-8b}
timeout ${BENCH_TIMEOUT:-290} python3 bench/fp8_bench.py --model "dummy:$m" \
  --only ${PARTS:-kv_kernels,throughput,latency} --modes ${MODES:-bf16,fp8,fp8kv} --out "$OUT/fp8attn_$m.json" \
  2>&1 | tee "$OUT/fp8attn_bench_$m.log" | grep -v '^#'
