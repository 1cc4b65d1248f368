"""Overlapped steps (run ahead with placeholder tokens) give exactly the results of
settling every step at once: the same tokens, logprobs, stops and finish reasons, with no
KV slot leaked. On the CPU the overlap changes no timing, but every code path of it
(placeholders, the device-side token fill, late stops, aborts in flight) runs."""
from __future__ import annotations

import json
import random
import threading

import pytest
import torch

import lmnb as lm

CASES = [
    {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True},
    {"max_new_tokens": 1, "temperature": 0, "ignore_eos": True},
    {"max_new_tokens": 2, "temperature": 0, "ignore_eos": True},
    {"max_new_tokens": 0, "logprob_start_len": 3},
    {"max_new_tokens": 20, "temperature": 0, "stop": ["e", "q"]},
    {"max_new_tokens": 16, "temperature": 0, "return_logprob": True, "top_logprobs_num": 3,
     "ignore_eos": True},
    {"max_new_tokens": 16, "temperature": 0.9, "top_p": 0.9, "seed": 7, "ignore_eos": True},
    {"max_new_tokens": 12, "temperature": 0, "regex": r"[a-c]{3}-\d{2}"},
    {"max_new_tokens": 30, "temperature": 0, "stop_token_ids": [101, 102, 103]},
    {"max_new_tokens": 20, "temperature": 0, "repetition_penalty": 1.4, "frequency_penalty": 0.7,
     "presence_penalty": 0.3, "ignore_eos": True},
    {"max_new_tokens": 16, "temperature": 0.8, "seed": 3, "frequency_penalty": 1.5, "ignore_eos": True},
    {"max_new_tokens": 20, "min_new_tokens": 12, "temperature": 0, "stop_token_ids": [101, 102, 103]},
    {"max_new_tokens": 20, "temperature": 0, "stop_regex": r"[xyz]{2}"},
    # grammars run ahead too: forced text (jump-forward re-tokenizes, the step in flight
    # is stale), sampling under a mask, a schema that ends the request by itself
    {"max_new_tokens": 40, "temperature": 0, "json_schema": json.dumps(
        {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                          "n": {"type": "integer", "minimum": -3, "maximum": 99}},
         "required": ["name", "n"]})},
    {"max_new_tokens": 30, "temperature": 0.9, "seed": 5, "regex": r"id: [a-z]{2,6}, code: \d{2,3}\."},
    {"max_new_tokens": 4, "temperature": 0, "regex": r"(ab|cd)+"},
]


def _prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    shared = "".join(rng.choice("abcdefgh ") for _ in range(40))
    return [shared[: rng.randint(0, 40)] + "".join(rng.choice("xyz ") for _ in range(rng.randint(1, 30)))
            for _ in range(n)]


def _run(rt, prompts):
    handles = [rt.submit(p, **CASES[i % len(CASES)]) for i, p in enumerate(prompts)]
    out = [h.result() for h in handles]
    rt.engine.call(rt.scheduler.check_integrity)
    return [(o["output_ids"], o["text"], o["meta"]["finish_reason"], o["meta"]["matched_stop"],
             o["meta"].get("output_token_logprobs"), o["meta"].get("output_top_logprobs"),
             o["meta"].get("input_token_logprobs")) for o in out]


_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, _cuda])])
def pair(request):
    """Two runtimes on the same weights (seeded dummy), overlap off and on, fp32, a small
    KV pool (retractions happen); on CUDA with graphs and the triton backend."""
    rts = {ov: lm.Runtime("dummy:tiny", device=request.param, dtype="float32", overlap=ov,
                          max_total_tokens=260) for ov in (False, True)}
    yield rts
    for rt in rts.values():
        rt.shutdown()


def _flat(x) -> list[float]:
    if isinstance(x, (list, tuple)):
        return [v for item in x for v in _flat(item)]
    return [float(x)]


def _same(a, b):
    for x, y in zip(a, b):
        assert x[:4] == y[:4]
        for lx, ly in zip(x[4:], y[4:]):   # logprobs: same tokens, values within fp noise
            assert (lx is None) == (ly is None)
            if lx is not None:
                assert _flat(lx) == pytest.approx(_flat(ly), abs=1e-4)


def test_overlap_matches_settling_each_step(pair):
    prompts = _prompts(40, seed=1)
    base = _run(pair[False], prompts)
    assert pair[True].engine.overlap and not pair[False].engine.overlap
    got = _run(pair[True], prompts)
    _same(base, got)
    assert [g[0] for g in got] == [b[0] for b in base]
    # the small pool forced retractions on both sides
    assert pair[True].scheduler.retractions > 0
    # requests with a grammar ran ahead (their step before settled ahead of sampling)
    assert pair[True].engine.counters["grammar_run_ahead_steps"] > 0


def test_overlap_aborts_in_flight_free_everything(pair):
    rt = pair[True]
    rng = random.Random(3)
    handles = [rt.submit(p, max_new_tokens=64, temperature=0, ignore_eos=True)
               for p in _prompts(24, seed=2)]
    timers = [threading.Timer(rng.uniform(0, 0.3), h.abort) for h in handles[::2]]
    for t in timers:
        t.start()
    outs = [h.result() for h in handles]
    for t in timers:
        t.join()
    for o in outs:  # no placeholder ever reaches a result
        assert all(t >= 0 for t in o["output_ids"])
    rt.engine.call(rt.scheduler.check_integrity)
    assert rt.engine.call(lambda: (len(rt.scheduler.running), len(rt.scheduler.waiting))) == (0, 0)
    assert rt.cache_stats()["free_slots"] + rt.engine.call(
        lambda: rt.cache.cached_slots().numel()) == rt.pool.size
    # a new request still answers as a runtime that never overlapped
    p = _prompts(1, seed=9)
    assert _run(rt, p) == _run(pair[False], p)


def test_overlap_streams_the_same_text(pair):
    prompt = _prompts(1, seed=5)[0]
    texts = {}
    for ov, rt in pair.items():
        texts[ov] = "".join(rt.stream(prompt, max_new_tokens=20, temperature=0, stop=["zz"]))
    assert texts[True] == texts[False]


def test_prompt_logprobs_over_chunks_match_one_pass():
    """Prompt logprobs gathered over several prefill chunks, read back with the step's
    tokens, equal those of one unchunked pass."""
    prompts = _prompts(6, seed=11)
    kw = {"max_new_tokens": 3, "temperature": 0, "logprob_start_len": 0, "ignore_eos": True}
    got = {}
    for chunk, ov in ((4096, False), (16, False), (16, True)):
        rt = lm.Runtime("dummy:tiny", device="cpu", dtype="float32", overlap=ov,
                        chunked_prefill_size=chunk)
        try:
            outs = rt.generate(prompts, **kw)
            rt.engine.call(rt.scheduler.check_integrity)
        finally:
            rt.shutdown()
        got[chunk, ov] = [o["meta"]["input_token_logprobs"] for o in outs]
    ref = got[4096, False]
    for key in ((16, False), (16, True)):
        for a, b, p in zip(got[key], ref, prompts):
            assert len(a) == len(b) >= len(p) - 1
            assert [t for t, _ in a] == [t for t, _ in b]
            assert _flat([v for _, v in a]) == pytest.approx(_flat([v for _, v in b]), abs=1e-4)


JSON_FIELDS = json.dumps({
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "city": {"enum": ["Paris", "London", "Tokyo", "New York"]},
                   "employed": {"type": "boolean"}},
    "required": ["name", "age", "city", "employed"]})


def test_jump_forward_extends_keep_the_cache_whole_at_every_step():
    """JSON programs over long documents as on the GPU (overlap, mixed steps, jump-forward
    extends caching their text below each request's cached document): after every step
    the pool, the cache and each request's cached path agree, and the tokens are those of
    settling every step with extends on their own; run twice, the second time over a cache
    that already holds the first run's outputs."""
    rng = random.Random(3)
    docs = ["".join(rng.choice("abcdefghij ") for _ in range(300)) + "\nJSON: " for _ in range(6)]
    kw = {"max_new_tokens": 60, "temperature": 0, "json_schema": JSON_FIELDS, "speculative": False}
    outs, rts = {}, {}
    for gpu_like in (False, True):
        rt = rts[gpu_like] = lm.Runtime("dummy:tiny", device="cpu", dtype="float32", overlap=gpu_like,
                                        mixed_steps=gpu_like, max_total_tokens=6000)
        eng, checked = rt.engine, [0]
        step = eng._step

        def checked_step(batch, *args, step=step, eng=eng, checked=checked):
            step(batch, *args)
            eng.sched.check_integrity()
            checked[0] += 1

        eng.call(lambda eng=eng, f=checked_step: setattr(eng, "_step", f))
        runs = [rt.generate(docs, **kw) for _ in range(2)]
        outs[gpu_like] = [[o["output_ids"] for o in run] for run in runs]
        assert checked[0] > 0 and all(o["meta"]["jump_forward_tokens"] > 0 for o in runs[0])
        rt.check_integrity()
    try:
        assert outs[True] == outs[False]
        assert outs[True][0] == outs[True][1]
        c = rts[True].engine.counters
        assert c["mixed_steps"] > 0 and c["grammar_run_ahead_steps"] > 0
    finally:
        for rt in rts.values():
            rt.shutdown()
