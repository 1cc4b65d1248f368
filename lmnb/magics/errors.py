"""The error a failing `%%lm` / `%lm` cell raises.

Raising (instead of printing) is what makes the cell fail: Run All stops there and
nbclient / nbval report a `CellExecutionError`. `_render_traceback_` is IPython's hook
for what the error output shows: here the one line that says what to change, in red,
and no traceback (the traceback would point into lmnb, not at the cell).
"""
from __future__ import annotations

from lmnb.errors import LmnbError

_RED, _RESET = "\x1b[0;31m", "\x1b[0m"


class CellError(LmnbError):
    """A cell of the lmnb language failed; the message is one line prefixed `lmnb: `."""

    def __init__(self, message: object = "") -> None:
        text = str(message)
        super().__init__(text if text.startswith("lmnb: ") else f"lmnb: {text}")

    def _render_traceback_(self) -> list[str]:
        return [f"{_RED}{self}{_RESET}"]
