"""The fused CPU decode step (`lmnb_decode_step`) by rows x cached keys, on a smollm2-shaped
model (30 layers, 9 query heads, 3 KV heads, head_dim 64; random q4 weights, random K/V):

    ROWS=1,4,8 KEYS=10,1000 python bench/cpu_step_attention.py

A step of R rows is one request's verify step (rows attend to KEYS - R + 1 .. KEYS keys of
one slot range), or with LAYOUT=batch, R requests of KEYS keys each. Per case: the median
and best of REPS timed steps (ms). Where the tree has the kernels' attention entry point
(`Kernels.attention`), the attention alone (the 30 layers' worth: one call per layer's
K/V) is timed too.

TREE (default: this checkout) goes first on sys.path, so two checkouts compare in fresh
processes; THREADS sets the thread count (default 2); JSON=path saves the results.
"""
import json
import os
import statistics
import sys
import time
from pathlib import Path

TREE = os.environ.get("TREE", str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, TREE)
import torch  # noqa: E402

from lmnb.runtime.loader import hf_weight_shapes  # noqa: E402
from lmnb.runtime.memory import KVPool  # noqa: E402
from lmnb.runtime.models.config import ModelConfig  # noqa: E402
from lmnb.runtime.models.llama import LlamaForCausalLM  # noqa: E402
from lmnb.runtime.quant import cpu_kernels as ck  # noqa: E402

assert os.path.realpath(ck.__file__).startswith(os.path.realpath(TREE)), ck.__file__
SMOLLM2 = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
               num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
               rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
               tie_word_embeddings=True)


def timed(f, reps):
    for _ in range(3):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": round(statistics.median(ts), 3), "best_ms": round(min(ts), 3)}


def main() -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    rows = [int(r) for r in os.environ.get("ROWS", "1,4,8").split(",")]
    keys = [int(k) for k in os.environ.get("KEYS", "10,1000").split(",")]
    reps = int(os.environ.get("REPS", "40"))
    layout = os.environ.get("LAYOUT", "verify")
    cfg = ModelConfig.from_hf(dict(SMOLLM2))
    g = torch.Generator().manual_seed(0)
    model = LlamaForCausalLM(cfg, torch.float32, torch.device("cpu"))
    model.load_weights([(n, (1 + 0.1 * torch.randn(s, generator=g)) if "norm" in n
                         else 0.05 * torch.randn(s, generator=g)) for n, s in hf_weight_shapes(cfg)])
    model.quantize("q4")
    fd = model.fused_decode
    assert fd is not None, "no fused step"
    kern = fd.kernels
    slots_needed = max(keys) * (max(rows) if layout == "batch" else 1) + 2
    pool = KVPool(slots_needed, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, torch.float32,
                  torch.device("cpu"))
    for buf in pool.k + pool.v:
        buf.copy_(torch.randn(buf.shape, generator=g))
    fd._bind_pool(pool)
    out = {"tree": TREE, "kernels": ck.status(), "threads": torch.get_num_threads(), "layout": layout,
           "load1_start": os.getloadavg()[0], "results": {}}
    for n in keys:
        for r in rows:
            if layout == "batch":
                spans = [torch.arange(1 + i * n, 1 + (i + 1) * n) for i in range(r)]
                key_slots = torch.cat(spans)
                offs = [i * n for i in range(r)]
                cnts = [n] * r
                out_slots = torch.stack([s[-1] for s in spans])
            else:
                key_slots = torch.arange(1, 1 + n)
                offs = [0] * r
                cnts = list(range(n - r + 1, n + 1))
                out_slots = key_slots[n - r:]
            pos = torch.tensor([c - 1 for c in cnts], dtype=torch.int64)
            offs_t, cnts_t = torch.tensor(offs, dtype=torch.int64), torch.tensor(cnts, dtype=torch.int64)
            x0 = torch.randn(r, cfg.hidden_size, generator=g)

            def step():
                kern.decode_step(fd.desc, x0.clone(), pos, out_slots, key_slots, offs_t, cnts_t)

            rec = {"step": timed(step, reps)}
            if hasattr(kern, "attention"):
                q = torch.randn(r, cfg.num_heads, cfg.head_dim, generator=g)

                def attn():
                    for li in range(cfg.num_layers):
                        kern.attention(q, pool.k[li], pool.v[li], key_slots, offs_t, cnts_t, cfg.head_dim ** -0.5)

                rec["attention_30_layers"] = timed(attn, reps)
            rec["load1"] = os.getloadavg()[0]
            out["results"][f"rows{r}_keys{n}"] = rec
            print(f"rows={r} keys={n}: " + " ".join(f"{k}={v}" for k, v in rec.items()), flush=True)
    if os.environ.get("JSON"):
        Path(os.environ["JSON"]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
