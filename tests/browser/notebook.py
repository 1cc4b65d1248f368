"""The notebook the browser test executes: one program's output view as a widget, the
live cache tree and the throughput meter, then a second program whose cell refreshes both
live views (so only the stored widget state, not the cells' HTML fallbacks, holds their
final content), then what the kernel itself says those views should show."""
from __future__ import annotations

import json
from pathlib import Path

LONG_PATH = "/srv/notes/" + "x" * 160 + ".txt"   # an unbroken word wider than the page

CELLS = [
    ("load", "%load_ext lmnb\n%lm model smollm2"),
    ("path", f'path = "{LONG_PATH}"'),
    ("program", ('%%lm -o st\nThe notes in {{ path }} say the capital of France is'
                 '{{ gen("city", max_tokens=6, stop=".") }}')),
    ("output-view", "from lmnb.widgets import OutputView\nOutputView(st).widget()"),
    ("cache-tree", "%lm cache"),
    ("throughput", "%lm stats"),
    ("refresh", '%%lm -o st2\nThe tallest mountain on Earth is{{ gen("peak", max_tokens=6, stop=".") }}'),
    ("facts", """\
import json
from lmnb.magics.session import kernel_session
from lmnb.widgets import CacheTreeView, ThroughputMeter
rt = kernel_session().runtime
rt.check_integrity()
print(json.dumps({"city": st["city"], "peak": st2["peak"], "tree": CacheTreeView(rt).header(),
                  "meter": ThroughputMeter(rt).text().splitlines()[-1]}))"""),
]


def build():
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[_cell(cid, src) for cid, src in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _cell(cid: str, src: str):
    import nbformat

    cell = nbformat.v4.new_code_cell(src)
    cell.id = cid
    return cell


def execute(nb, workdir: Path):
    """Run it in a real ipykernel, storing the widget state in the notebook's metadata."""
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def outputs(nb, cid: str) -> list:
    return next(c for c in nb.cells if c.get("id") == cid).outputs


def facts(nb) -> dict:
    """The JSON line the last cell printed."""
    text = "".join(o.get("text", "") for o in outputs(nb, "facts") if o.output_type == "stream")
    return json.loads(text.strip().splitlines()[-1])
