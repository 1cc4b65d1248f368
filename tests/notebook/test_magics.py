"""%%lm and %lm on a real InteractiveShell: roles, holes, fork, batch, cache reuse
across cells, one-line errors, and Ctrl-C during streaming."""
from __future__ import annotations

import itertools
import re

import pytest

from lmnb.widgets import OutputView, cache_counts

REVIEW = '''@system
You are a concise film critic.
@user
Review {{ movie }} in one sentence, then rate it.
@assistant
Review: {{ gen("review", max_tokens=16, stop="\\n") }}
Rating: {{ select("rating", ["good", "bad", "mixed"]) }}
Year: {{ gen("year", regex=r"(19|20)[0-9][0-9]") }}
@fork 3
Also: {{ gen("alt", max_tokens=4) }}
@join'''


def test_extension_loads_and_help(shell, capsys):
    import lmnb

    lmnb.load_ipython_extension  # noqa: B018 - the entry point exists
    shell.run_line_magic("lm", "help")
    assert "@fork" in capsys.readouterr().out
    assert "-o NAME" in shell.lm_magics.lm.__doc__ or "--batch" in shell.lm_magics.lm.__doc__


def test_cell_with_roles_gen_select_regex_and_fork(shell, run):
    shell.user_ns["movie"] = "Alien"
    value, out, err = run(REVIEW, "-o st")
    assert value is None and "lmnb:" not in err, err
    st = shell.user_ns["st"]
    assert st.error is None
    assert isinstance(st["review"], str) and st["review"]
    assert st["rating"] in ("good", "bad", "mixed")
    assert re.fullmatch(r"(19|20)[0-9][0-9]", st["year"])
    assert isinstance(st["alt"], list) and len(st["alt"]) == 3
    assert [m["role"] for m in st.messages()] == ["system", "user", "assistant"]
    assert st.messages()[1]["content"] == "Review Alien in one sentence, then rate it."
    assert "── lm · 4 holes" in out and "alt = [" in out   # the final output view (alt ×3 is one hole)
    assert re.search(r"branch 2 ──\nAlso: «", out)


def test_options_and_config_traits(shell, run):
    shell.run_line_magic("config", "LmMagics.max_tokens = 3")
    try:
        _, _, err = run("Count: 1, 2, 3, {{ gen('n') }}", "-o st --no-stream")
        assert not err
        assert shell.user_ns["st"].get_meta_info("n")["completion_tokens"] <= 3
        run("Count: 1, 2, 3, {{ gen('n') }}", "-o st --max-tokens 5 --temperature 0.7 --seed 3")
        assert shell.user_ns["st"].get_meta_info("n")["completion_tokens"] <= 5
    finally:
        shell.run_line_magic("config", "LmMagics.max_tokens = 128")


def test_dry_run_shows_prompt_and_holes_without_running(shell, run, smollm2):
    before = smollm2.stats()["finished_requests"]
    shell.user_ns["movie"] = "Heat"
    value, out, err = run(REVIEW, "--dry-run -o nothing")
    assert value is None and not err
    assert "dry run · 4 holes" in out and "Review Heat in one sentence" in out
    assert "year: regex (19|20)[0-9][0-9]" in out and "alt: gen (×3)" in out
    assert "nothing" not in shell.user_ns
    assert smollm2.stats()["finished_requests"] == before


def test_batch_over_16_items(shell, run, monkeypatch):
    from IPython.display import DisplayHandle

    from lmnb.widgets import BatchProgress

    shown = []
    original = DisplayHandle.update

    def update(self, obj, **kw):
        if isinstance(obj, BatchProgress):
            shown.append(obj.text())
        return original(self, obj, **kw)

    monkeypatch.setattr(DisplayHandle, "update", update)
    titles = ["Alien", "Heat", "Up", "Jaws", "Rocky", "Fargo", "Psycho", "Vertigo", "Brazil", "Amelie",
              "Gravity", "Arrival", "Casablanca", "Memento", "Inception", "Titanic"]
    shell.user_ns["movies"] = [{"movie": t} for t in titles]
    cell = '@user\nIn which decade was {{ movie }} released?\n@assistant\n{{ gen("decade", max_tokens=4) }}'
    value, out, err = run(cell, "--batch movies -o sts")
    sts = shell.user_ns["sts"]
    assert value is None and len(sts) == 16
    assert all(s.error is None and isinstance(s["decade"], str) for s in sts)
    assert all(f"{t} released" in s.text() for s, t in zip(sts, titles))
    assert shown[0] == "lm batch · 0 of 16 programs done" and shown[-1] == "lm batch · 16 of 16 programs done"
    assert not err                             # no text bar on stderr
    assert "lm batch · 16 programs · 0 failed" in out


CACHED = '''@system
You are a helpful assistant. You answer every question in one short sentence, with no preamble.
@user
What is the capital of {{ country }}? Answer with the city and one fact about it.
@assistant
{{ gen("answer", max_tokens=6) }}'''


def test_rerun_reuses_the_cached_prompt(shell, run):
    shell.user_ns["country"] = "Norway"
    run(CACHED, "-o first")
    _, out, _ = run(CACHED, "-o again")
    st = shell.user_ns["again"]
    prompt, cached = cache_counts(st._meta)
    assert prompt > 30 and cached >= 0.95 * prompt
    assert f"{cached} of {prompt} prompt tokens from cache" in out
    assert st["answer"] == shell.user_ns["first"]["answer"]


def test_edited_last_lines_reuse_the_unchanged_prefix(shell, run, smollm2):
    shell.user_ns["country"] = "Peru"
    run(CACHED, "-o a")
    edited = CACHED.replace("one fact about it.", "its population.")
    run(edited, "-o b")
    b = shell.user_ns["b"]
    common = b.text()[: b.text().index("one fact") if "one fact" in b.text() else b.text().index("its population")]
    meta = b.get_meta_info("answer")
    assert meta["cached_tokens"] >= len(smollm2.encode(common)) - 2
    assert meta["cached_tokens"] < meta["prompt_tokens"]
    assert "from cache" in OutputView(b).header()


BAD = [
    ("Hello {{ gen('x', max_tokens=2)", "", r"line 2, column 7: unclosed '\{\{'"),
    ("@user\nHi {{ moive }}", "", r"line 3, column 7: unknown name 'moive'"),
    ("Say {{ unprintable }}", "", r"line 2, column 8: cannot insert the Unprintable value"),
    ("Hi\n@join", "", r"line 3, column 1: @join without a @fork"),
    ("A {{ gen('x', regex='[0-9') }}", "", r"line 2, column 6: gen\('x'\): invalid regex"),
    ("A {{ 1 + }}", "", r"line 2, column \d+: invalid expression"),
    ("Hi {{ gen('x', max_tokens=2) }}", "-m nosuch-model", r"unknown model spec 'nosuch-model'"),
]


@pytest.mark.parametrize("cell,line,pattern", BAD, ids=[
    "unclosed", "unknown-name", "no-str", "join-without-fork", "bad-regex", "bad-expression", "unknown-model"])
def test_bad_cells_fail_with_one_line_and_the_runtime_stays_usable(shell, run, smollm2, capsys,
                                                                  cell, line, pattern):
    from lmnb.magics.errors import CellError

    class Unprintable:
        def __str__(self):
            raise TypeError("no text form")

    shell.user_ns["unprintable"] = Unprintable()
    with pytest.raises(CellError) as e:
        run(cell, line + " -o bad")
    message = str(e.value)
    assert message.startswith("lmnb: ") and "\n" not in message and re.search(pattern, message), message
    assert "bad" not in shell.user_ns
    capsys.readouterr()
    result = shell.run_cell(f"%%lm {line} -o bad\n{cell}")    # as a notebook runs it
    out, err = capsys.readouterr()
    assert isinstance(result.error_in_exec, CellError) and not result.success
    # (a terminal shell prints the live load display's redraws; a notebook redraws in place)
    shown = [x for x in (out + err).splitlines() if x.strip() and not x.startswith("model ")]
    assert len(shown) == 1 and re.search(pattern, shown[0]) and "Traceback" not in out + err, out + err
    smollm2.check_integrity()
    _, _, err = run("2 + 2 = {{ gen('sum', max_tokens=2) }}", "-o ok")
    assert not err and shell.user_ns["ok"]["sum"]


def test_interrupt_while_streaming_frees_slots_and_keeps_text(shell, run, smollm2, monkeypatch):
    from IPython.display import DisplayHandle

    calls = []
    original = DisplayHandle.update

    def update(self, obj, **kw):
        if isinstance(obj, OutputView):
            calls.append(obj)
            if len(calls) == 3:
                raise KeyboardInterrupt
        return original(self, obj, **kw)

    monkeypatch.setattr(DisplayHandle, "update", update)
    cell = 'Write a long story about a lighthouse keeper.\n{{ gen("story", max_tokens=400, ignore_eos=True) }}'
    value, out, err = run(cell, "-o st --max-tokens 400")
    monkeypatch.undo()
    assert value is None and "lmnb: interrupted" in out and not err     # a notice, not an error
    st = shell.user_ns["st"]
    assert len(calls) == 3 and st.text().startswith("Write a long story") and len(st.text()) > len(cell) - 50
    assert "story" in st and st["story"] and st.text().endswith(st["story"])   # the partial text
    assert st.get_meta_info("story")["finish_reason"] == "abort"
    assert "story = " in out and "(interrupted)" in out
    assert "── lm · interrupted" in out
    smollm2.check_integrity()
    assert smollm2.cache_stats()["in_use_tokens"] == 0
    _, _, err = run("The sky is {{ gen('c', max_tokens=2) }}", "-o after")
    assert not err and shell.user_ns["after"]["c"]


def test_line_commands(shell, capsys, smollm2):
    shell.run_line_magic("lm", "status")
    out = capsys.readouterr().out
    assert out.startswith("model: smollm2 on cpu") and "KV pool:" in out
    shell.run_line_magic("lm", "cache")
    out = capsys.readouterr().out
    assert out.startswith("── radix cache · ") and "hits" in out
    shell.run_line_magic("lm", "stats")
    assert "prefill:" in capsys.readouterr().out
    from lmnb.magics.errors import CellError

    with pytest.raises(CellError, match=r"^lmnb: unknown command '%lm bogus'"):
        shell.run_line_magic("lm", "bogus")
    with pytest.raises(CellError, match=r"^lmnb: %lm: .*unrecognized arguments|^lmnb: %lm: "):
        shell.run_line_magic("lm", "status --nosuch")
    shell.run_line_magic("lm", "cache clear")
    assert "cache cleared" in capsys.readouterr().out
    assert smollm2.cache_stats()["cached_tokens"] == 0
    smollm2.check_integrity()


def test_state_displays_as_output_view(shell, run, capsys):
    run("1, 2, 3, {{ gen('n', max_tokens=2) }}", "-o st")
    shell.run_cell("st")
    assert "── lm · 1 hole" in capsys.readouterr().out


def test_streaming_updates_one_display_in_place(shell, run, monkeypatch):
    from IPython.display import DisplayHandle

    updates = []
    original = DisplayHandle.update

    def update(self, obj, **kw):
        if isinstance(obj, OutputView) or obj == {"text/plain": ""}:   # not the live cache/meter views
            updates.append((self.display_id, obj.snap.chunks[:] if isinstance(obj, OutputView) else obj))
        return original(self, obj, **kw)

    monkeypatch.setattr(DisplayHandle, "update", update)
    shell.lm_magics.stream = True
    run("Once upon a time, {{ gen('story', max_tokens=24, ignore_eos=True) }}", "-o st")
    monkeypatch.undo()
    assert len({d for d, _ in updates}) == 1                        # one display
    live = [chunks for _, chunks in updates[:-1]]
    assert len(live) >= 2 and all(isinstance(c, list) for c in live)
    texts = ["".join(t for _, t in c) for c in live]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))   # text only grows
    assert updates[-1][1] == {"text/plain": ""}                     # ends as it began


def test_model_option_takes_a_runtime_variable(shell, run, smollm2):
    shell.user_ns["local_rt"] = smollm2
    _, _, err = run("Two plus two is {{ gen('x', max_tokens=2) }}", "-m local_rt -o st")
    assert not err and shell.user_ns["st"]["x"]


def test_cache_view_refreshes_after_cells(shell, run, capsys):
    shell.run_line_magic("lm", "cache")
    view = shell.lm_magics.session.views[-1]
    before = view.text()
    run("A brand new prompt about penguins: {{ gen('p', max_tokens=2) }}")
    assert view.text() != before and "penguins" in view.text()
