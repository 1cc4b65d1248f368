"""The project's own error types.

Every user-facing error is an `LmnbError` (a `ValueError`, so callers that catch
`ValueError` keep working) whose message is one line saying what to change.
"""
from __future__ import annotations


class LmnbError(ValueError):
    """Bad input or an unusable configuration; the message says what to change."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    """`text` with its line breaks turned into spaces (error messages are one line, even
    when they quote a library's multi-line message)."""
    return " ".join(text.splitlines())


class EngineError(RuntimeError):
    """The runtime's engine thread failed; every waiting request receives this."""


class RequestAborted(RuntimeError):
    """A request was aborted before it finished (the partial output is kept)."""
