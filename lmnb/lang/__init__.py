"""The SGLang frontend language: primitives (ir), program state, interpreter, backends.

`import lmnb as lm` exposes these names (`lm.function`, `lm.gen`, `lm.select`, roles,
`lm.set_default_backend`); see ir.py for building and running programs from IR.
"""
from __future__ import annotations

from lmnb.lang.backend import Backend, RuntimeBackend, get_default_backend, set_default_backend
from lmnb.lang.function import Function, function
from lmnb.lang.interpreter import run_program, run_programs
from lmnb.lang.ir import (
    assistant,
    assistant_begin,
    assistant_end,
    fork,
    gen,
    gen_int,
    gen_string,
    image,
    select,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from lmnb.lang.state import ForkGroup, ProgramState

__all__ = [
    "Backend", "ForkGroup", "Function", "ProgramState", "RuntimeBackend", "assistant",
    "assistant_begin", "assistant_end", "fork", "function", "gen", "gen_int", "gen_string",
    "get_default_backend", "image", "run_program", "run_programs", "select", "set_default_backend",
    "system", "system_begin", "system_end", "user", "user_begin", "user_end",
]
