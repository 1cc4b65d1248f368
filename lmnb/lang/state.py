"""`ProgramState`: the text, messages and captured variables of one running program.

`s += node` queues the node and returns at once; a worker thread of this state executes
the queue in order (see `interpreter.execute`). This is what lets `fork` branches and the
programs of a batch reach the engine together: each has its own worker, so their
requests are in flight at the same time and the engine batches them. Reading a value
(`s["x"]`, `s.text()`) waits only as long as needed. Code that runs on the worker itself
(a sub-program, a `Call` node) executes nodes inline instead of queueing them.
"""
from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from typing_extensions import Self

from lmnb.errors import LmnbError, RequestAborted
from lmnb.lang.ir import Expr, as_expr
from lmnb.lang.sglang_state import SGLangStateMixin


@dataclass
class StateSnapshot:
    """What a view shows of a program, copied under the state's lock."""

    chunks: list[tuple[str | None, str]]
    variables: dict
    meta: dict
    branches: list[list[tuple[str | None, str]]] = field(default_factory=list)
    error: str | None = None
    branch_starts: list[int] = field(default_factory=list)   # parent text length at each fork


class ProgramState(SGLangStateMixin):
    """A running or finished program. Readers (`text()`, `s["x"]`, `messages()`,
    `text_iter()`, `snapshot()`) and control (`sync()`, `abort()`, `wait_stopped()`) are
    for anyone; the methods under "the interpreter's interface" run on the worker.
    `executor(state, node)` runs one node (the interpreter gives it)."""

    def __init__(self, backend, defaults: dict | None = None, stream: bool = False,
                 executor: Callable[[ProgramState, Expr], None] | None = None) -> None:
        self.backend, self.defaults, self.stream = backend, dict(defaults or {}), stream
        self.executor = executor
        self.error: BaseException | None = None
        self.ret_value = None
        self._text = ""
        self._messages: list[dict] = []
        self._role: tuple[str, int] | None = None   # open turn and where its content starts
        self._vars: dict = {}
        self._meta: dict = {}
        self._chunks: list[tuple[str | None, str]] = []   # appended text pieces, for text_iter
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._worker: threading.Thread | None = None
        self._handle = None          # the backend request in flight, for abort()
        self._open = False           # a program body may still add nodes (run sets it)
        self._fork_base: dict | None = None
        self.api_usage: dict | None = None   # remote backends: calls and tokens of this program
        self._branches: list[ProgramState] = []   # fork branches, aborted with this state
        self.images: dict = {}       # key -> ImageData of the images in the text (kept alive)

    # -- adding nodes -----------------------------------------------------------
    def __iadd__(self, other) -> Self:
        self.submit(as_expr(other))
        return self

    def submit(self, node: Expr) -> None:
        if self._in_worker():
            self.executor(self, node)
            return
        with self._cond:
            if self.error is not None:
                return  # the program already failed; run() reports the first error
            self._queue.append(node)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="lmnb-program", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._queue or self.error is not None:
                    self._queue.clear()
                    self._worker = None
                    self._cond.notify_all()
                    return
                node = self._queue.popleft()
            try:
                self.executor(self, node)
            except BaseException as e:  # noqa: BLE001 - kept on the state, raised to readers
                self.fail(e)

    def fail(self, error: BaseException) -> None:
        with self._cond:
            if self.error is None:
                self.error = error
            self._queue.clear()
            self._cond.notify_all()

    def _in_worker(self) -> bool:
        return self._worker is not None and threading.current_thread() is self._worker

    # -- waiting ------------------------------------------------------------------
    def sync(self) -> ProgramState:
        """Wait until every queued node has run. Ctrl-C aborts the program."""
        if self._in_worker():
            return self
        self._wait(lambda: self._worker is None)
        return self

    def _wait(self, pred) -> None:
        try:
            with self._cond:
                self._cond.wait_for(pred)
        except KeyboardInterrupt:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop the program: drop queued nodes and abort the request in flight."""
        self.fail(RequestAborted("the program was aborted"))
        h = self._handle
        if h is not None:
            h.abort()
        for b in list(self._branches):
            b.abort()

    # -- reading --------------------------------------------------------------------
    def __getitem__(self, name: str):
        return self.get_var(name)

    def get_var(self, name: str):
        if not self._in_worker():
            self._wait(lambda: name in self._vars or self._worker is None)
        if name in self._vars:
            return self._vars[name]
        if self.error is not None:
            raise self.error
        known = ", ".join(map(repr, self._vars)) or "none yet"
        raise LmnbError(f"the program captured no variable {name!r} (captured: {known})")

    def set_var(self, name: str, value) -> None:
        self.sync()
        self._vars[name] = value

    def __contains__(self, name: str) -> bool:
        self.sync()
        return name in self._vars

    def variables(self) -> dict:
        self.sync()
        return dict(self._vars)

    def get_meta_info(self, name: str) -> dict | None:
        self.get_var(name)
        return self._meta.get(name)

    def text(self) -> str:
        self.sync()
        return self._text

    def messages(self) -> list[dict]:
        """The chat turns so far as [{"role", "content"}] (an open turn included)."""
        self.sync()
        out = [dict(m) for m in self._messages]
        if self._role is not None:
            out.append({"role": self._role[0], "content": self._text[self._role[1]:]})
        return out

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Yield the text as it is produced (all of it, or what is captured under
        `var_name`), until the program ends; a program error is raised at the end.
        Ctrl-C while iterating, or closing the iterator early, aborts the program
        (as a request's stream does), so nothing keeps generating unseen."""
        try:
            yield from self._text_pieces(var_name)
        except (KeyboardInterrupt, GeneratorExit):
            if not self._ended():
                self.abort()
            raise
        if self.error is not None:
            raise self.error

    def _text_pieces(self, var_name: str | None) -> Iterator[str]:
        i = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda i=i: len(self._chunks) > i or self._ended())
                new, i, ended = self._chunks[i:], len(self._chunks), self._ended()
            for var, piece in new:
                if var_name is None or var == var_name:
                    yield piece
            if ended and not new:
                return

    def _ended(self) -> bool:
        return self.error is not None or (not self._open and self._worker is None)

    # -- views and control ----------------------------------------------------------
    def snapshot(self) -> StateSnapshot:
        """The text pieces (with the variable each belongs to), variables, metas and the
        fork branches' pieces as they are now; safe while the program runs."""
        with self._cond:
            snap = StateSnapshot(list(self._chunks), dict(self._vars), dict(self._meta))
            branches, err = list(self._branches), self.error
        for b in branches:
            with b._cond:
                snap.branches.append(list(b._chunks))
                # a branch starts as the parent's text at the fork; its chunks are what it added
                snap.branch_starts.append(max(0, len(b._text) - sum(len(t) for _, t in b._chunks)))
        if err is not None and not isinstance(err, RequestAborted):
            snap.error = str(err)
        return snap

    def wait_stopped(self, timeout: float) -> bool:
        """Wait (up to `timeout` s) until no node runs or can be added, here and in the
        fork branches; True when stopped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._cond.wait_for(lambda: self._worker is None and not self._open, timeout=timeout):
                return False
        for b in list(self._branches):
            if not b.wait_stopped(max(0.0, deadline - time.monotonic())):
                return False
        return True

    # -- the interpreter's interface (on the worker thread) ---------------------------
    def append(self, text: str, var: str | None = None) -> None:
        """Add generated or constant text (`var`: the variable it belongs to)."""
        if not text:
            return
        with self._cond:
            self._text += text
            self._chunks.append((var, text))
            self._cond.notify_all()

    def rewrite_from(self, start: int, text: str) -> None:
        """Replace the text from char `start` on (re-tokenization changed text already
        streamed: the state keeps the final text)."""
        with self._cond:
            self._text = self._text[:start] + text
            self._cond.notify_all()

    def capture(self, name: str | None, value, meta) -> None:
        if name is None:
            return
        with self._cond:
            self._vars[name] = value
            self._meta[name] = meta
            self._cond.notify_all()

    def has_var(self, name: str) -> bool:
        return name in self._vars

    def open_turn(self) -> tuple[str, int] | None:
        """The open chat turn's role and the char where its content starts, or None."""
        return self._role

    def begin_turn(self, role: str, prefix: str) -> None:
        self.append(prefix)
        self._role = (role, len(self._text))

    def end_turn(self, suffix: str) -> None:
        role, start = self._role
        self._messages.append({"role": role, "content": self._text[start:]})
        self._role = None
        self.append(suffix)

    def at_start(self) -> bool:
        """No text and no turn yet."""
        return not self._messages and not self._text

    @contextlib.contextmanager
    def in_flight(self, handle):
        """The backend request being waited for, so `abort()` can stop it."""
        self._handle = handle
        try:
            yield handle
        finally:
            self._handle = None

    def set_open(self, is_open: bool) -> None:
        """While open, the program body may still add nodes (the program has not ended)."""
        with self._cond:
            self._open = is_open
            self._cond.notify_all()

    # -- fork / join --------------------------------------------------------------------
    def fork(self, n: int = 1) -> ForkGroup:
        """`n` branches that continue from the current text (the prefix KV is shared)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LmnbError(f"fork: n must be an int >= 1, got {n!r}")
        self.sync()
        if self.error is not None:
            raise self.error
        h = self.backend.start_prefix(self._text)  # the branches then share its KV
        if h is not None:
            with self.in_flight(h):
                if self.error is not None:  # aborted while the prefix was being submitted
                    h.abort()
                h.result()
        if self.error is not None:
            raise self.error
        return ForkGroup(self, [self.branch() for _ in range(n)])

    def branch(self) -> ProgramState:
        """A new state that continues from this one's text (a fork branch)."""
        b = ProgramState(self.backend, self.defaults, self.stream, self.executor)
        b._text, b._role = self._text, self._role
        b._messages = copy.deepcopy(self._messages)
        b._vars, b._meta = dict(self._vars), dict(self._meta)
        b._fork_base = dict(self._vars)
        b.api_usage = self.api_usage
        b.images = self.images
        self._branches.append(b)
        if self.error is not None:
            b.fail(self.error)  # forked after an abort: the branch must not start requests
        return b

    def __repr__(self) -> str:
        status = "error" if self.error else ("running" if self._worker or self._open else "done")
        return f"<ProgramState {status}, {len(self._text)} chars, variables={list(self._vars)}>"


class ForkGroup:
    """The branches of `s.fork(n)`: index or iterate them; `forks += x` adds x to every
    branch (a callable gets the branch index); `join()` waits and gathers."""

    def __init__(self, parent: ProgramState, states: list[ProgramState]) -> None:
        self.parent, self.states = parent, states

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other) -> Self:
        for i, s in enumerate(self.states):
            s += other(i) if callable(other) and not isinstance(other, Expr) else other
        return self

    def __setitem__(self, i: int, value) -> None:
        """What `forks[i] += x` ends with (the branch itself, already extended)."""
        if value is not self.states[i]:
            raise LmnbError("fork branches cannot be replaced; extend one with forks[i] += ...")

    def join(self, mode: str = "gather_variable") -> ProgramState:
        """Wait for every branch; `gather_variable` puts each name captured in the
        branches into the parent as a list in branch order (None where a branch did not
        capture it); `concate_and_append` appends the branches' new text to the parent."""
        if mode not in ("gather_variable", "concate_and_append"):
            raise LmnbError(f"join: mode must be 'gather_variable' or 'concate_and_append', got {mode!r}")
        for i, b in enumerate(self.states):
            b.sync()
            if b.error is not None:
                raise _branch_error(i, b.error)
        p = self.parent
        p.sync()
        if mode == "concate_and_append":
            base = len(p._text)
            p.append("".join(b._text[base:] for b in self.states))
            return p
        names: dict[str, None] = {}
        for b in self.states:
            for k, v in b._vars.items():
                if k not in b._fork_base or b._fork_base[k] is not v:
                    names[k] = None
        for k in names:
            p.capture(k, [b._vars.get(k) for b in self.states], [b._meta.get(k) for b in self.states])
        return p


def _branch_error(i: int, e: BaseException) -> BaseException:
    try:
        new = type(e)(f"fork branch {i}: {e}")
    except Exception:  # noqa: BLE001 - exotic exception signature
        return e
    new.__cause__ = e
    new.lmnb_where = f"fork branch {i}"
    return new
