"""Between the server's event loop and the runtime's engine thread.

Submissions run in worker threads (tokenizing and grammar compilation can take a
while); each request's event queue is drained by a worker thread that forwards the
events to the loop, so awaiting a result never blocks the loop and concurrent
requests reach the engine together, where they are batched and share the radix cache.
"""
from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lmnb.errors import EngineError


@dataclass(slots=True)
class Event:
    """index: which handle. kind: "delta" (text), "done" (value: the result dict) or
    "error" (value: the exception). logprobs_ready: output logprob entries available
    when the delta was taken (for streaming logprobs)."""

    index: int
    kind: str
    text: str = ""
    value: Any = None
    logprobs_ready: int = 0


class Bridge:
    def __init__(self, runtime, max_threads: int = 1024) -> None:
        self.runtime = runtime
        self.pool = ThreadPoolExecutor(max_threads, thread_name_prefix="lmnb-serve")
        self.eos_ids = frozenset(runtime.eos_token_ids)

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
        req = h.req
        while True:
            try:
                kind, val = req.events.get(timeout=0.5)
            except queue.Empty:
                if h.runtime.engine.thread.is_alive() or not req.events.empty():
                    continue
                kind, val = "error", EngineError("the engine stopped before this request finished")
            ev = Event(i, kind, val if kind == "delta" else "", None if kind == "delta" else val)
            if kind == "delta" and req.params.return_logprob:
                ev.logprobs_ready = self._logprobs_ready(req)
            if not put(ev):
                h.abort()
                return
            if kind != "delta":
                return

    def _logprobs_ready(self, req) -> int:
        n = len(req.output_logprobs)
        if req.params.top_logprobs_num:
            n = min(n, len(req.output_top_logprobs))
        # a final EOS / stop token has no text: it is not shown in the stream either
        stops = self.eos_ids | set(req.params.stop_token_ids)
        if n and req.output_logprobs[n - 1][0] in stops:
            n -= 1
        return n

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _abort_result(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        abort_unfinished(fut.result())


def abort_unfinished(handles: Sequence) -> None:
    for h in handles:
        if not h.req.finished():
            h.abort()
