"""The cost-aware draft policy (draft_cost.py and the Drafter's use of it), as pure logic:
measured step costs, acceptance estimates, the chosen draft length, pauses after misses."""
from __future__ import annotations

import pytest

from lmnb.runtime import draft_cost
from lmnb.runtime.draft_cost import Acceptance, StepCost, choose_k, expected_tokens
from lmnb.runtime.request import Req
from lmnb.runtime.sampling_params import SamplingParams
from lmnb.runtime.speculative import MAX_PAUSE, PAUSE_AFTER, PAUSE_STEPS, Drafter


def _cost(per_row: float, steps: int = 40, ctx: int = 100, rows=range(1, 9)) -> StepCost:
    """A StepCost fed steps whose seconds are 10 ms * (1 + per_row * (rows - 1))."""
    c = StepCost()
    for _ in range(steps):
        c.observe([ctx], 0, 0.010)
        for n in rows:
            if n > 1:
                c.observe([ctx], n - 1, 0.010 * (1 + per_row * (n - 1)))
    return c


def test_step_cost_learns_the_row_costs_and_interpolates():
    c = _cost(0.2, rows=(1, 3, 9))
    assert c.rows_cost(1) == pytest.approx(1.0, rel=0.02)
    assert c.rows_cost(3) == pytest.approx(1.4, rel=0.02)
    assert c.rows_cost(9) == pytest.approx(2.6, rel=0.02)
    assert c.rows_cost(6) == pytest.approx(2.0, rel=0.02)      # between 3 and 9
    assert c.rows_cost(13) == pytest.approx(3.4, rel=0.02)     # past 9: 0.2 per row
    assert c.ratio(3, 6) == pytest.approx(2.6 / 1.4, rel=0.02)
    fresh = StepCost()                                          # nothing measured: the prior
    assert fresh.ratio(1, 4) == pytest.approx(1 + 4 * draft_cost.ROW_PRIOR)


def test_step_cost_clips_a_preempted_step():
    c = _cost(0.1)
    before = c.rows_cost(5)
    c.observe([100], 4, 10.0)                                   # 1000x: another process ran
    assert c.rows_cost(5) < before * (1 + draft_cost.RATIO_WEIGHT * draft_cost.OUTLIER)


def test_the_plain_fit_follows_the_context():
    c = StepCost()
    for _ in range(60):
        for ctx in (10, 500, 1000, 2000):
            c.observe([ctx], 0, 0.004 + 0.004 * ctx / 1000)
    one = c.one_row_seconds
    assert one([2000]) == pytest.approx(0.012, rel=0.05)
    assert one([10]) == pytest.approx(0.004, rel=0.1)


def test_choose_k_weighs_acceptance_against_cost():
    def cheap(k):   # a GPU at batch 1
        return 1 + 0.01 * k

    def dear(k):    # a 2-core CPU at a 1k-token context
        return 1 + 0.25 * k

    assert choose_k(1.0, 14, 1, dear) == 14          # a re-run: every token stands
    assert choose_k(0.1, 14, 1, dear) == 0           # free-form text: never pays
    assert choose_k(0.1, 14, 1, cheap) > 0           # ... unless rows are nearly free
    mid = choose_k(0.7, 14, 1, dear)
    assert 1 <= mid < 14                              # a likely copy: a short draft
    assert choose_k(0.9, 14, 1, dear) >= mid
    # the best k is the argmax of expected tokens per unit cost
    best = max(range(1, 15), key=lambda k: expected_tokens(0.7, k) / dear(k))
    assert mid == best
    assert expected_tokens(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tokens(1.0, 3) == 4.0
    assert expected_tokens(0.5, 3, q=0.9) == pytest.approx(1 + 0.5 * (1 + 0.9 + 0.81))
    # a copy that goes on once begun (q high) is worth a longer draft at the same p
    assert choose_k(0.5, 14, 1, dear, q=0.95) > choose_k(0.5, 14, 1, dear) >= 1


def test_acceptance_decays_toward_the_prior():
    a = Acceptance()
    for _ in range(12):
        a.record(4, 0, draft_cost.REQ_DECAY)      # first token wrong every time
    assert a.rate(0.5) < 0.2 and a.rate_more(0.8) == pytest.approx(0.8)   # nothing known of later ones
    for _ in range(30):
        a.fade(0.9)   # idle: the evidence fades
    assert a.rate(0.5) > 0.45
    b = Acceptance()
    for _ in range(12):
        b.record(4, 3, draft_cost.REQ_DECAY)      # first right, then 2 of 3 later ones
    assert b.rate(0.5) > 0.8 and b.rate_more(0.8) == pytest.approx(2 / 3, abs=0.05)


class _Cache:
    """A radix cache stand-in: continuation() gives `after(len(key), n)` (nothing by default)."""

    disabled = False

    def __init__(self, after=None) -> None:
        self.after = after or (lambda at, n: [])

    def continuation(self, key, n, node=None):
        return self.after(len(key), n)


def _req(prompt: list[int], new: int = 300) -> Req:
    return Req("r", list(prompt), SamplingParams.make(temperature=0, max_new_tokens=new))


def _run(drafter: Drafter, r: Req, steps: int, truth, cost=None) -> tuple[int, int]:
    """Decode `steps` steps of r with `truth(i)` as the model's i-th output token; every
    verify step is reported with `cost(draft rows)` seconds, plain steps with 10 ms.
    Returns (draft rows verified, steps that carried a draft)."""
    rows = drafted_steps = 0
    for _ in range(steps):
        d = drafter.drafts([r])[0]
        n, last = len(r.output_ids), r.fill_len - 1
        if d is None:
            r.output_ids.append(truth(n))
            drafter.observe_step([last], 0, 0.010)
            continue
        a = 0
        while a < len(d.tokens) and d.tokens[a] == truth(n + a):
            a += 1
        r.output_ids += [truth(n + j) for j in range(a + 1)]
        drafter.verified(r, len(d.tokens), a, d.source)
        drafter.observe_step([last], len(d.tokens), (cost or (lambda k: 0.010 * (1 + 0.25 * k)))(len(d.tokens)))
        rows += len(d.tokens)
        drafted_steps += 1
    return rows, drafted_steps


def test_drafts_that_never_hit_cost_almost_nothing():
    """A request whose prompt lookups always miss: after a few tries it stops drafting
    (pauses that double), so it verifies few rows over hundreds of steps."""
    doc = list(range(100, 500))   # every token once: each output token is a rare key
    r = _req(doc)
    d = Drafter(_Cache(), k=8)
    # the model says doc tokens in another order: each lookup drafts the token after the
    # last one in the document, and that is never the model's next token
    rows, steps = _run(d, r, 300, truth=lambda i: 100 + (7 * i) % 400)
    # (one-token matches start from the short-match prior, so most lookups are turned down
    # for cost and only probed now and then: about one verify step in 17, 0.08 rows a step)
    assert steps <= 20 and rows <= 30, (steps, rows)
    assert r.spec.pause > PAUSE_STEPS   # it backed off more than once
    assert d.counters["spec_skipped"] + r.spec.paused > 0


def test_a_copying_request_drafts_long_and_a_rerun_drafts_the_most():
    doc = list(range(100, 1100))
    r = _req(doc + doc[:5])
    d = Drafter(_Cache(), k=8, exact_rows=16)
    rows, steps = _run(d, r, 40, truth=lambda i: doc[5 + i])   # the model copies the document
    assert rows / steps >= 6, (rows, steps)                     # long drafts once they stand
    assert r.spec.accepted == r.spec.drafted
    # a re-run: the cached continuation stands every time, so once that is seen the drafts
    # are as long as the verify step stays exact (exact_rows - 2 draft rows at batch 1)
    d2 = Drafter(_Cache(lambda at, n: list(range(500 + at - 3, 500 + at - 3 + n))), k=8, exact_rows=16)
    _run(d2, _req([1, 2, 3]), 4, truth=lambda i: 500 + i)
    draft = d2.drafts([_req([1, 2, 3])])[0]
    assert draft.source == "radix" and len(draft.tokens) == 14


def test_the_same_acceptance_drafts_on_cheap_rows_only():
    """A quarter of the draft tokens stand: worth a draft when rows are nearly free, not
    when each costs a third of a step."""
    def truth(i):
        return 1000 + i

    def after(at, n):   # a cached continuation right at every 4th position only
        i = at - 3
        return [truth(i + j) if (i + j) % 4 == 0 else 7 for j in range(n)]

    steps = {}
    for name, per_row in (("cheap", 0.01), ("dear", 0.35)):
        r = _req([1, 2, 3])
        d = Drafter(_Cache(after), k=8)
        d.cost = _cost(per_row, rows=range(1, 10))
        steps[name] = _run(d, r, 200, truth, cost=lambda k, p=per_row: 0.010 * (1 + p * k))[1]
    assert steps["cheap"] > 3 * max(steps["dear"], 1), steps


def test_pauses_double_up_to_the_limit():
    r = _req([5] * 10)
    d = Drafter(_Cache(), k=8)
    d.verified(r, 2, 2, "prompt")
    st, pauses = r.spec, []
    for _ in range(PAUSE_AFTER * 8):
        d.verified(r, 2, 0, "prompt")
        if st.paused:
            pauses.append(st.paused)
            st.paused = 0
    assert pauses[:3] == [PAUSE_STEPS, 2 * PAUSE_STEPS, 4 * PAUSE_STEPS]
    assert max(pauses) == MAX_PAUSE
    d.verified(r, 2, 1, "prompt")   # an accepted token: the next pause is short again
    assert st.pause == PAUSE_STEPS and st.misses == 0


def test_a_cost_estimate_made_too_dear_is_measured_again():
    """One stalled step priced every draft out (rows look 50x a plain step): drafts that
    are turned down PROBE_SKIPPED times in a row get a probe at the prior's cost, whose
    real cost brings the estimate back, and a re-run drafts long again."""
    from lmnb.runtime.speculative import PROBE_SKIPPED

    d = Drafter(_Cache(lambda at, n: list(range(500 + at - 3, 500 + at - 3 + n))), k=8, exact_rows=16)
    d.cost = _cost(0.1, rows=range(1, 16))
    for n in range(2, 17):
        d.cost.rows[n] = 50.0
    r = _req([1, 2, 3])
    rows, steps = _run(d, r, 3 * PROBE_SKIPPED, truth=lambda i: 500 + i,
                       cost=lambda k: 0.010 * (1 + 0.1 * k))
    assert steps >= 2 and rows >= 20, (rows, steps)
    assert d.cost.rows_cost(15) < 50.0 * 0.6


def test_lookup_drafts_are_priced_by_how_much_context_they_matched():
    """A one-token match, a 3-15-token one and a longer one are separate kinds of evidence:
    misses of short matches do not make long matches look bad, and each starts from its
    own prior."""
    from lmnb.runtime.draft_cost import SOURCE_PRIOR, priors
    from lmnb.runtime.speculative import Draft

    assert Draft([1], "prompt", match=1).evidence == "prompt:short"
    assert Draft([1], "history", match=5).evidence == "history"
    assert Draft([1], "prompt", match=40).cut(1).evidence == "prompt:long"
    assert Draft([1], "radix").evidence == "radix"
    assert priors("prompt:short")[0] < priors("prompt")[0] < priors("prompt:long")[0]
    assert priors("forced") == (SOURCE_PRIOR["forced"], 0.8)
    d = Drafter(_Cache(), k=8)
    r = _req(list(range(100, 200)))
    for _ in range(6):
        d.verified(r, 3, 0, "prompt", "prompt:short")
    p_short, _ = d.acceptance(r, "prompt:short")
    p_long, _ = d.acceptance(r, "prompt:long")
    assert p_short < 0.2 and p_long == pytest.approx(SOURCE_PRIOR["prompt:long"])
    assert d.counters["spec_prompt_drafts"] == 6   # the counters stay per source
