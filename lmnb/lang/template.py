"""The `%%lm` cell language, compiled to the same IR as the Python API.

    @system                       role lines switch turns (chat template of the model)
    You are terse.
    @user
    Name a colour like {{ thing }}.     {{ expr }}: evaluated in the namespace; a primitive
    @assistant                           (gen, select, ...) becomes a hole, any other
    {{ gen("c", max_tokens=8) }}         value is inserted as str(value)
    @fork 3                       a branch run 3 times from the shared prefix; consecutive
    {{ gen("alt", max_tokens=8) }}  @fork blocks run in parallel; names captured in
    @join                           several branches become lists; @join continues

Single braces are plain text. A directive line, and blank lines just before it, are not
part of the prompt. `{{ name }}` naming a value captured earlier in the same cell reads
that value (`Var`). Every error is one `TemplateError` saying "line L, column C".
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lmnb.errors import LmnbError
from lmnb.lang import ir

MAX_CLOSE_TRIES = 256  # `}}` candidates tried for one `{{` (keeps a line of many `}}` linear)
_DIRECTIVE = re.compile(r"[ \t]*@(system|user|assistant|fork|join)\b[ \t]*(.*?)[ \t]*\r?$")


class TemplateError(LmnbError):
    """A cell that cannot be compiled; `line` and `column` are 1-based in the cell."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line, self.column, self.reason = line, column, message


@dataclass(frozen=True)
class Piece:
    kind: str        # "text" | "expr" | "directive"
    value: str       # text, expression source, or directive name
    offset: int      # where it starts in the cell
    arg: str = ""    # directive argument (`@fork 3` -> "3")
    arg_offset: int = 0


@dataclass(frozen=True)
class Hole:
    """A generation hole of a compiled cell, for views and dry runs."""
    name: str | None
    kind: str        # gen | regex | json | select
    detail: str


# -- parsing -------------------------------------------------------------------------
def parse(text: str) -> list[Piece]:
    """Split a cell into text, `{{ expr }}` and directive pieces (no evaluation)."""
    pieces: list[Piece] = []
    i, n = 0, len(text)
    while i < n:
        if i == 0 or text[i - 1] == "\n":
            end = text.find("\n", i)
            end = n if end < 0 else end
            m = _DIRECTIVE.fullmatch(text, i, end)
            if m:
                _drop_blank_tail(pieces)
                pieces.append(Piece("directive", m.group(1), i, m.group(2), m.start(2)))
                i = end + 1
                continue
        j = text.find("{{", i)
        nl = text.find("\n", i)
        stop = min(x for x in (j, nl, n) if x >= 0)
        if stop == nl and (j < 0 or nl < j):
            _add_text(pieces, text[i:nl + 1], i)
            i = nl + 1
            continue
        if stop > i:
            _add_text(pieces, text[i:stop], i)
        if stop == n:
            break
        close = _closing(text, j)
        pieces.append(Piece("expr", text[j + 2:close], j))
        i = close + 2
    if pieces and pieces[-1].kind == "text" and pieces[-1].value.endswith("\n"):
        last = pieces.pop()
        _add_text(pieces, last.value[:-1], last.offset)
    return pieces


def _add_text(pieces: list[Piece], s: str, offset: int) -> None:
    if not s:
        return
    if pieces and pieces[-1].kind == "text":
        prev = pieces.pop()
        pieces.append(Piece("text", prev.value + s, prev.offset))
    else:
        pieces.append(Piece("text", s, offset))


def _drop_blank_tail(pieces: list[Piece]) -> None:
    """A directive line swallows the newline before it and blank lines above it."""
    if pieces and pieces[-1].kind == "text":
        prev = pieces.pop()
        body = prev.value.rstrip("\n")
        while body.endswith("\n") or (body and not body.strip(" \t\r\n")):
            body = body.rstrip(" \t\r").rstrip("\n")
        if body:
            pieces.append(Piece("text", body, prev.offset))


def _closing(text: str, start: int) -> int:
    """Index of the `}}` closing the `{{` at `start`: the first one after which the
    enclosed text is a valid expression (so `{"a": {"b": 1}}` inside works). Only the
    first MAX_CLOSE_TRIES candidates are tried, so a long line of `}}` stays linear."""
    k, first = start + 2, -1
    for _ in range(MAX_CLOSE_TRIES):
        k = text.find("}}", k)
        if k < 0:
            break
        if first < 0:
            first = k
        if _compiles(text[start + 2:k]):
            return k
        k += 1
    if first < 0:
        line, col = position(text, start)
        raise TemplateError("unclosed '{{' (no matching '}}')", line, col)
    return first  # evaluating it reports the syntax error at its place


def _compiles(src: str) -> bool:
    try:
        compile("(" + src.strip() + "\n)", "<cell>", "eval")
    except (SyntaxError, MemoryError, RecursionError):   # the last two: nested too deeply
        return False
    return bool(src.strip())


def position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of `offset` in `text`."""
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


# -- compiling -------------------------------------------------------------------------
def scope(namespace: Mapping | None = None, extra: Mapping | None = None) -> dict:
    """The names a cell's expressions see: lmnb's primitives, then the namespace."""
    import lmnb
    from lmnb import lang

    g = {name: getattr(lang, name) for name in lang.__all__}
    g["lm"] = lmnb
    g.update(namespace or {})
    g.update(extra or {})
    return g


class _Compiler:
    def __init__(self, text: str, names: dict, line_offset: int) -> None:
        self.text, self.names, self.line_offset = text, names, line_offset
        self.captured: set[str] = set()

    def error(self, message: str, offset: int) -> TemplateError:
        line, col = position(self.text, offset)
        return TemplateError(message, line + self.line_offset, col)

    def compile(self, pieces: Iterable[Piece]) -> ir.Seq:
        main: list = []
        cur, role, group = main, None, None   # group: open fork (branches, parent role, n, opened)
        for p in pieces:
            if p.kind == "text":
                cur.append(ir.Text(p.value))
            elif p.kind == "expr":
                cur.append(self.evaluate(p))
            elif p.value in ir.ROLES:
                if role is not None:
                    cur.append(ir.RoleEnd(role))
                cur.append(ir.RoleBegin(p.value))
                role = p.value
                if group is not None:
                    group[3] = True
            elif p.value == "fork":
                if group is None:
                    group = [[], role, 0, False]
                else:
                    self._close_branch(group, cur, role)
                cur, role = [], group[1]
                group[2], group[3] = self.fork_count(p), False
            else:  # join
                if group is None:
                    raise self.error("@join without a @fork before it", p.offset)
                self._close_branch(group, cur, role)
                main.append(ir.Fork(tuple(group[0])))
                cur, role, group = main, group[1], None
        if group is not None:   # the cell ended inside a fork: join there
            self._close_branch(group, cur, role)
            main.append(ir.Fork(tuple(group[0])))
            role = group[1]
        if role is not None:
            main.append(ir.RoleEnd(role))
        return ir.Seq(main)

    @staticmethod
    def _close_branch(group: list, body: list, role: str | None) -> None:
        if group[3] and role is not None:   # close a turn the branch opened itself
            body.append(ir.RoleEnd(role))
        group[0].extend([ir.Seq(body)] * group[2])

    def fork_count(self, p: Piece) -> int:
        if not p.arg:
            return 1
        value = self._eval(p.arg, p.arg_offset)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ir.MAX_BRANCHES:
            raise self.error(f"@fork takes a whole number of branches >= 1 (at most {ir.MAX_BRANCHES}), "
                             f"got {_short(value)}", p.arg_offset)
        return value

    def evaluate(self, p: Piece) -> ir.Expr:
        src = p.value
        start = p.offset + 2 + (len(src) - len(src.lstrip()))
        expr = src.strip()
        if not expr:
            raise self.error("empty '{{ }}'; put an expression inside", p.offset)
        if expr.isidentifier() and expr in self.captured:
            return ir.Var(expr)
        value = self._eval(expr, start)
        if isinstance(value, ir.Expr):
            self.captured.update(h.name for h in holes(value) if h.name)
            return value
        try:
            return ir.Text(str(value))
        except Exception as e:  # noqa: BLE001 - any failing __str__
            raise self.error(f"cannot insert the {type(value).__name__} value of {expr!r}: "
                             f"str() failed ({type(e).__name__}: {e})", start) from None

    def _eval(self, expr: str, start: int):
        try:
            code = compile("(" + expr + "\n)", "<cell>", "eval")
        except SyntaxError as e:
            raise self._syntax_error(e, expr, start) from None
        except (MemoryError, RecursionError):
            raise self.error(f"expression {_short(expr)} is nested too deeply; simplify it", start) from None
        try:
            return eval(code, self.names)  # the notebook's own code
        except NameError as e:
            raise self._name_error(e, expr, start) from None
        except LmnbError as e:
            raise self.error(str(e), start) from None
        except Exception as e:  # noqa: BLE001 - reported at the expression
            raise self.error(f"{type(e).__name__}: {e} (in {expr!r})", start) from None

    def _syntax_error(self, e: SyntaxError, expr: str, start: int) -> TemplateError:
        line, col = (e.lineno or 1) - 1, max((e.offset or 2) - 1, 1) - 1
        if line == 0:
            off = start + min(max(col - 1, 0), len(expr))   # the '(' we wrapped it in
        else:
            lines = expr.split("\n")
            off = start + sum(len(x) + 1 for x in lines[:min(line, len(lines))]) + col
        return self.error(f"invalid expression {expr!r}: {e.msg}", off)

    def _name_error(self, e: NameError, expr: str, start: int) -> TemplateError:
        name = getattr(e, "name", None)
        for node in ast.walk(ast.parse("(" + expr + "\n)", mode="eval")):
            if isinstance(node, ast.Name) and node.id == name:
                line = node.lineno - 1
                col = node.col_offset - (1 if line == 0 else 0)
                off = start + sum(len(x) + 1 for x in expr.split("\n")[:line]) + col
                return self.error(f"unknown name {name!r}", off)
        return self.error(f"NameError: {e} (in {expr!r})", start)


def compile_template(text: str, namespace: Mapping | None = None, extra: Mapping | None = None,
                     line_offset: int = 0) -> ir.Seq:
    """Compile a cell to IR, evaluating its `{{ }}` expressions in `namespace` (plus
    `extra`, e.g. a batch item's names). `line_offset` shifts reported lines (the
    `%%lm` line above a cell body is line 1 of the cell)."""
    if not isinstance(text, str):
        raise LmnbError(f"a template is a str, got {type(text).__name__}")
    try:
        pieces = parse(text)
    except TemplateError as e:
        raise TemplateError(e.reason, e.line + line_offset, e.column) from None
    return _Compiler(text, scope(namespace, extra), line_offset).compile(pieces)


def holes(node: ir.Expr) -> list[Hole]:
    """The gen / select holes of a program, in order (fork branches included)."""
    out: list[Hole] = []

    def walk(n) -> None:
        if isinstance(n, ir.Seq):
            for it in n.items:
                walk(it)
        elif isinstance(n, ir.Fork):
            for b in n.branches:
                walk(b)
        elif isinstance(n, ir.Select):
            out.append(Hole(n.name, "select", " | ".join(n.choices)))
        elif isinstance(n, ir.Gen):
            kind = "json" if n.json_schema else "regex" if n.regex else "gen"
            detail = n.regex if kind == "regex" else "json schema" if kind == "json" else ""
            out.append(Hole(n.name, kind, detail))
    walk(node)
    return out


def run_template(text: str, namespace: Mapping | None = None, *, backend=None, batch=None,
                 stream: bool = False, progress_bar: bool = True, line_offset: int = 0,
                 **options):
    """Compile and run a `%%lm` cell; returns the finished ProgramState (raising its
    error), or with `stream=True` the running state. `batch=[...]` runs the cell once
    per item (a dict's keys become names, anything else is `item`) together and returns
    the list of states. Keyword options (`temperature`, `max_tokens`, `seed`, `stop`,
    ...: the names gen() takes) are defaults for every hole."""
    from lmnb.lang.interpreter import PROGRAM_KEYS, run_program, run_programs
    from lmnb.runtime.sampling_params import to_runtime

    defaults = to_runtime({k: v for k, v in options.items() if k not in PROGRAM_KEYS})
    defaults.update({k: v for k, v in options.items() if k in PROGRAM_KEYS})
    if batch is None:
        prog = compile_template(text, namespace, line_offset=line_offset)
        return run_program(prog, backend, stream=stream, **defaults)
    progs = [compile_template(text, namespace, batch_names(item), line_offset) for item in batch]
    return run_programs(progs, backend, progress_bar=progress_bar, **defaults)


def _short(value) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def batch_names(item) -> dict:
    """The names one batch item adds: a dict's str keys, else the item as `item`."""
    if isinstance(item, Mapping):
        return {str(k): v for k, v in item.items()}
    return {"item": item}
