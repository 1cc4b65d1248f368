"""When a draft pays, measured (pure CPU logic): the speculative drafter's cost model.

A decode step computes one row per request; a verify step computes a request's last token
and its k draft tokens. What k draft rows add depends on the machine (on a GPU at batch 1
almost nothing; on a 2-core CPU each row a tenth to a quarter of a step, in tiles of rows
that share each weight unpack, so not even linearly), so it is measured, not assumed:

  StepCost    plain  an online least-squares fit of a plain decode step's seconds to
                     a + b * rows + c * keys (keys: the positions its rows attend to, in
                     units of KEYS_UNIT), with forgetting, over this runtime's decode steps
              rows   per row count n of a decode or verify step: a running mean (from the
                     prior, never set by one step) of its seconds over the plain fit's
                     seconds for one row at the same context;
                     counts never measured interpolate between the measured ones (and
                     1 row = 1.0), past the last measured one at the mean cost per row of the
                     ones measured (ROW_PRIOR per row while only one-row steps are). A
                     draft of k rows in a step of n rows then costs rows(n+k) / rows(n).

  Acceptance  per request and draft source, Beta posteriors of "the first draft token
              stands" (p) and "a later one stands, given the ones before it did" (q):
              their priors are the runtime's running estimates for the source (starting
              at SOURCE_PRIOR / MORE_PRIOR), then the request's own verify steps, the
              older ones decayed (REQ_DECAY) so a request that stops copying stops paying.

  choose_k    the k that maximises the step's expected tokens per second (E[tokens] =
              1 + p (1 + q + ... + q^(k-1))); 0 (no draft) unless that beats a plain
              step by MIN_GAIN.
"""
from __future__ import annotations

from dataclasses import dataclass

KEYS_UNIT = 1024        # the plain fit counts attended positions in these units
FORGET = 0.98           # plain fit: forgetting factor per observed step (~50 steps of memory)
OUTLIER = 2.0           # an observation this many times off the estimate (a preempted step) is clipped
RATIO_WEIGHT = 0.2      # weight of a new observation in a row count's running mean
FAST_WEIGHT = 0.5       # ... of one faster than the estimate (other work only slows steps down)
KEYS_PRIOR = 0.3        # before the fit moves: a row's 1k attended keys cost 0.3 of the first step
ROW_PRIOR = 0.15        # while only one-row steps were measured, each more row costs this
                        # much of a one-row step
MIN_GAIN = 1.03         # a draft must promise this many times a plain step's tokens per second
# radix: the text generated after exactly these tokens before, which greedy decoding repeats
# unless that text came from sampling or another constraint (119 of 119 per re-run here).
# Lookups by how much context matched (speculative.Draft.evidence): in bench/speculative.py's
# first, re-run and edited runs (smollm2, 2 repeats) the first token stood for 8 of 23
# one- or two-token ("short") matches, 23 of 33 of 3-15 tokens, 21 of 22 of 16 and more ("long")
SOURCE_PRIOR = {"radix": 0.97, "history": 0.6, "prompt": 0.5, "forced": 0.5,
                "history:short": 0.35, "prompt:short": 0.35, "history:long": 0.9, "prompt:long": 0.9}
# the same for a later draft token once the ones before it stood (a copy goes on)
MORE_PRIOR = {"radix": 0.97, "history": 0.8, "prompt": 0.8, "forced": 0.8,
              "history:short": 0.6, "prompt:short": 0.6, "history:long": 0.9, "prompt:long": 0.9}
PRIOR_WEIGHT = 3.0      # pseudo-trials the source's estimate weighs in a request's posterior
REQ_DECAY = 0.85        # a request's earlier verify steps count this much less at each verify
SOURCE_DECAY = 0.97     # the same for the runtime's per-source estimate
SOURCE_FLOOR = 0.05     # the per-source estimate stays above this (new requests can still try)


def priors(evidence: str) -> tuple[float, float]:
    """(SOURCE_PRIOR, MORE_PRIOR) of a kind of draft (`speculative.Draft.evidence`); a
    kind without its own entries takes its source's (the part before ":")."""
    base = evidence.split(":", 1)[0]
    return (SOURCE_PRIOR.get(evidence, SOURCE_PRIOR.get(base, 0.5)),
            MORE_PRIOR.get(evidence, MORE_PRIOR.get(base, 0.8)))


def plain_features(prefix_lens: list[int]) -> list[float]:
    """(1, rows, keys / KEYS_UNIT) of a plain decode step of requests whose last token sits
    at `prefix_lens` (a row at position i attends to i + 1 keys)."""
    return [1.0, float(len(prefix_lens)), sum(p + 1 for p in prefix_lens) / KEYS_UNIT]


class StepCost:
    """What a step of n rows costs, in one-row steps (see the module docstring)."""

    def __init__(self) -> None:
        self.scale: float | None = None    # the first plain step's seconds: the fit's unit
        self.theta = [1.0, 0.0, 0.0]
        self.P = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
        self.plain_steps = 0
        self.rows: dict[int, float] = {}    # rows in a step -> its cost in one-row plain steps
        self.counts: dict[int, int] = {}

    # -- observations ----------------------------------------------------------------
    def observe(self, prefix_lens: list[int], draft_rows: int, seconds: float) -> None:
        """A decode step (`draft_rows` == 0) or a verify step of these requests (their last
        token at `prefix_lens`) with that many draft rows in all took `seconds`."""
        if seconds <= 0 or not prefix_lens:
            return
        if draft_rows == 0:
            self._fit(plain_features(prefix_lens), seconds)
        if not self.plain_steps:
            return
        n = len(prefix_lens) + draft_rows
        obs = seconds / self.one_row_seconds(prefix_lens)
        # from the current estimate (the interpolation or prior for a count never seen), a
        # step of its weight: one slow step (a first grammar mask, another process) must
        # not price a row count out for good, as no step of that count would then come
        # (a step is never faster than it costs: a fast one weighs more, a slow one is clipped)
        est = self.rows_cost(n)
        obs = min(obs, est * OUTLIER)
        self.rows[n] = est + (FAST_WEIGHT if obs < est else RATIO_WEIGHT) * (obs - est)
        self.counts[n] = self.counts.get(n, 0) + 1

    def _fit(self, x: list[float], seconds: float) -> None:
        """One recursive least-squares update (in units of the first step's seconds)."""
        if self.scale is None:
            self.scale = seconds
            self.theta = [1.0 - KEYS_PRIOR * x[2], 0.0, KEYS_PRIOR]
        pred = max(self._dot(x), 1e-6)
        y = min(max(seconds / self.scale, pred / OUTLIER), pred * OUTLIER)
        P = self.P
        px = [sum(P[i][j] * x[j] for j in range(3)) for i in range(3)]
        denom = FORGET + sum(x[i] * px[i] for i in range(3))
        gain = [v / denom for v in px]
        err = y - pred
        self.theta = [t + g * err for t, g in zip(self.theta, gain)]
        self.P = [[(P[i][j] - gain[i] * px[j]) / FORGET for j in range(3)] for i in range(3)]
        self.plain_steps += 1

    def one_row_seconds(self, prefix_lens: list[int]) -> float:
        """The plain fit's seconds for one row at these requests' mean context."""
        keys = sum(p + 1 for p in prefix_lens) / len(prefix_lens)
        return max(self._dot([1.0, 1.0, keys / KEYS_UNIT]), 0.05) * (self.scale or 1.0)

    # -- estimates ----------------------------------------------------------------------
    def rows_cost(self, n: int) -> float:
        """A step of n rows costs this many one-row plain steps: measured, else
        interpolated between the measured row counts around n (1 row: 1.0), else
        extrapolated from the last measured one at the mean cost per row so far."""
        got = self.rows.get(n)
        if got is not None:
            return got
        lo_n, lo = 1, 1.0
        for j in sorted(self.rows):
            if j > n and j > lo_n:
                return lo + (max(self.rows[j], lo) - lo) * (n - lo_n) / (j - lo_n)
            lo_n, lo = j, max(lo, self.rows[j])
        slope = (lo - 1.0) / (lo_n - 1) if lo_n > 1 else ROW_PRIOR
        return lo + slope * (n - lo_n)

    def ratio(self, rows: int, extra: int) -> float:
        """A step of `rows` + `extra` rows costs this many steps of `rows` rows."""
        return max(self.rows_cost(rows + extra) / self.rows_cost(rows), 1.0)

    def _dot(self, x: list[float]) -> float:
        return sum(t * v for t, v in zip(self.theta, x))


def prior_ratio(k: int) -> float:
    """What k more rows cost in plain steps before anything is measured."""
    return 1.0 + ROW_PRIOR * k


def expected_tokens(p: float, k: int, q: float | None = None) -> float:
    """Tokens a verify step of a k-token draft yields for its request: the accepted
    prefix and one more, when the first draft token stands with probability p and each
    later one, given the ones before it stood, with q (default p). Copies come in runs,
    so q is measured apart: after a right first token the next ones are right more often."""
    q = p if q is None else q
    if k <= 0:
        return 1.0
    run = float(k) if q >= 1.0 else (1.0 - q ** k) / (1.0 - q)   # 1 + q + ... + q^(k-1)
    return 1.0 + p * run


def choose_k(p: float, k_max: int, batch: int, ratio, q: float | None = None) -> int:
    """The draft length in 1..k_max that maximises a step's expected tokens per second,
    or 0 when none beats a plain step of the `batch` requests (one token each) by MIN_GAIN.
    `ratio(k)`: a step with k more rows costs that many plain steps; p, q: see
    `expected_tokens`."""
    best_k, best = 0, batch * MIN_GAIN
    for k in range(1, k_max + 1):
        rate = (batch - 1 + expected_tokens(p, k, q)) / ratio(k)
        if rate > best:
            best_k, best = k, rate
    return best_k


@dataclass
class Acceptance:
    """Verified drafts, decayed counts: first draft tokens (`hits` of `trials`) and the
    later ones, each given the ones before it stood (`more_hits` of `more_trials`)."""

    hits: float = 0.0
    trials: float = 0.0
    more_hits: float = 0.0
    more_trials: float = 0.0

    def record(self, drafted: int, accepted: int, decay: float) -> None:
        """A verify step of a `drafted`-token draft kept `accepted` of them (the tokens
        after the first rejected one were never asked)."""
        self.fade(decay)
        self.hits += accepted >= 1
        self.trials += 1
        if accepted >= 1 and drafted > 1:
            self.more_hits += accepted - 1
            self.more_trials += accepted - 1 + (accepted < drafted)

    def fade(self, decay: float) -> None:
        self.hits *= decay
        self.trials *= decay
        self.more_hits *= decay
        self.more_trials *= decay

    def rate(self, prior: float, weight: float = PRIOR_WEIGHT) -> float:
        """P(the first draft token stands), `prior` weighing `weight` trials."""
        return (self.hits + prior * weight) / (self.trials + weight)

    def rate_more(self, prior: float, weight: float = PRIOR_WEIGHT) -> float:
        """P(a later draft token stands | the ones before it did)."""
        return (self.more_hits + prior * weight) / (self.more_trials + weight)
