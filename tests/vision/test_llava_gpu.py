"""LLaVA on CUDA: the tiny random checkpoint in fp32 gives transformers' greedy tokens
with the decode CUDA graphs on (image steps run eagerly, decode steps replay graphs), and
on the dummy 7B shape in bf16 an image repeated in a later prompt is a prefix hit."""
from __future__ import annotations

import pytest
import torch

from tests.vision.conftest import random_images

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPT = "USER: <image> and <image>: which is brighter? ASSISTANT:"


def test_cuda_greedy_matches_transformers(llava_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    import lmnb as lm

    imgs = random_images(2, seed=3)
    proc = AutoProcessor.from_pretrained(llava_dir)
    hf = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=torch.float32).cuda().eval()
    hf.generation_config.eos_token_id = None
    inp = proc(text=PROMPT, images=imgs, return_tensors="pt").to("cuda")
    with torch.no_grad():
        ref = hf.generate(**inp, max_new_tokens=24, do_sample=False, pad_token_id=0)
    ref = ref[0, inp["input_ids"].shape[1]:].tolist()
    rt = lm.Runtime(f"hf:{llava_dir}", device="cuda", dtype="float32", max_total_tokens=8192)
    try:
        outs = rt.generate([PROMPT] * 3, images=[imgs] * 3, max_new_tokens=24, temperature=0,
                           ignore_eos=True)
        assert all(o["output_ids"] == ref for o in outs)
        again = rt.generate([PROMPT], images=[imgs], max_new_tokens=24, temperature=0, ignore_eos=True)[0]
        assert again["output_ids"] == ref
        assert again["meta"]["cached_tokens"] == again["meta"]["prompt_tokens"] - 1
        rt.check_integrity()
    finally:
        rt.shutdown()


def test_llava_7b_shape_prefix_hit():
    import lmnb as lm

    rt = lm.Runtime("dummy:llava-7b", device="cuda", kv_memory_gb=4)
    try:
        img = random_images(1, seed=5)[0].resize((336, 336))
        first = rt.generate(["USER: <image>\nwhat is it? ASSISTANT:"], images=[[img]], max_new_tokens=8,
                            temperature=0, ignore_eos=True)[0]
        s0 = rt.stats()
        second = rt.generate(["USER: <image>\nhow many? ASSISTANT:"], images=[[img]], max_new_tokens=8,
                             temperature=0, ignore_eos=True)[0]
        s1 = rt.stats()
        assert s0["image_tokens_computed"] == 576 and s1["image_tokens_computed"] == 576
        assert second["meta"]["cached_tokens"] >= 576
        assert len(first["output_ids"]) == 8
        rt.check_integrity()
    finally:
        rt.shutdown()
