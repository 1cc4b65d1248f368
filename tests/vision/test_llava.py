"""LLaVA end to end on tiny random weights: greedy tokens identical to transformers' own
LlavaForConditionalGeneration (fp32), image positions reused through the radix cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lmnb.errors import LmnbError
from tests.vision.conftest import random_images

NEW = 24
ONE = "USER: <image>\nWhat is in the picture? ASSISTANT:"
TWO = "USER: Compare <image> with <image>, briefly. ASSISTANT:"


def _hf(llava_hf, prompt, images):
    model, proc = llava_hf
    inp = proc(text=prompt, images=images, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inp, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return out[0, inp["input_ids"].shape[1]:].tolist(), inp["input_ids"].shape[1]


def _lmnb(rt, prompts, images):
    outs = rt.generate(prompts, images=images, max_new_tokens=NEW, temperature=0, ignore_eos=True)
    return [o["output_ids"] for o in outs]


@pytest.mark.parametrize("prompt,n", [(ONE, 1), (TWO, 2)])
def test_greedy_matches_transformers(llava_rt, llava_hf, prompt, n):
    imgs = random_images(n, seed=n)
    ref, prompt_len = _hf(llava_hf, prompt, imgs)
    llava_rt.flush_cache()
    out = llava_rt.generate([prompt], images=[imgs], max_new_tokens=NEW, temperature=0, ignore_eos=True)[0]
    assert out["output_ids"] == ref
    assert out["meta"]["prompt_tokens"] == prompt_len
    llava_rt.check_integrity()


def test_images_change_the_output(llava_rt):
    a, b = random_images(2, seed=7)
    outs = _lmnb(llava_rt, [ONE, ONE], [[a], [b]])
    assert outs[0] != outs[1]


def test_batch_encodes_its_images_together(llava_rt, llava_hf):
    """Four prompts, three distinct images, one step: one tower call for three images,
    and each output still what transformers gives for that prompt alone."""
    imgs = random_images(3, seed=11)
    prompts, images = [ONE, ONE, TWO, ONE], [[imgs[0]], [imgs[1]], [imgs[2], imgs[0]], [imgs[1]]]
    refs = [_hf(llava_hf, p, i)[0] for p, i in zip(prompts, images)]
    llava_rt.flush_cache()
    before = llava_rt.stats()
    # submitted on the engine thread between steps, so the next step sees all four
    handles = llava_rt.engine.call(lambda: [
        llava_rt.submit(p, images=i, max_new_tokens=NEW, temperature=0, ignore_eos=True)
        for p, i in zip(prompts, images)])
    assert [h.result()["output_ids"] for h in handles] == refs
    after = llava_rt.stats()
    assert after["images_encoded"] - before["images_encoded"] == 3
    assert after["vision_batches"] - before["vision_batches"] == 1
    llava_rt.check_integrity()


def test_same_image_later_is_a_prefix_hit(llava_rt, llava_hf):
    img = random_images(1, seed=21)[0]
    ref, _ = _hf(llava_hf, ONE, [img])
    llava_rt.flush_cache()
    _lmnb(llava_rt, [ONE], [[img]])
    before = llava_rt.stats()
    again = Image.fromarray(np.asarray(img).copy())   # the same pixels, a new object
    out = llava_rt.generate([ONE], images=[[again]], max_new_tokens=NEW, temperature=0, ignore_eos=True)[0]
    after = llava_rt.stats()
    assert out["output_ids"] == ref
    assert after["image_tokens_computed"] == before["image_tokens_computed"]
    assert after["images_encoded"] == before["images_encoded"]
    assert out["meta"]["cached_tokens"] == out["meta"]["prompt_tokens"] - 1
    llava_rt.check_integrity()


def test_other_image_same_text_is_not_a_hit(llava_rt):
    a, b = random_images(2, seed=31)
    llava_rt.flush_cache()
    _lmnb(llava_rt, [ONE], [[a]])
    before = llava_rt.stats()
    out = llava_rt.generate([ONE], images=[[b]], max_new_tokens=4, temperature=0)[0]
    after = llava_rt.stats()
    assert after["image_tokens_computed"] - before["image_tokens_computed"] == 16
    assert out["meta"]["cached_tokens"] < out["meta"]["prompt_tokens"] - 16


def test_chunked_prefill_through_an_image(llava_dir, llava_hf):
    """Prompt chunks of 7 tokens cut the image's 16 positions across three steps."""
    import lmnb as lm

    imgs = random_images(2, seed=41)
    ref, _ = _hf(llava_hf, TWO, imgs)
    rt = lm.Runtime(f"hf:{llava_dir}", device="cpu", dtype="float32", chunked_prefill_size=7,
                    max_total_tokens=4096)
    try:
        assert _lmnb(rt, [TWO], [imgs]) == [ref]
        assert rt.stats()["images_encoded"] == 2
        rt.check_integrity()
    finally:
        rt.shutdown()


def test_token_id_prompts_keep_their_images(llava_rt, llava_hf):
    """`encode` of a text with image markers gives ids a later submit resolves again."""
    from lmnb.runtime.multimodal import as_image

    img = as_image(random_images(1, seed=51)[0])
    ref, _ = _hf(llava_hf, ONE, [img.image])
    ids = llava_rt.encode(ONE.replace("<image>", img.marker))
    assert _lmnb(llava_rt, [ids], None) == [ref]


def test_bad_image_input(llava_rt, smollm2):
    with pytest.raises(LmnbError, match="placeholders"):
        llava_rt.generate([ONE], images=[random_images(2)], max_new_tokens=2)
    with pytest.raises(LmnbError, match="text-only"):
        smollm2.generate(["<image> hi"], images=[random_images(1)], max_new_tokens=2)
    with pytest.raises(LmnbError, match="logprob"):
        llava_rt.submit(ONE, images=random_images(1), max_new_tokens=0, logprob_start_len=0)
    with pytest.raises(LmnbError, match="image"):
        llava_rt.generate([ONE], images=[[b"not an image"]], max_new_tokens=2)
    with pytest.raises(LmnbError, match=r"\[0, "):
        llava_rt.generate([[1, 2, llava_rt.model_config.vocab_size + 5]], max_new_tokens=2)
    llava_rt.check_integrity()


def test_dummy_llava_shape_runs():
    import lmnb as lm

    rt = lm.Runtime("dummy:llava-tiny", device="cpu", dtype="float32", max_total_tokens=8192)
    try:
        out = rt.generate(["look: <image> now"], images=[random_images(1)], max_new_tokens=3,
                          temperature=0, ignore_eos=True)[0]
        assert len(out["output_ids"]) == 3
        text = len(rt.encode("look: ")) + len(rt.tokenizer.encode(" now", add_special_tokens=False))
        assert out["meta"]["prompt_tokens"] == text + 16
        assert rt.stats()["images_encoded"] == 1
        rt.check_integrity()
    finally:
        rt.shutdown()


def test_siglip_tower_qwen2_decoder(tmp_path):
    """The llava-interleave-qwen layout: SigLIP tower (no class token, last layer, "full"),
    Qwen2 decoder (q/k/v biases); greedy tokens identical to transformers for two images."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    import lmnb as lm
    from tests.vision.conftest import _needs_smollm2, save_llava

    _needs_smollm2()
    path = save_llava(tmp_path / "llava-siglip-qwen2", tower="siglip", decoder="qwen2")
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    imgs = random_images(2, seed=71)
    ref, prompt_len = _hf((model, AutoProcessor.from_pretrained(path)), TWO, imgs)
    rt = lm.Runtime(f"hf:{path}", device="cpu", dtype="float32", max_total_tokens=4096)
    try:
        assert rt.loaded.vision.image_tokens == 16 and rt.model_config.arch == "qwen2"
        out = rt.generate([TWO], images=[imgs], max_new_tokens=NEW, temperature=0, ignore_eos=True)[0]
        assert out["output_ids"] == ref
        assert out["meta"]["prompt_tokens"] == prompt_len
        rt.check_integrity()
    finally:
        rt.shutdown()


@pytest.mark.parametrize("arch,tokens,billions", [("llava-7b", 576, 7.06), ("llava-qwen2-0.5b", 729, 0.9)])
def test_dummy_shapes(arch, tokens, billions):
    """The named shapes as transformers builds them (on the meta device, nothing
    allocated): image positions, parameter count, and every HF parameter lmnb uses maps
    onto an lmnb parameter of the same size."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from lmnb.runtime.models.llava import LLAVA_SHAPES, route
    from lmnb.runtime.models.llava import LlavaConfig as OurConfig
    from lmnb.runtime.models.llava import LlavaForConditionalGeneration as Ours

    cfg = OurConfig.from_hf(LLAVA_SHAPES[arch])
    assert cfg.image_tokens == tokens
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(LlavaConfig(**LLAVA_SHAPES[arch]))
    ours = Ours(cfg, torch.float32, torch.device("meta"))
    n = sum(p.numel() for p in hf.parameters())
    assert abs(n / 1e9 - billions) < 0.05 * billions, n
    used = 0
    for name, p in hf.named_parameters():
        part, rest = route(name)
        assert part is not None, name
        if part != "vision" or ours.vision_tower.wants(rest):
            used += p.numel()
    assert used == sum(p.numel() for p in ours.parameters())
