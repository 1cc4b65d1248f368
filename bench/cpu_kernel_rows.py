"""lmnb's CPU kernels by row count, per decode step of smollm2 (30 layers' four linears and
the int8 LM head), 2 threads by default:

    hot      each layer called in a tight loop: the weights stay in cache (compute)
    stream   30 distinct copies of each layer in turn: the weights come from memory
    head     the 49152x576 int8 head (28 MB: from memory)

    TREE=/path/to/checkout ROWS=1,4,8,15 STREAM=1 JSON=out.json python bench/cpu_kernel_rows.py

TREE (default: this checkout) is put first on sys.path, so two checkouts can be compared in
fresh processes. THREADS sets torch's (and so the kernels') thread count.
"""
import json
import os
import sys
import time
from pathlib import Path

TREE = os.environ.get("TREE", str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, TREE)
import torch

from lmnb.runtime.quant import cpu_kernels as ck
from lmnb.runtime.quant.cpu_linear import QuantLinear

assert os.path.realpath(ck.__file__).startswith(os.path.realpath(TREE)), ck.__file__
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}


def best(f, calls, reps=5):
    for _ in range(2):
        f()
    b = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(calls):
            f()
        b = min(b, (time.perf_counter() - t) / calls)
    return b * 1e6


def main() -> None:
    k = ck.load()
    print(ck.status(), file=sys.stderr)
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    rows = [int(r) for r in os.environ.get("ROWS", "1,2,4,8,15").split(",")]
    stream = bool(os.environ.get("STREAM"))
    torch.manual_seed(0)
    out = {"tree": TREE, "kernels": ck.status(), "threads": torch.get_num_threads(),
           "load1": os.getloadavg()[0], "results": {}}
    for bits in (4, 8):
        lins = {nm: [QuantLinear(torch.randn(*s) * 0.05, None, bits, dense=False, kernels=k)
                     for _ in range(30 if stream else 1)] for nm, s in SHAPES.items()}
        head = QuantLinear(torch.randn(49152, 576) * 0.05, None, 8, dense=False, kernels=k)
        for r in rows:
            xs = {nm: torch.randn(r, s[1]) for nm, s in SHAPES.items()}
            hot = {nm: best(lambda nm=nm, xs=xs, lins=lins: k.linear(lins[nm][0].desc, xs[nm]), 50) for nm in SHAPES}
            rec = {"hot_layers_ms": sum(hot.values()) * 30 / 1e3, **{f"hot_{n}_us": round(v, 1) for n, v in hot.items()}}
            if stream:
                rec["stream_layers_ms"] = best(lambda xs=xs, lins=lins: [k.linear(lins[nm][i].desc, xs[nm]) for i in range(30)
                                                        for nm in SHAPES], 1) / 1e3
            if bits == 8:
                xh = torch.randn(r, 576)
                rec["head_ms"] = best(lambda head=head, xh=xh: k.linear(head.desc, xh), 5) / 1e3
            out["results"][f"int{bits}_rows{r}"] = rec
            print(f"int{bits} rows={r}: " + " ".join(f"{a}={b:.2f}" if isinstance(b, float) else f"{a}={b}"
                                                     for a, b in rec.items()), flush=True)
    if os.environ.get("JSON"):
        Path(os.environ["JSON"]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
