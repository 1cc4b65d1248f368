#!/usr/bin/env bash
# The main job: install, then execute notebooks/01-quickstart.ipynb on the embedded model
# and print its cells and outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m lmnb.quickstart
