"""Runtime options, validated once."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from lmnb.errors import LmnbError
from lmnb.runtime import kv_dtype
from lmnb.runtime.memory import KVPool
from lmnb.runtime.models.config import ModelConfig

# quantization modes -> (device type they run on, what they are). "auto" picks the CPU
# default for a checkpoint that is quantized already (a GGUF file) when no dtype is given.
QUANTIZATIONS = {
    # fp8: the device is checked at load (quant.fp8.plan_fp8 knows which GPUs have FP8)
    "fp8": (None, "FP8 e4m3 projections, per-channel scales (GPUs of capability 8.9+)"),
    "q8": ("cpu", "int8 weight-only matmuls (per output channel)"),
    "q4": ("cpu", "int4 weight-only matmuls (groups of 32), int8 LM head"),
}
CPU_DEFAULT_QUANTIZATION = "q4"
CPU_MODES = tuple(q for q, (where, _) in QUANTIZATIONS.items() if where == "cpu")
_QUANT_OFF = (None, "none")
_QUANT_OPS = {"q8": "_weight_int8pack_mm", "q4": "_weight_int4pack_mm_for_cpu"}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """device: 'cpu' / 'cuda' / 'cuda:N' (None: cuda when available). dtype: None picks fp32
    on CPU and bf16 on CUDA. The KV pool holds `max_total_tokens` tokens when given, else
    as many as `kv_memory_gb` fits (default: 1 GiB on CPU; on CUDA `mem_fraction` of the
    memory free after loading the weights). quantization: 'fp8' (FP8 e4m3 projections on
    GPUs of compute capability 8.9+; see lmnb.runtime.quant.fp8); 'q8' / 'q4' keep the
    weights as int8 / int4 on the CPU; None or 'none' keeps them in `dtype`; 'auto'
    (default) means q4 on the CPU for a GGUF checkpoint when no dtype is given, else none.
    kv_cache_dtype: None / 'auto' (the model dtype) or 'fp8_e4m3' (alias 'fp8'): K/V kept
    as FP8 e4m3 codes with an fp32 scale per token and KV head, about half the bytes, so
    the same KV memory holds ~1.9x the tokens (CUDA GPUs of capability 8.9+, attention
    'triton' or 'torch'; see lmnb.runtime.kv_dtype). Stored canonical: None or 'fp8_e4m3'.
    mixed_steps: a step that extends running requests (their jump-forward text, the next
    chunk of a long prompt) also carries every other running request's next token, instead
    of making them wait for a decode step of their own. None: on CUDA (the step replays the
    decode graph, so a jump costs the batch nothing), off on the CPU (there a decode step is
    the fused few-row step and an extend is not: JSON programs ran 18% slower mixed)."""

    device: str = "cpu"
    dtype: str | None = None
    attention: str | None = None
    kv_memory_gb: float | None = None
    mem_fraction: float = 0.85
    max_total_tokens: int | None = None
    max_running_requests: int | None = None
    context_length: int | None = None
    chunked_prefill_size: int | None = None
    enable_radix_cache: bool = True
    jump_forward: bool = True
    mixed_steps: bool | None = None  # decode tokens ride along running requests' extend steps
    cuda_graph: bool | None = None   # None: on unless LMNB_CUDA_GRAPH=0
    overlap: bool | None = None      # launch step n+1 before settling step n; None: on CUDA
    schedule_policy: str = "lpm"
    seed: int = 0
    quantization: str | None = "auto"
    kv_cache_dtype: str | None = None
    tp_size: int = 1                 # tensor-parallel processes (GPUs); rank 0 is this process
    speculative: str = "auto"        # drafts from the cache and the prompt: "auto" | "off"
    speculative_tokens: int = 8      # most draft tokens verified per request and step

    @classmethod
    def make(cls, device: str | None = None, **kw) -> RuntimeConfig:
        names = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - names)
        if bad:
            raise LmnbError(f"unknown Runtime option {bad[0]!r}; valid: {', '.join(sorted(names))}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise LmnbError("device='cuda' but no CUDA device is visible; use device='cpu'")
        tp = kw.get("tp_size", 1)
        if str(device).startswith("cuda") and isinstance(tp, int) and tp > 1:
            base = torch.device(str(device)).index or 0
            if base + tp > torch.cuda.device_count():
                raise LmnbError(f"tp_size={tp} needs {base + tp} visible GPUs, this machine has "
                                f"{torch.cuda.device_count()}; lower tp_size")
        return cls(device=str(device), **kw)

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise LmnbError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        self._check_quantization()
        for name in ("max_total_tokens", "max_running_requests", "context_length", "chunked_prefill_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise LmnbError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.tp_size, int) or isinstance(self.tp_size, bool) or not 1 <= self.tp_size <= 64:
            raise LmnbError(f"tp_size must be an int from 1 to 64, got {self.tp_size!r}")
        if self.kv_memory_gb is not None and not self.kv_memory_gb > 0:
            raise LmnbError(f"kv_memory_gb must be > 0, got {self.kv_memory_gb}")
        if not 0 < self.mem_fraction < 1:
            raise LmnbError(f"mem_fraction must be in (0, 1), got {self.mem_fraction}")
        if self.schedule_policy not in ("lpm", "fcfs"):
            raise LmnbError("schedule_policy must be 'lpm' or 'fcfs'")
        # canonical name; where it can run is checked at load (Runtime: the device's FP8 support)
        object.__setattr__(self, "kv_cache_dtype", kv_dtype.canonical(self.kv_cache_dtype))
        if self.speculative not in ("auto", "off"):
            raise LmnbError(f"speculative must be 'auto' or 'off', got {self.speculative!r}")
        st = self.speculative_tokens
        if isinstance(st, bool) or not isinstance(st, int) or not 1 <= st <= 64:
            raise LmnbError(f"speculative_tokens must be an int in [1, 64], got {st!r}")
        is_cuda = self.device.startswith("cuda")
        object.__setattr__(self, "max_running_requests", self.max_running_requests or (256 if is_cuda else 64))
        object.__setattr__(self, "chunked_prefill_size", self.chunked_prefill_size or (8192 if is_cuda else 2048))
        if self.overlap is None:  # on the CPU every op runs in the calling thread: nothing to overlap
            object.__setattr__(self, "overlap", is_cuda)
        if self.mixed_steps is None:
            object.__setattr__(self, "mixed_steps", is_cuda)

    def _check_quantization(self) -> None:
        q = self.quantization
        if q in _QUANT_OFF or q == "auto":
            return
        if q not in QUANTIZATIONS:
            raise LmnbError(f"quantization must be one of auto, none, {', '.join(QUANTIZATIONS)}, got {q!r}")
        where, _ = QUANTIZATIONS[q]
        dev = "cuda" if self.device.startswith("cuda") else "cpu"
        if where is not None and where != dev:
            raise LmnbError(f"quantization={q!r} runs on the {where.upper()} only, not on {self.device}; "
                            f"use device={where!r} or quantization=None")
        op = _QUANT_OPS.get(q)
        if op is not None and not hasattr(torch.ops.aten, op):
            raise LmnbError(f"quantization={q!r} needs torch's aten.{op} (torch >= 2.6), "
                            f"this is torch {torch.__version__}; use quantization=None")

    def resolved_quantization(self, quantized_checkpoint: bool) -> str | None:
        """The mode to apply: 'auto' becomes the CPU default for an already-quantized
        checkpoint (GGUF) when neither dtype nor quantization was given."""
        q = self.quantization
        if q in _QUANT_OFF:
            return None
        if q == "auto":
            on_cpu = not self.device.startswith("cuda")
            return CPU_DEFAULT_QUANTIZATION if on_cpu and quantized_checkpoint and self.dtype is None else None
        return q

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return _DTYPES[self.dtype]
        return torch.bfloat16 if self.device.startswith("cuda") else torch.float32

    def kv_storage_dtype(self, model_dtype: torch.dtype | None = None) -> torch.dtype:
        """The KV pool's tensor dtype: FP8 e4m3 or the model dtype."""
        return kv_dtype.storage_dtype(self.kv_cache_dtype, model_dtype or self.torch_dtype)

    def pool_tokens(self, cfg: ModelConfig, dtype: torch.dtype) -> int:
        """KV pool size in tokens; `dtype` is the pool's (`kv_storage_dtype`): FP8 counts
        its codes and scales."""
        if self.max_total_tokens is not None:
            return self.max_total_tokens
        per_token = KVPool.bytes_per_token(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, dtype)
        if self.kv_memory_gb is not None:
            budget = self.kv_memory_gb * 2**30
        elif self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            budget = free * self.mem_fraction - 2 * 2**30  # headroom for activations
        else:
            budget = 2**30
        tokens = int(budget // per_token)
        if tokens < 256:
            raise LmnbError(f"the KV budget fits only {tokens} tokens; give more kv_memory_gb or mem_fraction")
        return tokens

