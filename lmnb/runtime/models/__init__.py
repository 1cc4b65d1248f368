"""Model classes: the Llama-family decoder and LLaVA-style vision-language models."""
from __future__ import annotations

import torch


def build_model(loaded, dtype: torch.dtype, device: torch.device, quant=None):
    """An empty model for a `loader.LoadedModel` (its weights are loaded next); `quant`:
    the FP8 method of the decoder's projections, or None."""
    if loaded.vision is not None:
        from lmnb.runtime.models.llava import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration(loaded.vision, dtype, device, quant=quant)
    from lmnb.runtime.models.llama import LlamaForCausalLM

    return LlamaForCausalLM(loaded.config, dtype, device, quant=quant)
