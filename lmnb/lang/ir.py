"""The program IR: the primitives of the SGLang frontend language as plain data.

A program is a sequence of nodes appended to a `ProgramState`:

    Text(value)            constant text
    Gen(name, ...)         a generation hole; the output is captured under `name`
    Select(name, choices)  pick one of `choices` by likelihood; the choice is appended
    RoleBegin(role) / RoleEnd(role)   chat turns (system / user / assistant)
    Seq(items)             several nodes in order (what `"a" + gen(...) + "b"` builds)
    Var(name)              the text of a value captured earlier in the same program
    Fork(branches, join)   run the branches in parallel from the current text, then join
    Call(fn)               fn(state) runs on the state when reached (may return a node)

The constructors (`gen`, `select`, `system`, `user`, `assistant`, `*_begin`, `*_end`,
`fork`) build nodes and validate their arguments at once, so a bad argument raises an
`LmnbError` naming the primitive on the line that wrote it.

Running IR without the decorator (what `%%lm` does):

    from lmnb.lang.ir import Text, Seq, Fork, gen, select, user, assistant
    from lmnb.lang.interpreter import run_program
    prog = Seq([user("Name a colour."), assistant(gen("c", max_tokens=8))])
    state = run_program(prog, backend=None, temperature=0)   # default backend, blocks
    state["c"], state.text(), state.messages()

`run_program(node_or_list, backend=None, stream=False, **defaults)` returns the finished
`ProgramState` (stream=True returns at once; iterate `state.text_iter()`), and
`run_programs(list_of_nodes, ...)` runs several through the engine together. On an
existing state, `state += node` appends any node (executed in order, asynchronously).
`Fork(branches=(body,) * n)` runs `body` n times; a name captured in several branches
becomes a list in branch order in the parent (`join="gather_variable"`), or
`join="concate_and_append"` appends the branches' texts to the parent text.
"""
from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lmnb.errors import LmnbError
from lmnb.runtime.sampling_params import USER_NAMES, as_tuple, check_user, user_name

ROLES = ("system", "user", "assistant")
SELECT_METHODS = ("token_length_normalized", "greedy_token", "unconditional_likelihood_normalized")
JOIN_MODES = ("gather_variable", "concate_and_append")
MAX_BRANCHES = 10_000   # more branches than any batch could run; a typo like `@fork 10**8` fails fast


class Expr:
    """Base of every IR node: `+` concatenates nodes and strings into a `Seq`."""

    def __add__(self, other) -> Seq:
        return Seq([self, as_expr(other)])

    def __radd__(self, other) -> Seq:
        return Seq([as_expr(other), self])

    def describe(self) -> str:
        """How error messages name this node, e.g. `gen('answer')`."""
        return type(self).__name__.lower()


def as_expr(value) -> Expr:
    """Strings become `Text`, lists and tuples become `Seq`; nodes pass through."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Text(value)
    if isinstance(value, (list, tuple)):
        return Seq([as_expr(v) for v in value])
    raise LmnbError(f"cannot add a {type(value).__name__} to a program; use a str or a primitive "
                    "(gen, select, user, ...), e.g. str(value)")


@dataclass(frozen=True, eq=False)
class Text(Expr):
    value: str

    def describe(self) -> str:
        return f"text {self.value[:30]!r}"


@dataclass(frozen=True, eq=False)
class Seq(Expr):
    items: tuple = ()

    def __init__(self, items: Sequence = ()) -> None:
        flat: list[Expr] = []
        for it in items:
            it = as_expr(it)
            flat.extend(it.items if isinstance(it, Seq) else [it])
        object.__setattr__(self, "items", tuple(flat))

    def describe(self) -> str:
        return "sequence"


@dataclass(frozen=True, eq=False)
class Gen(Expr):
    """A generation hole. `params` holds the sampling parameters this node sets, by
    runtime name (see `runtime.sampling_params.PARAMS`); the rest take the program's
    defaults. `regex` / `json_schema` (a JSON string here) constrain the output; `parse`
    is the dtype or schema the captured text is parsed with (`parse_value`), or None."""

    name: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    parse: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def describe(self) -> str:
        return f"gen({self.name!r})"

    def __repr__(self) -> str:
        set_ = [f"{user_name(k)}={v!r}" for k, v in self.params.items()]
        return f"gen({', '.join([repr(self.name), *set_])})"

    def sampling(self) -> dict:
        """The sampling parameters this node sets, by runtime name (`max_new_tokens`...)."""
        return dict(self.params)

    @property
    def regex(self) -> str | None:
        return self.params.get("regex")

    @property
    def json_schema(self) -> str | None:
        return self.params.get("json_schema")


@dataclass(frozen=True, eq=False)
class Select(Expr):
    name: str | None
    choices: tuple[str, ...]
    method: str = "token_length_normalized"

    def describe(self) -> str:
        return f"select({self.name!r})"


@dataclass(frozen=True, eq=False)
class RoleBegin(Expr):
    role: str

    def describe(self) -> str:
        return f"{self.role}_begin()"


@dataclass(frozen=True, eq=False)
class RoleEnd(Expr):
    role: str

    def describe(self) -> str:
        return f"{self.role}_end()"


@dataclass(frozen=True, eq=False)
class Var(Expr):
    name: str

    def describe(self) -> str:
        return f"variable {self.name!r}"


@dataclass(frozen=True, eq=False)
class Fork(Expr):
    branches: tuple[Expr, ...]
    join: str = "gather_variable"

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", tuple(as_expr(b) for b in self.branches))
        if not self.branches:
            raise LmnbError("fork: give at least one branch")
        if self.join not in JOIN_MODES:
            raise LmnbError(f"fork: join must be one of {', '.join(JOIN_MODES)}, got {self.join!r}")

    def describe(self) -> str:
        return f"fork({len(self.branches)})"


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """`fn(state)` runs on the program's state when reached; a returned node or str is
    executed next (how a sub-program or a late-bound value enters a program)."""

    fn: Callable
    label: str = "call"
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        return self.label


# -- constructors (the SGLang names) -------------------------------------------------
def gen(name: str | None = None, *, dtype=None, choices: Sequence[str] | None = None,
        **sampling) -> Expr:
    """Generate text and capture it under `name`. Keyword arguments are the sampling
    parameters of the table (`max_tokens`, `temperature`, `stop`, `regex`, `json_schema`
    as a dict, JSON string or pydantic model, ...; see `lm.SamplingParams`). `choices=[...]`
    behaves like `select`; `dtype=` (int, float, bool, str) constrains the output and
    parses the captured value."""
    where = f"gen({name!r})"
    _check_name(name, where)
    if choices is not None:
        return select(name, choices)
    sampling = {k: v for k, v in sampling.items() if v is not None}
    if dtype is not None and ("regex" in sampling or "json_schema" in sampling):
        raise LmnbError(f"{where}: give only one of regex=, json_schema= and dtype=")
    parse = None
    if dtype is not None:
        from lmnb.runtime.constrained import regex_for_dtype

        sampling["regex"], parse = _wrap(where, regex_for_dtype, dtype), dtype
    if "json_schema" in sampling:
        parse = sampling["json_schema"]
        sampling["json_schema"] = _schema_json(parse, where)
    if "regex" in sampling:
        _check_regex(sampling["regex"], where)
    for key in ("stop", "stop_token_ids"):
        if key in sampling:
            sampling[key] = _tuple(sampling[key], where, key)
    try:
        params = check_user(sampling)
    except LmnbError as e:
        raise LmnbError(f"{where}: {e}") from None
    return Gen(name, params, parse)


gen.__signature__ = inspect.Signature(
    [inspect.Parameter("name", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
    + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None)
       for k in ("dtype", "choices", *USER_NAMES)])


def gen_int(name: str | None = None, **kw) -> Expr:
    return gen(name, dtype=int, **kw)


def gen_string(name: str | None = None, **kw) -> Expr:
    return gen(name, dtype=str, **kw)


def select(name: str | None = None, choices: Sequence[str] | None = None,
           method: str = "token_length_normalized", **ignored) -> Expr:
    """Choose one of `choices` by its likelihood after the current text (all options are
    scored in one batched pass); the chosen text is appended and captured under `name`."""
    where = f"select({name!r})"
    _check_name(name, where)
    if isinstance(choices, str) or not isinstance(choices, Sequence) or not choices \
            or not all(isinstance(c, str) for c in choices):
        raise LmnbError(f"{where}: choices must be a non-empty list of str, got {choices!r}")
    if any(not c for c in choices):
        raise LmnbError(f"{where}: choices must not be empty strings")
    if method not in SELECT_METHODS:
        raise LmnbError(f"{where}: method must be one of {', '.join(SELECT_METHODS)}, got {method!r}")
    unknown = sorted(set(ignored) - {"temperature"})   # SGLang passes temperature; scoring ignores it
    if unknown:
        raise LmnbError(f"{where}: unknown argument {unknown[0]!r}; select takes name, choices and method")
    return Select(name, tuple(choices), method)


def _role(role: str, expr=None) -> Expr:
    if expr is None:
        return Seq([RoleBegin(role), RoleEnd(role)])
    return Seq([RoleBegin(role), as_expr(expr), RoleEnd(role)])


def system(expr=None) -> Expr:
    return _role("system", expr)


def user(expr=None) -> Expr:
    return _role("user", expr)


def assistant(expr=None) -> Expr:
    return _role("assistant", expr)


def system_begin() -> Expr:
    return RoleBegin("system")


def system_end() -> Expr:
    return RoleEnd("system")


def user_begin() -> Expr:
    return RoleBegin("user")


def user_end() -> Expr:
    return RoleEnd("user")


def assistant_begin() -> Expr:
    return RoleBegin("assistant")


def assistant_end() -> Expr:
    return RoleEnd("assistant")


def fork(*branches, n: int | None = None, join: str = "gather_variable") -> Fork:
    """`fork(body, n=3)` runs body three times; `fork(a, b)` runs a and b side by side."""
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_BRANCHES:
            raise LmnbError(f"fork: n must be an int in [1, {MAX_BRANCHES}], got {n!r}")
        if len(branches) != 1:
            raise LmnbError("fork: with n=, give exactly one branch body")
        branches = branches * n
    return Fork(tuple(branches), join)


# -- validation helpers ------------------------------------------------------------
def _check_name(name, where: str) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise LmnbError(f"{where}: the name must be a non-empty str, got {name!r}")


def _tuple(v, where: str, what: str):
    return as_tuple(v, f"{where}: {what}")


def _wrap(where: str, fn, *args):
    try:
        return fn(*args)
    except LmnbError as e:
        raise LmnbError(f"{where}: {e}") from None


def _schema_json(schema, where: str) -> str:
    if isinstance(schema, str):
        try:
            json.loads(schema)
        except (ValueError, RecursionError) as e:
            raise LmnbError(f"{where}: json_schema is not valid JSON: {e}") from None
        text = schema
    elif isinstance(schema, dict):
        text = _wrap(where, _dumps, schema)
    elif hasattr(schema, "model_json_schema"):
        text = json.dumps(schema.model_json_schema())
    else:
        raise LmnbError(f"{where}: json_schema must be a dict, a JSON string or a pydantic model class, "
                        f"got {type(schema).__name__}")
    return text   # not converted here: a remote backend may take schemas lmnb cannot compile


def _dumps(schema: dict) -> str:
    try:
        return json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise LmnbError(f"json_schema is not JSON data ({e}); use dicts, lists, str, numbers, "
                        "bool and None") from None


def _check_regex(regex, where: str) -> None:
    if not isinstance(regex, str) or not regex:
        raise LmnbError(f"{where}: regex must be a non-empty str, got {regex!r}")
    from lmnb.runtime.constrained import normalize_regex

    _wrap(where, normalize_regex, regex)
