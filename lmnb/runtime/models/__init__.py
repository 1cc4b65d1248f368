"""Model classes: the Llama-family decoder and LLaVA-style vision-language models."""
from __future__ import annotations

import torch


def build_model(loaded, dtype: torch.dtype, device: torch.device):
    """An empty model for a `loader.LoadedModel` (its weights are loaded next)."""
    if loaded.vision is not None:
        from lmnb.runtime.models.llava import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration(loaded.vision, dtype, device)
    from lmnb.runtime.models.llama import LlamaForCausalLM

    return LlamaForCausalLM(loaded.config, dtype, device)
