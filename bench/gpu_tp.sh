#!/usr/bin/env bash
# Tensor parallelism on a multi-GPU machine (nvidia-h200-x2 / -x4 / -x8), one device call:
# the TP tests, then TP=1 vs TP=2 on dummy:llama3-8b, then a 70B-shaped dummy on TP=4/8
# when that many GPUs are visible. Logs to $OUT.    bash bench/gpu_tp.sh
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1   # lmnb sets these too
n=$(python3 -c "import torch; print(torch.cuda.device_count())")
echo "# GPUs: $n"
timeout ${TEST_TIMEOUT:-180} python3 -m pytest tests/runtime/test_tensor_parallel.py -q \
  -p no:cacheprovider -rs 2>&1 | tee "$OUT/tp_pytest.log" | tail -5
timeout ${TEST_TIMEOUT:-180} python3 -m pytest tests/gpu/test_gpu_tensor_parallel.py -q -m gpu \
  -p no:cacheprovider -rs 2>&1 | tee "$OUT/tp_gpu_pytest.log" | tail -5
if [ "$n" -ge 2 ]; then
  timeout ${BENCH_TIMEOUT:-420} python3 bench/gpu_tp.py --model dummy:llama3-8b --tp 1,2 \
    --out "$OUT/gpu_tp_llama3-8b.json" 2>&1 | tee "$OUT/tp_8b.log" | grep -v '^#'
fi
if [ "$n" -ge 4 ]; then
  sizes=4; [ "$n" -ge 8 ] && sizes=4,8
  timeout ${BENCH_TIMEOUT:-540} python3 bench/gpu_tp.py --model dummy:llama3-70b --tp $sizes \
    --kv-gb 16 --requests 128 --out "$OUT/gpu_tp_llama3-70b.json" 2>&1 | tee "$OUT/tp_70b.log" | grep -v '^#'
fi
# graphs capturing the all-reduces are unverified: one try, reported on its own line
if [ "$n" -ge 2 ]; then
  LMNB_TP_CUDA_GRAPH=1 timeout 300 python3 bench/gpu_tp.py --model dummy:llama3-8b --tp 2 \
    --out "$OUT/gpu_tp_llama3-8b_graphs.json" 2>&1 | tee "$OUT/tp_8b_graphs.log" | grep -v '^#'
fi
