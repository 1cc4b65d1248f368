"""The device half of a step's post-processing: logits -> tokens, queued on the device.

For the rows that sample: min-token masks (EOS and stop ids banned until
`min_new_tokens`), penalties, grammar masks, then greedy / random sampling; output and
prompt logprobs are gathered in the same pass. Everything is queued on the logits'
device and copied to the host without waiting; `SampledStep.host_values()` waits once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmnb.runtime.model_runner import StepOutput
from lmnb.runtime.penalties import apply_penalties, record
from lmnb.runtime.request import Req
from lmnb.runtime.sampler import (
    DeviceMasks,
    _filtered_probs,
    apply_masks,
    greedy_tokens,
    sample_tensor,
    to_device,
    token_logprobs,
    top_logprobs,
)
from lmnb.runtime.scheduler import ScheduledBatch
from lmnb.runtime.speculative import VerifyPlan


@dataclass
class SampledStep:
    """A launched step's sampling, queued on the device: the host settles it later (the
    engine may launch the next step in between)."""

    batch: ScheduledBatch
    reqs: list[Req]                      # the requests that sampled, in row order
    tokens: torch.Tensor | None          # [len(reqs)] on the device
    done: list[tuple[Req, dict]]         # finished before sampling (max_new_tokens reached)
    host: list = field(default_factory=list)   # (tokens, logprobs, top ids, top values, prompt lps)
    ready: object = None                 # CUDA event: the host copies have landed
    logprob_rows: list[int] = field(default_factory=list)
    prompt: list | None = None           # [(req, first pos, prompt ids)] whose logprobs were gathered
    launched: float = 0.0
    verify: VerifyPlan | None = None     # speculative: the requests whose drafts are verified
    vhost: list = field(default_factory=list)  # (accept, choice, lp of draft, lp of choice, top ids, top vals)

    def host_values(self) -> list[list]:
        """Wait for the copies and return them as lists (the only sync of a step)."""
        if self.ready is not None:
            self.ready.synchronize()
        return [t.tolist() for t in self.host]

    def verify_values(self) -> list[list]:
        """The verification rows' values (after `host_values`, which waited)."""
        return [t.tolist() for t in self.vhost]


class DeviceSampler:
    """Per runtime: owns the device copies of grammar masks (released with it)."""

    def __init__(self, eos_ids: tuple[int, ...]) -> None:
        self.eos_ids = tuple(eos_ids)
        self.masks = DeviceMasks()

    def sample(self, batch: ScheduledBatch, out: StepOutput, skip: set[int] = frozenset()) -> SampledStep:
        """`skip`: rows not to sample (their request finished or changed after launch)."""
        done: list[tuple[Req, dict]] = []
        idx = []
        for i in out.sample_rows:
            r = batch.reqs[i]
            if i in skip:
                continue
            if len(r.output_ids) >= r.params.max_new_tokens:
                done.append((r, {"type": "length"}))
            else:
                idx.append(i)
        step = SampledStep(batch, [batch.reqs[i] for i in idx], None, done)
        on_device: list[torch.Tensor] = []
        prompt_lps = self._prompt_logprobs(step, out)
        if idx:
            on_device = self._sample_rows(step, out, [out.sample_rows[i] for i in idx])
        if prompt_lps is not None:
            on_device.append(prompt_lps)
        step.host = [t.to("cpu", non_blocking=True) for t in on_device]
        if out.draft_rows:
            plan = VerifyPlan()
            for i, row in out.draft_rows.items():
                plan.reqs.append(batch.reqs[i])
                plan.drafts.append(batch.drafts[i])
                plan.first_rows.append(row)
            step.verify = plan
            vdev = self._verify_rows(plan, out.logits)
            step.vhost = [t.to("cpu", non_blocking=True) for t in vdev]
            on_device += vdev
        if any(t.is_cuda for t in on_device):
            step.ready = torch.cuda.Event()
            step.ready.record()
        return step

    def _sample_rows(self, step: SampledStep, out: StepOutput, rows: list[int]) -> list[torch.Tensor]:
        reqs, logits = step.reqs, out.logits
        # a copy when rows are picked or anything writes into it (the model's logits are an
        # inference tensor, or a CUDA graph's output buffer)
        writes = any(r.guide is not None or r.params.penalized or r.params.min_new_tokens for r in reqs)
        if rows != list(range(logits.shape[0])) or writes:
            logits = logits[to_device(rows, logits.device)]
        step.logprob_rows = [j for j, r in enumerate(reqs) if r.params.return_logprob]
        raw = logits.clone() if step.logprob_rows else logits
        self._ban_early_stops(logits, reqs)
        apply_penalties(logits, reqs)
        apply_masks(logits, reqs, self.masks)
        step.tokens = sample_tensor(logits, reqs)
        record(step.tokens, reqs)
        on_device = [step.tokens]
        if step.logprob_rows:
            lp_rows = to_device(step.logprob_rows, raw.device)
            lp_raw = raw[lp_rows]
            on_device.append(token_logprobs(lp_raw, step.tokens[lp_rows]))
            k = max(r.params.top_logprobs_num for r in reqs)
            if k:
                vals, ids = top_logprobs(lp_raw, k)
                on_device += [ids, vals]
        return on_device

    def _verify_rows(self, plan: VerifyPlan, all_logits: torch.Tensor) -> list[torch.Tensor]:
        """Every verified position of every drafted request, one row each: row j of a
        request with draft d_1..d_m is the position before d_{j+1} (j = m: the bonus).
        Per row: `accept` (the draft token d_{j+1} stands) and `choice` (the token to
        take when the request's accepted prefix ends at this row).
          greedy    choice = argmax, accept = (argmax == d_{j+1}): exactly the tokens
                    of plain decoding
          sampling  the draft is a point mass q, so rejection sampling accepts d with
                    probability p(d) and otherwise samples from p with d removed,
                    renormalised; the last row samples from p. The token that comes out
                    has distribution p at every position.
        Masks (min-token bans, grammar) apply per row, with the row's own output length
        and grammar state. Logprobs come from the raw logits, as for plain steps."""
        dev = all_logits.device
        rows, row_reqs, drafts, early, masks, masked_rows = [], [], [], [], [], []
        for r, d, first in zip(plan.reqs, plan.drafts, plan.first_rows):
            m = len(d.tokens)
            for j in range(m + 1):
                rows.append(first + j)
                row_reqs.append(r)
                drafts.append(d.tokens[j] if j < m else 0)
                p = r.params
                early.append(bool(p.min_new_tokens) and r.guide is None
                             and len(r.output_ids) + j < p.min_new_tokens)
                if d.masks is not None and d.masks[j] is not None:
                    masks.append(d.masks[j])
                    masked_rows.append(len(rows) - 1)
        want_lp = any(r.params.return_logprob for r in plan.reqs)
        # the step's own rows in order, nothing to write into them (a batch-1 verify step
        # without bans or masks): read them in place instead of copying the logits
        in_place = (rows == list(range(all_logits.shape[0])) and not any(early)
                    and not masked_rows)
        logits = all_logits if in_place else all_logits[to_device(rows, dev)]
        raw = (logits if in_place else logits.clone()) if want_lp else None
        for j, ban in enumerate(early):
            if ban:
                self._ban_early_stops(logits[j : j + 1], [row_reqs[j]])
        if masked_rows:
            width = logits.shape[1]
            banned = torch.stack([self.masks.get(mk, width, dev) for mk in masks])
            idx = to_device(masked_rows, dev)
            logits[idx] = logits[idx].masked_fill(banned, float("-inf"))
        draft_t = to_device(drafts, dev)
        choice = greedy_tokens(logits)
        accept = choice == draft_t
        sampled = [j for j, r in enumerate(row_reqs) if not r.params.greedy]
        if sampled:
            idx = to_device(sampled, dev)
            probs = _filtered_probs(logits[idx], [row_reqs[j] for j in sampled])
            last = {first + len(d.tokens) for d, first in zip(plan.drafts, plan.first_rows)}
            for jj, j in enumerate(sampled):
                gen, pr = row_reqs[j].generator, probs[jj]
                if rows[j] in last:   # the bonus row: a plain sample
                    choice[j] = torch.multinomial(pr, 1, generator=gen)[0]
                    continue
                d = draft_t[j]
                u = torch.rand((), generator=gen, device=dev)
                accept[j] = u < pr[d]
                residual = pr.clone()
                residual[d] = 0.0
                total = residual.sum()
                # p(d) == 1 leaves nothing: then d is always accepted and choice unused
                residual = torch.where(total > 0, residual / total.clamp_min(1e-30), pr)
                choice[j] = torch.multinomial(residual, 1, generator=gen)[0]
        out = [accept, choice]
        if want_lp:
            lp = torch.log_softmax(raw, dim=-1)
            out += [lp.gather(1, draft_t[:, None])[:, 0], lp.gather(1, choice[:, None])[:, 0]]
            k = max(r.params.top_logprobs_num for r in plan.reqs)
            if k:
                vals, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)
                out += [ids, vals]
        return out

    def _ban_early_stops(self, logits: torch.Tensor, reqs: list[Req]) -> None:
        """EOS and stop ids cannot be sampled before `min_new_tokens` (a grammar, which may
        need EOS to end, decides alone)."""
        vocab = logits.shape[1]
        for j, r in enumerate(reqs):
            p = r.params
            if p.min_new_tokens and len(r.output_ids) < p.min_new_tokens and r.guide is None:
                ids = [t for t in (() if p.ignore_eos else self.eos_ids) + p.stop_token_ids if t < vocab]
                if ids:
                    logits[j, to_device(ids, logits.device)] = float("-inf")

    @staticmethod
    def _prompt_logprobs(step: SampledStep, out: StepOutput) -> torch.Tensor | None:
        """Logprobs of prompt tokens for every request that asked, in one gather on the
        device (read back with the step's tokens)."""
        if not out.logprob_rows:
            return None
        plan, rows, targets = [], [], []
        for i, (row, pos, count) in out.logprob_rows.items():
            r = step.batch.reqs[i]
            ids = r.input_ids[pos + 1 : pos + 1 + count]
            plan.append((r, pos, ids))
            rows += range(row, row + count)
            targets += ids
        dev = out.logits.device
        step.prompt = plan
        return token_logprobs(out.logits[to_device(rows, dev)], to_device(targets, dev))
