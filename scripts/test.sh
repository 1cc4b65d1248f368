#!/usr/bin/env bash
# All tests: install (Python packages, the embedded model, and for the browser test
# Debian's Chromium + the widget JS, and SGLang's frontend for the compatibility test:
# never fatal, those tests skip without them), then the
# unit/integration suite and the tutorial notebooks (nbval). GPU tests skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/install_browser.sh
bash scripts/install_sglang.sh
# the browser test first and alone (JupyterLab and Chromium starting beside a busy worker
# time out), then the rest on two workers (CI has two cores), whole files each so module
# fixtures load once
rc=0
python -m pytest -q -p no:cacheprovider --durations=5 tests/browser "$@" || rc=$?
python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25 tests notebooks --nbval-lax \
  --ignore=tests/browser "$@" || rc=$?
exit $rc
