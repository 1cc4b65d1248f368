"""lm.OpenAI error paths over real HTTP: missing key, unreachable server, HTTP errors,
timeouts, and bounded retries with backoff for 429/5xx (the SDK's)."""
from __future__ import annotations

import socket
import time

import pytest

import lmnb as lm
from lmnb.errors import LmnbError


def _program(backend, **run):
    prog = lm.function(lambda s: s.__iadd__("Hello" + lm.gen("x", max_tokens=4)))
    return prog.run(backend=backend, **run)


def test_missing_key_names_the_env_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LmnbError, match=r"OPENAI_API_KEY.*%env OPENAI_API_KEY=.*api_key="):
        lm.OpenAI("gpt-4o-mini")
    with pytest.raises(LmnbError, match="OPENAI_API_KEY"):
        lm.OpenAI("m", base_url="https://models.example.com/v1")
    local = lm.OpenAI("m", base_url="http://127.0.0.1:9/v1")   # a local server needs no key
    assert local.client.api_key == "lmnb-no-key"
    assert lm.OpenAI("m", base_url="https://models.example.com/v1", api_key="k").client.api_key == "k"


def test_unreachable_url_is_one_line_with_the_url():
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    be = lm.OpenAI("m", base_url=f"http://127.0.0.1:{port}/v1", is_chat_model=False, max_retries=1)
    t = time.monotonic()
    with pytest.raises(LmnbError) as e:
        _program(be)
    msg = str(e.value)
    assert f"cannot reach http://127.0.0.1:{port}/v1/completions" in msg and "\n" not in msg
    assert "is the server running" in msg and msg.startswith("gen('x'): ")
    assert time.monotonic() - t < 10


def test_http_500_after_bounded_retries(scripted):
    srv = scripted((500, 0))
    be = lm.OpenAI("m", base_url=srv.url, is_chat_model=False, max_retries=2)
    with pytest.raises(LmnbError) as e:
        _program(be)
    assert f"{srv.url}/completions answered HTTP 500 after 2 retries: scripted 500" in str(e.value)
    assert srv.requests == 3   # the first try and two retries, then it stops


def test_http_400_is_not_retried(scripted):
    srv = scripted((400, 0))
    be = lm.OpenAI("m", base_url=srv.url, is_chat_model=False, max_retries=3)
    with pytest.raises(LmnbError, match=r"answered HTTP 400: scripted 400"):
        _program(be)
    assert srv.requests == 1


def test_429_is_retried_then_succeeds(scripted):
    srv = scripted((429, 0), (429, 0), (200, 0))
    be = lm.OpenAI("m", base_url=srv.url, is_chat_model=False, max_retries=3)
    st = _program(be)
    assert st["x"] == " ok" and srv.requests == 3
    assert st.api_usage["calls"] == 1 and st.api_usage["prompt_tokens"] == 3


def test_timeout_is_one_line_with_the_url(scripted):
    srv = scripted((200, 3.0))
    be = lm.OpenAI("m", base_url=srv.url, is_chat_model=False, timeout=0.3, max_retries=0)
    t = time.monotonic()
    with pytest.raises(LmnbError) as e:
        _program(be)
    assert f"{srv.url}/completions: no answer within 0.3 s" in str(e.value)
    assert "timeout=" in str(e.value) and time.monotonic() - t < 2.5


def test_options_outside_the_openai_api_are_errors(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    be = lm.OpenAI("gpt-4o-mini")
    assert be.is_chat and not be.server_extras
    assert not lm.OpenAI("gpt-3.5-turbo-instruct").is_chat
    prog = lm.function(lambda s: s.__iadd__(lm.user("n?") + lm.assistant(lm.gen("n", regex=r"\d+"))))
    with pytest.raises(LmnbError, match=r"gen\('n'\): regex: https://api.openai.com/v1 is the OpenAI API"):
        prog.run(backend=be)


def test_chat_turn_with_text_needs_speculation(scripted):
    srv = scripted((200, 0))
    be = lm.OpenAI("m", base_url=srv.url)
    prog = lm.function(lambda s: s.__iadd__(lm.user("Who?") + lm.assistant("Name:" + lm.gen("n"))))
    with pytest.raises(LmnbError, match="num_api_spec_tokens=N"):
        prog.run(backend=be)
    assert srv.requests == 0
    with pytest.raises(LmnbError, match="is a chat model: write the prompt as system/user/assistant"):
        _program(be)


def test_bad_spec_option():
    with pytest.raises(LmnbError, match="num_api_spec_tokens must be an int >= 0"):
        _program(lm.OpenAI("m", base_url="http://127.0.0.1:9/v1"), num_api_spec_tokens=-1)
    with pytest.raises(LmnbError, match="unknown option 'num_spec'"):
        lm.function(num_spec=3)(lambda s: None)
