"""`select` on a completion model behind a server that refuses `echo` with
`max_tokens=0` the way llama.cpp's server does (500, connection dropped) and ignores
`echo` otherwise: the program still runs, with one warning, by generating and matching;
the backend remembers the form that works."""
from __future__ import annotations

import json
import socket
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import lmnb as lm


class LlamaCppLike:
    """127.0.0.1 server for /v1/completions: echo+max_tokens=0 -> a 500 head and a dropped
    connection; anything else -> a completion of `reply` without prompt logprobs."""

    def __init__(self, reply: str) -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                outer.bodies.append(body)
                if body.get("echo") and body.get("max_tokens") == 0:
                    self.send_response(500)
                    self.send_header("content-length", "1000")
                    self.end_headers()
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)   # the rest never comes
                    self.close_connection = True
                    return
                n = max(1, len(body["prompt"]) if isinstance(body["prompt"], list) else 1)
                data = json.dumps({
                    "id": "c", "object": "text_completion", "created": 0, "model": "m",
                    "choices": [{"index": i, "text": outer.reply_text, "finish_reason": "stop", "logprobs": None}
                                for i in range(n)],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.reply_text = reply
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def llama_cpp():
    srv = LlamaCppLike(" green, I think")
    yield srv
    srv.close()


@lm.function
def colour(s):
    s += "The grass is"
    s += lm.select("c", [" blue", " green", " red"])


def test_select_falls_back_to_generation_with_one_warning(llama_cpp):
    backend = lm.OpenAI("m", base_url=llama_cpp.url, is_chat_model=False, max_retries=2, timeout=10)
    with pytest.warns(RuntimeWarning) as caught:
        st = colour.run(backend=backend)
    assert st["c"] == " green" and st.text() == "The grass is green"
    msgs = [str(w.message) for w in caught]
    assert any("refused echo with max_tokens=0" in m for m in msgs)
    assert any("generates and matches" in m for m in msgs)
    assert all("\n" not in m for m in msgs)
    tried = [(b.get("echo", False), b.get("max_tokens")) for b in llama_cpp.bodies]
    assert tried[:2] == [(True, 0), (True, 1)] and tried[2][0] is False   # then a generation
    assert "regex" in llama_cpp.bodies[2]   # constrained where the server takes it
    # the working form is remembered: no more probes, no more warnings
    before = len(llama_cpp.bodies)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st = colour.run(backend=backend)
    assert st["c"] == " green" and len(llama_cpp.bodies) == before + 1


def test_other_errors_are_not_mistaken_for_a_refusal(scripted):
    srv = scripted((401, 0.0))
    backend = lm.OpenAI("m", base_url=srv.url, is_chat_model=False, max_retries=0, api_key="k")
    with pytest.raises(lm.LmnbError, match="rejected the API key"):
        colour.run(backend=backend)
    assert srv.requests == 1
