"""What one `%%lm` cell does, as plain functions (no IPython needed).

`run_cell` compiles the cell, runs it (streaming into `on_update`, or as a batch) and
returns a `CellResult`. Ctrl-C (a KeyboardInterrupt anywhere in the streaming loop)
aborts the program, waits until its requests have let go of their KV slots and keeps
the partial text. Errors come back as one line in `CellResult.error`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lmnb.errors import EngineError, LmnbError, RequestAborted
from lmnb.runtime.sampling_params import to_runtime


@dataclass
class CellOptions:
    # the cell's sampling options by user name (`max_tokens`, `temperature`, ...): the
    # table's `cell` parameters; None values are left to the program's defaults
    sampling: dict = field(default_factory=lambda: {"temperature": 0.0})
    batch: str | None = None
    stream: bool = True
    dry_run: bool = False
    backend: object = None
    api_spec_tokens: int | None = None
    line_offset: int = 1          # the %%lm line is line 1 of the cell
    update_every: float = 0.1     # seconds between live view updates

    def defaults(self) -> dict:
        """Program defaults by runtime name (what run_program takes)."""
        d = to_runtime({k: v for k, v in self.sampling.items() if v is not None})
        if self.api_spec_tokens is not None:
            d["num_api_spec_tokens"] = self.api_spec_tokens
        return d


@dataclass
class CellResult:
    value: object = None          # a ProgramState, a list of them (batch), or None
    view: object = None
    error: str | None = None      # one line
    interrupted: bool = False
    holes: list = field(default_factory=list)


def one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (LmnbError, EngineError, RequestAborted)):
        return f"{type(e).__name__}: {msg}"
    return f"{type(e).__name__}: {msg}"


def run_cell(text: str, namespace: Mapping, opts: CellOptions,
             on_update: Callable | None = None, chat_template: Callable | None = None) -> CellResult:
    """Compile and run one cell. `on_update(view)` is called while tokens arrive (live
    streaming display); errors never raise, they are returned as `result.error`."""
    from lmnb.lang.template import batch_names, compile_template, holes

    res = CellResult()
    try:
        if opts.batch is not None:
            items = _batch_items(namespace, opts.batch)
            progs = [compile_template(text, namespace, batch_names(it), opts.line_offset) for it in items]
            res.holes = holes(progs[0]) if progs else []
            if opts.dry_run:
                return _dry(res, progs[0] if progs else compile_template(text, namespace, None, opts.line_offset),
                            chat_template)
            return _run_batch(res, progs, opts)
        prog = compile_template(text, namespace, line_offset=opts.line_offset)
        res.holes = holes(prog)
        if opts.dry_run:
            return _dry(res, prog, chat_template)
        return _run_one(res, prog, opts, on_update)
    except KeyboardInterrupt:  # Ctrl-C before the program started: nothing to stop
        res.interrupted = True
        return res
    except Exception as e:  # noqa: BLE001 - one readable line instead of a traceback
        res.error = one_line(e)
        return res


def _dry(res: CellResult, prog, chat_template) -> CellResult:
    from lmnb.widgets import DryRunView

    res.view = DryRunView(prog, res.holes, chat_template() if chat_template else None)
    return res


def _batch_items(namespace: Mapping, name: str) -> list:
    if name not in namespace:
        raise LmnbError(f"--batch {name}: no variable {name!r} in the notebook")
    items = namespace[name]
    if isinstance(items, (str, bytes, Mapping)):
        raise LmnbError(f"--batch {name}: give a list (of dicts or values), got {type(items).__name__}")
    try:
        return list(items)
    except TypeError:
        raise LmnbError(f"--batch {name}: {type(items).__name__} is not iterable") from None


def _run_one(res: CellResult, prog, opts: CellOptions, on_update) -> CellResult:
    from lmnb.lang.interpreter import run_program
    from lmnb.widgets import OutputView

    started: list = []
    try:
        state = run_program(prog, opts.backend, stream=True, on_state=started.append, **opts.defaults())
        res.value = state
        last = 0.0
        for _ in state.text_iter():
            now = time.monotonic()
            if on_update is not None and opts.stream and now - last >= opts.update_every:
                on_update(OutputView(state, res.holes, status="running"))
                last = now
    except KeyboardInterrupt:
        res.interrupted = True
        if started:  # Ctrl-C may land before run_program returned the state
            res.value = started[0]
            stop_program(started[0])
    except Exception as e:  # noqa: BLE001 - the state keeps what was produced
        res.error = one_line(e)
    if res.value is not None:
        res.view = OutputView(res.value, res.holes, status="interrupted" if res.interrupted else None)
    return res


def _run_batch(res: CellResult, progs: list, opts: CellOptions) -> CellResult:
    from lmnb.lang.interpreter import run_programs
    from lmnb.widgets import BatchView

    try:
        states = run_programs(progs, opts.backend, progress_bar=True, **opts.defaults())
    except KeyboardInterrupt:
        res.interrupted = True
        res.view = BatchView([], res.holes, status="interrupted")
        return res
    res.value = states
    res.view = BatchView(states, res.holes)
    failed = [s.error for s in states if s.error is not None]
    if failed:
        res.error = f"{len(failed)} of {len(states)} programs failed; first: {one_line(failed[0])}"
    return res


def stop_program(state, timeout: float = 10.0) -> None:
    """Abort a running program and wait until its worker has stopped, so no request of
    it still holds KV slots. Aborting again covers a request that was being submitted
    at the moment of the first abort."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state.abort()
        if state.wait_stopped(0.05):
            return
