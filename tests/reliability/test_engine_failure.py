"""Engine-thread failure: a model step that raises reaches every waiting request as an
`EngineError` (queued in the inbox, waiting, prefilling, decoding, streaming, a program
blocked on its fork branches, a batch, a pending `call`), promptly; the runtime reports
it (alive(), %lm status), refuses new work with a one-line way out, and `%lm model`
in a real InteractiveShell restarts it, after which a cell answers as before. A failing
`call` does not stop the engine."""
from __future__ import annotations

import threading
import time

import pytest

import lmnb as lm
from lmnb.errors import EngineError
from tests.reliability.interrupts import assert_idle_and_whole

SPEC = "dummy:tiny"
CELL = "Once upon a time {{ gen('tale', max_tokens=12) }}"


class FaultyStep:
    """Replaces the model runner's `run`: paces steps (so requests stay in each state
    long enough to be seen) and, once armed, blocks in the next step until released,
    then raises as a failing device would."""

    def __init__(self, rt, pace: float = 0.005) -> None:
        self.inner, self.pace, self.steps, self.fail_at = rt.engine.runner.run, pace, 0, None
        self.armed, self.entered, self.release = threading.Event(), threading.Event(), threading.Event()
        rt.engine.runner.run = self

    def __call__(self, batch, *rest):
        self.steps += 1
        if self.armed.is_set() or (self.fail_at is not None and self.steps >= self.fail_at):
            self.entered.set()
            self.release.wait(30)
            raise RuntimeError("injected fault in the model step")
        time.sleep(self.pace)
        return self.inner(batch, *rest)


@pytest.fixture
def shell(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from lmnb.lang.backend import get_default_backend, set_default_backend
    from lmnb.magics.lm_magics import LmMagics
    from lmnb.magics.session import KernelSession

    before = get_default_backend()
    sh = InteractiveShell.instance()
    session = KernelSession(default_spec=SPEC, device="cpu", max_running_requests=6, chunked_prefill_size=16)
    sh.register_magics(LmMagics(sh, session=session))
    sh.run_line_magic("lm", f"model {SPEC}")
    capsys.readouterr()
    yield sh, session
    session.close()
    if before is not None:
        set_default_backend(before)


def _cell(sh, capsys, cell: str, line: str = "-o st"):
    """Run a cell; a failing one raises CellError, whose one line the kernel shows (as
    its `_render_traceback_`): it is returned as the cell's stderr here."""
    from lmnb.magics.errors import CellError

    capsys.readouterr()
    shown = ""
    try:
        sh.run_cell_magic("lm", line, cell)
    except CellError as e:
        shown = str(e) + "\n"
    out, err = capsys.readouterr()
    return sh.user_ns.get("st"), out, err + shown


def test_a_failing_call_leaves_the_engine_running(shell):
    _, session = shell
    rt = session.runtime
    with pytest.raises(ZeroDivisionError):
        rt.engine.call(lambda: 1 / 0)
    with pytest.raises(KeyboardInterrupt):
        rt.engine.call(_raise_keyboard_interrupt)
    assert rt.alive()
    out = rt.generate("abc", max_new_tokens=4, temperature=0)[0]
    assert out["meta"]["completion_tokens"] == 4
    assert_idle_and_whole(rt)


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


def test_cell_failure_is_one_line_then_lm_model_restarts(shell, capsys):
    sh, session = shell
    good, _, err = _cell(sh, capsys, CELL)
    assert not err and good.error is None
    fault = FaultyStep(session.runtime)
    fault.fail_at, _ = fault.steps + 5, fault.release.set()   # fail on the 5th step of the next cell
    st, out, err = _cell(sh, capsys, CELL.replace("12", "400"))
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmnb: EngineError: "), err
    assert "injected fault" in err and "%lm model" in err and "Traceback" not in out + err
    assert isinstance(st.error, EngineError)
    assert not session.runtime.alive()
    sh.run_line_magic("lm", "status")
    status = capsys.readouterr().out
    assert "engine failure" in status and "injected fault" in status and f"%lm model {SPEC}" in status
    with pytest.raises(EngineError, match="load the model again"):
        session.runtime.submit("abc")
    sh.run_line_magic("lm", f"model {SPEC}")
    assert f"\nmodel: {SPEC}" in capsys.readouterr().out   # after the load progress lines
    assert session.runtime.alive()
    again, _, err = _cell(sh, capsys, CELL)
    assert not err and again["tale"] == good["tale"] and again.text() == good.text()


@lm.function
def forked(s):
    s += "Fork base text. "
    forks = s.fork(2)
    forks += lm.gen("branch", max_tokens=1500, ignore_eos=True)
    forks.join()
    s += lm.gen("after", max_tokens=8)


@lm.function
def item(s, n):
    s += f"Item {n}: " + lm.gen("x", max_tokens=1500, ignore_eos=True)


class Waiters:
    """Runs blocking waits on threads and keeps what each one ended with."""

    def __init__(self) -> None:
        self.threads: dict[str, threading.Thread] = {}
        self.outcome: dict[str, object] = {}

    def start(self, name: str, fn) -> None:
        def go() -> None:
            try:
                self.outcome[name] = fn()
            except BaseException as e:  # noqa: BLE001 - the error is what we check
                self.outcome[name] = e
        t = self.threads[name] = threading.Thread(target=go, name=name, daemon=True)
        t.start()

    def join(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        for t in self.threads.values():
            t.join(max(0.0, deadline - time.monotonic()))
        return [n for n, t in self.threads.items() if t.is_alive()]


def _until(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_failure_reaches_requests_in_every_state(shell):
    _, session = shell
    rt = session.runtime
    fault, w = FaultyStep(rt), Waiters()
    long_kw = {"max_new_tokens": 1500, "ignore_eos": True, "temperature": 0}
    holder = {}
    w.start("program-with-forks", lambda: forked.run(backend=rt, temperature=0))
    _until(lambda: rt.cache_stats()["running"] >= 2, "the fork branches to run")
    dec = rt.submit("decoding", **long_kw)
    w.start("decoding", dec.result)
    w.start("streaming", lambda: list(rt.submit("streaming", stream=True, **long_kw)))
    _until(lambda: len(dec.req.output_ids) >= 2, "decoding")
    pre = rt.submit("x" * 1200, **long_kw)        # 75 prefill chunks of 16 tokens
    w.start("prefilling", pre.result)
    _until(lambda: pre.req.kv_len > 0, "prefill to start")
    w.start("run_batch", lambda: holder.setdefault("batch", item.run_batch(
        [{"n": i} for i in range(3)], backend=rt, progress_bar=False)))
    waits = [rt.submit(f"waiting {i}", **long_kw) for i in range(2)]
    for i, h in enumerate(waits):
        w.start(f"waiting-{i}", h.result)
    _until(lambda: rt.cache_stats()["waiting"] >= 3, "requests to wait for admission")
    assert pre.req.output_ids == [] and pre.req.kv_len < len(pre.req.input_ids), "prefill ended too soon"
    fault.armed.set()
    assert fault.entered.wait(30)                  # the engine is now inside the failing step
    queued = [rt.submit(f"queued {i}", **long_kw) for i in range(2)]
    for i, h in enumerate(queued):
        w.start(f"inbox-{i}", h.result)
    w.start("inbox-call", rt.cache_stats)
    _until(lambda: rt.engine.inbox.qsize() >= 3, "the inbox to fill")
    t0 = time.monotonic()
    fault.release.set()
    assert w.join(timeout=20) == [], "a waiter still hangs after the engine failed"
    assert time.monotonic() - t0 < 20
    _check_outcomes(w.outcome, holder)
    assert not rt.alive()
    with pytest.raises(EngineError) as e:
        rt.submit("after the failure")
    assert "injected fault" in str(e.value) and "%lm model" in str(e.value) and "\n" not in str(e.value)


def _check_outcomes(outcome: dict, holder: dict) -> None:
    names = {"program-with-forks", "decoding", "streaming", "prefilling", "run_batch", "waiting-0",
             "waiting-1", "inbox-0", "inbox-1", "inbox-call"}
    assert set(outcome) == names
    for name, got in outcome.items():
        if name == "run_batch":
            assert all(isinstance(s.error, EngineError) for s in got), [s.error for s in got]
            continue
        err = got if isinstance(got, BaseException) else getattr(got, "error", None)
        assert isinstance(err, EngineError), (name, got)
        assert "injected fault" in str(err), (name, err)


def test_a_call_sent_as_the_engine_dies_does_not_hang(shell, monkeypatch):
    _, session = shell
    rt = session.runtime
    engine, fault, drained = rt.engine, FaultyStep(rt), threading.Event()
    empty_inbox = engine._empty_inbox

    def last_drain_then_a_call_arrives(err, run_calls):
        empty_inbox(err, run_calls)
        if run_calls:   # the loop's very last drain: a call now lands in a dead inbox
            drained.set()
            _until(lambda: engine.inbox.qsize() > 0, "the late call", timeout=10)

    monkeypatch.setattr(engine, "_empty_inbox", last_drain_then_a_call_arrives)
    fault.fail_at, _ = 1, fault.release.set()
    w = Waiters()
    w.start("request", lambda: rt.generate("abc", max_new_tokens=4))
    assert drained.wait(30)
    w.start("late-call", rt.cache_stats)
    assert w.join(timeout=10) == [], "a call sent as the engine died hangs"
    assert isinstance(w.outcome["request"], EngineError)
    assert w.outcome["late-call"]["pool_size"] > 0   # answered by reading the stopped state
