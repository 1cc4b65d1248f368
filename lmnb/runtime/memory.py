"""KV memory: a token-level slot allocator, the KV tensors, and the req_to_token table.

Slot 0 is reserved as a padding target (kernels may write garbage there), so a pool of
`size` usable slots has `size + 1` rows. The allocator is pure CPU bookkeeping; the
tensors live on the model's device.
"""
from __future__ import annotations

import math
import mmap

import torch

from lmnb.errors import LmnbError
from lmnb.runtime import kv_dtype


class TokenSlotAllocator:
    """Free list of KV slots 1..size. `alloc(n)` returns None when short (the caller
    evicts from the radix cache and retries); `free` takes slots back.

    A stack whose top is the lowest free slot, handed out in ascending order: a request
    decoding alone gets consecutive slots step after step, so its K/V sit in one slot
    range that attention on the CPU reads in place (torch_backend.contiguous_range)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise LmnbError(f"the KV pool needs at least 1 slot, got {size}")
        self.size = size
        self.clear()

    def clear(self) -> None:
        self._free = torch.arange(self.size, 0, -1, dtype=torch.int64)
        self._n_free = self.size

    def available(self) -> int:
        return self._n_free

    def alloc(self, n: int) -> torch.Tensor | None:
        if n > self._n_free:
            return None
        out = self._free[self._n_free - n : self._n_free].flip(0)
        self._n_free -= n
        return out

    def free(self, slots: torch.Tensor) -> None:
        n = slots.numel()
        if n == 0:
            return
        if self._n_free + n > self.size:
            raise RuntimeError("KV slot double free")
        self._free[self._n_free : self._n_free + n] = slots.to(torch.int64).flip(0)
        self._n_free += n

    def free_slots(self) -> torch.Tensor:
        return self._free[: self._n_free]


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero CPU tensor on an anonymous memory map: the kernel hands out zero pages on
    first write, so untouched parts use no memory, and the map is unmapped (returned to
    the OS at once) when the last view of the tensor is gone."""
    count = math.prod(shape)
    nbytes = count * torch.tensor([], dtype=dtype).element_size()
    buf = mmap.mmap(-1, max(nbytes, 1))
    return torch.frombuffer(buf, dtype=dtype, count=count).view(shape)


class KVPool:
    """K and V buffers per layer, `[size + 1, kv_heads, head_dim]` each.

    With `dtype` FP8 (`kv_dtype.FP8_KV`) the buffers hold e4m3 codes and `k_scale[layer]`
    / `v_scale[layer]` (`[size + 1, kv_heads]` fp32) the scale of each row (see kv_dtype:
    one per token and KV head); otherwise the scale lists are None. Every writer quantizes
    (`store` here, the Triton backend's store kernels) and every reader dequantizes."""

    def __init__(self, size: int, num_layers: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.size, self.dtype, self.device = size, dtype, device
        self.quantized = kv_dtype.is_fp8(dtype)
        self.allocator = TokenSlotAllocator(size)
        shape = (size + 1, kv_heads, head_dim)
        self.k, self.v = self._buffers(num_layers, shape, dtype, device)
        self.k_scale = self.v_scale = None
        if self.quantized:
            self.k_scale, self.v_scale = self._buffers(num_layers, shape[:2], kv_dtype.SCALE_DTYPE, device)

    @staticmethod
    def _buffers(num_layers: int, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if torch.device(device).type == "cpu":
            # zero pages from the kernel, resident only once written: a pool sized for a
            # long context costs the memory of the tokens it holds
            kv = lazy_zeros((2, num_layers) + shape, dtype)
            return list(kv[0]), list(kv[1])
        return ([torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)])

    @staticmethod
    def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """K/V bytes of one token over all layers, scales included (`kv_dtype.bytes_per_token`)."""
        return kv_dtype.bytes_per_token(num_layers, kv_heads, head_dim, dtype)

    @property
    def token_bytes(self) -> int:
        """What one token of this pool costs in bytes."""
        return self.bytes_per_token(len(self.k), self.k[0].shape[1], self.k[0].shape[2], self.dtype)

    def store(self, layer: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.quantized:
            (self.k[layer][loc], self.k_scale[layer][loc]) = kv_dtype.quantize_ref(k)
            (self.v[layer][loc], self.v_scale[layer][loc]) = kv_dtype.quantize_ref(v)
            return
        self.k[layer][loc] = k.to(self.dtype)
        self.v[layer][loc] = v.to(self.dtype)

    def read(self, layer: int, rows, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) of `layer` at `rows` (a slice, an index tensor, or a function of a
        buffer returning its rows) in `dtype`, dequantized when FP8."""
        pick = rows if callable(rows) else (lambda buf: buf[rows])
        k, v = pick(self.k[layer]), pick(self.v[layer])
        if not self.quantized:
            return k.to(dtype), v.to(dtype)
        return (kv_dtype.dequantize_ref(k, pick(self.k_scale[layer]), dtype),
                kv_dtype.dequantize_ref(v, pick(self.v_scale[layer]), dtype))

    def scales(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(k_scale, v_scale) of `layer`, or (None, None) for a pool in the model dtype."""
        if not self.quantized:
            return None, None
        return self.k_scale[layer], self.v_scale[layer]


class ReqToTokenPool:
    """Row per running request: the KV slot of each of its token positions.

    The device table is what kernels read; `host` mirrors it on the CPU so that the
    scheduler's bookkeeping (what a request owns, what to free or cache) never waits for
    the GPU: with overlapped steps, a device read would stall until the step in flight
    has finished. Writes go to both; copies to the device never block the host."""

    def __init__(self, max_reqs: int, max_context: int, device: torch.device) -> None:
        self.max_reqs, self.max_context = max_reqs, max_context
        self.table = torch.zeros((max_reqs, max_context), dtype=torch.int32, device=device)
        self.host = self.table if self.table.device.type == "cpu" else \
            torch.zeros((max_reqs, max_context), dtype=torch.int32)
        self._free = list(range(max_reqs - 1, -1, -1))

    def available(self) -> int:
        return len(self._free)

    def alloc(self) -> int | None:
        return self._free.pop() if self._free else None

    def free(self, idx: int) -> None:
        self._free.append(idx)

    def read(self, idx: int, start: int, end: int) -> torch.Tensor:
        """Slots of positions start..end-1 of row idx (int64, CPU)."""
        return self.host[idx, start:end].to(torch.int64)

    def write_many(self, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor) -> None:
        """table[rows[i], cols[i]] = slots[i] for a whole batch in one copy."""
        if slots.numel():
            vals = slots.to(torch.int32)
            if self.host is not self.table:
                self.host[rows, cols] = vals
            dev = self.table.device
            self.table[rows.to(dev, non_blocking=True), cols.to(dev, non_blocking=True)] = \
                vals.to(dev, non_blocking=True)

    def write(self, idx: int, start: int, slots: torch.Tensor) -> None:
        if slots.numel():
            vals = slots.to(torch.int32)
            end = start + slots.numel()
            if self.host is not self.table:
                self.host[idx, start:end] = vals
            self.table[idx, start:end] = vals.to(self.table.device, non_blocking=True)
