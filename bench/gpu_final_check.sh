#!/usr/bin/env bash
# One device call: the GPU tests of the stored GEMM choices and the extend warm-up, the
# speculative figures (bench/gpu_speculative.py), then the throughput workload in two fresh
# processes: the second finds the first one's stored GEMM choices and compiled kernels.
source bench/gpu_env.sh
timeout 150 python3 -m pytest -q -x tests/gpu/test_gpu_attention_backend.py tests/gpu/test_gpu_fp8.py \
  -k "warm_up or timed_choice or graph or backend" 2>&1 | tail -3
timeout 150 python3 bench/gpu_speculative.py 2>&1 | grep -E "gpu_speculative|Error|error" | tail -12
cp bench/results/speculative_gpu.json "$OUT/" 2>/dev/null
for i in 1 2; do
  timeout 140 python3 bench/fp8_bench.py --only throughput --modes fp8 --out "$OUT/fp8_process$i.json" 2>&1 \
    | grep -E "^(throughput|load)|error|took" | cut -c1-300
done
