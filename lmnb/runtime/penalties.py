"""Frequency, presence and repetition penalties, applied on the device.

Each penalized request keeps, on the logits' device, the count of every token it has
generated (frequency / presence, as in the OpenAI API: output tokens only) and a mask of
every token it has seen (repetition, as in HF / vLLM: prompt and output). The sampled
token is added on the device right after sampling, so an overlapped step that runs
ahead reads counts that already include the token still in flight. When the host
rewrites a request's output (jump-forward re-tokenization) the state is rebuilt from it.

    logits[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)
    logits[t]  = logits[t] / p if logits[t] > 0 else logits[t] * p   for seen t (p: repetition)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmnb.runtime.request import Req
from lmnb.runtime.run_ahead import PLACEHOLDER


@dataclass
class PenaltyState:
    counts: torch.Tensor        # [V] float32: generated-token counts
    seen: torch.Tensor          # [V] bool: prompt or generated
    outputs: int                # len(output_ids) the counts describe (placeholders included)
    version: int                # the request's output version they were built from


def apply_penalties(logits: torch.Tensor, reqs: list[Req]) -> None:
    """Penalize the rows (in place) of requests that ask for it."""
    rows = [i for i, r in enumerate(reqs) if r.params.penalized]
    if not rows:
        return
    states = [_state(reqs[i], logits.shape[1], logits.device) for i in rows]
    counts = torch.stack([s.counts for s in states])
    seen = torch.stack([s.seen for s in states])
    ps = [reqs[i].params for i in rows]
    dev = logits.device
    idx = torch.tensor(rows).to(dev, non_blocking=True)
    sub = logits[idx]
    freq = torch.tensor([p.frequency_penalty for p in ps]).to(dev, non_blocking=True)[:, None]
    pres = torch.tensor([p.presence_penalty for p in ps]).to(dev, non_blocking=True)[:, None]
    rep = torch.tensor([p.repetition_penalty for p in ps]).to(dev, non_blocking=True)[:, None]
    sub = reference(sub, counts, seen, freq, pres, rep)
    logits[idx] = sub


def reference(logits: torch.Tensor, counts: torch.Tensor, seen: torch.Tensor, freq: torch.Tensor,
              pres: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
    """The penalty formula on [B, V] rows (also the tests' reference semantics)."""
    rep_applied = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, rep_applied, logits)
    return logits - freq * counts - pres * (counts > 0).to(logits.dtype)


def record(tokens: torch.Tensor, reqs: list[Req]) -> None:
    """Add each penalized request's sampled token (on the device, no sync)."""
    for j, r in enumerate(reqs):
        st = r.penalty
        if st is None or not r.params.penalized:
            continue
        t = tokens[j : j + 1]
        st.counts.index_add_(0, t, torch.ones(1, dtype=st.counts.dtype, device=st.counts.device))
        st.seen.index_fill_(0, t, True)
        st.outputs += 1


def _state(r: Req, vocab: int, device: torch.device) -> PenaltyState:
    st = r.penalty
    known = len(r.output_ids)          # includes a placeholder: its token is counted on device
    if st is not None and st.version == r.output_version and st.outputs == known:
        return st
    counts = torch.zeros(vocab, dtype=torch.float32)
    seen = torch.zeros(vocab, dtype=torch.bool)
    out = [t for t in r.output_ids if t != PLACEHOLDER and 0 <= t < vocab]
    if out:
        counts.index_add_(0, torch.tensor(out), torch.ones(len(out)))
    ids = [t for t in r.input_ids if 0 <= t < vocab] + out
    if ids:
        seen[torch.tensor(ids)] = True
    # (a request whose output the host rewrites never runs ahead, so `out` is complete)
    r.penalty = st = PenaltyState(counts.to(device, non_blocking=True), seen.to(device, non_blocking=True),
                                  known, r.output_version)
    return st
