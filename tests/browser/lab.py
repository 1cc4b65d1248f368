"""A JupyterLab server for the browser test: 127.0.0.1, a free port, a random token, its
own settings/workspace folders (nothing from the user's JupyterLab), stopped by its pid.

`missing()` says why the test cannot run here (no Chromium, no Playwright, no JupyterLab);
`scripts/install_browser.sh` installs all three.
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = Path(os.environ.get("LMNB_CHROMIUM", "/usr/bin/chromium"))
# Playwright drives Debian's Chromium (it cannot download its own here); no name resolves
# except the local server, so a page that reaches for a CDN fails instead of going out
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is absent (bash scripts/install_browser.sh installs Debian's chromium)"
    for module, package in (("playwright", "playwright"), ("jupyterlab", "jupyterlab")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (bash scripts/install_browser.sh installs it)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """`with Lab(root) as lab:` a running JupyterLab serving `root`; `lab.url(path)`."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log_path = root, log
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Lab:
        settings = self.root.parent / "lab-settings"
        tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
        tracker.parent.mkdir(parents=True, exist_ok=True)
        # every cell in the DOM (no virtual scrolling), so the test can read any output
        tracker.write_text(json.dumps({"windowingMode": "none"}))
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(self.root.parent / "jupyter-config"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                           os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={self.root.parent / 'lab-workspaces'}",
               "--LabApp.extension_manager=readonly"]   # never asks PyPI for extensions
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")   # CI containers run as root
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.proc.returncode}); see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status?token={self.token}",
                                            timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"JupyterLab did not answer in {timeout:.0f}s; see {self.log_path}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:   # kernels first, so none outlives the server
                for s in self.api("sessions"):
                    self.api(f"sessions/{s['id']}", "DELETE")
            except OSError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
