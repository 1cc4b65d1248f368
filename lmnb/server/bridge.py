"""Between the server's event loop and the runtime's engine thread.

Submissions run in worker threads (tokenizing and grammar compilation can take a
while); each request's event queue is drained by a worker thread that forwards the
events to the loop, so awaiting a result never blocks the loop and concurrent
requests reach the engine together, where they are batched and share the radix cache.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Event:
    """index: which handle. kind: "delta" (text, with `value` the runtime's StreamEvent:
    its token ids and logprobs), "done" (value: the result) or "error" (value: the
    exception)."""

    index: int
    kind: str
    text: str = ""
    value: Any = None


class Bridge:
    def __init__(self, runtime, max_threads: int = 1024) -> None:
        self.runtime = runtime
        self.pool = ThreadPoolExecutor(max_threads, thread_name_prefix="lmnb-serve")

    async def submit(self, jobs: Sequence[tuple[Any, dict]], stream: bool) -> list:
        """Submit (prompt, sampling) pairs together; if one is refused, abort the others."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.pool, self._submit_all, list(jobs), stream)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:   # the submission still finishes: abort what it made
            fut.add_done_callback(_abort_result)
            raise

    def _submit_all(self, jobs, stream: bool) -> list:
        handles = []
        try:
            for prompt, sampling in jobs:
                handles.append(self.runtime.submit(prompt, stream=stream, **sampling))
        except BaseException:
            abort_unfinished(handles)
            raise
        return handles

    async def events(self, handles: Sequence) -> AsyncIterator[Event]:
        """Events of all handles as they come, until every one is done or failed."""
        loop, inbox = asyncio.get_running_loop(), asyncio.Queue()

        def put(ev: Event) -> bool:
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, ev)
                return True
            except RuntimeError:   # the loop is gone (server stopped)
                return False

        for i, h in enumerate(handles):
            self.pool.submit(self._pump, i, h, put)
        left = len(handles)
        while left:
            ev = await inbox.get()
            left -= ev.kind != "delta"
            yield ev

    def _pump(self, i: int, h, put) -> None:
        """Forward one handle's event stream to the loop (the handle's public stream is
        the only thing read here: no engine-side fields)."""
        for sev in h.events():
            if sev.kind == "delta":
                ev = Event(i, "delta", sev.text, sev)
            elif sev.kind == "done":
                ev = Event(i, "done", value=sev.result)
            else:
                ev = Event(i, "error", value=sev.error)
            if not put(ev):
                h.abort()
                return

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _abort_result(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        abort_unfinished(fut.result())


def abort_unfinished(handles: Sequence) -> None:
    for h in handles:
        if not h.done():
            h.abort()
