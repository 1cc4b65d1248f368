"""Helpers for fault tests: Ctrl-C from a timer, waiting for an idle engine, and an
integrity watcher that checks the KV invariant on the engine thread while work runs."""
from __future__ import annotations

import signal
import threading
import time


def ctrl_c() -> None:
    """A real SIGINT to the main thread, as a terminal or a kernel interrupt sends it: it
    also wakes a blocking wait (which `_thread.interrupt_main()` would not)."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def interrupted_after(delay: float, fn) -> bool:
    """Run fn() while a timer delivers Ctrl-C (KeyboardInterrupt in the main thread)
    after `delay` seconds; True when the interrupt reached fn (or its clean-up)."""
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    timer = threading.Timer(delay, ctrl_c)
    try:
        try:
            timer.start()
            fn()
        finally:
            timer.cancel()
            timer.join()
            for _ in range(100):  # let a signal raised at the last moment arrive here
                pass
    except KeyboardInterrupt:
        return True
    return False


def engine_load(rt) -> tuple[int, int, int, int]:
    """(requests known to the engine, running, waiting, inbox items), read on the engine thread."""
    e, s = rt.engine, rt.scheduler
    return rt.engine.call(lambda: (len(e.reqs), len(s.running), len(s.waiting), e.inbox.qsize()))


def settle(rt, timeout: float = 30.0) -> tuple[int, int, int, int]:
    """Wait until the engine holds no request (aborts are asynchronous); the last load."""
    deadline = time.monotonic() + timeout
    load = engine_load(rt)
    while any(load) and time.monotonic() < deadline:
        time.sleep(0.02)
        load = engine_load(rt)
    return load


def assert_idle_and_whole(rt) -> None:
    """No request left, no KV slot held by a request, every req_to_token row free, and
    free + cached + in-use == pool size with no slot owned twice."""
    assert settle(rt) == (0, 0, 0, 0)
    rt.check_integrity()
    st = rt.cache_stats()
    assert st["in_use_tokens"] == 0 and st["running"] == 0 and st["waiting"] == 0, st
    assert st["free_slots"] + st["cached_tokens"] == st["pool_size"], st
    rows = rt.engine.call(lambda: (rt.req_pool.available(), rt.req_pool.max_reqs))
    assert rows[0] == rows[1], f"req_to_token rows held: {rows[1] - rows[0]}"


class IntegrityWatcher:
    """Checks the invariant through `engine.call` (between two engine steps) every
    `every` seconds until stopped; failures are kept and re-raised by `stop()`."""

    def __init__(self, rt, every: float = 0.25) -> None:
        self.rt, self.every, self.checks, self.failures = rt, every, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="integrity-watcher", daemon=True)

    def __enter__(self) -> IntegrityWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.rt.check_integrity()
                self.checks += 1
            except Exception as e:  # noqa: BLE001 - reported by stop()
                self.failures.append(e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self.failures, f"integrity broken during the storm: {self.failures[0]!r}"
