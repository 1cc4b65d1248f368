"""Greedy output of the runtime is token-identical to HF transformers on the same weights."""
from __future__ import annotations

import pytest
import torch

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "List three primary colors:",
    "Q: What is 12 times 12?\nA:",
    "Translate to French: 'Good morning, my friend.'\n",
    "The theory of relativity, proposed by Albert Einstein, states that",
    "import numpy as np\nx = np.arange(10)\n",
    "Write a haiku about autumn leaves.\n",
    "A recipe for pancakes needs the following ingredients:",
]
NEW = 32
ALONE = 5   # prompts also run one at a time (the batch tests take them all)


@pytest.fixture(scope="module")
def hf_reference(smollm2, hf_smollm2):
    """HF `generate`, one prompt at a time (no padding), greedy, exactly NEW tokens.
    EOS is an ordinary token on both sides (HF: no eos id; lmnb: ignore_eos)."""
    hf_smollm2.generation_config.eos_token_id = None
    refs = []
    for p in PROMPTS:
        ids = torch.tensor([smollm2.encode(p)])
        with torch.no_grad():
            out = hf_smollm2.generate(ids, max_new_tokens=NEW, do_sample=False,
                                      pad_token_id=0)
        refs.append(out[0, ids.shape[1]:].tolist())
    return refs


def _gen(rt, prompts):
    return [o["output_ids"] for o in rt.generate(prompts, max_new_tokens=NEW, temperature=0, ignore_eos=True)]


def test_one_at_a_time(smollm2, hf_reference):
    smollm2.flush_cache()
    for p, ref in zip(PROMPTS[:ALONE], hf_reference):
        assert _gen(smollm2, [p])[0] == ref, p
    smollm2.check_integrity()


def test_all_at_once_mixed_lengths(smollm2, hf_reference):
    smollm2.flush_cache()
    assert _gen(smollm2, PROMPTS) == hf_reference
    smollm2.check_integrity()


def test_warm_cache(smollm2, hf_reference):
    _gen(smollm2, PROMPTS)
    outs = smollm2.generate(PROMPTS, max_new_tokens=NEW, temperature=0, ignore_eos=True)
    assert [o["output_ids"] for o in outs] == hf_reference
    assert all(o["meta"]["cached_tokens"] == o["meta"]["prompt_tokens"] - 1 for o in outs)
    smollm2.check_integrity()
