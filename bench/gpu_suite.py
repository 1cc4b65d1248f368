"""lmnb vs HF transformers on one GPU, side by side in one process (BENCHMARKS.md).

    python bench/gpu_suite.py --model dummy:llama3-8b [--only latency,throughput,...]

Workloads: latency, decode_steps, throughput, cell_rerun, mmlu, hellaswag,
tree_of_thought, multi_turn_chat (bench/gpu_programs.py), json_decode, json_many (64
requests with 64 different schemas: mask cost as a share of the decode step). Each prints
one line per case (`name key=value ...`); all rows go to bench/results/gpu_<model>.json
(or --out) with the GPU, versions and date. The HF peer shares the runtime's weight
tensors. Ablations (no radix cache, no jump-forward) run on the same runtime with the
feature switched off while idle. HF runs are cut to what fits a device call, and each
line says how (`hf_note`).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, environment, save
from gpu_helpers import (
    byte_tokenizer_shim,
    hbm_bandwidth_gbs,
    hf_generate,
    hf_sharing,
    random_tokens,
    submit_all,
    timed,
    weight_bytes_per_step,
    without_jump_forward,
    without_mixed_steps,
    without_overlap,
    without_radix_cache,
)
from gpu_programs import hellaswag, multi_turn_chat, tree_of_thought

import lmnb as lm


class Suite:
    def __init__(self, args) -> None:
        self.args, self.rows = args, []
        byte_tokenizer_shim()
        t = time.perf_counter()
        self.rt = lm.Runtime(args.model, device=args.device, kv_memory_gb=args.kv_gb,
                             context_length=8192)
        self.load_s = time.perf_counter() - t
        self.vocab = self.rt.model_config.vocab_size
        self._hf = None
        self.bw = hbm_bandwidth_gbs() * 1e9
        self.short = args.model.removeprefix("dummy:")
        self.scale = 0.1 if args.small else 1.0   # --small: a quick check of the script

    def n(self, x: int) -> int:
        return max(2, int(x * self.scale))

    @property
    def hf(self):
        if self._hf is None:
            self._hf = hf_sharing(self.rt)
            hf_generate(self._hf, [[40] * 16, [41] * 8], 4)   # first-call costs out of timings
        return self._hf

    def emit(self, name: str, **fields) -> None:
        self.rows.append(emit(name, model=self.short, **fields))

    def warm(self) -> None:
        """Compile kernels and capture the decode graphs before anything is timed."""
        rng = random.Random(1)
        prompts = [random_tokens(rng, 40 + 7 * i, self.vocab) for i in range(8)]
        submit_all(self.rt, prompts, [{"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}] * 8)
        self.rt.flush_cache()


# ---------------------------------------------------------------------------- workloads
def latency(s: Suite) -> None:
    """Batch 1, 128-token prompt, 256 new tokens: decode ms/token against the roofline."""
    rt, new = s.rt, 256
    prompt = random_tokens(random.Random(0), 128, s.vocab)

    def once() -> dict:
        return rt.generate([prompt], max_new_tokens=new, temperature=0, ignore_eos=True)[0]["meta"]

    once()
    metas = [once() for _ in range(s.args.repeats + 2)]
    decode_s = statistics.median((m["e2e_latency"] - m["ttft"]) / (m["completion_tokens"] - 1)
                                 for m in metas)
    kv_bytes = rt.pool.token_bytes * (128 + new // 2)
    step_bytes = weight_bytes_per_step(rt) + kv_bytes
    floor = step_bytes / s.bw
    # HF: the difference of two generate lengths is its decode time (prefill cancels);
    # each length warmed once, best of two
    lo, hi = 16, max(32, s.args.hf_latency_tokens)
    t_lo = min(timed(lambda: hf_generate(s.hf, [prompt], lo)) for _ in range(3))
    t_hi = min(timed(lambda: hf_generate(s.hf, [prompt], hi)) for _ in range(3))
    hf_step = (t_hi - t_lo) / (hi - lo) if t_hi > t_lo else t_hi / hi
    hf_new = hi
    s.emit("latency", lmnb_tok_s=1 / decode_s, lmnb_ms_tok=decode_s * 1e3,
           achieved_gbs=step_bytes / decode_s / 1e9, hbm_gbs=s.bw / 1e9,
           floor_ms=floor * 1e3, of_roofline=floor / decode_s, hf_tok_s=1 / hf_step,
           hf_ms_tok=hf_step * 1e3, speedup=hf_step / decode_s, hf_t_lo=t_lo, hf_t_hi=t_hi,
           hf_note=f"{hf_new}_new_tokens")


def overlap(s: Suite) -> None:
    """Overlapped steps on and off, side by side: batch-1 decode and 64 throughput requests."""
    rt = s.rt
    prompt = random_tokens(random.Random(0), 128, s.vocab)
    prompts, outs = _throughput_workload(vocab=s.vocab, n=64)
    params = [{"max_new_tokens": o, "temperature": 0, "ignore_eos": True} for o in outs]

    def measure() -> tuple[float, float]:
        metas = [rt.generate([prompt], max_new_tokens=256, temperature=0, ignore_eos=True)[0]["meta"]
                 for _ in range(s.args.repeats)]
        ms = statistics.median((m["e2e_latency"] - m["ttft"]) / (m["completion_tokens"] - 1)
                               for m in metas) * 1e3
        rt.flush_cache()
        return ms, sum(outs) / timed(lambda: submit_all(rt, prompts, params))

    if not rt.engine.overlap:
        return
    measure()   # kernels specialised for these prompt lengths are compiled here, untimed
    on = measure()
    with without_overlap(rt):
        off = measure()
    s.emit("overlap", ms_tok_on=on[0], ms_tok_off=off[0], tok_s_64req_on=on[1],
           tok_s_64req_off=off[1], latency_gain=off[0] / on[0], throughput_gain=on[1] / off[1])


def decode_steps(s: Suite) -> None:
    """GPU time of one graph-replayed decode step (padding rows: weights only, no KV)."""
    runner = s.rt.engine.runner
    if runner.graphs is None:
        return
    wbytes = weight_bytes_per_step(s.rt)
    for bs in (1, 8, 64, 128, 256):
        if not runner.graphs.can_run(bs):
            continue
        step = s.rt.engine.call(lambda b=bs: runner.graphs.time_replay(b))
        s.emit("decode_step", bs=bs, step_ms=step * 1e3, tok_s=bs / step,
               weight_gbs=wbytes / step / 1e9, of_roofline=wbytes / s.bw / step)


def _throughput_workload(seed: int = 0, n: int = 256, vocab: int = 0):
    rng = random.Random(seed)
    lens = [(rng.randint(100, 1024), rng.randint(100, 1024)) for _ in range(n)]
    prompts = [random_tokens(rng, i, vocab) for i, _ in lens]
    return prompts, [o for _, o in lens]


def throughput(s: Suite) -> None:
    """256 requests, input and output lengths uniform in [100, 1024], seed 0, ignore_eos."""
    rt = s.rt
    prompts, outs = _throughput_workload(vocab=s.vocab, n=s.n(256))
    if s.scale < 1:
        outs = [s.n(o) for o in outs]
    params = [{"max_new_tokens": o, "temperature": 0, "ignore_eos": True} for o in outs]
    rt.flush_cache()
    before = rt.stats()
    t = timed(lambda: submit_all(rt, prompts, params))
    after = rt.stats()
    steps = after["decode_steps"] - before["decode_steps"]
    lmnb_tok_s = sum(outs) / t
    k = s.args.hf_requests
    sub_p, sub_o = prompts[:k], outs[:k]
    rt.flush_cache()
    t_sub = timed(lambda: submit_all(rt, sub_p, params[:k]))
    # HF: one padded batch of the first k requests, every row decoding max(sub_o) tokens;
    # its time is its prefill plus max(sub_o) - 1 steps at the measured step time
    steps_hf = s.args.hf_steps
    t1 = timed(lambda: hf_generate(s.hf, sub_p, 1))
    tk = timed(lambda: hf_generate(s.hf, sub_p, steps_hf + 1))
    hf_step = (tk - t1) / steps_hf
    hf_t = t1 + (max(sub_o) - 1) * hf_step
    s.emit("throughput", requests=len(prompts), out_tokens=sum(outs), lmnb_s=t,
           lmnb_tok_s=lmnb_tok_s, decode_steps=steps, max_bs=after["max_batch_size"],
           subset=k, lmnb_subset_tok_s=sum(sub_o) / t_sub, hf_subset_tok_s=sum(sub_o) / hf_t,
           hf_step_ms=hf_step * 1e3, speedup_subset=hf_t / t_sub,
           speedup_full_vs_hf=lmnb_tok_s / (sum(sub_o) / hf_t),
           hf_note=f"first_{k}_requests_one_padded_batch_time=prefill+{steps_hf}_timed_steps_x_max_out")


def cell_rerun(s: Suite) -> None:
    """A 4k-token cell run cold, re-run unchanged, and re-run with its last line edited."""
    rt, rng = s.rt, random.Random(3)
    cell = random_tokens(rng, s.n(4096), s.vocab)
    edits = [cell[:-24] + random_tokens(rng, 24, s.vocab) for _ in range(s.args.repeats)]

    def ttft(p) -> float:
        return rt.generate([p], max_new_tokens=1, temperature=0, ignore_eos=True)[0]["meta"]["ttft"]

    def cold() -> float:
        rt.flush_cache()
        return ttft(cell)

    cold_s = statistics.median(cold() for _ in range(s.args.repeats))
    ttft(cell)
    rerun_s = statistics.median(ttft(cell) for _ in range(s.args.repeats))
    edited_s = statistics.median(ttft(e) for e in edits)
    step_ms = _last_step_ms(rt)
    with without_radix_cache(rt):
        nocache_s = statistics.median(ttft(cell) for _ in range(s.args.repeats))
    hf_s = statistics.median(timed(lambda: hf_generate(s.hf, [cell], 1)) for _ in range(2))
    s.emit("cell_rerun", cold_ms=cold_s * 1e3, rerun_ms=rerun_s * 1e3, edited_ms=edited_s * 1e3,
           rerun_of_cold=rerun_s / cold_s, edited_of_cold=edited_s / cold_s,
           nocache_rerun_ms=nocache_s * 1e3, edited_step_ms=step_ms, hf_ttft_ms=hf_s * 1e3,
           speedup_rerun_vs_hf=hf_s / rerun_s)


def _last_step_ms(rt) -> float:
    """Wall time of the engine's last model step (from its history), in ms."""
    return rt.engine.call(lambda: rt.engine.history[-1][3] * 1e3)


def profile(s: Suite) -> None:
    """Where host time goes: cProfile of the engine thread over a decode-heavy batch, and
    torch.profiler over a cached 4k re-run; tables to profile_*.txt beside --out."""
    import cProfile
    import io
    import pstats

    rt, rng = s.rt, random.Random(11)
    out_dir = Path(s.args.out).parent if s.args.out else Path(".")
    prof = cProfile.Profile()
    eng, sched = rt.engine, rt.scheduler
    orig = eng._step, sched.next_batch

    def wrap(f):
        def g(*a, **k):
            prof.enable()
            try:
                return f(*a, **k)
            finally:
                prof.disable()
        return g

    prompts = [random_tokens(rng, 200, s.vocab) for _ in range(128)]
    eng._step, sched.next_batch = wrap(eng._step), wrap(sched.next_batch)
    try:
        t = timed(lambda: rt.generate(prompts, max_new_tokens=64, temperature=0, ignore_eos=True))
    finally:
        eng._step, sched.next_batch = orig
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    (out_dir / f"profile_host_{s.short}.txt").write_text(f"wall {t:.3f}s\n" + buf.getvalue())
    cell = random_tokens(rng, s.n(4096), s.vocab)
    rt.generate([cell], max_new_tokens=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as tp:
        m = rt.generate([cell], max_new_tokens=1)[0]["meta"]
    table = tp.key_averages().table(sort_by="cpu_time_total", row_limit=25)
    (out_dir / f"profile_rerun_{s.short}.txt").write_text(f"ttft {m['ttft']}\n{table}")
    s.emit("profile", host_batch_s=t, rerun_ttft_ms=m["ttft"] * 1e3)


def _mmlu_programs(vocab: int, subjects: int = 4, per_subject: int = 16):
    rng = random.Random(5)
    choices = [t + 3 for t in b"ABCD"]  # byte-tokenizer ids of A/B/C/D
    progs = []
    for _ in range(subjects):
        prefix = random_tokens(rng, 1500, vocab)
        for _ in range(per_subject):
            progs.append(prefix + random_tokens(rng, 60, vocab) + [t + 3 for t in b"\nAnswer: "])
    return progs, choices


def mmlu(s: Suite) -> None:
    """5-shot prefix (~1.5k tokens) shared per subject, select over A/B/C/D, 64 programs."""
    rt = s.rt
    progs, choices = _mmlu_programs(s.vocab)
    prompts = [p + [c] for p in progs for c in choices]
    params = [{"max_new_tokens": 0, "logprob_start_len": len(p) - 1} for p in prompts]

    def run() -> float:
        rt.flush_cache()
        return timed(lambda: submit_all(rt, prompts, params))

    run()
    st0 = rt.cache_stats()
    t_cache = statistics.median(run() for _ in range(s.args.repeats))
    st1 = rt.cache_stats()
    hit = (st1["hit_tokens"] - st0["hit_tokens"]) / max(1, st1["prompt_tokens"] - st0["prompt_tokens"])
    with without_radix_cache(rt):
        t_nocache = run()
    t_hf = timed(lambda: _hf_select(s.hf, progs, choices))
    n = len(progs)
    s.emit("mmlu", programs=n, lmnb_prog_s=n / t_cache, nocache_prog_s=n / t_nocache,
           hf_prog_s=n / t_hf, hit_rate=hit, speedup_vs_nocache=t_nocache / t_cache,
           speedup_vs_hf=t_hf / t_cache)


@torch.no_grad()
def _hf_select(hf, progs, choices, rows: int = 64) -> list[int]:
    """HF scoring: prompt + choice rows, batched (equal lengths per subject, no padding)."""
    picks = []
    flat = [p + [c] for p in progs for c in choices]
    for i in range(0, len(flat), rows):
        ids = torch.tensor(flat[i : i + rows], device=hf.device)
        lp = torch.log_softmax(hf(ids, logits_to_keep=2).logits[:, 0].float(), -1)
        score = lp.gather(1, ids[:, -1:])[:, 0].view(-1, len(choices))
        picks += score.argmax(-1).tolist()
    return picks


JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "occupation": {"type": "string", "maxLength": 24},
        "city": {"enum": ["Paris", "London", "Tokyo", "New York"]},
        "employed": {"type": "boolean"},
    },
    "required": ["name", "age", "occupation", "city", "employed"],
}


def json_decode(s: Suite) -> None:
    """5 schema-constrained fields after a ~3k-token document, 16 programs; docs cached."""
    rt, rng = s.rt, random.Random(7)
    docs = [random_tokens(rng, s.n(3000), s.vocab) + [t + 3 for t in b"\nJSON: "] for _ in range(16)]
    kw = {"max_new_tokens": 256, "temperature": 0, "json_schema": json.dumps(JSON_SCHEMA)}

    def run():
        t = timed(lambda: res.__setitem__(0, rt.generate(docs, **kw)))
        return t

    res = [None]
    run()  # compiles the grammar, caches the documents
    t_jf = statistics.median(run() for _ in range(s.args.repeats))
    jf_out = res[0]
    with without_mixed_steps(rt):   # jump-forward with its extends run as steps of their own
        run()
        t_unmixed = statistics.median(run() for _ in range(s.args.repeats))
    with without_jump_forward(rt):
        run()
        t_nojf = statistics.median(run() for _ in range(s.args.repeats))
        nojf_out = res[0]
    plain_kw = {k: v for k, v in kw.items() if k != "json_schema"}
    _, masks = _mask_overhead(rt, lambda: rt.generate(docs, **kw),
                              lambda: rt.generate(docs, **{**plain_kw, "max_new_tokens": 64}))
    valid = sum(_valid_json(o["text"]) for o in jf_out)
    steps_jf = statistics.mean(o["meta"]["decode_steps"] for o in jf_out)
    steps_nojf = statistics.mean(o["meta"]["decode_steps"] for o in nojf_out)
    new = max(1, round(statistics.mean(o["meta"]["completion_tokens"] for o in nojf_out)))
    t_hf = timed(lambda: hf_generate(s.hf, docs, new))
    n = len(docs)
    s.emit("json_decode", programs=n, lmnb_prog_s=n / t_jf, nojf_prog_s=n / t_nojf,
           jf_speedup=t_nojf / t_jf, jf_unmixed_prog_s=n / t_unmixed,
           jf_speedup_unmixed=t_nojf / t_unmixed, decode_steps_jf=steps_jf, decode_steps_nojf=steps_nojf,
           valid_json=valid, **masks, hf_unconstrained_prog_s=n / t_hf, speedup_vs_hf=t_hf / t_jf,
           hf_note=f"unconstrained_{new}_tokens_padded_batch")


def _decode_step_ms(rt, t0: float) -> float:
    """Median decode step (ms) of the engine's history since `t0`."""
    steps = [h[3] for h in list(rt.engine.history) if h[0] >= t0 and h[1] == "decode"]
    return statistics.median(steps) * 1e3


def _mask_overhead(rt, run, run_plain) -> dict:
    """What grammar masks cost a decode step, two ways:
      mask_host_ms  host time inside apply_masks per step (computing the bitmasks, one copy,
                    queueing the fill), timed without a device sync: the GPU runs the step's
                    forward meanwhile, so this is the engine thread's time, not the GPU's;
      guided_step_ms / plain_step_ms  median decode steps of the same batch with and
                    without the constraint (everything a constraint adds, run-ahead included).
    `mask_of_step` = mask_host_ms / guided_step_ms (the issue's measure)."""
    from lmnb.runtime import device_sampling as output

    spent: list[float] = []
    orig = output.apply_masks

    def timed_masks(*args):
        t = time.perf_counter()
        orig(*args)
        spent.append(time.perf_counter() - t)

    t0 = time.time()
    output.apply_masks = timed_masks
    try:
        outs = run()
    finally:
        output.apply_masks = orig
    guided = _decode_step_ms(rt, t0)
    t1 = time.time()
    run_plain()
    plain = _decode_step_ms(rt, t1)
    host = statistics.mean(spent) * 1e3
    return outs, dict(mask_host_ms=host, mask_calls=len(spent), guided_step_ms=guided,
                      plain_step_ms=plain, mask_of_step=host / guided,
                      guided_over_plain=guided / plain)


def _many_schemas(n: int) -> list[dict]:
    """n different schemas: the realistic and keyword sets, then variants of them with their
    own enum values and bounds (every request of the batch compiles its own grammar)."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "constrained"))
    from keyword_schemas import REALISTIC, SUITE

    base = list(REALISTIC.values()) + [v[0] for v in SUITE.values()]
    out = []
    for i in range(n):
        s = json.loads(json.dumps(base[i % len(base)]))
        if i >= len(base):   # a distinct variant: one more property with its own bounds
            # "#/$defs/x" names the document root: the nested schema's definitions move up
            defs = {k: s.pop(k) for k in ("$defs", "definitions") if k in s}
            s = {"type": "object", "required": ["v", "tag"], **defs, "properties": {
                "v": s, "tag": {"enum": [f"t{i}", f"u{i}"]},
                "score": {"type": "number", "minimum": -i, "maximum": i + 0.5}}}
        out.append(s)
    return out


def json_many(s: Suite) -> None:
    """64 requests with 64 different schemas in one batch: grammar mask cost per decode step
    (computing every request's bitmask, one copy, expanding and applying on the device) as
    a share of the step. Target <= 5% of the 8B decode step."""
    rt, rng = s.rt, random.Random(11)
    n = s.n(64)
    schemas = [json.dumps(x) for x in _many_schemas(n)]
    prompts = [random_tokens(rng, 200, s.vocab) + [t + 3 for t in b"\nJSON: "] for _ in range(n)]
    kw = {"max_new_tokens": s.n(96), "temperature": 0}

    def run() -> list[dict]:
        handles = [rt.submit(p, json_schema=sc, **kw) for p, sc in zip(prompts, schemas)]
        return [h.result() for h in handles]

    t_compile = timed(lambda: [rt.grammars().compile(json_schema=sc) for sc in schemas])
    run()   # warm: prompts cached
    outs, masks = _mask_overhead(
        rt, run, lambda: [h.result() for h in [rt.submit(p, **kw) for p in prompts]])
    valid = sum(_valid_json(o["text"]) for o in outs)
    s.emit("json_many_schemas", requests=n, schemas=len(set(schemas)), compile_all_ms=t_compile * 1e3, **masks,
           valid_json=valid, finished=sum(o["meta"]["finish_reason"] == "stop" for o in outs))


def _valid_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


WORKLOADS = {"latency": latency, "overlap": overlap, "decode_steps": decode_steps, "throughput": throughput,
             "cell_rerun": cell_rerun, "mmlu": mmlu, "hellaswag": hellaswag,
             "tree_of_thought": tree_of_thought, "multi_turn_chat": multi_turn_chat,
             "json_decode": json_decode, "json_many": json_many, "profile": profile}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:llama3-8b")
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself")
    ap.add_argument("--small", action="store_true", help="workloads at a tenth of their size")
    ap.add_argument("--kv-gb", type=float, default=24.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-requests", type=int, default=64)
    ap.add_argument("--hf-steps", type=int, default=32)
    ap.add_argument("--hf-latency-tokens", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    s = Suite(args)
    s.emit("setup", load_s=s.load_s, hbm_gbs=s.bw / 1e9, attention=s.rt.attention_backend,
           cuda_graph=s.rt.engine.runner.cuda_graph)
    t = time.perf_counter()
    s.warm()
    s.emit("warmup", seconds=time.perf_counter() - t)
    for name in args.only.split(","):
        t = time.perf_counter()
        try:
            WORKLOADS[name](s)
        except Exception as e:  # noqa: BLE001 - one broken workload must not hide the rest
            s.emit(f"{name}_error", error=repr(e)[:200].replace(" ", "_"))
        print(f"# {name} took {time.perf_counter() - t:.1f}s", flush=True)
        if args.out:
            _write(s, args.out)
    path = _write(s, args.out)
    print(f"wrote {path}")
    s.rt.shutdown()


def _write(s: Suite, out: str | None) -> Path:
    extra = {"model": s.args.model, "dtype": str(s.rt.dtype), "attention": s.rt.attention_backend}
    if out is None:
        return save(f"gpu_{s.short}.json", s.rows, **extra)
    Path(out).write_text(json.dumps({"environment": environment(), **extra, "results": s.rows},
                                    indent=2))
    return Path(out)


if __name__ == "__main__":
    main()
