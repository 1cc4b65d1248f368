"""Watching a runtime while a soak runs: periodic integrity checks and the process RSS."""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Self

try:
    _TRIM = getattr(ctypes.CDLL("libc.so.6"), "malloc_trim", None)
except OSError:   # not glibc: RSS is read as it is
    _TRIM = None


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; no psutil needed), after glibc has
    returned its free pages (`malloc_trim`): in a test worker that ran other files first,
    freed arena memory otherwise moves RSS by ~100 MB either way, which a leak check would
    read as growth."""
    if _TRIM is not None:
        _TRIM(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class IntegrityMonitor:
    """Calls `rt.check_integrity()` (it runs on the engine thread, between two steps) every
    `every` seconds until the block ends; failures are kept for the test to report. Also
    samples (finished requests, RSS) so memory can be read at a point of the run."""

    def __init__(self, rt, every: float = 0.25) -> None:
        self.rt, self.every = rt, every
        self.checks, self.failures = 0, []
        self.rss: list[tuple[int, int]] = []   # (finished requests, rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-integrity", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.rt.check_integrity()
                self.checks += 1
                self.rss.append((self.rt.stats()["finished_requests"], rss_bytes()))
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.failures.append(e)

    def rss_after(self, finished: int) -> int | None:
        """RSS at the first sample taken once `finished` requests had finished."""
        return next((r for n, r in self.rss if n >= finished), None)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
