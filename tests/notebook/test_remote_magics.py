"""`%lm model openai:NAME --base-url URL` and `%%lm --api-spec-tokens N` against a real
`lmnb serve` (in-process, on 127.0.0.1) through the official openai client."""
from __future__ import annotations

import pytest

CELL = """Name: Alan Turing
Birthdate: June 23, 1912
Job: mathematician

Name: Ada Lovelace
Birthdate: {{ gen("birth", max_tokens=12, stop="\\n") }}
Job: {{ gen("job", max_tokens=12, stop="\\n") }}
"""


@pytest.fixture(scope="module")
def remote_shell(smollm2):
    from IPython.core.interactiveshell import InteractiveShell

    from lmnb.magics.lm_magics import LmMagics
    from lmnb.magics.session import KernelSession
    from lmnb.server import start_server

    with start_server(smollm2, port=0) as server:
        sh = InteractiveShell.instance()
        magics = LmMagics(sh, session=KernelSession())
        sh.register_magics(magics)
        yield sh, server
        magics.session.attach(smollm2)   # leave the shared shell on the local model


def test_openai_model_with_base_url_and_speculation(remote_shell, capsys):
    sh, server = remote_shell
    sh.run_line_magic("lm", f"model openai:smollm2 --base-url {server.url} --completion")
    assert "openai:smollm2" in capsys.readouterr().out
    sh.run_cell_magic("lm", "-o plain --no-stream", CELL)
    sh.run_cell_magic("lm", "-o spec --no-stream --api-spec-tokens 32", CELL)
    plain, spec = sh.user_ns["plain"], sh.user_ns["spec"]
    assert plain["birth"] and plain["job"]
    # the birth field is identical; later fields may differ by a token boundary (the
    # speculative call sees the model's own tokens of "Job:", a per-field call re-encodes it)
    assert spec["birth"] == plain["birth"] and spec["job"]
    assert plain.api_usage["calls"] >= 2 * spec.api_usage["calls"]


def test_remote_options_need_an_openai_spec(remote_shell, capsys):
    sh, server = remote_shell
    from lmnb.magics.errors import CellError

    with pytest.raises(CellError, match="go with %lm model openai:NAME"):   # the cell fails
        sh.run_line_magic("lm", f"model smollm2 --base-url {server.url}")
