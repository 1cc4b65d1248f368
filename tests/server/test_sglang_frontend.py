"""SGLang's own frontend package (sglang==0.5.23, installed by scripts/install_sglang.sh
into its own folder) drives a real `lmnb serve` through `sgl.RuntimeEndpoint`: gen,
select (scored from prompt logprobs), fork, regex, dtype, chat roles, streaming,
run_batch, cache_prefix, server info and flush. Skips only when that install failed."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.serve_process import serve_process

ROOT = pathlib.Path(__file__).resolve().parents[2]
SGLANG_DIR = pathlib.Path(os.environ.get("LMNB_SGLANG_DIR", ROOT / ".sglang-frontend"))


@pytest.fixture(scope="module")
def results():
    if not (SGLANG_DIR / ".installed").exists():
        pytest.skip(f"SGLang's frontend is not installed in {SGLANG_DIR} (bash scripts/install_sglang.sh)")
    # this checkout's lmnb, whichever the `lmnb` script on PATH was installed from
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with serve_process(env=env) as url:
        base = url[: -len("/v1")]
        proc = subprocess.run([sys.executable, str(ROOT / "tests/server/sglang_client.py"), base, str(SGLANG_DIR)],
                              capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-4000:]
    return json.loads(line[0][len("RESULT "):])


def test_gen_through_sglang(results):
    assert results["version"] == "0.5.23" and results["model"] == "smollm2"
    assert isinstance(results["gen"], str) and results["gen"] and "\n" not in results["gen"]
    m = results["gen_meta"]
    assert m["finish_reason"]["type"] in ("stop", "length") and m["prompt_tokens"] > 0


def test_select_scores_every_choice(results):
    assert results["select"] in (" blue", " green", " purple")
    lps = results["select_logprobs"]
    assert len(lps) == 3 and all(x < 0 for x in lps)
    assert results["select"] == [" blue", " green", " purple"][lps.index(max(lps))]


def test_fork_regex_dtype_chat(results):
    text, tips = results["fork"]
    assert text.startswith("Here are two tips about sleep.") and len(tips) == 2
    assert all(isinstance(t, str) and t for t in tips)
    assert len(results["regex"]) == 4 and results["regex"].startswith("19") and results["regex"].isdigit()
    assert results["dtype_int"].lstrip("-").isdigit()
    reply, roles = results["chat"]
    assert reply and roles == ["system", "user", "assistant"]


def test_stream_batch_cache_prefix(results):
    pieces = results["stream"]
    assert len(pieces) > 1 and "".join(pieces) == results["stream_final"]
    assert len(results["batch"]) == 2 and all(isinstance(a, str) for a in results["batch"])
    assert results["cache_prefix"] is True and "context_length" in results["server_info_keys"]
