"""Speculative decoding (drafts from the radix cache and the prompt) on CPU smollm2, greedy,
all in one run: speculative="auto" vs "off" on the same weights.

(a) re-running an unchanged %%lm-style program (a 128-token greedy gen): second run vs
    first run, end to end                                     target >= 4x
(b) the same program edited in its first line: edited run vs the first run (spec off,
    cold cache for neither: what a user sees)                  target >= 1.5x
(c) JSON extraction copying fields from a ~1k-token document: decode tok/s with drafts
    vs without                                                 target >= 1.5x
    c_article: a news article (title, author, date, first sentence), asked in the chat
    template, which smollm2 copies; c_records: one of 24 similar records, which smollm2
    mostly does not copy (its fields come out wrong), so drafts from the document cannot
    be accepted. Each row gives `copied`: the fraction of the output's tokens inside a
    span of >= 4 tokens that the document also holds.
(d) free-form generation (drafts rarely hit): tok/s with drafts vs without
                                                               target: at most 3% slower
CPU timings on a shared machine are noisy: the script prints `uptime` and takes medians.
Usage: python bench/speculative.py [--repeats 3] [--new 128]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, save  # noqa: E402

import lmnb as lm  # noqa: E402

CELL = ("You are a careful technical writer.\n"
        "Topic: how a radix tree shares prefixes between requests.\n"
        "Write a clear explanation in plain prose:\n")
EDITED = "You are a careful and concise technical writer.\n" + CELL.split("\n", 1)[1]
FREE = ["Once upon a time, in a small village by the sea,", "The three laws of motion are",
        "Explain photosynthesis to a ten-year-old. Plants are"]


def _document(rng: random.Random, people: int = 24) -> tuple[str, dict]:
    first = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret",
             "Ken", "Dennis", "Niklaus"]
    last = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus",
            "Hamilton", "Thompson", "Ritchie", "Wirth"]
    cities = ["London", "Zurich", "Boston", "Austin", "Paris", "Berlin", "Oslo", "Kyoto"]
    lines, target = [], None
    for i in range(people):
        rec = {"name": f"{rng.choice(first)} {rng.choice(last)}", "city": rng.choice(cities),
               "employee_id": f"E-{rng.randrange(10**5, 10**6)}",
               "email": f"user{rng.randrange(1000, 9999)}@example.org"}
        lines.append(f"Record {i}: {rec['name']} works in {rec['city']} as employee {rec['employee_id']}; "
                     f"contact {rec['email']}. Notes: joined in {rng.randrange(1990, 2024)}, "
                     f"team {rng.choice(['infra', 'compilers', 'databases', 'networks'])}.")
        if i == people // 2:
            target = dict(rec, index=i)
    return "\n".join(lines), target


def _article(rng: random.Random, paragraphs: int = 14) -> tuple[str, dict]:
    towns = ["Millbrook", "Ashford", "Redwater", "Kingsport", "Elmstead", "Carrow"]
    topics = ["the new library", "the river bridge", "the school garden", "the harbour wall",
              "the night market"]
    paras = []
    for _ in range(paragraphs):
        town, topic = rng.choice(towns), rng.choice(topics)
        paras.append(f"In {town}, residents gathered on a cold morning to discuss {topic}. The council "
                     f"said that work on {topic} would begin in spring and finish before the summer "
                     f"festival, and several speakers asked how the cost of {rng.randrange(20, 900)} "
                     f"thousand pounds would be shared between the town and the county.")
    fields = {"title": "Town councils across the valley plan a busy spring of repairs",
              "author": "Margaret Ellison", "date": f"{rng.randrange(1, 28)} March 2026"}
    doc = f"Title: {fields['title']}\nBy {fields['author']}, published {fields['date']}\n\n" + "\n\n".join(paras)
    return doc, fields


def reusable_fraction(new: list[int], old: list[int], n: int = 4) -> float:
    """Tokens of `new` inside a span of >= n tokens that also occurs in `old`."""
    spans = {tuple(old[i:i + n]) for i in range(len(old) - n + 1)}
    covered = [False] * len(new)
    for i in range(len(new) - n + 1):
        if tuple(new[i:i + n]) in spans:
            covered[i:i + n] = [True] * n
    return sum(covered) / max(1, len(new))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def decode_rate(out) -> float:
    """Output tokens per second after the first token (e2e minus time to first token)."""
    m = out["meta"]
    return (m["completion_tokens"] - 1) / max(m["e2e_latency"] - m["ttft"], 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--cases", default="abcd", help="which cases to run, e.g. 'ab'")
    ap.add_argument("--out", default="speculative_cpu.json", help="JSON file name under bench/results")
    args = ap.parse_args()
    print("load:", os.popen("uptime").read().strip(), flush=True)
    rt = lm.Runtime("smollm2", device="cpu")
    lm.set_default_backend(rt)
    new = args.new
    rows = []

    def program(text):
        return lm.run_program(text + lm.gen("out", max_tokens=new, temperature=0, ignore_eos=True))

    # (a) / (b): a cell run, re-run unchanged, then edited in its first line
    firsts, reruns, edits, same, reusable = [], [], [], True, []
    for _ in range(args.repeats if set("ab") & set(args.cases) else 0):
        rt.flush_cache()
        rt.drafter.history = type(rt.drafter.history)()   # forget earlier repeats
        t1, s1 = timed(lambda: program(CELL))
        t2, s2 = timed(lambda: program(CELL))
        t3, s3 = timed(lambda: program(EDITED))
        rt.flush_cache()
        t0, s0 = timed(lambda: lm.run_program(
            EDITED + lm.gen("out", max_tokens=new, temperature=0, ignore_eos=True, speculative=False)))
        same &= s1["out"] == s2["out"] and s3["out"] == s0["out"]
        reusable.append(reusable_fraction(rt.encode(s0["out"]), rt.encode(s1["out"])))
        firsts.append(t1)
        reruns.append(t2)
        edits.append((t0, t3))
    if firsts:
        # best_speedup: fastest over fastest (a shared machine only ever slows a run down)
        rows.append(emit("speculative case=a_rerun", first_s=median(firsts), rerun_s=median(reruns),
                         speedup=median(firsts) / median(reruns), target=4.0, identical=same,
                         best_speedup=min(firsts) / min(reruns)))
        e_off, e_on = median([a for a, _ in edits]), median([b for _, b in edits])
        rows.append(emit("speculative case=b_edited_first_line", plain_s=e_off, edited_with_drafts_s=e_on,
                         speedup=e_off / e_on, target=1.5, identical=same,
                         reusable=median(reusable),
                         best_speedup=min(a for a, _ in edits) / min(b for _, b in edits)))

    # (c) JSON extraction from a ~1k-token document (see the module docstring)
    rng = random.Random(0)
    record_schema = {"type": "object", "properties": {k: {"type": "string"} for k in
                                                      ("name", "city", "employee_id", "email")},
                     "required": ["name", "city", "employee_id", "email"]}
    article_schema = {"type": "object", "properties": {k: {"type": "string"} for k in
                                                       ("title", "author", "date", "first_sentence")},
                      "required": ["title", "author", "date", "first_sentence"]}

    def records():
        doc, target = _document(rng)
        return doc, (f"{doc}\n\nCopy record {target['index']} into JSON with the keys name, city, "
                     f"employee_id and email.\nJSON: "), record_schema, 96

    def article():
        doc, _ = _article(rng)
        ask = ("Extract the title, the author, the publication date and the first sentence of the "
               "article as JSON.")
        prompt = rt.tokenizer.apply_chat_template(
            [{"role": "system", "content": "You are a helpful assistant."},
             {"role": "user", "content": f"{doc}\n\n{ask}"}], tokenize=False, add_generation_prompt=True)
        return doc, prompt, article_schema, new

    for name, make in (("c_article", article), ("c_records", records)):
        rates_on, rates_off, doc_tokens, same_c, copied, acc = [], [], 0, True, [], []
        for rep in range(args.repeats if "c" in args.cases else 0):
            doc, prompt, schema, max_new = make()
            doc_tokens = len(rt.encode(prompt))
            kw = dict(max_new_tokens=max_new, temperature=0, json_schema=json.dumps(schema))
            off = rt.generate(prompt, speculative=False, **kw)[0]   # also caches the document
            on = rt.generate(prompt, **kw)[0]
            rt.flush_cache()   # no radix draft of the same answer: n-gram drafts from the document only
            rt.drafter.history = type(rt.drafter.history)()
            rt.generate(prompt, max_new_tokens=1, temperature=0)   # the document cached again
            rt.drafter.history = type(rt.drafter.history)()
            before = rt.stats()
            on = rt.generate(prompt, **kw)[0]
            after = rt.stats()
            d = after["spec_drafted"] - before["spec_drafted"]
            acc.append((after["spec_accepted"] - before["spec_accepted"]) / d if d else 0.0)
            same_c &= on["text"] == off["text"]
            copied.append(reusable_fraction(off["output_ids"], rt.encode(doc)))
            rates_on.append(decode_rate(on))
            rates_off.append(decode_rate(off))
        if rates_on:
            rows.append(emit(f"speculative case={name}", doc_tokens=doc_tokens,
                             off_tok_s=median(rates_off), on_tok_s=median(rates_on),
                             speedup=median(rates_on) / median(rates_off), target=1.5, identical=same_c,
                             copied=median(copied), acceptance=median(acc),
                             best_speedup=max(rates_on) / max(rates_off)))

    # (d) free-form: prompts whose continuations the drafts rarely know
    r_on, r_off = [], []
    before = rt.stats()
    for rep in range(args.repeats if "d" in args.cases else 0):
        for p in FREE:
            rt.flush_cache()
            rt.drafter.history = type(rt.drafter.history)()
            off = rt.generate(p, max_new_tokens=new, temperature=0, ignore_eos=True, speculative=False)[0]
            rt.flush_cache()
            rt.drafter.history = type(rt.drafter.history)()
            on = rt.generate(p, max_new_tokens=new, temperature=0, ignore_eos=True)[0]
            r_off.append(decode_rate(off))
            r_on.append(decode_rate(on))
    after = rt.stats()
    drafted = after["spec_drafted"] - before["spec_drafted"]
    acc = after["spec_accepted"] - before["spec_accepted"]
    if r_on:
        ratio = median(r_on) / median(r_off)
        rows.append(emit("speculative case=d_free_form", off_tok_s=median(r_off), on_tok_s=median(r_on),
                         on_over_off=ratio, slowdown_pct=100 * (1 - ratio), target_max_slowdown_pct=3.0,
                         drafted=drafted, accepted=acc, best_on_over_off=max(r_on) / max(r_off)))
    print("load:", os.popen("uptime").read().strip(), flush=True)
    print(save(args.out, rows, load=os.popen("uptime").read().strip()))
    rt.shutdown()


if __name__ == "__main__":
    main()
