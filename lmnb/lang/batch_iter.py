"""`run_batch(..., generator_style=True)`: the batch runs as one (its requests reach the
engine together), and the caller gets each state, in order, as soon as it is done."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from lmnb.lang.backend import PrefixGate, resolve_backend
from lmnb.lang.interpreter import _threads, start
from lmnb.lang.state import ProgramState


def iter_programs(body: Callable, args_list: Sequence[dict], backend, num_threads,
                  defaults: dict) -> Iterator[ProgramState]:
    """Start every program now; yield the states in order. Closing the iterator early
    (or Ctrl-C) aborts the programs still running."""
    n = len(args_list)
    b = resolve_backend(backend)
    b = PrefixGate(b) if n > 1 else b
    pool = ThreadPoolExecutor(_threads(num_threads, n) if n else 1, thread_name_prefix="lmnb-batch")
    started: list[ProgramState] = []
    futs = [pool.submit(start, body, b, False, dict(defaults), (), kw, started.append) for kw in args_list]

    def gen() -> Iterator[ProgramState]:
        try:
            for f in futs:
                yield f.result()
        except BaseException:
            for f in futs:
                f.cancel()
            for st in started.copy():
                st.abort()
            raise
        finally:
            pool.shutdown(wait=False)

    return gen()
