# Sourced by the one-call GPU scripts (bench/gpu_*.sh, fp8_check.sh): $OUT for logs,
# the tree on PYTHONPATH, the wheels the device image lacks (.whl/: interegular,
# pytest-xdist, execnet, llguidance), and the GPU and versions written to $OUT/gpu.txt.
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 - <<'PY' | tee -a "$OUT/gpu.txt"
import importlib.util
import torch, triton, transformers
parts = ["torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__,
         "transformers", transformers.__version__]
if importlib.util.find_spec("llguidance"):
    import importlib.metadata
    parts += ["llguidance", importlib.metadata.version("llguidance")]
print(*parts)
PY
nproc | sed 's/^/cpus /' | tee -a "$OUT/gpu.txt"
