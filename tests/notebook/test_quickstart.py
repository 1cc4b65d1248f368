"""`python -m lmnb.quickstart` executes the quickstart notebook in a fresh kernel."""
from __future__ import annotations

import pytest


def test_quickstart_prints_cells_and_outputs(capsys):
    pytest.importorskip("nbclient")
    from lmnb.quickstart import NOTEBOOK, main

    if not NOTEBOOK.exists():
        pytest.skip("notebooks/ is not part of this installation")
    assert main() == 0
    out = capsys.readouterr().out
    assert ">>> %%lm -o st\n... @system" in out
    assert "── lm · 1 hole · 0 of 32 prompt tokens from cache (0%) ──" in out
    assert "lm · 1 hole · 0 of 6 prompt tokens from cache (0%) ──\nThe capital of France is «Paris»" in out   # healed
    assert "0/272" not in out and "WARNING" not in out      # no frozen bars, no kernel log
    assert "\nTrue\n" in out and "KV pool:" in out and "NBVAL" not in out
