"""The vision towers of LLaVA-style models, in plain torch with transformers' parameter
names so checkpoints load 1:1: CLIP (ViT: patch conv + class token + learned positions,
a pre-norm, pre-norm encoder layers) and SigLIP (the same without class token and
pre-norm, a biased patch conv). Only the layers up to the deepest feature layer the model reads are
built; images are encoded in one batch per step (no KV cache, no causal mask)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmnb.errors import LmnbError


def activation(name: str):
    """The transformers activations vision towers and projectors use."""
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu
    if name == "relu":
        return F.relu
    raise LmnbError(f"activation {name!r} is not supported in the vision tower")


@dataclass(frozen=True, slots=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    kind: str = "clip"              # "clip" | "siglip"

    @classmethod
    def from_hf(cls, hf: dict) -> VisionConfig:
        mt = hf.get("model_type", "clip_vision_model")
        kinds = {"clip_vision_model": "clip", "clip": "clip", "siglip_vision_model": "siglip"}
        if mt not in kinds:
            raise LmnbError(f"vision tower {mt!r} is not supported; lmnb runs clip_vision_model "
                            "and siglip_vision_model")
        kind = kinds[mt]
        return cls(kind=kind, hidden_size=hf.get("hidden_size", 768),
                   intermediate_size=hf.get("intermediate_size", 3072),
                   num_layers=hf.get("num_hidden_layers", 12),
                   num_heads=hf.get("num_attention_heads", 12),
                   image_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 32),
                   num_channels=hf.get("num_channels", 3),
                   layer_norm_eps=hf.get("layer_norm_eps", 1e-5 if kind == "clip" else 1e-6),
                   hidden_act=hf.get("hidden_act", "quick_gelu" if kind == "clip" else "gelu_pytorch_tanh"))

    @property
    def class_token(self) -> bool:
        return self.kind == "clip"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def num_params(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
        return (self.num_channels * self.patch_size ** 2 * h + h + (self.num_patches + 1) * h
                + 4 * h + self.num_layers * layer)   # (CLIP's; SigLIP's differs by a few vectors)


def _linear(n_in: int, n_out: int, dtype, device) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=True, dtype=dtype, device=device)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig, dtype, device) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.heads, self.d = cfg.num_heads, h // cfg.num_heads
        self.q_proj, self.k_proj = _linear(h, h, dtype, device), _linear(h, h, dtype, device)
        self.v_proj, self.out_proj = _linear(h, h, dtype, device), _linear(h, h, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t):
            return t.view(b, n, self.heads, self.d).transpose(1, 2)

        o = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)),
                                           heads(self.v_proj(x)))
        return self.out_proj(o.transpose(1, 2).reshape(b, n, -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig, dtype, device) -> None:
        super().__init__()
        self.act = activation(cfg.hidden_act)
        self.fc1 = _linear(cfg.hidden_size, cfg.intermediate_size, dtype, device)
        self.fc2 = _linear(cfg.intermediate_size, cfg.hidden_size, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, cfg: VisionConfig, dtype, device) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.layer_norm1 = nn.LayerNorm(h, eps=eps, dtype=dtype, device=device)
        self.self_attn = VisionAttention(cfg, dtype, device)
        self.layer_norm2 = nn.LayerNorm(h, eps=eps, dtype=dtype, device=device)
        self.mlp = VisionMLP(cfg, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig, dtype, device) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.image_size = cfg.image_size
        self.patch_embedding = nn.Conv2d(cfg.num_channels, h, cfg.patch_size, cfg.patch_size,
                                         bias=not cfg.class_token, dtype=dtype, device=device)
        self.class_embedding = (nn.Parameter(torch.empty(h, dtype=dtype, device=device))
                                if cfg.class_token else None)
        self.position_embedding = nn.Embedding(cfg.num_patches + cfg.class_token, h, dtype=dtype,
                                               device=device)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[-1] != self.image_size or pixel_values.shape[-2] != self.image_size:
            raise LmnbError(f"the image processor gave {tuple(pixel_values.shape[-2:])} pixels; "
                            f"the vision tower takes {self.image_size}x{self.image_size}")
        w = self.patch_embedding.weight
        x = self.patch_embedding(pixel_values.to(w.dtype)).flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        return x + self.position_embedding.weight


class CLIPVisionTower(nn.Module):
    """`forward(pixel_values)` -> the hidden states of `feature_layers` (transformers'
    `hidden_states` indexing: 0 is the embeddings after the pre-norm, k the output of
    layer k, negative counts from the last layer), concatenated on the feature axis."""

    def __init__(self, cfg: VisionConfig, feature_layers: tuple[int, ...], dtype, device) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_layers = tuple(k if k >= 0 else cfg.num_layers + 1 + k for k in feature_layers)
        if any(not 0 <= k <= cfg.num_layers for k in self.feature_layers):
            raise LmnbError(f"vision_feature_layer {feature_layers} is outside the tower's "
                            f"{cfg.num_layers} layers")
        self.embeddings = VisionEmbeddings(cfg, dtype, device)
        self.pre_layrnorm = (nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=dtype,
                                          device=device) if cfg.kind == "clip" else nn.Identity())
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(VisionLayer(cfg, dtype, device)
                                            for _ in range(max(self.feature_layers)))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        states = [x]
        for layer in self.encoder.layers:
            x = layer(x)
            states.append(x)
        return torch.cat([states[k] for k in self.feature_layers], dim=-1)

    def wants(self, name: str) -> bool:
        """Whether checkpoint tensor `name` (relative to the tower, without the
        `vision_model.` level older checkpoints have) is a parameter here: the unused
        post-norm, SigLIP's pooling head and layers past the deepest feature layer are skipped."""
        if name.startswith(("post_layernorm", "head.")) or "position_ids" in name:
            return False
        if name.startswith("encoder.layers."):
            return int(name.split(".")[2]) < len(self.encoder.layers)
        return True
