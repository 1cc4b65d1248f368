"""A seeded mix of structured programs for the memory-pressure soak.

Every program is described by a plain dict (its `spec`), so the same list runs against a
large and a small KV pool and the two runs can be compared field by field. Kinds: plain
`gen` (some with stop strings), `select`, `fork`/`join` with a `gen` per branch, and
regex-constrained `gen`. Prompts either start with one of a few shared prefixes (the radix
cache can reuse them) or are unique.
"""
from __future__ import annotations

import random
import threading

import lmnb as lm

SHARED_PREFIXES = [
    "You are a careful assistant. Answer the question in a few words.\n",
    "The following lines list cities, rivers and mountains of the world.\n",
    "Q: what is the next number in the sequence? Think briefly, then answer.\n",
    "Translate each English word into French, one per line.\n",
]
STOPS = ["e", "\n", "a b", "."]
REGEXES = [r"[0-9]{2,6}", r"(yes|no|maybe)", r"[a-z]{3,8}@[a-z]{2,5}\.(com|org)", r"-?[1-9][0-9]{0,3}"]
CHOICES = [["red", "green", "blue"], ["yes", "no"], ["a long option", "short", "another option here"]]
KINDS = ["gen", "gen", "gen", "select", "fork", "fork", "regex"]


def make_specs(n: int, seed: int = 0, lengths: tuple[int, ...] = (1, 4, 16, 48, 96, 128)) -> list[dict]:
    """n program specs; `lengths` are the max_tokens a `gen` may get."""
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        if rng.random() < 0.5:
            prefix = rng.choice(SHARED_PREFIXES)
        else:
            prefix = f"Unique context {i}: " + " ".join(f"w{rng.randint(0, 999)}" for _ in range(rng.randint(2, 30)))
        specs.append({
            "kind": rng.choice(KINDS),
            "prefix": prefix + f"Item {rng.randint(0, 9999)}:",
            "max_tokens": rng.choice(lengths),
            "stop": rng.choice(STOPS) if rng.random() < 0.3 else None,
            "regex": rng.choice(REGEXES),
            "choices": rng.choice(CHOICES),
            "branches": rng.randint(2, 3),
        })
    return specs


@lm.function
def soak_program(s, spec: dict):
    s += spec["prefix"]
    kind = spec["kind"]
    if kind == "gen":
        s += lm.gen("out", max_tokens=spec["max_tokens"], stop=spec["stop"], ignore_eos=spec["stop"] is None)
    elif kind == "select":
        s += " Pick: " + lm.select("out", spec["choices"])
    elif kind == "regex":
        s += " Code: " + lm.gen("out", regex=spec["regex"], max_tokens=24)
    else:
        forks = s.fork(spec["branches"])
        for i, f in enumerate(forks):
            f += f" Branch {i}:" + lm.gen("out", max_tokens=spec["max_tokens"], stop=spec["stop"])
        forks.join()
    s += " End."


def outcome(st) -> tuple:
    """What must not depend on the pool size: the captured value, how many tokens each
    generation made and why it stopped, and the whole text."""
    if st.error is not None:
        return ("error", repr(st.error))
    metas = st.get_meta_info("out")
    metas = metas if isinstance(metas, list) else [metas]
    shape = tuple((m or {}).get("completion_tokens", (m or {}).get("option_start")) for m in metas)
    return (st["out"], shape, st.text())


class RecordingRuntime:
    """The runtime as programs see it, recording every request it is given, so the token
    demand of a run (prompt + generated tokens of every request) can be measured."""

    def __init__(self, runtime) -> None:
        self._rt, self._lock, self.handles = runtime, threading.Lock(), []

    def submit(self, prompt, **kw):
        h = self._rt.submit(prompt, **kw)
        with self._lock:
            self.handles.append(h)
        return h

    def __getattr__(self, name):
        return getattr(self._rt, name)

    def demand(self) -> tuple[int, int]:
        """(sum over requests of prompt + generated tokens, largest single request)."""
        sizes = [len(h.req.input_ids) + len(h.req.output_ids) for h in self.handles]
        return sum(sizes), max(sizes)
