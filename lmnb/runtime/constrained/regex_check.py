"""Validate a user regex for constrained decoding and normalise it for interegular.

Constrained decoding needs a pure regular language. Features of Python's `re`
that are not regular (or that interegular does not model) are rejected here with
an `LmnbError` naming the feature and its position in the user's pattern, before
any automaton is built. The scan also rewrites a few spellings interegular does
not read (`\\uXXXX`, `\\N{...}`, literal `{`, comments) and strips a leading `^`
and trailing `$`, which are implied: the whole output must match.
"""
from __future__ import annotations

import re
import unicodedata

from lmnb.errors import LmnbError

_GROUP_EXTENSIONS = (  # longest first
    ("(?<=", "lookbehind (?<=...)"),
    ("(?<!", "negative lookbehind (?<!...)"),
    ("(?P=", "named backreference (?P=...)"),
    ("(?=", "lookahead (?=...)"),
    ("(?!", "negative lookahead (?!...)"),
    ("(?>", "atomic group (?>...)"),
    ("(?(", "conditional group (?(...)...)"),
)
_ESCAPES = {
    "b": "word boundary \\b",
    "B": "non-boundary \\B",
    "A": "anchor \\A",
    "Z": "anchor \\Z",
}
_QUANT = re.compile(r"\{(\d*)(?:,(\d*))?\}")
_FLAGS = re.compile(r"\(\?([aiLmsux]+)(?:-[imsx]+)?[:)]|\(\?-[imsx]+:")
_HEX = {"u": 4, "U": 8}


def _unsupported(pattern: str, pos: int, feature: str) -> LmnbError:
    return LmnbError(
        f"regex feature {feature} at position {pos} of {_shown(pattern)} is not supported "
        "in constrained decoding; rewrite the pattern without it"
    )


def _literal(ch: str) -> str:
    """A code point as interegular-readable pattern text."""
    if ord(ch) < 0x100:
        return f"\\x{ord(ch):02x}"
    return ch  # non-Latin-1 characters are never metacharacters


def normalize_regex(pattern: str) -> str:
    """Return `pattern` rewritten for interegular, or raise LmnbError on an unsupported feature."""
    if not isinstance(pattern, str):
        raise LmnbError(f"a regex is a str, got {type(pattern).__name__}")
    try:
        re.compile(pattern)
    except re.error as e:
        pos = f" at position {e.pos}" if e.pos is not None else ""
        raise LmnbError(f"invalid regex {_shown(pattern)}{pos}: {e.msg}; fix the pattern") from None
    except (RecursionError, OverflowError, MemoryError):
        raise LmnbError(f"regex {_shown(pattern)} is nested too deeply or too large; simplify it") from None
    return _Scanner(pattern).run()


def _shown(pattern: str) -> str:
    return repr(pattern if len(pattern) <= 60 else pattern[:57] + "...")


class _Scanner:
    def __init__(self, pattern: str):
        self.p = pattern
        self.out: list[str] = []
        self.in_class = False
        self.class_start = -1

    def run(self) -> str:
        i, p = 0, self.p
        while i < len(p):
            if p[i] == "\\":
                i = self._escape(i)
            elif self.in_class:
                if p[i] == "]" and i > self.class_start:
                    self.in_class = False
                self.out.append("\\]" if p[i] == "]" and self.in_class else p[i])
                i += 1
            else:
                i = self._outside(i)
        return "".join(self.out)

    def _outside(self, i: int) -> int:
        p, c = self.p, self.p[i]
        if c == "[":
            self.in_class = True
            j = i + 1 + (p.startswith("^", i + 1))
            self.class_start = j  # a "]" right after "[" or "[^" is literal
            self.out.append(p[i:j])
            return j
        if c == "(" and p.startswith("(?", i):
            return self._group(i)
        if c in "*+?":
            return self._after_quantifier(i, i + 1)
        if c == "{":
            m = _QUANT.match(p, i)
            if m and (m.group(1) or m.group(2)):
                return self._after_quantifier(i, m.end())
            self.out.append("\\{")
            return i + 1
        if c == "^":
            if i != 0:
                raise _unsupported(p, i, "anchor ^ (allowed only at the start)")
            return i + 1
        if c == "$":
            if i != len(p) - 1:
                raise _unsupported(p, i, "anchor $ (allowed only at the end)")
            return i + 1
        self.out.append(c)
        return i + 1

    def _after_quantifier(self, start: int, end: int) -> int:
        p = self.p
        if end < len(p) and p[end] == "+":
            raise _unsupported(p, start, f"possessive quantifier {p[start:end + 1]}")
        if end < len(p) and p[end] == "?":
            end += 1  # lazy: same language
        self.out.append(p[start:end])
        return end

    def _group(self, i: int) -> int:
        p = self.p
        for prefix, name in _GROUP_EXTENSIONS:
            if p.startswith(prefix, i):
                raise _unsupported(p, i, name)
        if p.startswith("(?#", i):
            return p.index(")", i) + 1  # comment: drop it
        m = _FLAGS.match(p, i)
        flags = (m.group(1) or "") if m else ""
        if set(flags) - set("ims"):
            bad = min(set(flags) - set("ims"))
            why = " (\\d, \\w and \\s are ASCII in constrained decoding)" if bad == "u" else ""
            raise _unsupported(p, i, f"inline flag (?{bad}){why}")
        self.out.append("(?")
        return i + 2

    def _escape(self, i: int) -> int:
        p = self.p
        nxt = p[i + 1]
        if nxt in _HEX:
            n = _HEX[nxt]
            self.out.append(_literal(chr(int(p[i + 2:i + 2 + n], 16))))
            return i + 2 + n
        if nxt == "N":
            end = p.index("}", i)
            self.out.append(_literal(unicodedata.lookup(p[i + 3:end])))
            return end + 1
        octal = _null_escape(p, i)
        if octal:
            self.out.append(_literal(chr(int(p[i + 1:octal], 8))))
            return octal
        if not self.in_class:
            if nxt in _ESCAPES:
                raise _unsupported(p, i, _ESCAPES[nxt])
            if nxt in "123456789" and not _is_octal_escape(p, i):
                raise _unsupported(p, i, f"backreference \\{nxt}")
        self.out.append(p[i:i + 2])
        return i + 2


def _is_octal_escape(p: str, i: int) -> bool:
    """Python reads \\NNN (three octal digits) as a character, \\N or \\NN as a group reference."""
    return len(p) >= i + 4 and all(c in "01234567" for c in p[i + 1:i + 4])


def _null_escape(p: str, i: int) -> int:
    """End of a \\0, \\0N or \\0NN escape at `i` (a character to Python; interegular
    rejects it), or 0."""
    if p[i + 1] != "0":
        return 0
    end = i + 2
    while end < min(len(p), i + 4) and p[end] in "01234567":
        end += 1
    return end
