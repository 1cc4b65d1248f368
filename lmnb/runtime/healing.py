"""Token healing: generation that starts as if the prompt had not been cut mid-token.

A prompt written by a person often ends inside what the model would have read as one
token: `"Label: "` ends in a lone space token where the model's data has `" Paris"`, and
`"The capital of France is Par"` ends in `" Par"` where the data has `" Paris"`. The model,
shown a token boundary it never saw there, continues badly (dates, newlines, nothing).

Healing backs the prompt off by its last token(s) whose bytes could be the start of a
longer token, then constrains the first generated tokens to begin with exactly those
bytes; after that the request's own constraint (regex / JSON, or none) decides. The
returned text leaves the removed bytes out, because the prompt already holds them.

Three pieces, each small:
  * `HealingTable`: the vocabulary's byte table sorted, so "tokens that start with b" is a
    range and "is b a strict prefix of some token" a bisection;
  * `plan(...)`: which prompt tokens to remove (at most `MAX_BACK`, never a special token,
    the removed bytes whole UTF-8 text that no stop string can overlap);
  * `HealingCursor`: the constraint of the first tokens (the engine's guide-cursor
    protocol, see constrained/interface.py); once the removed bytes are consumed it hands
    the request back to the inner cursor (or to none), so the rest of the request runs
    exactly as an unhealed one would (masks, run-ahead, jump-forward).
`HealedHandle` strips the removed text from what the request handle returns.
"""
from __future__ import annotations

import bisect
import copy
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from lmnb.errors import LmnbError

MAX_BACK = 3          # prompt tokens removed at most (" Fran" may be " Fr" + "an")


class HealingTable:
    """A vocabulary's token bytes (None for special tokens), sorted for prefix lookups."""

    def __init__(self, tokens: list[bytes | None], vocab_size: int) -> None:
        self.tokens, self.vocab_size = tokens, vocab_size
        order = sorted((b, i) for i, b in enumerate(tokens) if b)
        self.sorted_bytes = [b for b, _ in order]
        self.sorted_ids = np.array([i for _, i in order], np.int64)
        self.by_bytes: dict[bytes, list[int]] = {}
        for b, i in order:
            self.by_bytes.setdefault(b, []).append(i)
        self._masks: dict[bytes, torch.Tensor] = {}
        self._all: torch.Tensor | None = None
        self._lock = threading.Lock()

    def starting_with(self, prefix: bytes) -> tuple[int, int]:
        """[lo, hi) of the sorted tokens whose bytes start with `prefix`."""
        lo = bisect.bisect_left(self.sorted_bytes, prefix)
        nxt = _successor(prefix)
        hi = bisect.bisect_left(self.sorted_bytes, nxt, lo) if nxt else len(self.sorted_bytes)
        return lo, hi

    def extendable(self, prefix: bytes) -> bool:
        """True when some token is `prefix` followed by more bytes."""
        lo, hi = self.starting_with(prefix)
        return hi - lo > len(self.by_bytes.get(prefix, ()))

    def all_allowed(self) -> torch.Tensor:
        """Bool [vocab_size], all True (one tensor: device mask caches key on identity)."""
        if self._all is None:
            self._all = torch.ones(self.vocab_size, dtype=torch.bool)
        return self._all

    def mask(self, rest: bytes) -> torch.Tensor:
        """Bool [vocab_size]: tokens that are a prefix of `rest` or start with it (cached)."""
        m = self._masks.get(rest)
        if m is None:
            m = torch.zeros(self.vocab_size, dtype=torch.bool)
            for i in range(1, len(rest) + 1):
                for t in self.by_bytes.get(rest[:i], ()):
                    m[t] = True
            lo, hi = self.starting_with(rest)
            m[torch.from_numpy(self.sorted_ids[lo:hi])] = True
            with self._lock:
                if len(self._masks) > 512:
                    self._masks.clear()
                m = self._masks.setdefault(rest, m)
        return m


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix`."""
    p = prefix.rstrip(b"\xff")
    return p[:-1] + bytes([p[-1] + 1]) if p else None


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def table_for(vocab) -> HealingTable:
    """The healing table of a constrained-decoding `Vocabulary` (built once per vocabulary)."""
    t = _TABLES.get(vocab)
    if t is None:
        t = _TABLES.setdefault(vocab, HealingTable(vocab.tokens, vocab.vocab_size))
    return t


@dataclass
class Plan:
    """What healing does to one request: keep `ids`, regenerate `removed` bytes first."""
    ids: list[int]
    removed: bytes
    removed_tokens: int

    @property
    def text(self) -> str:
        return self.removed.decode("utf-8")


def plan(table: HealingTable, ids: list[int], stops: tuple[str, ...] = ()) -> Plan | None:
    """Which tail of the prompt `ids` to back off, or None when nothing needs healing.
    A token is removed while the bytes removed so far could begin a longer token; the
    first token of the prompt (BOS, or the only one) always stays."""
    best, removed = 0, b""
    for k in range(1, min(MAX_BACK, len(ids) - 1) + 1):
        b = table.tokens[ids[-k]] if 0 <= ids[-k] < len(table.tokens) else None
        if not b:
            break   # special tokens (chat markers) are never regenerated
        cand = b + removed
        if not table.extendable(cand):
            break
        removed = cand
        if _whole_text(cand) and not _overlaps_stop(cand.decode("utf-8"), stops):
            best = k
    if best == 0:
        return None
    cut = b"".join(table.tokens[t] for t in ids[-best:])
    return Plan(list(ids[:-best]), cut, best)


def _whole_text(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _overlaps_stop(removed: str, stops: tuple[str, ...]) -> bool:
    """True when a stop string could match text that begins inside the removed part."""
    for s in stops:
        if s in removed or any(s.startswith(removed[i:]) for i in range(len(removed))):
            return True
    return False


class HealingCursor:
    """Allows only tokens consistent with the removed bytes until they are consumed, then
    sets `req.guide` back to the inner cursor (None: unconstrained) after advancing it
    over the bytes the healing token had beyond the removed ones."""

    def __init__(self, table: HealingTable, removed: bytes, inner, req) -> None:
        self.table, self.rest, self.inner, self.req = table, removed, inner, req

    def draft_walker(self) -> HealingWalk:
        """A cursor to walk speculative draft tokens on (it rewrites no request)."""
        return HealingWalk(self)

    def allowed_mask(self) -> torch.Tensor:
        m = self.table.mask(self.rest)
        if self.inner is None:
            return m
        return self._with_inner(m)

    def _with_inner(self, m: torch.Tensor) -> torch.Tensor:
        """Tokens that are a prefix of the removed bytes, and tokens that are the removed
        bytes followed by the bytes of one token the inner constraint allows now (read from
        its mask: the inner cursor is never advanced to probe)."""
        out = torch.zeros_like(m)
        rest = self.rest
        for i in range(1, len(rest) + 1):
            for t in self.table.by_bytes.get(rest[:i], ()):
                out[t] = True
        inner_mask = self.inner.allowed_mask()
        tokens = self.table.tokens
        for u in torch.nonzero(inner_mask).flatten().tolist():
            b = tokens[u] if u < len(tokens) else None
            if b:
                for t in self.table.by_bytes.get(rest + b, ()):
                    out[t] = True
        return out

    def accept_token(self, token_id: int) -> None:
        b = self.table.tokens[token_id] if 0 <= token_id < len(self.table.tokens) else None
        if not b or not (self.rest.startswith(b) or b.startswith(self.rest)):
            raise LmnbError(f"token id {token_id} does not continue the healed prompt "
                            f"(it must begin with {self.rest!r})")
        if len(b) < len(self.rest):
            self.rest = self.rest[len(b):]
            return
        tail, self.rest = b[len(self.rest):], b""
        if self.inner is not None and tail:
            self.inner.accept_text(tail.decode("utf-8"))
        self.req.guide = self.inner   # healed: the request goes on as an unhealed one

    def accept_text(self, text: str) -> None:
        if self.rest:
            raise LmnbError("forced text before the healed prompt bytes were generated")
        if self.inner is not None:
            self.inner.accept_text(text)

    def is_terminated(self) -> bool:
        return False if self.rest or self.inner is None else self.inner.is_terminated()

    def jump_forward(self) -> str | None:
        return None if self.rest or self.inner is None else self.inner.jump_forward()


class HealingWalk:
    """A copy of a HealingCursor for walking draft tokens ahead: a copy that hands its
    inner cursor over to this walk instead of to the request, then a copy of that inner
    cursor, or, unconstrained, every token allowed (one shared mask per table)."""

    def __init__(self, cursor: HealingCursor) -> None:
        self.healing = copy.copy(cursor)
        self.healing.inner = copy.copy(cursor.inner)   # the real one is advanced only by the request
        self.healing.req = self                        # accept_token sets self.guide when healed
        self.guide = self.healing
        self.table = cursor.table

    def allowed_mask(self) -> torch.Tensor:
        cur = self.guide
        return self.table.all_allowed() if cur is None else cur.allowed_mask()

    def unconstrained(self) -> bool:
        """Healed with no grammar behind: every token is allowed from here on."""
        return self.guide is None

    def accept_token(self, token_id: int) -> None:
        if self.guide is not None:
            self.guide.accept_token(token_id)

    def is_terminated(self) -> bool:
        return self.guide is not None and self.guide.is_terminated()

    def jump_forward(self) -> str | None:
        return None if self.guide is None else self.guide.jump_forward()


class HealedHandle:
    """A request handle whose text leaves out the healed bytes (the prompt has them).
    The result's meta gains `token_healing` = {"tokens": removed token count, "text":
    removed text}; `prompt_tokens` counts the prompt as given and `completion_tokens` the
    tokens beyond the regenerated ones (the engine's own counters see the backed-off
    prompt), and the output logprobs leave out the same number of leading entries, so
    they agree with `completion_tokens`. `events()`, `result()` and iteration read like a
    `RequestHandle`'s."""

    def __init__(self, handle, healed: Plan) -> None:
        self._handle, self._plan = handle, healed
        self._skip = healed.text
        self._cut: int | None = None    # characters of the raw text that are the healed part
        self._held = ""                 # raw delta text held while it may still be that part
        self._result = None

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def _strip(self, text: str) -> str:
        n = 0
        while n < len(self._skip) and n < len(text) and text[n] == self._skip[n]:
            n += 1
        return text[n:]

    @property
    def partial_text(self) -> str:
        return self._strip(self._handle.partial_text)

    def done(self) -> bool:
        return self._handle.done()

    def _delta(self, text: str) -> str:
        """The part of a raw delta that is new text (past the healed bytes)."""
        if self._cut is not None:
            return text
        self._held += text
        if len(self._held) < len(self._skip) and self._skip.startswith(self._held):
            return ""
        self._cut = len(self._held) - len(self._strip(self._held))
        return self._held[self._cut:]

    def _healed_result(self, res):
        if res is None:
            return None
        if self._result is None:
            self._result = healed_result(res, self._plan, self._strip)
        return self._result

    def events(self):
        """The inner handle's events with delta texts and the result healed."""
        from dataclasses import replace

        for ev in self._handle.events():
            if ev.kind == "delta":
                ev = replace(ev, text=self._delta(ev.text))
            elif ev.kind == "done":
                ev = replace(ev, result=self._healed_result(ev.result))
            yield ev

    def result(self):
        return self._healed_result(self._handle.result())

    def __iter__(self):
        shown = ""
        try:
            for ev in self.events():
                if ev.kind == "delta" and ev.text:
                    shown += ev.text
                    yield ev.text
            res = self.result()
            if res.text.startswith(shown) and len(res.text) > len(shown):
                yield res.text[len(shown):]   # text held back while it could have been a stop string
        except (KeyboardInterrupt, GeneratorExit):
            self._handle.abort(wait=True)
            raise

    def abort(self, wait: bool = False) -> None:
        self._handle.abort(wait=wait)


def healed_result(res, healed: Plan, strip):
    """`res` (a GenResult) with the healed text left out of its text and spans."""
    import copy

    text = strip(res.text)
    shift = len(res.text) - len(text)
    meta = copy.copy(res.meta)
    meta.extra = dict(meta.extra or {})
    meta["token_healing"] = {"tokens": healed.removed_tokens, "text": healed.text}
    k = healed.removed_tokens
    meta.completion_tokens = max(0, (meta.completion_tokens or 0) - k)
    meta.prompt_tokens = (meta.prompt_tokens or 0) + k
    if meta.output_token_logprobs:
        meta.output_token_logprobs = meta.output_token_logprobs[k:]
    if meta.output_top_logprobs:
        meta.output_top_logprobs = meta.output_top_logprobs[k:]
    if meta.forced_spans:
        meta.forced_spans = [(max(a - shift, 0), b - shift) for a, b in meta.forced_spans if b - shift > 0]
    out = copy.copy(res)
    out.text, out.meta = text, meta
    return out
