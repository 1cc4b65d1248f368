"""Views: deterministic text/plain, HTML with distinct styles, live refresh."""
from __future__ import annotations

import re

import pytest

import lmnb as lm
from lmnb.widgets import BatchView, CacheTreeView, OutputView, ThroughputMeter, cache_counts

_ADDRESS = re.compile(r"0x[0-9a-f]{6,}")


@pytest.fixture(scope="module")
def rt(smollm2):
    lm.set_default_backend(smollm2)
    yield smollm2
    smollm2.check_integrity()


def test_output_view_marks_generated_forced_and_constrained_text(rt):
    cell = ('Give a person as JSON.\n{{ gen("p", json_schema={"type": "object", "properties": '
            '{"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}}, '
            '"required": ["name", "age"]}, max_tokens=40) }}\nNote: {{ gen("note", max_tokens=4) }}')
    st = lm.run_template(cell, {}, temperature=0)
    assert set(st["p"]) == {"name", "age"}
    assert st.get_meta_info("p")["forced_spans"]             # '{"name": "' is jumped
    from lmnb.lang.template import compile_template, holes

    view = OutputView(st, holes(compile_template(cell, {})))
    text, html = view.text(), view.html()
    assert text == OutputView(st, holes(compile_template(cell, {}))).text()   # deterministic
    assert text.startswith("── lm · 2 holes · ") and "«{" in text and "p = {" in text
    assert not _ADDRESS.search(text + html)
    assert 'title="jump-forward"' in html and 'title="p (json)"' in html and 'title="note (gen)"' in html
    assert "dotted" in html                                 # the constrained hole is marked
    bundle = view._repr_mimebundle_()
    assert bundle["text/plain"] == text and bundle["text/html"] == html
    assert repr(view) == text and view._repr_html_() == html


def test_cache_counts_and_rerun_header(rt):
    cell = "The three primary colours are red, yellow and {{ gen('c', max_tokens=3) }}"
    lm.run_template(cell, {}, temperature=0)
    st = lm.run_template(cell, {}, temperature=0)
    prompt, cached = cache_counts(st._meta)
    healed = st.get_meta_info("c")["token_healing"]["tokens"]   # regenerated, not read from the cache
    assert prompt == st.get_meta_info("c")["prompt_tokens"] and cached >= prompt - 1 - healed
    assert f"{cached} of {prompt} prompt tokens from cache" in OutputView(st).header()


def test_fork_branches_and_batch_view(rt):
    st = lm.run_template("List: apples, pears,\n@fork 2\n{{ gen('more', max_tokens=3) }}\n@join", {},
                         temperature=0)
    text = OutputView(st).text()
    assert "── branch 0 ──" in text and "── branch 1 ──" in text and "more = [" in text
    sts = lm.run_template("{{ n }} + {{ n }} = {{ gen('s', max_tokens=2) }}", {}, batch=[{"n": i} for i in range(3)],
                          temperature=0, progress_bar=False)
    view = BatchView(sts)
    assert view.text().startswith("── lm batch · 3 programs · 0 failed") and "[2] s=" in view.text()
    assert "<table " in view.html() and "text-align: left" in view.html()


def test_cache_tree_matches_the_radix_cache_and_refreshes(rt):
    rt.flush_cache()
    lm.run_template("Once upon a time there was a {{ gen('x', max_tokens=3) }}", {}, temperature=0)
    view = CacheTreeView(rt)
    st = rt.cache_stats()
    lines = view.text().splitlines()
    assert lines[0].startswith(f"── radix cache · {st['nodes']} nodes · {st['cached_tokens']} tokens cached")
    tokens = sum(int(m.group(1)) for m in re.finditer(r"└ (\d+) tok", view.text()))
    assert tokens == st["cached_tokens"] and "Once upon a time" in view.text()
    assert "evictable" in view.text() and view.text() == CacheTreeView(rt).text()
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}        # no widget: saved outputs render anywhere
    handle = _Handle()
    view._handle = handle                                   # what show() keeps
    before = view.html()
    lm.run_template("A completely different prompt about {{ gen('y', max_tokens=2) }}", {}, temperature=0)
    view.refresh()
    html = handle.updates[-1]._repr_mimebundle_()["text/html"]
    assert html != before and "completely different" in html
    rt.flush_cache()
    view.refresh()
    assert "(empty)" in view.text()


def test_cache_tree_shows_locked_nodes(rt):
    prompt = "A request that is still running when the tree is drawn"
    rt.generate(prompt, max_new_tokens=1)           # its prompt is now cached
    h = rt.submit(prompt, max_new_tokens=200, ignore_eos=True, stream=True)
    deltas = iter(h)
    next(deltas)       # running: the cached prefix it reads is locked
    try:
        text = CacheTreeView(rt).text()
    finally:
        h.abort(wait=True)
    assert re.search(r"locked×1 · 'A request that is still running", text), text
    assert "locked×" not in CacheTreeView(rt).text()


def test_throughput_meter(rt):
    lm.run_template("Count: one, two, {{ gen('n', max_tokens=4) }}", {}, temperature=0)
    view = ThroughputMeter(rt)
    text, html = view.text(), view.html()
    assert text.startswith("── throughput ──") and "prefill:" in text and "decode:" in text
    assert "tok/s" not in text and "cache hit rate" in text        # no timings in text/plain
    assert "tok/s" in html and "<svg" in html and "<rect" in html
    assert set(view._repr_mimebundle_()) == {"text/plain", "text/html"}


class _Handle:
    """Stands in for IPython's DisplayHandle: records what refresh() redraws."""

    def __init__(self) -> None:
        self.updates = []

    def update(self, obj, **kw) -> None:
        self.updates.append(obj)


FORK_CELL = ("Ideas for a party:\n@fork 3\n- {{ gen('idea', max_tokens=6, stop='\\n') }}\n@join\n"
             "Summary: {{ gen('summary', max_tokens=6, stop='\\n') }}")


def test_fork_view_reads_in_order_with_plain_markers_and_distinct_hole_count(rt):
    from lmnb.lang.template import compile_template, holes

    st = lm.run_template(FORK_CELL, {}, temperature=0)
    view = OutputView(st, holes(compile_template(FORK_CELL, {})))
    text, html = view.text(), view.html()
    assert view.header().startswith("lm · 2 holes")           # idea (×3) and summary
    order = [text.index(x) for x in ("Ideas for a party:", "── branch 0 ──", "── branch 1 ──",
                                      "── branch 2 ──", "── join ──", "Summary: ")]
    assert order == sorted(order), text
    positions = [html.index(x) for x in ("Ideas for a party:", ">branch 0<", ">branch 1<", ">branch 2<",
                                         "Summary: ")]
    assert positions == sorted(positions)
    assert "border-left: 3px solid" in html                   # the branch marker is CSS
    assert all(ord(c) < 0x2400 or c in "─«»…" for c in text + html), "a glyph fonts may lack"


def test_interrupted_gen_is_marked(rt):
    st = lm.run_template("Count: {{ gen('n', max_tokens=4) }}", {}, temperature=0)
    st._meta["n"] = {**st._meta["n"], "finish_reason": "abort"}
    view = OutputView(st)
    assert "(interrupted)" in view.text() and "[interrupted]" in view.text()
    assert ">interrupted</span>" in view.html()


def test_progress_views_render_as_text_and_html():
    from lmnb.widgets import BatchProgress, LoadProgress

    load = LoadProgress("smollm2")
    handle = _Handle()
    load._handle = handle
    assert load.text().startswith("model smollm2 loading… · convert: waiting")
    load("convert", "skipped", "cached")
    load("load", "running")
    load("load", "done")
    load("warm", "running")
    assert not load.done() and "warm: running" in load.text()
    load("warm", "done")
    assert load.done() and load.text().startswith("model smollm2 ready") and len(handle.updates) == 5
    assert set(load._repr_mimebundle_()) == {"text/plain", "text/html"} and "✓" in load.html()
    bar = BatchProgress(4)
    bar(3, 4)
    assert bar.text() == "lm batch · 3 of 4 programs done" and "width: 75%" in bar.html()
