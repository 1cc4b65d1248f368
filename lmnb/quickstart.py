"""`python -m lmnb.quickstart`: execute notebooks/01-quickstart.ipynb in a fresh kernel
and print each cell's source with its text outputs."""
from __future__ import annotations

import sys
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01-quickstart.ipynb"


def cell_text(cell) -> list[str]:
    """The text a terminal can show of one executed cell's outputs."""
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            out.append(o["text"].rstrip("\n"))
        elif o["output_type"] in ("display_data", "execute_result"):
            text = o.get("data", {}).get("text/plain", "")
            if text:
                out.append(text)
        elif o["output_type"] == "error":
            out.append(f"{o['ename']}: {o['evalue']}")
    return out


def main(path: str | Path = NOTEBOOK) -> int:
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        print("the quickstart needs nbclient and ipykernel: pip install nbclient nbformat ipykernel",
              file=sys.stderr)
        return 1
    path = Path(path)
    if not path.exists():
        print(f"notebook not found: {path}", file=sys.stderr)
        return 1
    nb = nbformat.read(path, as_version=4)
    # the kernel's own log (e.g. its notice that it talks over local TCP) is not the notebook's
    # output: only errors of the kernel process reach this terminal
    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}},
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    client.execute()
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            continue
        src = "\n".join(line for line in cell.source.splitlines() if line != "# NBVAL_CHECK_OUTPUT")
        print("\n".join(f">>> {line}" if i == 0 else f"... {line}" for i, line in enumerate(src.splitlines())))
        for text in cell_text(cell):
            print(text)
        print()
    errors = [c for c in nb.cells if any(o["output_type"] == "error" for o in c.get("outputs", []))]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
