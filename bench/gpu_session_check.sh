#!/usr/bin/env bash
# One device call (~9 min of wall time at most): the warm-up check (no Triton compile in a
# burst of requests after the runtime's warm-up), the GPU test suite, then the batch-1
# latency figures (bf16, FP8 weights, FP8 + FP8 KV on dummy:llama3-8b).
#   bash bench/gpu_session_check.sh          (carry .whl: pytest-xdist, execnet, ...)
# Each step runs under its own timeout; SIGINT first, so pytest still prints its summary.
source bench/gpu_env.sh
step() { echo "=== $1 rc=$2 ($3 s)"; }

t=$SECONDS
timeout -s INT -k 15 110 python3 bench/debug/warm_up_check.py > "$OUT/warm_up_check.txt" 2>&1
rc=$?; step warm_up_check $rc $((SECONDS - t)); tail -15 "$OUT/warm_up_check.txt"

t=$SECONDS
XDIST=
python3 -c "import xdist" 2>/dev/null && XDIST="-n 4"
timeout -s INT -k 20 250 python3 -m pytest -q -x tests/gpu -p no:cacheprovider $XDIST -rs \
  > "$OUT/gpu_tests.txt" 2>&1
rc=$?; step "gpu_tests ${XDIST:-serial}" $rc $((SECONDS - t)); tail -40 "$OUT/gpu_tests.txt" | cut -c1-400

t=$SECONDS
timeout -s INT -k 15 170 python3 bench/fp8_bench.py --only latency --modes bf16,fp8,fp8kv \
  --model dummy:llama3-8b --out "$OUT/fp8_latency.json" > "$OUT/fp8_latency.txt" 2>&1
rc=$?; step fp8_latency $rc $((SECONDS - t))
grep -E "^(setup|latency|load)|took|wrote|rror" "$OUT/fp8_latency.txt" | cut -c1-400
tail -5 "$OUT/fp8_latency.txt" | cut -c1-400
