"""The Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3) over the token-level
KV pool. Weights come from HF state-dict names; q/k/v and gate/up are fused on load.
`quant` (optional) builds the attention and MLP projections (e.g. FP8); embeddings and
norms are never quantized; a quantized LM head is a copy set by `set_quantized_head`."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lmnb.errors import LmnbError
from lmnb.runtime.attention.base import AttentionBackend
from lmnb.runtime.forward_batch import ForwardBatch
from lmnb.runtime.kernels import silu_and_mul
from lmnb.runtime.memory import KVPool
from lmnb.runtime.models.config import ModelConfig
from lmnb.runtime.models.layers import (
    RMSNorm,
    Rotary,
    empty_linear,
    fused_norm_projection,
    linear,
    norm_linear,
)
from lmnb.runtime.quant.fp8_checkpoint import Fp8Weight


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype, device, quant=None) -> None:
        super().__init__()
        self.layer, self.h, self.kvh, self.d = layer, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = self.h * self.d, self.kvh * self.d
        self.qkv_proj = empty_linear(cfg.hidden_size, self.q_size + 2 * self.kv_size,
                                     cfg.attention_bias, dtype, device, quant)
        self.o_proj = empty_linear(self.q_size, cfg.hidden_size, False, dtype, device, quant)
        self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps, dtype, device) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps, dtype, device) if cfg.qk_norm else None

    def forward(self, x, positions, rotary: Rotary, backend: AttentionBackend,
                batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        return self.attend(self.qkv_proj(x), positions, rotary, backend, batch, pool)

    def attend(self, qkv, positions, rotary: Rotary, backend: AttentionBackend,
               batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        """The block after the q/k/v projection: rotary, KV store, attention, o_proj."""
        if self.q_norm is None and not qkv.is_cuda:
            # CPU: rotate q and k heads in one pass (fewer small ops per layer)
            qk = rotary.rotate_cpu(qkv[:, : self.q_size + self.kv_size].view(-1, self.h + self.kvh, self.d),
                                   positions)
            q, k = qk[:, : self.h], qk[:, self.h:]
            v = qkv[:, self.q_size + self.kv_size:].view(-1, self.kvh, self.d)
            o = backend.forward(q, k, v, self.layer, batch, pool)
            return self.o_proj(o.reshape(-1, self.q_size))
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.h, self.d)
        k = k.view(-1, self.kvh, self.d)
        v = v.view(-1, self.kvh, self.d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        fused = getattr(backend, "forward_rotary", None)   # triton: rotary + KV store in one kernel
        if fused is not None and qkv.is_cuda:
            o = fused(q, k, v, positions, rotary.cos, rotary.sin, self.layer, batch, pool)
            return self.o_proj(o.reshape(-1, self.q_size))
        q, k = rotary(q, k, positions)
        o = backend.forward(q, k, v, self.layer, batch, pool)
        return self.o_proj(o.reshape(-1, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype, device, quant=None) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = empty_linear(cfg.hidden_size, 2 * self.inter, False, dtype, device, quant)
        self.down_proj = empty_linear(self.inter, cfg.hidden_size, False, dtype, device, quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.gate_up_proj(x))

    def down(self, h: torch.Tensor) -> torch.Tensor:
        """down_proj(silu(gate) * up) of the gate/up projection's output h."""
        fused = getattr(self.down_proj, "silu_mul_forward", None)   # one row: the GEMV applies it
        return fused(h) if fused is not None else self.down_proj(silu_and_mul(h))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype, device, quant=None) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer, dtype, device, quant)
        self.mlp = MLP(cfg, dtype, device, quant)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)

    def forward(self, x, residual, positions, rotary, backend, batch, pool):
        """Pre-norm block carrying the residual stream separately, so each residual add is
        fused into the next norm: returns (mlp output, residual) with x + residual being
        the block's output. `residual=None` in the first layer. At one CUDA row the
        norms run inside the q/k/v and gate/up GEMVs (`norm_linear`)."""
        qkv, residual = norm_linear(self.input_layernorm, self.self_attn.qkv_proj, x, residual)
        h = self.self_attn.attend(qkv, positions, rotary, backend, batch, pool)
        gate_up, residual = norm_linear(self.post_attention_layernorm, self.mlp.gate_up_proj, h, residual)
        return self.mlp.down(gate_up), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device,
                 quant=None) -> None:
        super().__init__()
        self.cfg, self.quant = cfg, quant
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device="meta")
        self.embed_tokens.weight = nn.Parameter(
            torch.empty(cfg.vocab_size, cfg.hidden_size, dtype=dtype, device=device))
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, dtype, device, quant)
                                    for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.lm_head = (None if cfg.tie_word_embeddings
                        else empty_linear(cfg.hidden_size, cfg.vocab_size, False, dtype, device))
        self.rotary = Rotary(cfg.head_dim, cfg.max_position, cfg.rope_theta, cfg.rope_scaling,
                             dtype, device)
        self.quant_head: nn.Module | None = None   # set by quantize()
        self.quantization: dict | None = None
        self.fused_decode = None   # set by quantize() where lmnb's CPU kernels run the step

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, backend: AttentionBackend, pool: KVPool) -> torch.Tensor:
        """Runs the step and returns fp32 logits of the rows in `batch.logits_rows`."""
        fused = self.fused_decode
        if fused is not None and fused.accepts(batch, pool):   # one C call for the layers
            x = fused.hidden(self.embed_tokens(batch.input_ids), batch, pool)
            return self.logits(x if batch.logits_rows is None else x[batch.logits_rows])
        backend.init_forward(batch)
        return self.forward_planned(batch, backend, pool)

    @torch.inference_mode()
    def forward_planned(self, batch: ForwardBatch, backend: AttentionBackend,
                        pool: KVPool) -> torch.Tensor:
        """The step after the backend has planned it (what a CUDA graph captures);
        `logits_rows=None` means every row."""
        x, residual = self.embed_tokens(batch.input_ids), None
        if batch.embed_override is not None:
            x = batch.embed_override.apply(x)
        if not x.is_cuda:
            self.rotary.prepare_cpu(batch.positions)
        for layer in self.layers:
            x, residual = layer(x, residual, batch.positions, self.rotary, backend, batch, pool)
        if batch.logits_rows is not None:
            x, residual = x[batch.logits_rows], residual[batch.logits_rows]
        if self.quant_head is not None:
            return norm_linear(self.norm, self.quant_head, x, residual)[0].float()
        fused = fused_norm_projection(x, residual, self.norm, self.head_weight())
        if fused is not None:
            return fused[0].float()
        x, _ = self.norm.add(x, residual)
        return self.logits(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.quant_head is not None:
            return self.quant_head(hidden).float()
        return linear(hidden, self.head_weight()).float()

    def head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    # -- quantization (lmnb.runtime.quant) -------------------------------------
    def quantize(self, mode: str) -> dict:
        """After load_weights: swap the linear layers and the LM head for quantized ones."""
        from lmnb.runtime.quant import quantize_model

        self.quantization = quantize_model(self, mode)
        return self.quantization

    def set_quantized_head(self, head: nn.Module) -> None:
        self.quant_head, self.lm_head = head, None

    def set_fused_decode(self, fused) -> None:
        """A `quant.cpu_decode.FusedDecode` that runs the few-row steps (or None)."""
        self.fused_decode = fused

    # -- weights -------------------------------------------------------------
    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; every parameter must be covered exactly once. FP8
        checkpoint weights arrive as `Fp8Weight`s: quantized layers take them as they are,
        plain ones dequantize them."""
        params = dict(self.named_parameters())
        modules = dict(self.named_modules())
        seen: set[str] = set()
        for name, t in weights:
            target, offset = self._target(name)
            if target is None:
                continue
            mod_name, _, leaf = target.rpartition(".")
            mod = modules.get(mod_name)
            if hasattr(mod, "load_weight"):  # a quantized layer places its own rows
                mod.load_weight(leaf, t, offset or 0)
                seen.add(name)
                continue
            p = params[target]
            if isinstance(t, Fp8Weight):
                t = t.dequantize(p.dtype)
            rows = t.shape[0] if offset is not None else None
            dst = p if offset is None else p.narrow(0, offset, rows)
            if dst.shape != t.shape:
                raise LmnbError(f"weight {name} has shape {tuple(t.shape)}, expected {tuple(dst.shape)}")
            dst.copy_(t)
            seen.add(name)
        missing = self._expected_names() - seen
        if missing:
            raise LmnbError(f"checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[0]}")

    def _target(self, name: str) -> tuple[str | None, int | None]:
        name = name.removeprefix("model.")
        if name == "lm_head.weight":
            return (None, None) if self.lm_head is None else ("lm_head.weight", None)
        if "rotary_emb" in name:
            return None, None
        cfg = self.cfg
        q, kv, inter = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
        fused = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", q),
                 "v_proj": ("qkv_proj", q + kv), "gate_proj": ("gate_up_proj", 0),
                 "up_proj": ("gate_up_proj", inter)}
        for part, (dst, off) in fused.items():
            if f".{part}." in name:
                return name.replace(part, dst), off
        return name, None

    def _expected_names(self) -> set[str]:
        cfg = self.cfg
        names = {"model.embed_tokens.weight", "model.norm.weight"}
        if not cfg.tie_word_embeddings:
            names.add("lm_head.weight")
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            for s in ("q_proj", "k_proj", "v_proj", "o_proj"):
                names.add(p + f"self_attn.{s}.weight")
            if cfg.attention_bias:
                names |= {p + f"self_attn.{s}.bias" for s in ("q_proj", "k_proj", "v_proj")}
            if cfg.qk_norm:
                names |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
            names |= {p + f"mlp.{s}.weight" for s in ("gate_proj", "up_proj", "down_proj")}
            names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        return names
