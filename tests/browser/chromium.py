"""Headless Chromium and the widget manager's JavaScript, both local (tests have no internet).

`scripts/install_browser.sh` installs Debian's chromium and unpacks the npm packages
`@jupyter-widgets/html-manager` and `requirejs` into `js_dir()`; a test skips when either
is missing. Chromium runs with a fresh profile, no background networking and a host
resolver that answers every name with "not found", so a page that still points at a
CDN fails instead of reaching out.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

CHROMIUM = Path(os.environ.get("LMNB_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND"]
BUDGET_MS = 20_000   # virtual time: the page's timers run, Chromium does not wait that long


def js_dir() -> Path:
    cache = os.environ.get("LMNB_CACHE_DIR") or Path.home() / ".cache" / "lmnb"
    return Path(os.environ.get("LMNB_BROWSER_JS_DIR") or Path(cache) / "browser-js")


def widget_js() -> dict[str, Path]:
    """The two scripts nbconvert's HTML needs: require.js and the widget embedder."""
    return {"require": js_dir() / "requirejs" / "require.js",
            "embed": js_dir() / "html-manager" / "dist" / "embed-amd.js"}


def missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is absent (bash scripts/install_browser.sh installs Debian's chromium)"
    for path in widget_js().values():
        if not path.is_file():
            return f"{path} is absent (bash scripts/install_browser.sh fetches it from npm)"
    return None


def _run(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}",
           f"--virtual-time-budget={BUDGET_MS}", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def dump_dom(page: Path, profile: Path, width: int) -> str:
    """The page's DOM after its scripts ran (serialised by Chromium)."""
    return _run(page, profile, f"--window-size={width},1000", "--dump-dom").stdout


def screenshot(page: Path, profile: Path, out: Path, width: int, height: int) -> Path:
    _run(page, profile, f"--window-size={width},{height}", f"--screenshot={out}")
    return out
