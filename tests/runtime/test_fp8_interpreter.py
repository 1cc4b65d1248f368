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


def _interpreted(test_file: str, *args: str, timeout: int = 900, **env) -> str:
    """pytest on a tests/gpu file in a subprocess under the interpreter; its output's tail."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", **env}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           str(ROOT / "tests/gpu" / test_file), *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout, check=False)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    return tail


def test_fp8_kernels_in_the_triton_interpreter():
    tail = _interpreted("test_gpu_fp8.py", "-k", "not every", LMNB_FP8_QUICK="1")
    assert " passed" in tail and "failed" not in tail


def test_attention_warm_up_in_the_triton_interpreter():
    """The Triton attention backend's warm-up (every extend kernel shape, run with the
    decode graphs' capture)."""
    tail = _interpreted("test_gpu_attention_backend.py", "-k", "warm_up", timeout=600)
    assert "2 passed" in tail, tail
