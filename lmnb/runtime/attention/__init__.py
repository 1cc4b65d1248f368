"""Attention backends behind one interface; GPU ones are imported lazily."""
from __future__ import annotations

import importlib
import importlib.util

from lmnb.errors import LmnbError
from lmnb.runtime.attention.base import AttentionBackend

# name -> (module, class); modules import triton / flashinfer only when chosen
_REGISTRY = {
    "torch": ("lmnb.runtime.attention.torch_backend", "TorchBackend"),
    "triton": ("lmnb.runtime.attention.triton_backend", "TritonBackend"),
    "flashinfer": ("lmnb.runtime.attention.flashinfer_backend", "FlashInferBackend"),
}


def available_backends(device_type: str) -> list[str]:
    if device_type != "cuda":
        return ["torch"]
    names = []
    for name, mod in (("triton", "triton"), ("flashinfer", "flashinfer")):
        if importlib.util.find_spec(mod) is not None and _module_exists(name):
            names.append(name)
    return names + ["torch"]


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(_REGISTRY[name][0]) is not None


def create_backend(name: str | None, device_type: str, **kw) -> AttentionBackend:
    """`name=None` picks the fastest available for the device."""
    if name is None:
        name = available_backends(device_type)[0]
    if name not in _REGISTRY:
        raise LmnbError(f"unknown attention backend {name!r}; choose one of {sorted(_REGISTRY)}")
    if name != "torch" and device_type != "cuda":
        raise LmnbError(f"attention={name!r} needs a CUDA device; use attention='torch' on CPU")
    mod, cls = _REGISTRY[name]
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise LmnbError(f"attention={name!r} is not usable here ({e}); use 'torch'") from None
    return getattr(module, cls)(**kw)
