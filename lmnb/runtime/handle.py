"""Handles of submitted requests: the one way other threads read a request.

`RequestHandle.events()` yields the request's `StreamEvent`s as the engine thread sends
them (deltas with their token ids and logprobs, then "done" or "error"); `result()`,
iteration over text deltas and the server all read that stream, never the engine's
`Req` fields. `RequestGroup` is the handle of one request with `n` > 1 samples.
"""
from __future__ import annotations

import queue
import time
from collections.abc import Iterator

from lmnb.errors import EngineError
from lmnb.runtime.results import GenResult, StreamEvent

POLL_S = 0.1          # how often a waiting reader checks that the engine still runs
ABORT_WAIT_S = 10.0   # how long abort(wait=True) waits for the engine to let go


class RequestHandle:
    """One submitted request: wait for its result, iterate its text, or abort it."""

    def __init__(self, engine, req, prompt_ids: list[int]) -> None:
        self._engine, self._req = engine, req
        self.rid = req.rid
        self.prompt_ids = tuple(prompt_ids)
        self.partial_text = ""
        self._result: GenResult | None = None
        self._error: BaseException | None = None

    @property
    def req(self):
        """The engine-side request (for tests and benchmarks that inspect it)."""
        return self._req

    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def _next(self, timeout: float | None = None) -> StreamEvent | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._req.events.get(timeout=POLL_S)
            except queue.Empty:
                if not self._engine.thread.is_alive() and self._req.events.empty():
                    try:
                        self._engine.ensure_alive()  # says why it stopped and what to do
                    except EngineError as e:
                        return StreamEvent("error", error=e)
                    return StreamEvent("error", error=EngineError(
                        "the engine stopped before this request finished"))
                if deadline is not None and time.monotonic() > deadline:
                    return None

    def _take(self, ev: StreamEvent) -> None:
        if ev.kind == "delta":
            self.partial_text += ev.text
        elif ev.kind == "done":
            self._result = ev.result
        else:
            self._error = ev.error

    def events(self) -> Iterator[StreamEvent]:
        """Every event of the request in order, ending with its "done" or "error" event
        (an error is yielded, not raised). Each event is read once: use one consumer."""
        while not self.done():
            ev = self._next()
            self._take(ev)
            yield ev

    def result(self) -> GenResult:
        """Block until done. Ctrl-C aborts the request (its slots are freed) and re-raises."""
        try:
            for _ in self.events():
                pass
        except KeyboardInterrupt:
            self.abort(wait=True)
            raise
        if self._error is not None:
            raise self._error
        return self._result

    def __iter__(self) -> Iterator[str]:
        """Yield text deltas as they arrive (the request must be submitted with stream=True)."""
        try:
            for ev in self.events():
                if ev.kind == "delta":
                    yield ev.text
            if self._error is not None:
                raise self._error
            text = self._result.text
            rest = text[len(self.partial_text):]
            if rest and text.startswith(self.partial_text):
                self.partial_text += rest   # text held back while it could have been a stop string
                yield rest
        except (KeyboardInterrupt, GeneratorExit):
            self.abort(wait=True)
            raise

    def abort(self, wait: bool = False) -> None:
        self._engine.abort(self.rid)
        if not wait:
            return
        deadline = time.monotonic() + ABORT_WAIT_S
        while not self.done() and time.monotonic() < deadline:
            ev = self._next(timeout=POLL_S)
            if ev is not None:
                self._take(ev)


class RequestGroup:
    """The n samples of one request (`n` > 1): `result()` is the first sample's result with
    `samples` holding all of them; iteration streams the first sample."""

    def __init__(self, handles: list[RequestHandle]) -> None:
        self.handles = handles
        self.rid = handles[0].rid
        self.prompt_ids = handles[0].prompt_ids

    @property
    def partial_text(self) -> str:
        return self.handles[0].partial_text

    def done(self) -> bool:
        return all(h.done() for h in self.handles)

    def events(self) -> Iterator[StreamEvent]:
        return self.handles[0].events()

    def result(self) -> GenResult:
        try:
            results = [h.result() for h in self.handles]
        except BaseException:
            self.abort()
            raise
        first = results[0]
        return GenResult(first.text, first.meta, first.output_ids, samples=results)

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self.handles[0]
        except (KeyboardInterrupt, GeneratorExit):
            self.abort(wait=True)
            raise

    def abort(self, wait: bool = False) -> None:
        for h in self.handles:
            h.abort()
        if wait:
            for h in self.handles:
                h.abort(wait=True)
