#!/usr/bin/env bash
# One device call: speculative decoding on the GPU (bench/gpu_speculative.py), then the FP8
# modes' batch-1 latency and 256-request throughput (first and warm runs) beside bf16.
source bench/gpu_env.sh
timeout 240 python3 bench/gpu_speculative.py 2>&1 | grep -E "gpu_speculative|Error|error|wrote|json" | tail -20
cp bench/results/speculative_gpu.json "$OUT/" 2>/dev/null
timeout 330 python3 bench/fp8_bench.py --only throughput,latency --modes bf16,fp8,fp8kv \
  --out "$OUT/fp8_llama3-8b.json" 2>&1 | grep -E "^(throughput|latency|load)|error|took" | cut -c1-400
