"""Token-level guides: a compiled pattern over one vocabulary, and per-request cursors.

`GrammarBackend` is built once per tokenizer: it turns the vocabulary into bytes
and a token trie, then compiles patterns (cached by pattern text) into shared
`Guide`s. A `Guide` computes the allowed-token mask of an automaton state the
first time any request visits it and keeps it; every `GuideCursor` of the same
pattern reuses those tensors. Masks are read-only and shared: never modify one.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from lmnb.errors import LmnbError
from lmnb.runtime.constrained.json_schema import Whitespace, build_regex_from_schema
from lmnb.runtime.constrained.jump_forward import JumpTable
from lmnb.runtime.constrained.regex_fsm import ByteFSM, compile_regex
from lmnb.runtime.constrained.vocab import TokenTrie, vocabulary_ids


class Vocabulary:
    """A tokenizer's tokens as bytes plus the trie used to compute masks."""

    def __init__(self, tokenizer, vocab_size: int | None, eos_token_ids: Iterable[int] | None):
        self.tokens, self.vocab_size, self.eos_ids = vocabulary_ids(tokenizer, vocab_size, eos_token_ids)
        self.eos_set = frozenset(self.eos_ids.tolist())
        self.trie = TokenTrie.build(self.tokens, self.vocab_size)

    def bytes_of(self, token_id: int) -> bytes | None:
        return self.tokens[token_id] if 0 <= token_id < len(self.tokens) else None


class Guide:
    """One pattern compiled against one vocabulary; shared by all requests using it."""

    def __init__(self, fsm: ByteFSM, vocab: Vocabulary):
        self.fsm = fsm
        self.vocab = vocab
        self.jumps = JumpTable(fsm)
        self._masks: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    @property
    def pattern(self) -> str:
        return self.fsm.pattern

    def cursor(self) -> GuideCursor:
        """A fresh cursor at the start state."""
        return GuideCursor(self)

    def mask(self, state: int) -> torch.Tensor:
        """Bool [vocab_size] of tokens allowed in `state`; computed once, then cached."""
        m = self._masks.get(state)
        if m is None:
            m = self._compute_mask(state)
            with self._lock:
                m = self._masks.setdefault(state, m)
        return m

    def next_states(self, state: int) -> np.ndarray:
        """The state each token id leads to from `state` (`fsm.dead` when not allowed)."""
        return self.vocab.trie.walk(self.fsm.trans, state)

    def _compute_mask(self, state: int) -> torch.Tensor:
        allowed = self.next_states(state) != self.fsm.dead
        if self.fsm.accepting[state]:
            allowed[self.vocab.eos_ids] = True
        return torch.from_numpy(allowed)


class GuideCursor:
    """A request's position in a `Guide` (see `interface.GuideCursor` for the protocol)."""

    __slots__ = ("eos_seen", "guide", "state")

    def __init__(self, guide: Guide):
        self.guide = guide
        self.state = guide.fsm.initial
        self.eos_seen = False

    def allowed_mask(self) -> torch.Tensor:
        """Bool tensor [vocab_size] (CPU, shared: do not modify) of tokens allowed next."""
        return self.guide.mask(self.state)

    def accept_token(self, token_id: int) -> None:
        """Advance over one sampled token; raises LmnbError if it was not allowed."""
        token_id = int(token_id)
        fsm = self.guide.fsm
        if token_id in self.guide.vocab.eos_set and not self.eos_seen:
            if not fsm.accepting[self.state]:
                raise LmnbError(f"end of sequence before the output matches {_short(fsm.pattern)}")
            self.eos_seen = True
            return
        data = self.guide.vocab.bytes_of(token_id)
        nxt = fsm.step(self.state, data) if data and not self.eos_seen else fsm.dead
        if nxt == fsm.dead:
            raise LmnbError(f"token id {token_id} is not allowed here by {_short(fsm.pattern)}; "
                            "apply allowed_mask() before sampling")
        self.state = nxt

    def accept_text(self, text: str) -> None:
        """Advance over forced text (the string `jump_forward` returned)."""
        fsm = self.guide.fsm
        nxt = fsm.step(self.state, text.encode("utf-8")) if not self.eos_seen else fsm.dead
        if nxt == fsm.dead:
            raise LmnbError(f"text {text[:40]!r} does not continue {_short(fsm.pattern)} here")
        self.state = nxt

    def is_terminated(self) -> bool:
        """True after EOS, or in an accepting state from which no byte leads on."""
        if self.eos_seen:
            return True
        return bool(self.guide.fsm.accepting[self.state]) and not self.guide.jumps.has_successor(
            self.state)

    def is_accepting(self) -> bool:
        """True when the text so far fully matches the pattern."""
        return bool(self.guide.fsm.accepting[self.state])

    def jump_forward(self) -> str | None:
        """The forced string from here (whole characters only), or None."""
        if self.eos_seen:
            return None
        hit = self.guide.jumps.forced(self.state)
        return hit[0] if hit else None


def _short(pattern: str) -> str:
    return repr(pattern if len(pattern) <= 60 else pattern[:57] + "...")


class GrammarBackend:
    """Compiles regexes and JSON schemas into `Guide`s for one tokenizer (cached by pattern).

    `vocab_size` is the model's logit width (may exceed the tokenizer's length;
    the extra ids are never allowed). `eos_token_ids` are allowed exactly in
    accepting states (default: the tokenizer's eos_token_id).
    """

    def __init__(self, tokenizer, vocab_size: int | None = None,
                 eos_token_ids: Iterable[int] | None = None, whitespace: Whitespace = "compact"):
        self.vocab = Vocabulary(tokenizer, vocab_size, eos_token_ids)
        self.whitespace = whitespace
        self._guides: dict[str, Guide] = {}
        self._lock = threading.Lock()

    def compile(self, regex: str | None = None, json_schema: Any = None) -> Guide:
        """Compile (cached by pattern) or raise LmnbError naming the unsupported feature.

        `json_schema` may be a dict, a JSON string or a pydantic model class.
        """
        if (regex is None) == (json_schema is None):
            raise LmnbError("pass exactly one of regex= or json_schema= to constrain generation")
        if json_schema is not None:
            regex = build_regex_from_schema(json_schema, whitespace=self.whitespace)
        if not isinstance(regex, str):
            raise LmnbError(f"regex must be a string, got {type(regex).__name__}")
        guide = self._guides.get(regex)
        if guide is None:
            guide = Guide(compile_regex(regex), self.vocab)
            with self._lock:
                guide = self._guides.setdefault(regex, guide)
        return guide


def make_backend(tokenizer, vocab_size: int | None = None,
                 eos_token_ids: Iterable[int] | None = None, whitespace: Whitespace = "compact",
                 engine: str = "llguidance"):
    """The grammar backend the engine uses: "llguidance" (default: fast masks, lazy
    compile) or "fsm" (lmnb's own byte automaton with per-state cached masks)."""
    if engine == "fsm":
        return GrammarBackend(tokenizer, vocab_size, eos_token_ids, whitespace)
    if engine == "llguidance":
        from lmnb.runtime.constrained.llg import LlgBackend

        return LlgBackend(tokenizer, vocab_size, eos_token_ids, whitespace)
    raise LmnbError(f"unknown constrained-decoding engine {engine!r}; use 'llguidance' or 'fsm'")
