"""JSON schema → regex: supported schemas accept the compact JSON of their instances;
any dict either converts (and compiles) or raises a clear LmnbError; nothing hangs."""
from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings

from lmnb.runtime.constrained import build_regex_from_schema, compile_regex

from .guard import outcome
from .schema_strategies import any_schema, schema_and_instance

_RECURSIVE = {"$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}},
              "$ref": "#/$defs/A"}


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(schema_and_instance())
def test_regex_accepts_the_json_of_valid_instances(case):
    schema, instance = case
    jsonschema.validate(instance, schema)   # the strategy's own promise
    regex, err = outcome(build_regex_from_schema, schema)
    assert err is None, (schema, err)
    fsm, err = outcome(compile_regex, regex, seconds=30)
    assert err is None, (schema, err)
    text = json.dumps(instance, ensure_ascii=False, separators=(",", ":"))
    assert fsm.matches(text.encode()), (schema, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_schema)
@example({"type": "string", "minLength": "abc"})        # ValueError from int()
@example({"type": "string", "minLength": -1})           # became a literal '{-1,}' in the regex
@example({"enum": "abc"})                               # iterated as three one-letter values
@example({"type": {}})                                  # unhashable type name
@example({"type": "string", "pattern": 5})              # AttributeError in _unanchor
@example({"type": "integer", "minimum": float("inf")})  # OverflowError
@example({"const": {1, 2}})                             # not JSON: TypeError from json.dumps
@example({"type": "array", "minItems": 10**9})          # a billion-element list of builders
@example(_RECURSIVE)
@example({"enum": list(range(3000))})                   # a huge enum works
def test_any_schema_converts_or_raises_clear_error(schema):
    for given_as in (schema, json.dumps(schema) if _jsonable(schema) else schema):
        regex, _ = outcome(build_regex_from_schema, given_as)
        if regex is not None:
            outcome(compile_regex, regex, seconds=30)


@pytest.mark.parametrize("schema", [
    {"enum": "abc"},                                   # was read as the values "a", "b", "c"
    {"type": "string", "minLength": -1},               # was the literal text '{-1,}'
    {"type": "object", "properties": {"name": {}}, "required": "name"},
    {"type": "string", "maxLength": True},             # was maxLength 1
])
def test_misread_keywords_raise_clear_error(schema):
    _, err = outcome(build_regex_from_schema, schema)
    assert err is not None and "must be" in str(err), err


def test_deeply_nested_schemas_raise_clear_error():
    deep: dict = {"type": "integer"}
    for _ in range(400):
        deep = {"type": "array", "items": deep}
    for schema in (deep, "[" * 100_000):
        _, err = outcome(build_regex_from_schema, schema)
        assert err is not None


def _jsonable(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True
