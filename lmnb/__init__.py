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
    "GenResult": "lmnb.runtime.results",
    "GenMeta": "lmnb.runtime.results",
    "StreamEvent": "lmnb.runtime.results",
    "SelectResult": "lmnb.runtime.results",
    "LmnbError": "lmnb.errors",
    "EngineError": "lmnb.errors",
    "RequestAborted": "lmnb.errors",
    "function": "lmnb.lang",
    "gen": "lmnb.lang",
    "gen_int": "lmnb.lang",
    "gen_string": "lmnb.lang",
    "select": "lmnb.lang",
    "system": "lmnb.lang",
    "user": "lmnb.lang",
    "assistant": "lmnb.lang",
    "system_begin": "lmnb.lang",
    "system_end": "lmnb.lang",
    "user_begin": "lmnb.lang",
    "user_end": "lmnb.lang",
    "assistant_begin": "lmnb.lang",
    "assistant_end": "lmnb.lang",
    "fork": "lmnb.lang",
    "set_default_backend": "lmnb.lang",
    "get_default_backend": "lmnb.lang",
    "ProgramState": "lmnb.lang",
    "ForkGroup": "lmnb.lang",
    "Function": "lmnb.lang",
    "Backend": "lmnb.lang",
    "RuntimeBackend": "lmnb.lang",
    "run_program": "lmnb.lang",
    "run_programs": "lmnb.lang",
    "run_template": "lmnb.lang.template",
    "compile_template": "lmnb.lang.template",
    "TemplateError": "lmnb.lang.template",
    "OpenAI": "lmnb.lang.openai_backend",
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
