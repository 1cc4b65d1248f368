"""The kernel session: a model loads once, switching frees the old one, `%lm model`."""
from __future__ import annotations

import pytest

from lmnb.errors import LmnbError
from lmnb.magics.session import KernelSession


def test_load_once_switch_and_close(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from lmnb.magics.lm_magics import LmMagics

    session = KernelSession(default_spec="dummy:tiny")
    assert session.status().startswith("no model loaded")
    magics = LmMagics(InteractiveShell.instance(), session=session)
    magics.lm("model dummy:tiny")
    first = session.runtime
    out = capsys.readouterr().out    # (a terminal shell also prints the live load display's redraws)
    assert out.splitlines()[-1].startswith("model: dummy:tiny on cpu") and "warm: done" in out
    magics.lm("model dummy:tiny")
    assert session.runtime is first                       # reused, not reloaded
    with pytest.raises(LmnbError, match="unknown model spec"):
        session.load("nope")
    assert session.runtime is first and first.engine.alive()   # a bad spec keeps the current model
    from lmnb.magics.errors import CellError

    with pytest.raises(CellError, match="^lmnb: LmnbError: unknown dummy arch"):
        magics.lm("model dummy:tiny-other")
    assert first.engine.alive()
    magics.lm("model dummy:smollm2-135m")                 # switching frees the old model
    assert not first.engine.alive() and session.runtime.spec == "dummy:smollm2-135m"
    second = session.runtime
    session.close()
    assert not second.engine.alive() and session.runtime is None
    session.close()                                        # idempotent
    assert session.backend() is not None and session.runtime is not first   # next use loads the default
    session.close()
