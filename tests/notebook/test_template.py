"""The cell language compiles to the same IR as the Python API (no model needed)."""
from __future__ import annotations

import pytest

import lmnb as lm
from lmnb.lang import ir
from lmnb.lang.template import TemplateError, compile_template, holes, parse


def shape(node) -> list:
    """A comparable form of IR (the nodes compare by identity)."""
    if isinstance(node, ir.Seq):
        return [shape(x) for x in node.items]
    if isinstance(node, ir.Fork):
        return ["fork", [shape(b) for b in node.branches]]
    if isinstance(node, ir.Text):
        return ["text", node.value]
    return [type(node).__name__, repr(node) if isinstance(node, ir.Gen) else getattr(node, "role", None)
            or getattr(node, "choices", None) or getattr(node, "name", None)]


def flat(node) -> list:
    """Adjacent texts merged, so 'a' + 'b' and 'ab' compare equal."""
    out: list = []
    for x in shape(node) if isinstance(node, ir.Seq) else [shape(node)]:
        if out and x[0] == "text" and out[-1][0] == "text":
            out[-1] = ["text", out[-1][1] + x[1]]
        else:
            out.append(x)
    return out


def test_roles_and_holes_match_the_python_api():
    cell = ('@system\nYou are terse.\n@user\nName a {{ thing }}.\n\n@assistant\n'
            'It is {{ gen("c", max_tokens=8, stop="\\n") }}; {{ select("ok", ["yes", "no"]) }}')
    got = compile_template(cell, {"thing": "colour"})
    want = ir.Seq([lm.system("You are terse."), lm.user("Name a colour."),
                   lm.assistant("It is " + lm.gen("c", max_tokens=8, stop="\n") + "; "
                                + lm.select("ok", ["yes", "no"]))])
    assert flat(got) == flat(want)


def test_raw_text_single_braces_and_values():
    got = compile_template('JSON {"a": {"b": 1}} and {{ n * 2 }} {{ items }}\n{{ gen("x", json_schema={"type": "object", '
                           '"properties": {"a": {"type": "integer"}}}) }}\n', {"n": 21, "items": [1, 2]})
    assert flat(got)[0] == ["text", 'JSON {"a": {"b": 1}} and 42 [1, 2]\n']
    assert isinstance(got.items[-1], ir.Gen) and got.items[-1].json_schema
    assert [h.kind for h in holes(got)] == ["json"]


def test_fork_branches_join_and_captured_names():
    cell = ('Q: {{ gen("q", max_tokens=4) }}\n@fork 2\nA: {{ gen("a", max_tokens=3) }}\n'
            '@fork\nB: {{ q }}{{ gen("b", max_tokens=3) }}\n@join\nEnd: {{ q }}')
    got = compile_template(cell, {})
    fork = next(x for x in got.items if isinstance(x, ir.Fork))
    assert len(fork.branches) == 3
    assert flat(fork.branches[0]) == flat(fork.branches[1]) != flat(fork.branches[2])
    assert any(isinstance(x, ir.Var) and x.name == "q" for x in fork.branches[2].items)
    assert isinstance(got.items[-1], ir.Var)
    # a fork at the end of the cell joins there; roles opened in a branch are closed in it
    got = compile_template("@user\nHi\n@fork 2\n@assistant\n{{ gen('x', max_tokens=2) }}", {})
    branch = got.items[-2].branches[0]
    assert isinstance(branch.items[0], ir.RoleEnd) and isinstance(branch.items[-1], ir.RoleEnd)
    assert isinstance(got.items[-2], ir.Fork) and isinstance(got.items[-1], ir.RoleEnd)   # parent's turn


def test_directive_lines_and_blank_lines():
    pieces = parse("a\n\n\n@user\nb\n  @fork 2  \nc\n@someone else\n")
    assert [(p.kind, p.value) for p in pieces] == [
        ("text", "a"), ("directive", "user"), ("text", "b"), ("directive", "fork"), ("text", "c\n@someone else")]
    assert pieces[3].arg == "2"


def test_lmnb_names_in_scope_and_namespace_wins():
    got = compile_template("{{ gen_int('n') }} {{ lm.select('s', ['a', 'b']) }}", {})
    assert [h.kind for h in holes(got)] == ["regex", "select"]
    assert flat(compile_template("{{ gen }}", {"gen": "mine"})) == [["text", "mine"]]


@pytest.mark.parametrize("cell,where,message", [
    ("Hi {{ gen('x'", (1, 4), "unclosed '{{'"),
    ("ok\n  {{ moive }}", (2, 6), "unknown name 'moive'"),
    ("x {{ [y for y in nope] }}", (1, 18), "unknown name 'nope'"),
    ("{{ gen('a',\n  foo=bar2) }}", (2, 7), "unknown name 'bar2'"),
    ("a\n@join", (2, 1), "@join without a @fork"),
    ("@fork two\nx", (1, 7), "unknown name 'two'"),
    ("@fork 0\nx", (1, 7), "whole number of branches"),
    ("{{ gen('x', regex='(') }}", (1, 4), "gen('x'): invalid regex"),
    ("{{ 1 / 0 }}", (1, 4), "ZeroDivisionError"),
    ("{{ }}", (1, 1), "empty"),
    ("{{ a b }}", (1, 4), "invalid expression 'a b'"),
])
def test_errors_point_at_line_and_column(cell, where, message):
    with pytest.raises(TemplateError) as e:
        compile_template(cell, {"a": 1})
    assert (e.value.line, e.value.column) == where, str(e.value)
    assert message in str(e.value) and str(e.value).startswith(f"line {where[0]}, column {where[1]}: ")
    assert isinstance(e.value, lm.LmnbError) and "\n" not in str(e.value)


def test_value_without_str_and_line_offset():
    class Bad:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(TemplateError, match=r"line 3, column 7: cannot insert the Bad value of 'b': str\(\) failed"):
        compile_template("x\nab {{ b }}", {"b": Bad()}, line_offset=1)
    with pytest.raises(TemplateError, match="line 2, column 1: unclosed"):
        compile_template("{{ x", {}, line_offset=1)
