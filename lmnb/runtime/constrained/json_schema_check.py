"""Type checks for the keyword values of one JSON-schema node, before conversion.

A schema is user data (often hand-written in a notebook): `"maxLength": "5"`,
`"enum": "abc"` or `"required": "name"` must raise an `LmnbError` naming the keyword
and its path, not a TypeError deep inside the converter, and never be read in a way
that silently changes the constraint (a str enum iterated as characters, a negative
count turned into a literal `{-1,}` in the regex). `bounds` reads the checked numeric
bounds of a node as one inclusive range.
"""
from __future__ import annotations

import math
from typing import Any

from lmnb.errors import LmnbError

MAX_DEPTH = 48   # schema nesting; deeper ones would nest the regex past what its parser takes

_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_LISTS = ("enum", "anyOf", "oneOf", "allOf", "prefixItems", "required")
_STRINGS = ("pattern", "format", "$ref")
_SCHEMAS = ("items", "additionalProperties")   # a schema object or a boolean (items: a list too)


def check_node(s: dict, path: str) -> None:
    """Raise LmnbError when a keyword of node `s` (at `path`) has a value of the wrong kind."""
    if path.count("/") > MAX_DEPTH:
        raise LmnbError(f"schema at {path[:60]}... is nested more than {MAX_DEPTH} levels; flatten it")
    for key in _COUNTS:
        if key in s and not _is_int(s[key], 0):
            _bad(key, path, "a whole number >= 0", s[key])
    for key in _NUMBERS:
        allowed = (bool,) if key.startswith("exclusive") else ()
        if key in s and not (_is_number(s[key]) or isinstance(s[key], allowed)):
            _bad(key, path, "a finite number", s[key])
    for key in _LISTS:
        if key in s and not isinstance(s[key], list):
            _bad(key, path, "a list", s[key])
    for key in _STRINGS:
        if key in s and not isinstance(s[key], str):
            _bad(key, path, "a string", s[key])
    for key in _SCHEMAS:
        if key in s and not isinstance(s[key], (dict, bool, list if key == "items" else dict)):
            _bad(key, path, "a schema object or true/false", s[key])
    _check_containers(s, path)


def _check_containers(s: dict, path: str) -> None:
    kind = s.get("type")
    if kind is not None and not (isinstance(kind, str) or (
            isinstance(kind, list) and all(isinstance(k, str) for k in kind))):
        _bad("type", path, "a type name or a list of type names", kind)
    if "required" in s and not all(isinstance(r, str) for r in s["required"]):
        _bad("required", path, "a list of property names", s["required"])
    props = s.get("properties")
    if props is not None and not (isinstance(props, dict) and all(isinstance(k, str) for k in props)):
        _bad("properties", path, "an object mapping names to schemas", props)
    pats = s.get("patternProperties")
    if pats is not None and not (isinstance(pats, dict) and all(isinstance(k, str) for k in pats)):
        _bad("patternProperties", path, "an object mapping patterns to schemas", pats)
    if "uniqueItems" in s and not isinstance(s["uniqueItems"], bool):
        _bad("uniqueItems", path, "true or false", s["uniqueItems"])


def _is_int(v: Any, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) or math.isfinite(v)


def _bad(key: str, path: str, want: str, got: Any) -> None:
    shown = repr(got)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise LmnbError(f"JSON schema keyword {key!r} at {path} must be {want}, got {shown}; fix the schema")


def bounds(s: dict) -> tuple[float | None, float | None]:
    """Inclusive (lo, hi) for integers: exclusive bounds become the next integer inward."""
    lo, lo_ex, hi, hi_ex = number_bounds(s)
    if lo is not None and lo_ex:
        lo = math.floor(lo) + 1
    elif lo is not None:
        lo = math.ceil(lo)
    if hi is not None and hi_ex:
        hi = math.ceil(hi) - 1
    elif hi is not None:
        hi = math.floor(hi)
    return lo, hi


def number_bounds(s: dict) -> tuple[float | None, bool, float | None, bool]:
    """(lo, lo_exclusive, hi, hi_exclusive): the tightest of minimum/exclusiveMinimum
    (draft 4's boolean exclusiveMinimum flags read too) and likewise for the top."""
    lo, hi = s.get("minimum"), s.get("maximum")
    ex_lo, ex_hi = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
    lo_ex = hi_ex = False
    if isinstance(ex_lo, bool):   # draft 4: a flag on minimum
        lo_ex, ex_lo = ex_lo and lo is not None, None
    if isinstance(ex_hi, bool):
        hi_ex, ex_hi = ex_hi and hi is not None, None
    if ex_lo is not None and (lo is None or ex_lo >= lo):
        lo, lo_ex = ex_lo, True
    if ex_hi is not None and (hi is None or ex_hi <= hi):
        hi, hi_ex = ex_hi, True
    return lo, lo_ex, hi, hi_ex
