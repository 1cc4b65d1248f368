"""Rewrite a Python regex into lmnb's canonical regex text, in two modes.

* `emit_regex(p)`: the same language as `re.fullmatch(p, text)` (with `\\d \\w \\s` ASCII,
  lmnb's semantics), written with explicit character ranges only, so that every engine
  that reads `(?:...)`, `[...]`, `{m,n}` and `\\xHH` reads the same language.
* `json_string_pattern(p)`: a JSON-Schema `pattern` as the *encoded* content of a JSON
  string. The pattern describes the decoded value; each character it allows is emitted
  as JSON text: raw where JSON permits it, and `\\"`, `\\\\`, `\\n`, `\\u00XX` ... for the
  quote, the backslash and control characters, which may never appear raw. So `.` or
  `[^0-9]` inside a pattern can never close the string or leave a lone backslash. Per
  JSON Schema the pattern is a search (it may match anywhere in the value) unless
  anchored with `^` / `$`; character classes are the ones both ECMA-262 and Python agree
  on (the set the `jsonschema` validator and a JavaScript validator both accept).

The tree comes from Python's own regex parser, so precedence and escapes are exactly
Python's; what is not regular (lookaround, backreferences, anchors inside) raises an
LmnbError naming the feature.
"""
from __future__ import annotations

import sys
from functools import lru_cache

from lmnb.errors import LmnbError
from lmnb.runtime.constrained.casefold import case_variants
from lmnb.runtime.constrained.regex_check import normalize_regex

if sys.version_info >= (3, 11):
    from re import _constants as C
    from re import _parser as sre
else:  # pragma: no cover
    import sre_constants as C
    import sre_parse as sre

Ranges = list[tuple[int, int]]
_ALL: Ranges = [(0, 0xD7FF), (0xE000, 0x10FFFF)]
_ASCII = {
    C.CATEGORY_DIGIT: [(48, 57)],
    C.CATEGORY_WORD: [(48, 57), (65, 90), (95, 95), (97, 122)],
    C.CATEGORY_SPACE: [(9, 13), (32, 32)],
}
_NEGATED = {C.CATEGORY_NOT_DIGIT: C.CATEGORY_DIGIT, C.CATEGORY_NOT_WORD: C.CATEGORY_WORD,
            C.CATEGORY_NOT_SPACE: C.CATEGORY_SPACE}
# JSON escapes for the characters that may not appear raw in a JSON string
_SHORT_ESCAPES = {0x22: r'\\"', 0x5C: r"\\\\", 0x08: r"\\b", 0x0C: r"\\f", 0x0A: r"\\n",
                  0x0D: r"\\r", 0x09: r"\\t"}
_ECMA_LINE_ENDS = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]
MAX_EMITTED = 200_000   # characters of emitted regex text


def emit_regex(pattern: str) -> str:
    """`pattern` (Python syntax, full match) as canonical regex text, or LmnbError."""
    normalize_regex(pattern)   # validates, with messages naming the unsupported feature
    tree = _parse(pattern)
    em = _Emitter(json=False, flags=tree.state.flags)
    out = [em.seq(_strip_anchors(b)[0]) for b in _branches(tree.data)]
    return out[0] if len(out) == 1 else "(?:" + "|".join(out) + ")"


def json_string_pattern(pattern: str, where: str = "pattern") -> str:
    """The JSON-encoded content (between the quotes) of strings `pattern` searches in."""
    if not isinstance(pattern, str):
        raise LmnbError(f"{where} must be a string, got {type(pattern).__name__}")
    try:
        normalize_regex(_without_inner_anchors(pattern))
    except LmnbError as e:
        raise LmnbError(f"{where}: {e}") from None
    tree = _parse(pattern)
    em = _Emitter(json=True, flags=tree.state.flags)
    anything = em.char_set(_ALL) + "*"
    out = []
    for branch in _branches(tree.data):
        body, start, end = _strip_anchors(branch)
        out.append(("" if start else anything) + em.group(em.seq(body)) + ("" if end else anything))
    return out[0] if len(out) == 1 else "(?:" + "|".join(out) + ")"


def _parse(pattern: str):
    try:
        return sre.parse(pattern, 0)
    except Exception as e:  # noqa: BLE001  (normalize_regex already reported real errors)
        raise LmnbError(f"invalid regex {pattern[:60]!r}: {e}; fix the pattern") from None


def _without_inner_anchors(pattern: str) -> str:
    """normalize_regex accepts ^/$ only at the very ends; branches of a JSON-Schema pattern
    may each be anchored (`^a|b$`), which `_strip_anchors` checks per branch."""
    return pattern.replace("|^", "|").replace("$|", "|")


def _branches(items) -> list[list]:
    """The top-level alternatives of a parsed pattern (one when it has no top-level `|`)."""
    items = list(items)
    if len(items) == 1 and items[0][0] is C.BRANCH:
        return [list(b) for b in items[0][1][1]]
    return [items]


def _strip_anchors(items: list) -> tuple[list, bool, bool]:
    """Drop a leading `^` and a trailing `$`; say which were there."""
    items = list(items)
    start = bool(items) and items[0] == (C.AT, C.AT_BEGINNING)
    if start:
        items = items[1:]
    end = bool(items) and items[-1][0] is C.AT and items[-1][1] in (C.AT_END, C.AT_END_STRING)
    if end:
        items = items[:-1]
    return items, start, end


class _Emitter:
    def __init__(self, json: bool, flags: int):
        self.json = json
        self.ignore_case = bool(flags & C.SRE_FLAG_IGNORECASE)
        self.dotall = bool(flags & C.SRE_FLAG_DOTALL)
        self.size = 0

    def seq(self, items: list) -> str:
        parts, run = [], []
        for op, av in items:
            if op is C.LITERAL and not self.ignore_case:
                run.append(av)
                continue
            if run:
                parts.append(self.literal_run(run))
                run = []
            parts.append(self.node(op, av))
        if run:
            parts.append(self.literal_run(run))
        text = "".join(parts)
        self.size += len(text)
        if self.size > MAX_EMITTED:
            raise LmnbError("regex is too large for constrained decoding; simplify it")
        return text

    @staticmethod
    def group(text: str) -> str:
        return f"(?:{text})" if text else ""

    def node(self, op, av) -> str:
        if op is C.LITERAL:
            return self.chars([(av, av)])
        if op is C.NOT_LITERAL:
            return self.chars([(av, av)], negated=True)
        if op is C.ANY:
            if self.dotall:
                return self.char_set(_ALL)
            return self.char_set(_subtract(_ALL, _ECMA_LINE_ENDS if self.json else [(10, 10)]))
        if op is C.IN:
            return self.char_class(av)
        if op is C.BRANCH:
            return "(?:" + "|".join(self.seq(b) for b in av[1]) + ")"
        if op is C.SUBPATTERN:
            return self.subpattern(av)
        if op in (C.MAX_REPEAT, C.MIN_REPEAT):
            return self.repeat(*av)
        what = {C.AT: "anchor inside the pattern", C.GROUPREF: "backreference",
                C.ASSERT: "lookaround", C.ASSERT_NOT: "negative lookaround"}.get(op, str(op).lower())
        raise LmnbError(f"regex feature {what} is not supported in constrained decoding; "
                        "rewrite the pattern without it")

    def subpattern(self, av) -> str:
        _, add, remove, items = av
        saved = (self.ignore_case, self.dotall)
        if add & C.SRE_FLAG_IGNORECASE:
            self.ignore_case = True
        if remove & C.SRE_FLAG_IGNORECASE:
            self.ignore_case = False
        if add & C.SRE_FLAG_DOTALL:
            self.dotall = True
        if remove & C.SRE_FLAG_DOTALL:
            self.dotall = False
        try:
            return self.group(self.seq(items)) or "(?:)"
        finally:
            self.ignore_case, self.dotall = saved

    def repeat(self, lo: int, hi, items) -> str:
        body = self.seq(items)
        if not body:
            return ""
        unit = body if _is_atom(body) else f"(?:{body})"
        if hi is C.MAXREPEAT:
            return unit + ("*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}")
        if (lo, hi) == (0, 1):
            return unit + "?"
        return unit + (f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}")

    def char_class(self, items) -> str:
        negated = bool(items) and items[0][0] is C.NEGATE
        ranges: Ranges = []
        for op, av in items[1:] if negated else items:
            if op is C.LITERAL:
                ranges.append((av, av))
            elif op is C.RANGE:
                ranges.append(av)
            elif op is C.CATEGORY:
                ranges += self.category(av, widest=negated)
            else:
                raise LmnbError(f"regex class item {op} is not supported; rewrite the class")
        return self.chars(ranges, negated)

    def category(self, cat, widest: bool = False) -> Ranges:
        """The characters of `\\d \\w \\s \\D \\W \\S`. As JSON-string content a class
        must hold only what both dialects (ASCII ECMA-262, Unicode Python) agree on: the
        narrower reading, except inside a negated class (`widest`), which takes the wider
        one so that its complement is the narrower."""
        if cat in _ASCII:
            return _unicode_category(cat) if self.json and widest else _ASCII[cat]
        if cat in _NEGATED:
            base = _NEGATED[cat]
            narrow = self.json and not widest
            return _subtract(_ALL, _unicode_category(base) if narrow else _ASCII[base])
        raise LmnbError(f"regex category {cat} is not supported; use an explicit class")

    def chars(self, ranges: Ranges, negated: bool = False) -> str:
        if self.ignore_case:
            ranges = _case_expand(ranges)
        ranges = _normalize(ranges)
        if negated:
            ranges = _subtract(_ALL, ranges)
        return self.char_set(ranges)

    def char_set(self, ranges: Ranges) -> str:
        ranges = _normalize(ranges)
        if not ranges:
            raise LmnbError("a character class of the regex matches no character; fix the pattern")
        if not self.json:
            return _class_text(ranges)
        raw = _subtract(ranges, [(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])
        special = [cp for lo, hi in ranges for cp in range(lo, min(hi, 0x5C) + 1)
                   if cp < 0x20 or cp in (0x22, 0x5C)]
        options = ([_class_text(raw)] if raw else []) + ([_escapes(special)] if special else [])
        return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"

    def literal_run(self, cps: list[int]) -> str:
        if not self.json:
            return "".join(_char_text(cp) for cp in cps)
        return "".join(_json_escape(cp) if cp < 0x20 or cp in (0x22, 0x5C) else _char_text(cp)
                       for cp in cps)


def _is_atom(text: str) -> bool:
    if len(text) == 1 or (text.startswith("\\x") and len(text) == 4):
        return True
    return text.startswith("[") and text.endswith("]") and text.count("]") == 1


def _escapes(cps: list[int]) -> str:
    """One group matching the JSON escapes of the characters `cps` (quote, backslash,
    controls): short forms where JSON has them, `\\u00XX` for every control character."""
    short = [_SHORT_ESCAPES[cp][2:] for cp in cps if cp in _SHORT_ESCAPES]
    controls = [cp for cp in cps if cp < 0x20]
    if len(controls) == 32:
        short.append("u00[01][0-9a-fA-F]")
    else:
        short += [f"u00{cp:02x}" for cp in controls]
    return "\\\\(?:" + "|".join(short) + ")"


def _json_escape(cp: int) -> str:
    return _SHORT_ESCAPES.get(cp) or f"\\\\u00{cp:02x}"


def regex_literal(text: str) -> str:
    """`text` as regex text every engine reads literally (ASCII punctuation as `\\xHH`)."""
    return "".join(_char_text(ord(c)) for c in text)


def _char_text(cp: int) -> str:
    c = chr(cp)
    if c.isascii() and c.isalnum():
        return c
    return f"\\x{cp:02x}" if cp < 0x100 else c


def _class_text(ranges: Ranges) -> str:
    if sum(hi - lo + 1 for lo, hi in ranges) > 0x80000:
        # most of Unicode: write the complement (engines that expand ranges into sets of
        # characters, like interegular, take seconds over a million code points)
        rest = _subtract(_ALL, ranges)
        if not rest:
            return "(?s:.)"
        return "[^" + "".join(_char_text(lo) if lo == hi else f"{_char_text(lo)}-{_char_text(hi)}"
                              for lo, hi in rest) + "]"
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _char_text(ranges[0][0])
    body = "".join(_char_text(lo) if lo == hi else f"{_char_text(lo)}-{_char_text(hi)}"
                   for lo, hi in ranges)
    return f"[{body}]"


def _normalize(ranges: Ranges) -> Ranges:
    chars: Ranges = []
    for lo, hi in sorted(ranges):
        if chars and lo <= chars[-1][1] + 1:
            chars[-1] = (chars[-1][0], max(chars[-1][1], hi))
        else:
            chars.append((lo, hi))
    return _subtract_raw(chars, [(0xD800, 0xDFFF)])


def _subtract(a: Ranges, b: Ranges) -> Ranges:
    return _subtract_raw(_normalize_raw(a), _normalize_raw(b))


def _normalize_raw(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _subtract_raw(a: Ranges, b: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in a:
        for blo, bhi in b:
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append((lo, blo - 1))
            lo = bhi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return out


def _case_expand(ranges: Ranges) -> Ranges:
    size = sum(hi - lo + 1 for lo, hi in ranges)
    if size > 70_000:
        raise LmnbError("case-insensitive classes this large are not supported; narrow the class")
    chars = frozenset(chr(cp) for lo, hi in ranges for cp in range(lo, hi + 1)
                      if not 0xD800 <= cp <= 0xDFFF)
    return [(ord(c), ord(c)) for c in case_variants(chars)]


@lru_cache(maxsize=4)
def _unicode_category(cat) -> Ranges:
    """Code points Python's (Unicode) or ECMA's class `cat` may match: excluded from its
    negation so that `\\D`, `\\W`, `\\S` only produce characters both dialects agree on."""
    import re

    test = re.compile({C.CATEGORY_DIGIT: r"\d", C.CATEGORY_WORD: r"\w",
                       C.CATEGORY_SPACE: r"\s"}[cat]).match
    chars = [(cp, cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and test(chr(cp))]
    if cat is C.CATEGORY_SPACE:   # ECMA's \s also has U+FEFF and U+00A0 (Python has the latter)
        chars += [(0xFEFF, 0xFEFF)]
    return _normalize(chars + _ASCII[cat])

