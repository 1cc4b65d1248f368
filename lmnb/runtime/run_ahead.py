"""Run-ahead placeholders of overlapped steps, all in one place.

With overlap on, the engine launches step n+1 before it reads step n's tokens. A request
of step n that will surely go on gets a placeholder as its last output token, so the
scheduler can put it into step n+1 at once; the model reads the real token from the
device (row `ahead_row` of step n's sampled tokens). When step n settles, the
placeholder is replaced by the real token; when the request finishes first, it is dropped.

    hold(step_reqs, context_len)    after launching a step: mark who runs ahead
    release(r)                      the token has come (settle) or will not be used (finish)
    reads_device_token(r, end)      the model must take this request's input from the device
"""
from __future__ import annotations

from lmnb.runtime.request import Req, Status

PLACEHOLDER = -1   # an output token still being sampled on the device


def hold(reqs: list[Req], context_len: int, stays_home=None) -> None:
    """Give each request of a launched step (in row order) that will surely go on a
    placeholder. Requests that may be at their last token do not run ahead; nor do those
    whose next step may carry a speculative draft (`stays_home(r)`: a draft needs the
    real token). A request with a grammar does: the engine settles the step before
    sampling the next one, so its mask sees the token (engine.Engine._step)."""
    for row, r in enumerate(reqs):
        if (r.status is Status.RUNNING
                and len(r.output_ids) + 1 < r.params.max_new_tokens
                and r.fill_len + 1 < context_len
                and (stays_home is None or not stays_home(r))):
            r.output_ids.append(PLACEHOLDER)
            r.ahead, r.ahead_row = True, row


def release(r: Req) -> None:
    """Drop the placeholder, if the request holds one."""
    if r.ahead:
        r.output_ids.pop()
        r.ahead = False


def reads_device_token(r: Req, end: int) -> bool:
    """True when a step that computes r's tokens up to position `end` ends on the
    placeholder: its input id comes from the device."""
    return r.ahead and end == r.fill_len
