"""Hypothesis strategies for JSON schemas.

`schema_and_instance()` draws a supported schema together with one JSON value valid under
it (objects keep declared property order, as the regex does). `any_schema` draws anything
a user might write: known and unknown keywords with values of any type, random nesting,
boolean schemas, local and recursive `$ref`, huge enums.
"""
from __future__ import annotations

import json

from hypothesis import strategies as st

from .values import anything

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), _text,
                         st.floats(allow_nan=False, allow_infinity=False, width=32))


@st.composite
def _string(draw) -> tuple[dict, str]:
    lo = draw(st.integers(0, 3))
    hi = draw(st.none() | st.integers(lo, lo + 4))
    s = {"type": "string", "minLength": lo} | ({} if hi is None else {"maxLength": hi})
    return s, draw(st.text(st.characters(blacklist_categories=("Cs",)), min_size=lo,
                           max_size=lo + 4 if hi is None else hi))


@st.composite
def _integer(draw) -> tuple[dict, int]:
    lo, hi = draw(st.none() | st.integers(-500, 500)), draw(st.none() | st.integers(-500, 500))
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    s = {"type": "integer"} | ({} if lo is None else {"minimum": lo}) | ({} if hi is None else {"maximum": hi})
    return s, draw(st.integers(lo if lo is not None else -10**12, hi if hi is not None else 10**12))


@st.composite
def _number(draw) -> tuple[dict, float]:
    if draw(st.booleans()):
        return {"type": "number"}, draw(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-99, 99))
    lo = draw(st.integers(0, 50))
    hi = lo + draw(st.integers(0, 50))
    return {"type": "number", "minimum": lo, "maximum": hi}, draw(st.floats(lo, hi) | st.integers(lo, hi))


_leaf = st.one_of(
    _string(), _integer(), _number(),
    st.booleans().map(lambda b: ({"type": "boolean"}, b)),
    st.just(({"type": "null"}, None)),
    st.lists(_json_scalar, min_size=1, max_size=6, unique_by=repr).flatmap(
        lambda vs: st.sampled_from(vs).map(lambda v: ({"enum": vs}, v))),
    _json_scalar.map(lambda v: ({"const": v}, v)),
    st.sampled_from([({"type": "string", "format": "date"}, "2024-02-29"),
                     ({"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}, "AB-123"),
                     ({}, {"any": [1, "x", None]})]),
)


def _extend(inner):
    return st.one_of(_object(inner), _array(inner), _any_of(inner))


@st.composite
def _object(draw, inner) -> tuple[dict, dict]:
    names = draw(st.lists(_text, min_size=1, max_size=4, unique=True))
    parts = {n: draw(inner) for n in names}
    required = [n for n in names if draw(st.booleans())]
    present = [n for n in names if n in required or draw(st.booleans())]
    schema = {"type": "object", "properties": {n: p[0] for n, p in parts.items()}, "required": required}
    return schema, {n: parts[n][1] for n in present}


@st.composite
def _array(draw, inner) -> tuple[dict, list]:
    item_schema, _ = draw(inner)
    lo = draw(st.integers(0, 2))
    hi = draw(st.none() | st.integers(lo, 4))
    n = draw(st.integers(lo, hi if hi is not None else lo + 3))
    same = json.dumps(item_schema, sort_keys=True)   # not ==: {"const": 0} == {"const": False}
    items = [draw(inner.filter(lambda p: json.dumps(p[0], sort_keys=True) == same))[1]
             for _ in range(n)] if n else []
    s = {"type": "array", "items": item_schema, "minItems": lo} | ({} if hi is None else {"maxItems": hi})
    return s, items


@st.composite
def _any_of(draw, inner) -> tuple[dict, object]:
    options = draw(st.lists(inner, min_size=1, max_size=3))
    pick = draw(st.sampled_from(options))
    return {"anyOf": [o[0] for o in options]}, pick[1]


def _ref(case: tuple[dict, object]) -> tuple[dict, object]:
    """The same schema reached through `$ref` (definitions live at the root)."""
    schema, value = case
    return {"$defs": {"T": schema}, "type": "object", "properties": {"t": {"$ref": "#/$defs/T"}},
            "required": ["t"]}, {"t": value}


def schema_and_instance():
    cases = st.recursive(_leaf, _extend, max_leaves=6)
    return cases | cases.map(_ref)


# -- anything ---------------------------------------------------------------------------
KEYWORDS = ["type", "properties", "required", "items", "prefixItems", "enum", "const", "anyOf",
            "oneOf", "allOf", "$ref", "$defs", "minLength", "maxLength", "pattern", "format",
            "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
            "uniqueItems", "additionalProperties", "title", "not", "if", "patternProperties", "foo"]
TYPES = ["string", "integer", "number", "boolean", "null", "object", "array", "date", 5, None]
REFS = ["#", "#/$defs/A", "#/$defs/B", "#/definitions/A", "#/properties/a", "#/nope", "http://x/s",
        "#/$defs/A/properties/a", 7]


def _node(inner):
    value = st.one_of(anything, inner, st.lists(inner, max_size=3), st.sampled_from(TYPES),
                      st.sampled_from(REFS), st.integers(-3, 12),
                      st.dictionaries(st.sampled_from(["a", "b", "A", "B"]), inner, max_size=2))
    return st.dictionaries(st.sampled_from(KEYWORDS), value, max_size=4)


any_schema = st.recursive(st.one_of(st.sampled_from([{}, True, False, {"type": "string"}]),
                                    st.sampled_from(TYPES).map(lambda t: {"type": t})),
                          _node, max_leaves=10)
