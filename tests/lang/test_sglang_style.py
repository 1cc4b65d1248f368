"""SGLang-style programs (tests/sglang_style.py) with `import lmnb as sgl` on the
in-process runtime: zero API errors, structure asserted."""
from __future__ import annotations

import pytest

import lmnb as sgl
from tests import sglang_style


@pytest.fixture(scope="module", autouse=True)
def default_backend(smollm2):
    before = sgl.get_default_backend()
    sgl.set_default_backend(smollm2)
    yield
    sgl.global_config.default_backend = before
    smollm2.check_integrity()


@pytest.mark.parametrize("check", sglang_style.CHECKS, ids=lambda f: f.__name__[len("check_"):])
def test_program(check):
    check()


def test_there_are_at_least_twenty():
    assert len(sglang_style.CHECKS) >= 20
