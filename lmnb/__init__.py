"""lmnb: structured language-model programs in Jupyter on a kernel-resident runtime.

Public names are resolved lazily so `import lmnb` and `%load_ext lmnb` stay fast and
never import GPU packages.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Runtime": "lmnb.runtime.runtime",
    "SamplingParams": "lmnb.runtime.sampling_params",
    "LmnbError": "lmnb.errors",
    "EngineError": "lmnb.errors",
    "RequestAborted": "lmnb.errors",
}


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'lmnb' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


def load_ipython_extension(ipython) -> None:
    from lmnb.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from lmnb.magics import unload_ipython_extension as unload

    unload(ipython)
