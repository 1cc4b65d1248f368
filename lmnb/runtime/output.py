"""After a model step: logprobs, sampling, stop conditions, constraint cursors,
jump-forward with re-tokenization, streaming deltas, and the final result dict."""
from __future__ import annotations

import time

import torch

from lmnb.runtime.model_runner import StepOutput
from lmnb.runtime.request import Req
from lmnb.runtime.sampler import apply_masks, sample, token_logprobs, top_logprobs
from lmnb.runtime.scheduler import ScheduledBatch, Scheduler
from lmnb.runtime.tokenizer import IncrementalDetokenizer


class OutputProcessor:
    def __init__(self, tokenizer, scheduler: Scheduler, eos_ids: tuple[int, ...],
                 context_len: int, jump_forward: bool = True) -> None:
        self.tok, self.sched, self.eos_ids = tokenizer, scheduler, set(eos_ids)
        self.context_len, self.jump_forward = context_len, jump_forward

    def process(self, batch: ScheduledBatch, out: StepOutput) -> list[tuple[Req, dict]]:
        for i, (row, pos, count) in out.logprob_rows.items():
            self._prompt_logprobs(batch.reqs[i], out.logits[row : row + count], pos)
        finished: list[tuple[Req, dict]] = []
        idx = [i for i in out.sample_rows if not self._done_before_sampling(batch.reqs[i], finished)]
        if not idx:
            return finished
        reqs = [batch.reqs[i] for i in idx]
        logits = out.logits[[out.sample_rows[i] for i in idx]]
        raw = logits.clone() if any(r.params.return_logprob for r in reqs) else logits
        apply_masks(logits, reqs)
        tokens = sample(logits, reqs)
        for j, (r, t) in enumerate(zip(reqs, tokens)):
            if r.params.return_logprob:
                self._output_logprob(r, raw[j : j + 1], t)
            reason = self._append(r, t)
            if reason is not None:
                finished.append((r, reason))
        return finished

    def _done_before_sampling(self, r: Req, finished: list) -> bool:
        if len(r.output_ids) >= r.params.max_new_tokens:
            finished.append((r, {"type": "length"}))
            return True
        return False

    # -- logprobs -------------------------------------------------------------
    def _prompt_logprobs(self, r: Req, logits: torch.Tensor, pos: int) -> None:
        targets = torch.tensor(r.input_ids[pos + 1 : pos + 1 + logits.shape[0]], device=logits.device)
        lps = token_logprobs(logits, targets).tolist()
        r.pending_prompt_lps += list(zip(targets.tolist(), lps))
        if pos + logits.shape[0] >= len(r.input_ids) - 1:
            r.input_logprobs, r.pending_prompt_lps = r.pending_prompt_lps, []

    def _output_logprob(self, r: Req, logits: torch.Tensor, t: int) -> None:
        lp = token_logprobs(logits, torch.tensor([t], device=logits.device))[0].item()
        r.output_logprobs.append((t, lp))
        k = r.params.top_logprobs_num
        if k:
            vals, ids = top_logprobs(logits, k)
            r.output_top_logprobs.append(list(zip(ids[0].tolist(), vals[0].tolist())))

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
