#!/usr/bin/env bash
# SGLang's own frontend, for the test that drives `lmnb serve` with it
# (tests/server/test_sglang_frontend.py). Installed into its own folder, not into the
# environment: SGLang pulls in triton, which lmnb's own tests must not see on a CPU
# machine. The test appends the folder to sys.path of a subprocess. Never fatal: the
# test skips when the folder has no importable sglang.
cd "$(dirname "$0")/.."
dest="${LMNB_SGLANG_DIR:-.sglang-frontend}"
if [ -f "$dest/.installed" ]; then exit 0; fi
rm -rf "$dest"
if python -m pip install -q --disable-pip-version-check --target "$dest" --no-deps sglang==0.5.23 \
   && python -m pip install -q --disable-pip-version-check --target "$dest" \
        orjson pybase64 packaging pillow starlette msgspec pyzmq requests numpy tqdm aiohttp \
        IPython pydantic triton; then
    touch "$dest/.installed"
else
    echo "install_sglang.sh: SGLang's frontend could not be installed; its test will skip" >&2
fi
exit 0
