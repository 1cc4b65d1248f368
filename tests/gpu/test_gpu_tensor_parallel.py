"""Tensor parallelism on CUDA (NCCL, 2 GPUs): TP=2 fp32 greedy tokens equal TP=1 with the
triton backend and overlap on (run-ahead tokens broadcast on the device), graphs off;
with LMNB_TP_CUDA_GRAPH=1 the captured all-reduces give the eager tokens; a killed worker
is a one-line EngineError, not a hang. Not run when this was written (no multi-GPU
machine was lent): bench/gpu_tp.sh runs it."""
from __future__ import annotations

import os
import random
import signal
import time

import pytest
import torch

if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
    pytest.skip("needs 2 CUDA devices", allow_module_level=True)
pytestmark = pytest.mark.gpu

import lmnb as lm
from lmnb.errors import EngineError

SPEC = "dummy:smollm2-135m"
OPTS = {"device": "cuda", "dtype": "float32", "kv_memory_gb": 1, "max_running_requests": 16}
_rng = random.Random(0)
PROMPTS = [[_rng.randrange(10, 49000) for _ in range(n)] for n in (5, 17, 64, 130, 9, 33)]
GEN = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}


def _tokens(rt) -> list[list[int]]:
    return [r.output_ids for r in rt.generate(PROMPTS, **GEN)]


@pytest.fixture(scope="module")
def reference():
    with lm.Runtime(SPEC, cuda_graph=False, **OPTS) as rt:
        return _tokens(rt)


def test_tp2_equals_tp1_on_cuda(reference):
    with lm.Runtime(SPEC, tp_size=2, **OPTS) as rt:
        assert rt.config.overlap
        assert _tokens(rt) == reference
        assert _tokens(rt) == reference       # again, now with radix-cache hits
        rt.check_integrity()


def test_tp2_cuda_graphs(reference, monkeypatch):
    monkeypatch.setenv("LMNB_TP_CUDA_GRAPH", "1")
    with lm.Runtime(SPEC, tp_size=2, **OPTS) as rt:
        assert rt.engine.runner.shard.use_graphs
        assert _tokens(rt) == reference
        rt.check_integrity()


def test_killed_worker_on_nccl_is_engine_error():
    rt = lm.Runtime("dummy:tiny", tp_size=2, **OPTS)
    try:
        h = rt.submit([1, 2, 3], stream=True, max_new_tokens=4000, temperature=0, ignore_eos=True)
        next(iter(h))
        os.kill(rt.engine.runner.worker_pids[0], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="tensor-parallel rank 1"):
            h.result()
        assert time.monotonic() - t0 < 60
    finally:
        rt.shutdown()
