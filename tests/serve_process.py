"""`lmnb serve` as a real subprocess for the HTTP tests (server and remote suites)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading


@contextlib.contextmanager
def serve_process(*args: str, env: dict | None = None, check_exit: bool = True):
    """Start `lmnb serve --model smollm2 --port 0 --dtype float32 ...` (the exact fp32 path,
    like the session's runtime fixture, so answers compare); yield the URL it prints."""
    exe = shutil.which("lmnb")
    cmd = [exe] if exe else [sys.executable, "-m", "lmnb"]
    cmd += ["serve", "--model", "smollm2", "--port", "0", "--device", "cpu", "--dtype", "float32",
            "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    url = _read_url(proc, timeout=180)
    try:
        yield url
    finally:
        proc.terminate()   # graceful shutdown; uvicorn then re-raises SIGTERM
        try:
            code = proc.wait(timeout=30)
            if check_exit:
                assert code in (0, -signal.SIGTERM), proc.stderr.read()
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
