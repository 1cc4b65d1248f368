"""Where a jump-forward JSON program's time goes (the suite's json_decode workload): per
mode (jump-forward with mixed steps, without them, no jump-forward) the wall time, the
engine's step counts, the summed step times by kind, the engine thread's host time in
scheduling, launching, sampling and settling, and that host time per step kind with the
model's forward taken out (prefill / jump extend / mixed / decode), with the host work
each kind does (radix tokens walked, slots written, text re-tokenized).

    python bench/debug/jf_steps.py [--model dummy:llama3-8b] [--repeats 3]
    python bench/debug/jf_steps.py --device cpu --model dummy:tiny --doc-tokens 1000 --out x.json

On the CPU the runtime is configured as on CUDA (overlap, mixed steps, no drafts), so
the host runs the same code path as the GPU's; the forward is what differs.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent.parent))   # this checkout's lmnb
from gpu_helpers import (byte_tokenizer_shim, random_tokens, timed, without_jump_forward,
                         without_mixed_steps)
from gpu_suite import JSON_SCHEMA

import lmnb as lm

KINDS = ("prefill", "jump", "mixed", "decode")


def step_kind(batch) -> str:
    """prefill: some request computes prompt tokens; jump: an extend of output tokens
    (jump-forward text) alone; mixed: one with decode tokens riding along; decode."""
    if batch.is_decode or batch.drafts is not None:
        return "decode"
    if any(pre < len(r.input_ids) for r, pre in zip(batch.reqs, batch.prefix_lens)):
        return "prefill"
    return "mixed" if batch.riders else "jump"


class HostClock:
    """Engine-thread host time per step kind, the model's forward (on CUDA: its launch or
    graph replay) and the wait for the GPU's tokens taken out: the `next_batch` that made
    a step, its `_step` (launch, sample, cache progress; less the forward and less the
    settle of the step before, done inside), and its `_settle`."""

    def __init__(self) -> None:
        self.profile = None      # a cProfile.Profile enabled over the engine's loop body
        self.clear()

    def clear(self) -> None:
        self.host = defaultdict(float)     # kind -> seconds
        self.steps = defaultdict(int)      # kind -> steps
        self.forward = defaultdict(float)  # kind -> seconds in the model's forward (its launch on CUDA)
        self.wait = defaultdict(float)     # kind -> seconds waiting for a step's tokens (the GPU)
        self.spent = defaultdict(float)    # function -> seconds (as before: whole calls)
        self.work = defaultdict(lambda: defaultdict(int))   # kind -> counter -> amount
        self._kind = None                  # the kind of the step being launched / settled
        self._nested = 0.0                 # time of calls to subtract from the enclosing _step
        self._depth = 0

    def _enter(self):
        if self._depth == 0 and self.profile is not None:
            self.profile.enable()
        self._depth += 1

    def _leave(self):
        self._depth -= 1
        if self._depth == 0 and self.profile is not None:
            self.profile.disable()

    def count(self, name: str, amount: int = 1) -> None:
        if self._kind is not None:
            self.work[self._kind][name] += amount

    def install(self, eng) -> None:
        clock = self
        sched, runner, outputs = eng.sched, eng.runner, eng.outputs

        def wrap(owner, name, around):
            fn = getattr(owner, name)
            setattr(owner, name, lambda *a, **k: around(fn, *a, **k))

        def next_batch(fn):
            clock._enter()
            t = time.perf_counter()
            try:
                b = fn()
            finally:
                clock._leave()
            dt = time.perf_counter() - t
            clock.spent["next_batch"] += dt
            if b is not None:
                kind = step_kind(b)
                clock.host[kind] += dt
                clock.work[kind]["next_batch_ms"] += 1e3 * dt
            return b

        def step(fn, batch):
            kind, outer = step_kind(batch), clock._kind
            # each new token's causal window: the keys a step run as decode rows (CUDA
            # graphs replay extends that way) reads, one row per token
            work = clock.work[kind]
            work["rows"] += sum(batch.lens)
            work["attn_key_reads"] += sum(n * pre + n * (n + 1) // 2
                                          for pre, n in zip(batch.prefix_lens, batch.lens))
            clock._enter()
            clock._kind, clock._nested = kind, 0.0
            t = time.perf_counter()
            try:
                return fn(batch)
            finally:
                dt = time.perf_counter() - t
                clock._leave()
                clock.spent["_step"] += dt
                clock.steps[kind] += 1
                clock.host[kind] += dt - clock._nested
                clock._kind = outer

        def settle(fn):
            kind = step_kind(eng._inflight.batch)
            outer = clock._kind
            clock._enter()
            clock._kind = kind
            t = time.perf_counter()
            try:
                return fn()
            finally:
                dt = time.perf_counter() - t
                clock._leave()
                clock.spent["settle"] += dt
                clock.host[kind] += dt
                clock.work[kind]["settle_ms"] += 1e3 * dt
                clock._nested += dt       # inside a _step: not that step's own time
                clock._kind = outer

        def forward(fn, *a, **k):
            if clock.profile is not None and clock._depth:
                clock.profile.disable()   # the profile is of the host work around it
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t
                if clock.profile is not None and clock._depth:
                    clock.profile.enable()
                clock.forward[clock._kind] += dt   # taken out in summary()

        def timed_call(label, counter=None):
            def around(fn, *a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    dt = time.perf_counter() - t
                    clock.spent[label] += dt
                    clock.count(f"{label}_calls")
                    clock.count(f"{label}_ms", 1e3 * dt)
                    if counter is not None:
                        clock.count(*counter(*a, **k))
            return around

        wrap(sched, "next_batch", next_batch)
        wrap(eng, "_step", step)
        wrap(eng, "_settle", settle)
        wrap(runner, "run", timed_call("run"))
        wrap(eng.sampler, "sample", timed_call("sample"))
        wrap(sched, "cache_progress", timed_call("cache_progress"))
        wrap(sched, "rollback", timed_call("rollback"))
        wrap(outputs, "_jump", timed_call("jump"))
        cache = sched.cache
        wrap(cache, "match_prefix", timed_call("match_prefix", lambda key: ("match_prefix_tokens", len(key))))
        # the engine's cache calls (insert_below, ancestor_at: since the eighth session)
        for name, size in (("insert", lambda key, *_: len(key)),
                           ("insert_below", lambda node, key, *_, **__: len(key)),
                           ("ancestor_at", lambda node, n: n)):
            if hasattr(cache, name):
                wrap(cache, name, timed_call(name, lambda *a, s=size, n=name, **k: (f"{n}_tokens", s(*a, **k))))
        pool = sched.req_pool
        wrap(pool, "write", timed_call("req_pool_write", lambda i, s, slots: ("req_pool_write_slots", slots.numel())))
        wrap(pool, "read", timed_call("req_pool_read", lambda i, s, e: ("req_pool_read_slots", e - s)))
        tok = outputs.tok
        wrap(tok, "encode", timed_call("encode", lambda text, **_: ("encode_chars", len(text))))
        model = runner.model
        fwd = model.forward
        model.forward = lambda *a, **k: forward(fwd, *a, **k)
        # CUDA: graph replays are the forward's launch; the settle's wait for the step's
        # tokens is the GPU's time, not the host's (classes patched: one runtime here)
        from lmnb.runtime.cuda_graph import DecodeGraphRunner
        from lmnb.runtime.device_sampling import SampledStep

        wrap(DecodeGraphRunner, "replay", lambda fn, *a, **k: forward(fn, *a, **k))

        def host_values(fn, step):
            if step.ready is None:   # on the CPU the values are there: no wait
                return fn(step)
            t = time.perf_counter()
            try:
                step.ready.synchronize()
            finally:
                clock.wait[clock._kind] += time.perf_counter() - t
            return fn(step)
        wrap(SampledStep, "host_values", host_values)

    def summary(self) -> dict:
        out = {}
        for kind in KINDS:
            n = self.steps.get(kind, 0)
            if not n:
                continue
            own = self.host[kind] - self.forward[kind] - self.wait[kind]
            row = {"steps": n, "host_ms_per_step": 1e3 * own / n,
                   "forward_ms_per_step": 1e3 * self.forward[kind] / n,
                   "wait_ms_per_step": 1e3 * self.wait[kind] / n}
            row["run_host_ms"] = self.work[kind]["run_ms"] / n - row["forward_ms_per_step"]
            row.update({k: v / n for k, v in sorted(self.work[kind].items()) if k != "run_ms"})
            out[kind] = row
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:llama3-8b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--doc-tokens", type=int, default=3000)
    ap.add_argument("--profile", action="store_true", help="cProfile the engine thread's loop body")
    ap.add_argument("--only", default="jf_mixed,jf_unmixed,no_jf", help="modes to measure")
    ap.add_argument("--out", help="write the rows (and the step kinds) as JSON here")
    args = ap.parse_args()
    byte_tokenizer_shim()
    opts = {} if args.device == "cuda" else dict(overlap=True, mixed_steps=True, speculative="off")
    rt = lm.Runtime(args.model, device=args.device, kv_memory_gb=24 if args.device == "cuda" else 1,
                    context_length=8192, **opts)
    rng = random.Random(7)
    vocab = rt.model_config.vocab_size
    docs = [random_tokens(rng, args.doc_tokens, vocab) + [t + 3 for t in b"\nJSON: "] for _ in range(16)]
    kw = {"max_new_tokens": 256, "temperature": 0, "json_schema": json.dumps(JSON_SCHEMA)}
    eng = rt.engine
    clock = HostClock()
    rt.engine.call(lambda: clock.install(eng))
    rt.generate(docs, **kw)   # grammar compiled, documents cached
    results: dict = {"model": args.model, "device": args.device, "doc_tokens": args.doc_tokens,
                     "torch": __import__("torch").__version__, "modes": {}}

    def measure(label: str) -> None:
        rows, kinds, texts = [], [], None
        for _ in range(args.repeats):
            c0, t0 = dict(eng.counters), time.time()
            rt.engine.call(clock.clear)
            res = [None]
            wall = timed(lambda: res.__setitem__(0, rt.generate(docs, **kw)))
            texts = [o["text"] for o in res[0]]
            hist = [h for h in list(eng.history) if h[0] >= t0]
            by_mode = defaultdict(float)
            for h in hist:
                by_mode[h[1]] += h[3]
            c = {k: eng.counters[k] - c0[k] for k in ("forward_steps", "extend_steps", "decode_steps",
                                                     "mixed_steps")}
            rows.append({"wall_s": wall, **c, **{f"{m}_s": v for m, v in by_mode.items()},
                         **{f"host_{k}_s": v for k, v in clock.spent.items()}})
            kinds.append(clock.summary())
        med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0]}
        print(label, " ".join(f"{k}={v:.4g}" for k, v in med.items()), flush=True)
        for kind in KINDS:
            per = [k[kind] for k in kinds if kind in k]
            if per:
                m = {k: statistics.median(p.get(k, 0) for p in per) for k in per[0]}
                print(f"  {kind:8s}", " ".join(f"{k}={v:.4g}" for k, v in m.items()), flush=True)
        results["modes"][label] = {"runs": rows, "kinds": kinds, "median": med, "texts": texts}

    if args.profile:
        import cProfile
        import io
        import pstats

        clock.profile = cProfile.Profile()
        measure("jf_mixed_profiled")
        clock.profile.disable()
        for key in ("tottime", "cumulative"):
            s = io.StringIO()
            pstats.Stats(clock.profile, stream=s).sort_stats(key).print_stats(40)
            print(f"--- engine thread, by {key}\n{s.getvalue()}")
        clock.profile = None
    modes = args.only.split(",")
    if "jf_mixed" in modes:
        measure("jf_mixed")
    if "jf_unmixed" in modes:
        with without_mixed_steps(rt):
            measure("jf_unmixed")
    if "no_jf" in modes:
        with without_jump_forward(rt):
            measure("no_jf")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
