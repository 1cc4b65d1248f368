"""Every supported JSON-Schema keyword on the default engine (llguidance running lmnb's
grammars): each schema compiles; random token walks always give JSON that `jsonschema`
validates (formats checked); mutants breaking one constraint are never accepted; the
engine's masks agree with lmnb's own byte automaton on sampled tokens."""
from __future__ import annotations

import json

import jsonschema
import pytest

from lmnb.errors import LmnbError
from lmnb.runtime.constrained import LlgBackend, build_regex_from_schema

from .keyword_schemas import SUITE, TREE
from .llg_walk import accepts, llg_walk

WALKS = 30
_CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


@pytest.fixture(scope="module")
def llg(smol_tokenizer):
    return LlgBackend(smol_tokenizer, vocab_size=len(smol_tokenizer) + 64)


def _validate(text: str, schema: dict) -> None:
    value = json.loads(text)
    jsonschema.Draft202012Validator(schema, format_checker=_CHECKER).validate(value)


@pytest.mark.parametrize("name", sorted(SUITE))
def test_walks_parse_and_validate(llg, name):
    schema, _, _ = SUITE[name]
    guide = llg.compile(json_schema=schema)
    for seed in range(WALKS):
        text = llg_walk(guide, seed, check=4 if seed < 3 else 0)
        try:
            _validate(text, schema)
        except (ValueError, jsonschema.ValidationError) as e:
            raise AssertionError(f"{name} seed {seed}: {text!r}: {str(e).splitlines()[0]}") from None


@pytest.mark.parametrize("name", sorted(SUITE))
def test_instances_accepted_mutants_rejected(llg, name):
    schema, good, bad = SUITE[name]
    guide = llg.compile(json_schema=schema)
    for value in good:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        assert accepts(guide, text), text
        assert guide.fsm.matches(text.encode()), text
    for value in bad:
        assert not jsonschema.Draft202012Validator(schema, format_checker=_CHECKER).is_valid(value)
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        assert not accepts(guide, text), f"mutant accepted: {text}"
        assert not guide.fsm.matches(text.encode()), f"mutant accepted by the FSM: {text}"


PATTERN_SCHEMA = {"type": "object", "properties": {
    "s": {"type": "string", "pattern": "^.{1,5}$"},
    "t": {"type": "string", "pattern": "^[^0-9]+$"},
    "u": {"type": "string", "pattern": "a.c"}}, "required": ["s", "t", "u"]}


def test_pattern_escaping_regression(llg):
    """`.` and negated classes inside a pattern never close the JSON string, leave a lone
    backslash or emit raw control characters: 200 walks all parse and validate."""
    guide = llg.compile(json_schema=PATTERN_SCHEMA)
    for seed in range(200):
        text = llg_walk(guide, 1000 + seed, budget=20, check=0, jump_prob=0.5)
        _validate(text, PATTERN_SCHEMA)
    for broken in ['{"s":"a"b","t":"x","u":"abc"}', '{"s":"a\\","t":"x","u":"abc"}',
                   '{"s":"a\x01","t":"x","u":"abc"}', '{"s":"a\nb","t":"x","u":"abc"}']:
        assert not accepts(guide, broken), broken


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"x": {"type": "string"}}, "if": {}}, ["'if'", "#"]),
    ({"type": "object", "properties": {"x": {"type": "array", "items": S_, "uniqueItems": True}}},
     ["uniqueItems", "#/properties/x"]) if (S_ := {"type": "string"}) else None,
    ({"type": "object", "properties": {"x": {"type": "number", "multipleOf": 0.5}}},
     ["multipleOf", "#/properties/x"]),
    ({"type": "object", "patternProperties": {"^a": {}, "^b": {}}}, ["patternProperties", "#"]),
    ({"type": "string", "format": "credit-card"}, ["format", "credit-card", "#"]),
    ({"type": "string", "pattern": "(?<=a)b"}, ["pattern", "lookbehind"]),
    ({"$defs": {"n": {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}},
                      "required": ["n"]}}, "$ref": "#/$defs/n"}, ["recursive", "#/$defs/n", "4"]),
])
def test_unsupported_is_one_clear_line(schema, words):
    with pytest.raises(LmnbError) as e:
        build_regex_from_schema(schema)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_recursion_depth_is_bounded(llg):
    guide = llg.compile(json_schema=TREE)
    deep = {"name": "0"}
    for i in range(1, 4):
        deep = {"name": str(i), "children": [deep]}
    assert accepts(guide, json.dumps(deep, separators=(",", ":")))
    too_deep = {"name": "x", "children": [deep]}
    assert not accepts(guide, json.dumps(too_deep, separators=(",", ":")))
