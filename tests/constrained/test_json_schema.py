"""JSON schemas: random walks produce JSON that validates; unsupported keywords fail loudly."""
from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from lmnb.errors import LmnbError
from lmnb.runtime.constrained import build_regex_from_schema, compile_regex

from .schemas import SCHEMAS
from .walk import random_walk


def test_corpus_is_large_enough():
    assert len(SCHEMAS) >= 30


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_walks_validate(backend, name):
    schema = SCHEMAS[name]
    guide = backend.compile(json_schema=schema)
    for seed in range(6):
        text = random_walk(guide, seed, budget=25, check=seed == 0)
        value = json.loads(text)
        jsonschema.validate(value, schema)
        assert re.fullmatch(guide.pattern, text)


@pytest.mark.parametrize("name", ["nested", "order_form", "array_of_objects", "ref_defs"])
def test_flexible_whitespace(smol_tokenizer, name):
    from lmnb.runtime.constrained import GrammarBackend

    be = GrammarBackend(smol_tokenizer, whitespace="flexible")
    guide = be.compile(json_schema=SCHEMAS[name])
    for seed in range(3):
        text = random_walk(guide, seed, budget=40)
        jsonschema.validate(json.loads(text), SCHEMAS[name])
    assert compile_regex(guide.pattern).matches(b'{ "user" :{"id": 1,\n  "profile":{"bio":"x"}}}') \
        or name != "nested"


class Address(BaseModel):
    street: str
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=150)
    role: Literal["admin", "user"]
    email: str | None = None
    addresses: list[Address] = Field(max_length=2)


def test_pydantic_model(backend):
    guide = backend.compile(json_schema=Person)
    for seed in range(5):
        person = Person.model_validate_json(random_walk(guide, seed, budget=30))
        assert 0 <= person.age <= 150


def test_json_string_schema_and_cache(backend):
    text = json.dumps(SCHEMAS["flat_required"])
    assert backend.compile(json_schema=text) is backend.compile(json_schema=SCHEMAS["flat_required"])


def test_compact_by_default():
    regex = build_regex_from_schema(SCHEMAS["flat_required"])
    assert re.fullmatch(regex, '{"name":"x","age":3}')
    assert not re.fullmatch(regex, '{"name": "x", "age": 3}')


def test_optional_properties_keep_order_and_commas():
    regex = build_regex_from_schema(SCHEMAS["optional_middle"])
    for ok in ['{"a":1,"c":true}', '{"a":1,"b":"x","c":false}']:
        assert re.fullmatch(regex, ok)
    for bad in ['{"a":1,,"c":true}', '{"c":true}', '{"a":1,"c":true,"b":"x"}']:
        assert not re.fullmatch(regex, bad)
    regex = build_regex_from_schema(SCHEMAS["all_optional"])
    assert all(re.fullmatch(regex, s) for s in ["{}", '{"b":"x"}', '{"a":1,"c":true}'])
    assert not re.fullmatch(regex, '{,"b":"x"}')


@pytest.mark.parametrize("schema, word", [
    ({"type": "string", "contentEncoding": "base64"}, "contentEncoding"),
    ({"type": "integer", "multipleOf": 3}, "multipleOf"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "object", "patternProperties": {"^x": {}, "^y": {}}}, "patternProperties"),
    ({"type": "array", "items": INT_ if (INT_ := {"type": "integer"}) else 0,
      "uniqueItems": True}, "uniqueItems"),
    ({"if": {}, "then": {}}, "if"),
    ({"type": "string", "format": "idn-email"}, "idn-email"),
    ({"$ref": "https://example.com/s.json"}, "not local"),
    ({"$defs": {"N": {"type": "array", "items": {"$ref": "#/$defs/N"}, "minItems": 1}},
      "$ref": "#/$defs/N"}, "recursive"),
    ({"$ref": "#/$defs/Missing"}, "points to nothing"),
    ({"type": "thing"}, "thing"),
    ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "'b'"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "allOf"),
    ({"type": "string", "minimum": 3}, "minimum"),
    ({"type": "number", "multipleOf": 0.25}, "multipleOf"),
    ({"enum": []}, "empty"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "maxLength"),
])
def test_unsupported_keywords_are_errors(schema, word):
    with pytest.raises(LmnbError) as e:
        build_regex_from_schema(schema)
    assert word in str(e.value) and "\n" not in str(e.value)


def test_bad_schema_inputs():
    with pytest.raises(LmnbError, match="not valid JSON"):
        build_regex_from_schema("{not json")
    with pytest.raises(LmnbError, match="must be a dict"):
        build_regex_from_schema(42)


def test_nested_arrays_hit_a_size_limit_at_once():
    """Each level of array nesting doubles the regex (an item appears twice); a small body
    must not cost minutes of compile time or the machine's memory."""
    import time

    deep = {"type": "integer"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    t = time.perf_counter()
    with pytest.raises(LmnbError, match="expands to a regex of .* flatten nested arrays"):
        build_regex_from_schema(deep)
    assert time.perf_counter() - t < 5
    shallow = {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
    assert re.fullmatch(build_regex_from_schema(shallow), "[[1,2],[],[3]]")
