"""Speculative decoding on one GPU (dummy:llama3-8b by default), one run:

(1) verify-step cost: a decode step that verifies k = 4, 8 draft tokens per request
    (drafts forced and always wrong, so every step is a verify step) vs a plain decode
    step, at batch 1 and 16
(2) forced-acceptance throughput: drafts forced to the exact greedy continuation of the
    drafted run itself (a fixed point, see the loop; every draft accepted), output tok/s
    at batch 1 and 16 vs speculative off
(3) radix-drafted cell re-run: the same 128-token greedy request twice, the second with
    the first one's output in the radix cache; end-to-end speedup of the re-run
Usage: python bench/gpu_speculative.py [--model dummy:llama3-8b] [--new 128]
Writes bench/results/speculative_gpu.json.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))
from common import emit, save  # noqa: E402

import lmnb as lm  # noqa: E402


def prompts(rt, n: int, length: int = 64, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    v = rt.model_config.vocab_size
    return [[rng.randrange(100, v - 100) for _ in range(length)] for _ in range(n)]


def run(rt, ps, new, **kw):
    t = time.perf_counter()
    outs = rt.generate(ps, max_new_tokens=new, temperature=0, ignore_eos=True, **kw)
    return time.perf_counter() - t, outs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:llama3-8b")
    ap.add_argument("--new", type=int, default=128)
    args = ap.parse_args()
    rt = lm.Runtime(args.model, device="cuda")
    d, rows, new = rt.drafter, [], args.new
    run(rt, prompts(rt, 16, seed=99), 16, speculative=False)   # warm-up: graphs, kernels

    for bs in (1, 16):
        ps = prompts(rt, bs, seed=bs)
        rt.flush_cache()
        t_off, outs = run(rt, ps, new, speculative=False)
        steps_off = max(o["meta"]["decode_steps"] for o in outs)
        step_off = t_off / steps_off
        truth = {tuple(p): o["output_ids"] for p, o in zip(ps, outs)}
        for k in (4, 8):
            rt.flush_cache()
            d.k = k
            d.force = lambda r, k=k: [1] * k      # token 1: never the argmax of a real step
            t, outs = run(rt, ps, new, speculative=True)
            steps = max(o["meta"]["decode_steps"] for o in outs)
            rows.append(emit("gpu_speculative case=verify_step_cost", batch=bs, k=k,
                             decode_step_ms=1e3 * step_off, verify_step_ms=1e3 * t / steps,
                             ratio=(t / steps) / step_off))
        # forced acceptance: the drafts are the greedy continuation itself. In bf16 a verify
        # row rounds differently from a decode row, so on random weights (flat logits) the
        # drafted run can leave plain decoding's tokens at a near-tie, and every later draft
        # is rejected; so the drafts come from the drafted run's own output, run again until
        # it reproduces itself (a fixed point: every draft accepted), and the timed run is
        # the one after that.
        for k in (4, 8):
            d.k = k
            target = dict(truth)

            def exact(r, k=k, target=target):
                full = target.get(tuple(r.input_ids), [])
                return full[len(r.output_ids) : len(r.output_ids) + k]

            d.force = exact
            for rounds in range(1, 7):
                rt.flush_cache()
                _, outs = run(rt, ps, new, speculative=True)
                new_target = {tuple(p): o["output_ids"] for p, o in zip(ps, outs)}
                if new_target == target:
                    break
                target.clear()
                target.update(new_target)
            rt.flush_cache()
            before = rt.stats()
            t, outs = run(rt, ps, new, speculative=True)
            after = rt.stats()
            drafted = after["spec_drafted"] - before["spec_drafted"]
            accepted = after["spec_accepted"] - before["spec_accepted"]
            same = sum(o["output_ids"] == truth[tuple(p)] for o, p in zip(outs, ps))
            steps = max(o["meta"]["decode_steps"] for o in outs)
            rows.append(emit("gpu_speculative case=forced_acceptance", batch=bs, k=k,
                             off_tok_s=bs * new / t_off, on_tok_s=bs * new / t, speedup=t_off / t,
                             decode_steps=steps, drafted=drafted, accepted=accepted,
                             fixed_point_rounds=rounds,
                             fixed_point=all(o["output_ids"] == target[tuple(p)] for o, p in zip(outs, ps)),
                             identical_to_plain=same, outputs=len(outs)))
        d.force, d.k = None, rt.config.speculative_tokens

    # radix-drafted re-run of one cell
    p = prompts(rt, 1, length=256, seed=7)
    rt.flush_cache()
    t_plain, ref = run(rt, p, new, speculative=False)
    rt.flush_cache()
    d.history = type(d.history)()
    # on CUDA the runtime drafts only for requests that ask (see Runtime: bf16 verify rows
    # round differently from decode rows)
    t_first, first = run(rt, p, new, speculative=True)
    t_again, again = run(rt, p, new, speculative=True)
    st = rt.stats()
    # a third run drafts from what the cache holds after the drafted second one
    t_third, third = run(rt, p, new, speculative=True)
    rows.append(emit("gpu_speculative case=cell_rerun", first_s=t_first, rerun_s=t_again,
                     plain_s=t_plain, rerun_speedup=t_first / t_again,
                     first_draft_tokens=first[0]["meta"]["draft_tokens"],
                     rerun_decode_steps=again[0]["meta"]["decode_steps"],
                     acceptance_rate=st["spec_acceptance_rate"],
                     rerun_identical=first[0]["output_ids"] == again[0]["output_ids"],
                     third_s=t_third, third_speedup=t_first / t_third,
                     third_decode_steps=third[0]["meta"]["decode_steps"],
                     third_identical_to_second=third[0]["output_ids"] == again[0]["output_ids"],
                     plain_identical=first[0]["output_ids"] == ref[0]["output_ids"]))
    print(save("speculative_gpu.json", rows, model=args.model))
    rt.shutdown()


if __name__ == "__main__":
    main()
