"""Sampling parameters are declared once, in `runtime/sampling_params.py`: every layer's key
list is the table's, and no other module declares one."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import lmnb as lm
from lmnb.lang.interpreter import DEFAULT_KEYS
from lmnb.runtime.sampling_params import NAMES, PARAMS, USER_NAMES, runtime_name, user_name

ROOT = Path(lm.__file__).parent
TABLE = ROOT / "runtime" / "sampling_params.py"


def test_gen_accepts_exactly_the_table():
    params = inspect.signature(lm.gen).parameters
    # besides the table: what gen does with the text (SGLang's choices_method, return_text_in_logprobs)
    assert set(params) - {"name", "dtype", "choices", "choices_method", "return_text_in_logprobs"} == set(USER_NAMES)
    for name in USER_NAMES:   # and really takes each (None: not set)
        lm.gen("x", **{name: None})


def test_program_defaults_are_the_table():
    assert tuple(DEFAULT_KEYS) == NAMES


def test_cell_options_are_the_tables_cell_parameters():
    from lmnb.magics.lm_magics import LmMagics

    parser = LmMagics.lm.parser
    opts = {a.dest for a in parser._actions if a.option_strings}
    cell = {p.user for p in PARAMS if p.cell}
    assert cell <= opts
    # every other option is not a sampling parameter
    assert not (opts - cell) & (set(USER_NAMES) | set(NAMES))
    traits = set(LmMagics.class_traits(config=True))
    assert cell <= traits


def test_server_bodies_take_the_tables_parameters():
    from lmnb.server.protocol import BODY_PARAMS, ChatCompletionRequest, CompletionRequest

    assert {p.user for p in BODY_PARAMS} == {p.user for p in PARAMS if p.api in ("std", "extra")}
    for model in (CompletionRequest, ChatCompletionRequest):
        fields = set(model.model_fields)
        assert {p.user for p in BODY_PARAMS} <= fields


def test_openai_builder_sends_every_parameter_or_refuses_it():
    from lmnb.lang.openai_requests import _params

    class Backend:
        model, is_chat, server_extras, base_url = "m", False, True, "http://x"

    samples = {int: 3, float: 0.5, bool: True, str: "ab"}
    for p in PARAMS:
        value = samples[p.type] if p.name != "json_schema" else '{"type": "object"}'
        if p.name in ("stop", "stop_token_ids"):
            value = (value,)
        if p.name == "seed":
            value = 4
        if p.default == value:
            continue
        if p.api == "special" and p.name == "logprob_start_len":
            with pytest.raises(ValueError, match="does not support"):
                _params(Backend(), {p.name: value})
            continue
        kw = _params(Backend(), {p.name: value})
        sent = {**kw, **kw.get("extra_body", {})}
        if p.api in ("std", "extra"):
            assert p.user in sent, p.name
        else:
            assert set(sent) - {"model", "max_tokens", "extra_body"}, p.name


def test_names_differ_only_at_the_edges():
    renamed = {p.name: p.user for p in PARAMS if p.name != p.user}
    assert renamed == {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
    assert all(runtime_name(user_name(n)) == n for n in NAMES)


def _declared_fields(path: Path) -> set[str]:
    """Names declared as class-level fields (dataclass / pydantic / traitlets) in a module."""
    tree = ast.parse(path.read_text())
    out = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                out.add(stmt.target.id)
            elif isinstance(stmt, ast.Assign):
                out |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}
    return out


# request fields that are about the call, not sampling (each layer's own)
NOT_SAMPLING = {"max_tokens", "n"}   # the server caps max_tokens and fans n out: still table names
# the same word meaning something else: the runtime's own seed (of its per-request seeds)
OTHER_MEANING = {"runtime/runtime_config.py": {"seed", "speculative"}}   # and its default drafting mode


def test_no_module_declares_a_sampling_parameter_itself():
    names = (set(NAMES) | set(USER_NAMES)) - NOT_SAMPLING
    offenders = {}
    for path in ROOT.rglob("*.py"):
        if path == TABLE:
            continue
        hit = _declared_fields(path) & names - OTHER_MEANING.get(str(path.relative_to(ROOT)), set())
        if hit:
            offenders[str(path.relative_to(ROOT))] = sorted(hit)
    assert not offenders, f"sampling parameters declared outside the table: {offenders}"
