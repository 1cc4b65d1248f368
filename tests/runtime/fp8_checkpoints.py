"""Tiny FP8 checkpoints written by the tests themselves (config.json + safetensors with
float8_e4m3fn weights + the SmolLM2 tokenizer), in the layouts real releases use:

  block      quant_method "fp8", weight_block_size [128, 128], `weight_scale_inv` per block
  misaligned the same with an intermediate size that is not a multiple of 128
  channel    compressed-tensors, strategy "channel", `weight_scale` [N, 1] in bf16
  tensor     quant_method "fp8" without blocks: one `weight_scale` + an `input_scale`
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lmnb.runtime.quant.fp8_reference import dequantize, quantize_block, quantize_per_channel

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
KINDS = ("block", "misaligned", "channel", "tensor")


def hf_config(kind: str) -> dict:
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=49152,
               hidden_size=256, intermediate_size=320 if kind == "misaligned" else 512,
               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
               rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=1024,
               tie_word_embeddings=False, torch_dtype="bfloat16")
    if kind in ("block", "misaligned"):
        cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                      "fmt": "e4m3", "weight_block_size": [128, 128]}
    elif kind == "tensor":
        cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "static"}
    elif kind == "channel":
        cfg["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {"group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": "channel",
                            "symmetric": True, "dynamic": False},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                      "dynamic": True}}},
            "ignore": ["lm_head"]}
    return cfg


def _shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    out = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,),
           "lm_head.weight": (cfg["vocab_size"], h)}
    dims = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
            "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        for name, shape in dims.items():
            out[p + ("self_attn." if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp.")
                + name + ".weight"] = shape
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
    return out


def _quantized(kind: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Checkpoint tensors of one projection (suffix -> tensor) and the float weight they
    stand for."""
    if kind in ("block", "misaligned"):
        q, s = quantize_block(w)
        return {"weight": q, "weight_scale_inv": s}, dequantize(q, s, (128, 128))
    if kind == "channel":
        q, s = quantize_per_channel(w)
        s16 = s.to(torch.bfloat16)[:, None]       # compressed-tensors keeps scales in bf16
        q = (w.float() / s16.float()).clamp(-448, 448).to(torch.float8_e4m3fn)
        return {"weight": q, "weight_scale": s16}, q.float() * s16.float()
    amax = w.abs().max().clamp_min(1e-12)
    s = (amax / 448).reshape(())
    q = (w / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    return ({"weight": q, "weight_scale": s, "input_scale": torch.tensor(0.05)},
            q.float() * s)


def write_fp8_checkpoint(root: Path, kind: str, seed: int = 0) -> Path:
    """Write the checkpoint under root/kind; returns the directory. The float weights it
    stands for are saved beside it (`reference.pt`, fp32, HF names)."""
    from safetensors.torch import save_file

    from tests.constrained.conftest import _load_smollm2_tokenizer

    path = Path(root) / kind
    path.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(kind)
    g = torch.Generator().manual_seed(seed)
    tensors, reference = {}, {}
    for name, shape in _shapes(cfg).items():
        if name.endswith("norm.weight"):
            w = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            w = 0.02 * torch.randn(shape, generator=g)
        if any(f".{p}." in name for p in PROJ):
            parts, ref = _quantized(kind, w)
            for suffix, t in parts.items():
                tensors[name.removesuffix("weight") + suffix] = t.contiguous()
            reference[name] = ref
        else:
            tensors[name] = w.to(torch.bfloat16)
            reference[name] = w.to(torch.bfloat16).float()
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    torch.save(reference, path / "reference.pt")
    _load_smollm2_tokenizer().save_pretrained(path)
    return path


def write_plain_checkpoint(src: Path, dst: Path, dtype=torch.float32) -> Path:
    """The reference weights of an FP8 checkpoint as an ordinary checkpoint."""
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    ref = torch.load(src / "reference.pt")
    save_file({k: v.to(dtype).contiguous() for k, v in ref.items()}, str(dst / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (dst / f.name).write_bytes(f.read_bytes())
    return dst
