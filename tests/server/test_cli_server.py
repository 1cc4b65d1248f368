"""`lmnb serve` as a real subprocess, driven by the official openai client."""
from __future__ import annotations

import openai
import pytest

from tests.server.conftest import API_KEY

PROMPT = "The three primary colors are"
MESSAGES = [{"role": "user", "content": "Name one fruit."}]


@pytest.fixture(scope="module")
def client(cli_server):
    return openai.OpenAI(base_url=cli_server, api_key=API_KEY, max_retries=0, timeout=60)


def test_url_is_loopback_with_free_port(cli_server):
    assert cli_server.startswith("http://127.0.0.1:") and cli_server.endswith("/v1")
    assert int(cli_server.rsplit(":", 1)[1].split("/")[0]) > 0


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["smollm2", "default"]


def test_completion_matches_runtime(client, smollm2):
    out = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=12, temperature=0)
    ref = smollm2.generate(PROMPT, max_new_tokens=12, temperature=0)[0]
    assert out.choices[0].text == ref["text"]
    assert out.choices[0].finish_reason == ref["meta"]["finish_reason"]
    assert out.usage.prompt_tokens == ref["meta"]["prompt_tokens"]
    assert out.usage.completion_tokens == ref["meta"]["completion_tokens"]


def test_chat_matches_runtime_on_templated_prompt(client, smollm2):
    out = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=12, temperature=0)
    text = smollm2.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ref = smollm2.generate(text, max_new_tokens=12, temperature=0)[0]
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == ref["text"]
    assert out.model == "smollm2"


def test_streaming_chat_and_completion(client, smollm2):
    chunks = list(client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=12,
                                                 temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    whole = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=12, temperature=0)
    assert streamed == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    pieces = list(client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=12,
                                            temperature=0, stream=True))
    ref = smollm2.generate(PROMPT, max_new_tokens=12, temperature=0)[0]["text"]
    assert "".join(p.choices[0].text for p in pieces) == ref
    assert len([p for p in pieces if p.choices[0].text]) > 1   # really incremental


def test_bad_key_is_401(cli_server):
    bad = openai.OpenAI(base_url=cli_server, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401
    assert "API key" in e.value.body["message"]
