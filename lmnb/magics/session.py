"""The kernel's runtime: one model loaded once and shared by every `%%lm` cell.

`KernelSession` is plain Python (tests use it without IPython): `load(spec)` loads a
model unless it is already the current one, and frees the previous one first
(`shutdown`); `backend()` loads the default model on first use. The loaded runtime
also becomes `lm`'s default backend, so Python cells use the same model.
"""
from __future__ import annotations

from collections import deque

from lmnb.errors import LmnbError


class KernelSession:
    def __init__(self, default_spec: str = "smollm2", **runtime_options) -> None:
        self.default_spec, self.runtime_options = default_spec, runtime_options
        self.runtime = None          # an lm.Runtime, or None for remote backends
        self.spec: str | None = None
        self._backend = None
        self.views: deque = deque(maxlen=8)   # the latest live views, refreshed after each cell

    # -- loading ------------------------------------------------------------------
    def load(self, spec: str, progress=None, **options):
        """Make `spec` the kernel's model (loading it only when it is not already).
        `progress(phase, status, note)` hears the phases convert, load and warm."""
        if not isinstance(spec, str) or not spec.strip():
            raise LmnbError("give a model spec, e.g. %lm model smollm2")
        spec = spec.strip()
        tp = getattr(getattr(self.runtime, "config", None), "tp_size", 1)
        if spec == self.spec and self._usable() and options.get("tp_size", 1) == tp:
            return self._backend
        import lmnb as lm

        if spec.startswith("openai:"):
            backend = self._openai(spec[len("openai:"):], **options)
            self.close()
            self.runtime, self.spec, self._backend = None, spec, lm.set_default_backend(backend)
            return self._backend
        report = progress or (lambda phase, status, note="": None)
        rt = _load_runtime(spec, {**self.runtime_options, **options}, report, self.close)
        return self.attach(rt)

    def attach(self, runtime):
        """Use an already loaded `lm.Runtime` (or backend) as the kernel's model."""
        import lmnb as lm
        from lmnb.lang.backend import is_runtime

        self.runtime = runtime if is_runtime(runtime) else None
        self.spec = getattr(runtime, "spec", None) or repr(runtime)
        self._backend = lm.set_default_backend(runtime)
        return self._backend

    @staticmethod
    def _openai(model: str, **options):
        import lmnb as lm

        try:
            openai_backend = lm.OpenAI
        except AttributeError:
            raise LmnbError("the OpenAI backend is not available in this version of lmnb") from None
        return openai_backend(model, **options)

    def backend(self, progress=None):
        """The current backend, loading the default model on first use."""
        if not self._usable():
            self.load(self.spec if self.spec and self.runtime is not None else self.default_spec,
                      progress=progress)
        return self._backend

    def needs_load(self) -> bool:
        """True when `backend()` would load a model first."""
        return not self._usable()

    def _usable(self) -> bool:
        if self._backend is None:
            return False
        return self.runtime is None or self.runtime.alive()

    def close(self) -> None:
        """Shut the current runtime down (idempotent)."""
        if self.runtime is not None:
            self.runtime.shutdown()
        self.runtime = self._backend = self.spec = None

    def require_runtime(self, what: str):
        if self.runtime is None:
            self.backend()
        if self.runtime is None:
            raise LmnbError(f"{what} needs a local model; the current one is {self.spec}")
        return self.runtime

    # -- inspection ---------------------------------------------------------------
    def status(self) -> str:
        if self._backend is None:
            return f"no model loaded; the first %%lm cell loads {self.default_spec!r} (or: %lm model SPEC)"
        if self.runtime is None:
            return f"model: {self.spec} (remote backend)"
        rt = self.runtime
        if not self._usable():
            return f"model: {self.spec} — stopped{_failure(rt)}; %lm model {self.spec} or the next cell loads it again"
        st = rt.cache_stats()
        c = rt.stats()
        dtype = getattr(rt, "weights_label", None) or str(rt.dtype).removeprefix("torch.")
        quant = getattr(rt, "quant", None) and rt.quantization
        kv = getattr(rt, "kv_cache_label", "")
        kv = kv if kv.startswith("fp8") else ""   # shown when it differs from the model dtype
        lines = [
            (f"model: {rt.spec} on {rt.device.type} ({dtype}), attention {rt.attention_backend}, "
             f"context {rt.context_len} tokens" + (f"; weights {quant}" if quant else "")
             + (f"; KV cache {kv}" if kv else "")),
            (f"KV pool: {st['pool_size']} slots, {st['free_slots']} free, {st['cached_tokens']} cached, "
             f"{st['in_use_tokens']} in use"),
            (f"radix cache: {st['nodes']} nodes, hit rate {100 * st['hit_rate']:.0f}% "
             f"({st['hit_tokens']} of {st['prompt_tokens']} prompt tokens)"),
            (f"requests: {c['finished_requests']} finished, {c['aborted_requests']} aborted, "
             f"{st['running']} running, {st['waiting']} waiting")]
        return "\n".join(lines)

    def clear_cache(self) -> str:
        rt = self.require_runtime("%lm cache clear")
        freed = rt.flush_cache()
        return f"cache cleared: {freed} cached tokens freed"

    def refresh_views(self) -> None:
        for v in list(self.views):
            try:
                v.refresh()
            except Exception:  # noqa: BLE001 - a stale view must not break a cell
                self.views.remove(v)


def _load_runtime(spec: str, options: dict, report, close):
    """convert (a GGUF file, once) → load → warm, each phase reported as it runs. A bad
    spec fails in the first phase, while the current model is still loaded; the old
    model is freed (`close`) just before the new one is read."""
    import lmnb as lm
    from lmnb.runtime import loader

    phase = "convert"
    try:
        if loader.needs_conversion(spec):
            report("convert", "running")
            loader.load(spec)
            report("convert", "done")
        else:
            loader.load(spec)
            report("convert", "skipped", "cached" if spec == "smollm2" or spec.startswith("gguf:")
                   else "not needed")
        phase = "load"
        report("load", "running")
        close()
        with loader.quiet_transformers():
            rt = lm.Runtime(spec, **options)
        report("load", "done")
        phase = "warm"
        report("warm", "running")
        rt.grammars()   # the vocabulary's byte table: constraints and token healing read it
        report("warm", "done")
    except BaseException:
        report(phase, "failed")
        raise
    return rt


def _failure(rt) -> str:
    from lmnb.runtime.engine import error_line

    err = getattr(rt.engine, "error", None)
    return f" after an engine failure ({error_line(err)})" if err is not None else ""


_SESSION: KernelSession | None = None


def kernel_session() -> KernelSession:
    """The process-wide session (one kernel, one runtime)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = KernelSession()
    return _SESSION
