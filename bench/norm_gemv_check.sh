#!/usr/bin/env bash
# The decoder's add + RMSNorm inside the one-row GEMVs, in one device call: the GPU tests
# of the GEMV kernels (the fused norm against norm-then-GEMM references, every config) and
# of the models (fused vs separate norms, FP8 vs bf16, HF parity), then batch-1 latency and
# the decode-step graph time of bf16 and FP8 on dummy:llama3-8b with the norms inside the
# GEMVs (LMNB_NORM_GEMV=1) and in their own kernels (the default), and the traced batch-1
# run (kernels per token). Logs and JSON go to $OUT.
#   bash bench/norm_gemv_check.sh [model]
# Environment: TEST_K (a pytest -k selection), MODES, TEST_TIMEOUT / BENCH_TIMEOUT.
source "$(dirname "$0")/gpu_env.sh"
XDIST="-n 6"
python3 -c "import xdist" 2>/dev/null || XDIST=""
export LMNB_ERR_LOG="$OUT/norm_errors.tsv"
LMNB_FP8_TUNE=0 timeout ${TEST_TIMEOUT:-240} python3 -m pytest tests/gpu/test_gpu_fp8.py \
  tests/gpu/test_gpu_model.py -q -m gpu ${TEST_K:+-k "$TEST_K"} $XDIST -p no:cacheprovider -rs \
  2>&1 | tee "$OUT/pytest_norm.log" | tail -20
m=${1:-llama3-8b}
for norm in 1 0; do
  LMNB_NORM_GEMV=$norm timeout ${BENCH_TIMEOUT:-200} python3 bench/fp8_bench.py --model "dummy:$m" \
    --only latency,decode_steps --modes ${MODES:-bf16,fp8} --out "$OUT/norm${norm}_$m.json" \
    2>&1 | tee "$OUT/norm${norm}_$m.log" | grep -v '^#' | sed "s/^/norm_gemv=$norm /"
done
timeout ${BENCH_TIMEOUT:-200} python3 bench/fp8_bench.py --model "dummy:$m" --only latency_profile \
  --modes fp8 --out "$OUT/norm_profile_$m.json" 2>&1 | grep -v '^#' | grep -v _kernel
