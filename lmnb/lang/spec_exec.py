"""API speculative execution (SGLang paper, section 4.3), per program on `lm.OpenAI`.

    @lm.function(num_api_spec_tokens=64)        # or f.run(..., num_api_spec_tokens=64)
    def person(s, name):
        s += fewshot + "Name:" + lm.gen("name", stop="\\n") + "\\nBirthday:" + \\
             lm.gen("birthday", stop="\\n") + "\\nJob:" + lm.gen("job", stop="\\n")
    st = person.run(name="Ada"); st.api_usage   # {"calls": 1, "spec_fields": 3, ...}

The first speculable `gen` sends one request of `num_api_spec_tokens` tokens with no
stop strings (a chat model restarts the open assistant turn, since a chat API cannot
continue it). The reply is kept as a *speculation*: the text the model would write
after the prompt. Each field is then cut from it at its own stop strings (and its
max_tokens, counted on the reply's tokens where the server returns them), and the
program's constant text between fields must be exactly what the model wrote next.

  * the program's text differs from the speculation (a mismatch): the rest of that
    assistant turn (of the program, without roles) is generated per field, so every
    field is still filled by its own request. Chat servers that cannot continue a
    written turn get it as a final assistant message (best effort, `meta["fallback"]`).
  * the speculation ran out before a field's stop: a new speculative call from there.
  * a constrained gen (regex/json/dtype), stop_token_ids, ignore_eos or logprobs: its own
    request; a `select` takes an option the speculation starts with, else scores.
`state.api_usage` counts, for the program: calls, prompt_tokens, completion_tokens
(as the server reports them), spec_calls, spec_fields (fields filled from a
speculation), spec_mismatches and fallback_calls. Fork branches add to their parent's.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from lmnb.errors import RequestAborted
from lmnb.lang.backend import Backend, SelectResult
from lmnb.lang.openai_requests import DEFAULT_MAX_TOKENS, new_usage
from lmnb.runtime.results import GenMeta

_TURN_MARK = "<|im_start|>"
_UNSPECULABLE = ("regex", "json_schema", "stop_token_ids", "ignore_eos", "return_logprob", "top_logprobs_num")
_KEEP = 16   # speculations kept per program (fork branches each follow their own)


@dataclass
class Speculation:
    base: str                # the prompt the text continues
    text: str                # what the model wrote after it
    finish: str              # "stop": the model ended there; "length": it was cut
    ends: list[int] | None   # end offset in `text` of each token, when known


class Filled:
    """The handle of a field filled from a speculation (no request)."""

    def __init__(self, text: str, meta: dict) -> None:
        self.text, self.meta = text, meta

    def result(self) -> dict:
        return {"text": self.text, "meta": self.meta}

    def __iter__(self):
        if self.text:
            yield self.text

    def abort(self) -> None:
        pass


class ProgramView(Backend):
    """One program's view of an `lm.OpenAI` backend: its usage counters and speculations."""

    def __init__(self, backend, num_api_spec_tokens: int | None) -> None:
        self.backend, self.n = backend, num_api_spec_tokens
        self.supports_logprobs = backend.supports_logprobs
        self.usage = new_usage()
        self._lock = threading.Lock()
        self._specs: list[Speculation] = []
        self._per_field: list[str] = []   # where a mismatch switched a turn to per-field calls

    # -- Backend ----------------------------------------------------------------------
    def generate(self, prompt: str, stream: bool = False, **sampling):
        if not self.n or any(sampling.get(k) for k in _UNSPECULABLE):
            self._forget(prompt)   # its output is not what a speculation would say
            return self.backend.generate(prompt, stream, usage=self.usage, **sampling)
        if not self._in_per_field_turn(prompt):
            filled = self._take(prompt, sampling)
            if filled is None and not self._in_per_field_turn(prompt):   # not a mismatch
                self._speculate(prompt, sampling)
                filled = self._take(prompt, sampling)
            if filled is not None:
                return filled
        self._count(fallback_calls=1)
        h = self.backend.generate(prompt, stream, usage=self.usage, mode="best_effort", **sampling)
        h.req.fallback = True
        return h

    def select(self, prompt: str, choices: Sequence[str], method: str) -> SelectResult:
        with self._lock:
            spec = self._find(prompt)
            hit = self._option(prompt, spec, choices) if spec is not None else None
        if hit is not None:
            self._count(spec_fields=1)
            return hit
        self._forget(prompt)
        return self.backend.select(prompt, choices, method, usage=self.usage)

    def chat_template(self):
        return self.backend.chat_template()

    # -- speculation --------------------------------------------------------------------
    def _speculate(self, prompt: str, sampling: dict) -> None:
        params = {k: sampling[k] for k in ("temperature", "top_p", "seed") if sampling.get(k) is not None}
        h = self.backend.generate(prompt, usage=self.usage, mode="restart", max_new_tokens=self.n,
                                  return_logprob=True, **params)
        res = h.result()
        text, meta = res["text"], res["meta"]
        if meta["finish_reason"] == "abort":
            raise RequestAborted("the request was aborted")
        base = prompt[: len(prompt) - len(h.req.turn_text)] if h.req.restart else prompt
        toks = [t for t, _ in meta.get("output_token_logprobs") or []]
        ends = _ends(toks) if toks and "".join(toks) == text else None
        self._count(spec_calls=1)
        with self._lock:
            self._specs = [s for s in self._specs if not prompt.startswith(s.base)][-_KEEP:]
            self._specs.append(Speculation(base, text, meta["finish_reason"], ends))

    def _take(self, prompt: str, sampling: dict) -> Filled | None:
        """The field cut from the speculation this prompt continues, or None."""
        stops = sampling.get("stop") or ()
        stops = (stops,) if isinstance(stops, str) else tuple(stops)
        limit = sampling.get("max_new_tokens", DEFAULT_MAX_TOKENS)
        with self._lock:
            spec = self._find(prompt)
            if spec is None:
                return None
            self._specs.remove(spec)
            tail = prompt[len(spec.base):]
            if not spec.text.startswith(tail):
                self._mismatch(prompt, spec)
                return None
            cut = _cut(spec, len(tail), stops, limit)
            if cut is None:
                return None   # ran out before the field ended: speculate again from here
            value, finish, ntok = cut
            rest_at = len(tail) + len(value)
            if rest_at < len(spec.text) or spec.finish == "length":
                ends = None if spec.ends is None else [e - rest_at for e in spec.ends if e > rest_at]
                self._specs.append(Speculation(prompt + value, spec.text[rest_at:], spec.finish, ends))
        self._count(spec_fields=1)
        meta = GenMeta(finish, completion_tokens=ntok, extra={"api_calls": 0, "speculative": True})
        return Filled(value, meta)

    def _option(self, prompt: str, spec: Speculation, choices: Sequence[str]) -> SelectResult | None:
        cand = spec.text[len(prompt) - len(spec.base):] if spec.text.startswith(prompt[len(spec.base):]) else None
        hits = [i for i, c in enumerate(choices) if cand is not None and cand.startswith(c)]
        if not hits:
            return None
        best = max(hits, key=lambda i: len(choices[i]))
        at = len(prompt) - len(spec.base) + len(choices[best])
        self._specs.remove(spec)
        self._specs.append(Speculation(prompt + choices[best], spec.text[at:], spec.finish,
                                       None if spec.ends is None else [e - at for e in spec.ends if e > at]))
        return SelectResult(best, choices[best], {"method": "speculation", "api_calls": 0, "speculative": True})

    def _find(self, prompt: str) -> Speculation | None:
        """The speculation with the longest base that the prompt extends."""
        found = [s for s in self._specs if prompt.startswith(s.base)]
        return max(found, key=lambda s: len(s.base)) if found else None

    def _forget(self, prompt: str) -> None:
        with self._lock:
            self._specs = [s for s in self._specs if not prompt.startswith(s.base)]

    def _mismatch(self, prompt: str, spec: Speculation) -> None:
        k = prompt.rfind(_TURN_MARK)
        turn = prompt[: prompt.index("\n", k) + 1] if k >= 0 else spec.base
        self._per_field.append(turn)
        self._count(spec_mismatches=1)

    def _in_per_field_turn(self, prompt: str) -> bool:
        return any(prompt.startswith(t) and _TURN_MARK not in prompt[len(t):] for t in self._per_field)

    def _count(self, **counts) -> None:
        self.backend.add_usage([self.usage, self.backend.usage], **counts)


def _cut(spec: Speculation, at: int, stops: tuple[str, ...], limit: int):
    """(value, finish_reason, tokens) of the field starting at `at` in the speculation,
    or None when the speculation ends before the field does."""
    cand = spec.text[at:]
    hits = [cand.find(s) for s in stops if s and s in cand]
    end, finish = (min(hits), "stop") if hits else (len(cand), None)
    ntok = _tokens_between(spec.ends, at, at + end)
    if ntok is not None and ntok > limit:
        first = [e for e in spec.ends if e > at][:limit]
        return cand[: first[-1] - at] if first else "", "length", limit
    if finish is None:
        if spec.finish != "stop":
            return None
        finish = "stop"   # the model ended the text there, as a per-field call would
    return cand[:end], finish, ntok or 0


def _tokens_between(ends: list[int] | None, lo: int, hi: int) -> int | None:
    if ends is None:
        return None
    starts = [0] + ends[:-1]
    return sum(1 for s, e in zip(starts, ends) if e > lo and s < hi)


def _ends(tokens: list[str]) -> list[int]:
    out, n = [], 0
    for t in tokens:
        n += len(t)
        out.append(n)
    return out
