"""The converter's two outputs (`grammar_out.py`): the Lark grammar llguidance runs and the
regex lmnb's own automaton runs describe one language, also with whitespace, and the
grammar stays small where the regex doubles."""
from __future__ import annotations

import json
import random
from itertools import pairwise

import pytest

from lmnb.runtime.constrained import LlgBackend
from lmnb.runtime.constrained.grammar_out import LarkOut, RegexOut
from lmnb.runtime.constrained.json_schema import build_lark_from_schema, build_regex_from_schema

from .llg_walk import accepts

NESTED = {"type": "object", "required": ["id", "tags"], "properties": {
    "id": {"type": "integer", "minimum": -5, "maximum": 500},
    "name": {"type": "string", "maxLength": 8},
    "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["a", "b/c", "d"]}},
    "geo": {"type": "object", "required": ["lat"], "properties": {
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "note": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": "^x/[0-9]+$"}]}}},
    "extra": {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}}}}}


@pytest.fixture(scope="module")
def flexible(smol_tokenizer):
    return LlgBackend(smol_tokenizer, vocab_size=len(smol_tokenizer) + 64, whitespace="flexible")


def _documents(seed: int):
    rng = random.Random(seed)
    doc = {"id": rng.randint(-5, 500), "tags": rng.sample(["a", "b/c", "d"], rng.randint(0, 3))}
    if rng.random() < 0.5:
        doc["name"] = "".join(rng.choice("ab/\"\\é ") for _ in range(rng.randint(0, 8)))
    if rng.random() < 0.7:
        doc["geo"] = {"lat": round(rng.uniform(-90, 90), rng.randint(0, 6))}
        if rng.random() < 0.5:
            doc["geo"]["note"] = rng.choice([None, f"x/{rng.randint(0, 999)}"])
    if rng.random() < 0.5:
        doc["extra"] = [[rng.random() < 0.5 for _ in range(rng.randint(0, 2))]
                        for _ in range(rng.randint(0, 2))]
    doc = {k: doc[k] for k in NESTED["properties"] if k in doc}   # declared order
    indent = rng.choice([None, 0, 1, 2])
    return doc, json.dumps(doc, ensure_ascii=False, indent=indent,
                           separators=(", ", ": ") if indent is None else None)


def test_grammar_and_regex_agree_with_whitespace(flexible):
    guide = flexible.compile(json_schema=NESTED)
    assert "start:" in build_lark_from_schema(NESTED, "flexible")
    for seed in range(40):
        _, text = _documents(seed)
        assert accepts(guide, text), text
        assert guide.fsm.matches(text.encode()), text
    for bad in ['{"id": 1, "tags": ["b/c"],}', '{"id": 1,  "tags": ["e"]}',
                '{"id": 501, "tags": []}', '{"id":1,"tags":[],"geo":{"lat":0,"note":"y/1"}}',
                '{"id":1,"tags":[]' + " " * 17 + "}", '{"tags":[],"id":1}']:
        assert not accepts(guide, bad), bad
        assert not guide.fsm.matches(bad.encode()), bad


def test_lark_terminals_escape_slashes_and_controls():
    out = LarkOut()
    assert out.leaf("a/b") == r"/a\/b/"
    assert out.leaf(r"a\/b") == r"/a\/b/"      # already escaped: left alone
    assert out.leaf("x\ny") == r"/x\x0ay/"
    assert out.leaf("\\\t") == r"/\x09/"


def test_empty_parts_and_alternatives():
    out = LarkOut()
    a, b = out.leaf("a"), out.leaf("b")
    assert out.seq(a, "", b) == "/a/ /b/"
    assert out.alt([a, ""]) == "(/a/)?"
    assert out.alt([a, a]) == a
    assert out.rep(a, 2, None) == "(/a/){2} (/a/)*"
    assert RegexOut.alt(["a", ""]) == "(?:a|)"
    assert RegexOut.rep("", 0, 3) == ""


def test_nested_arrays_grow_linearly():
    schema: dict = {"type": "integer"}
    sizes = []
    for _ in range(6):
        schema = {"type": "array", "maxItems": 4, "items": schema}
        sizes.append((len(build_regex_from_schema(schema)), len(build_lark_from_schema(schema))))
    assert all(b[0] / a[0] > 1.9 for a, b in pairwise(sizes))   # the item written twice
    assert all(b[1] - a[1] < 150 for a, b in pairwise(sizes))    # a rule per level
