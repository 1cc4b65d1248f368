"""lmnb's own CPU matmul kernels for quantized weights (`cpu_kernels.c`), built on first use.

The C source ships with the package. The first runtime that needs it compiles it with the
machine's C compiler (`$CC`, else `cc`) for the CPU it runs on (`-march=native`, OpenMP), into
`$LMNB_CACHE_DIR` (default `~/.cache/lmnb`). The library's name carries a hash of the
source, the flags, the compiler and the CPU's feature flags, so a changed source or another
machine builds its own. It takes about a second; later runtimes load the cached library.

Where no compiler works, or with `LMNB_CPU_KERNELS=torch`, `load()` returns None and
the quantized layers use torch's own int4/int8 kernels (`status()` says why).

The library uses the process's OpenMP runtime (the one torch loaded: same soname), so a
call's threads are the calling thread's OpenMP team, as for torch's own CPU ops.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch

GROUP = 32   # activation and 4-bit weight group along the input dim: GGUF Q4_1's block (the
             # C source's GROUP, which `build` checks; cpu_linear.INT4_GROUP is this one)
COLS = 16    # output columns per block of the repacked weights (the C source's COLS, checked too)
KEYS = 16    # keys per score block of the attention (the C source's KEYS, checked too)
SPLIT = 128  # keys per attention work unit (SPLIT, checked): a row's units merge in key order
HEAD_LANES = 16   # the attention takes head dims that are multiples of this (HEAD_LANES, checked)
SOURCE = Path(__file__).with_name("cpu_kernels.c")
# -ffp-contract=off: a * b + c stays two roundings in the C loops, as written, in every
# build (GCC would otherwise fuse it where the target has FMA, and the portable build's bits
# would depend on the machine)
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
ENV_SWITCH = "LMNB_CPU_KERNELS"   # "torch": do not build or use them
_SIMD = {0: "scalar C", 1: "AVX2", 2: "AVX2 + AVX512-VNNI", 3: "AVX-512 + VNNI"}
_P, _I64 = ctypes.c_void_p, ctypes.c_int64


class Linear(ctypes.Structure):
    """`lmnb_linear`: one quantized layer's weights, as the C code reads them."""
    _fields_ = [("bits", _I64), ("n", _I64), ("k", _I64), ("w", _P), ("scale", _P),
                ("minv", _P), ("bias", _P)]


class Layer(ctypes.Structure):
    """`lmnb_layer`: one decoder layer for the fused step."""
    _fields_ = [("qkv", Linear), ("o", Linear), ("gate_up", Linear), ("down", Linear),
                ("norm1", _P), ("norm2", _P), ("k_cache", _P), ("v_cache", _P)]


class Model(ctypes.Structure):
    """`lmnb_model`: the decoder for the fused step."""
    _fields_ = [("n_layers", _I64), ("hidden", _I64), ("heads", _I64), ("kv_heads", _I64),
                ("head_dim", _I64), ("inter", _I64), ("eps", ctypes.c_float),
                ("scale", ctypes.c_float), ("cos", _P), ("sin", _P),
                ("layers", ctypes.POINTER(Layer)), ("final_norm", _P)]


def linear_desc(bits: int, n: int, k: int, weight: torch.Tensor, scale: torch.Tensor,
                minv: torch.Tensor | None, bias: torch.Tensor | None) -> Linear:
    """The C view of a layer's buffers (which must stay alive and in place while it is used):
    n outputs, k inputs, the weights as `pack_q4` / `pack_q8` and `pack_cols` leave them."""
    return Linear(bits, n, k, weight.data_ptr(), scale.data_ptr(),
                  None if minv is None else minv.data_ptr(),
                  None if bias is None else bias.data_ptr())


def _check(rc: int, what: str) -> None:
    if rc == -2:
        raise ValueError(f"lmnb CPU kernel {what}: the head dim must be a multiple of {HEAD_LANES}"
                         " and the query heads a multiple of the KV heads")
    if rc:
        raise MemoryError(f"lmnb CPU kernel {what}: out of memory for its buffers")


class Kernels:
    """The loaded library, called with torch tensors (CPU, contiguous)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.simd = _SIMD.get(lib.lmnb_kernels_simd(), "unknown")
        self._linear, self._step, self._quant = lib.lmnb_linear_forward, lib.lmnb_decode_step, lib.lmnb_quant_rows
        self._attention = lib.lmnb_attention
        self._linear.argtypes = [ctypes.POINTER(Linear), _P, _I64, _P, ctypes.c_int]
        self._step.argtypes = [ctypes.POINTER(Model), _I64, _P, _P, _P, _P, _P, _P, ctypes.c_int]
        self._quant.argtypes = [_P, _I64, _I64, _P, _P, _P]
        self._attention.argtypes = [_P, _I64, _I64, _I64, _I64, ctypes.c_float, _P, _P, _P, _P, _P, _P,
                                    ctypes.c_int]
        self._linear.restype = self._step.restype = self._attention.restype = ctypes.c_int

    def linear(self, desc: Linear, x: torch.Tensor) -> torch.Tensor:
        """x [R, K] fp32 contiguous @ W.T (+ bias) -> [R, N] fp32."""
        y = torch.empty(x.shape[0], desc.n, dtype=torch.float32)
        _check(self._linear(ctypes.byref(desc), x.data_ptr(), x.shape[0], y.data_ptr(),
                            torch.get_num_threads()), "linear")
        return y

    def decode_step(self, model: Model, x: torch.Tensor, positions: torch.Tensor,
                    out_slots: torch.Tensor, key_slots: torch.Tensor, key_off: torch.Tensor,
                    key_cnt: torch.Tensor) -> torch.Tensor:
        """The decoder layers and final norm for x [R, hidden] fp32 (in place; see
        `lmnb_decode_step`); the index tensors are int64, contiguous."""
        _check(self._step(ctypes.byref(model), x.shape[0], x.data_ptr(), positions.data_ptr(),
                          out_slots.data_ptr(), key_slots.data_ptr(), key_off.data_ptr(),
                          key_cnt.data_ptr(), torch.get_num_threads()), "decode step")
        return x

    def attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  key_slots: torch.Tensor, key_off: torch.Tensor, key_cnt: torch.Tensor,
                  scale: float) -> torch.Tensor:
        """The fused step's attention alone: q [R, heads, D] fp32 against the caches
        [slots, kv_heads, D] fp32, row r over the slots key_slots[key_off[r] ..
        key_off[r] + key_cnt[r]) (int64) -> [R, heads, D]. All contiguous."""
        r, heads, d = q.shape
        out = torch.empty_like(q)
        _check(self._attention(q.data_ptr(), r, heads, k_cache.shape[1], d, scale, k_cache.data_ptr(),
                               v_cache.data_ptr(), key_slots.data_ptr(), key_off.data_ptr(),
                               key_cnt.data_ptr(), out.data_ptr(), torch.get_num_threads()), "attention")
        return out

    def quant_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kernels' activation quantization of x [R, K] fp32: (int8 codes [R, K], step
        per group [R, K/32], fp32 sum per group [R, K/32])."""
        r, k = x.shape
        xq = torch.empty(r, k, dtype=torch.int8)
        xd = torch.empty(r, k // GROUP)
        xs = torch.empty(r, k // GROUP)
        self._quant(x.data_ptr(), r, k, xq.data_ptr(), xd.data_ptr(), xs.data_ptr())
        return xq, xd, xs


def fits(n_in: int) -> bool:
    """The kernels take inputs in whole groups of 32."""
    return n_in % GROUP == 0


# The kernels' weight layout (see cpu_kernels.c, "the matmul tiles"): blocks of COLS output
# columns; in a block, each group of GROUP inputs is a run of quads (4 consecutive inputs),
# a quad holding its 4 codes for each of the block's columns in turn. The packers below
# and their inverses are the one definition of it on the Python side.

def pack_q4(codes: torch.Tensor) -> torch.Tensor:
    """codes 0..15 [N, K] (N % 16 == 0) -> uint8 [N * K / 2]: per block and group, 4
    chunks of 64 bytes; chunk i holds quad i (low nibbles) and quad i + 4 (high nibbles)."""
    n, k = codes.shape
    q = codes.to(torch.uint8).reshape(n // COLS, COLS, k // GROUP, 2, 4, 4)   # b c g half i t
    q = q.permute(0, 2, 3, 4, 1, 5)                                            # b g half i c t
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1).contiguous()


def unpack_q4(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The inverse of `pack_q4`: uint8 codes 0..15 [N, K]."""
    q = packed.reshape(n // COLS, k // GROUP, 1, 4, COLS, 4)
    q = torch.cat([q & 0x0F, q >> 4], dim=2)                                   # b g half i c t
    return q.permute(0, 4, 1, 2, 3, 5).reshape(n, k).contiguous()


def pack_q8(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes -127..127 [N, K] -> uint8 [N * K], code + 128: per block and group, 8
    quads of 64 bytes; the last N % 16 columns form a narrower block of the same order."""
    n, k = codes.shape
    u = (codes.to(torch.int16) + 128).to(torch.uint8)
    full = n // COLS * COLS
    parts = [u[:full].reshape(n // COLS, COLS, k // GROUP, 8, 4).permute(0, 2, 3, 1, 4).reshape(-1)]
    if full < n:
        parts.append(u[full:].reshape(n - full, k // GROUP, 8, 4).permute(1, 2, 0, 3).reshape(-1))
    return torch.cat(parts).contiguous()


def unpack_q8(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The inverse of `pack_q8`: int8 codes [N, K]."""
    full = n // COLS * COLS
    u = packed.to(torch.int16) - 128
    rows = [u[:full * k].reshape(n // COLS, k // GROUP, 8, COLS, 4).permute(0, 3, 1, 2, 4).reshape(full, k)]
    if full < n:
        rows.append(u[full * k:].reshape(k // GROUP, 8, n - full, 4).permute(2, 0, 1, 3).reshape(n - full, k))
    return torch.cat(rows).to(torch.int8)


def pack_cols(v: torch.Tensor) -> torch.Tensor:
    """A per-group value [N, G] (the 4-bit scales and mins; N % 16 == 0) -> [N/16, G, 16]."""
    n, g = v.shape
    return v.reshape(n // COLS, COLS, g).transpose(1, 2).contiguous()


def unpack_cols(v: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_cols`: [N, G]."""
    b, g, c = v.shape
    return v.transpose(1, 2).reshape(b * c, g).contiguous()


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def build(extra_flags: tuple[str, ...] = ()) -> tuple[Kernels | None, str]:
    """Build (or find in the cache) and load the library: (kernels, "") or (None, why).
    `extra_flags` are added to FLAGS (tests build an AVX2-only variant with them)."""
    flags = (*FLAGS, *extra_flags)
    cc = os.environ.get("CC", "cc")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False,
                                 timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"no C compiler ({cc}: {e.__class__.__name__})"
    src = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, " ".join(flags).encode(), "".join(version).encode(),
                                     _cpu_flags().encode()])).hexdigest()[:16]
    from lmnb.runtime.loader import cache_dir   # (not at import: models import this module)

    out = cache_dir() / f"cpu_kernels-{key}.so"
    if not out.exists():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
            os.close(fd)
        except OSError as e:
            return None, f"cannot write the kernel cache {out.parent} ({e.strerror}); set LMNB_CACHE_DIR"
        try:
            res = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"],
                                 capture_output=True, text=True, check=False, timeout=300)
            if res.returncode != 0:
                err = (res.stderr.strip().splitlines() or ["failed"])[-1]
                return None, f"building {SOURCE.name} failed: {err}"
            os.replace(tmp, out)   # atomic: concurrent builders each write their own file
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"building {SOURCE.name} failed: {e}"
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:
        return None, f"loading {out.name} failed: {e}"
    built = (lib.lmnb_kernels_group(), lib.lmnb_kernels_cols(), lib.lmnb_kernels_keys(),
             lib.lmnb_kernels_split(), lib.lmnb_kernels_head_lanes())
    if built != (GROUP, COLS, KEYS, SPLIT, HEAD_LANES):
        return None, (f"{out.name} has GROUP, COLS, KEYS, SPLIT, HEAD_LANES = {built}, not "
                      f"{(GROUP, COLS, KEYS, SPLIT, HEAD_LANES)}")
    return Kernels(lib), ""


@functools.cache
def _loaded() -> tuple[Kernels | None, str]:
    if os.environ.get(ENV_SWITCH, "").lower() == "torch":
        return None, f"{ENV_SWITCH}=torch"
    return build()


def load() -> Kernels | None:
    """The kernels, built on first use; None where they cannot be (see `status`)."""
    return _loaded()[0]


def status() -> str:
    """What the quantized CPU layers run on, in words."""
    k, why = _loaded()
    return f"lmnb C kernels ({k.simd})" if k is not None else f"torch kernels ({why})"
