"""Constrained decoding: regex / JSON schema → byte FSM → cached token masks + jump-forward.

Engine side: `GrammarBackend(tokenizer, vocab_size, eos_token_ids).compile(regex=...)`
or `.compile(json_schema=...)` gives a shared `Guide`; `guide.cursor()` gives a
per-request `GuideCursor` (see `interface.py`). Frontend side:
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
from lmnb.runtime.constrained.guide import GrammarBackend, Guide, GuideCursor
from lmnb.runtime.constrained.json_schema import build_regex_from_schema
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
    "build_regex_from_schema",
    "compile_regex",
    "normalize_regex",
    "parse_value",
    "regex_for_dtype",
]
