"""The HTTP API in-process: response shapes, logprobs, JSON formats, usage, errors."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.server.conftest import API_KEY

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def test_models_and_aliases(client, server):
    assert client.models.retrieve("default").parent == "smollm2"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=1)
    r = httpx.get(f"{server.url}/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_completion_logprobs_with_echo(client, smollm2):
    prompt = "The capital of France is"
    out = client.completions.create(model="smollm2", prompt=prompt, max_tokens=4, temperature=0,
                                    logprobs=2, echo=True)
    c = out.choices[0]
    ref = smollm2.generate(prompt, max_new_tokens=4, temperature=0)[0]
    assert c.text == prompt + ref["text"]
    n_prompt = out.usage.prompt_tokens
    lp = c.logprobs
    assert len(lp.tokens) == n_prompt + 4 == len(lp.token_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == c.text and lp.text_offset[1] == len(lp.tokens[0])
    assert lp.top_logprobs[0] is None and len(lp.top_logprobs[-1]) == 2
    # greedy: the chosen token is the most likely one
    assert lp.tokens[-1] == max(lp.top_logprobs[-1], key=lp.top_logprobs[-1].get)


def test_completion_batch_n_seed_stop(client):
    out = client.completions.create(model="smollm2", prompt=["Once upon a time", "1, 2, 3,"],
                                    max_tokens=8, temperature=1.0, n=2, seed=7)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    again = client.completions.create(model="smollm2", prompt=["Once upon a time", "1, 2, 3,"],
                                      max_tokens=8, temperature=1.0, n=2, seed=7)
    assert [c.text for c in out.choices] == [c.text for c in again.choices]
    stopped = client.completions.create(model="smollm2", prompt="1, 2, 3,", max_tokens=16,
                                        temperature=0, stop=[" 5"])
    assert stopped.choices[0].finish_reason == "stop" and " 5" not in stopped.choices[0].text


def test_token_id_prompt_and_zero_tokens(client, smollm2):
    ids = smollm2.encode("Hello world")
    out = client.completions.create(model="smollm2", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    c = out.choices[0]
    assert c.text == "Hello world" and out.usage.completion_tokens == 0
    assert len(c.logprobs.token_logprobs) == len(ids)


def test_chat_logprobs(client):
    out = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert "".join(t.token for t in content) == out.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in content)
    assert bytes(content[0].bytes).decode() == content[0].token


def test_streaming_logprobs_and_usage(client):
    kw = {"model": "smollm2", "messages": [{"role": "user", "content": "Count to three."}],
              "max_tokens": 8, "temperature": 0, "logprobs": True}
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    whole = client.chat.completions.create(**kw)
    streamed = [t.token for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert streamed == [t.token for t in whole.choices[0].logprobs.content]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_usage_reports_cached_prefix(client):
    msgs = [{"role": "system", "content": "You answer in one short sentence. " * 8},
            {"role": "user", "content": "What is tea?"}]
    client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=2, temperature=0)
    out = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=2, temperature=0)
    cached = out.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < out.usage.prompt_tokens


@pytest.mark.parametrize("fmt", [
    {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}},
    {"type": "json_object"},
])
def test_response_format_json(client, fmt):
    out = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Describe a person as JSON."}],
        max_tokens=48, temperature=0, response_format=fmt)
    value = json.loads(out.choices[0].message.content)
    assert isinstance(value, dict)
    if fmt["type"] == "json_schema":
        assert isinstance(value["name"], str) and isinstance(value["age"], int)


@pytest.mark.parametrize("kw, words", [
    ({"temperature": -1}, "temperature must be >= 0"),
    ({"top_p": 2}, "top_p must be in (0, 1]"),
    ({"messages": []}, "messages is empty"),
    ({"n": 99}, "n must be in"),
    ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
    ({"response_format": {"type": "xml"}}, "response_format type"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools are not supported"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
])
def test_bad_params_are_400(client, kw, words):
    args = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2} | kw
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == 400
    assert words in e.value.body["message"] and "\n" not in e.value.body["message"]


def test_raw_http_errors(server):
    big = {"model": "smollm2", "prompt": "x" * 100_000, "max_tokens": 1}
    r = httpx.post(f"{server.url}/completions", json=big)
    assert r.status_code == 413 and "limit of 65536 bytes" in r.json()["error"]["message"]
    chunked = httpx.post(f"{server.url}/completions", content=iter([b"{" + b" " * 70_000 + b"}"]))
    assert chunked.status_code == 413
    r = httpx.post(f"{server.url}/completions", content=b"{nope")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/no/such/endpoint")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(f"{server.url}/completions", json={"prompt": "Hi", "max_tokens": -3})
    assert r.status_code == 400 and "max_tokens must be >= 0" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/completions", json={"prompt": "", "max_tokens": 1})
    assert r.status_code == 400 and "prompt is empty" in r.json()["error"]["message"]


def test_api_key(keyed_server):
    bad = openai.OpenAI(base_url=keyed_server.url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="smollm2", prompt="Hi", max_tokens=1)
    assert httpx.get(f"{keyed_server.url}/models").status_code == 401   # no header at all
    assert httpx.get(keyed_server.url.removesuffix("/v1") + "/health").status_code == 200
    good = openai.OpenAI(base_url=keyed_server.url, api_key=API_KEY, max_retries=0)
    assert good.completions.create(model="smollm2", prompt="Hi", max_tokens=1).usage.completion_tokens == 1


def test_chat_continue_final_message(client, smollm2):
    msgs = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is"}]
    out = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=4, temperature=0,
                                         extra_body={"continue_final_message": True,
                                                     "add_generation_prompt": False})
    text = smollm2.tokenizer.apply_chat_template(msgs, add_generation_prompt=False,
                                                 continue_final_message=True, tokenize=False)
    assert text.endswith("The capital of France is")
    ref = smollm2.generate([smollm2.tokenizer.encode(text, add_special_tokens=False)],
                           max_new_tokens=4, temperature=0)[0]["text"]
    assert out.choices[0].message.content == ref
    with pytest.raises(openai.BadRequestError, match="add_generation_prompt"):
        client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=2,
                                       extra_body={"continue_final_message": True})
