"""`%%lm` cells: valid ones compile to the Python API's IR; anything else raises a
one-line TemplateError that points inside the cell; nothing hangs."""
from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings

from lmnb.lang import ir
from lmnb.lang.template import TemplateError, compile_template

from .guard import assert_clear, outcome, within
from .sampling_strategies import sampling_kwargs
from .template_strategies import NAMESPACE, cells, programs


def shape(node) -> list:
    """A comparable form of IR, adjacent texts merged (the nodes compare by identity)."""
    out: list = []
    for n in node.items if isinstance(node, ir.Seq) else [node]:
        if isinstance(n, ir.Seq):
            item = ["seq", shape(n)]
        elif isinstance(n, ir.Fork):
            item = ["fork", [shape(b) for b in n.branches]]
        elif isinstance(n, ir.Text):
            if out and out[-1][0] == "text":
                out[-1] = ["text", out[-1][1] + n.value]
                continue
            item = ["text", n.value]
        else:
            item = [type(n).__name__, repr(n) if isinstance(n, ir.Gen) else getattr(n, "role", None)
                    or getattr(n, "choices", None) or getattr(n, "name", None)]
        out.append(item)
    return out


def flat(node) -> list:
    """Role sections spliced into their parent so both sides nest the same way."""
    return shape(ir.Seq(list(node.items)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs() | programs(roles=False))
def test_valid_cells_compile_to_the_python_api_ir(case):
    cell, want = case
    with within(10, cell):
        got = compile_template(cell, NAMESPACE)
    assert flat(got) == flat(want), cell


def _check_position(e: TemplateError, cell: str) -> None:
    lines = cell.split("\n")
    assert 1 <= e.line <= len(lines), (e.line, len(lines))
    assert 1 <= e.column <= len(lines[e.line - 1]) + 1, (e.column, lines[e.line - 1][:80])
    assert str(e).startswith(f"line {e.line}, column {e.column}: ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells)
@example("{{ " + "-" * 100_000 + "1 }}")                # MemoryError from compile()
@example("@fork 100000000\nx")                          # a hundred million branches
@example("{{ exec('raise ValueError(\"a\\\\nb\")') }}")   # a two-line message
@example("{{ ( " + "}} x " * 20_000)                     # quadratic search for the closing }}
@example("{{ select('x', True) }}")
@example("{{ gen('x', dtype=[]) }}")
def test_any_cell_compiles_or_raises_a_located_template_error(cell):
    try:
        with within(10, cell[:200]):
            got = compile_template(cell, NAMESPACE)
    except TemplateError as e:
        assert_clear(e, TemplateError)
        _check_position(e, cell)
    else:
        assert isinstance(got, ir.Seq)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(roles=False))
def test_valid_cells_run_on_the_engine(tiny, case):
    """run_template drives a real engine (no chat template: raw text); every hole's name
    is captured, the engine lives on and holds nothing."""
    from lmnb.lang.template import holes, run_template

    cell, _ = case
    with within(120, cell):
        state = run_template(cell, NAMESPACE, backend=tiny, max_tokens=4, progress_bar=False)
    for h in holes(compile_template(cell, NAMESPACE)):
        assert h.name in state.variables(), (h.name, cell)
    assert tiny.alive()
    tiny.check_integrity()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sampling_kwargs())
@example({"temperature": 1e-300})
@example({"seed": 2**64})
def test_cell_options_work_or_raise_clear_error(tiny, options):
    """`%%lm --temperature ...` and friends reach run_template as keyword defaults."""
    from lmnb.lang.template import run_template

    options.pop("max_new_tokens", None)
    options["max_tokens"] = 3
    cell = "Q: {{ n }}{{ gen('a', max_tokens=3) }}"
    outcome(run_template, cell, NAMESPACE, backend=tiny, seconds=60, **options)
    assert tiny.alive()
    tiny.check_integrity()
