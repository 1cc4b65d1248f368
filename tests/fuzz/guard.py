"""What every fuzz example checks: it finishes in time, and a failure is a clear error.

`within(seconds)` turns a hang into a test failure (SIGALRM; pytest runs tests in
the main thread). `Hang` is a BaseException so no `except Exception` in the product
can swallow it. `assert_clear(error)` is the contract of `lmnb.errors.LmnbError`:
the project's own type, one non-empty line, no traceback text.
"""
from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from lmnb.errors import LmnbError


class Hang(BaseException):
    """An example ran past its time limit."""


@contextmanager
def within(seconds: int, what: object = "") -> Iterator[None]:
    def ring(signum, frame):
        raise Hang(f"no answer within {seconds} s: {what!r:.200}")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def assert_clear(error: BaseException, kind: type = LmnbError) -> str:
    """The error is a `kind` (an LmnbError) with a one-line message; returns the message."""
    assert isinstance(error, kind), f"{type(error).__name__} instead of {kind.__name__}: {error!r:.300}"
    msg = str(error)
    assert msg.strip(), "empty error message"
    assert len(msg.splitlines()) == 1, f"multi-line message: {msg!r:.300}"
    assert "Traceback" not in msg and 'File "' not in msg, msg
    return msg


def outcome(fn, *args, seconds: int = 10, **kw):
    """(result, None) or (None, error) of fn(*args, **kw), failing the test on a hang or
    an error that is not an LmnbError."""
    with within(seconds, (fn.__name__, args, kw)):
        try:
            return fn(*args, **kw), None
        except LmnbError as e:
            assert_clear(e)
            return None, e
