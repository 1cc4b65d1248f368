"""LLaVA-style vision-language models (transformers' `LlavaForConditionalGeneration`):
a CLIP vision tower, a two-layer MLP projector, and the Llama-family decoder over the
token-level KV pool. Image positions of a prompt enter the decoder through the forward
batch's embedding override (`ForwardBatch.embed_override`), filled by
`lmnb.runtime.multimodal` from `encode_images`."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from lmnb.errors import LmnbError
from lmnb.runtime.attention.base import AttentionBackend
from lmnb.runtime.forward_batch import ForwardBatch
from lmnb.runtime.memory import KVPool
from lmnb.runtime.models.config import ModelConfig
from lmnb.runtime.models.llama import LlamaForCausalLM
from lmnb.runtime.models.vision import CLIPVisionTower, VisionConfig, activation

VLM_TYPES = ("llava",)


@dataclass(frozen=True, slots=True)
class LlavaConfig:
    text: ModelConfig
    vision: VisionConfig
    image_token_id: int
    feature_layers: tuple[int, ...] = (-2,)
    select_strategy: str = "default"      # "default" drops the class token, "full" keeps it
    projector_act: str = "gelu"
    projector_bias: bool = True

    @classmethod
    def from_hf(cls, hf: dict) -> LlavaConfig:
        if hf.get("model_type") not in VLM_TYPES:
            raise LmnbError(f"model type {hf.get('model_type')!r} is not a supported vision-language model")
        text = dict(hf.get("text_config") or {})
        text.setdefault("model_type", "llama")
        layer = hf.get("vision_feature_layer", -2)
        strategy = hf.get("vision_feature_select_strategy", "default")
        if strategy not in ("default", "full"):
            raise LmnbError(f"vision_feature_select_strategy {strategy!r} is not supported (default, full)")
        image_token = hf.get("image_token_id", hf.get("image_token_index"))
        if image_token is None:
            raise LmnbError("the LLaVA config has no image_token_id / image_token_index")
        return cls(text=ModelConfig.from_hf(text), vision=VisionConfig.from_hf(hf.get("vision_config") or {}),
                   image_token_id=int(image_token),
                   feature_layers=tuple(layer) if isinstance(layer, (list, tuple)) else (int(layer),),
                   select_strategy=strategy, projector_act=hf.get("projector_hidden_act", "gelu"),
                   projector_bias=bool(hf.get("multimodal_projector_bias", True)))

    @property
    def image_tokens(self) -> int:
        """Decoder positions one image takes: one per patch, plus CLIP's class token with
        "full"; "default" drops the first position (CLIP's class token)."""
        n = self.vision.num_patches + self.vision.class_token
        return n - 1 if self.select_strategy == "default" else n


class Projector(nn.Module):
    def __init__(self, cfg: LlavaConfig, dtype, device) -> None:
        super().__init__()
        n_in, h = cfg.vision.hidden_size * len(cfg.feature_layers), cfg.text.hidden_size
        self.linear_1 = nn.Linear(n_in, h, bias=cfg.projector_bias, dtype=dtype, device=device)
        self.act = activation(cfg.projector_act)
        self.linear_2 = nn.Linear(h, h, bias=cfg.projector_bias, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaForConditionalGeneration(nn.Module):
    """The decoder's step (`forward`) plus `encode_images(pixel_values) -> [n, tokens, hidden]`."""

    def __init__(self, cfg: LlavaConfig, dtype: torch.dtype, device: torch.device, quant=None) -> None:
        super().__init__()
        self.vl_cfg, self.cfg = cfg, cfg.text
        self.language_model = LlamaForCausalLM(cfg.text, dtype, device, quant=quant)
        self.vision_tower = CLIPVisionTower(cfg.vision, cfg.feature_layers, dtype, device)
        self.multi_modal_projector = Projector(cfg, dtype, device)

    # the decoder's interface, as the model runner and CUDA graphs use it
    def forward(self, batch: ForwardBatch, backend: AttentionBackend, pool: KVPool) -> torch.Tensor:
        return self.language_model(batch, backend, pool)

    def forward_planned(self, batch: ForwardBatch, backend: AttentionBackend, pool: KVPool) -> torch.Tensor:
        return self.language_model.forward_planned(batch, backend, pool)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.logits(hidden)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n, C, H, W] preprocessed images -> [n, image_tokens, hidden] decoder embeddings."""
        feats = self.vision_tower(pixel_values.to(self.multi_modal_projector.linear_1.weight.device))
        if self.vl_cfg.select_strategy == "default":
            feats = feats[:, 1:]
        return self.multi_modal_projector(feats)

    # -- weights -------------------------------------------------------------
    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """transformers' names, old (`language_model.model.*`, `vision_tower.*`) or new
        (`model.language_model.*`, `model.vision_tower.*`); every parameter exactly once."""
        other: dict[str, torch.Tensor] = {}

        def text() -> Iterator[tuple[str, torch.Tensor]]:
            for name, t in weights:
                part, rest = route(name)
                if part == "text":
                    yield rest, t
                elif part == "vision" and self.vision_tower.wants(rest):
                    other["vision_tower." + rest] = t
                elif part == "projector":
                    other["multi_modal_projector." + rest] = t

        self.language_model.load_weights(text())
        params = {k: v for k, v in self.named_parameters() if not k.startswith("language_model.")}
        for name, p in params.items():
            t = other.pop(name, None)
            if t is None:
                raise LmnbError(f"checkpoint lacks the vision weight {name}")
            if t.shape != p.shape:
                raise LmnbError(f"weight {name} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
            p.copy_(t)
        if other:
            raise LmnbError(f"checkpoint has unexpected vision weights, e.g. {min(other)}")


def route(name: str) -> tuple[str | None, str]:
    """Checkpoint name -> ("text" | "vision" | "projector" | None, name inside that part)."""
    for prefix, part in (("language_model.model.", "text"), ("model.language_model.", "text"),
                         ("vision_tower.", "vision"), ("model.vision_tower.", "vision"),
                         ("multi_modal_projector.", "projector"),
                         ("model.multi_modal_projector.", "projector")):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if part == "vision":
                rest = rest.removeprefix("vision_model.")
            return part, ("model." + rest if part == "text" else rest)
    if name in ("language_model.lm_head.weight", "lm_head.weight"):
        return "text", "lm_head.weight"
    return None, name


def vision_weight_shapes(cfg: LlavaConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Checkpoint names and shapes of the tower and projector (built on the meta device)."""
    parts = {"vision_tower.": CLIPVisionTower(cfg.vision, cfg.feature_layers, torch.float32, "meta"),
             "multi_modal_projector.": Projector(cfg, torch.float32, "meta")}
    return [(prefix + k, tuple(p.shape)) for prefix, m in parts.items() for k, p in m.named_parameters()]


def dummy_weights(cfg: LlavaConfig, device, dtype, seed: int = 0):
    """Seeded random checkpoint-named weights: the decoder's as for `dummy:` text models,
    then tower + projector (normal(0, 0.02); norm weights 1, biases 0)."""
    from lmnb.runtime.loader import dummy_weights as text_weights

    for name, t in text_weights(cfg.text, device, dtype, seed):
        yield "language_model." + name, t
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + 1)
    for name, shape in vision_weight_shapes(cfg):
        if "norm" in name or name.endswith(".bias"):
            yield name, (torch.ones if "norm" in name and name.endswith("weight") else torch.zeros)(
                shape, dtype=dtype, device=device)
            continue
        t = torch.empty(shape, dtype=torch.float32, device=device)
        t.normal_(0.0, 0.02, generator=gen)
        yield name, t.to(dtype)


# Named real shapes for dummy:<arch> (HF config fields, as LlavaConfig.from_hf reads them)
LLAVA_SHAPES: dict[str, dict] = {
    # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px (576 image tokens) + a Llama-2-7B decoder
    "llava-7b": dict(
        model_type="llava", image_token_index=32000, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        text_config=dict(model_type="llama", vocab_size=32064, hidden_size=4096,
                         intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, rope_theta=10000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=4096, tie_word_embeddings=False),
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, image_size=336,
                           patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)),
    # llava-hf/llava-interleave-qwen-0.5b-hf: SigLIP-so400m at 384 px (729 image tokens, all
    # positions of the last layer) + a Qwen2-0.5B decoder
    "llava-qwen2-0.5b": dict(
        model_type="llava", image_token_index=151646, vision_feature_layer=-1,
        vision_feature_select_strategy="full", projector_hidden_act="gelu",
        text_config=dict(model_type="qwen2", vocab_size=152000, hidden_size=896,
                         intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         max_position_embeddings=32768, tie_word_embeddings=True),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                           num_hidden_layers=26, num_attention_heads=16, image_size=384,
                           patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)),
    # a tiny shape for fast tests (16 image tokens)
    "llava-tiny": dict(
        model_type="llava", image_token_index=511, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        text_config=dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)),
}
