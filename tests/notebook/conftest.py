"""Magic tests drive a real IPython InteractiveShell over the session's smollm2."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def shell(smollm2):
    from IPython.core.interactiveshell import InteractiveShell

    from lmnb.magics.display import register_formatters
    from lmnb.magics.lm_magics import LmMagics
    from lmnb.magics.session import KernelSession

    sh = InteractiveShell.instance()
    session = KernelSession()
    session.attach(smollm2)
    magics = LmMagics(sh, session=session)
    sh.register_magics(magics)
    if magics not in sh.configurables:
        sh.configurables.append(magics)
    register_formatters(sh)
    sh.lm_magics = magics
    yield sh
    smollm2.check_integrity()


@pytest.fixture
def run(shell, capsys):
    """run(cell, line="") -> (return value, stdout, stderr) of one %%lm cell."""
    def go(cell: str, line: str = ""):
        capsys.readouterr()
        value = shell.run_cell_magic("lm", line, cell)
        out, err = capsys.readouterr()
        return value, out, err
    return go
