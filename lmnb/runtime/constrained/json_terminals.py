"""Regexes for JSON terminals: strings, numbers with bounds, formats, literals.

Integers are canonical (no leading zeros, no `-0`); string escapes exclude
lone surrogates so every generated string decodes to the length it was
counted with.
"""
from __future__ import annotations

import json

from lmnb.errors import LmnbError
from lmnb.runtime.constrained.regex_emit import regex_literal

STRING_CHAR = (r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]'
               r'|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))')
STRING = f'"{STRING_CHAR}*"'
# digit counts are bounded (int64 / double precision) so a number always ends
INTEGER = r"(?:0|-?[1-9][0-9]{0,18})"
NUMBER = r"-?(?:0|[1-9][0-9]{0,18})(?:\.[0-9]{1,17})?(?:[eE][+-]?[0-9]{1,3})?"
BOOLEAN = r"(?:true|false)"
NULL = r"null"

_YEAR = r"(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[13579][26]|[2468][048]|0[48])00)"
_DATE = (rf"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
         r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
         rf"|{_LEAP_YEAR}-02-29)")
# RFC 3339 full-time: the offset is required
_TIME = (r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
         r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_H16 = r"[0-9a-fA-F]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = "(?:" + "|".join([     # RFC 3986 IPv6address
    rf"(?:{_H16}:){{6}}{_LS32}",
    rf"::(?:{_H16}:){{5}}{_LS32}",
    rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
    rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
    rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
    rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
    rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
    rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
]) + ")"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_HOSTNAME = rf"{_LABEL}(?:\.{_LABEL})*"
_URI_CHAR = r"(?:[a-zA-Z0-9._~!$&'()*+,;=:@-]|%[0-9a-fA-F]{2})"
FORMATS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": f"{_DATE}T{_TIME}",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "email": rf"[a-zA-Z0-9_%+-]+(?:\.[a-zA-Z0-9_%+-]+)*@{_LABEL}(?:\.{_LABEL})+",
    "ipv4": _IPV4,
    "ipv6": _IPV6,
    "hostname": _HOSTNAME,
    "uri": (rf"[a-zA-Z][a-zA-Z0-9+.-]*://{_HOSTNAME}(?::[0-9]{{1,5}})?(?:/{_URI_CHAR}*)*"
            rf"(?:\?(?:{_URI_CHAR}|[/?])*)?(?:#(?:{_URI_CHAR}|[/?])*)?"),
}
# (shortest, longest) text of the formats whose length is bounded
FORMAT_LENGTHS = {"date": (10, 10), "time": (9, 21), "date-time": (20, 32), "uuid": (36, 36),
                  "ipv4": (7, 15), "ipv6": (2, 45)}


def literal(value) -> str:
    """Regex matching exactly the compact JSON text of `value`."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise LmnbError(f"enum/const value {str(value)[:40]!r} is not JSON ({e}); use JSON values") from None
    return regex_literal(text)


def string_of_length(lo: int, hi: int | None) -> str:
    if hi is not None and hi < lo:
        raise LmnbError(f"string maxLength {hi} is below minLength {lo}; fix the schema")
    return f'"{STRING_CHAR}{{{lo},{"" if hi is None else hi}}}"'


def integer_range(lo: int | None, hi: int | None) -> str:
    """Regex for the canonical decimal integers in [lo, hi] (None: unbounded)."""
    if lo is None and hi is None:
        return INTEGER
    if lo is not None and hi is not None and lo > hi:
        raise LmnbError(f"integer range [{lo}, {hi}] is empty; fix minimum/maximum")
    parts = []
    if hi is None or hi >= 0:  # non-negative part
        parts.append(_natural_range(max(lo or 0, 0) if lo is None or lo >= 0 else 0, hi))
    if lo is None or lo < 0:  # negative part: -(magnitudes)
        mag_lo = 1 if hi is None or hi >= 0 else -hi
        mag_hi = None if lo is None else -lo
        parts.append("-" + _natural_range(mag_lo, mag_hi))
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _natural_range(a: int, b: int | None) -> str:
    """Non-negative integers in [a, b]."""
    if b is None:
        d = len(str(a))
        tail = f"[1-9][0-9]{{{d},}}"
        return f"(?:{_natural_range(a, 10 ** d - 1)}|{tail})"
    parts = []
    while a <= b:
        top = min(b, 10 ** len(str(a)) - 1)
        parts.append(_same_length(str(a), str(top)))
        a = top + 1
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _same_length(a: str, b: str) -> str:
    """Digit strings of equal length between a and b inclusive."""
    if a == b:
        return a
    n = len(a)
    if a[0] == b[0]:
        return a[0] + _same_length(a[1:], b[1:])
    if a[1:] == "0" * (n - 1) and b[1:] == "9" * (n - 1):
        return f"[{a[0]}-{b[0]}]" + (f"[0-9]{{{n - 1}}}" if n > 1 else "")
    if n == 1:
        return f"[{a}-{b}]"
    parts = [a[0] + _same_length(a[1:], "9" * (n - 1))]
    if int(b[0]) - int(a[0]) > 1:
        parts.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}][0-9]{{{n - 1}}}")
    parts.append(b[0] + _same_length("0" * (n - 1), b[1:]))
    return "(?:" + "|".join(parts) + ")"


def number_range(lo: float | None, hi: float | None) -> str:
    """Decimal numbers in [lo, hi] for integral bounds with lo >= 0 (no exponent)."""
    if lo is None and hi is None:
        return NUMBER
    for v in (lo, hi):
        if v is not None and (v != int(v)):
            raise LmnbError(f"number bound {v} is not supported; use integral minimum/maximum")
    if lo is None or lo < 0:
        raise LmnbError("number with a negative or missing minimum and a maximum is not supported; "
                        "set minimum >= 0 or use a regex")
    lo_i, hi_i = int(lo), None if hi is None else int(hi)
    frac = r"(?:\.[0-9]{1,15})?"
    if hi_i is None:
        return _natural_range(lo_i, None) + frac
    if hi_i < lo_i:
        raise LmnbError(f"number range [{lo}, {hi}] is empty; fix minimum/maximum")
    exact_top = f"{hi_i}(?:\\.0{{1,15}})?"
    if hi_i == lo_i:
        return exact_top
    return f"(?:{_natural_range(lo_i, hi_i - 1)}{frac}|{exact_top})"
