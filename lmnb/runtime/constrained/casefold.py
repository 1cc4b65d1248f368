"""Python's case-insensitive matching (`(?i)`) as sets of characters.

`re` (str patterns, Unicode) lets `x` match `c` when their simple lowercase forms are
equal, or when they are one of the extra pairs Unicode folds together (`s`/`ſ`, `k`/`K`
Kelvin sign, `µ`/`μ`, ...). Expanding a class to every such variant before it becomes
automaton positions gives exactly `re`'s verdicts, for plain and negated classes alike.
"""
from __future__ import annotations

import _sre  # the `re` engine's own simple lowercase mapping (CPython)
from functools import lru_cache

try:  # Python >= 3.11
    from re._casefix import _EXTRA_CASES
except ImportError:  # Python 3.10 keeps the same table in sre_compile
    from sre_compile import _ignorecase_fixes as _EXTRA_CASES  # type: ignore[no-redef]


@lru_cache(maxsize=1)
def _uppers_of() -> dict[int, tuple[int, ...]]:
    """lowercase code point -> the other code points that lowercase to it (built once, ~0.3 s)."""
    out: dict[int, list[int]] = {}
    for cp in range(0x110000):
        lo = _sre.unicode_tolower(cp)
        if lo != cp:
            out.setdefault(lo, []).append(cp)
    return {k: tuple(v) for k, v in out.items()}


def case_variants(chars: frozenset[str]) -> frozenset[str]:
    """`chars` plus every character `re.IGNORECASE` treats as equal to one of them."""
    uppers, out = _uppers_of(), set(chars)
    for c in chars:
        lo = _sre.unicode_tolower(ord(c))
        for key in (lo, *_EXTRA_CASES.get(lo, ())):
            out.add(chr(key))
            out.update(map(chr, uppers.get(key, ())))
    return frozenset(out)
