#!/usr/bin/env bash
# All tests: install, then the unit/integration suite and the tutorial notebooks (nbval).
# GPU tests skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m pytest -q -p no:cacheprovider --durations=15 tests notebooks --nbval-lax "$@"
