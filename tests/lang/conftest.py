"""The lang tests share the session's smollm2 runtime as the default backend."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def rt(smollm2):
    import lmnb as lm

    lm.set_default_backend(smollm2)
    yield smollm2
    smollm2.check_integrity()
