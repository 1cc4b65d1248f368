"""Aborts at the awkward moments the random storm rarely hits, forced with hooks: while a
gen's request is being submitted, while `fork` caches its prefix, between the prompts of
`Runtime.generate`, and in a `%%lm` cell before the program's state was handed back.
Each time nothing may keep generating unseen, and the KV invariant holds afterwards."""
from __future__ import annotations

import threading
import time

import pytest

import lmnb as lm
from lmnb.lang.backend import RuntimeBackend
from tests.reliability.interrupts import assert_idle_and_whole


class Hooked(RuntimeBackend):
    """The runtime backend with hooks after a request is submitted and before a prefix
    is cached; it remembers the program state and every handle it made (gens and
    prefixes apart)."""

    def __init__(self, rt, after_submit=None, before_prefix=None, wrap_prefix=None) -> None:
        super().__init__(rt)
        self.after_submit, self.before_prefix = after_submit, before_prefix
        self.wrap_prefix = wrap_prefix
        self.state, self.handles, self.prefixes = None, [], []

    def for_program(self, state, **options):
        self.state = state
        return self

    def generate(self, prompt: str, stream: bool = False, **sampling):
        h = super().generate(prompt, stream=stream, **sampling)
        self.handles.append(h)
        if self.after_submit is not None:
            self.after_submit(self)
        return h

    def start_prefix(self, prompt: str):
        if self.before_prefix is not None:
            self.before_prefix(self)
        h = super().start_prefix(prompt)
        self.prefixes.append(h)
        return h if self.wrap_prefix is None else self.wrap_prefix(h)


@lm.function
def essay(s):
    s += "Write a long essay about rivers.\n" + lm.gen("body", max_tokens=200, ignore_eos=True)


@lm.function
def forked(s):
    s += "Two facts about bees:\n"
    forks = s.fork(2)
    forks += lm.gen("fact", max_tokens=200, ignore_eos=True)
    forks.join()


def _ended(st) -> None:
    """The program has ended (its error is set) and stopped: its body returned, so a
    backend call it was blocked in when the abort came (fork's prefix) is over too."""
    with st._cond:
        assert st._cond.wait_for(st._ended, timeout=30)
    assert st.wait_stopped(30)


def test_abort_while_the_request_is_being_submitted(smollm2):
    backend = Hooked(smollm2, after_submit=lambda b: b.state.abort())
    st = essay.run(backend=backend, stream=True, temperature=0)
    _ended(st)
    res = backend.handles[0].result()
    assert isinstance(st.error, lm.RequestAborted)
    assert res["meta"]["finish_reason"] == "abort" and res["meta"]["completion_tokens"] < 200
    assert_idle_and_whole(smollm2)


class HeldEngine:
    """Keeps the engine thread busy from `hold()` until a prefix handle is aborted (or
    10 s pass), so a request submitted meanwhile and its abort reach the engine together:
    the abort always finds the request before its prefill."""

    def __init__(self, rt) -> None:
        self.rt, self.released = rt, threading.Event()

    def hold(self) -> None:
        started = threading.Event()

        def busy() -> None:
            started.set()
            self.released.wait(10)

        threading.Thread(target=self.rt.engine.call, args=(busy,), daemon=True).start()
        assert started.wait(10)

    def releasing(self, h):
        held = self

        class Releasing:
            def result(self):
                return h.result()

            def abort(self, wait: bool = False) -> None:
                h.abort(wait=wait)
                held.released.set()

        return Releasing()


def test_abort_while_fork_caches_its_prefix(smollm2):
    held = HeldEngine(smollm2)

    def abort_then_lag(b) -> None:
        held.hold()
        b.state.abort()
        time.sleep(0.3)   # the caller checks the engine while the body still submits

    backend = Hooked(smollm2, before_prefix=abort_then_lag, wrap_prefix=held.releasing)
    st = forked.run(backend=backend, stream=True, temperature=0)
    _ended(st)
    held.released.set()
    for b in st._branches:   # branches made after the abort must not start requests
        b.sync()
    assert isinstance(st.error, lm.RequestAborted) and backend.handles == []
    # the prefix request the body made after the abort was aborted, not computed
    assert [h.result()["meta"]["finish_reason"] for h in backend.prefixes] == ["abort"]
    assert_idle_and_whole(smollm2)


def test_ctrl_c_between_the_prompts_of_generate(smollm2, monkeypatch):
    made, submit = [], smollm2.submit

    def second_is_interrupted(prompt, **kw):
        if made:
            raise KeyboardInterrupt
        made.append(submit(prompt, **kw))
        return made[-1]

    monkeypatch.setattr(smollm2, "submit", second_is_interrupted)
    with pytest.raises(KeyboardInterrupt):
        smollm2.generate(["First prompt.", "Second prompt."], max_new_tokens=300, ignore_eos=True)
    monkeypatch.undo()
    res = made[0].result()
    assert res["meta"]["finish_reason"] == "abort" and res["meta"]["completion_tokens"] < 300
    assert_idle_and_whole(smollm2)


def test_ctrl_c_in_a_cell_before_the_state_came_back(smollm2, monkeypatch, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from lmnb.lang import interpreter
    from lmnb.magics.lm_magics import LmMagics
    from lmnb.magics.session import KernelSession

    sh = InteractiveShell.instance()
    session = KernelSession()
    session.attach(smollm2)
    sh.register_magics(LmMagics(sh, session=session))
    started, run_program = [], interpreter.run_program

    def interrupted(*a, **kw):
        started.append(run_program(*a, **kw))
        raise KeyboardInterrupt   # Ctrl-C just as the program started

    monkeypatch.setattr(interpreter, "run_program", interrupted)
    capsys.readouterr()
    try:
        sh.run_cell_magic("lm", "-o st", "Story: {{ gen('story', max_tokens=300, ignore_eos=True) }}")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the %%lm magic (a traceback for the user, the program left running)")
    finally:
        monkeypatch.undo()
    out, err = capsys.readouterr()
    assert "interrupted" in out + err and "Traceback" not in out + err   # a notice, on stdout
    assert sh.user_ns["st"] is started[0] and isinstance(started[0].error, lm.RequestAborted)
    assert_idle_and_whole(smollm2)
