"""The contract between the engine and constrained decoding.

The engine never looks inside a grammar: per request it holds one `GuideCursor`
(a position in a compiled, shared `Guide`) and, at each step,
  1. asks `allowed_mask()` and sets the logits of disallowed tokens to -inf,
  2. samples, then calls `accept_token(token_id)`,
  3. finishes the request when `is_terminated()`,
  4. when jump-forward is on, asks `jump_forward()`; a non-empty string is appended
     to the output text, re-tokenized at the boundary by the engine, and the cursor is
     told with `accept_text(text)`.
EOS ids are allowed by the mask exactly when the cursor is in an accepting state.
"""
from __future__ import annotations

from typing import Protocol

import torch


class GuideCursor(Protocol):
    def allowed_mask(self) -> torch.Tensor:
        """Bool tensor [vocab_size] (CPU) of tokens allowed next (cached per FSM state)."""

    # Optional: `bitmask() -> np.ndarray` int32 [ceil(vocab_size / 32)] (bit i % 32 of word
    # i // 32 set when token i is allowed). The sampler prefers it when present: one small
    # host-to-device copy per batch instead of a boolean row per request.
    # Optional on the cursor's class: `batch_bitmasks(cursors) -> np.ndarray` int32
    # [len(cursors), words], the same rows computed together (llguidance: in parallel).

    def accept_token(self, token_id: int) -> None:
        """Advance over one sampled token; raises LmnbError if it was not allowed."""

    def accept_text(self, text: str) -> None:
        """Advance over forced text (the string `jump_forward` returned)."""

    def is_terminated(self) -> bool:
        """True when nothing more can follow (an accepting state with no way on, or EOS seen)."""

    def jump_forward(self) -> str | None:
        """The forced string from here (a singular path of the compressed FSM), or None."""


class Guide(Protocol):
    def cursor(self) -> GuideCursor:
        """A fresh cursor at the start state."""


class GrammarBackend(Protocol):
    def compile(self, regex: str | None = None, json_schema: str | None = None) -> Guide:
        """Compile (cached by pattern) or raise LmnbError naming the unsupported feature."""
