"""Token healing on prompts cut mid-token: healed vs unhealed vs the clean boundary.

For each of 10 contexts C the model's greedy continuation from C (the clean boundary)
is generated first; its first word w gives two cut prompts: C + " " (a trailing space)
and C + w[:half] (half a word). Each cut prompt is run greedily with token healing on
and off; a run matches when prompt + output reads the same as C + clean output over the
first `--chars` characters after C (the cut prompt's own text included; fewer where a
run used up its tokens first). Perfect healing
gives 20/20; the target is >= 18.

Prints one line per prompt and a summary line, writes bench/results/token_healing.json.

    python bench/token_healing.py [--model smollm2] [--tokens 12] [--chars 24]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, save

CONTEXTS = [
    "The capital of France is",
    "The largest planet in our solar system is",
    "Water is made of hydrogen and",
    "The opposite of hot is",
    "My favourite fruit is the",
    "The first month of the year is",
    "To make a cake you need flour, sugar and",
    "The Eiffel Tower is located in",
    "Shakespeare wrote the play",
    "The chemical symbol for gold is",
]


def cut_prompts(rt, tokens: int) -> list[tuple[str, str, str]]:
    """(context, cut prompt, kind) pairs built from each context's clean continuation."""
    out = []
    for c in CONTEXTS:
        clean = rt.generate(c, max_new_tokens=tokens, temperature=0)[0]["text"]
        word = clean[: len(clean) - len(clean.lstrip())] + (clean.lstrip().split() or [""])[0]
        out.append((c, c + " ", "space"))
        if len(word.strip()) >= 2:
            out.append((c, c + word[: max(2, (len(word) + 1) // 2)], "half-word"))
        else:   # a one-letter word cannot be halved: cut after its leading space instead
            out.append((c, c + word[:1], "half-word"))
    return out


def run(rt, tokens: int, chars: int) -> tuple[list[dict], dict]:
    rows = []
    clean_cache: dict[str, str] = {}
    for c, prompt, kind in cut_prompts(rt, tokens):
        if c not in clean_cache:
            clean_cache[c] = c + rt.generate(c, max_new_tokens=tokens, temperature=0)[0]["text"]
        clean = clean_cache[c]
        full = {}
        for heal in (True, False):
            res = rt.generate(prompt, max_new_tokens=tokens, temperature=0, token_healing=heal)[0]
            full[heal] = prompt + res["text"]
        # over the first `chars` characters after C, or fewer where a run used up its tokens
        n = min(chars, len(clean) - len(c), *(len(f) - len(c) for f in full.values()))
        span = slice(len(c), len(c) + max(n, 1))
        row = {"prompt": prompt, "kind": kind, "clean": clean[len(c):], "healed": full[True][len(c):],
               "unhealed": full[False][len(c):],
               "healed_match": full[True][span] == clean[span],
               "unhealed_match": full[False][span] == clean[span]}
        rows.append(row)
        emit("token_healing", kind=kind, healed_match=int(row["healed_match"]),
             unhealed_match=int(row["unhealed_match"]), prompt=repr(prompt))
    summary = {"prompts": len(rows), "healed_matches": sum(r["healed_match"] for r in rows),
               "unhealed_matches": sum(r["unhealed_match"] for r in rows)}
    emit("token_healing_summary", **summary, goal=18)
    rt.check_integrity()
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--chars", type=int, default=24)
    ap.add_argument("--out", default="token_healing.json")
    args = ap.parse_args()
    import lmnb as lm

    rt = lm.Runtime(args.model)
    try:
        rows, summary = run(rt, args.tokens, args.chars)
        path = save(args.out, rows, model=args.model, tokens=args.tokens, chars=args.chars, summary=summary)
        print(f"wrote {path}")
    finally:
        rt.shutdown()


if __name__ == "__main__":
    main()
