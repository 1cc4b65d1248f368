"""When the engine thread fails, every waiting HTTP request hears of it (a 503, or an
error event in its stream), /health says so and new requests get a clear 503."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from lmnb.server import start_server

LONG = {"prompt": "abc", "max_tokens": 2000, "ignore_eos": True, "temperature": 0}


@pytest.fixture()
def doomed():
    """A runtime of its own (it is broken on purpose) behind a server."""
    import lmnb as lm

    rt = lm.Runtime("dummy:tiny", device="cpu")
    with start_server(rt) as handle:
        yield rt, handle
    rt.shutdown()


def _stream(url: str) -> str:
    return httpx.post(f"{url}/completions", json=LONG | {"stream": True}, timeout=60).text


def test_engine_failure_reaches_every_request(doomed):
    rt, handle = doomed
    with ThreadPoolExecutor(4) as pool:
        plain = [pool.submit(httpx.post, f"{handle.url}/completions", json=LONG, timeout=60) for _ in range(2)]
        streams = [pool.submit(_stream, handle.url) for _ in range(2)]
        deadline = time.monotonic() + 30
        while rt.cache_stats()["running"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)

        def broken(*args):
            raise RuntimeError("device lost")

        rt.engine.runner.run = broken   # the next forward step fails on the engine thread
        for f in plain:
            r = f.result()
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
            assert "device lost" in r.json()["error"]["message"]
        for f in streams:
            text = f.result()
            assert '"code": "engine_unavailable"' in text and "device lost" in text
            assert not text.endswith("data: [DONE]\n\n")
    base = handle.url.removesuffix("/v1")
    assert httpx.get(f"{base}/health").json() == {"status": "engine stopped", "requests_in_flight": 0}
    r = httpx.post(f"{handle.url}/completions", json={"prompt": "abc", "max_tokens": 2})
    assert r.status_code == 503 and "\n" not in r.json()["error"]["message"]
