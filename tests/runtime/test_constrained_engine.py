"""Constrained decoding through the engine on the real smollm2: regex and JSON-schema
outputs are valid, jump-forward saves decode steps, and jumped text is re-tokenized the
way the tokenizer encodes it."""
from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmnb.errors import LmnbError
from tests.constrained.schemas import SCHEMAS


def _chat(rt, text: str) -> str:
    return rt.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=False)


# bounded patterns: a 135M model may never stop inside an unbounded `\d+`
REGEXES = [r"\d{3}-\d{4}", r"(yes|no|maybe)", r"[A-Z][a-z]{2,8} [A-Z][a-z]{2,8}",
           r"#[0-9a-f]{6}", r"\(\d{1,3}, \d{1,3}\)", r"[a-z]{1,8}@[a-z]{1,8}\.(com|org)",
           r"-?\d{1,4}\.\d{1,3}", r"(\w{1,8} ){2,4}\w{1,8}\."]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seeds=st.lists(st.integers(0, 2**31 - 1), min_size=len(REGEXES), max_size=len(REGEXES)))
def test_regex_outputs_fully_match(smollm2, seeds):
    prompts = [_chat(smollm2, f"Give an example matching {p}") for p in REGEXES]
    handles = [smollm2.submit(p, regex=rx, max_new_tokens=40, temperature=0.9, seed=s)
               for p, rx, s in zip(prompts, REGEXES, seeds)]
    for rx, h in zip(REGEXES, handles):
        out = h.result()
        assert out["meta"]["finish_reason"] == "stop", (rx, out["text"])
        assert re.fullmatch(rx, out["text"]), (rx, out["text"])
    smollm2.check_integrity()


def test_json_schemas_validate(smollm2):
    """Every output that ends validates. A 135M model sometimes loops inside an unbounded
    array or string until max_new_tokens; such truncated outputs are counted (few allowed)
    rather than hidden: the grammar cannot end them, only the token budget does."""
    # `{}` admits any value, arrays of any length included; the guide-level walks in
    # tests/constrained cover it.
    names = sorted(n for n in SCHEMAS if n != "any_value")
    assert len(names) >= 30
    rng = random.Random(0)
    handles = {n: smollm2.submit(_chat(smollm2, f"Produce a JSON value for the '{n}' case."),
                                 json_schema=json.dumps(SCHEMAS[n]), max_new_tokens=400,
                                 temperature=0.7, top_p=0.95, seed=rng.randrange(2**31))
               for n in names}
    bad, truncated = [], []
    for n, h in handles.items():
        out = h.result()
        if out["meta"]["finish_reason"] == "length":
            truncated.append(n)
            continue
        try:
            jsonschema.validate(json.loads(out["text"]), SCHEMAS[n])
        except (ValueError, jsonschema.ValidationError) as e:
            bad.append((n, out["text"][:80], str(e)[:80]))
    assert not bad, bad
    assert len(truncated) <= len(names) // 10, truncated
    smollm2.check_integrity()


LONG_KEYS = {"type": "object", "properties": {
    "customer_full_legal_name": {"type": "string", "maxLength": 12},
    "customer_primary_email_address": {"type": "string", "maxLength": 16},
    "subscription_plan_identifier": {"enum": ["basic_monthly", "premium_annual"]},
    "account_is_currently_active": {"type": "boolean"}},
    "required": ["customer_full_legal_name", "customer_primary_email_address",
                 "subscription_plan_identifier", "account_is_currently_active"]}


def test_jump_forward_halves_decode_steps_and_retokenizes(smollm2):
    prompt = _chat(smollm2, "Create a customer record as JSON.")
    # (speculative drafts off: this measures jump-forward alone)
    kw = dict(json_schema=json.dumps(LONG_KEYS), max_new_tokens=200, temperature=0, speculative=False)
    smollm2.outputs.jump_forward = False
    try:
        plain = smollm2.generate(prompt, **kw)[0]
    finally:
        smollm2.outputs.jump_forward = True
    jumped = smollm2.generate(prompt, **kw)[0]
    for out in (plain, jumped):
        jsonschema.validate(json.loads(out["text"]), LONG_KEYS)
    assert jumped["meta"]["jump_forward_tokens"] > 0
    assert plain["meta"]["decode_steps"] >= 2 * jumped["meta"]["decode_steps"], (
        plain["meta"]["decode_steps"], jumped["meta"]["decode_steps"])
    # after every jump the ids are exactly what the tokenizer makes of the text
    assert jumped["output_ids"] == smollm2.tokenizer.encode(jumped["text"], add_special_tokens=False)
    assert jumped["meta"]["forced_spans"]
    for a, b in jumped["meta"]["forced_spans"]:
        assert 0 <= a < b <= len(jumped["text"])
    smollm2.check_integrity()


COUNTS = {"type": "object", "properties": {k: {"type": "integer", "minimum": 0, "maximum": 99}
                                           for k in ("number_of_open_orders_this_month",
                                                     "number_of_closed_support_tickets",
                                                     "number_of_registered_user_devices",
                                                     "number_of_unread_inbox_messages")}}
COUNTS["required"] = list(COUNTS["properties"])


def test_jumps_carry_the_batch_along(smollm2):
    """With mixed steps a jump-forward extend also decodes the other running requests: the
    same greedy tokens, no extra step for the batch, pool and cache consistent."""
    prompts = [_chat(smollm2, f"Give account {i}'s counters as JSON.") for i in range(2)]
    free = "The history of the printing press"
    kw = dict(max_new_tokens=40, temperature=0, speculative=False)

    default = smollm2.scheduler.mixed

    def run(mixed: bool):
        smollm2.scheduler.mixed = mixed
        before = dict(smollm2.engine.counters)
        try:
            hs = [smollm2.submit(p, json_schema=json.dumps(COUNTS), **kw) for p in prompts]
            hs.append(smollm2.submit(free, **kw))
            outs = [h.result() for h in hs]
        finally:
            smollm2.scheduler.mixed = default
        after = smollm2.engine.counters
        return outs, {k: after[k] - before[k] for k in ("forward_steps", "mixed_steps")}

    alone, plain = run(False)
    mixed, steps = run(True)
    assert [o["output_ids"] for o in mixed] == [o["output_ids"] for o in alone]
    assert steps["mixed_steps"] > 0 and plain["mixed_steps"] == 0
    assert steps["forward_steps"] < plain["forward_steps"], (steps, plain)
    print("mixed steps", steps, "plain", plain)
    smollm2.check_integrity()


def test_constrained_and_free_requests_share_a_batch(smollm2):
    free = smollm2.submit("The weather today is", max_new_tokens=12, temperature=0)
    num = smollm2.submit(_chat(smollm2, "Pick a number."), regex=r"[1-9][0-9]?", max_new_tokens=5, temperature=0)
    assert re.fullmatch(r"[1-9][0-9]?", num.result()["text"])
    alone = smollm2.generate("The weather today is", max_new_tokens=12, temperature=0)[0]
    assert free.result()["output_ids"] == alone["output_ids"]


def test_bad_patterns_are_clear_errors(smollm2):
    with pytest.raises(LmnbError, match="backreference|lookahead|lookaround"):
        smollm2.generate("x", regex=r"(a)\1", max_new_tokens=3)
    with pytest.raises(LmnbError):
        smollm2.generate("x", json_schema=json.dumps({"type": "object", "not": {}}), max_new_tokens=3)
    smollm2.check_integrity()
