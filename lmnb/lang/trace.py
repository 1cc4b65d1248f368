"""Tracing a program's constant prefix: `f.trace()` / `f.cache()` (SGLang's prefix prefetch).

The body runs on a `TraceState` with placeholder arguments. Text (and role markers,
rendered with the backend's chat template) is recorded until the first thing whose value
is not known before the program runs: a `gen` / `select` / fork, reading a variable or
the text, or using an argument. That recorded text is the prefix every run of the
program starts with; `cache()` computes it into the backend's radix cache once, so the
first real runs (a batch, a notebook loop) all hit it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lmnb.lang import ir


class _Stop(Exception):
    """Tracing reached something whose value is not known in advance."""


class Placeholder:
    """An argument during tracing: using it in any way ends the constant prefix."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _stop(self, *args, **kw):
        raise _Stop(self.name)

    __str__ = __format__ = __add__ = __radd__ = __getitem__ = __iter__ = __len__ = _stop
    __eq__ = __bool__ = __int__ = __float__ = __getattr__ = __call__ = __contains__ = _stop
    __hash__ = object.__hash__


@dataclass
class Trace:
    """What tracing found: the constant `prefix` text and the nodes that built it;
    `stopped_at` says what ended it."""

    prefix: str = ""
    nodes: list = field(default_factory=list)
    stopped_at: str = "the end of the program"


class TraceState:
    """Stands in for ProgramState while a body is traced."""

    def __init__(self, template) -> None:
        self.trace, self._template, self._turns = Trace(), template, 0

    def __iadd__(self, other):
        self._add(ir.as_expr(other))
        return self

    def _add(self, node) -> None:
        if isinstance(node, ir.Seq):
            for item in node.items:
                self._add(item)
            return
        if isinstance(node, ir.Text):
            self.trace.prefix += node.value
        elif isinstance(node, (ir.RoleBegin, ir.RoleEnd)) and self._template is not None:
            if isinstance(node, ir.RoleBegin):
                first = self._turns == 0 and not self.trace.prefix
                self.trace.prefix += self._template.begin(node.role, first)
                self._turns += 1
            else:
                self.trace.prefix += self._template.end(node.role)
        else:
            raise _Stop(node.describe())
        self.trace.nodes.append(node)

    # role context managers and scopes: entering a turn is constant text
    def system(self, expr=None):
        return self._role("system", expr)

    def user(self, expr=None):
        return self._role("user", expr)

    def assistant(self, expr=None):
        return self._role("assistant", expr)

    def _role(self, role: str, expr):
        if expr is not None:
            self += ir.Seq([ir.RoleBegin(role), ir.as_expr(expr), ir.RoleEnd(role)])
            return None
        return _TraceScope(self, ir.RoleBegin(role), ir.RoleEnd(role))

    def __getattr__(self, name: str):
        raise _Stop(f"state.{name}")

    def __getitem__(self, name):
        raise _Stop(f"state[{name!r}]")

    def __setitem__(self, name, value):
        raise _Stop(f"state[{name!r}] = ...")


class _TraceScope:
    def __init__(self, state: TraceState, begin, end) -> None:
        self.state, self.begin, self.end = state, begin, end

    def __enter__(self):
        self.state += self.begin
        return self.state

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is None:
            self.state += self.end
        return False


def trace_prefix(func, arg_names: list[str], bound: dict, template) -> Trace:
    """Run `func` on a TraceState with bound arguments as given, defaults as declared
    and the others as placeholders; the constant prefix it builds before the first unknown."""
    import inspect

    st = TraceState(template)
    params = inspect.signature(func).parameters
    kwargs = {}
    for n in arg_names:
        default = params[n].default
        kwargs[n] = bound[n] if n in bound else (Placeholder(n) if default is inspect.Parameter.empty else default)
    try:
        func(st, **kwargs)
    except _Stop as e:
        st.trace.stopped_at = str(e)
    except Exception as e:  # noqa: BLE001 - the body needed a real value: the prefix ends here
        st.trace.stopped_at = f"{type(e).__name__} while tracing"
    return st.trace
