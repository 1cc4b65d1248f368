"""End to end on the real smollm2 through `gen(json_schema=...)`: realistic tool-calling and
extraction schemas (negative and fractional bounds, exclusive bounds, formats, patterns,
recursion) all finish and validate; pattern strings sampled at temperature 1.0 always parse."""
from __future__ import annotations

import json

import jsonschema

import lmnb as lm
from tests.constrained.keyword_schemas import REALISTIC

_CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


@lm.function
def fill(s, name, schema):
    s += lm.user(f"Write one realistic '{name.replace('_', ' ')}' record as JSON.")
    s += lm.assistant(lm.gen("out", json_schema=schema, max_tokens=320))


def test_realistic_schemas_validate(smollm2):
    assert len(REALISTIC) >= 12
    states = fill.run_batch([{"name": n, "schema": json.dumps(s)} for n, s in REALISTIC.items()],
                            backend=smollm2, temperature=0, progress_bar=False)
    for (name, schema), st in zip(REALISTIC.items(), states):
        assert st.error is None, (name, st.error)
        value = st["out"]   # gen(json_schema=) gives the parsed value (json.loads succeeded)
        if isinstance(value, str):
            value = json.loads(value)
        errors = list(jsonschema.Draft202012Validator(schema, format_checker=_CHECKER).iter_errors(value))
        assert not errors, (name, value, errors[0].message)
    smollm2.check_integrity()


PATTERNS = {"type": "object", "required": ["s", "t"], "properties": {
    "s": {"type": "string", "pattern": "^.{1,5}$"},
    "t": {"type": "string", "pattern": "^[^0-9]{1,8}$"}}}


def test_pattern_strings_sampled_at_temperature_one_parse(smollm2):
    outs = smollm2.generate(["Say something odd with quotes and backslashes: "] * 8,
                            json_schema=json.dumps(PATTERNS), max_new_tokens=48,
                            temperature=1.0, seed=3)
    for o in outs:
        assert o["meta"]["finish_reason"] == "stop", o["text"]
        jsonschema.validate(json.loads(o["text"]), PATTERNS)
    smollm2.check_integrity()
