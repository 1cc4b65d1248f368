"""The parameters added through the table: min_new_tokens, frequency / presence /
repetition penalties, stop_regex and n, against HF generate and plain torch references."""
from __future__ import annotations

import pytest
import torch

import lmnb as lm
from lmnb.errors import LmnbError
from lmnb.runtime import penalties
from lmnb.runtime.request import Req
from lmnb.runtime.sampling_params import SamplingParams

PROMPTS = ["The capital of France is", "List three primary colors:", "Q: What is 12 times 12?\nA:",
           "Once upon a time, in a small village by the sea,"]
NEW = 24


def _hf(smollm2, hf, prompt: str, **kw) -> list[int]:
    ids = torch.tensor([smollm2.encode(prompt)])
    with torch.no_grad():
        out = hf.generate(ids, do_sample=False, pad_token_id=0, **kw)
    return out[0, ids.shape[1]:].tolist()


def test_min_new_tokens_matches_hf(smollm2, hf_smollm2):
    eos = smollm2.eos_token_ids[0]
    hf_smollm2.generation_config.eos_token_id = eos
    try:
        for p in PROMPTS:
            # the 135M model ends a short answer early: min_new_tokens decides the length
            ref = _hf(smollm2, hf_smollm2, p, max_new_tokens=NEW, min_new_tokens=20, eos_token_id=eos)
            out = smollm2.generate(p, max_new_tokens=NEW, min_new_tokens=20, temperature=0)[0]
            got = out["output_ids"]
            assert got == ref[: len(got)] and len(got) >= 20, p
            assert eos not in got[:20]
    finally:
        hf_smollm2.generation_config.eos_token_id = None
    smollm2.check_integrity()


def test_repetition_penalty_matches_hf(smollm2, hf_smollm2):
    for p in PROMPTS:
        ref = _hf(smollm2, hf_smollm2, p, max_new_tokens=NEW, repetition_penalty=1.3)
        got = smollm2.generate(p, max_new_tokens=NEW, repetition_penalty=1.3, temperature=0,
                               ignore_eos=True)[0]["output_ids"]
        assert got == ref, p
    smollm2.check_integrity()


def _torch_reference(logits, prompt, outputs, freq, pres, rep):
    """Penalties written out token by token."""
    out = logits.clone()
    for t in set(prompt) | set(outputs):
        out[t] = out[t] / rep if out[t] > 0 else out[t] * rep
    for t in set(outputs):
        c = outputs.count(t)
        out[t] -= freq * c + pres
    return out


@pytest.mark.parametrize("seed", range(5))
def test_penalties_match_a_plain_reference_on_random_logits(seed):
    g = torch.Generator().manual_seed(seed)
    vocab, reqs, refs = 97, [], []
    logits = torch.randn(4, vocab, generator=g) * 3
    for i in range(4):
        prompt = torch.randint(0, vocab, (8,), generator=g).tolist()
        outputs = torch.randint(0, vocab, (12,), generator=g).tolist()
        f, pr, rp = [float(x) for x in (torch.rand(3, generator=g) * torch.tensor([4, 4, 1.5]) + torch.tensor([-2, -2, 0.5]))]
        r = Req(f"r{i}", prompt, SamplingParams(frequency_penalty=f, presence_penalty=pr, repetition_penalty=rp))
        r.output_ids = list(outputs)
        reqs.append(r)
        refs.append(_torch_reference(logits[i], prompt, outputs, f, pr, rp))
    plain = Req("plain", [1, 2], SamplingParams())
    both = torch.cat([logits, torch.randn(1, vocab, generator=g)])
    want_plain = both[4].clone()
    penalties.apply_penalties(both, reqs + [plain])
    for i in range(4):
        torch.testing.assert_close(both[i], refs[i])
    torch.testing.assert_close(both[4], want_plain)
    # the sampled tokens are counted on the device: the next step sees them
    tokens = torch.tensor([3, 5, 7, 9])
    penalties.record(tokens, reqs)
    for r, t in zip(reqs, tokens.tolist()):
        r.output_ids.append(t)
        assert r.penalty.counts[t] == r.output_ids.count(t)


def test_frequency_and_presence_penalties_stop_repeats(smollm2):
    p = "Repeat after me: the the the the the the"
    plain = smollm2.generate(p, max_new_tokens=16, temperature=0, ignore_eos=True)[0]["output_ids"]
    pen = smollm2.generate(p, max_new_tokens=16, temperature=0, ignore_eos=True,
                           frequency_penalty=2.0, presence_penalty=2.0)[0]["output_ids"]
    assert max(pen.count(t) for t in set(pen)) < max(plain.count(t) for t in set(plain))
    smollm2.check_integrity()


def test_stop_regex_cuts_at_the_first_match(smollm2):
    out = smollm2.generate("Count: 1, 2, 3,", max_new_tokens=24, temperature=0, stop_regex=r"[5-9]")[0]
    assert out["meta"]["finish_reason"] == "stop"
    assert out["meta"]["matched_stop"] in list("56789")
    assert not any(c in out["text"] for c in "56789")
    smollm2.check_integrity()


def test_n_samples_share_the_prompt(smollm2):
    smollm2.flush_cache()
    prompt = "Once upon a time, in a small village by the sea, there lived"
    before = smollm2.stats()["prefill_tokens"]
    outs = smollm2.generate(prompt, max_new_tokens=8, temperature=1.0, n=4, seed=7)
    computed = smollm2.stats()["prefill_tokens"] - before
    plen = len(smollm2.encode(prompt))
    assert len(outs) == 4
    assert computed <= plen + 3, f"{computed} prompt tokens computed for 4 samples of {plen}"
    assert len({tuple(o["output_ids"]) for o in outs}) > 1     # seeds differ per sample
    again = smollm2.generate(prompt, max_new_tokens=8, temperature=1.0, n=4, seed=7)
    assert [o["output_ids"] for o in again] == [o["output_ids"] for o in outs]
    smollm2.check_integrity()


def test_n_in_a_program_captures_a_list(smollm2):
    st = lm.function(lambda s: s.__iadd__("Pick a fruit:" + lm.gen("f", max_tokens=4, n=3, temperature=1.0, seed=1)))
    state = st.run(backend=smollm2)
    assert isinstance(state["f"], list) and len(state["f"]) == 3
    assert state.text().startswith("Pick a fruit:" + state["f"][0])


@pytest.mark.parametrize("kwargs, match", [
    ({"min_new_tokens": -1}, "min_new_tokens must be >= 0"),
    ({"frequency_penalty": 3.0}, r"frequency_penalty must be in \[-2, 2\]"),
    ({"presence_penalty": float("nan")}, "presence_penalty must be a finite number"),
    ({"repetition_penalty": 0}, "repetition_penalty must be > 0"),
    ({"n": 0}, "n must be >= 1"),
    ({"n": 1000}, "n must be <= 128"),
    ({"stop_regex": "("}, "stop_regex is not a valid regex"),
    ({"stop_regex": "a*"}, "matches the empty string"),
])
def test_bad_values_are_one_line_value_errors(smollm2, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        smollm2.generate("Hi", **kwargs)
    assert isinstance(e.value, LmnbError) and "\n" not in str(e.value)


def test_gen_speaks_user_names_in_errors():
    with pytest.raises(LmnbError, match=r"gen\('x'\): min_tokens must be >= 0"):
        lm.gen("x", min_tokens=-2)
