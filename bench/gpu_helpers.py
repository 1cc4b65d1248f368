"""GPU benchmark helpers: an HF transformers peer over the runtime's own weight tensors,
padded HF generation, the measured HBM bandwidth, synthetic token workloads and the
radix-cache ablation switch."""
from __future__ import annotations

import contextlib
import random
import time

import torch
from torch import nn


def hf_sharing(rt):
    """HF transformers model whose parameters are views of `rt.model`'s (no second copy
    of the weights: an 8B model and its HF peer fit beside a KV pool)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "mistral": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    hf = dict(rt.loaded.hf_config)
    cfg = cls[hf.pop("model_type")](**hf)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg, dtype=rt.dtype)
    own = dict(rt.model.named_parameters())
    for name, _ in list(m.named_parameters()):
        target, offset = rt.model._target(name)
        if target is None:
            continue
        mod_name, leaf = name.rsplit(".", 1)
        mod = m.get_submodule(mod_name)
        rows = mod._parameters[leaf].shape[0]
        src = own[target] if offset is None else own[target].narrow(0, offset, rows)
        mod._parameters[leaf] = nn.Parameter(src, requires_grad=False)
    if cfg.tie_word_embeddings:
        m.lm_head.weight = m.model.embed_tokens.weight
    rot = m.model.rotary_emb
    with torch.device(rt.device):
        m.model.rotary_emb = type(rot)(config=cfg)
    meta = [n for n, t in [*m.named_parameters(), *m.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"HF peer left on meta: {meta[:3]}")
    m.generation_config.eos_token_id = None
    return m.eval()


@torch.no_grad()
def hf_generate(model, prompts: list[list[int]], new: int) -> torch.Tensor:
    """Greedy `generate` of exactly `new` tokens per prompt, left-padded into one batch."""
    longest = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = 1
    dev = model.device
    out = model.generate(ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=new,
                         min_new_tokens=new, do_sample=False, pad_token_id=0)
    _sync()
    return out[:, longest:]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def byte_tokenizer_shim() -> None:
    """The byte tokenizer of dummy models lacks `convert_tokens_to_string`, which the
    grammar's vocabulary scan calls; pieces are plain text there, so joining them is it."""
    from lmnb.runtime.tokenizer import ByteTokenizer

    if not hasattr(ByteTokenizer, "convert_tokens_to_string"):
        ByteTokenizer.convert_tokens_to_string = lambda self, tokens: "".join(tokens)


def timed(fn) -> float:
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def hbm_bandwidth_gbs(nbytes: int = 2**30, repeats: int = 20) -> float:
    """Device-to-device copy of `nbytes`, counting bytes read plus written (GB/s, median)."""
    if not torch.cuda.is_available():
        return float("nan")
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    del src, dst
    return 2 * nbytes / times[len(times) // 2] / 1e9


def weight_bytes_per_step(rt) -> int:
    """Bytes of weights a decode step reads: every matrix once, one embedding row."""
    total = sum(p.numel() * p.element_size() for p in rt.model.parameters())
    if rt.model.lm_head is not None or getattr(rt.model, "quant_head", None) is not None:
        # the head is its own matrix (untied, or a quantized copy): the embedding is only gathered
        total -= rt.model.embed_tokens.weight.numel() * rt.model.embed_tokens.weight.element_size()
    return total


def random_tokens(rng: random.Random, n: int, vocab: int) -> list[int]:
    """Ids of printable bytes for the byte tokenizer of dummy models (any id is valid)."""
    return [rng.randrange(35, 120) if vocab < 1000 else rng.randrange(35, min(vocab, 250))
            for _ in range(n)]


@contextlib.contextmanager
def without_radix_cache(rt):
    """The runtime as `Runtime(..., enable_radix_cache=False)` would be: cache flushed and
    disabled while idle (same weights and pool, so the ablation runs side by side)."""
    def toggle(off: bool) -> None:
        rt.cache.flush()
        rt.cache.disabled = off

    rt.engine.call(lambda: toggle(True))
    try:
        yield rt
    finally:
        rt.engine.call(lambda: toggle(False))


@contextlib.contextmanager
def _switched_off(rt, owner, flag: str):
    """A feature flag of the engine's objects off while idle, back on afterwards."""
    rt.engine.call(lambda: setattr(owner, flag, False))
    try:
        yield rt
    finally:
        rt.engine.call(lambda: setattr(owner, flag, True))


def without_jump_forward(rt):
    """As `Runtime(..., jump_forward=False)`: the output processor's switch, while idle."""
    return _switched_off(rt, rt.outputs, "jump_forward")


def without_mixed_steps(rt):
    """As `Runtime(..., mixed_steps=False)` (the default is on, on CUDA): jump-forward
    extends carry no decode tokens."""
    return _switched_off(rt, rt.scheduler, "mixed")


def without_overlap(rt):
    """As `Runtime(..., overlap=False)`: every step settled before the next is launched."""
    return _switched_off(rt, rt.engine, "overlap")


def submit_all(rt, prompts: list[list[int]], params: list[dict]) -> list[dict]:
    """Submit every request at once (continuous batching) and wait for all."""
    handles = [rt.submit(p, **kw) for p, kw in zip(prompts, params)]
    return [h.result() for h in handles]
