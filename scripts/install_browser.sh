#!/usr/bin/env bash
# What the browser test (tests/browser) needs besides the test extra: JupyterLab (the
# `lab` extra), Playwright's Python package (it drives the browser; it cannot download
# browsers here, so it runs Debian's) and Debian's Chromium. Quiet and idempotent; a
# failing install prints a warning and the browser test then skips, so this script never
# fails CI.
set -uo pipefail
cd "$(dirname "$0")/.."

warn() { echo "install_browser: warning: $*; the browser test will skip" >&2; }

install_python() {
    if ! timeout 900 python -m pip install -q --disable-pip-version-check -e ".[lab]" playwright \
            >/dev/null 2>&1; then
        warn "pip install jupyterlab playwright failed"
    fi
}

install_chromium() {
    [ -x /usr/bin/chromium ] && return 0
    if ! command -v apt-get >/dev/null; then warn "no apt-get to install chromium"; return 0; fi
    local sudo=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo -n"
    # no recommends (printing, udev, ...) but one font family, so screenshots show text
    if ! { timeout 300 $sudo apt-get update -qq && timeout 900 $sudo env DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } >/dev/null 2>&1; then
        warn "apt-get install chromium failed"
    fi
}

install_python
install_chromium
exit 0
