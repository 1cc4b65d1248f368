"""Backends: where a program's primitives are executed.

A backend answers three questions for the interpreter, and nothing else:
  * `generate(prompt, stream, **sampling)`: continue a text; returns a handle with
    `result() -> {"text", "meta"}`, iteration over text deltas (stream=True) and `abort()`.
  * `select(prompt, choices, method)`: score the choices after the prompt and pick one.
  * `chat_template()`: role prefixes/suffixes for the model, or None (raw completion only).
  * `cache_prefix(prompt)` (optional): compute and keep the prompt's KV before several
    requests that share it are sent (fork, batches, select); a no-op by default.
    `start_prefix(prompt)` is its non-blocking form: a handle to wait on or abort (fork
    uses it, so aborting a program also stops its prefix), or None once it is done.
Sampling keywords use the runtime's names (`max_new_tokens`, `temperature`, `stop`, ...,
`regex`, `json_schema` as a JSON string). Each call is blocking or returns a handle at
once; the interpreter runs programs, branches and batch items on their own threads, so
concurrent calls from many threads must be safe (the engine batches them).
"""
from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from lmnb.errors import LmnbError
from lmnb.lang.chat_template import ChatTemplate
from lmnb.lang.choices import score_choices
from lmnb.runtime.results import SelectResult


class Backend(ABC):
    supports_logprobs: bool = True

    @abstractmethod
    def generate(self, prompt: str, stream: bool = False, **sampling):
        """Start generating after `prompt`; return a handle (result / iterate / abort)."""

    @abstractmethod
    def select(self, prompt: str, choices: Sequence[str], method: str) -> SelectResult:
        """Pick one of `choices` as the continuation of `prompt`."""

    @abstractmethod
    def chat_template(self) -> ChatTemplate | None:
        """Role prefixes/suffixes, or None when the model has no chat template."""

    def cache_prefix(self, prompt: str) -> None:
        """Make `prompt` a cached prefix (blocking); backends without a cache skip it."""

    def start_prefix(self, prompt: str) -> StreamHandle | None:
        """Start making `prompt` a cached prefix: a handle (`result()`, `abort()`), or None
        when nothing is left to wait for (by default: `cache_prefix` has blocked)."""
        self.cache_prefix(prompt)
        return None

    def for_program(self, state, **options) -> Backend:
        """The backend one program runs on, called once when it starts with the program
        options (`num_api_spec_tokens`). Remote backends return a per-program view that
        counts API usage into `state.api_usage` and speculates; the local runtime is shared."""
        return self


class RuntimeBackend(Backend):
    """The in-process `lmnb.Runtime`: requests go straight to its engine."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self._template: ChatTemplate | None | bool = False

    def generate(self, prompt: str, stream: bool = False, **sampling):
        sampling.setdefault("token_healing", True)   # programs heal prompt boundaries by default
        return self.runtime.submit(prompt, stream=stream, **sampling)

    def select(self, prompt: str, choices: Sequence[str], method: str,
               token_healing: bool = True) -> SelectResult:
        return score_choices(self.runtime, prompt, list(choices), method, token_healing)

    def token_text(self, token_id: int) -> str:
        """One token's text (for logprob entries with text)."""
        return self.runtime.decode([token_id])

    def cache_prefix(self, prompt: str) -> None:
        h = self.start_prefix(prompt)
        if h is not None:
            h.result()

    def start_prefix(self, prompt: str) -> StreamHandle | None:
        # the runtime inserts a request's KV into the radix cache when it finishes, so a
        # zero-token request makes the prefix shareable by everything sent after it
        return self.runtime.submit(prompt, max_new_tokens=0) if prompt else None

    def chat_template(self) -> ChatTemplate | None:
        if self._template is False:
            self._template = ChatTemplate.from_tokenizer(self.runtime.tokenizer)
        return self._template

    def __repr__(self) -> str:
        return f"RuntimeBackend({self.runtime!r})"


class PrefixGate(Backend):
    """For a batch: the first request of any program waits while the first program's
    prompt is cached (`cache_prefix`), so the batch computes a shared prefix once."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.supports_logprobs = inner, inner.supports_logprobs
        self._lock, self._opened, self._leader = threading.Lock(), threading.Event(), False

    def _pass(self, prompt: str) -> None:
        if self._opened.is_set():
            return
        with self._lock:
            leader, self._leader = not self._leader, True
        if not leader:
            self._opened.wait()
            return
        try:
            with contextlib.suppress(Exception):  # the program's own request reports it
                self.inner.cache_prefix(prompt)
        finally:
            self._opened.set()

    def generate(self, prompt: str, stream: bool = False, **sampling):
        self._pass(prompt)
        return self.inner.generate(prompt, stream=stream, **sampling)

    def select(self, prompt: str, choices: Sequence[str], method: str, **options) -> SelectResult:
        self._pass(prompt)
        return self.inner.select(prompt, choices, method, **options)

    def chat_template(self) -> ChatTemplate | None:
        return self.inner.chat_template()

    def cache_prefix(self, prompt: str) -> None:
        self.inner.cache_prefix(prompt)

    def start_prefix(self, prompt: str) -> StreamHandle | None:
        return self.inner.start_prefix(prompt)

    def for_program(self, state, **options) -> Backend:
        # a per-program view (remote backends) has no shared prefix to gate on
        inner = self.inner.for_program(state, **options)
        return self if inner is self.inner else inner


class StreamHandle:
    """Protocol reference for what `generate` returns (RequestHandle satisfies it)."""

    def result(self) -> dict: ...
    def __iter__(self) -> Iterator[str]: ...
    def abort(self) -> None: ...


_default: Backend | None = None
# one wrapper per live runtime, held weakly: the table never keeps a runtime alive
_wrapped: weakref.WeakValueDictionary[int, RuntimeBackend] = weakref.WeakValueDictionary()


def is_runtime(obj) -> bool:
    """True for an in-process `lmnb.Runtime` (the one test every layer uses; it imports
    nothing, so a process that never loaded a model never pays for torch here)."""
    mod = sys.modules.get("lmnb.runtime.runtime")
    return mod is not None and isinstance(obj, mod.Runtime)


def as_backend(obj) -> Backend:
    """A Backend as is; an `lmnb.Runtime` wrapped (the same wrapper while it lives)."""
    if isinstance(obj, Backend):
        return obj
    if is_runtime(obj):
        b = _wrapped.get(id(obj))
        if b is None or b.runtime is not obj:
            b = _wrapped[id(obj)] = RuntimeBackend(obj)
        return b
    raise LmnbError(f"a backend is an lmnb.Runtime or an lmnb Backend, got {type(obj).__name__}")


def set_default_backend(backend) -> Backend:
    """Make `backend` (an `lm.Runtime` or a Backend) the one programs use by default."""
    global _default
    _default = as_backend(backend)
    return _default


def get_default_backend() -> Backend | None:
    return _default


def resolve_backend(backend=None) -> Backend:
    if backend is not None:
        return as_backend(backend)
    if _default is None:
        raise LmnbError("no backend: call lm.set_default_backend(lm.Runtime('smollm2')) "
                        "or pass backend=... to run()")
    return _default
