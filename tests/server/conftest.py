"""Servers for the HTTP tests: in-process ones over the session's smollm2 runtime, and
one `lmnb serve` subprocess."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

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
    exe = shutil.which("lmnb")
    cmd = [exe] if exe else [sys.executable, "-m", "lmnb"]
    cmd += ["serve", "--model", "smollm2", "--port", "0", "--api-key", API_KEY,
            "--device", "cpu", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LMNB_API_KEY": ""})
    url = _read_url(proc, timeout=180)
    yield url
    proc.terminate()   # graceful shutdown; uvicorn then re-raises SIGTERM
    try:
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), proc.stderr.read()
    finally:
        proc.kill()


def _read_url(proc: subprocess.Popen, timeout: float) -> str:
    found: list[str] = []

    def reader():
        for line in proc.stdout:
            if "listening on" in line:
                found.append(line.split("listening on", 1)[1].strip())
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not found:
        proc.kill()
        raise AssertionError(f"lmnb serve printed no URL: {proc.stderr.read()[-2000:]}")
    return found[0]


def wait_idle(rt, timeout: float = 20.0) -> dict:
    """Cache stats once no request runs or waits any more."""
    deadline = time.monotonic() + timeout
    while True:
        stats = rt.cache_stats()
        if (stats["running"] == 0 and stats["waiting"] == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)
