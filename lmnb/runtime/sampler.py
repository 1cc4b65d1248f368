"""Turn a batch of logits into next tokens: constraint masks, greedy / temperature /
top-k / top-p / min-p, per-request seeded generators, and logprobs."""
from __future__ import annotations

import torch

from lmnb.runtime.request import Req


def apply_masks(logits: torch.Tensor, reqs: list[Req]) -> None:
    """Set disallowed tokens to -inf for requests with a grammar (in place)."""
    for i, r in enumerate(reqs):
        if r.guide is not None:
            mask = r.guide.allowed_mask()
            v = min(mask.numel(), logits.shape[1])
            row = logits[i]
            allowed = mask[:v].to(row.device, non_blocking=True)
            row[:v].masked_fill_(~allowed, float("-inf"))
            row[v:] = float("-inf")


def sample(logits: torch.Tensor, reqs: list[Req]) -> list[int]:
    """logits [B, V] fp32 (already masked) -> one token id per request."""
    out = logits.argmax(dim=-1)
    rows = [i for i, r in enumerate(reqs) if not r.params.greedy]
    if rows:
        idx = torch.tensor(rows, device=logits.device)
        probs = _filtered_probs(logits[idx], [reqs[i] for i in rows])
        for j, i in enumerate(rows):
            out[i] = torch.multinomial(probs[j], 1, generator=reqs[i].generator)[0]
    return out.tolist()


def _filtered_probs(logits: torch.Tensor, reqs: list[Req]) -> torch.Tensor:
    dev = logits.device
    temp = torch.tensor([r.params.temperature for r in reqs], device=dev)[:, None]
    probs = torch.softmax(logits / temp, dim=-1)
    top_k = [r.params.top_k for r in reqs]
    top_p = [r.params.top_p for r in reqs]
    min_p = [r.params.min_p for r in reqs]
    if any(k > 0 for k in top_k) or any(p < 1 for p in top_p):
        probs = _top_k_top_p(probs, top_k, top_p)
    if any(m > 0 for m in min_p):
        mp = torch.tensor(min_p, device=dev)[:, None]
        probs = probs.masked_fill(probs < probs.max(dim=-1, keepdim=True).values * mp, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def _top_k_top_p(probs: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    dev, vocab = probs.device, probs.shape[1]
    sorted_p, order = probs.sort(dim=-1, descending=True)
    k = torch.tensor([kk if kk > 0 else vocab for kk in top_k], device=dev)[:, None]
    ranks = torch.arange(vocab, device=dev)[None, :]
    cum = sorted_p.cumsum(dim=-1)
    p = torch.tensor(top_p, device=dev)[:, None]
    drop = (ranks >= k) | ((cum - sorted_p) > p)   # keep the smallest set whose mass reaches p
    drop[:, 0] = False
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(1, order, sorted_p)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_ids[i] | row i) under the model's raw distribution."""
    return torch.log_softmax(logits, dim=-1).gather(1, token_ids[:, None])[:, 0]


def top_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens per row (all of them when k exceeds the vocabulary)."""
    lp = torch.log_softmax(logits, dim=-1)
    vals, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return vals, ids
