"""FP8 weights on the CPU: quantization numerics, FP8 checkpoint formats and pairing,
`hf:` FP8 checkpoints loaded by dequantizing, the FP8 model built through the Runtime
with the kernels' torch references (FP8 support faked), and the one-line errors."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import lmnb as lm
from lmnb.errors import LmnbError
from lmnb.runtime.quant import fp8
from lmnb.runtime.quant.fp8_checkpoint import (
    Fp8Weight,
    checkpoint_format,
    pair_fp8_weights,
)
from lmnb.runtime.quant.fp8_reference import (
    FP8,
    FP8_MAX,
    dequantize,
    fp8_linear_ref,
    quantize_block,
    quantize_per_channel,
    quantize_rows_ref,
)
from tests.runtime.fp8_checkpoints import KINDS, write_fp8_checkpoint, write_plain_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ---------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("shape", [(64, 96), (300, 129), (5, 1000)])
def test_quantize_per_channel(shape):
    w = torch.randn(shape) * torch.logspace(-3, 1, shape[0])[:, None]
    w[1] = 0
    q, s = quantize_per_channel(w)
    assert q.dtype == FP8 and s.shape == (shape[0],) and (s > 0).all()
    assert torch.equal(q[1].float(), torch.zeros(shape[1]))
    peaks = q.float().abs().amax(1)
    assert torch.equal(peaks[2:], torch.full_like(peaks[2:], FP8_MAX))   # each row uses the range
    assert _rel(dequantize(q, s, None), w) < 0.04


@pytest.mark.parametrize("shape", [(256, 256), (300, 129), (100, 40)])
def test_quantize_block(shape):
    w = torch.randn(shape)
    w[:128, :128] *= 100   # one loud block must not flatten the others
    q, s = quantize_block(w, (128, 128))
    assert s.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
    assert _rel(dequantize(q, s, (128, 128)), w) < 0.04
    quiet = dequantize(q, s, (128, 128))[128:, :]
    if quiet.numel():
        assert _rel(quiet, w[128:, :]) < 0.04


def test_rows_and_linear_reference():
    x = torch.randn(7, 64) * 3
    xq, xs = quantize_rows_ref(x)
    assert xs.shape == (7, 1) and _rel(xq.float() * xs, x) < 0.04
    w = torch.randn(32, 64) * 0.1
    q, s = quantize_per_channel(w)
    y = fp8_linear_ref(x, q, s, torch.ones(32), None)
    torch.testing.assert_close(y, x @ dequantize(q, s, None).t() + 1)
    assert _rel(fp8_linear_ref(x, q, s, None, None, quantize_input=True), x @ w.t()) < 0.06


# ---------------------------------------------------------------------------- formats
def test_checkpoint_formats():
    assert checkpoint_format({}) is None
    assert checkpoint_format({"quantization_config": {"quant_method": "gguf"}}) is None  # converted GGUF
    f = checkpoint_format({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})
    assert f.method == "fp8" and f.block == (128, 128)
    assert checkpoint_format({"quantization_config": {"quant_method": "fp8"}}).block is None
    ct = {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {
        "num_bits": 8, "type": "float", "strategy": "channel"}}}}
    assert checkpoint_format({"quantization_config": ct}).block is None
    bad = [{"quant_method": "awq"}, {"quant_method": "fp8", "fmt": "e5m2"},
           {"quant_method": "fp8", "weight_block_size": [128]},
           {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {
               "num_bits": 4, "type": "int", "strategy": "group"}}}}]
    for qc in bad:
        with pytest.raises(LmnbError) as e:
            checkpoint_format({"quantization_config": qc})
        assert "\n" not in str(e.value)


def test_pairing_any_order_and_errors():
    w = torch.randn(256, 200)
    q, s = quantize_block(w)
    fmt = checkpoint_format({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})
    stream = [("a.weight_scale_inv", s), ("b.weight", torch.ones(3)), ("a.weight", q),
              ("a.input_scale", torch.tensor(1.0))]
    out = dict(pair_fp8_weights(stream, fmt))
    assert set(out) == {"a.weight", "b.weight"}
    assert isinstance(out["a.weight"], Fp8Weight) and out["a.weight"].block == (128, 128)
    assert torch.equal(out["a.weight"].dequantize(torch.float32), dequantize(q, s, (128, 128)))
    # per tensor: widened to per channel; [N, 1] channel scales
    one = dict(pair_fp8_weights([("c.weight", q), ("c.weight_scale", torch.tensor(0.5))], None))
    assert one["c.weight"].block is None and torch.equal(one["c.weight"].scale, torch.full((256,), 0.5))
    col = dict(pair_fp8_weights([("c.weight", q), ("c.weight_scale", torch.ones(256, 1))], None))
    assert col["c.weight"].scale.shape == (256,)
    with pytest.raises(LmnbError, match="has no weight_scale"):
        list(pair_fp8_weights([("c.weight", q)], fmt))
    with pytest.raises(LmnbError, match="fits neither"):
        list(pair_fp8_weights([("c.weight", q), ("c.weight_scale_inv", torch.ones(3, 3))], fmt))


# ---------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8ckpt")
    return {k: write_fp8_checkpoint(root, k, seed=i) for i, k in enumerate(KINDS)}


def _fused_reference(path: Path, layer: int = 0) -> dict[str, torch.Tensor]:
    ref = torch.load(path / "reference.pt")
    p = f"model.layers.{layer}."
    return {"qkv": torch.cat([ref[p + f"self_attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]),
            "o": ref[p + "self_attn.o_proj.weight"],
            "gate_up": torch.cat([ref[p + f"mlp.{n}.weight"] for n in ("gate_proj", "up_proj")]),
            "down": ref[p + "mlp.down_proj.weight"], "lm_head": ref["lm_head.weight"]}


@pytest.mark.parametrize("kind", KINDS)
def test_fp8_checkpoint_on_cpu_is_dequantized(checkpoints, kind, tmp_path):
    path = checkpoints[kind]
    rt = lm.Runtime(f"hf:{path}", device="cpu", kv_memory_gb=0.05)
    plain = None
    try:
        assert rt.quant is None and "dequantized to float32" in rt.quantization
        assert "fp8 checkpoint dequantized" in repr(rt)
        want = _fused_reference(path)
        layer = rt.model.layers[0]
        got = {"qkv": layer.self_attn.qkv_proj.weight, "o": layer.self_attn.o_proj.weight,
               "gate_up": layer.mlp.gate_up_proj.weight, "down": layer.mlp.down_proj.weight,
               "lm_head": rt.model.lm_head.weight}
        for name, w in want.items():
            assert torch.equal(got[name], w), name
        prompts = ["The capital of France is", "def f(x):"]
        a = rt.generate(prompts, max_new_tokens=8, temperature=0, ignore_eos=True)
        assert all(len(o["output_ids"]) == 8 for o in a)
        rt.check_integrity()
        if kind == "block":   # the same tokens as an ordinary checkpoint of those weights
            plain = lm.Runtime(f"hf:{write_plain_checkpoint(path, tmp_path / 'plain')}",
                               device="cpu", kv_memory_gb=0.05)
            b = plain.generate(prompts, max_new_tokens=8, temperature=0, ignore_eos=True)
            assert [o["output_ids"] for o in a] == [o["output_ids"] for o in b]
    finally:
        rt.shutdown()
        if plain is not None:
            plain.shutdown()


@pytest.fixture
def fake_fp8_device(monkeypatch):
    """FP8 'supported' on the CPU: the FP8 model runs with the kernels' torch references."""
    monkeypatch.setattr(fp8, "fp8_unsupported_reason", lambda device: None)


@pytest.mark.parametrize("kind", ["block", "misaligned", "channel"])
def test_fp8_model_keeps_checkpoint_weights(checkpoints, kind, fake_fp8_device):
    from fp8_accuracy import prefill_logits

    path = checkpoints[kind]
    q = lm.Runtime(f"hf:{path}", device="cpu", dtype="bfloat16", kv_memory_gb=0.05)
    ref = lm.Runtime(f"hf:{path}", device="cpu", dtype="float32", kv_memory_gb=0.05)
    try:
        want_block = (128, 128) if kind == "block" else None   # misaligned: requantized per channel
        assert q.quant is not None and q.quant.block == want_block
        assert q.quant.checkpoint is not None and "from the FP8 checkpoint" in q.quantization
        assert ref.quant is None
        proj = q.model.layers[0].mlp.gate_up_proj
        assert isinstance(proj, fp8.Fp8Linear) and proj.weight.dtype == FP8
        assert q.model.lm_head.weight.dtype == torch.bfloat16
        want = _fused_reference(path)
        for name, mod in (("qkv", q.model.layers[0].self_attn.qkv_proj), ("gate_up", proj),
                          ("down", q.model.layers[0].mlp.down_proj)):
            w = dequantize(mod.weight, mod.weight_scale, mod.block)
            if kind == "misaligned":   # every projection requantized: one more rounding
                assert _rel(w, want[name]) < 0.04, name
            else:
                torch.testing.assert_close(w, want[name], rtol=0, atol=0, msg=name)
        ids = q.encode("The quick brown fox jumps over the lazy dog. " * 3)
        a, b = prefill_logits(q, ids), prefill_logits(ref, ids)
        assert (a - b).abs().mean() < 0.05 * b.std()   # bf16 activations vs fp32
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8
        q.check_integrity()
    finally:
        q.shutdown()
        ref.shutdown()


def test_quantize_at_load(fake_fp8_device):
    from fp8_accuracy import compare

    from lmnb.runtime.loader import dummy_weights

    q = lm.Runtime("dummy:tiny", device="cpu", dtype="bfloat16", quantization="fp8", kv_memory_gb=0.05, speculative="off")
    ref = lm.Runtime("dummy:tiny", device="cpu", dtype="bfloat16", kv_memory_gb=0.05, speculative="off")
    try:
        assert "per-channel scales, quantized at load" in q.quantization
        assert "quantization='fp8'" in repr(q)
        w = dict(dummy_weights(q.model_config, "cpu", torch.bfloat16))["model.layers.1.mlp.down_proj.weight"]
        qq, ss = quantize_per_channel(w)
        mod = q.model.layers[1].mlp.down_proj
        assert torch.equal(mod.weight.float(), qq.float()) and torch.equal(mod.weight_scale, ss)
        fp8_bytes = sum(p.numel() * p.element_size() for p in q.model.layers.parameters())
        bf16_bytes = sum(p.numel() * p.element_size() for p in ref.model.layers.parameters())
        assert fp8_bytes < 0.6 * bf16_bytes
        r = compare(ref, q, list(range(40, 72)), steps=32)
        assert r["steps"] == 32 and r["teacher_forced_agreement"] >= 0.8, r
        assert r["decode_mean_abs_err"] < 0.1 * r["ref_logit_std"], r
        q.check_integrity()
    finally:
        q.shutdown()
        ref.shutdown()


def test_status_shows_quantization(fake_fp8_device):
    from lmnb.magics.session import KernelSession

    s = KernelSession(default_spec="dummy:tiny", device="cpu", dtype="bfloat16", quantization="fp8",
                      kv_memory_gb=0.05)
    try:
        s.load("dummy:tiny")
        first = s.status().splitlines()[0]
        assert "weights fp8 (e4m3 projections" in first and "lm_head fp8" in first
    finally:
        s.close()


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kw,match", [
    (dict(quantization="fp8"), "needs a CUDA GPU with FP8 support"),
    (dict(quantization="int3"), "quantization must be one of auto, none"),
    (dict(kv_cache_dtype="fp8_e4m3"), "kv_cache_dtype='fp8_e4m3' needs a CUDA GPU"),
    (dict(kv_cache_dtype="int8"), "kv_cache_dtype must be None, 'auto', 'fp8_e4m3' or 'fp8'"),
])
def test_one_line_errors(kw, match):
    with pytest.raises(LmnbError, match=match) as e:
        lm.Runtime("dummy:tiny", device="cpu", **kw)
    assert "\n" not in str(e.value)


def test_fp8_wants_bf16(fake_fp8_device):
    with pytest.raises(LmnbError, match="computes in bfloat16"):
        lm.Runtime("dummy:tiny", device="cpu", dtype="float32", quantization="fp8")
