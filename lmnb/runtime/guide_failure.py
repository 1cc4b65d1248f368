"""A constraint that fails while a request decodes finishes that request, never the engine.

The engine thread runs every request's guide cursor (mask, accept, jump-forward). If one
raises there (a grammar engine error, a tokenizer whose bytes disagree with the pattern),
`apply_masks` swaps that request's cursor for a `FailedCursor` (the step samples the row
unconstrained; the token is thrown away) and `OutputProcessor.settle` reports the request
as failed: the engine frees its KV slots and delivers the error to its handle alone.
"""
from __future__ import annotations

import torch

from lmnb.errors import LmnbError


def request_error(e: BaseException) -> LmnbError:
    """The one-line error a failed request's handle raises."""
    if isinstance(e, LmnbError):
        return e
    msg = " ".join(f"{type(e).__name__}: {e}".split())
    return LmnbError(f"constrained decoding failed for this request ({msg[:300]}); "
                     "the request was stopped, the runtime goes on")


class FailedCursor:
    """Stands in for a cursor whose mask computation raised: allows every token so the
    step can run, and raises the original error when the engine accepts the token."""

    def __init__(self, error: BaseException, width: int) -> None:
        self.error = request_error(error)
        self._mask = torch.ones(width, dtype=torch.bool)

    def allowed_mask(self) -> torch.Tensor:
        return self._mask

    def accept_token(self, token_id: int) -> None:
        raise self.error

    def accept_text(self, text: str) -> None:
        raise self.error

    def is_terminated(self) -> bool:
        return False

    def is_accepting(self) -> bool:
        return False

    def jump_forward(self) -> str | None:
        return None


def guard_masks(reqs, width: int) -> None:
    """Probe each request's cursor (after a batched mask computation raised) and replace
    the failing ones by `FailedCursor`s."""
    for r in reqs:
        g = r.guide
        try:
            g.bitmask() if hasattr(g, "bitmask") else g.allowed_mask()
        except Exception as e:  # noqa: BLE001 - one request's grammar must not stop the engine
            r.guide = FailedCursor(e, width)
