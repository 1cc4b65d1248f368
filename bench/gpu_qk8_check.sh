#!/usr/bin/env bash
# One device call: the FP8 decode kernel with q @ K^T as an e4m3 dot (the sixth item of a
# decode config): its GPU tests, its time against the widened-K kernel over the throughput
# and batch-1 cases, then the 256-request throughput workload with it.
source bench/gpu_env.sh
timeout 150 python3 -m pytest -q -x -n 4 -p no:cacheprovider tests/gpu/test_gpu_kv_fp8.py \
  -k "decode_fp8_matches_reference" 2>&1 | tail -4 | tee "$OUT/qk8_tests.txt"
timeout 150 python3 bench/debug/fp8_decode_shapes.py --out "$OUT/qk8_shapes.json" \
  --shapes "T_64_2_3_T;T_64_2_3_T_T;F_64_4_2_T_T;T_64_4_3_T_T;F_128_4_3_T_T;T_128_4_3_T_T;F_64_8_2_T_T;T_32_4_2_T_T;F_32_2_3_T_T" \
  2>&1 | grep -v "^{" | tail -14 | tee "$OUT/qk8_shapes.txt"
python3 - "$OUT/qk8_shapes.json" <<'PY' | tee -a "$OUT/qk8_shapes.txt"
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    print(r["case"], r["kv"], r.get("shape", ""), f'{r["us"]:.1f} us', f'{100 * r["of_hbm"]:.1f}% HBM',
          f'err {r.get("rel_err", 0):.4f}')
PY
for cfg in "True,64,2,3,True" "True,64,2,3,True,True"; do
  timeout 100 python3 bench/fp8_bench.py --only throughput --modes fp8kv --fp8-decode "$cfg" \
    --out "$OUT/qk8_throughput_${cfg//,/_}.json" 2>&1 | grep -E "^(throughput|load)|Error|error" | cut -c1-300
done
