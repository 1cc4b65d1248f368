"""abort() from another thread at chosen moments (before admission, during prefill,
during decode, after finish) while other greedy requests keep running."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter

LONG = " ".join(f"Line {i}: note number {i} about the sea." for i in range(60))  # ~700 tokens


def thread_aborts(rt, rng: random.Random, n: int) -> Counter:
    """n requests aborted from another thread at planned moments while three greedy
    requests run again and again beside them (their outputs must equal runs done alone);
    the count of each moment, as observed in the aborted requests' results."""
    outcomes: Counter = Counter()
    keepers = [f"Question {j}: name three kinds of {t}." for j, t in enumerate(("birds", "trees", "boats"))]
    kw = {"max_new_tokens": 16, "temperature": 0}
    alone = [rt.generate(p, **kw)[0]["output_ids"] for p in keepers]
    stop, rounds, errors = threading.Event(), [], []

    def keep() -> None:
        try:
            while not stop.is_set():
                rounds.append([o["output_ids"] for o in rt.generate(keepers, **kw)])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    keeper = threading.Thread(target=keep, name="keepers")
    keeper.start()
    plan = ["before-admission"] * 5 + ["prefill"] * 5 + ["decode"] * (n - 15) + ["after-finish"] * 5
    rng.shuffle(plan)
    try:
        for i, when in enumerate(plan):
            res = _ABORT_AT[when](rt, rng, i)
            assert _phase(res) == when, (when, res["meta"])
            outcomes[f"thread-abort:{when}"] += 1
    finally:
        stop.set()
        keeper.join(timeout=60)
    assert not errors, f"a request beside the aborts failed: {errors[0]!r}"
    assert rounds and all(r == alone for r in rounds), "a request beside the aborts changed its output"
    return outcomes


def _phase(res: dict) -> str:
    m = res["meta"]
    if m["finish_reason"] != "abort":
        return "after-finish"
    if m["computed_tokens"] == 0:
        return "before-admission"
    return "prefill" if m["completion_tokens"] == 0 else "decode"


def _abort_from_thread(rt, rid: str) -> None:
    t = threading.Thread(target=rt.abort, args=(rid,))
    t.start()
    t.join(timeout=10)


def _abort_before_admission(rt, rng: random.Random, i: int) -> dict:
    entered, gate = threading.Event(), threading.Event()
    # hold the engine between two steps, so the request and its abort queue up together
    blocker = threading.Thread(target=rt.engine.call, args=(lambda: entered.set() or gate.wait(10),))
    blocker.start()
    assert entered.wait(10)
    h = rt.submit(f"Never admitted {i}.", max_new_tokens=rng.randint(5, 50), temperature=0)
    _abort_from_thread(rt, h.rid)
    gate.set()
    blocker.join(timeout=10)
    return h.result()


def _abort_when(rt, h, ready, timeout: float = 20.0) -> dict:
    """Abort `h` from another thread as soon as ready(req) holds (polled)."""
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not ready(h.req) and time.monotonic() < deadline:
            time.sleep(0.001)
        rt.abort(h.rid)

    t = threading.Thread(target=watch)
    t.start()
    res = h.result()
    t.join(timeout=timeout)
    return res


def _abort_in_prefill(rt, rng: random.Random, i: int) -> dict:
    h = rt.submit(f"Variant {i}. " + LONG, max_new_tokens=20, temperature=0)
    return _abort_when(rt, h, lambda r: r.kv_len > 0 and not r.output_ids)


def _abort_in_decode(rt, rng: random.Random, i: int) -> dict:
    k = rng.randint(1, 8)
    h = rt.submit(f"Count slowly, {i}:", max_new_tokens=rng.randint(40, 120), temperature=0, ignore_eos=True)
    res = _abort_when(rt, h, lambda r: len(r.output_ids) >= k)
    assert res["meta"]["completion_tokens"] >= k
    return res


def _abort_after_finish(rt, rng: random.Random, i: int) -> dict:
    h = rt.submit(f"Say hi {i}.", max_new_tokens=rng.randint(1, 8), temperature=0, ignore_eos=True)
    res = h.result()
    _abort_from_thread(rt, h.rid)
    assert h.result() == res   # aborting a finished request changes nothing
    return res


_ABORT_AT = {"before-admission": _abort_before_admission, "prefill": _abort_in_prefill,
             "decode": _abort_in_decode, "after-finish": _abort_after_finish}
