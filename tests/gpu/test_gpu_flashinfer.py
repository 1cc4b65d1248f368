"""The flashinfer backend against the torch backend and float64, through `forward`
(skipped where flashinfer is not installed). FlashInfer JIT-compiles per (dtype,
head_dim), so the cases stay on bf16 / head_dim 128; fp32 checks the torch fallback."""
from __future__ import annotations

import pytest
import torch
from gpu_common import DEVICE, needs_gpu_or_interpreter

needs_gpu_or_interpreter()
if DEVICE.type != "cuda":
    pytest.skip("flashinfer needs a CUDA device", allow_module_level=True)
pytest.importorskip("flashinfer")
pytestmark = pytest.mark.gpu

from test_gpu_attention_backend import check_against_torch_backend

from lmnb.runtime.attention import create_backend
from lmnb.runtime.attention.flashinfer_backend import FlashInferBackend


@pytest.mark.parametrize("bs,group", [(1, 1), (3, 3), (17, 4), (64, 8)])
def test_flashinfer_matches_torch_backend(bs, group):
    check_against_torch_backend(FlashInferBackend, bs, group, 128, torch.bfloat16)


def test_flashinfer_ragged_prefill_without_prefixes():
    check_against_torch_backend(FlashInferBackend, 5, 4, 128, torch.bfloat16,
                                prefixes=[0] * 5)


def test_flashinfer_fp32_falls_back_to_torch():
    check_against_torch_backend(FlashInferBackend, 3, 2, 64, torch.float32)


def test_create_flashinfer_backend():
    b = create_backend("flashinfer", "cuda", num_heads=8, num_kv_heads=2, head_dim=128,
                       scale=128 ** -0.5)
    assert isinstance(b, FlashInferBackend) and b.name == "flashinfer"
