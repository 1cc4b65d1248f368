"""Regexes for JSON numbers and integers within bounds of any sign, inclusive or
exclusive, integral or fractional, and for integer `multipleOf`.

Bounded numbers are written without an exponent and with at most `FRACTION_DIGITS`
decimals (a subset of JSON's numbers: every match is in range, and every decimal in range
with that many digits matches). Bounds are read exactly (`Decimal(repr(x))`), so
`maximum: 0.1` means 0.1 and not the binary double below it. An exclusive bound becomes
an inclusive one a unit of the last decimal away. Negative values are the sign and a
magnitude range; `-0` is never produced.
"""
from __future__ import annotations

from decimal import Decimal

from lmnb.errors import LmnbError
from lmnb.runtime.constrained.json_terminals import NUMBER, _natural_range, integer_range

FRACTION_DIGITS = 15
MAX_ENUMERATED = 4096   # multiples of `multipleOf` listed one by one within bounds


def _dec(v) -> Decimal:
    return Decimal(repr(v)) if isinstance(v, float) else Decimal(v)


def number_range(lo, hi, lo_excl: bool = False, hi_excl: bool = False) -> str:
    """Decimal numbers x with lo <(=) x <(=) hi (None: unbounded on that side)."""
    if lo is None and hi is None:
        return NUMBER
    step = Decimal(1).scaleb(-FRACTION_DIGITS)
    a = None if lo is None else _dec(lo) + (step if lo_excl else 0)
    b = None if hi is None else _dec(hi) - (step if hi_excl else 0)
    for v in (a, b):
        if v is not None and -v.as_tuple().exponent > FRACTION_DIGITS:
            raise LmnbError(f"number bound {v} has more than {FRACTION_DIGITS} decimals; round it")
    if a is not None and b is not None and a > b:
        raise LmnbError(f"number range [{lo}, {hi}] is empty; fix minimum/maximum")
    parts = []
    if b is None or b >= 0:   # the non-negative part
        parts.append(_magnitude(max(a, Decimal(0)) if a is not None else Decimal(0), b))
    if a is None or a < 0:    # negative part: "-" and a magnitude in [max(0, -b), -a], above 0
        m_lo = -b if b is not None and b < 0 else step
        parts.append("-" + _magnitude(max(m_lo, step), None if a is None else -a))
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _split(v: Decimal) -> tuple[int, str]:
    """Integer part and the fraction digits (padded to FRACTION_DIGITS) of v >= 0."""
    text = f"{v:.{FRACTION_DIGITS}f}"
    whole, _, frac = text.partition(".")
    return int(whole), frac


def _magnitude(a: Decimal, b: Decimal | None) -> str:
    """Non-negative decimals in [a, b] (b None: unbounded)."""
    ia, fa = _split(a)
    any_frac = rf"(?:\.[0-9]{{1,{FRACTION_DIGITS}}})?"
    if b is None:
        options = [_int_text(ia) + _frac_at_least(fa)]
        options.append(_natural_range(ia + 1, None) + any_frac)
        return "(?:" + "|".join(options) + ")"
    ib, fb = _split(b)
    if ia == ib:
        return _int_text(ia) + _frac_between(fa, fb)
    options = [_int_text(ia) + _frac_at_least(fa)]
    if ib - ia > 1:
        options.append(_natural_range(ia + 1, ib - 1) + any_frac)
    options.append(_int_text(ib) + _frac_at_most(fb))
    return "(?:" + "|".join(options) + ")"


def _int_text(i: int) -> str:
    return str(i)


def _frac_at_least(f: str) -> str:
    """An optional fraction `.ddd` (at most FRACTION_DIGITS digits) whose value is >= 0.f."""
    if not f.strip("0"):
        return rf"(?:\.[0-9]{{1,{FRACTION_DIGITS}}})?"
    return r"\." + _digits_ge(f, FRACTION_DIGITS)


def _frac_at_most(f: str) -> str:
    """An optional fraction whose value is <= 0.f."""
    return rf"(?:\.{_digits_le(f, FRACTION_DIGITS)})?"


def _frac_between(fa: str, fb: str) -> str:
    """An optional fraction with 0.fa <= value <= 0.fb (fa <= fb)."""
    if not fa.strip("0"):
        return _frac_at_most(fb)
    return r"\." + _digits_between(fa, fb, FRACTION_DIGITS)


def _any(n: int) -> str:
    """0..n more digits."""
    return f"[0-9]{{0,{n}}}" if n > 0 else ""


def _digits_ge(f: str, room: int) -> str:
    """1..room digits d with 0.d >= 0.f (f not all zeros)."""
    f = f.rstrip("0")
    head, rest = int(f[0]), f[1:]
    options = []
    if head < 9:
        options.append((f"[{head + 1}-9]" if head < 8 else "9") + _any(room - 1))
    if rest:
        options.append(f"{head}{_digits_ge(rest, room - 1)}")
    else:
        options.append(f"{head}{_any(room - 1)}")
    return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"


def _digits_le(f: str, room: int) -> str:
    """1..room digits d with 0.d <= 0.f."""
    f = f.rstrip("0")
    if not f:
        return f"0{{1,{room}}}"
    head, rest = int(f[0]), f[1:]
    options = []
    if head > 0:
        options.append((f"[0-{head - 1}]" if head > 1 else "0") + _any(room - 1))
    tail = _digits_le(rest, room - 1) if room > 1 else ""
    options.append(f"{head}(?:{tail})?" if tail else f"{head}")
    return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"


def _digits_between(fa: str, fb: str, room: int) -> str:
    """1..room digits d with 0.fa <= 0.d <= 0.fb (fa not all zeros, fa <= fb)."""
    fa, fb = fa.ljust(room, "0"), fb.ljust(room, "0")
    if fa[0] == fb[0]:
        head = fa[0]
        ra, rb = fa[1:], fb[1:]
        if not ra.strip("0"):
            return f"{head}(?:{_digits_le(rb, room - 1)})?" if room > 1 else head
        return f"{head}{_digits_between(ra, rb, room - 1)}"
    a, b = int(fa[0]), int(fb[0])
    ra, rb = fa[1:], fb[1:]
    options = [f"{a}{_digits_ge(ra, room - 1)}" if ra.strip("0") else f"{a}{_any(room - 1)}"]
    if b - a > 1:
        options.append(f"[{a + 1}-{b - 1}]{_any(room - 1)}")
    options.append(f"{b}(?:{_digits_le(rb, room - 1)})?" if room > 1 else f"{b}")
    return "(?:" + "|".join(options) + ")"


def integer_multiple(k, lo: int | None, hi: int | None) -> str:
    """Integers in [lo, hi] divisible by k (an integer >= 1)."""
    if isinstance(k, float):
        if not k.is_integer():
            raise LmnbError(f"multipleOf {k} on an integer is not supported; use a whole number")
        k = int(k)
    if k <= 0:
        raise LmnbError(f"multipleOf must be > 0, got {k}; fix the schema")
    if k == 1:
        return integer_range(lo, hi)
    if lo is not None and hi is not None:
        first, last = -(-lo // k), hi // k
        if last < first:
            raise LmnbError(f"no multiple of {k} lies in [{lo}, {hi}]; fix the schema")
        if last - first + 1 <= MAX_ENUMERATED:
            return _digit_trie([str(q * k) for q in range(first, last + 1)])
    m = next((m for m in range(1, 7) if 10 ** m % k == 0), None)
    if m is None or (lo is not None and lo > 0) or (hi is not None and hi < 0) or \
            (lo is not None and hi is not None):
        raise LmnbError(f"multipleOf {k} with these bounds is not supported; bound the range to "
                        f"at most {MAX_ENUMERATED} multiples, or use a multipleOf that divides "
                        "a power of ten")
    small = [str(q) for q in range(0, 10 ** m, k)]
    suffixes = [s.zfill(m) for s in small]
    below = [s for s in small if s != "0"]   # multiples under 10^m, then longer ones
    pos = "(?:" + "|".join(([_digit_trie(below)] if below else [])
                           + ["[1-9][0-9]*" + _digit_trie(suffixes)]) + ")"
    parts = ["0"]
    if hi is None or hi > 0:
        parts.append(pos)
    if lo is None or lo < 0:
        parts.append("-" + pos)
    return "(?:" + "|".join(parts) + ")"


def _digit_trie(words: list[str]) -> str:
    """A compact alternation of digit strings (shared prefixes factored)."""
    tree: dict = {}
    for w in words:
        node = tree
        for c in w:
            node = node.setdefault(c, {})
        node[""] = {}

    def emit(node: dict) -> str:
        options = [c + emit(sub) for c, sub in node.items() if c]
        if not options:
            return ""
        body = options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(tree)

