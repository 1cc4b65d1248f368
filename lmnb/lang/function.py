"""`@lm.function`: a Python function `f(s, ...)` becomes a runnable program.

As in SGLang, calling it runs it: `f(x=1, temperature=0)` is `f.run(...)` and returns
the state (`stream=True`: at once; `.sync()` waits). Inside another program's body the
same call is a sub-program: `s += sub(x=1)` (or `sub(s, x=1)`) runs its body on `s`.
`f.bind(x=1)` fixes arguments; `f.trace()` finds the constant prefix every run starts
with and `f.cache()` computes it into the backend's cache (trace.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence

from lmnb.errors import LmnbError
from lmnb.lang import ir
from lmnb.lang.interpreter import PROGRAM_KEYS, run_programs, start
from lmnb.lang.state import ProgramState

_local = threading.local()   # how deep this thread is inside program bodies
# run() keywords of SGLang that have no meaning here
_SGLANG_ONLY = ("return_text_in_logprobs",)


def in_program() -> bool:
    """True while this thread runs a program body (or traces one)."""
    return getattr(_local, "depth", 0) > 0


def _body_of(func: Callable) -> Callable:
    """`func` marked as a program body while it runs, so that functions it calls
    become sub-programs instead of separate runs."""
    def body(*args, **kwargs):
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            return func(*args, **kwargs)
        finally:
            _local.depth -= 1
    return body


class Function:
    """A program. `run(**kwargs)` (or calling it) runs it once, `run_batch([...])` runs
    many together; inside another program (`s += other(x=1)`) it runs on that state."""

    def __init__(self, func: Callable, bind_arguments: dict | None = None, **options) -> None:
        params = list(inspect.signature(func).parameters)
        if not params:
            raise LmnbError(f"@lm.function {func.__name__}() needs a first argument for the state, e.g. def "
                            f"{func.__name__}(s, ...)")
        unknown = sorted(set(options) - set(PROGRAM_KEYS))
        if unknown:
            raise LmnbError(f"@lm.function: unknown option {unknown[0]!r}; valid: {', '.join(PROGRAM_KEYS)}")
        self.func, self.options = func, options
        self.arg_names = params[1:]
        self.bind_arguments = dict(bind_arguments or {})
        functools.update_wrapper(self, func)

    def bind(self, **kwargs) -> Function:
        """A copy with these arguments fixed (`f.bind(style="short").run(q=...)`)."""
        bad = sorted(set(kwargs) - set(self.arg_names))
        if bad:
            raise LmnbError(f"{self.func.__name__}.bind(): no argument {bad[0]!r}; "
                            f"arguments: {', '.join(self.arg_names) or 'none'}")
        return Function(self.func, {**self.bind_arguments, **kwargs}, **self.options)

    def _body(self) -> Callable:
        body = _body_of(self.func)
        if not self.bind_arguments:
            return body
        return lambda s, *a, **kw: body(s, *a, **{**self.bind_arguments, **kw})

    def trace(self, *, backend=None, **kwargs):
        """The constant prefix of the program (a `trace.Trace`: `.prefix`, `.nodes`,
        `.stopped_at`), with `kwargs` (and bound arguments) as known values."""
        from lmnb.lang.backend import get_default_backend, resolve_backend
        from lmnb.lang.trace import trace_prefix

        b = resolve_backend(backend) if backend is not None or get_default_backend() is not None else None
        template = b.chat_template() if b is not None else None
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            return trace_prefix(self.func, self.arg_names, {**self.bind_arguments, **kwargs}, template)
        finally:
            _local.depth -= 1

    def cache(self, backend=None) -> str:
        """Compute the program's constant prefix into the backend's cache; returns it."""
        from lmnb.lang.backend import resolve_backend

        b = resolve_backend(backend)
        prefix = self.trace(backend=b).prefix
        if prefix:
            b.cache_prefix(prefix)
        return prefix

    def run(self, *args, backend=None, stream: bool = False, use_thread: bool = True,
            **kwargs) -> ProgramState:
        """Run once and return the finished state (stream=True: at once, then
        `state.text_iter()`). Keywords naming a sampling parameter by its runtime name
        (`max_new_tokens`, `temperature`, `stop`, `n`, `min_new_tokens`, ...) are
        defaults for every `gen` (over `lm.global_config.default_sampling`), unless the
        program has an argument of that name; the others are the program's arguments.
        `num_api_spec_tokens` overrides the decorator's (remote backends speculate).
        `use_thread` is SGLang's and has no effect (a program always has its own worker)."""
        given, kwargs = self._split_options(kwargs)
        defaults = self._defaults(given)
        self._check_args(args, kwargs)
        state = start(self._body(), backend, stream, defaults, args, kwargs)
        if not stream and state.error is not None:
            err = state.error
            err.state = state
            raise err
        _show(state, stream)
        return state

    def _split_options(self, kwargs: dict) -> tuple[dict, dict]:
        """(run options by runtime name, program arguments)."""
        from lmnb.runtime.sampling_params import NAMES

        options, args = {}, {}
        for k, v in kwargs.items():
            if k in self.arg_names:
                args[k] = v
            elif k in _SGLANG_ONLY:
                continue   # how SGLang formats logprob entries: lmnb's carry token ids
            elif k in NAMES or k in PROGRAM_KEYS:   # runtime names, as SGLang's run() takes them
                options[k] = v
            else:
                args[k] = v   # _check_args names it
        return options, args

    def _defaults(self, given: dict) -> dict:
        """Run options over the global defaults; the decorator's spec tokens over the global."""
        from lmnb.lang.compat import global_config

        base = dict(global_config.default_sampling)
        if not global_config.skip_special_tokens_in_output:
            base.setdefault("skip_special_tokens", False)
        out = {**base, **{k: v for k, v in given.items() if v is not None}}
        if out.get("num_api_spec_tokens") is None:
            n = self.options.get("num_api_spec_tokens")
            out["num_api_spec_tokens"] = n if n is not None else global_config.num_api_spec_tokens
        return out

    def run_batch(self, batch_kwargs: Sequence[dict], *, backend=None, num_threads="auto",
                  progress_bar: bool = True, generator_style: bool = False,
                  **defaults) -> list[ProgramState] | Iterator[ProgramState]:
        """Run once per dict of arguments (or tuple of positional ones), all together;
        states in order, failures in `state.error`. `progress_bar=True` shows a tqdm bar
        (text, so saved notebooks show it). `generator_style=True` returns at once an iterator that
        yields the states in order as they finish."""
        batch_kwargs = self._batch_args(batch_kwargs)
        defaults, extra = self._split_options(defaults)
        if extra:   # the interpreter names the first and lists the valid ones
            from lmnb.lang.interpreter import _check_defaults

            _check_defaults(extra)
        defaults = self._defaults(defaults)
        from lmnb.lang.compat import global_config

        if global_config.enable_precache_with_tracing and len(batch_kwargs) > 1:
            self._precache(backend)
        if generator_style:
            from lmnb.lang.batch_iter import iter_programs

            return iter_programs(self._body(), batch_kwargs, backend, num_threads, defaults)
        return run_programs([self._body()] * len(batch_kwargs), backend, num_threads, progress_bar,
                            args_list=batch_kwargs, **defaults)

    def _precache(self, backend) -> None:
        """Before a batch: its constant prefix into the cache (a failure here is left for
        the programs themselves to report)."""
        with contextlib.suppress(Exception):
            self.cache(backend)

    def _batch_args(self, batch) -> list[dict]:
        if isinstance(batch, (dict, str)) or not isinstance(batch, Sequence):
            raise LmnbError("run_batch takes a list of dicts of arguments, e.g. [{'x': 1}, {'x': 2}]")
        out = []
        for item in batch:
            if isinstance(item, (list, tuple)):   # positional, as SGLang allows
                if len(item) > len(self.arg_names):
                    raise LmnbError(f"run_batch: {item!r} has more values than {self.func.__name__}() "
                                    f"has arguments ({', '.join(self.arg_names)})")
                item = dict(zip(self.arg_names, item))
            if not isinstance(item, dict):
                raise LmnbError("run_batch takes a list of dicts of arguments, e.g. [{'x': 1}, {'x': 2}]")
            self._check_args((), item)
            out.append(item)
        return out

    async def run_async(self, *args, **kwargs) -> ProgramState:
        """`await f.run_async(...)`: runs on a worker thread, the event loop stays free."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.run, *args, **kwargs))

    async def run_batch_async(self, batch_kwargs: Sequence[dict], **kwargs) -> list[ProgramState]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.run_batch, batch_kwargs, **kwargs))

    def __call__(self, *args, **kwargs):
        """Outside any program, run it (as `run`) and return the state. Inside a
        program's body: `sub(s, x=1)` runs this body on `s` now, and `s += sub(x=1)`
        runs it on `s` when reached."""
        if args and isinstance(args[0], ProgramState):
            return self._body()(*args, **kwargs)
        if not in_program():
            return self.run(*args, **kwargs)
        self._check_args(args, kwargs)
        body = self._body()
        return ir.Call(lambda s: body(s, *args, **kwargs), f"{self.func.__name__}()")

    def _check_args(self, args: tuple, kwargs: dict) -> None:
        try:
            inspect.signature(self.func).bind(None, *args, **{**self.bind_arguments, **kwargs})
        except TypeError as e:
            raise LmnbError(f"{self.func.__name__}(): {e}") from None

    def __repr__(self) -> str:
        return f"<lm.function {self.func.__name__}({', '.join(self.arg_names)})>"


def _show(state: ProgramState, stream: bool) -> None:
    from lmnb.lang.compat import global_config

    if global_config.verbosity >= 2 and not stream:
        print(state.text())


def function(func: Callable | None = None, **options):
    """Decorator: `@lm.function` or `@lm.function(...)` over `def f(s, ...)`."""
    if func is None:
        return lambda f: Function(f, **options)
    return Function(func, **options)

