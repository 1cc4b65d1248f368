"""Tensor parallelism on GPUs: TP=N against TP=1 on one dummy model (issue 19).

    python bench/gpu_tp.py --model dummy:llama3-8b --tp 1,2
    python bench/gpu_tp.py --model dummy:llama3-70b --tp 4,8 --kv-gb 16

Per tp size: `latency` (batch 1, 128-token prompt, 256 new tokens: decode ms/token and
time to first token, medians) and `throughput` (the suite's workload: requests with input
and output lengths uniform in [100, 1024], seed 0, ignore_eos, all submitted at once),
plus `agreement`: the fraction of greedy tokens of 8 prompts equal to the first tp size's
(bf16: TP sums partial products in another order, so an exact match is not expected).
One line per case; rows go to bench/results/gpu_tp_<model>.json (or --out).
`--device cpu --model dummy:tiny --small` is a smoke run of the script itself.
"""
from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, save
from gpu_helpers import random_tokens, submit_all, timed

import lmnb as lm


def latency(rt, vocab: int, repeats: int, new: int) -> dict:
    prompt = random_tokens(random.Random(0), 128, vocab)

    def once():
        return rt.generate([prompt], max_new_tokens=new, temperature=0, ignore_eos=True)[0].meta

    once()
    metas = [once() for _ in range(repeats)]
    decode = statistics.median((m["e2e_latency"] - m["ttft"]) / (m["completion_tokens"] - 1) for m in metas)
    ttft = statistics.median(m["ttft"] for m in metas)
    return {"ms_tok": decode * 1e3, "tok_s": 1 / decode, "ttft_ms": ttft * 1e3}


def throughput(rt, vocab: int, n: int, scale: float) -> dict:
    rng = random.Random(0)
    lens = [(rng.randint(100, 1024), rng.randint(100, 1024)) for _ in range(n)]
    prompts = [random_tokens(rng, max(1, int(i * scale)), vocab) for i, _ in lens]
    outs = [max(1, int(o * scale)) for _, o in lens]
    params = [{"max_new_tokens": o, "temperature": 0, "ignore_eos": True} for o in outs]
    rt.flush_cache()
    before = rt.stats()
    t = timed(lambda: submit_all(rt, prompts, params))
    after = rt.stats()
    return {"requests": n, "out_tokens": sum(outs), "seconds": t, "tok_s": sum(outs) / t,
                "decode_steps": after["decode_steps"] - before["decode_steps"], "max_bs": after["max_batch_size"]}


def greedy(rt, vocab: int, new: int) -> list[list[int]]:
    rng = random.Random(1)
    prompts = [random_tokens(rng, rng.randint(8, 200), vocab) for _ in range(8)]
    return [r.output_ids for r in rt.generate(prompts, max_new_tokens=new, temperature=0, ignore_eos=True)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:llama3-8b")
    ap.add_argument("--tp", default="1,2", help="tp sizes, comma-separated")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--kv-gb", type=float, default=16.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--small", action="store_true", help="a tenth of every size (smoke runs)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    scale = 0.1 if args.small else 1.0
    rows, first = [], None
    for tp in [int(x) for x in args.tp.split(",")]:
        try:
            rt = lm.Runtime(args.model, device=args.device, tp_size=tp, kv_memory_gb=args.kv_gb)
        except Exception as e:  # noqa: BLE001 - record what could not run, go on
            rows.append(emit("skipped", model=args.model, tp=tp, reason=str(e).replace(" ", "_")[:200]))
            continue
        vocab = rt.model_config.vocab_size
        try:
            rows.append(emit("latency", model=args.model, tp=tp,
                             **latency(rt, vocab, args.repeats, max(8, int(256 * scale)))))
            rows.append(emit("throughput", model=args.model, tp=tp,
                             **throughput(rt, vocab, max(4, int(args.requests * scale)), scale)))
            toks = greedy(rt, vocab, max(8, int(64 * scale)))
            if first is None:
                first = (tp, toks)
            same = sum(a == b for x, y in zip(toks, first[1]) for a, b in zip(x, y))
            total = sum(len(x) for x in toks)
            rows.append(emit("agreement", model=args.model, tp=tp, against_tp=first[0],
                             equal_tokens=same / total,
                             equal_prompts=sum(x == y for x, y in zip(toks, first[1])) / len(toks)))
        finally:
            rt.shutdown()
            del rt
            gc.collect()
    base = {r["tp"]: r for r in rows if r["name"] == "throughput"}
    lat = {r["tp"]: r for r in rows if r["name"] == "latency"}
    if len(base) > 1:
        t0 = min(base)
        for tp in sorted(base)[1:]:
            rows.append(emit("tp_speedup", model=args.model, tp=tp, against_tp=t0,
                             throughput_x=base[tp]["tok_s"] / base[t0]["tok_s"],
                             latency_x=lat[t0]["ms_tok"] / lat[tp]["ms_tok"]))
    name = args.model.replace(":", "_").replace("/", "_")
    path = save(f"gpu_tp_{name}.json", rows)
    if args.out:
        Path(args.out).write_text(path.read_text())
    print("#", args.out or path)


if __name__ == "__main__":
    main()
