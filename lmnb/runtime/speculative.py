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

How long a draft is, and whether to draft at all, is a cost decision (draft_cost.py): the
runtime measures what a step with k draft rows costs against a plain decode step, and
each request keeps an acceptance estimate per kind of draft (its source; a lookup's also by
how many tokens it matched, `Draft.evidence`), its prior the runtime's estimate for that
kind; a draft goes out only when its expected tokens per second
beat a plain step's, at the length that maximises them. After PAUSE_AFTER drafts in a
row whose first token was rejected a request pauses drafting, each pause twice as long
as the one before (up to MAX_PAUSE steps), so free-form text that never matches pays for
almost no verification rows. Grammar-constrained requests walk a copy of their cursor
(token healing's through a walker that rewrites no request): a draft token the grammar
forbids ends the draft, and the draft ends where the grammar would jump forward or
terminate; the masks of every position come with the draft.
Requests with penalties (frequency / presence / repetition) do not speculate: their
logits depend on every token before, which a batched verification would need per row.
"""
from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field

from lmnb.runtime import draft_cost
from lmnb.runtime.draft_cost import Acceptance, StepCost
from lmnb.runtime.request import Req
from lmnb.runtime.token_ids import common_prefix_len

NGRAM = 3            # tokens of context a lookup key holds (shorter keys match noise)
MIN_MATCH = 3        # a lookup match must cover at least this many tokens
SHORT_KEYS = (1, 2)  # shorter keys, used only when rare (see NgramIndex)
RARE_KEY = 1         # a short key is a match when it occurred at most this often before
PER_KEY = 4          # positions remembered per n-gram key (the latest ones)
HISTORY_TOKENS = 65_536    # tokens of finished requests kept for history lookups
HISTORY_PROMPT = 32        # of a finished request's prompt, its last tokens are kept
PAUSE_AFTER = 3      # misses in a row before drafting pauses
PAUSE_STEPS = 8      # decode steps of a request's first pause (each next pause doubles)
MAX_PAUSE = 128      # ... up to this many
FINISH_DECAY = 0.5   # the runtime's per-source evidence weighs this much less after a request
IDLE_DECAY = 0.95    # a request that skipped a draft (too unlikely to pay) forgets this much
                     # of its own acceptance evidence per step, back toward the prior
PROBE_EVERY = 8      # overlap: a cold request skips run-ahead this often to look for a draft
PROBE_SKIPPED = 16   # after this many drafts in a row turned down for cost, one is priced
                     # at the prior's cost per row instead (the table may be stale)
LONG_MATCH = 16      # a history match this long is as good as a radix path
RADIX_FACTOR = 4     # a radix draft (the text generated after exactly this before), or a
                     # lookup match of LONG_MATCH tokens, may be this many times k long


@dataclass
class Draft:
    tokens: list[int]
    source: str                      # "radix" | "history" | "prompt" | "forced"
    masks: list | None = None        # grammar: allowed mask per verified position (len + 1);
                                     # None at a position nothing constrains
    match: int = 0                   # lookups: the context tokens the match covered

    def cut(self, n: int) -> Draft:
        """The first n (>= 1) draft tokens, with their masks."""
        masks = None if self.masks is None else self.masks[: n + 1]
        return Draft(self.tokens[:n], self.source, masks, self.match)

    @property
    def evidence(self) -> str:
        """The acceptance estimate this draft is priced by and counts toward: its source,
        a lookup's split by how much context it matched (a rare one- or two-token key, a
        match of NGRAM to LONG_MATCH tokens, a longer one: they stand at very different
        rates, see draft_cost.SOURCE_PRIOR)."""
        if self.source not in ("history", "prompt"):
            return self.source
        if self.match < NGRAM:
            return self.source + ":short"
        return self.source + (":long" if self.match >= LONG_MATCH else "")


@dataclass
class SpecState:
    """Per-request drafting state (Req.spec)."""

    misses: int = 0                  # drafts in a row whose first token was rejected
    paused: int = 0                  # decode steps left without drafting
    pause: int = PAUSE_STEPS         # the length of the next pause
    idle: int = 0                    # overlap: steps run ahead since the last look
    hot: bool = False                # the last look found a draft
    index: NgramIndex | None = None  # over input_ids + output_ids
    version: int = -1                # output_version the index describes
    acceptance: dict[str, Acceptance] = field(default_factory=dict)   # per Draft.evidence
    drafted: int = 0
    accepted: int = 0
    verify_steps: int = 0
    skipped: int = 0                 # lookups that found a draft the cost model turned down
    skipped_run: int = 0             # ... in a row


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

    def truncate(self, n: int) -> None:
        """Forget every window that ends past position n (the sequence is cut to n tokens),
        in time proportional to what is cut: jump-forward rewrites a request's newest
        tokens, and re-indexing a long prompt for each rewrite cost more than the drafts
        saved. A key then remembers fewer earlier positions (the cut ones are not
        replaced by older ones), never a wrong one."""
        seq, pos, short = self.seq, self.pos, self.short
        for end in range(len(seq), n, -1):
            for m in SHORT_KEYS:
                if end >= m:
                    at = short.get(tuple(seq[end - m : end]))
                    if at is not None:
                        at[0] -= 1
                        if end in at[1:]:
                            at.remove(end)
            if end >= NGRAM:
                at = pos.get(tuple(seq[end - NGRAM : end]))
                if at is not None and end in at:
                    at.remove(end)
        del seq[n:]

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
    """Proposes drafts for the scheduler and learns from verification results and from
    the measured cost of steps (draft_cost.py).

    mode: "auto" drafts for greedy requests (their output is then exactly the same as
    without drafts), and for sampling requests only when they ask (`speculative=True`:
    rejection sampling keeps their distribution, but a seed then gives other samples
    depending on what the cache holds); "off" never drafts. `k`: most draft tokens per
    request and step (RADIX_FACTOR x k for radix drafts and long matches); `exact_rows`:
    see `fit`."""

    def __init__(self, cache, mode: str = "auto", k: int = 8, context_len: int = 1 << 30,
                 exact_rows: int | None = None) -> None:
        self.cache, self.mode, self.k, self.context_len = cache, mode, k, context_len
        # a verify step of fewer rows computes each row as a decode step would (None: any
        # size does); drafts stay below it, so drafted greedy output is the same
        self.exact_rows = exact_rows
        self.history = History()
        self.cost = StepCost()
        self.sources: dict[str, Acceptance] = {}   # the runtime's estimate per Draft.evidence
        self.counters = dict(spec_drafted=0, spec_accepted=0, spec_verify_steps=0,
                             spec_verify_tokens=0, spec_radix_drafts=0, spec_history_drafts=0,
                             spec_prompt_drafts=0, spec_skipped=0)
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
            r.spec = SpecState()
        return r.spec

    # -- proposals ---------------------------------------------------------------
    def drafts(self, reqs: list[Req]) -> list[Draft | None]:
        """The drafts of one decode step's requests (None: a plain row), each as long as
        pays given the rows the requests before it draft, cut by `fit`."""
        out, rows = [], 0
        for r in reqs:
            d = self.propose(r, len(reqs), rows)
            rows += len(d.tokens) if d is not None else 0
            out.append(d)
        return self.fit(out)

    def propose(self, r: Req, batch: int = 1, rows: int = 0) -> Draft | None:
        """A draft for r's next decode step in a step of `batch` requests whose others
        draft `rows` tokens, or None (a plain decode step)."""
        if self.k <= 0 or r.ahead or not self.enabled(r):
            return None
        st = self._state(r)
        st.idle = 0
        room = min(r.params.max_new_tokens - len(r.output_ids) - 1, self.context_len - r.fill_len - 1)
        if self.exact_rows is not None and batch < self.exact_rows:   # as `fit` will cut
            room = min(room, self.exact_rows - 1 - batch - rows)
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
        if draft is not None:
            draft = self._pays(r, st, draft, batch, rows)
        if draft is not None and r.guide is not None:
            draft = _guided_or_none(r.guide, draft)
        st.hot = draft is not None
        return draft

    def acceptance(self, r: Req, evidence: str) -> tuple[float, float]:
        """(p, q): the estimated chance that r's first draft token of this kind
        (`Draft.evidence`) stands, and that a later one does given the ones before it did
        (draft_cost.Acceptance)."""
        src = self._source(evidence)
        p0, q0 = draft_cost.priors(evidence)
        p = max(src.rate(p0), draft_cost.SOURCE_FLOOR)
        q = max(src.rate_more(q0), draft_cost.SOURCE_FLOOR)
        own = self._state(r).acceptance.get(evidence)
        return (p, q) if own is None else (own.rate(p), own.rate_more(q))

    def _pays(self, r: Req, st: SpecState, draft: Draft, batch: int, rows: int) -> Draft | None:
        """The draft cut to the length that maximises expected tokens per second (the
        step's other drafts' rows already in it), or None when no length pays."""
        p, q = self.acceptance(r, draft.evidence)
        k = draft_cost.choose_k(p, len(draft.tokens), batch, lambda n: self.cost.ratio(batch + rows, n), q)
        if k == 0 and st.skipped_run >= PROBE_SKIPPED:
            # a probe: priced by the prior's cost per row, not the measured table, so an
            # estimate that one slow step (a stalled machine) made too dear is measured
            # again, and so is the acceptance; at most one such draft per PROBE_SKIPPED
            k = draft_cost.choose_k(p, len(draft.tokens), batch, draft_cost.prior_ratio, q)
        st.skipped_run = 0 if k else st.skipped_run + 1
        if k == 0:
            st.skipped += 1
            self.counters["spec_skipped"] += 1
            for acc in st.acceptance.values():   # drift back toward the prior: look again later
                acc.fade(IDLE_DECAY)
            return None
        return draft.cut(k) if k < len(draft.tokens) else draft

    def _lookup(self, r: Req, st: SpecState, room: int) -> Draft | None:
        long = min(room, self.k * RADIX_FACTOR)
        short = min(room, self.k)
        toks = self._radix(r, long)
        if toks:
            return Draft(toks, "radix")
        ids = r.fill_ids
        if st.index is None:
            st.index = NgramIndex()
        elif st.version != r.output_version or len(st.index.seq) > len(ids):
            st.index.truncate(common_prefix_len(st.index.seq, ids))   # output rewritten
        st.version = r.output_version
        st.index.extend(ids[len(st.index.seq):])
        tail = ids[-64:]
        n_own, own = st.index.follow(tail, long, exclude_end=len(ids))
        n_hist, hist = self.history.follow(tail, long)
        if n_hist < LONG_MATCH:   # only a long match earns a radix-length draft
            hist = hist[:short]
        if n_own < LONG_MATCH:
            own = own[:short]
        if hist and (n_hist > n_own or (n_hist == n_own and len(hist) > len(own))):
            return Draft(hist, "history", match=n_hist)
        if own:
            return Draft(own, "prompt", match=n_own)
        return None

    def _radix(self, r: Req, k: int) -> list[int]:
        """What the cache holds after exactly r's tokens (read-only): walked from the
        request's locked cache node when it has one (its first cache_len tokens)."""
        if r.last_node is not None and r.cache_len <= r.fill_len:
            return self.cache.continuation(r.fill_slice(r.cache_len, r.fill_len), k, r.last_node)
        return self.cache.continuation(r.fill_ids, k)

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
    def observe_step(self, prefix_lens: list[int], draft_rows: int, seconds: float) -> None:
        """A decode step (draft_rows == 0) or verify step of requests whose last token sat
        at `prefix_lens` took `seconds` (the engine reports every such step)."""
        self.cost.observe(prefix_lens, draft_rows, seconds)

    def verified(self, r: Req, drafted: int, accepted: int, source: str,
                 evidence: str | None = None) -> None:
        """A verify step of r's `drafted`-token draft from `source` kept `accepted`;
        `evidence`: the draft's `Draft.evidence` (default: the source)."""
        evidence = evidence or source
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
        st.acceptance.setdefault(evidence, Acceptance()).record(drafted, accepted, draft_cost.REQ_DECAY)
        self._source(evidence).record(drafted, accepted, draft_cost.SOURCE_DECAY)
        if accepted == 0:
            st.misses += 1
            if st.misses >= PAUSE_AFTER:
                st.paused, st.misses = st.pause, 0
                st.pause = min(MAX_PAUSE, st.pause * 2)
        else:
            st.misses, st.pause = 0, PAUSE_STEPS

    def _source(self, source: str) -> Acceptance:
        got = self.sources.get(source)
        if got is None:
            got = self.sources[source] = Acceptance()
        return got

    def finished(self, r: Req) -> None:
        """Remember a finished request's tokens for history lookups; the runtime's
        per-source evidence weighs less for the requests after it (one request that
        did not copy does not keep the next from trying)."""
        if self.mode == "off" or not r.output_ids:
            return
        if r.spec is not None and r.spec.verify_steps:
            for acc in self.sources.values():
                acc.fade(FINISH_DECAY)
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
    bonus token's; None where the walk has left every constraint behind: a healed prompt
    without a grammar, whose rows then need no masking)."""
    # a cursor that rewrites its request as it goes (token healing) gives a walker instead
    walker = getattr(cursor, "draft_walker", None)
    cur = walker() if walker is not None else copy.copy(cursor)
    free = getattr(cur, "unconstrained", lambda: False)
    masks, kept = [], []
    for t in draft.tokens:
        mask = None if free() else cur.allowed_mask()
        if mask is not None and (t >= mask.numel() or not bool(mask[t])):
            break
        masks.append(mask)
        kept.append(t)
        cur.accept_token(t)
        if cur.is_terminated() or cur.jump_forward():
            break
    if not kept:
        return None
    if not cur.is_terminated():
        masks.append(None if free() else cur.allowed_mask())
    else:
        masks.append(masks[-1])   # never used: the request stops at the last draft token
    return Draft(kept, draft.source, masks, draft.match)


@dataclass
class VerifyPlan:
    """The verification rows of one step: per request, its draft and first logits row."""

    reqs: list[Req] = field(default_factory=list)
    drafts: list[Draft] = field(default_factory=list)
    first_rows: list[int] = field(default_factory=list)
