"""A failing lmnb cell fails the notebook run at that cell (what Run All, nbclient and
nbval see), with its one-line message as the whole error output: no traceback."""
from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

BAD = [
    ("%%lm\nHello {{ gen('x', max_tokens=2)", r"line 2, column 7: unclosed '{{'"),
    ("%%lm\n@user\nHi {{ moive }}", "line 3, column 7: unknown name 'moive'"),
]   # (%lm usage errors raise the same CellError: tests/notebook/test_magics.py)


@pytest.mark.parametrize("cell,message", BAD, ids=["unclosed", "unknown-name"])
def test_bad_cell_raises_cell_execution_error_at_that_cell(tmp_path, monkeypatch, cell, message):
    import os
    from pathlib import Path

    from nbclient.exceptions import CellExecutionError

    root = str(Path(__file__).resolve().parents[2])   # the kernel imports this tree's lmnb
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))

    cells = ["%load_ext lmnb", "%lm model dummy:tiny", cell, "print('after the bad cell')"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError) as e:
        client.execute()
    assert e.value.ename == "CellError" and message in e.value.evalue
    errors = [(i, o) for i, c in enumerate(nb.cells) for o in c.outputs if o.output_type == "error"]
    assert [i for i, _ in errors] == [2]                       # the bad cell, nothing after it ran
    out = errors[0][1]
    assert len(out.traceback) == 1 and message in out.traceback[0] and "Traceback" not in out.traceback[0]
    assert nb.cells[3].execution_count is None and not nb.cells[3].outputs
