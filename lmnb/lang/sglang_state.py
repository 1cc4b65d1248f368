"""The parts of SGLang's ProgramState API that lmnb's `ProgramState` gains from this
mixin: role context managers, `var_scope`, `state[k] = v`, `copy()` and
`text_async_iter`.

    with s.user():
        s += "Question: " + q
    with s.assistant():
        with s.var_scope("answer"):
            s += "It is " + lm.gen(max_tokens=8)     # s["answer"]: all text of the scope
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

from lmnb.lang import ir


class SGLangStateMixin:
    """Methods built on ProgramState's own (`+=`, `fork`, `set_var`, `text_iter`)."""

    def system(self, expr=None):
        """`s.system("...")` appends a system turn; `with s.system():` opens one."""
        return self._role_scope("system", expr)

    def user(self, expr=None):
        return self._role_scope("user", expr)

    def assistant(self, expr=None):
        return self._role_scope("assistant", expr)

    def _role_scope(self, role: str, expr):
        if expr is not None:
            self += ir.Seq([ir.RoleBegin(role), ir.as_expr(expr), ir.RoleEnd(role)])
            return None
        return _scope(self, ir.RoleBegin(role), ir.RoleEnd(role))

    def var_scope(self, name: str):
        """`with s.var_scope("x"):` captures all the text added inside under `x`."""
        ir.gen(name)   # the same name check as gen's
        marks: dict = {}

        def begin(s) -> None:
            marks["start"] = len(s.text())   # on the worker: the text so far, at once

        def end(s) -> None:
            s.capture(name, s.text()[marks["start"]:], None)

        return _scope(self, ir.Call(begin, f"var_scope({name!r})"), ir.Call(end, f"var_scope({name!r})"))

    def __setitem__(self, name: str, value) -> None:
        self.set_var(name, value)

    @contextlib.contextmanager
    def copy(self) -> Iterator:
        """`with s.copy() as c:` a branch of this state (a fork of one), joined on exit."""
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    async def text_async_iter(self, var_name: str | None = None,
                              return_meta_data: bool = False) -> AsyncIterator:
        """`async for piece in state.text_async_iter():` the text as it is produced (see
        `text_iter`), read on a worker thread so the event loop stays free; with
        `return_meta_data`, (piece, meta of `var_name` so far) pairs."""
        loop = asyncio.get_running_loop()
        it = self.text_iter(var_name)
        done = object()
        try:
            while True:
                piece = await loop.run_in_executor(None, next, it, done)
                if piece is done:
                    return
                if return_meta_data:
                    yield piece, (self._meta.get(var_name) if var_name else None)
                else:
                    yield piece
        finally:
            it.close()


class _scope:
    """A context manager adding `begin` on entry and `end` on a clean exit."""

    def __init__(self, state, begin, end) -> None:
        self.state, self.begin, self.end = state, begin, end

    def __enter__(self):
        self.state += self.begin
        return self.state

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is None:
            self.state += self.end
        return False
