"""Programmatic dependent launch (PDL, Hopper and later) for lmnb's Triton kernels.

A kernel launched with PDL may start while the kernel before it on the stream is still
running. Every kernel here that opts in follows one rule: before `gdc_wait()` it reads
only what no kernel of the step writes (weights) and writes nothing; after it, the
previous kernel has finished and its writes are visible. Since a kernel starts its wait
only after its own predecessor's wait has returned, the order of the stream is kept
transitively. `gdc_launch_dependents()` at a kernel's start lets the next one launch as
soon as every program of this one is running, so a GEMV's launch and its first weight
loads overlap the small kernel (norm, rotary, attention merge) before it. Both
instructions are no-ops for a kernel launched without PDL, so a kernel that follows a
torch kernel, or one launched without the attribute, is ordered as usual. This is what
a CUDA graph captures too (programmatic edges).

    pdl_enabled(device) -> bool    sm90+, a compiled (not interpreted) Triton, LMNB_PDL != 0
    launch_kwargs(device) -> dict  {"launch_pdl": True} or {}: pass to kernel[grid](...)
"""
from __future__ import annotations

import os
from functools import cache

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:   # an older Triton: PDL stays off (pdl_enabled is False)
    gdc_launch_dependents = gdc_wait = None


@cache
def _device_pdl(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def pdl_enabled(device: torch.device) -> bool:
    if device.type != "cuda" or gdc_wait is None or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    if os.environ.get("LMNB_PDL", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _device_pdl(device.index if device.index is not None else torch.cuda.current_device())


def launch_kwargs(device: torch.device) -> dict:
    return {"launch_pdl": True} if pdl_enabled(device) else {}


@triton.jit
def pdl_trigger(PDL: tl.constexpr):
    """Let the next kernel on the stream launch (its programs then wait in `pdl_wait`)."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Wait until the previous kernel has finished and its writes are visible."""
    if PDL:
        gdc_wait()


@triton.jit
def pdl_start(PDL: tl.constexpr):
    """Trigger, then wait: the first statement of a kernel that reads its inputs at once."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
