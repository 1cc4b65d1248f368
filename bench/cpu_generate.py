"""lmnb (fp32 and each quantized CPU mode) vs HF transformers vs llama.cpp on smollm2, CPU,
side by side in one run.

(a) batch 1: 126-token prompt, 128 new tokens            -> tok/s (prefill included); plain
    decoding, and again with lmnb's default drafts (speculative="auto") as a row of its own
(b) 32 prompts sharing a 400-token prefix, 32 new each     -> output tok/s (end to end)
(c) greedy agreement of each quantized mode with fp32 over the 16 parity prompts
    (tests/runtime/test_hf_parity.py), 64 new tokens each

llama.cpp runs through `llama-cpp-python` on the very GGUF file lmnb embeds, when that
package is installed (bench-only; case (a) only: it serves one sequence at a time).
Every number carries the 1-minute load average at the time it was taken: on a shared
machine they are noisy.
Usage: python bench/cpu_generate.py [--modes fp32,q8,q4[,bf16]] [--repeats 3] [--skip b] [--tag x]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import emit, hf_model_for, median_time, save  # noqa: E402
from cpu_workloads import NEW_A, NEW_B, N_B, mode_options, run_lmnb, workloads  # noqa: E402

import lmnb as lm  # noqa: E402
from tests.runtime.test_hf_parity import PROMPTS as PARITY_PROMPTS  # noqa: E402

NEW_C = 64


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def run_hf(model, prompts, new):
    x = torch.tensor(prompts)
    with torch.no_grad():
        return model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0)


def llama_cpp_runner(gguf_path: str, threads: int):
    """(generate(prompt_ids, new) -> ids, version) or None when llama-cpp-python is absent."""
    try:
        import llama_cpp
    except ImportError:
        return None
    import numpy as np

    llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=2048, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    eos = llm.token_eos()

    def no_eos(_ids, scores):
        scores[eos] = -np.inf
        return scores

    procs = llama_cpp.LogitsProcessorList([no_eos])

    def generate(ids: list[int], new: int) -> list[int]:
        llm.reset()  # no prompt reuse between runs
        out = []
        for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0,
                              reset=True, logits_processor=procs):
            out.append(t)
            if len(out) == new:
                break
        return out

    return generate, llama_cpp.__version__


def agreement(ref: list[list[int]], got: list[list[int]]) -> dict:
    same_pos = sum(sum(a == b for a, b in zip(r, g)) for r, g in zip(ref, got))
    prefix = []
    for r, g in zip(ref, got):
        n = 0
        while n < min(len(r), len(g)) and r[n] == g[n]:
            n += 1
        prefix.append(n)
    total = sum(len(r) for r in ref)
    return {"identical_prompts": sum(p == len(r) for p, r in zip(prefix, ref)),
            "prompts": len(ref), "positionwise_agreement": same_pos / total,
            "mean_common_prefix": sum(prefix) / len(prefix),
            "min_common_prefix": min(prefix)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="fp32,q8,q4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of cases to skip: a,b,c,hf,llamacpp")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    skip = set(args.skip.split(","))
    threads = torch.get_num_threads()
    rows: list[dict] = []
    opts = dict(device="cpu", kv_memory_gb=0.25)
    parity_ref = None
    single = shared = None
    for mode in modes:
        rt = lm.Runtime("smollm2", **opts, **mode_options(mode))
        print(f"# {rt.describe()}", flush=True)
        if single is None:
            single, shared = workloads(rt.model_config.vocab_size)
        if "a" not in skip:
            t = median_time(lambda: run_lmnb(rt, [single], NEW_A), args.repeats)
            rows.append(emit("cpu_generate case=a_batch1", engine="lmnb", mode=mode,
                             tok_s=NEW_A / t, load1=load1()))
            t = median_time(lambda: run_lmnb(rt, [single], NEW_A, drafts=True), args.repeats)
            rows.append(emit("cpu_generate case=a_batch1", engine="lmnb speculative=auto", mode=mode,
                             tok_s=NEW_A / t, load1=load1()))
        if "b" not in skip:
            t = median_time(lambda: run_lmnb(rt, shared, NEW_B), args.repeats)
            rows.append(emit("cpu_generate case=b_shared_prefix", engine="lmnb", mode=mode,
                             tok_s=N_B * NEW_B / t, load1=load1()))
        if "c" not in skip:
            rt.flush_cache()
            outs = [o["output_ids"] for o in rt.generate(PARITY_PROMPTS, max_new_tokens=NEW_C,
                                                         temperature=0, ignore_eos=True,
                                                         speculative=False)]
            if mode == "fp32":
                parity_ref = outs
            elif parity_ref is not None:
                rows.append(emit("cpu_generate case=c_agreement_vs_fp32", mode=mode,
                                 new_tokens=NEW_C, **agreement(parity_ref, outs)))
        rt.check_integrity()
        if mode == "fp32" and "b" not in skip:
            rt.shutdown()
            nc = lm.Runtime("smollm2", **opts, dtype="float32", enable_radix_cache=False)
            t = median_time(lambda: run_lmnb(nc, shared, NEW_B), args.repeats)
            rows.append(emit("cpu_generate case=b_shared_prefix", engine="lmnb_nocache", mode=mode,
                             tok_s=N_B * NEW_B / t, load1=load1()))
            nc.shutdown()
        else:
            rt.shutdown()
    if "hf" not in skip:
        ref_rt = lm.Runtime("smollm2", **opts, dtype="float32")
        hf = hf_model_for(ref_rt)
        ref_rt.shutdown()
        if "a" not in skip:
            t = median_time(lambda: run_hf(hf, [single], NEW_A), args.repeats)
            rows.append(emit("cpu_generate case=a_batch1", engine="hf", mode="fp32",
                             tok_s=NEW_A / t, load1=load1()))
        if "b" not in skip:
            t = median_time(lambda: run_hf(hf, shared, NEW_B), args.repeats)
            rows.append(emit("cpu_generate case=b_shared_prefix", engine="hf", mode="fp32",
                             tok_s=N_B * NEW_B / t, load1=load1()))
        del hf
    if "llamacpp" not in skip and "a" not in skip:
        from lmnb.runtime.loader import embedded_gguf_path

        runner = llama_cpp_runner(embedded_gguf_path(), threads)
        if runner is None:
            print("# llama-cpp-python is not installed: no llama.cpp row (pip install llama-cpp-python)")
        else:
            gen, version = runner
            t = median_time(lambda: gen(single, NEW_A), args.repeats)
            rows.append(emit("cpu_generate case=a_batch1", engine=f"llama.cpp {version}",
                             mode="gguf Q4_1", tok_s=NEW_A / t, load1=load1()))
    by = {(r["name"], r.get("engine"), r.get("mode")): r.get("tok_s") for r in rows}
    for case in ("a_batch1", "b_shared_prefix"):
        hf_t = by.get((f"cpu_generate case={case}", "hf", "fp32"))
        for m in modes:
            v = by.get((f"cpu_generate case={case}", "lmnb", m))
            if v and hf_t:
                rows.append(emit(f"cpu_generate ratio case={case}", mode=m, vs_hf=v / hf_t))
    name = f"cpu_generate{'_' + args.tag if args.tag else ''}.json"
    out = save(name, rows, model="smollm2", device="cpu", threads=threads,
               note="shared machine: every row carries load1 (1-minute load average); noisy")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
