# One device call: the 256-request throughput workload (bf16, FP8 + FP8 KV) with its step
# profile, the FP8 KV run under py-spy (host stacks of the engine thread), and both runs
# with the decode grid in the older order (requests first).
source bench/gpu_env.sh
python3 bench/fp8_bench.py --only throughput,step_profile --modes bf16,fp8kv --out "$OUT/prof.json" 2>&1 | grep -E "^(throughput|step_profile )|error|took"
PYSPY=/tmp/site/bin/py-spy
ls -la $PYSPY
timeout 200 $PYSPY record --threads --rate 200 --format raw -o "$OUT/pyspy_fp8kv.txt" -- python3 bench/fp8_bench.py --only throughput --modes fp8kv --out "$OUT/spy.json" 2>&1 | grep -E "^throughput|error|took|py-spy|Error" | head
python3 bench/fp8_bench.py --only throughput --modes bf16,fp8kv --decode-heads-first 0 --out "$OUT/hf0.json" 2>&1 | grep -E "^throughput|error|took"
