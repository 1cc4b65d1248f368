"""Constrained decoding: regex / JSON schema → byte FSM → cached token masks + jump-forward.

Engine side: `make_backend(tokenizer, vocab_size, eos_token_ids).compile(regex=...)`
or `.compile(json_schema=...)` gives a shared guide; `guide.cursor()` gives a
per-request cursor (see `interface.py`). The default engine is llguidance (`llg.py`);
`GrammarBackend` (`guide.py`) is lmnb's own byte-FSM engine, kept as the reference. Frontend side:
`build_regex_from_schema`, `regex_for_dtype` and `parse_value`.
"""
from __future__ import annotations

from lmnb.runtime.constrained.dtypes import (
    REGEX_BOOL,
    REGEX_FLOAT,
    REGEX_INT,
    REGEX_STR,
    parse_value,
    regex_for_dtype,
)
from lmnb.runtime.constrained.guide import GrammarBackend, Guide, GuideCursor, make_backend
from lmnb.runtime.constrained.json_schema import build_regex_from_schema
from lmnb.runtime.constrained.llg import LlgBackend, LlgCursor, LlgGuide
from lmnb.runtime.constrained.regex_check import normalize_regex
from lmnb.runtime.constrained.regex_fsm import ByteFSM, compile_regex

__all__ = [
    "REGEX_BOOL",
    "REGEX_FLOAT",
    "REGEX_INT",
    "REGEX_STR",
    "ByteFSM",
    "GrammarBackend",
    "Guide",
    "GuideCursor",
    "LlgBackend",
    "LlgCursor",
    "LlgGuide",
    "build_regex_from_schema",
    "compile_regex",
    "make_backend",
    "normalize_regex",
    "parse_value",
    "regex_for_dtype",
]
