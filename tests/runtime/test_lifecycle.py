"""Re-created runtimes release what they held: a notebook cell that builds a Runtime is
re-run many times, and `%lm model` swaps models in a live kernel."""
from __future__ import annotations

import gc
import os
import weakref

import pytest
import torch

import lmnb as lm
from lmnb.errors import EngineError
from lmnb.lang.backend import as_backend, get_default_backend, is_runtime

CYCLES = 4    # a leak of a model per cycle (>= 0.3 GB here) shows in two
GROWTH_LIMIT = 200e6   # bytes of RSS growth allowed over all cycles after the first
SMALL_POOL = {"max_total_tokens": 4096}   # the pool is not what is tested: keep cycles quick


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@lm.function
def tiny(s):
    s += "The colour of the sky is" + lm.gen("c", max_tokens=3, temperature=0)


@pytest.fixture(autouse=True)
def _restore_default():
    before = get_default_backend()
    yield
    lm.set_default_backend(before) if before is not None else None


def _cycle() -> weakref.ref:
    rt = lm.Runtime("smollm2", device="cpu", **SMALL_POOL)
    lm.set_default_backend(rt)
    st = tiny.run()
    assert st["c"]
    rt.check_integrity()
    rt.shutdown()
    ref = weakref.ref(rt)
    del rt, st
    gc.collect()
    return ref


@pytest.mark.usefixtures("smollm2")   # skips without the embedded model
def test_recreated_runtimes_do_not_grow_memory():
    _cycle()
    base = rss()
    for _ in range(CYCLES - 1):
        _cycle()
    grown = rss() - base
    assert grown <= GROWTH_LIMIT, f"RSS grew {grown / 1e6:.0f} MB over {CYCLES - 1} re-created runtimes"


@pytest.mark.usefixtures("smollm2")
def test_dropping_the_last_reference_frees_the_runtime():
    rt = lm.Runtime("smollm2", device="cpu")
    backend = as_backend(rt)
    assert as_backend(rt) is backend          # one wrapper while the runtime lives
    ref = weakref.ref(rt)
    rt.generate("Hi", max_new_tokens=2, temperature=0)
    rt.shutdown()
    del rt, backend
    gc.collect()
    assert ref() is None, "a process-wide table still holds the runtime"


@pytest.mark.usefixtures("smollm2")
def test_a_shut_down_runtime_holds_no_weights_and_says_so():
    rt = lm.Runtime("smollm2", device="cpu")
    lm.set_default_backend(rt)   # the default backend keeps the object, not its memory
    rt.shutdown()
    rt.shutdown()                # idempotent
    assert rt.model is None and rt.pool is None and rt.engine.runner is None
    with pytest.raises(EngineError, match="shut down"):
        rt.generate("Hi", max_new_tokens=2)
    with pytest.raises(EngineError, match="shut down"):
        rt.cache_stats()
    assert "smollm2" in repr(rt)


def test_is_runtime_is_the_one_test():
    class Lookalike:
        tokenizer = None

        def submit(self, *a, **k): ...

        def cache_stats(self): ...

    assert not is_runtime(Lookalike())
    assert not is_runtime(None)


@pytest.mark.usefixtures("smollm2")
def test_model_swaps_in_a_shell_release_the_old_model():
    from IPython.core.interactiveshell import InteractiveShell

    from lmnb.magics.lm_magics import LmMagics
    from lmnb.magics.session import KernelSession
    from lmnb.runtime.loader import embedded_gguf_path

    sh = InteractiveShell.instance()
    session = KernelSession(device="cpu", **SMALL_POOL)
    sh.register_magics(LmMagics(sh, session=session))
    specs = ["smollm2", f"gguf:{embedded_gguf_path()}"]   # two specs: each swap really loads
    refs = []
    try:
        sh.run_line_magic("lm", f"model {specs[1]}")
        base = rss()
        for i in range(CYCLES):
            refs.append(weakref.ref(session.runtime))
            sh.run_line_magic("lm", f"model {specs[i % 2]}")
            assert session.runtime.generate("Hi", max_new_tokens=2, temperature=0)[0]["text"] is not None
        gc.collect()
        grown = rss() - base
        assert grown <= GROWTH_LIMIT, f"RSS grew {grown / 1e6:.0f} MB over {CYCLES} %lm model swaps"
        assert all(r() is None or r().model is None for r in refs)
    finally:
        session.close()


def _cuda_cycle() -> None:
    rt = lm.Runtime("dummy:qwen3-0.6b", device="cuda", kv_memory_gb=1)
    rt.generate(["Hello there"] * 4, max_new_tokens=16, temperature=0, ignore_eos=True)
    assert torch.cuda.memory_allocated() > (1 << 30)
    rt.shutdown()
    del rt
    gc.collect()
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_cuda_memory_returns_to_baseline_after_shutdown():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _cuda_cycle()   # process-wide one-time state (cuBLAS workspaces, the capture stream)
    base = torch.cuda.memory_allocated()
    for _ in range(3):
        _cuda_cycle()
        assert torch.cuda.memory_allocated() <= base + (1 << 20), \
            f"{(torch.cuda.memory_allocated() - base) / 2**20:.0f} MiB still allocated after shutdown"
