"""`lmnb.Runtime`: the public face of the kernel-resident engine."""
from __future__ import annotations

import atexit
import time
import weakref
from collections.abc import Iterator, Sequence

import torch

from lmnb.errors import EngineError, LmnbError
from lmnb.runtime import loader
from lmnb.runtime.attention import create_backend
from lmnb.runtime.device_sampling import DeviceSampler
from lmnb.runtime.engine import Engine
from lmnb.runtime.handle import RequestGroup, RequestHandle
from lmnb.runtime.memory import KVPool, ReqToTokenPool
from lmnb.runtime.model_runner import ModelRunner
from lmnb.runtime.models.llama import LlamaForCausalLM
from lmnb.runtime.output import OutputProcessor
from lmnb.runtime.quant import fp8
from lmnb.runtime.radix_cache import RadixCache
from lmnb.runtime.request import Req, new_rid
from lmnb.runtime.results import GenResult
from lmnb.runtime.runtime_config import RuntimeConfig
from lmnb.runtime.sampling_params import SamplingParams
from lmnb.runtime.scheduler import Scheduler
from lmnb.runtime.speculative import Drafter
from lmnb.runtime.tokenizer import eos_token_ids


class Runtime:
    """A model loaded in this process with its KV pool, radix cache and engine thread.

    `Runtime("smollm2")`; `device=None` picks CUDA when available. Keyword options are
    those of `RuntimeConfig` (kv_memory_gb, max_total_tokens, max_running_requests,
    context_length, chunked_prefill_size, enable_radix_cache, jump_forward, cuda_graph,
    overlap, attention, dtype, schedule_policy, seed, quantization, kv_cache_dtype,
    speculative, speculative_tokens).

    `speculative="auto"` (the default) verifies draft tokens taken from the radix cache
    (what was generated after the same text before) and from n-gram matches in the
    prompt, the output and recent requests, several per step, for greedy requests (and
    sampling ones that pass `speculative=True`); `"off"` never drafts.
    """

    def __init__(self, spec: str = "smollm2", device: str | None = None, **options) -> None:
        self.spec = spec
        self.config = RuntimeConfig.make(device=device, **options)
        self.engine = None
        lm = loader.load(spec)
        self.loaded, self.model_config, self.tokenizer = lm, lm.config, lm.tokenizer
        cfg, rc = lm.config, self.config
        self.device, self.dtype = torch.device(rc.device), rc.torch_dtype
        self.quant = fp8.plan_fp8(rc.quantization, lm.hf_config, cfg, self.device, self.dtype)
        self.quantization = fp8.describe(self.quant, lm.hf_config, self.dtype)
        self.model = LlamaForCausalLM(cfg, self.dtype, self.device, quant=self.quant)
        self.model.load_weights(fp8.model_weights(lm.weights(self.device, self.dtype), lm.hf_config))
        self.model.eval()
        self.context_len = min(cfg.max_position, rc.context_length or cfg.max_position)
        pool_size = rc.pool_tokens(cfg, self.dtype)
        self.pool = KVPool(pool_size, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, self.dtype, self.device)
        self.req_pool = ReqToTokenPool(rc.max_running_requests + 1, self.context_len + 1, self.device)
        self.cache = RadixCache(self.pool.allocator.free, disabled=not rc.enable_radix_cache)
        self.scheduler = Scheduler(self.pool.allocator, self.req_pool, self.cache,
                                   rc.chunked_prefill_size, rc.max_running_requests, rc.schedule_policy)
        backend = create_backend(rc.attention, self.device.type, num_heads=cfg.num_heads,
                                 num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                                 scale=cfg.head_dim ** -0.5)
        self.attention_backend = backend.name
        self.eos_token_ids = eos_token_ids(lm.tokenizer, lm.generation_config)
        self.outputs = OutputProcessor(lm.tokenizer, self.eos_token_ids, self.context_len, rc.jump_forward)
        self._grammars = None
        self._seed_gen = torch.Generator().manual_seed(rc.seed)
        runner = ModelRunner(self.model, backend, self.pool, self.req_pool, cuda_graph=rc.cuda_graph)
        self.drafter = Drafter(self.cache, rc.speculative, rc.speculative_tokens, self.context_len)
        self.engine = Engine(self.scheduler, runner, DeviceSampler(self.eos_token_ids), self.outputs,
                             overlap=rc.overlap, drafter=self.drafter)
        atexit.register(_shutdown_ref, weakref.ref(self))

    # -- text <-> tokens ---------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # -- requests ---------------------------------------------------------------
    def submit(self, prompt: str | Sequence[int], *, stream: bool = False,
               **sampling) -> RequestHandle | RequestGroup:
        """Queue one request and return its handle at once. With `n` > 1 the handle is a
        `RequestGroup` of n samples; they share the prompt's KV (the first computes it,
        the others wait one step and hit the radix cache)."""
        self.engine.ensure_alive()
        params = SamplingParams.make(**sampling)
        ids = self._prompt_ids(prompt)
        max_new = min(params.max_new_tokens, self.context_len - len(ids))
        if len(ids) + max_new > self.pool.size:
            raise LmnbError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new}) exceeds the KV pool "
                f"({self.pool.size} tokens); lower max_new_tokens or give Runtime(kv_memory_gb=...) more")
        params = params.replace(max_new_tokens=max_new, n=1)
        guide = None
        if params.regex is not None or params.json_schema is not None:
            guide = self.grammars().compile(regex=params.regex, json_schema=params.json_schema)
        handles: list[RequestHandle] = []
        try:
            for j in range(SamplingParams.make(**sampling).n):
                seed = params.seed + j if params.seed is not None else \
                    int(torch.randint(0, 2**62, (1,), generator=self._seed_gen))
                lead = handles[0].req if handles and self.config.enable_radix_cache else None
                handles.append(self._submit_one(ids, params, seed, guide, stream, lead))
        except BaseException:
            for h in handles:
                h.abort()
            raise
        return handles[0] if len(handles) == 1 else RequestGroup(handles)

    def _submit_one(self, ids: list[int], params: SamplingParams, seed: int, guide,
                    stream: bool, leader: Req | None = None) -> RequestHandle:
        req = Req(new_rid(), ids, params, stream=stream, created=time.perf_counter(),
                  prompt_leader=leader)
        req.generator = torch.Generator(device=self.device)
        req.generator.manual_seed(seed)
        if guide is not None:
            req.guide = guide.cursor()
        self.engine.submit(req)
        return RequestHandle(self.engine, req, ids)

    def generate(self, prompts, **sampling) -> list[GenResult]:
        """Generate for one prompt or a list (texts or token-id lists); always a list of
        results with `text`, `output_ids` and `meta`. All prompts are batched together;
        with `n` > 1 each prompt gives n results in a row."""
        handles: list = []
        try:  # Ctrl-C between submissions must abort those already queued too
            for p in _as_prompt_list(prompts):
                handles.append(self.submit(p, **sampling))
            out: list[GenResult] = []
            for h in handles:
                res = h.result()
                out += res.samples if res.samples else [res]
            return out
        except BaseException:
            for h in handles:
                h.abort()
            raise

    def stream(self, prompt: str | Sequence[int], **sampling) -> Iterator[str]:
        """Yield the text of one generation in pieces as it is produced."""
        yield from self.submit(prompt, stream=True, **sampling)

    def abort(self, rid: str) -> None:
        self.engine.abort(rid)

    def alive(self) -> bool:
        """True while the engine thread runs and has not failed."""
        return self.engine is not None and self.engine.alive()

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise LmnbError("the prompt is empty; give at least one character")
            ids = self.encode(prompt)
        elif isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            if any(t < 0 or t >= self.model_config.vocab_size for t in ids):
                raise LmnbError(f"token ids must be in [0, {self.model_config.vocab_size})")
        else:
            raise LmnbError(f"a prompt is a str or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise LmnbError("the prompt is empty; give at least one token")
        if len(ids) >= self.context_len:
            raise LmnbError(f"the prompt has {len(ids)} tokens but the context holds {self.context_len}; "
                            "shorten the prompt")
        return ids

    def grammars(self):
        if self._grammars is None:
            from lmnb.runtime.constrained import GrammarBackend

            self._grammars = GrammarBackend(self.tokenizer, self.model_config.vocab_size, self.eos_token_ids)
        return self._grammars

    # -- inspection & control -------------------------------------------------------
    def cache_stats(self) -> dict:
        return self._call(self._cache_stats)

    def _cache_stats(self) -> dict:
        s, c, a = self.scheduler, self.cache, self.pool.allocator
        return {
            "pool_size": a.size, "free_slots": a.available(), "cached_tokens": c.total_size(),
            "evictable_tokens": c.evictable_size, "protected_tokens": c.protected_size,
            "in_use_tokens": int(s.in_use_slots().numel()), "nodes": len(c.nodes()),
            "running": len(s.running), "waiting": len(s.waiting), "retractions": s.retractions,
            "evicted_tokens": c.evicted_tokens,
            "hit_tokens": s.hit_tokens, "prompt_tokens": s.prompt_tokens,
            "hit_rate": s.hit_tokens / s.prompt_tokens if s.prompt_tokens else 0.0,
        }

    def check_integrity(self) -> None:
        """Assert free + cached + in-use == pool size (runs on the engine thread)."""
        self._call(lambda: self.scheduler.check_integrity())

    def flush_cache(self) -> int:
        """Evict every unlocked cached prefix; returns the number of slots freed."""
        return self._call(lambda: self.cache.flush())

    def stats(self) -> dict:
        """Engine counters, with speculative decoding's: spec_drafted / spec_accepted
        draft tokens, spec_acceptance_rate, spec_verify_steps and
        spec_tokens_per_verify_step (tokens a drafted request got per verify step)."""
        eng = self.engine
        return eng.call(lambda: {**eng.counters, **(eng.drafter.stats() if eng.drafter else {})})

    def _call(self, fn):
        """Run fn on the engine thread; a clear error once the runtime is shut down."""
        if self.scheduler is None:
            raise EngineError("the runtime was shut down; create a new lm.Runtime(...)")
        return self.engine.call(fn)

    def shutdown(self) -> None:
        """Stop the engine and free everything this runtime holds: weights, KV pool,
        radix cache, CUDA graphs, grammar and mask caches (idempotent). The tokenizer and
        model config stay, so `repr` and `encode` still work."""
        if self.engine is not None:
            self.engine.stop()
            self.engine.release()
        self.model = self.pool = self.req_pool = self.cache = self.scheduler = None
        self.outputs = self.loaded = self._grammars = self.drafter = None
        _return_freed_memory()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        quant = (", quantization='fp8'" if self.quant is not None
                 else ", fp8 checkpoint dequantized" if self.quantization else "")
        return (f"Runtime({self.spec!r}, device={self.device.type!r}, "
                f"dtype={str(self.dtype).removeprefix('torch.')}{quant})")


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, so a process that
    re-creates runtimes would look as if it leaked the old weights)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _shutdown_ref(ref) -> None:
    rt = ref()
    if rt is not None:
        rt.shutdown()


def _as_prompt_list(prompts) -> list:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]
    if isinstance(prompts, Sequence) and prompts:
        return list(prompts)
    raise LmnbError("prompts must be a str, a list of str, or (lists of) token ids, and not empty")
