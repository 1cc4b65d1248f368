"""The whole engine on the GPU against HF transformers with the same seeded random weights
(`dummy:smollm2-135m`): fp32 greedy tokens identical (torch and triton attention, CUDA
graphs on), bf16 prompt logprobs close; CUDA-graph decode gives the eager tokens; the
triton and torch backends agree."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("triton")
pytest.importorskip("transformers")
pytestmark = pytest.mark.gpu

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from common import hf_model_for

import lmnb as lm

SPEC = "dummy:smollm2-135m"
NEW = 24
_rng = random.Random(0)
PROMPTS = [[_rng.randrange(10, 49000) for _ in range(n)] for n in (5, 17, 64, 130, 9, 33)]


def _runtime(dtype: str, attention: str, graphs: bool = True) -> lm.Runtime:
    rt = lm.Runtime(SPEC, device="cuda", dtype=dtype, attention=attention, kv_memory_gb=0.5,
                    max_running_requests=16)
    rt.engine.runner.cuda_graph = graphs and rt.engine.runner.cuda_graph
    return rt


@pytest.fixture(scope="module")
def runtimes():
    made: dict = {}

    def get(dtype: str, attention: str, graphs: bool = True) -> lm.Runtime:
        key = (dtype, attention, graphs)
        if key not in made:
            made[key] = _runtime(dtype, attention, graphs)
        return made[key]

    yield get
    for rt in made.values():
        rt.shutdown()


@pytest.fixture(scope="module")
def hf32(runtimes):
    return hf_model_for(runtimes("float32", "torch"))


def _greedy(rt, prompts) -> list[list[int]]:
    outs = rt.generate(prompts, max_new_tokens=NEW, temperature=0, ignore_eos=True)
    return [o["output_ids"] for o in outs]


def _hf_greedy(hf, prompts) -> list[list[int]]:
    hf.generation_config.eos_token_id = None
    refs = []
    for p in prompts:
        ids = torch.tensor([p], device="cuda")
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                              do_sample=False, pad_token_id=0)
        refs.append(out[0, len(p):].tolist())
    return refs


@pytest.mark.parametrize("attention", ["torch", "triton"])
def test_fp32_greedy_matches_hf(runtimes, hf32, attention):
    rt = runtimes("float32", attention)
    ref = _hf_greedy(hf32, PROMPTS)
    assert _greedy(rt, PROMPTS) == ref            # one batch: graph decode at batch 6 -> 8
    rt.flush_cache()
    assert [_greedy(rt, [p])[0] for p in PROMPTS[:2]] == ref[:2]   # batch 1
    assert _greedy(rt, PROMPTS) == ref            # warm radix cache
    rt.check_integrity()


def test_graph_decode_used_and_matches_eager(runtimes):
    graph, eager = runtimes("float32", "triton"), runtimes("float32", "triton", graphs=False)
    got = _greedy(graph, PROMPTS)
    assert graph.engine.runner.graphs is not None and graph.engine.runner.graphs._graphs
    assert eager.engine.runner.graphs is None
    assert got == _greedy(eager, PROMPTS)


def test_graph_decode_bf16_matches_eager(runtimes):
    graph, eager = runtimes("bfloat16", "triton"), runtimes("bfloat16", "triton", graphs=False)
    a = graph.generate(PROMPTS, max_new_tokens=8, temperature=0, ignore_eos=True,
                       return_logprob=True)
    b = eager.generate(PROMPTS, max_new_tokens=8, temperature=0, ignore_eos=True,
                       return_logprob=True)
    _assert_close_greedy(a, b)


def _assert_close_greedy(a: list[dict], b: list[dict]) -> None:
    """Two greedy runs of the same prompts agree on >= 4 tokens each, and there on their
    logprobs within bf16 rounding."""
    for x, y in zip(a, b):
        n = _common_prefix(x["output_ids"], y["output_ids"])
        assert n >= 4, (x["output_ids"], y["output_ids"])
        lx = [lp for _, lp in x["meta"]["output_token_logprobs"][:n]]
        ly = [lp for _, lp in y["meta"]["output_token_logprobs"][:n]]
        assert max(abs(p - q) for p, q in zip(lx, ly)) < 0.05


def test_norm_inside_gemv_matches_norm_kernels(runtimes, monkeypatch):
    """Batch-1 bf16 decode with each layer's add + norm inside the q/k/v and gate/up GEMVs
    (LMNB_NORM_GEMV=1) gives the logprobs of the separate norm kernels (the default)
    within bf16 rounding, and the fused path really ran."""
    from lmnb.runtime.kernels import fp8_gemm

    rt = runtimes("bfloat16", "triton", graphs=False)
    # the GEMV, not cuBLAS, for every one-row projection (the timed choice may pick either)
    monkeypatch.setattr(fp8_gemm, "_CHOSEN", {})
    monkeypatch.setattr(fp8_gemm, "dense_candidates",
                        lambda m, n, k: [("gemv", c) for c in fp8_gemm.gemv_configs(1, n, k, None)[:1]])
    monkeypatch.setattr(fp8_gemm, "norm_candidates", lambda cfg, k: [("fused", cfg)])
    calls = []
    real = fp8_gemm.norm_gemv

    def counting(*a, **k):
        got = real(*a, **k)
        calls.append(got is not None)
        return got

    monkeypatch.setattr(fp8_gemm, "norm_gemv", counting)
    monkeypatch.setenv("LMNB_NORM_GEMV", "1")

    def run():
        rt.flush_cache()
        return [rt.generate([p], max_new_tokens=8, temperature=0, ignore_eos=True,
                            return_logprob=True)[0] for p in PROMPTS[:3]]

    fused = run()
    assert calls and all(calls), "a one-row GEMV did not take the norm"
    monkeypatch.setenv("LMNB_NORM_GEMV", "0")
    calls.clear()
    plain = run()
    assert not calls
    _assert_close_greedy(fused, plain)
    rt.check_integrity()


def _prompt_logprobs(rt, prompts) -> list[torch.Tensor]:
    outs = rt.generate(prompts, max_new_tokens=1, temperature=0, logprob_start_len=0)
    return [torch.tensor([lp for _, lp in o["meta"]["input_token_logprobs"]]) for o in outs]


def _hf_prompt_logprobs(hf, prompts) -> list[torch.Tensor]:
    out = []
    for p in prompts:
        ids = torch.tensor([p], device="cuda")
        with torch.no_grad():
            lp = torch.log_softmax(hf(ids).logits[0].float(), -1)
        out.append(lp[:-1].gather(1, ids[0, 1:, None])[:, 0].cpu())
    return out


@pytest.mark.parametrize("attention", ["torch", "triton"])
def test_bf16_prompt_logprobs_close_to_hf(runtimes, attention):
    rt = runtimes("bfloat16", attention)
    hf = hf_model_for(rt)
    for got, ref in zip(_prompt_logprobs(rt, PROMPTS), _hf_prompt_logprobs(hf, PROMPTS)):
        assert got.shape == ref.shape
        assert (got - ref).abs().max() < 0.1, (got - ref).abs().max()
        assert (got - ref).abs().mean() < 0.02


def test_triton_matches_torch_backend(runtimes):
    tri, ref = runtimes("bfloat16", "triton"), runtimes("bfloat16", "torch")
    for a, b in zip(_prompt_logprobs(tri, PROMPTS), _prompt_logprobs(ref, PROMPTS)):
        assert (a - b).abs().max() < 0.05
    assert _greedy(runtimes("float32", "triton"), PROMPTS) == \
        _greedy(runtimes("float32", "torch"), PROMPTS)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
