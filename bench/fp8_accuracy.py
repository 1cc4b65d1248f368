"""FP8 vs bf16 on the same weights: logits errors and greedy-token agreement.

Two runtimes over the same seeded weights (a bf16 reference and a quantized one). The
quantized runtime decodes greedily (its decode-step logits are captured: the GEMV path
at batch 1); the reference then scores that very sequence in one prefill (teacher
forcing), so every position compares logits on the same context. The same prefill on
the quantized runtime checks the large-batch (`_scaled_mm`) path. Used by
bench/fp8_bench.py and tests/gpu/test_gpu_fp8.py.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def captured_logits(rt):
    """Clones of the logits of every model step the engine runs while inside."""
    runner, got = rt.engine.runner, []
    orig = runner.run

    def run(*a, **k):
        out = orig(*a, **k)
        got.append(out.logits.detach().clone())
        return out

    rt.engine.call(lambda: setattr(runner, "run", run))
    try:
        yield got
    finally:
        rt.engine.call(lambda: delattr(runner, "run"))


def greedy_with_logits(rt, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    """(greedy token ids, [steps, V] fp32 logits each was chosen from)."""
    rt.flush_cache()
    with captured_logits(rt) as got:
        out = rt.generate([prompt], max_new_tokens=steps, temperature=0, ignore_eos=True)[0]
    ids = out["output_ids"]
    return ids, torch.cat([g[-1:] for g in got])[: len(ids)].float()


def prefill_logits(rt, ids: list[int]) -> torch.Tensor:
    """[len(ids), V] fp32 logits of every position from one prefill (cache flushed)."""
    rt.flush_cache()
    with captured_logits(rt) as got:
        rt.generate([ids], max_new_tokens=1, temperature=0, ignore_eos=True, logprob_start_len=0)
    first = got[0]
    if first.shape[0] != len(ids):
        raise RuntimeError(f"prefill gave {first.shape[0]} logits rows for {len(ids)} tokens")
    return first.float()


def _errors(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).abs()
    return {"max_abs_err": d.max().item(), "mean_abs_err": d.mean().item(),
            "ref_logit_std": b.std().item(),
            "argmax_agreement": (a.argmax(-1) == b.argmax(-1)).float().mean().item()}


def compare(ref_rt, q_rt, prompt: list[int], steps: int = 256) -> dict:
    """Decode-path and prefill-path errors of `q_rt` against `ref_rt` (see module doc)."""
    ref_ids, _ = greedy_with_logits(ref_rt, prompt, steps)
    q_ids, q_dec = greedy_with_logits(q_rt, prompt, steps)
    seq = prompt + q_ids
    ref_tf = prefill_logits(ref_rt, seq)
    q_pre = prefill_logits(q_rt, seq)
    at = slice(len(prompt) - 1, len(prompt) - 1 + len(q_ids))
    same = [a == b for a, b in zip(ref_ids, q_ids)]
    first_diff = same.index(False) if False in same else len(same)
    dec = _errors(q_dec, ref_tf[at])
    pre = _errors(q_pre, ref_tf)
    return {"steps": len(q_ids),
            "free_running_agreement": sum(same) / len(same), "first_divergence": first_diff,
            "teacher_forced_agreement": dec["argmax_agreement"],
            "decode_max_abs_err": dec["max_abs_err"], "decode_mean_abs_err": dec["mean_abs_err"],
            "prefill_max_abs_err": pre["max_abs_err"], "prefill_mean_abs_err": pre["mean_abs_err"],
            "prefill_argmax_agreement": pre["argmax_agreement"], "ref_logit_std": dec["ref_logit_std"]}


def outside_bounds(r: dict, teacher_forced_agreement: float = 0.0,
                   prefill_argmax_agreement: float = 0.0, mean_err_of_std: float = float("inf")
                   ) -> list[str]:
    """The bounds a `compare` result misses (empty when it meets them all): the two
    agreements at least as given, both mean |errors| at most `mean_err_of_std` logit stds."""
    limit = mean_err_of_std * r["ref_logit_std"]
    checks = {"teacher_forced_agreement": r["teacher_forced_agreement"] >= teacher_forced_agreement,
              "prefill_argmax_agreement": r["prefill_argmax_agreement"] >= prefill_argmax_agreement,
              "decode_mean_abs_err": r["decode_mean_abs_err"] <= limit,
              "prefill_mean_abs_err": r["prefill_mean_abs_err"] <= limit}
    return [name for name, ok in checks.items() if not ok]
