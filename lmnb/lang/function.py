"""`@lm.function`: a Python function `f(s, ...)` becomes a runnable program."""
from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Sequence

from lmnb.errors import LmnbError
from lmnb.lang import ir
from lmnb.lang.interpreter import PROGRAM_KEYS, run_programs, start
from lmnb.lang.state import ProgramState


class Function:
    """A program. `run(**kwargs)` runs it once, `run_batch([...])` runs many together;
    calling it inside another program (`s += other(x=1)`) runs its body on that state."""

    def __init__(self, func: Callable, **options) -> None:
        params = list(inspect.signature(func).parameters)
        if not params:
            raise LmnbError(f"@lm.function {func.__name__}() needs a first argument for the state, e.g. def "
                            f"{func.__name__}(s, ...)")
        unknown = sorted(set(options) - set(PROGRAM_KEYS))
        if unknown:
            raise LmnbError(f"@lm.function: unknown option {unknown[0]!r}; valid: {', '.join(PROGRAM_KEYS)}")
        self.func, self.options = func, options
        self.arg_names = params[1:]
        functools.update_wrapper(self, func)

    def run(self, *args, backend=None, stream: bool = False, max_new_tokens: int | None = None,
            stop=None, stop_token_ids=None, temperature: float | None = None, top_p: float | None = None,
            top_k: int | None = None, min_p: float | None = None, seed: int | None = None,
            ignore_eos: bool | None = None, return_logprob: bool | None = None,
            top_logprobs_num: int | None = None, num_api_spec_tokens: int | None = None,
            **kwargs) -> ProgramState:
        """Run once and return the finished state (stream=True: at once, then
        `state.text_iter()`). Keyword sampling options are defaults for every `gen`;
        `num_api_spec_tokens` overrides the decorator's (remote backends speculate)."""
        defaults = {"max_new_tokens": max_new_tokens, "stop": stop, "stop_token_ids": stop_token_ids,
                    "temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                    "seed": seed, "ignore_eos": ignore_eos, "return_logprob": return_logprob,
                    "top_logprobs_num": top_logprobs_num,
                    "num_api_spec_tokens": self.options.get("num_api_spec_tokens") if num_api_spec_tokens is None
                    else num_api_spec_tokens}
        self._check_args(args, kwargs)
        state = start(self.func, backend, stream, defaults, args, kwargs)
        if not stream and state.error is not None:
            err = state.error
            err.state = state
            raise err
        return state

    def run_batch(self, batch_kwargs: Sequence[dict], *, backend=None, num_threads="auto",
                  progress_bar: bool = True, **defaults) -> list[ProgramState]:
        """Run once per dict of arguments, all together; states in order, failures in
        `state.error`. `progress_bar=True` shows a text progress bar."""
        if isinstance(batch_kwargs, dict) or not all(isinstance(k, dict) for k in batch_kwargs):
            raise LmnbError("run_batch takes a list of dicts of arguments, e.g. [{'x': 1}, {'x': 2}]")
        for kw in batch_kwargs:
            self._check_args((), kw)
        if defaults.get("num_api_spec_tokens") is None:
            defaults["num_api_spec_tokens"] = self.options.get("num_api_spec_tokens")
        return run_programs([self.func] * len(batch_kwargs), backend, num_threads, progress_bar,
                            args_list=list(batch_kwargs), **defaults)

    async def run_async(self, *args, **kwargs) -> ProgramState:
        """`await f.run_async(...)`: runs on a worker thread, the event loop stays free."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.run, *args, **kwargs))

    async def run_batch_async(self, batch_kwargs: Sequence[dict], **kwargs) -> list[ProgramState]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.run_batch, batch_kwargs, **kwargs))

    def __call__(self, *args, **kwargs) -> ir.Call:
        """Inside another program: `s += sub(x=1)` runs this body on that state."""
        if args and isinstance(args[0], ProgramState):
            return self.func(*args, **kwargs)
        self._check_args(args, kwargs)
        return ir.Call(lambda s: self.func(s, *args, **kwargs), f"{self.func.__name__}()")

    def _check_args(self, args: tuple, kwargs: dict) -> None:
        try:
            inspect.signature(self.func).bind(None, *args, **kwargs)
        except TypeError as e:
            raise LmnbError(f"{self.func.__name__}(): {e}") from None

    def __repr__(self) -> str:
        return f"<lm.function {self.func.__name__}({', '.join(self.arg_names)})>"


def function(func: Callable | None = None, **options):
    """Decorator: `@lm.function` or `@lm.function(...)` over `def f(s, ...)`."""
    if func is None:
        return lambda f: Function(f, **options)
    return Function(func, **options)

