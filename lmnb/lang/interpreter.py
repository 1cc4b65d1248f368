"""Executing IR nodes on a `ProgramState`, and running programs (one or a batch).

`execute(state, node)` runs on the state's worker thread. `run_program` /
`run_programs` accept a node, a list of nodes, or a body `fn(state)` (what
`@lm.function` passes) and return finished states.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from lmnb.errors import EngineError, LmnbError, RequestAborted
from lmnb.lang import ir
from lmnb.lang.backend import PrefixGate, resolve_backend
from lmnb.lang.state import ProgramState
from lmnb.runtime.sampling_params import NAMES

# run()/run_batch() keywords that set program-wide sampling defaults: the table's runtime
# names, as SGLang's run() takes them (max_new_tokens, temperature, ...)
DEFAULT_KEYS = NAMES
# run options for the program as a whole (given to `Backend.for_program`), not sampling
PROGRAM_KEYS = ("num_api_spec_tokens",)


def execute(state: ProgramState, node: ir.Expr) -> None:
    """Run one node on the state (on its worker thread); a failing primitive raises an
    error whose message starts with its name, e.g. `gen('answer'): ...`."""
    if isinstance(node, ir.Seq):
        for item in node.items:
            execute(state, item)
        return
    run = _LEAVES.get(type(node))
    if run is None:
        raise LmnbError(f"not a program node: {type(node).__name__}")
    try:
        run(state, node)
    except BaseException as e:
        err = named_error(node, e)
        if err is e:
            raise
        raise err from e


def _text(state: ProgramState, node: ir.Text) -> None:
    state.append(node.value)


def _select(state: ProgramState, node: ir.Select) -> None:
    res = state.backend.select(_prompt(state, node), node.choices, node.method)
    state.append(res.text, node.name)
    state.capture(node.name, res.text, res.meta)


def _var(state: ProgramState, node: ir.Var) -> None:
    if not state.has_var(node.name):
        raise LmnbError(f"no variable {node.name!r} was captured before it is used")
    state.append(str(state[node.name]))


def _call(state: ProgramState, node: ir.Call) -> None:
    out = node.fn(state)
    if out is not None and out is not state:
        execute(state, ir.as_expr(out))


def _prompt(state: ProgramState, node: ir.Expr) -> str:
    text = state.text()
    if not text:
        raise LmnbError("there is no text before it to continue; add a prompt (or a role) first")
    return text


def _gen(state: ProgramState, node: ir.Gen) -> None:
    params = {**state.defaults, **node.sampling()}
    h = state.backend.generate(_prompt(state, node), stream=state.stream, **params)
    start = len(state.text())
    with state.in_flight(h):
        try:
            if state.error is not None:  # aborted while the request was being submitted
                raise RequestAborted("the request was aborted")
            if state.stream:
                _stream_into(state, h, node.name, tuple(params.get("stop") or ()))
            res = h.result()
        except BaseException:
            h.abort()
            raise
    text, meta = res["text"], res["meta"]
    shown = state.text()[start:]
    if text.startswith(shown):
        state.append(text[len(shown):], node.name)
    else:  # re-tokenization changed text already streamed: the state keeps the final text
        state.rewrite_from(start, text)
    if meta.get("finish_reason") == "abort":
        raise RequestAborted("the request was aborted")
    samples = res.get("samples") or [res]   # n > 1: the variable is the list of samples
    values = [_parsed(node, s["text"]) for s in samples]
    state.capture(node.name, values[0] if len(values) == 1 else values,
                   meta if len(values) == 1 else [s["meta"] for s in samples])


def _parsed(node: ir.Gen, text: str):
    if node.parse is None:
        return text
    from lmnb.runtime.constrained import parse_value

    return parse_value(node.parse, text)


def _stream_into(state: ProgramState, handle, name: str | None, stops: tuple[str, ...]) -> None:
    """Append deltas as they come, holding back a tail that could begin a stop string
    (the runtime cuts a stop string only once it is complete)."""
    buf, shown = "", 0
    for delta in handle:
        buf += delta
        safe = len(buf) - _stop_overlap(buf, stops)
        if safe > shown:
            state.append(buf[shown:safe], name)
            shown = safe


def _stop_overlap(text: str, stops: tuple[str, ...]) -> int:
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _role_begin(state: ProgramState, role: str) -> None:
    tmpl = state.backend.chat_template()
    if tmpl is None:
        raise LmnbError("this model has no chat template; write raw text without system/user/assistant")
    turn = state.open_turn()
    if turn is not None:
        raise LmnbError(f"the {turn[0]} turn is still open; close it first ({turn[0]}_end())")
    state.begin_turn(role, tmpl.begin(role, state.at_start()))


def _role_end(state: ProgramState, role: str) -> None:
    turn = state.open_turn()
    if turn is None or turn[0] != role:
        open_ = f"the open turn is {turn[0]!r}" if turn else "no turn is open"
        raise LmnbError(f"{role}_end() without {role}_begin() ({open_})")
    state.end_turn(state.backend.chat_template().end(role))


def _fork(state: ProgramState, node: ir.Fork) -> None:
    group = state.fork(len(node.branches))
    for b, body in zip(group.states, node.branches):
        b += body
    group.join(node.join)


def named_error(node: ir.Expr, e: BaseException) -> BaseException:
    """The same kind of error with the primitive named first; the original is the cause.
    An error already named by an inner primitive passes through."""
    if getattr(e, "lmnb_where", None):
        return e
    where = node.describe()
    if isinstance(e, (LmnbError, EngineError, RequestAborted)):
        new = type(e)(f"{where}: {e}")
    elif isinstance(e, KeyboardInterrupt):
        new = RequestAborted(f"{where}: interrupted")
    else:
        new = RuntimeError(f"{where} failed: {type(e).__name__}: {e}")
    new.__cause__ = e
    new.lmnb_where = where
    return new


_LEAVES = {ir.Text: _text, ir.Gen: lambda s, n: _gen(s, n), ir.Select: _select,
           ir.RoleBegin: lambda s, n: _role_begin(s, n.role), ir.RoleEnd: lambda s, n: _role_end(s, n.role),
           ir.Var: _var, ir.Fork: lambda s, n: _fork(s, n), ir.Call: _call}


# -- running programs -----------------------------------------------------------------
def _as_body(program) -> Callable:
    if callable(program) and not isinstance(program, ir.Expr):
        return program
    node = ir.as_expr(program)
    return lambda s: s.__iadd__(node)


def start(body: Callable, backend=None, stream: bool = False, defaults: dict | None = None,
          args: tuple = (), kwargs: dict | None = None, on_state: Callable | None = None) -> ProgramState:
    """Run `body(state, *args, **kwargs)`. Blocks until done unless stream=True, when the
    body runs on a thread and the state is returned at once. Errors land in state.error."""
    defaults = _check_defaults(defaults or {})
    options = {k: defaults.pop(k) for k in PROGRAM_KEYS if k in defaults}
    state = ProgramState(resolve_backend(backend), defaults, stream, executor=execute)
    state.backend = state.backend.for_program(state, **options)
    state.set_open(True)
    if on_state is not None:
        on_state(state)

    def go() -> None:
        try:
            state.ret_value = body(state, *args, **(kwargs or {}))
            state.sync()
        except BaseException as e:
            state.fail(e)
            if isinstance(e, KeyboardInterrupt) and not stream:
                raise
        finally:
            state.set_open(False)

    if stream:
        import threading

        threading.Thread(target=go, name="lmnb-program-body", daemon=True).start()
    else:
        go()
    return state


def run_program(program, backend=None, stream: bool = False, on_state: Callable | None = None,
                **defaults) -> ProgramState:
    """Run a node, a list of nodes or a body fn(state); raise the program's error (with
    `.state` set) unless stream=True, where it stays in `state.error`. `on_state(state)`
    is called before anything runs (so a caller can abort a program it never got back)."""
    state = start(_as_body(program), backend, stream, defaults, on_state=on_state)
    if not stream and state.error is not None:
        err = state.error
        err.state = state
        raise err
    return state


def run_programs(programs: Sequence, backend=None, num_threads="auto", progress_bar: bool = False,
                 args_list: Sequence[dict] | None = None, **defaults) -> list[ProgramState]:
    """Run several programs at once (the engine batches their requests); the states come
    back in order, a failed one with `state.error` set. Ctrl-C aborts them all."""
    n = len(programs)
    if n == 0:
        return []
    workers = _threads(num_threads, n)
    backend = PrefixGate(resolve_backend(backend)) if n > 1 else resolve_backend(backend)
    _check_defaults(defaults)
    out: list[ProgramState | None] = [None] * n
    started: list[ProgramState] = []
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(workers, thread_name_prefix="lmnb-batch") as pool, \
            tqdm(total=n, disable=not progress_bar, desc="programs") as bar:
        futs = {pool.submit(start, _as_body(p), backend, False, defaults, (),
                            args_list[i] if args_list else None, started.append): i
                for i, p in enumerate(programs)}
        try:
            for f in as_completed(futs):
                out[futs[f]] = f.result()
                bar.update(1)
        except BaseException:
            for f in futs:
                f.cancel()
            for st in started.copy():  # pool threads may still append
                st.abort()
            raise
    return out  # type: ignore[return-value]


def _threads(num_threads, n: int) -> int:
    if num_threads == "auto":
        return max(1, min(n, 128, (os.cpu_count() or 1) * 32))
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise LmnbError(f"num_threads must be 'auto' or an int >= 1, got {num_threads!r}")
    return min(num_threads, n)


def _check_defaults(defaults: dict) -> dict:
    unknown = sorted(set(defaults) - set(DEFAULT_KEYS) - set(PROGRAM_KEYS))
    if unknown:
        raise LmnbError(f"unknown run option {unknown[0]!r}; valid: {', '.join(DEFAULT_KEYS + PROGRAM_KEYS)}")
    if {"regex", "json_schema"} & set(defaults):
        raise LmnbError("regex and json_schema constrain one gen; give them to gen(), not to run()")
    d = {k: v for k, v in defaults.items() if v is not None}
    n = d.get("num_api_spec_tokens")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise LmnbError(f"num_api_spec_tokens must be an int >= 0 (tokens per speculative API call; "
                        f"0: off), got {n!r}")
    if isinstance(d.get("stop"), str):
        d["stop"] = (d["stop"],)
    return d
