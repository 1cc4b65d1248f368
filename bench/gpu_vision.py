"""Image questions on a LLaVA-shaped model: lmnb with and without the radix cache, and HF
transformers' LlavaForConditionalGeneration on the same weight tensors, side by side.

    python bench/gpu_vision.py                      # dummy:llava-7b, bf16, on CUDA
    python bench/gpu_vision.py --device cpu --model dummy:llava-tiny --small   # smoke run

Workload (the SGLang paper's image-QA shape): 64 programs, each one image (8 distinct
images, 336x336 for llava-7b: 576 image positions) and a ~40-token question, 32 greedy
output tokens (`ignore_eos`). Programs are `lm.function`s run with `run_batch`:

    "USER: " + lm.image(img) + "\n" + question + " ASSISTANT:" + lm.gen("a", max_tokens=32)

Cases: `vision_qa` (cache flushed before each timed run: each image is computed once per
run and its 7 other questions hit it), `vision_qa_warm` (images already cached from the
run before: no image is encoded), lmnb without the radix cache (every program computes
its image positions) and HF (one padded `generate` of all 64 with pixel values, which is
what a notebook user writes). One line per case; JSON in bench/results/gpu_vision.json.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, save
from gpu_helpers import timed, without_radix_cache

import lmnb as lm
from lmnb.runtime.models.llava import route

_VOCAB = ("what which colour shape object left right top bottom many how is are the a of in on "
          "this that picture image shows near far large small red blue green count describe")
WORDS = _VOCAB.split()


def questions(rng: random.Random, n: int, words: int = 30) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + "?" for _ in range(n)]


def images(rng: np.random.Generator, n: int, side: int):
    from PIL import Image

    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


@lm.function
def qa(s, img, question, new):
    s += "USER: " + lm.image(img) + "\n" + question + " ASSISTANT:"
    s += lm.gen("a", max_tokens=new, temperature=0, ignore_eos=True)


class Bench:
    def __init__(self, args) -> None:
        self.args, self.rows = args, []
        t = time.perf_counter()
        self.rt = lm.Runtime(args.model, device=args.device, kv_memory_gb=args.kv_gb)
        self.load_s = time.perf_counter() - t
        self.short = args.model.removeprefix("dummy:").removeprefix("hf:")
        side = self.rt.loaded.vision.vision.image_size
        n_img, n_q = (2, 8) if args.small else (args.images, args.questions)
        self.imgs = images(np.random.default_rng(0), n_img, side)
        qs = questions(random.Random(0), n_q)
        self.items = [{"img": self.imgs[i % n_img], "question": q, "new": args.new_tokens}
                      for i, q in enumerate(qs)]
        self._hf = None

    def emit(self, name: str, **fields) -> None:
        self.rows.append(emit(name, model=self.short, **fields))

    def run_lmnb(self) -> list:
        states = qa.run_batch(self.items, backend=self.rt, progress_bar=False)
        bad = [s.error for s in states if s.error is not None]
        if bad:
            raise bad[0]
        return states

    def counted(self, fn) -> tuple[float, dict]:
        """(seconds of fn, image counters and cache hit tokens it added)."""
        s0, c0 = self.rt.stats(), self.rt.cache_stats()
        t = timed(fn)
        s1, c1 = self.rt.stats(), self.rt.cache_stats()
        keys = ("images_encoded", "image_tokens_computed", "vision_batches", "prefill_tokens")
        d = {k: s1[k] - s0[k] for k in keys}
        d["hit_rate"] = (c1["hit_tokens"] - c0["hit_tokens"]) / max(1, c1["prompt_tokens"] - c0["prompt_tokens"])
        return t, d

    # -- cases ---------------------------------------------------------------------------
    def lmnb_cases(self) -> None:
        n = len(self.items)
        self.run_lmnb()    # warm-up: kernels, graphs, pixel cache
        cold = []
        for _ in range(self.args.repeats):
            self.rt.flush_cache()
            cold.append(self.counted(self.run_lmnb))
        t, d = statistics.median(c[0] for c in cold), cold[-1][1]
        self.emit("vision_qa", programs=n, images=len(self.imgs), lmnb_prog_s=n / t, seconds=t, **d)
        warm = [self.counted(self.run_lmnb) for _ in range(self.args.repeats)]
        tw, dw = statistics.median(c[0] for c in warm), warm[-1][1]
        self.emit("vision_qa_warm", programs=n, lmnb_prog_s=n / tw, seconds=tw, **dw)
        with without_radix_cache(self.rt):
            self.run_lmnb()
            tn, dn = self.counted(self.run_lmnb)
        self.emit("vision_qa_nocache", programs=n, nocache_prog_s=n / tn, seconds=tn,
                  speedup_cache_vs_nocache=tn / t, **dn)
        self.t_cold = t

    def hf_case(self) -> None:
        hf = self.hf
        ids, mask, pixels = self.hf_inputs(self.items)
        gen = lambda: hf_generate(hf, ids, mask, pixels, self.args.new_tokens)
        gen()
        t = statistics.median(timed(gen) for _ in range(max(1, self.args.repeats - 1)))
        n = len(self.items)
        same = self.hf_agreement(gen())
        self.emit("vision_qa_hf", programs=n, hf_prog_s=n / t, seconds=t,
                  lmnb_speedup_vs_hf=t / self.t_cold, same_greedy_tokens=same,
                  hf_note="one_padded_generate_of_all_programs")

    # -- the HF peer ---------------------------------------------------------------------
    @property
    def hf(self):
        if self._hf is None:
            self._hf = hf_llava_sharing(self.rt)
        return self._hf

    def hf_inputs(self, items):
        """Left-padded ids with the model's image token at image positions, and pixels."""
        rt, mm = self.rt, self.rt.images
        rows, pix = [], []
        for it in items:
            data = lm.image(it["img"]).data
            text = "USER: " + data.marker + "\n" + it["question"] + " ASSISTANT:"
            ids = rt.encode(text)
            rows.append([mm.image_token_id if mm.is_pad(t) else t for t in ids])
            pix.append(mm.image_processor(images=[data.image], return_tensors="pt")["pixel_values"][0])
        longest = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), longest), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, longest - len(r):] = torch.tensor(r)
            mask[i, longest - len(r):] = 1
        dev = rt.device
        return ids.to(dev), mask.to(dev), torch.stack(pix).to(dev, rt.dtype)

    def hf_agreement(self, hf_out: torch.Tensor) -> float:
        """Fraction of programs whose 32 greedy tokens equal HF's (bf16: near-ties may differ)."""
        states = self.run_lmnb()
        same = sum(self.rt.decode(row) == s["a"] for s, row in zip(states, hf_out.tolist()))
        return same / len(states)


@torch.no_grad()
def hf_generate(model, ids, mask, pixels, new: int) -> torch.Tensor:
    out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                         max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:]


def hf_llava_sharing(rt):
    """transformers' LlavaForConditionalGeneration whose parameters are views of the
    runtime's (no second copy of 7B weights); what lmnb does not build (the tower's last
    layer and post-norm, unused by the features) gets zeros."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cfg = LlavaConfig(**rt.loaded.hf_config)
    with torch.device("meta"):
        m = LlavaForConditionalGeneration(cfg).to(rt.dtype)
    own = dict(rt.model.named_parameters())
    text = rt.model.language_model
    for name, p in list(m.named_parameters()):
        part, rest = route(name)
        src = None
        if part == "text":
            target, offset = text._target(rest)
            if target is not None:
                full = own["language_model." + target]
                src = full if offset is None else full.narrow(0, offset, p.shape[0])
        elif part == "vision":
            src = own.get("vision_tower." + rest)
        elif part == "projector":
            src = own.get("multi_modal_projector." + rest)
        mod_name, leaf = name.rsplit(".", 1)
        mod = m.get_submodule(mod_name)
        if src is None:
            src = torch.zeros(p.shape, dtype=rt.dtype, device=rt.device)
        mod._parameters[leaf] = nn.Parameter(src, requires_grad=False)
    emb = m.model.vision_tower.embeddings
    emb.register_buffer("position_ids", torch.arange(emb.num_positions, device=rt.device)[None],
                        persistent=False)
    lm_model = m.model.language_model
    with torch.device(rt.device):
        lm_model.rotary_emb = type(lm_model.rotary_emb)(config=cfg.text_config)
    meta = [n for n, t in [*m.named_parameters(), *m.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"HF peer left on meta: {meta[:3]}")
    m.generation_config.eos_token_id = None
    return m.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:llava-7b")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself")
    ap.add_argument("--small", action="store_true", help="2 images, 8 questions")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--kv-gb", type=float, default=24.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    b = Bench(args)
    print(f"# {args.model} loaded in {b.load_s:.1f}s on {b.rt.device}, {len(b.items)} programs", flush=True)
    b.lmnb_cases()
    if not args.no_hf:
        b.hf_case()
    out = save(args.out or f"gpu_vision_{b.short}.json", b.rows, model=args.model)
    print(f"# wrote {out}")
    b.rt.shutdown()


if __name__ == "__main__":
    main()
