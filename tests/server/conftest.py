"""Servers for the HTTP tests: in-process ones over the session's smollm2 runtime, and
one `lmnb serve` subprocess."""
from __future__ import annotations

import time

import pytest

from tests.serve_process import serve_process

API_KEY = "sk-lmnb-test"


@pytest.fixture(scope="session")
def server(smollm2):
    """In-process server without a key, small body limit."""
    from lmnb.server import start_server

    with start_server(smollm2, max_body_bytes=64 * 1024, max_tokens_limit=512) as handle:
        yield handle
    assert not handle.running


@pytest.fixture(scope="session")
def keyed_server(smollm2):
    from lmnb.server import start_server

    with start_server(smollm2, api_key=API_KEY) as handle:
        yield handle


@pytest.fixture(scope="session")
def cli_server():
    """`lmnb serve --port 0` as a real subprocess; yields its base URL read from stdout."""
    with serve_process("--api-key", API_KEY, env={"LMNB_API_KEY": ""}) as url:
        yield url


def wait_idle(rt, timeout: float = 20.0) -> dict:
    """Cache stats once no request runs or waits any more."""
    deadline = time.monotonic() + timeout
    while True:
        stats = rt.cache_stats()
        if (stats["running"] == 0 and stats["waiting"] == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)
