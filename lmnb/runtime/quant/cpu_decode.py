"""The fused CPU decode step: a whole few-row step of a quantized Llama-family model in one
call of lmnb's C kernels (`cpu_kernels.c`, `lmnb_decode_step`).

A decode step of a 135M model on two cores is a few milliseconds of matmuls and, in eager
torch, as much again of small ops and Python per layer (norms, rotary, KV stores, the
attention calls, casts). The fused step runs the norms, the projections, rotary, the KV
writes, attention over each row's own keys, SiLU and the residual adds in C, in one OpenMP
region per step. It takes the steps the torch path would run row-exact (fewer than
`DENSE_ROWS` rows): each row is computed alone, so drafts and batching keep giving plain
decoding's tokens. Larger steps (prefill chunks, 16+ requests) keep the torch path and the
dense weight copy.

It applies to a model whose decoder layers are all quantized with lmnb's kernels, in fp32,
without q/k norms (Llama, SmolLM2, Mistral, Qwen2); `FusedDecode.unsupported` says why not
otherwise, and such models keep the per-layer path.
"""
from __future__ import annotations

import ctypes

import torch

from lmnb.runtime.forward_batch import ForwardBatch
from lmnb.runtime.kernels.reference import full_rope_table
from lmnb.runtime.memory import KVPool
from lmnb.runtime.quant import cpu_kernels
from lmnb.runtime.quant.cpu_linear import DENSE_ROWS, QuantLinear


class FusedDecode:
    """Holds the C view of a model's weights and references to the tensors and layers
    behind it; it keeps no reference to the model itself (the model holds it)."""

    def __init__(self, model, kernels: cpu_kernels.Kernels) -> None:
        cfg = model.cfg
        self.kernels = kernels
        d = cfg.head_dim
        cos = full_rope_table(model.rotary.cos, d).float().contiguous()
        sin = full_rope_table(model.rotary.sin, d).float().contiguous()
        # everything the C structs point into stays referenced here
        self._keep: list = [cos, sin, model.norm.weight]
        layers = (cpu_kernels.Layer * cfg.num_layers)()
        for i, layer in enumerate(model.layers):
            a, m = layer.self_attn, layer.mlp
            lins = (a.qkv_proj, a.o_proj, m.gate_up_proj, m.down_proj)
            norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
            self._keep += [*lins, *norms]
            layers[i] = cpu_kernels.Layer(*(lin.desc for lin in lins),
                                          *(w.data_ptr() for w in norms), None, None)
        self._layers = layers
        self.desc = cpu_kernels.Model(   # the C view of the decoder
            cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, d,
            cfg.intermediate_size, cfg.rms_norm_eps, d ** -0.5, cos.data_ptr(), sin.data_ptr(),
            ctypes.cast(layers, ctypes.POINTER(cpu_kernels.Layer)), model.norm.weight.data_ptr())
        self._pool: tuple | None = None   # (k buffers, v buffers) the layers point at

    @staticmethod
    def unsupported(model) -> str | None:
        """Why this model cannot use the fused step, or None."""
        cfg = model.cfg
        if cfg.qk_norm:
            return "q/k norms"
        if cfg.head_dim % cpu_kernels.HEAD_LANES:
            return f"head dim {cfg.head_dim} (the fused step's attention takes multiples of {cpu_kernels.HEAD_LANES})"
        if model.embed_tokens.weight.dtype != torch.float32:
            return f"dtype {model.embed_tokens.weight.dtype} (the fused step is fp32)"
        for layer in model.layers:
            for lin in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                        layer.mlp.gate_up_proj, layer.mlp.down_proj):
                if not isinstance(lin, QuantLinear) or lin.kernels is None:
                    return "a layer without lmnb's kernels"
        return None

    def accepts(self, batch: ForwardBatch, pool: KVPool) -> bool:
        return (batch.input_ids.numel() < DENSE_ROWS and batch.embed_override is None
                and not batch.input_ids.is_cuda and pool.dtype == torch.float32)

    def _bind_pool(self, pool: KVPool) -> None:
        if self._pool is not None and self._pool[0] is pool.k and self._pool[1] is pool.v:
            return
        for i in range(len(self._layers)):
            self._layers[i].k_cache = pool.k[i].data_ptr()
            self._layers[i].v_cache = pool.v[i].data_ptr()
        self._pool = (pool.k, pool.v)

    def hidden(self, embed: torch.Tensor, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        """The final norm's output [rows, hidden] for the step's input embeddings."""
        self._bind_pool(pool)
        table = batch.req_to_token[batch.req_pool_indices]
        spans, offs, cnts, start = [], [], [], 0
        for i, (pre, ext, n) in enumerate(zip(batch.prefix_lens_cpu, batch.extend_lens_cpu,
                                              batch.seq_lens_cpu)):
            spans.append(table[i, :n])
            offs += [start] * ext
            cnts += range(pre + 1, pre + ext + 1)
            start += n
        key_slots = torch.cat(spans).long()
        x = embed.float().contiguous()
        return self.kernels.decode_step(
            self.desc, x, batch.positions.contiguous(), batch.out_cache_loc.contiguous(),
            key_slots, torch.tensor(offs, dtype=torch.int64), torch.tensor(cnts, dtype=torch.int64))
