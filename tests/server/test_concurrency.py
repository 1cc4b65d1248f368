"""Concurrent clients are batched together by the engine and every slot is given back,
also when clients disconnect mid-request."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.server.conftest import wait_idle

SYSTEM = "You are a terse assistant. Answer with a few words only."
QUESTIONS = [f"What is {a} plus {b}?" for a, b in zip(range(1, 17), range(20, 4, -1))]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def _ask(client, q: str, stream: bool) -> str:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
    kw = {"model": "smollm2", "messages": msgs, "max_tokens": 10, "temperature": 0}
    if not stream:
        return client.chat.completions.create(**kw).choices[0].message.content
    return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw))


def test_sixteen_concurrent_clients(client, smollm2):
    tok = smollm2.tokenizer
    prompts = [tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                                       add_generation_prompt=True, tokenize=False) for q in QUESTIONS]
    refs = [r["text"] for r in smollm2.generate(prompts, max_new_tokens=10, temperature=0)]
    before = smollm2.stats()
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: _ask(client, QUESTIONS[i], stream=i % 2 == 1), range(16)))
    assert got == refs
    after = smollm2.stats()
    assert after["max_batch_size"] > 1                      # requests shared forward passes
    assert after["finished_requests"] - before["finished_requests"] == 16
    stats = wait_idle(smollm2)
    smollm2.check_integrity()
    assert stats["in_use_tokens"] == 0 and stats["hit_tokens"] > 0


def test_streaming_disconnect_aborts(server, smollm2):
    body = {"model": "smollm2", "prompt": "Write a very long story about a dragon.", "max_tokens": 400,
            "temperature": 0.8, "ignore_eos": True, "stream": True}
    aborted = smollm2.stats()["aborted_requests"]
    with httpx.stream("POST", f"{server.url}/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]          # a few tokens arrive, then the client leaves
        assert any(line.startswith("data: {") for line in got)
        assert smollm2.cache_stats()["running"] == 1
    stats = wait_idle(smollm2)
    assert stats["running"] == 0 and stats["in_use_tokens"] == 0
    assert smollm2.stats()["aborted_requests"] == aborted + 1
    smollm2.check_integrity()


def test_non_streaming_disconnect_aborts(server, smollm2):
    body = {"model": "smollm2", "prompt": "List every prime number.", "max_tokens": 400,
            "temperature": 0.8, "ignore_eos": True}
    aborted = smollm2.stats()["aborted_requests"]
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/completions", json=body, timeout=1.0)
    stats = wait_idle(smollm2)
    assert time.monotonic() - t0 < 10                  # aborted, not run to 400 tokens
    assert stats["in_use_tokens"] == 0 and smollm2.stats()["aborted_requests"] == aborted + 1
    smollm2.check_integrity()


def test_stop_ends_open_requests(smollm2):
    from lmnb.server import start_server

    handle = start_server(smollm2)
    body = {"model": "smollm2", "prompt": "Tell a long story.", "max_tokens": 400, "ignore_eos": True}
    with ThreadPoolExecutor(2) as pool:
        plain = pool.submit(httpx.post, f"{handle.url}/completions", json=body, timeout=60)
        streamed = pool.submit(lambda: httpx.post(f"{handle.url}/completions", json=body | {"stream": True},
                                                  timeout=60).text)
        deadline = time.monotonic() + 20
        while smollm2.cache_stats()["running"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        handle.stop()
        assert time.monotonic() - t0 < 3 and not handle.running
        assert plain.result().json()["choices"][0]["finish_reason"] == "abort"
        assert streamed.result().endswith("data: [DONE]\n\n")
    stats = wait_idle(smollm2)
    assert stats["in_use_tokens"] == 0
    smollm2.check_integrity()
    handle.stop()   # idempotent
