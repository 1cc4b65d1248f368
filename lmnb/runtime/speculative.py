"""Draft proposals for speculative decoding, without a draft model (pure CPU logic).

Each decode step, a request that speculates may carry up to k draft tokens; the step then
computes them as extra positions of that request (a small extend) and the sampler
verifies them against the model's own choice at every position (greedy: the longest
prefix equal to the argmax; sampling: rejection sampling, see `device_sampling`). A
request without a draft runs a normal decode step, so a draft that never comes costs
only the lookup below.

Where drafts come from, best first (the longest match wins):
  radix      the radix cache holds earlier requests' prompts and outputs: walking the tree
             along the request's whole fill_ids and on past its end gives what was
             generated after exactly this text before (a re-run cell)
  history    n-gram lookup over recently finished requests' outputs (each after the last
             tokens of its prompt): an edited cell whose later text is unchanged has
             another prefix, so the radix path does not reach, but the end of its prompt
             and then its output match the earlier run's
  prompt     n-gram lookup in the request's own prompt and output (copying spans from a
             document, repeated structure)

A lookup (n-gram) draft starts LOOKUP_START tokens long and doubles while accepted in
full: on the CPU a verify row over a long context costs a quarter of a decode step, so a
guess is tried short before it earns length. The draft length adapts per request: halved after a draft whose first token was
rejected, doubled (up to k) after a fully accepted one (radix drafts, the most
reliable, may be RADIX_FACTOR x k long while nothing is rejected); after several misses in a row
the request pauses drafting for a while, so free-form text that never matches pays for
almost no verification rows. Grammar-constrained requests walk a copy of their cursor:
a draft token the grammar forbids ends the draft, and the draft ends where the grammar
would jump forward or terminate; the masks of every position come with the draft.
Requests with penalties (frequency / presence / repetition) do not speculate: their
logits depend on every token before, which a batched verification would need per row.
"""
from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field

from lmnb.runtime.request import Req

NGRAM = 3            # tokens of context a lookup key holds (shorter keys match noise)
MIN_MATCH = 3        # a lookup match must cover at least this many tokens
SHORT_KEYS = (1, 2)  # shorter keys, used only when rare (see NgramIndex)
RARE_KEY = 1         # a short key is a match when it occurred at most this often before
PER_KEY = 4          # positions remembered per n-gram key (the latest ones)
HISTORY_TOKENS = 65_536    # tokens of finished requests kept for history lookups
HISTORY_PROMPT = 32        # of a finished request's prompt, its last tokens are kept
PAUSE_AFTER = 4      # misses in a row before drafting pauses
PAUSE_STEPS = 16     # decode steps a paused request does not draft
PROBE_EVERY = 8      # overlap: a cold request skips run-ahead this often to look for a draft
LONG_MATCH = 16      # a history match this long is as good as a radix path
LOOKUP_START = 2     # a request's first n-gram drafts are this short (they double while
                     # accepted in full): an n-gram guess that misses costs few verify rows
RADIX_FACTOR = 4     # a radix draft (the text generated after exactly this before) may be
                     # this many times k long while its drafts keep being accepted


@dataclass
class Draft:
    tokens: list[int]
    source: str                      # "radix" | "history" | "prompt" | "forced"
    masks: list | None = None        # grammar: allowed mask per verified position (len + 1)

    def cut(self, n: int) -> Draft:
        """The first n (>= 1) draft tokens, with their masks."""
        masks = None if self.masks is None else self.masks[: n + 1]
        return Draft(self.tokens[:n], self.source, masks)


@dataclass
class SpecState:
    """Per-request drafting state (Req.spec)."""

    k: int                           # current draft length limit
    lookup_k: int = LOOKUP_START     # the limit of n-gram (prompt / short history) drafts
    misses: int = 0                  # drafts in a row whose first token was rejected
    paused: int = 0                  # decode steps left without drafting
    idle: int = 0                    # overlap: steps run ahead since the last look
    hot: bool = False                # the last look found a draft
    index: NgramIndex | None = None  # over input_ids + output_ids
    version: int = -1                # output_version the index describes
    drafted: int = 0
    accepted: int = 0
    verify_steps: int = 0


class NgramIndex:
    """Positions of every NGRAM-token window of a growing sequence (the latest PER_KEY
    per key); `follow(tail)` finds where the sequence's tail occurred before.

    Shorter keys (the last 1 or 2 tokens) are kept too, with how often they occurred: a
    rare one (at most RARE_KEY earlier occurrences) is a match when no NGRAM key is, so
    a copy can be drafted from its first distinctive token on (a name, a title's first
    word), where a 3-token key would still span the text before the copy."""

    def __init__(self) -> None:
        self.seq: list[int] = []
        self.pos: dict[tuple, list[int]] = {}
        self.short: dict[tuple, list[int]] = {}   # key -> [count, latest ends...]

    def extend(self, tokens: list[int]) -> None:
        seq, pos, short = self.seq, self.pos, self.short
        start = len(seq)
        seq += tokens
        for end in range(start + 1, len(seq) + 1):
            for n in SHORT_KEYS:
                if end >= n:
                    key = tuple(seq[end - n : end])
                    at = short.get(key)
                    if at is None:
                        short[key] = [1, end]
                    else:
                        at[0] += 1
                        at.append(end)
                        if len(at) > RARE_KEY + 2:
                            del at[1]
            if end < NGRAM:
                continue
            key = tuple(seq[end - NGRAM : end])
            at = pos.get(key)
            if at is None:
                pos[key] = [end]
            else:
                at.append(end)
                if len(at) > PER_KEY:
                    del at[0]

    def follow(self, tail: list[int], k: int, exclude_end: int | None = None) -> tuple[int, list[int]]:
        """(match length, up to k tokens that followed the longest earlier match of
        `tail`'s end); (0, []) when none. `exclude_end`: a match ending there is the tail
        itself (own-sequence lookups)."""
        n, end = self._long(tail, exclude_end)
        if not n:
            n, end = self._rare(tail, exclude_end)
        return (n, self.seq[end : end + k]) if n else (0, [])

    def _long(self, tail: list[int], exclude_end: int | None) -> tuple[int, int]:
        if len(tail) < NGRAM:
            return 0, -1
        ends = self.pos.get(tuple(tail[-NGRAM:]))
        if not ends:
            return 0, -1
        best_len, best_end = 0, -1
        seq = self.seq
        for end in reversed(ends):          # latest first: ties go to the most recent
            if end == exclude_end or end >= len(seq):
                continue
            n = NGRAM
            lim = min(end, len(tail), 64)
            while n < lim and seq[end - n - 1] == tail[-n - 1]:
                n += 1
            if n > best_len:
                best_len, best_end = n, end
        return (best_len, best_end) if best_len >= MIN_MATCH else (0, -1)

    def _rare(self, tail: list[int], exclude_end: int | None) -> tuple[int, int]:
        """The latest earlier end of the tail's last 2 (else 1) tokens, when that key
        occurred at most RARE_KEY times before."""
        for n in sorted(SHORT_KEYS, reverse=True):
            at = self.short.get(tuple(tail[-n:])) if len(tail) >= n else None
            if at is None:
                continue
            ends = [e for e in at[1:] if e != exclude_end and e < len(self.seq)]
            earlier = at[0] - (len(at) - 1 - len(ends))
            if ends and earlier <= RARE_KEY:
                return n, ends[-1]
        return 0, -1


class History:
    """The token sequences of recently finished requests, n-gram indexed as one stream
    (a separator between requests keeps windows from spanning two of them)."""

    SEP = -7

    def __init__(self, limit: int = HISTORY_TOKENS) -> None:
        self.limit = limit
        self.index = NgramIndex()
        self.sizes: deque[int] = deque()

    def add(self, ids: list[int]) -> None:
        if len(ids) > self.limit // 2:
            ids = ids[-(self.limit // 2):]
        if len(self.index.seq) + len(ids) + 1 > self.limit:
            self._rebuild(len(ids) + 1)
        self.index.extend(list(ids) + [self.SEP])
        self.sizes.append(len(ids) + 1)

    def _rebuild(self, room: int) -> None:
        """Drop the oldest sequences until half the limit is free (so this is rare),
        then re-index the rest."""
        seq, drop = self.index.seq, 0
        while self.sizes and len(seq) - drop + room > self.limit // 2:
            drop += self.sizes.popleft()
        self.index = NgramIndex()
        self.index.extend(seq[drop:])

    def follow(self, tail: list[int], k: int) -> tuple[int, list[int]]:
        n, toks = self.index.follow(tail, k)
        if self.SEP in toks:
            toks = toks[: toks.index(self.SEP)]
        return n, toks


class Drafter:
    """Proposes drafts for the scheduler and learns from verification results.

    mode: "auto" drafts for greedy requests (their output is then exactly the same as
    without drafts), and for sampling requests only when they ask (`speculative=True`:
    rejection sampling keeps their distribution, but a seed then gives other samples
    depending on what the cache holds); "off" never drafts. `k`: most draft tokens per
    step; `exact_rows`: see `fit`."""

    def __init__(self, cache, mode: str = "auto", k: int = 8, context_len: int = 1 << 30,
                 exact_rows: int | None = None) -> None:
        self.cache, self.mode, self.k, self.context_len = cache, mode, k, context_len
        # a verify step of fewer rows computes each row as a decode step would (None: any
        # size does); drafts stay below it, so drafted greedy output is the same
        self.exact_rows = exact_rows
        self.history = History()
        self.counters = dict(spec_drafted=0, spec_accepted=0, spec_verify_steps=0,
                             spec_verify_tokens=0, spec_radix_drafts=0, spec_history_drafts=0,
                             spec_prompt_drafts=0)
        self.force = None   # tests and benchmarks: fn(req) -> list[int] | None overrides lookups

    # -- who speculates ----------------------------------------------------------
    def enabled(self, r: Req) -> bool:
        p = r.params
        if self.mode == "off" or p.speculative is False or p.penalized:
            return False
        if p.speculative is True:
            return True
        # "requested": only requests that ask (the runtime's choice on CUDA, see Runtime)
        return self.mode == "auto" and p.greedy

    def _state(self, r: Req) -> SpecState:
        if r.spec is None:
            r.spec = SpecState(k=self.k)
        return r.spec

    # -- proposals ---------------------------------------------------------------
    def propose(self, r: Req) -> Draft | None:
        """A draft for r's next decode step, or None (a plain decode step)."""
        if self.k <= 0 or r.ahead or not self.enabled(r):
            return None
        if r.guide is not None and not getattr(r.guide, "allows_drafts", True):
            return None   # a cursor that cannot be walked ahead on a copy (token healing)
        st = self._state(r)
        st.idle = 0
        room = min(r.params.max_new_tokens - len(r.output_ids) - 1, self.context_len - r.fill_len - 1)
        if room <= 0:
            return None
        if self.force is not None:   # forced drafts: no adaptation
            toks = self.force(r)
            draft = Draft(list(toks[: min(room, self.k)]), "forced") if toks else None
            if draft is not None and r.guide is not None:
                draft = _guided_or_none(r.guide, draft)
            st.hot = draft is not None
            return draft
        if st.paused > 0:
            st.paused -= 1
            st.hot = False
            return None
        draft = self._lookup(r, st, room)
        if draft is not None and r.guide is not None:
            draft = _guided_or_none(r.guide, draft)
        st.hot = draft is not None
        return draft

    def _lookup(self, r: Req, st: SpecState, room: int) -> Draft | None:
        ids = r.fill_ids
        long = self.k * RADIX_FACTOR if st.misses == 0 and st.k == self.k else st.k
        toks = self._radix(ids, min(room, long))
        if toks:
            return Draft(toks, "radix")
        if st.index is None or st.version != r.output_version or len(st.index.seq) > len(ids):
            st.index, st.version = NgramIndex(), r.output_version
        st.index.extend(ids[len(st.index.seq):])
        tail = ids[-64:]
        short = min(st.k, st.lookup_k)
        n_own, own = st.index.follow(tail, min(room, short), exclude_end=len(ids))
        n_hist, hist = self.history.follow(tail, min(room, long))
        if n_hist < LONG_MATCH:   # only a long match earns a radix-length draft
            hist = hist[:short]
        if hist and (n_hist > n_own or (n_hist == n_own and len(hist) > len(own))):
            return Draft(hist, "history")
        if own:
            return Draft(own, "prompt")
        return None

    def _radix(self, ids: list[int], k: int) -> list[int]:
        """What the cache holds after exactly `ids` (without touching the tree)."""
        cache = self.cache
        if cache.disabled:
            return []
        node, key = cache.root, ids
        while key:
            child = node.children.get(key[0])
            if child is None:
                return []
            ck = child.key
            if len(ck) > len(key):
                if ck[: len(key)] != key:
                    return []
                return ck[len(key) : len(key) + k]
            if ck != key[: len(ck)]:
                return []
            node, key = child, key[len(ck):]
        out: list[int] = []
        while len(out) < k and node.children:
            node = max(node.children.values(), key=lambda c: c.last_access)
            out += node.key[: k - len(out)]
        return out

    def fit(self, drafts: list[Draft | None]) -> list[Draft | None]:
        """The drafts of one decode batch (a request each), cut in batch order so that the
        verify step has fewer than `exact_rows` rows: then each of its rows is computed as
        a decode step would compute it, and drafted greedy output is the same as without.
        A batch whose plain decode step has that many rows already is not cut."""
        if self.exact_rows is None or len(drafts) >= self.exact_rows:
            return drafts
        room = self.exact_rows - 1 - len(drafts)
        out = []
        for d in drafts:
            n = 0 if d is None else min(len(d.tokens), room)
            room -= n
            out.append(d if d is None or n == len(d.tokens) else (d.cut(n) if n else None))
        return out

    # -- overlap ---------------------------------------------------------------------
    def stays_home(self, r: Req) -> bool:
        """Overlap: True when r should not run ahead, because its next step may carry a
        draft (the last look found one, or it is time to look again)."""
        if not self.enabled(r) or self.k <= 0:
            return False
        st = self._state(r)
        if st.hot:
            return True
        st.idle += 1
        if st.paused > 0:   # a paused request counts its pause down while running ahead
            st.paused -= 1
            return False
        return st.idle >= PROBE_EVERY

    # -- results -----------------------------------------------------------------------
    def verified(self, r: Req, drafted: int, accepted: int, source: str) -> None:
        c = self.counters
        c["spec_drafted"] += drafted
        c["spec_accepted"] += accepted
        c["spec_verify_steps"] += 1
        c["spec_verify_tokens"] += accepted + 1
        c[f"spec_{source}_drafts"] = c.get(f"spec_{source}_drafts", 0) + 1
        st = self._state(r)
        st.drafted += drafted
        st.accepted += accepted
        st.verify_steps += 1
        if source in ("prompt", "history"):
            if accepted == drafted:
                st.lookup_k = min(self.k, st.lookup_k * 2)
            elif accepted == 0:
                st.lookup_k = max(1, st.lookup_k // 2)
        if accepted == drafted:
            st.k, st.misses = min(self.k, st.k * 2), 0
        elif accepted == 0:
            st.k, st.misses = max(1, st.k // 2), st.misses + 1
            if st.misses >= PAUSE_AFTER:
                st.paused, st.misses = PAUSE_STEPS, 0
        else:
            st.misses = 0

    def finished(self, r: Req) -> None:
        """Remember a finished request's tokens for history lookups."""
        if self.mode == "off" or not r.output_ids:
            return
        self.history.add(r.input_ids[-HISTORY_PROMPT:] + [t for t in r.output_ids if t >= 0])

    def stats(self) -> dict:
        c = dict(self.counters)
        c["spec_acceptance_rate"] = c["spec_accepted"] / c["spec_drafted"] if c["spec_drafted"] else 0.0
        c["spec_tokens_per_verify_step"] = (c["spec_verify_tokens"] / c["spec_verify_steps"]
                                            if c["spec_verify_steps"] else 0.0)
        return c


def _guided_or_none(cursor, draft: Draft) -> Draft | None:
    """`_guided`, or no draft when the grammar fails on the copy: the request's own step
    then meets the failure where the engine ends only that request."""
    try:
        return _guided(cursor, draft)
    except Exception:  # noqa: BLE001 - reported by the plain path, per request
        return None


def _guided(cursor, draft: Draft) -> Draft | None:
    """Cut the draft where the grammar forbids a token, would jump forward or has ended;
    attach the allowed mask of every verified position (each draft token's, then the
    bonus token's)."""
    cur = copy.copy(cursor)
    masks, kept = [], []
    for t in draft.tokens:
        mask = cur.allowed_mask()
        if t >= mask.numel() or not bool(mask[t]):
            break
        masks.append(mask)
        kept.append(t)
        cur.accept_token(t)
        if cur.is_terminated() or cur.jump_forward():
            break
    if not kept:
        return None
    if not cur.is_terminated():
        masks.append(cur.allowed_mask())
    else:
        masks.append(masks[-1])   # never used: the request stops at the last draft token
    return Draft(kept, draft.source, masks)


@dataclass
class VerifyPlan:
    """The verification rows of one step: per request, its draft and first logits row."""

    reqs: list[Req] = field(default_factory=list)
    drafts: list[Draft] = field(default_factory=list)
    first_rows: list[int] = field(default_factory=list)
