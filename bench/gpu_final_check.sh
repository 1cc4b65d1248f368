#!/usr/bin/env bash
# One device call: the speculative figures (bench/gpu_speculative.py), the throughput
# workload in two fresh processes (the second finds the first one's stored GEMM choices and
# compiled kernels), then the GPU tests of the stored choices and the extend warm-up.
source bench/gpu_env.sh
timeout 110 python3 bench/gpu_speculative.py 2>&1 | grep -E "gpu_speculative|Error|error" | tail -12
cp bench/results/speculative_gpu.json "$OUT/" 2>/dev/null
for i in 1 2; do
  timeout 90 python3 bench/fp8_bench.py --only throughput --modes fp8 --out "$OUT/fp8_process$i.json" 2>&1 \
    | grep -E "^(throughput|load)|error|took|Error" | cut -c1-300
done
timeout 60 python3 -m pytest -q -x tests/gpu/test_gpu_attention_backend.py tests/gpu/test_gpu_fp8.py \
  -k "warm_up or on_disk or graph_replay" 2>&1 | tail -3
