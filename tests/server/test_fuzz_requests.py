"""Fuzzed request bodies for /v1/completions and /v1/chat/completions: every body gets
a 200 or a 4xx with a one-line OpenAI-style error, never a 500 or a hang, and the
engine keeps running."""
from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.server.conftest import wait_idle

LIMIT = 16 * 1024
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from(["", "smollm2", "default", "\x00", "\ud800"]))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
small_int = st.integers(-3, 20)
prompts = (st.text(max_size=30) | st.lists(st.text(max_size=8), max_size=3)
           | st.lists(st.integers(-1, 70_000), max_size=6)
           | st.lists(st.lists(st.integers(0, 50_000), max_size=4), max_size=3) | junk)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard"]) | junk
contents = (st.text(max_size=20) | st.none() | junk
            | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | junk,
                                              "text": st.text(max_size=8) | junk}), max_size=2))
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), max_size=3) | junk
# values a client might plausibly send, mixed with junk of any type
plausible = {
    "model": st.sampled_from(["smollm2", "default", "gpt-4o", ""]) | junk,
    "max_tokens": small_int | st.sampled_from([2**63, 10**30, 1.0, 2.5, "3"]) | junk,
    "temperature": st.sampled_from([0, 0.0, 0.7, 2, -1, 1e308, 1e-300, 5e-324, "0.5"]) | st.floats() | junk,
    "top_p": st.sampled_from([0, 0.5, 1, 1.5]) | st.floats() | junk,
    "top_k": small_int | junk, "min_p": st.floats(-1, 2) | junk,
    "n": small_int | st.sampled_from([2**40]) | junk,
    "stream": st.booleans() | junk,
    "stream_options": st.sampled_from([{"include_usage": True}, {}, None]) | junk,
    "stop": st.sampled_from(["\n", ["a", "b"], [], [""], "x" * 40]) | junk,
    "seed": st.integers(-5, 2**64) | junk,
    "logprobs": st.booleans() | small_int | junk,
    "top_logprobs": small_int | junk,
    "echo": st.booleans() | junk,
    "ignore_eos": st.booleans() | junk,
    "stop_token_ids": st.lists(st.integers(-2, 60_000), max_size=3) | junk,
    "regex": st.sampled_from([r"\d+", "[a-z]{2,4}", "(", "a{99999999}", r"(\w+ )*", ""]) | junk,
    "presence_penalty": st.sampled_from([0, 0.5]) | junk,
    "logit_bias": st.sampled_from([{}, {"1": 5}]) | junk,
    "prompt": prompts, "messages": messages,
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "xml"},
                                        {"type": "json_schema", "json_schema": {"schema": {"type": "integer"}}},
                                        {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nope"}}},
                                        {"type": "json_schema", "json_schema": {"schema": 5}}]) | junk,
    "json_schema": st.sampled_from([{"type": "boolean"}, "{", "[]", {"enum": []}]) | junk,
    "max_completion_tokens": small_int | junk,
    "continue_final_message": st.booleans() | junk,
    "add_generation_prompt": st.booleans() | junk,
    "tools": st.sampled_from([[], None]) | junk,
    "suffix": st.sampled_from(["", "x"]) | junk, "best_of": small_int | junk,
}
# well-formed values: most bodies drawn from these are answered with a 200
valid = {
    "model": st.sampled_from(["smollm2", "default"]), "max_tokens": st.integers(0, 5),
    "temperature": st.floats(0, 2) | st.sampled_from([1e-300, 5e-324, 1e-9]), "top_p": st.floats(0.05, 1), "top_k": st.integers(-1, 50),
    "min_p": st.floats(0, 0.5), "n": st.integers(1, 3), "stream": st.booleans(),
    "stream_options": st.just({"include_usage": True}), "seed": st.integers(0, 2**63),
    "stop": st.text(min_size=1, max_size=3) | st.lists(st.text(min_size=1, max_size=3), max_size=2),
    "ignore_eos": st.booleans(), "stop_token_ids": st.lists(st.integers(0, 49_000), max_size=2),
    "regex": st.sampled_from([r"\d+", "[a-z]{2,4}", "(yes|no)"]),
}
valid_completion = {**valid, "prompt": st.text(min_size=1, max_size=30)
                    | st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3)
                    | st.lists(st.integers(0, 49_000), min_size=1, max_size=6), "echo": st.booleans(),
                    "logprobs": st.integers(0, 3)}
valid_chat = {**valid, "logprobs": st.booleans(),
              "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]),
                                                          "content": st.text(max_size=20)}),
                                   min_size=1, max_size=2),
              "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}])}


def _pick(fields: dict, keys: list[str]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({k: fields[k] for k in keys})


def _bodies(required: str, well_formed: dict) -> st.SearchStrategy[dict]:
    """Either well-formed fields only, or a few known fields (plausible or junk) with
    the required one perhaps missing, plus random extra fields."""
    keys = st.lists(st.sampled_from(sorted(plausible)), max_size=6, unique=True)
    good = st.lists(st.sampled_from(sorted(set(well_formed) - {required})), max_size=5, unique=True)
    good = good.flatmap(lambda ks: _pick(well_formed, [required, *ks]))
    known = keys.flatmap(lambda ks: _pick(plausible, ks))
    need = st.fixed_dictionaries({}, optional={required: well_formed[required] | plausible[required]})
    extra = st.dictionaries(st.text(max_size=8), junk, max_size=2)
    fuzzed = st.tuples(known, need, extra).map(lambda t: {**t[2], **t[0], **t[1]})
    return good | fuzzed


def _encode(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


raw_bodies = (st.binary(max_size=64) | st.text(max_size=40).map(str.encode)
              | junk.map(_encode) | st.just(b"{" * 5000) | st.just(b"[" * 20_000)
              | st.integers(1, 3000).map(lambda d: b'{"prompt": "hi", "stop": ' + b"[" * d + b"]" * d + b"}"))


@pytest.fixture(scope="module")
def fuzz_server(smollm2):
    from lmnb.server import start_server

    with start_server(smollm2, max_body_bytes=LIMIT, max_tokens_limit=3, max_n=4) as handle:
        yield handle


@pytest.fixture(scope="module")
def http(fuzz_server):
    with httpx.Client(base_url=fuzz_server.url, timeout=60) as client:
        yield client


def _check(r: httpx.Response) -> None:
    event(f"status {r.status_code}")
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code == 200:
        if r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.endswith("data: [DONE]\n\n") and '"error"' not in r.text, r.text[-500:]
        else:
            assert r.json()["choices"]
        return
    err = r.json()["error"]
    msg = err["message"]
    assert isinstance(msg, str) and msg.strip() and "\n" not in msg, msg
    assert "Traceback" not in msg and "internal error" not in msg, msg
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["type"], str)


def _post(http, path: str, content: bytes) -> httpx.Response:
    return http.post(path, content=content, headers={"content-type": "application/json"})


@SETTINGS
@given(body=_bodies("prompt", valid_completion))
def test_completion_bodies(http, body):
    _check(_post(http, "/completions", _encode(body)))


@SETTINGS
@given(body=_bodies("messages", valid_chat))
def test_chat_bodies(http, body):
    _check(_post(http, "/chat/completions", _encode(body)))


@settings(SETTINGS, max_examples=50)
@given(content=raw_bodies, path=st.sampled_from(["/completions", "/chat/completions"]))
def test_raw_bodies(http, content, path):
    _check(_post(http, path, content))


def test_engine_alive_and_clean_after_fuzzing(http, fuzz_server, smollm2):
    health = http.get(fuzz_server.url.removesuffix("/v1") + "/health").json()
    assert health == {"status": "ok", "requests_in_flight": 0}
    stats = wait_idle(smollm2)
    assert stats["running"] == stats["waiting"] == stats["in_use_tokens"] == 0
    smollm2.check_integrity()
    ok = http.post("/completions", json={"prompt": "1, 2, 3,", "max_tokens": 3, "temperature": 0})
    assert ok.json()["choices"][0]["text"] == smollm2.generate("1, 2, 3,", max_new_tokens=3,
                                                              temperature=0)[0]["text"]
