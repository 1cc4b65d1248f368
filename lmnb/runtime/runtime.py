"""`lmnb.Runtime`: the public face of the kernel-resident engine."""
from __future__ import annotations

import atexit
import time
import weakref
from collections.abc import Iterator, Sequence

import torch

from lmnb.errors import EngineError, LmnbError
from lmnb.runtime import kv_dtype, loader
from lmnb.runtime.attention import create_backend
from lmnb.runtime.cpu_threads import serial_caller
from lmnb.runtime.device_sampling import DeviceSampler
from lmnb.runtime.engine import Engine
from lmnb.runtime.handle import RequestGroup, RequestHandle
from lmnb.runtime.memory import KVPool, ReqToTokenPool
from lmnb.runtime.model_runner import ModelRunner
from lmnb.runtime.models import build_model
from lmnb.runtime.multimodal import ImagePrompts, as_image, has_markers
from lmnb.runtime.output import OutputProcessor
from lmnb.runtime.quant import fp8
from lmnb.runtime.quant.cpu_linear import DENSE_ROWS
from lmnb.runtime.radix_cache import RadixCache
from lmnb.runtime.request import Req, new_rid
from lmnb.runtime.results import GenResult
from lmnb.runtime.runtime_config import CPU_MODES, RuntimeConfig
from lmnb.runtime.sampling_params import SamplingParams
from lmnb.runtime.scheduler import Scheduler
from lmnb.runtime.speculative import Drafter
from lmnb.runtime.tokenizer import eos_token_ids


class Runtime:
    """A model loaded in this process with its KV pool, radix cache and engine thread.

    `Runtime("smollm2")`; `device=None` picks CUDA when available. Keyword options are
    those of `RuntimeConfig` (kv_memory_gb, max_total_tokens, max_running_requests,
    context_length, chunked_prefill_size, enable_radix_cache, jump_forward, mixed_steps, cuda_graph,
    overlap, attention, dtype, schedule_policy, seed, quantization, kv_cache_dtype, tp_size,
    speculative, speculative_tokens),
    or SGLang's names for them (`Runtime(model_path=..., mem_fraction_static=...,
    disable_radix_cache=...)`, see sglang_args.py).

    `tp_size=N` shards the model over N processes (one per GPU; gloo on CPU): this
    process is rank 0 and runs the scheduler, radix cache and sampling; see
    `lmnb.runtime.distributed`. Workers are spawned, so a plain script that uses it needs
    the usual `if __name__ == "__main__":` guard (notebooks need nothing).

    On the CPU a GGUF model (the default smollm2) runs with int4 weights unless `dtype` or
    `quantization` says otherwise; `dtype="float32"` is the exact fp32 path. `describe()`
    says what was chosen; `quantization` names what is in effect (it starts with the mode).

    `speculative="auto"` (the default) verifies draft tokens taken from the radix cache
    (what was generated after the same text before) and from n-gram matches in the
    prompt, the output and recent requests, several per step, for greedy requests on the
    CPU (their tokens are exactly plain decoding's, quantized weights included) and for
    requests that pass `speculative=True` (on CUDA only those: bf16 greedy output with
    drafts is not yet shown identical there); `"off"` never drafts.
    """

    def __init__(self, spec: str = "smollm2", device: str | None = None, **options) -> None:
        from lmnb.runtime.sglang_args import translate

        spec, options = translate(spec, options)   # SGLang's model_path= and server-arg names too
        self.spec = spec
        self.config = RuntimeConfig.make(device=device, **options)
        self.engine = None
        _check_fp8_kv(self.config, torch.device(self.config.device))
        # the load runs with one intra-op thread here, so that this thread starts no OpenMP
        # team and the engine thread's steps keep theirs spinning (cpu_threads.py)
        with serial_caller(self.config.device) as threads:
            lm = loader.load(spec)
            self.loaded, self.model_config, self.tokenizer = lm, lm.config, lm.tokenizer
            cfg, rc = lm.config, self.config
            self.device, self.dtype = torch.device(rc.device), rc.torch_dtype
            self.kv_dtype = rc.kv_storage_dtype(self.dtype)
            mode = rc.resolved_quantization(loader.is_quantized_checkpoint(spec))
            self.quant = fp8.plan_fp8(mode, lm.hf_config, cfg, self.device, self.dtype)
            self.quantization = fp8.describe(self.quant, lm.hf_config, self.dtype) if mode in (None, "fp8") else mode
            self.quantization_info = None
            self.context_len = min(cfg.max_position, rc.context_length or cfg.max_position)
            # the CPU's quantized layers compute a row as they would alone only in steps of
            # fewer than DENSE_ROWS rows: verify steps stay below that, and a long prefill
            # computes its sampled rows apart (ModelRunner)
            self.exact_rows = DENSE_ROWS if self.quantization in CPU_MODES else None
            if rc.tp_size == 1:
                runner = self._runner(lm)
            else:
                if self.quantization is not None or lm.vision is not None or rc.kv_cache_dtype is not None:
                    raise LmnbError("tp_size > 1 runs text-only models with bf16/fp16/fp32 weights and KV; "
                                    "drop quantization / kv_cache_dtype / the FP8 or vision model, or use tp_size=1")
                runner = _tensor_parallel_runner(lm, rc, self.context_len)
        self.model, self.pool, self.req_pool = runner.model, runner.pool, runner.req_pool
        self.cache = RadixCache(self.pool.allocator.free, disabled=not rc.enable_radix_cache)
        self.scheduler = Scheduler(self.pool.allocator, self.req_pool, self.cache,
                                   rc.chunked_prefill_size, rc.max_running_requests, rc.schedule_policy,
                                   mixed=rc.mixed_steps)
        self.attention_backend = runner.backend.name
        self.eos_token_ids = eos_token_ids(lm.tokenizer, lm.generation_config)
        self.outputs = OutputProcessor(lm.tokenizer, self.eos_token_ids, self.context_len, rc.jump_forward)
        self._grammars = None
        self.images = None if lm.vision is None else ImagePrompts(
            lm.tokenizer, cfg.vocab_size, lm.vision.image_tokens, lm.vision.image_token_id,
            lm.image_processor)
        self._seed_gen = torch.Generator().manual_seed(rc.seed)
        # on CUDA, bf16 verify rows round differently from decode rows, so drafted greedy
        # output is not yet shown identical there: "auto" drafts only when a request asks
        spec_mode = "requested" if rc.speculative == "auto" and self.device.type == "cuda" else rc.speculative
        self.drafter = Drafter(self.cache, spec_mode, rc.speculative_tokens, self.context_len,
                               exact_rows=self.exact_rows)
        self.engine = Engine(self.scheduler, runner, DeviceSampler(self.eos_token_ids), self.outputs,
                             overlap=rc.overlap, drafter=self.drafter, cpu_threads=threads)
        atexit.register(_shutdown_ref, weakref.ref(self))
        if rc.tp_size > 1:   # worker processes must not outlive an unreferenced runtime
            weakref.finalize(self, _stop_engine, self.engine)

    def _runner(self, lm) -> ModelRunner:
        cfg, rc = lm.config, self.config
        model = build_model(lm, self.dtype, self.device, quant=self.quant)
        model.load_weights(fp8.model_weights(lm.weights(self.device, self.dtype), lm.hf_config))
        model.eval()
        if self.quant is None and self.quantization in CPU_MODES:
            self.quantization_info = model.quantize(self.quantization)
        elif self.quant is not None:
            fp8.quantize_head(model, self.quant)
        backend = create_backend(rc.attention, self.device.type, num_heads=cfg.num_heads,
                                 num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                                 scale=cfg.head_dim ** -0.5)
        if kv_dtype.is_fp8(self.kv_dtype) and not backend.reads_fp8_kv:
            raise LmnbError(f"attention={backend.name!r} cannot read lmnb's FP8 KV cache (a scale per "
                            "token and KV head); use attention='triton' or drop kv_cache_dtype")
        pool = KVPool(rc.pool_tokens(cfg, self.kv_dtype), cfg.num_layers, cfg.num_kv_heads, cfg.head_dim,
                      self.kv_dtype, self.device)
        req_pool = ReqToTokenPool(rc.max_running_requests + 1, self.context_len + 1, self.device)
        return ModelRunner(model, backend, pool, req_pool, cuda_graph=rc.cuda_graph,
                           exact_rows=self.exact_rows)

    # -- text <-> tokens ---------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids; on a vision-language model each image marker of the text becomes
        its image's positions (see multimodal.py)."""
        if self.images is not None:
            return self.images.encode(text)
        if has_markers(text):
            raise LmnbError(f"{self.spec} is a text-only model and takes no images; "
                            "load a vision-language model (e.g. hf:<llava dir>) or drop image(...)")
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # -- requests ---------------------------------------------------------------
    def submit(self, prompt: str | Sequence[int], *, stream: bool = False, images=None,
               **sampling) -> RequestHandle | RequestGroup:
        """Queue one request and return its handle at once. With `n` > 1 the handle is a
        `RequestGroup` of n samples; they share the prompt's KV (the first computes it,
        the others wait one step and hit the radix cache). `images` (paths, bytes, PIL
        images, arrays) fill the prompt's image placeholders (`<image>`) in order.
        `token_healing=True` backs off a prompt that ends mid-token and regenerates its
        tail first (see healing.py)."""
        self.engine.ensure_alive()
        params = SamplingParams.make(**sampling)
        _held = None   # the images, alive until the request holds them
        if images is not None:
            prompt, _held = self._with_images(prompt, images)
        ids = self._prompt_ids(prompt)
        healed = self._heal_plan(ids, params)
        if healed is not None:   # the regenerated prompt tokens do not eat the output budget
            ids = healed.ids
            params = params.replace(max_new_tokens=params.max_new_tokens + healed.removed_tokens)
        mm = self.images.inputs(ids) if self.images is not None else None
        if mm is not None and params.logprob_start_len >= 0 and max(params.logprob_start_len, 1) < mm.end:
            raise LmnbError(f"prompt logprobs cannot cover image positions; set logprob_start_len "
                            f">= {mm.end} (after the last image)")
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
                if j > 0 and mm is not None:   # each sample its own image items
                    mm = self.images.inputs(ids)
                handles.append(self._submit_one(ids, params, seed, guide, stream, lead, mm, healed))
        except BaseException:
            for h in handles:
                h.abort()
            raise
        return handles[0] if len(handles) == 1 else RequestGroup(handles)

    def _submit_one(self, ids: list[int], params: SamplingParams, seed: int, guide,
                    stream: bool, leader: Req | None = None, mm=None, healed=None) -> RequestHandle:
        req = Req(new_rid(), ids, params, stream=stream, created=time.perf_counter(),
                  prompt_leader=leader)
        req.mm = mm
        req.generator = torch.Generator(device=self.device)
        req.generator.manual_seed(seed)
        if guide is not None:
            req.guide = guide.cursor()
        if healed is not None:
            from lmnb.runtime.healing import HealedHandle, HealingCursor, table_for

            req.guide = HealingCursor(table_for(self.grammars().vocab), healed.removed, req.guide, req)
        self.engine.submit(req)
        handle = RequestHandle(self.engine, req, ids)
        return HealedHandle(handle, healed) if healed is not None else handle

    def _heal_plan(self, ids: list[int], params: SamplingParams):
        if not params.token_healing or params.max_new_tokens == 0 or params.logprob_start_len >= 0:
            return None   # off, or nothing generated (cache warm-up, select's scoring)
        from lmnb.runtime.healing import plan, table_for

        return plan(table_for(self.grammars().vocab), ids, params.stop)

    def generate(self, prompts, images=None, **sampling) -> list[GenResult]:
        """Generate for one prompt or a list (texts or token-id lists); always a list of
        results with `text`, `output_ids` and `meta`. All prompts are batched together
        (the engine receives them at once, so the same call on the same cache runs the
        same steps); with `n` > 1 each prompt gives n results in a row. `images`: one list of images
        per prompt (see `submit`)."""
        handles: list = []
        prompts = _as_prompt_list(prompts)
        if images is not None and (not isinstance(images, Sequence) or len(images) != len(prompts)):
            raise LmnbError(f"images must be a list with one list of images per prompt ({len(prompts)})")
        try:  # Ctrl-C between submissions must abort those already queued too
            with self.engine.together():   # one set: the batch's steps do not depend on timing
                for i, p in enumerate(prompts):
                    handles.append(self.submit(p, images=None if images is None else images[i], **sampling))
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
            v, im = self.model_config.vocab_size, self.images
            if any(t < 0 or (t >= v and (im is None or not im.is_pad(t))) for t in ids):
                raise LmnbError(f"token ids must be in [0, {v})")
        else:
            raise LmnbError(f"a prompt is a str or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise LmnbError("the prompt is empty; give at least one token")
        if len(ids) >= self.context_len:
            raise LmnbError(f"the prompt has {len(ids)} tokens but the context holds {self.context_len}; "
                            "shorten the prompt")
        return ids

    def _with_images(self, prompt, images) -> tuple[str, list]:
        if self.images is None:
            raise LmnbError(f"{self.spec} is a text-only model and takes no images; "
                            "load a vision-language model (e.g. hf:<llava dir>)")
        if not isinstance(prompt, str):
            raise LmnbError("with images=, the prompt must be a str with one <image> per image")
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            images = [images]
        held = [as_image(x) for x in images]
        return self.images.with_images(prompt, held), held

    def grammars(self):
        if self._grammars is None:
            from lmnb.runtime.constrained import make_backend

            self._grammars = make_backend(self.tokenizer, self.model_config.vocab_size, self.eos_token_ids)
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
        """Engine counters, with the image counters and speculative decoding's:
        spec_drafted / spec_accepted draft tokens, spec_acceptance_rate, spec_verify_steps,
        spec_skipped (drafts found but not worth their verify rows)
        and spec_tokens_per_verify_step (tokens a drafted request got per verify step)."""
        eng = self.engine

        def read() -> dict:
            runner = eng.runner
            return {**eng.counters, **(runner.counters() if runner is not None else {}),
                    **(eng.drafter.stats() if eng.drafter else {})}

        return eng.call(read)

    @property
    def weights_label(self) -> str:
        """'float32', or 'q4 weights, float32' when the weights are quantized."""
        dtype = str(self.dtype).removeprefix("torch.")
        return dtype if self.quantization is None else f"{self.quantization} weights, {dtype}"

    @property
    def kv_cache_label(self) -> str:
        """The KV cache's format: 'bfloat16', or 'fp8_e4m3 (scale per token and KV head)'."""
        name = kv_dtype.label(self.kv_dtype)
        return f"{name} (scale per token and KV head)" if kv_dtype.is_fp8(self.kv_dtype) else name

    def describe(self) -> str:
        """One line: model, device, weight format and the kernels chosen."""
        dtype = str(self.dtype).removeprefix("torch.")
        q = self.quantization_info
        weights = f"weights {q['summary']}, {q['weight_mb']} MiB" if q else f"weights {dtype}"
        kv = "KV cache " + self.kv_cache_label
        return (f"{self.spec} on {self.device.type}: {weights}; activations {dtype}, {kv}; "
                f"attention {self.attention_backend}")

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
        q = ""
        if self.quant is not None:
            q = ", quantization='fp8'"
        elif self.quantization in CPU_MODES:
            q = f", quantization={self.quantization!r}"
        elif self.quantization:
            q = ", fp8 checkpoint dequantized"
        if kv_dtype.is_fp8(self.kv_dtype):
            q += f", kv_cache_dtype={self.config.kv_cache_dtype!r}"
        return f"Runtime({self.spec!r}, device={self.device.type!r}, dtype={str(self.dtype).removeprefix('torch.')}{q})"


def _check_fp8_kv(rc: RuntimeConfig, device: torch.device) -> None:
    """A one-line error where the FP8 KV cache cannot run: it needs a CUDA GPU with FP8
    (the CPU tests fake that support, as for FP8 weights, and run the torch reference)."""
    if rc.kv_cache_dtype is None:
        return
    why = fp8.fp8_unsupported_reason(device)
    if why is not None:
        raise LmnbError(f"kv_cache_dtype={rc.kv_cache_dtype!r} needs a CUDA GPU of compute capability "
                        f"8.9+ with triton, but {why}; drop kv_cache_dtype (the KV cache then stays in "
                        "the model dtype)")


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


def _tensor_parallel_runner(lm, rc: RuntimeConfig, context_len: int):
    from lmnb.runtime.distributed.tp_runner import start_tensor_parallel

    return start_tensor_parallel(lm, rc, context_len)


def _stop_engine(engine: Engine) -> None:
    """Finalizer of a tensor-parallel runtime: stop its engine and workers. On the engine
    thread itself (a collection can run there) it hands the work to a fresh thread."""
    import threading

    def stop() -> None:
        engine.stop()
        engine.release()

    if threading.current_thread() is engine.thread:
        threading.Thread(target=stop, name="lmnb-tp-finalize", daemon=True).start()
    else:
        stop()


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
