"""The two outputs of the JSON schema converter (`json_schema.py`): one regex, or a grammar.

The converter describes a schema's JSON text with five operations over opaque parts: a
terminal (`leaf`, given as a regex: a literal, a string, a number range, a punctuation
mark with its whitespace), `seq`, `alt` (alternatives; the empty part allowed), `opt` and
`rep`. `RegexOut` joins them into one regex, the full language as one lexeme. `LarkOut`
writes a Lark grammar for llguidance instead: every terminal is a lexeme of its own and
the structure between them is grammar rules, so the lexer works on small regexes while the
parser tracks where in the document it is (llguidance's own JSON compiler works the same
way; first-visit masks cost about a third of the one-regex form's). Both outputs of one
schema describe the same language: the converter alone decides it.

Terminals never match the empty string (whitespace is part of the punctuation around it),
and no terminal can swallow the start of the one after it (JSON's delimiters end every
string, number and literal), so llguidance's greedy lexer splits a document exactly where
the converter put the boundaries.
"""
from __future__ import annotations

EMPTY = ""   # the empty part, in both outputs


class RegexOut:
    """Parts are regex strings; the whole schema is one regex (full match)."""

    @staticmethod
    def leaf(regex: str) -> str:
        return regex

    @staticmethod
    def seq(*parts: str) -> str:
        return "".join(parts)

    @staticmethod
    def alt(options: list[str]) -> str:
        return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"

    @staticmethod
    def opt(part: str) -> str:
        return f"(?:{part})?" if part else EMPTY

    @staticmethod
    def rep(part: str, lo: int, hi: int | None) -> str:
        if not part:
            return EMPTY
        if lo == 0 and hi is None:
            return f"(?:{part})*"
        return f"(?:{part}){{{lo},{'' if hi is None else hi}}}"

    @staticmethod
    def size(part: str) -> int:
        return len(part)

    @staticmethod
    def finish(part: str) -> str:
        return part


class LarkOut:
    """Parts are Lark expressions; compound ones longer than `SHARE_CHARS` become named
    rules, shared wherever the same expression recurs (an array's item, written twice in
    `item (, item)*`, is one rule), so the grammar grows linearly where the regex doubles."""

    SHARE_CHARS = 80

    def __init__(self):
        self.rules: dict[str, str] = {}   # expression -> rule name

    def leaf(self, regex: str) -> str:
        return "/" + _lark_regex(regex) + "/"

    def seq(self, *parts: str) -> str:
        return self._share(" ".join(p for p in parts if p))

    def alt(self, options: list[str]) -> str:
        some = list(dict.fromkeys(o for o in options if o))
        if not some:
            return EMPTY
        if EMPTY in options:   # the empty part is an option
            return self.opt(some[0] if len(some) == 1 else "(" + " | ".join(some) + ")")
        return some[0] if len(some) == 1 else self._share("(" + " | ".join(some) + ")")

    def opt(self, part: str) -> str:
        return self._share(f"({part})?") if part else EMPTY

    def rep(self, part: str, lo: int, hi: int | None) -> str:
        if not part:
            return EMPTY
        if hi is None:
            more = f"({part})*"
            return self._share(more if lo == 0 else f"({part}){{{lo}}} {more}")
        return self._share(f"({part}){{{lo},{hi}}}")

    def size(self, part: str) -> int:
        return len(part)

    def finish(self, part: str) -> str:
        lines = [f"start: {part}"] + [f"{name}: {expr}" for expr, name in self.rules.items()]
        return "\n".join(lines) + "\n"

    def _share(self, expr: str) -> str:
        if len(expr) <= self.SHARE_CHARS:
            return expr
        name = self.rules.get(expr)
        if name is None:
            name = self.rules[expr] = f"r{len(self.rules)}"
        return name


def _lark_regex(regex: str) -> str:
    """`regex` as the body of a Lark `/.../` terminal: unescaped slashes escaped, raw
    control characters written as escapes."""
    out, escaped = [], False
    for c in regex:
        if escaped:
            out.append(f"x{ord(c):02x}" if ord(c) < 0x20 else c)
            escaped = False
        elif c == "\\":
            out.append(c)
            escaped = True
        elif c == "/":
            out.append("\\/")
        elif ord(c) < 0x20 or c == "\x7f":
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)
