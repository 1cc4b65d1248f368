"""Hypothesis strategies for `%%lm` cells.

`programs()` builds a valid cell together with the IR the Python API gives for it (roles,
text with single braces and unicode, gen/select holes with arguments that hold `}}`,
quotes and newlines, namespace values, `@fork N` groups and `@join`). `cells()` builds
anything: a mixture of text, directives with odd arguments, holes with random argument
values, unbalanced braces and very long lines.
"""
from __future__ import annotations

import re

from hypothesis import strategies as st

import lmnb as lm
from lmnb.lang import ir

ROLES = ("system", "user", "assistant")
NAMESPACE = {"n": 42, "s": "a {{ not a hole }}", "items": [1, "}}"]}
_DIRECTIVE = re.compile(r"[ \t]*@(system|user|assistant|fork|join)\b")

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")
_piece = st.text(_chars, min_size=1, max_size=12).filter(
    lambda t: "{{" not in t and "}}" not in t and not t.startswith("}") and not t.endswith("{"))
_names = st.sampled_from(["a", "b2", "answer", "名前"])
_stops = st.one_of(st.none(), st.sampled_from(["\n", "}}", "'", '"', "{{", "。"]),
                   st.lists(st.text(_chars, min_size=1, max_size=3), min_size=1, max_size=2))


@st.composite
def gen_hole(draw) -> tuple[str, ir.Expr]:
    name = draw(_names)
    kw = {"max_tokens": draw(st.none() | st.integers(1, 64)), "stop": draw(_stops),
          "temperature": draw(st.none() | st.sampled_from([0, 0.5, 1.0]))}
    kw = {k: v for k, v in kw.items() if v is not None}
    if draw(st.booleans()):
        kw["regex"] = draw(st.sampled_from([r"\d+", r"(yes|no)", r"[a-z]{1,4}\}\}"]))
    src = f"gen({name!r}" + "".join(f", {k}={v!r}" for k, v in kw.items()) + ")"
    return src, lm.gen(name, **kw)


@st.composite
def select_hole(draw) -> tuple[str, ir.Expr]:
    name = draw(_names)
    choices = draw(st.lists(st.text(_chars, min_size=1, max_size=4), min_size=1, max_size=3))
    return f"select({name!r}, {choices!r})", lm.select(name, choices)


_value_hole = st.sampled_from([(k, ir.Text(str(v))) for k, v in NAMESPACE.items()])
holes = st.one_of(gen_hole(), select_hole(), _value_hole)


@st.composite
def line(draw) -> tuple[str, list]:
    """One non-blank, non-directive line and its nodes."""
    parts = draw(st.lists(st.one_of(_piece.map(lambda t: (t, ir.Text(t))),
                                    holes.map(lambda h: ("{{ " + h[0] + " }}", h[1]))),
                          min_size=1, max_size=4))
    text = "".join(p[0] for p in parts)
    if not text.strip() or _DIRECTIVE.match(text):
        parts = [("x", ir.Text("x"))] + parts
    return "".join(p[0] for p in parts), [p[1] for p in parts]


@st.composite
def body(draw) -> tuple[list[str], list]:
    lines = draw(st.lists(line(), min_size=1, max_size=3))
    nodes: list = []
    for i, (_, ns) in enumerate(lines):
        nodes += ([ir.Text("\n")] if i else []) + ns
    return [t for t, _ in lines], nodes


@st.composite
def fork_group(draw) -> tuple[list[str], ir.Fork]:
    out, branches = [], []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 3))
        lines, nodes = draw(body())
        out += ["@fork" if n == 1 and draw(st.booleans()) else f"@fork {n}", *lines]
        branches += [ir.Seq(nodes)] * n
    return out + ["@join"], ir.Fork(tuple(branches))


@st.composite
def programs(draw, roles: bool = True) -> tuple[str, ir.Seq]:
    """(cell, the IR of the same program written with the Python API). With
    roles=False: raw completion text that starts with a prompt, then holes and forks."""
    if not roles:
        lines, nodes = draw(body())
        fork_lines, fork = draw(fork_group())
        return "\n".join(["Q:", *lines, *fork_lines]), ir.Seq([ir.Text("Q:\n"), *nodes, fork])
    if not draw(st.booleans()):
        lines, nodes = draw(body())
        return "\n".join(lines), ir.Seq(nodes)
    out, nodes = [], []
    for role in draw(st.lists(st.sampled_from(ROLES), min_size=1, max_size=3)):
        lines, inner = draw(body())
        out += [f"@{role}", *lines]
        if draw(st.booleans()):
            fork_lines, fork = draw(fork_group())
            after_lines, after = draw(body())
            out += fork_lines + after_lines
            inner = inner + [fork] + after
        nodes.append(ir.Seq([ir.RoleBegin(role), *inner, ir.RoleEnd(role)]))
    return "\n".join(out), ir.Seq(nodes)


# -- anything -----------------------------------------------------------------------
_ARG_VALUES = ["1", "-1", "0", "10**30", "1.5", "float('nan')", "float('inf')", "True", "None",
               "'x'", "''", "'}}'", "'\\n'", "[]", "['a', '']", "{}", "{'type': 'string'}", "b'x'",
               "object()", "int", "(", "lambda: 1", "n", "s", "undefined_name", "'(' * 3"]
_ARG_NAMES = ["max_tokens", "stop", "temperature", "regex", "json_schema", "dtype", "choices",
              "top_k", "seed", "method", "bogus"]
_CALLS = ["gen", "select", "gen_int", "gen_string", "lm.gen", "user", "fork", "undefined"]


@st.composite
def random_expr(draw) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=20))
    args = draw(st.lists(st.sampled_from(_ARG_VALUES), max_size=2))
    kwargs = draw(st.lists(st.tuples(st.sampled_from(_ARG_NAMES), st.sampled_from(_ARG_VALUES)), max_size=3))
    call = draw(st.sampled_from(_CALLS))
    return f"{call}(" + ", ".join(args + [f"{k}={v}" for k, v in kwargs]) + ")"


_DIRECTIVES = ["@system", "@user", "@assistant", "@fork", "@join", "@fork 2", "@fork 0", "@fork -1",
               "@fork 10**9", "@fork x", "@fork 'a'", "@fork 1.5", "  @user  ", "@users", "@fork 2 3",
               "@fork (", "@join 5", "@fork n", "@assistant extra", "\t@fork\t3"]
_BROKEN = ["{{", "}}", "{{ gen('x'", "{{{ 1 }}}", "{{ {1: 2}} }}", "{{}}", "{ {{ n }} }", "{{ '}}' }}",
           "{{ n }}}", "{{ # }}", "{{ \\ }}", "{{ ''' }}"]

any_line = st.one_of(
    st.text(max_size=30),
    st.sampled_from(_DIRECTIVES),
    st.sampled_from(_BROKEN),
    st.tuples(st.text(max_size=5), random_expr(), st.text(max_size=5)).map(
        lambda t: f"{t[0]}{{{{ {t[1]} }}}}{t[2]}"),
    st.tuples(st.text(min_size=1, max_size=3), st.integers(100, 4000)).map(lambda t: t[0] * t[1]),
)
cells = st.tuples(st.lists(any_line, max_size=8), st.sampled_from(["\n", "\r\n"])).map(
    lambda t: t[1].join(t[0]))
