"""The FP8 Triton kernels and the attention warm-up on the CPU through Triton's interpreter
(`TRITON_INTERPRET=1`), small shapes: tests/gpu files in a subprocess (the interpreter is
chosen when triton is imported). Skips where triton is not installed (CPU-only installs)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_fp8_kernels_in_the_triton_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "LMNB_FP8_QUICK": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           str(ROOT / "tests/gpu/test_gpu_fp8.py"), "-k", "not every"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900, check=False)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail


def test_attention_warm_up_in_the_triton_interpreter():
    """The Triton attention backend's warm-up (every extend kernel shape, run with the
    decode graphs' capture) in the interpreter, as above."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           str(ROOT / "tests/gpu/test_gpu_attention_backend.py"), "-k", "warm_up"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600, check=False)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    assert "2 passed" in tail, tail
