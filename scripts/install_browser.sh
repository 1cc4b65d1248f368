#!/usr/bin/env bash
# What the browser test (tests/browser) needs besides Python packages: Debian's headless
# Chromium, and the Jupyter widget manager + require.js from the npm registry (nbconvert's
# HTML loads them from a CDN, which tests cannot reach). Quiet and idempotent; a failing
# install prints a warning and the browser test then skips, so this script never fails CI.
set -uo pipefail

JS_DIR="${LMNB_BROWSER_JS_DIR:-${LMNB_CACHE_DIR:-$HOME/.cache/lmnb}/browser-js}"
# html-manager 1.x is the embedder of ipywidgets 8 (widget protocol 2.x)
PACKAGES=("@jupyter-widgets/html-manager@1.0.15:html-manager" "requirejs@2.3.8:requirejs")

warn() { echo "install_browser: warning: $*; the browser test will skip" >&2; }

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

# npm pack fetches one tarball per package (no dependency tree): both files are bundles.
install_js() {
    local spec dir tmp
    if ! command -v npm >/dev/null; then warn "npm is absent, the widget manager cannot be fetched"; return 0; fi
    for entry in "${PACKAGES[@]}"; do
        spec="${entry%:*}" dir="$JS_DIR/${entry##*:}"
        [ -f "$dir/.installed-$(basename "$spec")" ] && continue
        tmp="$(mktemp -d)"
        if (cd "$tmp" && timeout 300 npm pack --silent "$spec" >/dev/null 2>&1 && tar xzf ./*.tgz); then
            rm -rf "$dir" && mkdir -p "$JS_DIR" && mv "$tmp/package" "$dir" \
                && touch "$dir/.installed-$(basename "$spec")"
        else
            warn "npm pack $spec failed"
        fi
        rm -rf "$tmp"
    done
}

install_chromium
install_js
exit 0
