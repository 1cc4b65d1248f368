"""`%load_ext lmnb`: the `%%lm` / `%lm` magics (see lm_magics.py, cell.py, session.py)."""
from __future__ import annotations


def load_ipython_extension(ipython) -> None:
    from lmnb.magics.display import register_formatters
    from lmnb.magics.lm_magics import LmMagics

    magics = LmMagics(ipython)
    ipython.register_magics(magics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)
    register_formatters(ipython)


def unload_ipython_extension(ipython) -> None:
    from lmnb.magics.session import kernel_session

    kernel_session().close()
