#!/usr/bin/env bash
# Vision on one CUDA machine in one call: the LLaVA GPU tests, then bench/gpu_vision.py on
# dummy:llava-7b (bf16): 64 image questions over 8 images, lmnb with and without the radix
# cache and HF transformers side by side. Logs and JSON go to $OUT.
#   bash bench/run_gpu_vision.sh
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import PIL" 2>/dev/null || { ls .whl/pillow-*.whl >/dev/null 2>&1 \
  && python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/pillow-*.whl \
  && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/vision/test_llava_gpu.py -rs 2>&1 \
  | tee "$OUT/vision_tests.log" | tail -5
timeout ${BENCH_TIMEOUT:-330} python3 bench/gpu_vision.py --out "$OUT/gpu_vision_llava-7b.json" 2>&1 \
  | tee "$OUT/vision_bench.log" | grep -v '^#'
