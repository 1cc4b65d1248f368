"""Program workloads of BENCHMARKS.md that the GPU suite runs beside mmlu: hellaswag,
tree_of_thought and multi_turn_chat, each as lmnb (radix cache), lmnb without its cache and
HF transformers, side by side in one run. Token-level programs over the byte tokenizer of
`dummy:` models: the shapes (shared prefixes, branch fan-out, turn lengths) are the
paper's; the content is random and output lengths are fixed (`ignore_eos`).

HF runs what a notebook user would write: one padded `generate` (or forward) per program
step, batched over the programs that are at that step. Long HF generations are timed as
prefill plus measured steps (`hf_note` says so on each line)."""
from __future__ import annotations

import random
import statistics
from concurrent.futures import ThreadPoolExecutor

import torch
from gpu_helpers import hf_generate, random_tokens, submit_all, timed, without_radix_cache


def _hit_rate(rt, fn) -> tuple[float, float]:
    """Run fn with a flushed cache; return (seconds, prefix-cache hit rate over its prompts)."""
    rt.flush_cache()
    st0 = rt.cache_stats()
    t = timed(fn)
    st1 = rt.cache_stats()
    hits = st1["hit_tokens"] - st0["hit_tokens"]
    return t, hits / max(1, st1["prompt_tokens"] - st0["prompt_tokens"])


def _with_and_without_cache(s, fn, nocache_fn=None) -> tuple[float, float, float]:
    """(median seconds with the cache, hit rate, seconds of nocache_fn (default fn) without
    the cache). Program workloads are long: at most 2 timed runs after the warm-up."""
    fn()  # warm: kernels and graph shapes of this workload
    runs = [_hit_rate(s.rt, fn) for _ in range(min(2, s.args.repeats))]
    t = statistics.median(r[0] for r in runs)
    hit = statistics.median(r[1] for r in runs)
    with without_radix_cache(s.rt):
        t_nocache = timed(nocache_fn or fn)
    return t, hit, t_nocache


def _hf_steps(hf, prompts: list[list[int]], new: int, measured: int) -> float:
    """HF time of a padded batch generating `new` tokens: exact when new <= measured + 1,
    else prefill plus (new - 1) steps at the step time measured over `measured` steps."""
    if new <= measured + 1:
        return timed(lambda: hf_generate(hf, prompts, new))
    t1 = timed(lambda: hf_generate(hf, prompts, 1))
    tk = timed(lambda: hf_generate(hf, prompts, measured + 1))
    return t1 + (new - 1) * (tk - t1) / measured


# ------------------------------------------------------------------------------ hellaswag
def hellaswag(s) -> None:
    """20-shot prefix, select over 4 endings (each ending's summed logprob), 200 questions.
    Without the cache every row is a full prefill whatever the batch, so the no-cache run
    and HF score the first 50 questions (programs/s over what they ran)."""
    rng = random.Random(21)
    shots = random_tokens(rng, 20 * 60, s.vocab)
    qs = [(random_tokens(rng, 40, s.vocab), [random_tokens(rng, 20, s.vocab) for _ in range(4)])
          for _ in range(s.n(200))]
    prompts = [shots + ctx + e for ctx, ends in qs for e in ends]
    start = len(shots) + 40 - 1
    params = [{"max_new_tokens": 0, "logprob_start_len": start}] * len(prompts)
    sub = min(len(qs), 50)
    t, hit, t_nocache = _with_and_without_cache(
        s, lambda: submit_all(s.rt, prompts, params),
        lambda: submit_all(s.rt, prompts[: 4 * sub], params[: 4 * sub]))
    t_hf = timed(lambda: _hf_score_endings(s.hf, prompts[: 4 * sub], 21))
    n = len(qs)
    s.emit("hellaswag", programs=n, lmnb_prog_s=n / t, nocache_prog_s=sub / t_nocache,
           hf_prog_s=sub / t_hf, hit_rate=hit, speedup_vs_nocache=t_nocache / sub * n / t,
           speedup_vs_hf=t_hf / sub * n / t, hf_note=f"nocache_and_hf_over_first_{sub}")


@torch.no_grad()
def _hf_score_endings(hf, rows: list[list[int]], keep: int, batch: int = 64) -> list[float]:
    """Summed logprob of each row's last keep-1 tokens, batched (rows are equally long)."""
    scores = []
    for i in range(0, len(rows), batch):
        ids = torch.tensor(rows[i : i + batch], device=hf.device)
        logits = hf(ids, logits_to_keep=keep).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(2, ids[:, -keep + 1:, None])[..., 0]
        scores += lp.sum(-1).tolist()
    return scores


# ------------------------------------------------------------------------ tree_of_thought
def tree_of_thought(s) -> None:
    """3 levels x 3 branches of fork, each branch a gen of up to 256 tokens, 8 programs
    (39 gens each). Levels run in turn; all branches of a level run in parallel."""
    rng = random.Random(31)
    programs = [random_tokens(rng, 300, s.vocab) for _ in range(s.n(8))]
    nodes = 1 + 3 + 9 + 27
    lens = [[s.n(rng.randint(32, 256)) for _ in range(nodes)] for _ in programs]
    marks = [random_tokens(rng, 6, s.vocab) for _ in range(3)]

    def lmnb_run(rt=s.rt):
        frontier = [(p, i, 0) for i, p in enumerate(programs)]   # (prefix, program, node)
        for _ in range(3):
            reqs = [(pre + marks[b], i, 3 * node + b + 1) for pre, i, node in frontier for b in range(3)]
            params = [{"max_new_tokens": lens[i][k], "temperature": 0, "ignore_eos": True}
                      for _, i, k in reqs]
            outs = submit_all(rt, [r[0] for r in reqs], params)
            frontier = [(pre + o["output_ids"], i, k) for (pre, i, k), o in zip(reqs, outs)]
        return frontier

    t, hit, t_nocache = _with_and_without_cache(s, lmnb_run)
    # HF: per level one padded batch of every program's branches, generating the longest
    t_hf, frontier = 0.0, [(p, i, 0) for i, p in enumerate(programs)]
    for _ in range(3):
        reqs = [(pre + marks[b], i, 3 * node + b + 1) for pre, i, node in frontier for b in range(3)]
        longest = max(lens[i][k] for _, i, k in reqs)
        t_hf += _hf_steps(s.hf, [r[0] for r in reqs], longest, s.args.hf_steps)
        frontier = [(pre + random_tokens(rng, lens[i][k], s.vocab), i, k) for pre, i, k in reqs]
    n = len(programs)
    s.emit("tree_of_thought", programs=n, gens=n * (nodes - 1), lmnb_prog_s=n / t,
           nocache_prog_s=n / t_nocache, hf_prog_s=n / t_hf, hit_rate=hit,
           speedup_vs_nocache=t_nocache / t, speedup_vs_hf=t_hf / t,
           hf_note=f"per_level_padded_batch_longest_gen_prefill+{s.args.hf_steps}_timed_steps")


# ------------------------------------------------------------------------ multi_turn_chat
def multi_turn_chat(s) -> None:
    """20 sessions x 4 turns, user turns of 256-512 tokens; short (4-16) and long
    (256-512) outputs. Sessions run concurrently; each turn waits for the previous one."""
    for kind, lo, hi in (("short", 4, 16), ("long", 256, 512)):
        rng = random.Random(41)
        sessions = [[(random_tokens(rng, rng.randint(256, 512), s.vocab), s.n(rng.randint(lo, hi)))
                     for _ in range(4)] for _ in range(s.n(20))]
        ttfts: list[float] = []

        def one_session(turns, rt=s.rt, ttfts=ttfts):
            history: list[int] = []
            for user, out in turns:
                history = history + user
                o = rt.generate([history], max_new_tokens=out, temperature=0, ignore_eos=True)[0]
                ttfts.append(o["meta"]["ttft"])
                history = history + o["output_ids"]

        def lmnb_run(sessions=sessions, one_session=one_session):
            with ThreadPoolExecutor(len(sessions)) as ex:
                list(ex.map(one_session, sessions))

        t, hit, t_nocache = _with_and_without_cache(s, lmnb_run)
        k = len(sessions) * 4   # ttfts: warm-up run, the cached runs, then the no-cache run
        runs = min(2, s.args.repeats)
        ttft_ms = statistics.median(ttfts[runs * k:(runs + 1) * k]) * 1e3
        nocache_ttft_ms = statistics.median(ttfts[-k:]) * 1e3
        t_hf, histories = 0.0, [[] for _ in sessions]
        for turn in range(4):
            for h, sess in zip(histories, sessions):
                h += sess[turn][0]
            longest = max(sess[turn][1] for sess in sessions)
            t_hf += _hf_steps(s.hf, histories, longest, s.args.hf_steps)
            for h, sess in zip(histories, sessions):
                h += random_tokens(rng, sess[turn][1], s.vocab)
        n = len(sessions)
        s.emit(f"multi_turn_chat_{kind}", programs=n, turns=4, lmnb_prog_s=n / t,
               nocache_prog_s=n / t_nocache, hf_prog_s=n / t_hf, hit_rate=hit,
               lmnb_ttft_ms=ttft_ms, nocache_ttft_ms=nocache_ttft_ms, speedup_vs_nocache=t_nocache / t, speedup_vs_hf=t_hf / t,
               hf_note=f"per_turn_padded_batch_longest_output_prefill+{s.args.hf_steps}_timed_steps")
