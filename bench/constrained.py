"""Constrained-decoding benchmark on the SmolLM2 vocabulary: lmnb beside llguidance and
xgrammar, side by side in one run (CPU, no model needed).

45 schemas (tool calling, extraction, negative/fractional/exclusive bounds, formats,
patterns, recursion): per engine the per-tokenizer setup time, the compile time of each
schema, and the mask time of every token of a valid instance, on a fresh grammar ("first
visit") and again on the same grammar ("cached"), plus the process RSS growth. Each is
repeated (`--repeats`) on fresh compiles and the median taken per token, so a busy
machine's preemptions do not pass for mask cost. lmnb is
timed through its cursor (what the sampler calls); peers through their own APIs, each
compiling the schema itself. A peer that cannot be imported is skipped and said so.
Prints one line per case and writes bench/results/constrained_cpu.json.
With --decode it also runs JSON decoding programs on the real smollm2 through the engine,
with and without jump-forward (same engine, the switch flipped), and reports programs/s
and decode steps.

    python bench/constrained.py [--repeats 5] [--fsm] [--decode] [--out bench/results/constrained_cpu.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
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
_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, _ROOT)   # this checkout's lmnb, not an installed one
sys.path.insert(0, os.path.join(_ROOT, "tests", "constrained"))
from keyword_schemas import REALISTIC, SUITE

ALL_SCHEMAS = {**SCHEMAS, **{f"kw_{k}": v[0] for k, v in SUITE.items()}, **REALISTIC}
INSTANCES = {f"kw_{k}": v[1][0] for k, v in SUITE.items()}
_CACHE = os.path.join(tempfile.gettempdir(), "lmnb-test-smollm2-tokenizer-v1")


def load_tokenizer():
    """SmolLM2's tokenizer from the embedded GGUF (lmnb's converted copy when present)."""
    from transformers import AutoTokenizer

    from lmnb.runtime.loader import converted_dir, embedded_gguf_path

    gguf = embedded_gguf_path()
    conv = converted_dir(gguf)
    if (conv / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(conv))
    if os.path.exists(os.path.join(_CACHE, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(_CACHE)
    return AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


class LmnbEngine:
    name = "lmnb"

    def __init__(self, tok, engine: str = "llguidance"):
        from lmnb.runtime.constrained import make_backend

        self.backend = make_backend(tok, engine=engine)
        self.name = "lmnb" if engine == "llguidance" else "lmnb-fsm"

    def compile(self, schema):
        self.backend._guides.clear()
        return self.backend.compile(json_schema=schema)

    def walk(self, guide, tokens: list[int]) -> list[float]:
        cursor, times = guide.cursor(), []
        fill = cursor.bitmask if hasattr(cursor, "bitmask") else cursor.allowed_mask
        for t in tokens:
            t0 = time.perf_counter_ns()
            fill()
            times.append((time.perf_counter_ns() - t0) / 1e3)
            cursor.accept_token(t)
        return times


class LlguidanceEngine:
    name = "llguidance"

    def __init__(self, tok):
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tok)
        self.words = (self.tok.vocab_size + 31) // 32

    def compile(self, schema):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False})
        m = self.llg.LLMatcher(self.tok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error()[:120])
        return m

    def walk(self, proto, tokens):
        m, times = proto.deep_copy(), []
        buf = np.zeros(self.words, np.int32)
        for t in tokens:
            t0 = time.perf_counter_ns()
            m.unsafe_compute_mask_ptr(buf.ctypes.data, buf.nbytes)
            times.append((time.perf_counter_ns() - t0) / 1e3)
            if not m.consume_token(t):
                raise ValueError(f"rejected token {t}")
        return times


class XgrammarEngine:
    name = "xgrammar"

    def __init__(self, tok):
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.vocab = len(tok)

    def compile(self, schema):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                 separators=(",", ":"))

    def walk(self, compiled, tokens):
        m = self.xgr.GrammarMatcher(compiled)
        bitmask, times = self.xgr.allocate_token_bitmask(1, self.vocab), []
        for t in tokens:
            t0 = time.perf_counter_ns()
            m.fill_next_token_bitmask(bitmask)
            times.append((time.perf_counter_ns() - t0) / 1e3)
            if not m.accept_token(t):
                raise ValueError(f"rejected token {t}")
        return times


def instance_text(name: str, schema: dict) -> str:
    """A valid compact instance: the suite's own, or one lmnb's guide produces by a walk."""
    if name in INSTANCES:
        return json.dumps(INSTANCES[name], ensure_ascii=False, separators=(",", ":"))
    if name not in _instance_cache:
        _instance_cache[name] = _closing_walk(_instance_backend[0].compile(json_schema=schema))
    return _instance_cache[name]


def _closing_walk(guide, budget: int = 10, seed: int = 0) -> str:
    """Random ASCII tokens for `budget` steps, then one-byte tokens that tend to close JSON."""
    rng = np.random.default_rng(seed)
    vocab, cursor, out = guide.vocab, guide.cursor(), bytearray()
    single = {t[0]: i for i, t in enumerate(vocab.tokens) if t and len(t) == 1}
    ascii_ok = np.array([bool(t) and t.isascii() and t.isprintable() for t in
                         (x.decode("latin-1") if x else "" for x in vocab.tokens)] +
                        [False] * (vocab.vocab_size - len(vocab.tokens)))
    for step in range(budget + 2000):
        if cursor.is_terminated():
            break
        if forced := cursor.jump_forward():
            cursor.accept_text(forced)
            out += forced.encode()
            continue
        mask = cursor.allowed_mask().numpy()
        if step >= budget and cursor.is_accepting():
            break
        pick = np.flatnonzero(mask & ascii_ok)
        tid = int(rng.choice(pick)) if step < budget and len(pick) else None
        if tid is None:
            order = [single[b] for b in b'"}]@.0a1-:TZ ' if b in single and mask[single[b]]]
            tid = order[0] if order else int(rng.choice(np.flatnonzero(mask)))
        cursor.accept_token(tid)
        out += vocab.tokens[tid]
    if not cursor.is_accepting():
        raise ValueError("no instance found by the closing walk")
    return out.decode("utf-8")


_instance_cache: dict = {}
_instance_backend: list = []


def bench_engine(engine, tok, repeats: int) -> dict:
    rows, rss0 = [], _rss_mib()
    for name, schema in ALL_SCHEMAS.items():
        tokens = tok.encode(instance_text(name, schema), add_special_tokens=False)
        try:
            compile_ms, firsts, cacheds = [], [], []
            for _ in range(repeats):   # per token: the median over fresh compiles (load spikes out)
                t = time.perf_counter()
                compiled = engine.compile(schema)
                compile_ms.append((time.perf_counter() - t) * 1e3)
                firsts.append(engine.walk(compiled, tokens))    # fresh grammar: first visits
                cacheds.append(engine.walk(compiled, tokens))   # same grammar again
            first = np.median(np.array(firsts), axis=0).tolist()
            cached = np.median(np.array(cacheds), axis=0).tolist()
        except Exception as e:  # noqa: BLE001  (a peer refusing a schema is a result)
            rows.append({"schema": name, "error": str(e).splitlines()[0][:160]})
            print(f"constrained engine={engine.name} schema={name} error={str(e)[:80]!r}")
            continue
        r = {"schema": name, "tokens": len(tokens), "compile_ms": float(np.median(compile_ms)),
             "first_us": first, "cached_us": cached}
        rows.append(r)
        print(f"constrained engine={engine.name} schema={name} compile_ms={r['compile_ms']:.2f} "
              f"first_us_p50={_pct(first, 50):.1f} first_us_p99={_pct(first, 99):.1f} "
              f"cached_us_p50={_pct(cached, 50):.1f}")
    ok = [r for r in rows if "error" not in r]
    first = [x for r in ok for x in r["first_us"]]
    cached = [x for r in ok for x in r["cached_us"]]
    summary = {"engine": engine.name, "schemas": len(rows), "compiled": len(ok),
               "refused": {r["schema"]: r["error"] for r in rows if "error" in r},
               "compile_ms_p50": _pct([r["compile_ms"] for r in ok], 50),
               "compile_ms_p90": _pct([r["compile_ms"] for r in ok], 90),
               "first_us_p50": _pct(first, 50), "first_us_p99": _pct(first, 99),
               "cached_us_p50": _pct(cached, 50), "cached_us_p99": _pct(cached, 99),
               "rss_growth_mib": _rss_mib() - rss0, "mask_calls": len(first)}
    for r in ok:
        f, c = r.pop("first_us"), r.pop("cached_us")
        r.update(first_us_p50=_pct(f, 50), first_us_p99=_pct(f, 99),
                 cached_us_p50=_pct(c, 50), cached_us_p99=_pct(c, 99))
    return {"summary": summary, "cases": rows}


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
    """JSON decoding programs/s on smollm2: no jump-forward, jump-forward without and with
    mixed steps, side by side."""
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

    def run(jump: bool, mixed: bool = True) -> tuple[float, int, int]:
        rt.outputs.jump_forward, rt.scheduler.mixed = jump, mixed
        rt.flush_cache()
        t = time.perf_counter()
        handles = [rt.submit(p, json_schema=sch, max_new_tokens=256, temperature=0) for p, sch in jobs]
        outs = [h.result() for h in handles]
        dt = time.perf_counter() - t
        valid = sum(o["meta"]["finish_reason"] == "stop" for o in outs)
        return dt, sum(o["meta"]["decode_steps"] for o in outs), valid

    rows, default = [], rt.scheduler.mixed
    run(True)  # warm-up: masks and compiled patterns are cached from here on
    modes = [(False, True), (True, False), (True, True)]   # (jump-forward, mixed steps)
    res = {m: [run(*m) for _ in range(repeats)] for m in modes}
    for jump, mixed in modes:
        r = res[(jump, mixed)]
        dt = statistics.median(x[0] for x in r)
        rows.append({"jump_forward": jump, "mixed_steps": mixed, "programs": len(jobs),
                     "seconds": dt, "programs_per_s": len(jobs) / dt, "decode_steps": r[0][1],
                     "finished": r[0][2]})
    rt.scheduler.mixed = default
    speedup = rows[2]["programs_per_s"] / rows[0]["programs_per_s"]
    for r in rows:
        print(f"constrained decode jump_forward={int(r['jump_forward'])} mixed_steps={int(r['mixed_steps'])} "
              f"programs={r['programs']} programs_per_s={r['programs_per_s']:.3f} "
              f"decode_steps={r['decode_steps']} finished={r['finished']}")
    print(f"constrained decode jump_forward_speedup={speedup:.2f} "
          f"without_mixed_steps={rows[1]['programs_per_s'] / rows[0]['programs_per_s']:.2f}")
    rt.shutdown()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--decode", action="store_true", help="also run JSON programs through the engine")
    ap.add_argument("--fsm", action="store_true", help="also time lmnb's own byte-FSM engine (slow)")
    ap.add_argument("--programs-per-schema", type=int, default=4)
    ap.add_argument("--out", default=os.path.join("bench", "results", "constrained_cpu.json"))
    args = ap.parse_args()
    tok = load_tokenizer()
    engines, setup = [], {}
    makers = [("lmnb", lambda: LmnbEngine(tok)), ("llguidance", lambda: LlguidanceEngine(tok)),
              ("xgrammar", lambda: XgrammarEngine(tok))]
    if args.fsm:
        makers.append(("lmnb-fsm", lambda: LmnbEngine(tok, engine="fsm")))
    for name, make in makers:
        times = []
        try:
            for _ in range(3):
                t = time.perf_counter()
                eng = make()
                times.append((time.perf_counter() - t) * 1e3)
        except ImportError as e:
            print(f"constrained engine={name} skipped={e!r}")
            setup[name] = {"skipped": repr(e)}
            continue
        setup[name] = {"setup_ms": float(np.median(times))}
        print(f"constrained setup engine={name} vocab={len(tok)} setup_ms={np.median(times):.1f}")
        engines.append(eng)
    _instance_backend.append(engines[0].backend)
    results = {}
    for eng in engines:
        results[eng.name] = bench_engine(eng, tok, args.repeats)
        s_ = results[eng.name]["summary"]
        print(f"constrained summary engine={eng.name} compiled={s_['compiled']}/{s_['schemas']} "
              f"compile_ms_p50={s_['compile_ms_p50']:.2f} first_us_p50={s_['first_us_p50']:.1f} "
              f"first_us_p99={s_['first_us_p99']:.1f} cached_us_p50={s_['cached_us_p50']:.1f} "
              f"cached_us_p99={s_['cached_us_p99']:.1f} rss_growth_mib={s_['rss_growth_mib']:.1f}")
    versions = {}
    for pkg in ("llguidance", "xgrammar"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            versions[pkg] = None
    load = os.getloadavg()
    report = {**environment(), "peer_versions": versions, "load_average": load, "vocab": len(tok),
              "setup": setup, "engines": results,
              "targets": {"compile_ms_p50": 5, "first_us_p50": 50, "first_us_p99": 500,
                          "setup_ms": 500},
              "decode": bench_decode(args.programs_per_schema, 3) if args.decode else None}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out} (load average {load[0]:.1f})")


if __name__ == "__main__":
    main()
