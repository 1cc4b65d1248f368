"""`lmnb serve` hardening: loopback by default, API keys compared in constant time,
request size / time / max_tokens limits, and 64 concurrent clients served correctly."""
from __future__ import annotations

import hmac
import inspect
import json
import logging
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from lmnb.cli import build_parser
from lmnb.server import launch, serve, start_server
from tests.server.conftest import API_KEY, wait_idle

LIMIT = 64 * 1024   # the `server` fixture's body limit


@pytest.fixture(scope="module")
def limited(smollm2):
    with start_server(smollm2, max_tokens_limit=4, body_timeout=1.0) as handle:
        yield handle


def _health(handle) -> dict:
    return httpx.get(handle.url.removesuffix("/v1") + "/health").json()


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "\n" not in err["message"]
    return err


# -- where it listens ----------------------------------------------------------------
def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_loopback_by_default(server):
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    for fn in (start_server, serve):
        assert inspect.signature(fn).parameters["host"].default == "127.0.0.1"
    assert server.url.startswith("http://127.0.0.1:")
    outward = _outward_address()
    if outward is not None:   # the port is not open on the machine's other addresses
        with pytest.raises(OSError):
            socket.create_connection((outward, server.port), timeout=2).close()


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.20", False), ("example.org", False)])
def test_is_loopback(host, loopback):
    assert launch.is_loopback(host) is loopback


def _warnings(caplog) -> list:
    return [r for r in caplog.records if r.name == "lmnb.server"]


def test_other_address_without_key_warns(smollm2, caplog):
    with caplog.at_level(logging.WARNING, logger="lmnb.server"):
        with start_server(smollm2, host="0.0.0.0", api_key=API_KEY) as keyed:
            assert _health(keyed)["status"] == "ok"
        assert not _warnings(caplog)
        with start_server(smollm2, host="0.0.0.0") as open_:
            assert _health(open_)["status"] == "ok"
    [rec] = _warnings(caplog)
    assert rec.levelno == logging.WARNING and "without an API key" in rec.getMessage()
    assert "--api-key" in rec.getMessage()


# -- API keys --------------------------------------------------------------------------
def test_key_is_compared_in_constant_time(keyed_server, monkeypatch):
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert httpx.get(f"{keyed_server.url}/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = httpx.get(f"{keyed_server.url}/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    assert seen == [(b"nope", API_KEY.encode()), (API_KEY.encode(), API_KEY.encode())]


BAD_AUTH = [None, "Bearer wrong", "Bearer", "Bearer \t x", f"Basic {API_KEY}", API_KEY,
            f"Bearer {API_KEY}x", f"Bearer {API_KEY[:-1]}", f"Bearer {API_KEY} {API_KEY}",
            "Bearer \u043a\u043b\u044e\u0447".encode(), b"Bearer \xff\xfe"]


@pytest.mark.parametrize("auth", BAD_AUTH)
def test_bad_keys_are_401(keyed_server, auth):
    headers = {} if auth is None else {"Authorization": auth}
    for method, path, body in [("GET", "/models", None), ("POST", "/completions", b"x" * (5 * 2**20)),
                               ("POST", "/chat/completions", b"{}")]:
        r = httpx.request(method, keyed_server.url + path, headers=headers, content=body)
        err = _error(r, 401)      # refused before the body is read: not a 413 nor a 400
        assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"


def test_good_key_spellings(keyed_server):
    for auth in (f"Bearer {API_KEY}", f"bearer {API_KEY}", f"Bearer   {API_KEY}"):
        assert httpx.get(f"{keyed_server.url}/models", headers={"Authorization": auth}).status_code == 200
    client = openai.OpenAI(base_url=keyed_server.url, api_key=API_KEY, max_retries=0)
    assert client.completions.create(model="smollm2", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=keyed_server.url, api_key="sk-wrong", max_retries=0).models.list()
    assert "API key" in e.value.body["message"]


# -- request size and time -------------------------------------------------------------------
def _raw(handle, head: str, body: bytes, wait: float = 10.0) -> bytes:
    """Send a hand-made request; return all the server answers until it closes."""
    with socket.create_connection((handle.host, handle.port), timeout=wait) as s:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_body_size_limit(server, limited):
    big = b'{"prompt": "' + b"x" * LIMIT + b'"}'
    err = _error(httpx.post(f"{server.url}/completions", content=big), 413)
    assert err["code"] == "request_too_large" and f"limit of {LIMIT} bytes" in err["message"]
    # chunked: no Content-Length at all
    r = httpx.post(f"{server.url}/completions", content=iter([big[:1000], big[1000:]]))
    assert "content-length" not in r.request.headers and _error(r, 413)
    # lying Content-Length: a huge one is refused at once, before the body arrives
    out = _raw(server, f"Content-Length: {10 ** 12}\r\nConnection: close\r\n", b'{"prompt": "hi"}')
    assert out.startswith(b"HTTP/1.1 413") and b"request_too_large" in out
    # ... one that claims more than is sent gets 408 once the body timeout passes
    out = _raw(limited, "Content-Length: 900\r\n", b'{"prompt": "hi"')
    assert out.startswith(b"HTTP/1.1 408") and b"request_timeout" in out   # and the server closed it
    # ... one that claims less than is sent: only that prefix is the body, not valid JSON
    r = _raw(server, "Content-Length: 8\r\nConnection: close\r\n", b'{"prompt": "hi", "max_tokens": 1}')
    assert r.startswith(b"HTTP/1.1 400") and b"not valid JSON" in r
    assert _health(server) == {"status": "ok", "requests_in_flight": 0}


def _nested(depth: int) -> bytes:
    """A body whose `user` field holds `depth` nested lists (the body itself is one more level)."""
    return b'{"prompt": "Hi", "user": ' + b"[" * depth + b"]" * depth + b"}"


def test_choices_and_depth_limits(server):
    cases = [(json.dumps({"prompt": ["Hi"] * 257}).encode(), "257 prompts x n=1 asks for 257 generations"),
             (json.dumps({"prompt": ["Hi"] * 20, "n": 16}).encode(), "allows 256 per request"),
             (_nested(63), "user: Input should be a valid string"),   # deep, yet within the limit
             (_nested(64), "nests deeper than 64 levels; flatten it"),
             (_nested(5000), "nests deeper than 64 levels; flatten it")]   # deeper than Python recurses
    for raw, words in cases:
        err = _error(httpx.post(f"{server.url}/completions", content=raw), 400)
        assert words in err["message"], err


# -- token limits -------------------------------------------------------------------------------
def test_max_tokens_is_clamped(limited):
    client = openai.OpenAI(base_url=limited.url, api_key="-", max_retries=0)
    kw = {"model": "smollm2", "temperature": 0, "extra_body": {"ignore_eos": True}}
    for asked in (10**6, 2**80):
        out = client.completions.create(prompt="Once upon a time", max_tokens=asked, **kw)
        assert out.usage.completion_tokens == 4 and out.choices[0].finish_reason == "length"
    msgs = [{"role": "user", "content": "Tell me a long story."}]
    for extra in ({}, {"max_tokens": 10**9}, {"max_completion_tokens": 10**9}):
        out = client.chat.completions.create(messages=msgs, **kw, **extra)
        assert out.usage.completion_tokens == 4 and out.choices[0].finish_reason == "length"


def test_prompt_longer_than_context_is_400(server, smollm2):
    n = smollm2.context_len
    long_text = "word " * (n + 10)
    bodies = [("/completions", {"prompt": long_text}), ("/completions", {"prompt": [1] * (n + 1)}),
              ("/chat/completions", {"messages": [{"role": "user", "content": long_text}]})]
    for path, body in bodies:
        err = _error(httpx.post(server.url + path, json=body | {"max_tokens": 2}, timeout=60), 400)
        assert f"the context holds {n}" in err["message"] and "shorten the prompt" in err["message"]
    assert wait_idle(smollm2)["in_use_tokens"] == 0


# -- many clients at once ---------------------------------------------------------------------
SYSTEM = "You answer with one short sentence."
TOPICS = ["rain", "bread", "a violin", "the moon", "chess", "coffee", "a lighthouse", "owls"]
MODES = ["chat", "chat-stream", "completion", "completion-stream"]


def _ask(client, tok, topic: str, mode: str) -> str:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Say something about {topic}."}]
    stream = mode.endswith("stream")
    if mode.startswith("chat"):
        out = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=8,
                                             temperature=0, stream=stream)
        return "".join(c.choices[0].delta.content or "" for c in out) if stream else out.choices[0].message.content
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    out = client.completions.create(model="default", prompt=prompt, max_tokens=8, temperature=0, stream=stream)
    return "".join(c.choices[0].text for c in out) if stream else out.choices[0].text


def test_sixty_four_concurrent_clients(server, smollm2):
    tok = smollm2.tokenizer
    alone = {}
    for topic in TOPICS:   # each request answered alone first
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Say something about {topic}."}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        alone[topic] = smollm2.generate(prompt, max_new_tokens=8, temperature=0)[0]["text"]
    client = openai.OpenAI(base_url=server.url, api_key="-", max_retries=0, timeout=300)
    jobs = [(t, m) for m in MODES for t in TOPICS] * 2
    smollm2.flush_cache()   # the prompts are computed in batches too, not only read from the cache
    before = smollm2.stats()
    with ThreadPoolExecutor(64) as pool:
        got = list(pool.map(lambda job: _ask(client, tok, *job), jobs))
    assert got == [alone[t] for t, _ in jobs]
    after = smollm2.stats()
    assert after["finished_requests"] - before["finished_requests"] == 64
    assert after["aborted_requests"] == before["aborted_requests"]
    stats = wait_idle(smollm2)
    assert stats["running"] == stats["waiting"] == stats["in_use_tokens"] == 0
    smollm2.check_integrity()
    assert _health(server) == {"status": "ok", "requests_in_flight": 0}
