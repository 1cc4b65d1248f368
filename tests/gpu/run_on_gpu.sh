#!/usr/bin/env bash
# One call on a CUDA machine: GPU tests, then the kernel benchmark; logs go to $OUT.
# If .whl/fi_slim.tgz (+ the apache-tvm-ffi wheel) is there, flashinfer is unpacked and its
# kernels JIT-compiled in the background while the triton tests run, then tested and
# benchmarked too.
#   bash tests/gpu/run_on_gpu.sh
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
which nvcc >> "$OUT/gpu.txt" 2>&1

WARM=
if ls .whl/fi_slim.tgz >/dev/null 2>&1; then
  mkdir -p /tmp/fi && tar xzf .whl/fi_slim.tgz -C /tmp/fi \
    && python3 -m pip install -q --no-deps --no-index --target /tmp/fi .whl/apache_tvm_ffi-*.whl
  export PYTHONPATH=/tmp/fi${PYTHONPATH:+:$PYTHONPATH}
  export MAX_JOBS=10
  ( timeout 480 python3 -c "import torch; from lmnb.runtime.attention.flashinfer_backend import warm_up; warm_up(32, 8, 128, torch.bfloat16); print('warm ok')" \
      > "$OUT/fi_warm.log" 2>&1; echo "rc=$?" >> "$OUT/fi_warm.log" ) &
  WARM=$!
fi

export LMNB_ERR_LOG="$OUT/errors.tsv"
timeout 330 python3 -m pytest tests/gpu -q -m gpu -n 6 -p no:cacheprovider \
  --ignore=tests/gpu/test_gpu_flashinfer.py -rs 2>&1 | tee "$OUT/pytest.log" | tail -25

if [ -n "$WARM" ]; then
  wait "$WARM"
  tail -5 "$OUT/fi_warm.log"
  if grep -q "warm ok" "$OUT/fi_warm.log"; then
    timeout 120 python3 -m pytest tests/gpu/test_gpu_flashinfer.py -q -m gpu -p no:cacheprovider -rs \
      2>&1 | tee "$OUT/pytest_flashinfer.log" | tail -8
  else
    export PYTHONPATH=${PYTHONPATH#/tmp/fi:}  # bench without flashinfer
    PYTHONPATH=${PYTHONPATH#/tmp/fi}
  fi
fi

# worst relative error per test function and dtype
awk -F'\t' '{sub(/\[.*/, "", $1); k=$1" "$2; if (!(k in m) || $3+0 > m[k]) m[k]=$3+0}
  END {for (k in m) printf "maxerr %s %.3e\n", k, m[k]}' "$OUT/errors.tsv" | sort | tee "$OUT/maxerr.txt"

timeout 300 python3 bench/kernels.py --out "$OUT/kernels_h100.json" 2>&1 | tee "$OUT/bench.log" \
  | grep -v '^decode_tune'
