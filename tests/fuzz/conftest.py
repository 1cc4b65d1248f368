"""One small random-weight runtime shared by the fuzz tests that run requests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny():
    """`dummy:tiny` (byte tokenizer, random weights): outputs are noise, the engine is real."""
    import lmnb as lm

    rt = lm.Runtime("dummy:tiny", device="cpu", max_total_tokens=8192)
    yield rt
    rt.shutdown()
