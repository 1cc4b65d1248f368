"""After a model step: logprobs, sampling, stop conditions, constraint cursors,
jump-forward with re-tokenization, streaming deltas, and the final result dict."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lmnb.runtime.model_runner import StepOutput
from lmnb.runtime.request import PLACEHOLDER, Req, Status
from lmnb.runtime.sampler import DeviceMasks, apply_masks, sample_tensor, to_device, token_logprobs, top_logprobs
from lmnb.runtime.scheduler import ScheduledBatch, Scheduler
from lmnb.runtime.tokenizer import IncrementalDetokenizer


@dataclass
class SampledStep:
    """A launched step's sampling, queued on the device: `OutputProcessor.settle` waits for
    it and applies the tokens. Between the two the engine may launch the next step."""

    batch: ScheduledBatch
    reqs: list[Req]                      # the requests that sampled, in row order
    tokens: torch.Tensor | None          # [len(reqs)] on the device
    done: list[tuple[Req, dict]]         # finished before sampling (max_new_tokens reached)
    host: object = None                  # (tokens, logprobs, top ids, top values) on the host
    ready: object = None                 # CUDA event: the host copies have landed
    logprob_rows: list[int] = field(default_factory=list)
    prompt: tuple | None = None          # ([(req, pos, prompt ids)], their logprobs on device)
    launched: float = 0.0


class OutputProcessor:
    def __init__(self, tokenizer, scheduler: Scheduler, eos_ids: tuple[int, ...],
                 context_len: int, jump_forward: bool = True) -> None:
        self.tok, self.sched, self.eos_ids = tokenizer, scheduler, set(eos_ids)
        self.context_len, self.jump_forward = context_len, jump_forward
        self.masks = DeviceMasks()   # per runtime: released with it

    def sample_step(self, batch: ScheduledBatch, out: StepOutput) -> SampledStep:
        """Prompt logprobs, constraint masks and sampling, queued on the device; the
        tokens (and output logprobs) start copying to the host without waiting."""
        done: list[tuple[Req, dict]] = []
        idx = [i for i in out.sample_rows if not self._done_before_sampling(batch.reqs[i], done)]
        step = SampledStep(batch, [batch.reqs[i] for i in idx], None, done)
        if out.logprob_rows:
            self._prompt_logprobs(step, out)
        if not idx:
            self._to_host(step, [])
            return step
        rows = [out.sample_rows[i] for i in idx]
        reqs = step.reqs
        logits = out.logits
        # a copy when rows are picked, or when masks write into it (the model's logits are
        # an inference tensor, or a CUDA graph's output buffer)
        if rows != list(range(logits.shape[0])) or any(r.guide is not None for r in reqs):
            logits = logits[to_device(rows, logits.device)]
        step.logprob_rows = [j for j, r in enumerate(reqs) if r.params.return_logprob]
        raw = logits.clone() if step.logprob_rows else logits
        apply_masks(logits, reqs, self.masks)
        step.tokens = sample_tensor(logits, reqs)
        on_device = [step.tokens]
        if step.logprob_rows:
            lp_rows = to_device(step.logprob_rows, raw.device)
            lp_raw = raw[lp_rows]
            on_device.append(token_logprobs(lp_raw, step.tokens[lp_rows]))
            k = max(r.params.top_logprobs_num for r in reqs)
            if k:
                vals, ids = top_logprobs(lp_raw, k)
                on_device += [ids, vals]
        self._to_host(step, on_device)
        return step

    @staticmethod
    def _to_host(step: SampledStep, on_device: list[torch.Tensor]) -> None:
        """Start the copies of what settle needs; an event marks when they have landed."""
        if step.prompt is not None:
            on_device = on_device + [step.prompt[1]]
        step.host = [t.to("cpu", non_blocking=True) for t in on_device]
        if any(t.is_cuda for t in on_device):
            step.ready = torch.cuda.Event()
            step.ready.record()

    def settle(self, step: SampledStep) -> list[tuple[Req, dict]]:
        """Wait for the step's tokens and apply them: stops, text, streaming, jump-forward.
        A request that holds a placeholder for this token (run ahead) gets the real one."""
        finished = list(step.done)
        if step.ready is not None:
            step.ready.synchronize()
        host = [t.tolist() for t in step.host]
        if step.prompt is not None:
            self._apply_prompt_logprobs(step.prompt[0], host.pop())
        if step.tokens is None:
            return finished
        lps = dict(zip(step.logprob_rows, host[1])) if len(host) > 1 else {}
        tops = dict(zip(step.logprob_rows, zip(host[2], host[3]))) if len(host) > 3 else {}
        for j, (r, t) in enumerate(zip(step.reqs, host[0])):
            if r.ahead:
                r.output_ids.pop()
                r.ahead = False
            if r.finished():
                continue  # aborted while the step ran
            if j in lps:
                r.output_logprobs.append((t, lps[j]))
                if r.params.top_logprobs_num:
                    ids, vals = tops[j]
                    k = r.params.top_logprobs_num
                    r.output_top_logprobs.append(list(zip(ids[:k], vals[:k])))
            reason = self._append(r, t)
            if reason is not None:
                finished.append((r, reason))
        return finished

    def run_ahead(self, step: SampledStep) -> None:
        """Give each request of a launched step that will surely go on a placeholder for
        the token being sampled, so the scheduler can put it in the next step before the
        token is known (the model reads the token from the device). Requests whose next
        token depends on host state (grammars) or may be their last do not run ahead."""
        for j, r in enumerate(step.reqs):
            if (r.guide is None and r.status is Status.RUNNING
                    and len(r.output_ids) + 1 < r.params.max_new_tokens
                    and r.fill_len + 1 < self.context_len):
                r.output_ids.append(PLACEHOLDER)
                r.ahead, r.ahead_row = True, j

    def _done_before_sampling(self, r: Req, finished: list) -> bool:
        if len(r.output_ids) >= r.params.max_new_tokens:
            finished.append((r, {"type": "length"}))
            return True
        return False

    # -- logprobs -------------------------------------------------------------
    def _prompt_logprobs(self, step: SampledStep, out: StepOutput) -> None:
        """Logprobs of prompt tokens for every request that asked, in one gather on the
        device (read back with the step's tokens)."""
        plan, rows, targets = [], [], []
        for i, (row, pos, count) in out.logprob_rows.items():
            r = step.batch.reqs[i]
            ids = r.input_ids[pos + 1 : pos + 1 + count]
            plan.append((r, pos, ids))
            rows += range(row, row + count)
            targets += ids
        dev = out.logits.device
        lps = token_logprobs(out.logits[to_device(rows, dev)], to_device(targets, dev))
        step.prompt = (plan, lps)

    @staticmethod
    def _apply_prompt_logprobs(plan: list, values: list[float]) -> None:
        at = 0
        for r, pos, ids in plan:
            r.pending_prompt_lps += list(zip(ids, values[at : at + len(ids)]))
            at += len(ids)
            if pos + len(ids) >= len(r.input_ids) - 1:   # the prompt's last chunk
                r.input_logprobs, r.pending_prompt_lps = r.pending_prompt_lps, []

    # -- one new token ----------------------------------------------------------
    def _append(self, r: Req, t: int) -> dict | None:
        if r.first_token_time is None:
            r.first_token_time = time.perf_counter()
        r.output_ids.append(t)
        p = r.params
        if not p.ignore_eos and t in self.eos_ids:
            return {"type": "stop", "matched": t}
        if t in p.stop_token_ids:
            return {"type": "stop", "matched": t}
        if r.guide is not None:
            r.guide.accept_token(t)
        reason = self._add_text(r, [t])
        if reason is None and r.guide is not None:
            if r.guide.is_terminated():
                return {"type": "stop", "matched": None}
            if self.jump_forward:
                reason = self._jump(r)
        if reason is None and len(r.output_ids) >= p.max_new_tokens:
            reason = {"type": "length"}
        if reason is None and r.fill_len >= self.context_len:
            reason = {"type": "length"}
        return reason

    def _add_text(self, r: Req, ids: list[int]) -> dict | None:
        if r.detok is None:
            r.detok = IncrementalDetokenizer(self.tok, r.params.skip_special_tokens)
        before = len(r.text)
        delta = r.detok.add(ids)
        r.text += delta
        reason = self._check_stop_strings(r, before)
        if r.stream:
            self._emit(r, final=reason is not None)
        return reason

    def _emit(self, r: Req, final: bool) -> None:
        """Stream new text, holding back a tail that could still become a stop string."""
        end = len(r.text)
        if not final and r.params.stop:
            end -= max(len(s) for s in r.params.stop) - 1
        if end > r.streamed_len:
            r.events.put(("delta", r.text[r.streamed_len : end]))
            r.streamed_len = end

    def _check_stop_strings(self, r: Req, before: int) -> dict | None:
        for s in r.params.stop:
            k = r.text.find(s, max(0, before - len(s) + 1))
            if k >= 0:
                r.text = r.text[:k]
                return {"type": "stop", "matched": s}
        return None

    # -- jump-forward ------------------------------------------------------------
    def _jump(self, r: Req) -> dict | None:
        forced = r.guide.jump_forward()
        if not forced or r.text.endswith("\ufffd"):
            return None
        old = r.output_ids
        text = self.tok.decode(old, skip_special_tokens=r.params.skip_special_tokens)
        new = self.tok.encode(text + forced, add_special_tokens=False)
        common = 0
        while common < min(len(old), len(new)) and old[common] == new[common]:
            common += 1
        r.output_ids = new
        self.sched.rollback(r, len(r.input_ids) + common)
        r.guide.accept_text(forced)
        start = len(r.text)
        r.detok.reset(new)
        r.text = r.detok.text
        r.forced_spans.append((start, len(r.text)))
        r.jump_tokens += len(new) - common
        reason = self._check_stop_strings(r, start)
        if reason is None and r.guide.is_terminated():
            reason = {"type": "stop", "matched": None}
        if r.stream:
            self._emit(r, final=reason is not None)
        return reason

    # -- result ------------------------------------------------------------------
    def result(self, r: Req) -> dict:
        reason = r.finish_reason or {"type": "abort"}
        if reason["type"] == "abort" or r.params.stop or r.guide is not None:
            text = r.text
        else:
            text = self.tok.decode(self._visible_ids(r), skip_special_tokens=r.params.skip_special_tokens)
        meta = {
            "id": r.rid,
            "prompt_tokens": len(r.input_ids),
            "cached_tokens": max(r.cached_tokens, 0),
            "completion_tokens": len(r.output_ids),
            "finish_reason": reason["type"],
            "matched_stop": reason.get("matched"),
            "computed_tokens": r.computed_tokens,
            "decode_steps": r.decode_steps,
            "jump_forward_tokens": r.jump_tokens,
            "forced_spans": list(r.forced_spans),
            "retractions": r.retractions,
            "e2e_latency": time.perf_counter() - r.created,
            "ttft": (r.first_token_time - r.created) if r.first_token_time else None,
        }
        if r.params.return_logprob or r.params.logprob_start_len >= 0:
            meta["input_token_logprobs"] = list(r.input_logprobs)
            meta["output_token_logprobs"] = list(r.output_logprobs)
            if r.params.top_logprobs_num:
                meta["output_top_logprobs"] = list(r.output_top_logprobs)
        return {"text": text, "output_ids": list(r.output_ids), "meta": meta}

    def _visible_ids(self, r: Req) -> list[int]:
        ids = r.output_ids
        if ids and r.finish_reason and r.finish_reason.get("matched") == ids[-1]:
            ids = ids[:-1]
        return ids
