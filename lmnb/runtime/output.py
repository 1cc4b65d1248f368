"""The host half of a step's post-processing: a settled step's tokens -> stops, text,
streaming deltas, constraint cursors, jump-forward with re-tokenization, and results.

`OutputProcessor.settle` never touches the KV bookkeeping: it returns a `Settled` with
the requests that finished and the rollbacks jump-forward needs, and the engine applies
them (rollbacks first), so only the engine talks to the scheduler.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from lmnb.runtime import run_ahead
from lmnb.runtime.device_sampling import SampledStep
from lmnb.runtime.request import Req
from lmnb.runtime.results import GenMeta, GenResult, StreamEvent
from lmnb.runtime.token_ids import common_prefix_len
from lmnb.runtime.tokenizer import IncrementalDetokenizer


@dataclass
class Settled:
    """What the engine must do after a step: roll back KV (keep the first `keep` tokens of
    each request, jump-forward re-tokenized them), then finish requests."""

    finished: list[tuple[Req, dict]] = field(default_factory=list)
    rollbacks: list[tuple[Req, int]] = field(default_factory=list)
    failed: list[tuple[Req, BaseException]] = field(default_factory=list)   # this request only


class OutputProcessor:
    def __init__(self, tokenizer, eos_ids: tuple[int, ...], context_len: int,
                 jump_forward: bool = True) -> None:
        self.tok, self.eos_ids = tokenizer, set(eos_ids)
        self.context_len, self.jump_forward = context_len, jump_forward
        self._stop_res: dict[str, re.Pattern] = {}
        self.on_verified = None   # speculative: fn(req, drafted, accepted, source, evidence)

    def settle(self, step: SampledStep) -> Settled:
        """Apply a step's tokens (waiting for them once). A request that holds a
        placeholder for its token (run ahead) gets the real one."""
        out = Settled(list(step.done))
        host = step.host_values()
        if step.prompt is not None:
            self._apply_prompt_logprobs(step.prompt, host.pop())
        if step.verify is not None:
            self._settle_verify(step, out)
        if step.tokens is None:
            return out
        lps = dict(zip(step.logprob_rows, host[1])) if len(host) > 1 else {}
        tops = dict(zip(step.logprob_rows, zip(host[2], host[3]))) if len(host) > 3 else {}
        for j, (r, t) in enumerate(zip(step.reqs, host[0])):
            run_ahead.release(r)
            if r.finished():
                continue  # aborted while the step ran
            if j in lps:
                r.output_logprobs.append((t, lps[j]))
                if r.params.top_logprobs_num:
                    ids, vals = tops[j]
                    k = r.params.top_logprobs_num
                    r.output_top_logprobs.append(list(zip(ids[:k], vals[:k])))
            try:
                reason = self._append(r, t, out)
            except Exception as e:  # noqa: BLE001 - e.g. its grammar failed: it alone stops
                out.failed.append((r, e))
                continue
            if reason is not None:
                out.finished.append((r, reason))
        return out

    # -- speculative: accepted draft tokens ---------------------------------------------
    def _settle_verify(self, step: SampledStep, out: Settled) -> None:
        """Each drafted request takes its accepted draft prefix and the token after it,
        one by one as if decoded (stops, EOS, grammar, jump-forward, streaming cut the
        rest off), and rolls back the KV of the positions it did not keep."""
        vals = step.verify_values()
        accept, choice = vals[0], vals[1]
        lp_draft, lp_choice = (vals[2], vals[3]) if len(vals) > 3 else (None, None)
        tops = (vals[4], vals[5]) if len(vals) > 5 else None
        row = 0
        for r, d, in zip(step.verify.reqs, step.verify.drafts):
            base, m = row, len(d.tokens)
            row += m + 1
            if r.finished():
                continue  # aborted while the step ran (its release dropped the draft KV)
            a = 0
            while a < m and accept[base + a]:
                a += 1
            take = d.tokens[:a] + [choice[base + a]]
            start, version, appended, reason = r.fill_len, r.output_version, 0, None
            for j, t in enumerate(take):
                at = base + j
                if r.params.return_logprob:
                    r.output_logprobs.append((t, lp_draft[at] if j < a else lp_choice[at]))
                    if r.params.top_logprobs_num:
                        k = r.params.top_logprobs_num
                        r.output_top_logprobs.append(list(zip(tops[0][at][:k], tops[1][at][:k])))
                appended += 1
                reason = self._append(r, t, out)
                if reason is not None or r.output_version != version:
                    break   # stopped, or jump-forward rewrote the output: the rest is moot
            # KV stays for the positions whose input is now a kept token: the last token
            # before the step and the kept draft tokens (not the newest: it has no KV yet)
            out.rollbacks.append((r, start - 1 + appended))
            if self.on_verified is not None:   # accepted: tokens beyond a plain step's one
                self.on_verified(r, m, appended - 1, d.source, d.evidence)
            if reason is not None:
                out.finished.append((r, reason))

    @staticmethod
    def _apply_prompt_logprobs(plan: list, values: list[float]) -> None:
        at = 0
        for r, pos, ids in plan:
            r.pending_prompt_lps += list(zip(ids, values[at : at + len(ids)]))
            at += len(ids)
            if pos + len(ids) >= len(r.input_ids) - 1:   # the prompt's last chunk
                r.input_logprobs, r.pending_prompt_lps = r.pending_prompt_lps, []

    # -- one new token ----------------------------------------------------------
    def _append(self, r: Req, t: int, out: Settled) -> dict | None:
        if r.first_token_time is None:
            r.first_token_time = time.perf_counter()
        r.output_ids.append(t)
        p = r.params
        early = len(r.output_ids) <= p.min_new_tokens   # stops do not count yet
        if not early and not p.ignore_eos and t in self.eos_ids:
            return {"type": "stop", "matched": t}
        if not early and t in p.stop_token_ids:
            return {"type": "stop", "matched": t}
        if r.guide is not None:
            r.guide.accept_token(t)
        reason = self._add_text(r, [t])
        if reason is None and r.guide is not None:
            if r.guide.is_terminated():
                return {"type": "stop", "matched": None}
            if self.jump_forward:
                reason = self._jump(r, out)
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
        """Stream new text, holding back a tail that could still become a stop string;
        the event carries the output tokens (and logprobs) whose text is now out."""
        end = len(r.text)
        if not final and r.params.stop:
            end -= max(len(s) for s in r.params.stop) - 1
        if end <= r.streamed_len:
            return
        ev = StreamEvent("delta", r.text[r.streamed_len : end])
        upto = self._tokens_out(r)
        if upto > r.streamed_tokens:
            ev.token_ids = r.output_ids[r.streamed_tokens : upto]
            if r.params.return_logprob:
                ev.logprobs = r.output_logprobs[r.streamed_tokens : upto]
                ev.top_logprobs = r.output_top_logprobs[r.streamed_tokens : upto]
            r.streamed_tokens = upto
        r.streamed_len = end
        r.events.put(ev)

    def _tokens_out(self, r: Req) -> int:
        """Output tokens whose text is out: all but a final EOS / stop token (no text)."""
        n = len(r.output_ids)
        if r.params.return_logprob:
            n = min(n, len(r.output_logprobs))
            if r.params.top_logprobs_num:
                n = min(n, len(r.output_top_logprobs))
        if n and (r.output_ids[n - 1] in self.eos_ids or r.output_ids[n - 1] in r.params.stop_token_ids):
            n -= 1
        return n

    def _check_stop_strings(self, r: Req, before: int) -> dict | None:
        p = r.params
        if len(r.output_ids) < p.min_new_tokens:
            return None
        for s in p.stop:
            k = r.text.find(s, max(0, before - len(s) + 1))
            if k >= 0:
                r.text = r.text[:k]
                return {"type": "stop", "matched": s}
        if p.stop_regex is not None:
            pat = self._stop_res.get(p.stop_regex)
            if pat is None:
                pat = self._stop_res[p.stop_regex] = re.compile(p.stop_regex)
            m = pat.search(r.text)
            if m is not None:
                r.text = r.text[: m.start()]
                return {"type": "stop", "matched": m.group(0)}
        return None

    # -- jump-forward ------------------------------------------------------------
    def _jump(self, r: Req, out: Settled) -> dict | None:
        forced = r.guide.jump_forward()
        if not forced or r.text.endswith("\ufffd"):
            return None
        old = r.output_ids
        text = self.tok.decode(old, skip_special_tokens=r.params.skip_special_tokens)
        new = self.tok.encode(text + forced, add_special_tokens=False)
        if len(new) > r.params.max_new_tokens:
            return None   # the forced text does not fit: decoding goes on to the length limit
        common = common_prefix_len(old, new)
        r.output_ids = new
        r.output_version += 1
        out.rollbacks.append((r, len(r.input_ids) + common))
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
    def result(self, r: Req) -> GenResult:
        reason = r.finish_reason or {"type": "abort"}
        p = r.params
        if reason["type"] == "abort" or p.stop or p.stop_regex or r.guide is not None:
            text = r.text
        else:
            text = self.tok.decode(self._visible_ids(r), skip_special_tokens=p.skip_special_tokens)
        meta = GenMeta(
            finish_reason=reason["type"], id=r.rid, prompt_tokens=len(r.input_ids),
            cached_tokens=max(r.cached_tokens, 0), completion_tokens=len(r.output_ids),
            matched_stop=reason.get("matched"), computed_tokens=r.computed_tokens,
            decode_steps=r.decode_steps, jump_forward_tokens=r.jump_tokens,
            forced_spans=list(r.forced_spans), retractions=r.retractions,
            draft_tokens=r.spec.drafted if r.spec is not None else 0,
            accepted_draft_tokens=r.spec.accepted if r.spec is not None else 0,
            e2e_latency=time.perf_counter() - r.created,
            ttft=(r.first_token_time - r.created) if r.first_token_time else None)
        if p.return_logprob or p.logprob_start_len >= 0:
            meta.input_token_logprobs = list(r.input_logprobs)
            meta.output_token_logprobs = list(r.output_logprobs)
            if p.top_logprobs_num:
                meta.output_top_logprobs = list(r.output_top_logprobs)
        return GenResult(text, meta, list(r.output_ids))

    def _visible_ids(self, r: Req) -> list[int]:
        ids = r.output_ids
        if ids and r.finish_reason and r.finish_reason.get("matched") == ids[-1]:
            ids = ids[:-1]
        return ids
