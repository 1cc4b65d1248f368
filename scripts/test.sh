#!/usr/bin/env bash
# All tests: install (Python packages, the embedded model, and for the browser test
# Debian's Chromium + the widget JS: never fatal, the test skips without them), then the
# unit/integration suite and the tutorial notebooks (nbval). GPU tests skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/install_browser.sh
python -m pytest -q -p no:cacheprovider --durations=15 tests notebooks --nbval-lax "$@"
