#!/usr/bin/env bash
# One device call: the FP8 decode kernel's shapes (bench/debug/fp8_decode_shapes.py), the
# decode attention GPU tests, then the 256-request throughput workload (bf16, FP8 + FP8 KV)
# with the best shape.
source bench/gpu_env.sh
python3 bench/debug/fp8_decode_shapes.py --out "$OUT/fp8_decode_shapes.json" --best "$OUT/best.txt" \
  2>&1 | tee "$OUT/shapes.log" | grep -v "^{" | tail -30
best=$(cat "$OUT/best.txt")
echo "best shape: $best"
python3 -m pytest -q -x tests/gpu/test_gpu_kv_fp8.py tests/gpu/test_gpu_attention_kernels.py -k decode 2>&1 | tail -3
python3 bench/fp8_bench.py --only throughput --modes bf16,fp8kv --fp8-decode "$best" \
  --out "$OUT/fp8_throughput.json" 2>&1 | grep -E "throughput|took|error" | tail -12
