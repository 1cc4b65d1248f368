"""The engine: a background thread that owns the scheduler, the cache and the model.

Other threads talk to it only through its inbox (submit, abort, call); results flow back
through each request's event queue. Everything that touches KV bookkeeping runs on the
engine thread, so the radix cache and allocator need no locks.

Overlap (on CUDA): a step is launched, then the step before it is settled (its sampled
tokens read back and applied) while the GPU runs the new one. Requests that will surely go
on hold a placeholder for their token in flight, so the scheduler can put them in the next
step at once; the model reads the real token from the device. A request that turns out to
have stopped wastes that one step, whose KV slot its release frees. Requests with a
grammar run ahead too: their mask needs the token in flight, so a step that holds one
settles the step before it first (while the GPU runs the new forward), then samples.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import torch

from lmnb.errors import EngineError
from lmnb.runtime import run_ahead
from lmnb.runtime.cpu_threads import use_threads
from lmnb.runtime.guide_failure import request_error
from lmnb.runtime.device_sampling import DeviceSampler, SampledStep
from lmnb.runtime.model_runner import ModelRunner
from lmnb.runtime.output import OutputProcessor
from lmnb.runtime.request import Req, Status
from lmnb.runtime.results import StreamEvent
from lmnb.runtime.scheduler import ScheduledBatch, Scheduler
from lmnb.runtime.speculative import Drafter


class Engine:
    """One step reads: schedule -> run the model -> sample on the device -> (launch the
    next step when overlapping) -> settle on the host -> apply rollbacks and finishes."""

    def __init__(self, scheduler: Scheduler, runner: ModelRunner, sampler: DeviceSampler,
                 outputs: OutputProcessor, overlap: bool = False, drafter: Drafter | None = None,
                 cpu_threads: int | None = None) -> None:
        """`cpu_threads`: the intra-op threads a CPU engine's steps use (default: the
        caller's `torch.get_num_threads()`); see cpu_threads.py."""
        self.sched, self.runner, self.sampler, self.outputs = scheduler, runner, sampler, outputs
        self.overlap = overlap
        self.drafter = drafter   # speculative decoding: drafts for decode steps (None: off)
        scheduler.drafter = drafter
        if drafter is not None:
            outputs.on_verified = drafter.verified
        self._inflight: SampledStep | None = None   # launched, not yet settled
        self.inbox: queue.Queue = queue.Queue()
        self._held = threading.local()   # together(): this thread's queued messages
        self.reqs: dict[str, Req] = {}
        self.error: BaseException | None = None
        self.counters = dict(forward_steps=0, extend_steps=0, decode_steps=0, prefill_tokens=0,
                             decode_tokens=0, computed_tokens=0, max_batch_size=0,
                             finished_requests=0, aborted_requests=0, grammar_run_ahead_steps=0,
                             mixed_steps=0)
        self.history: deque = deque(maxlen=2048)   # (t_end, mode, tokens, seconds, rids)
        self._stop = False
        self._last_settle = 0.0
        self._cpu = runner.pool.device.type == "cpu"
        self._cpu_threads = cpu_threads or torch.get_num_threads()
        self.thread = threading.Thread(target=self._loop, name="lmnb-engine", daemon=True)
        self.thread.start()

    # -- called from any thread ----------------------------------------------
    def submit(self, req: Req) -> None:
        self.ensure_alive()
        self._put(("submit", req))

    def abort(self, rid: str) -> None:
        if self.thread.is_alive():
            self._put(("abort", rid))

    @contextlib.contextmanager
    def together(self):
        """Submissions (and aborts) this thread makes inside reach the engine as one
        message, in order, so the engine schedules them as one set: a batch's first steps
        then do not depend on how fast the caller submitted."""
        if getattr(self._held, "items", None) is not None:
            yield   # already inside
            return
        self._held.items = []
        try:
            yield
        finally:
            items, self._held.items = self._held.items, None
            if items:
                self.inbox.put(("many", items))

    def _put(self, item: tuple) -> None:
        held = getattr(self._held, "items", None)
        if held is not None:
            held.append(item)
        else:
            self.inbox.put(item)

    def call(self, fn, timeout: float | None = 60.0):
        """Run fn() on the engine thread between steps and return its result."""
        if not self.thread.is_alive():
            return fn()  # nothing runs concurrently any more
        fut: Future = Future()
        self.inbox.put(("call", (fn, fut)))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not fut.done():
            try:
                return fut.result(timeout=0.1)
            except FutureTimeout:
                if not self.thread.is_alive() and not fut.done():
                    return fn()  # the loop ended before it reached this call: nothing runs now
                if deadline is not None and time.monotonic() > deadline:
                    raise
        return fut.result()

    def stop(self) -> None:
        self._stop = True
        self.inbox.put(("wake", None))
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)

    def release(self) -> None:
        """After `stop`: drop everything the engine holds (model, pools, cache, graphs),
        so a stopped engine that is still referenced keeps no memory."""
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)
        if self.runner is not None:
            self.runner.release()
        self._inflight = None
        self.reqs.clear()
        self.history.clear()
        self.sched = self.runner = self.sampler = self.outputs = self.drafter = None

    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def ensure_alive(self) -> None:
        if self.error is not None:
            raise EngineError(f"the engine stopped after an error ({error_line(self.error)}); "
                              "load the model again (lm.Runtime(...) or %lm model ...)") from self.error
        if not self.thread.is_alive():
            raise EngineError("the runtime was shut down; create a new lm.Runtime(...)")

    # -- engine thread ---------------------------------------------------------
    def _loop(self) -> None:
        if self._cpu:
            use_threads(self._cpu_threads)
        try:
            while not self._stop:
                self._drain(block=not self.sched.has_work() and self._inflight is None)
                if self._stop:
                    break
                t0 = time.perf_counter()
                batch = self.sched.next_batch()
                if batch is not None:
                    self._step(batch, t0)
                elif self._inflight is not None:
                    self._settle()
                elif self.sched.has_work():
                    time.sleep(0.001)
        except BaseException as e:  # noqa: BLE001 - every waiting request must hear of it
            self.error = e = self.runner.explain_failure(e)   # e.g. which TP rank died
            self._fail_all(e)
        finally:
            self._abort_all_on_stop()

    def _drain(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=0.05) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(*item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, kind: str, arg) -> None:
        if kind == "many":
            for item in arg:
                self._handle(*item)
        elif kind == "submit":
            self.reqs[arg.rid] = arg
            self.sched.add(arg)
        elif kind == "abort":
            r = self.reqs.get(arg)
            if r is not None and not r.finished():
                self._finish(r, {"type": "abort"})
        elif kind == "call":
            fn, fut = arg
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - delivered to the caller
                fut.set_exception(e)

    def _step(self, batch: ScheduledBatch, t0: float | None = None) -> None:
        """Launch `batch` (scheduled from t0 on: its drafts' lookups are part of its
        cost), then settle the step launched before it (or this one at once)."""
        before = self._inflight
        t0 = time.perf_counter() if t0 is None else t0
        out = self.runner.run(batch, before.tokens if before is not None else None)
        # a request with a grammar that ran ahead needs its token of the step before in
        # its cursor before its mask: settle that step now, while the GPU runs this one's
        # forward, then sample. Rows whose request finished or whose output jump-forward
        # rewrote there are stale and not sampled (their release / rollback frees the
        # slot this step writes; later steps write after it on the stream).
        settle_first = before is not None and any(r.ahead and r.guide is not None for r in batch.reqs)
        skip: set[int] = set()
        if settle_first:
            self.counters["grammar_run_ahead_steps"] += 1
            versions = [r.output_version for r in batch.reqs]
            self._settle()
            skip = {i for i, (r, v) in enumerate(zip(batch.reqs, versions))
                    if r.finished() or r.output_version != v}
        step = self.sampler.sample(batch, out, skip)
        step.launched = t0
        self._count(batch, sum(batch.lens))
        if not batch.is_decode and batch.drafts is None:
            # share freshly computed prompts (and chunks) through the cache right away, so
            # requests admitted next step reuse them instead of computing them again (the
            # KV is still being written: later steps read it after this one on the stream)
            # (not a decode step with drafts: its drafts' KV is not theirs yet, and the
            # other requests' last token may be a run-ahead placeholder; nor riders, whose
            # last token may be one too)
            for r in batch.reqs[: len(batch.reqs) - batch.riders]:
                if r.status is Status.RUNNING and r.kv_len > r.cache_len:
                    self.sched.cache_progress(r)
        if before is not None and not settle_first:
            self._settle()
        self._inflight = step
        if self.overlap:
            run_ahead.hold(step.reqs, self.outputs.context_len,
                           self.drafter.stays_home if self.drafter is not None else None)
        else:
            self._settle()

    def _settle(self) -> None:
        step, self._inflight = self._inflight, None
        batch = step.batch
        accepted = self.drafter.counters["spec_accepted"] if self.drafter is not None else 0
        settled = self.outputs.settle(step)
        ntok = sum(batch.lens)
        if batch.drafts is not None:
            accepted = self.drafter.counters["spec_accepted"] - accepted
            self.counters["decode_tokens"] += accepted
            ntok = len(batch.reqs) + accepted   # the tokens it produced
        for r, keep in settled.rollbacks:    # before any finish caches the request's KV
            if not r.finished():
                self.sched.rollback(r, keep)
        for r, reason in settled.finished:
            self._finish(r, reason)
        for r, e in settled.failed:
            if not r.finished():
                self._finish(r, {"type": "abort"}, error=request_error(e))
        now = time.perf_counter()
        # with overlap a step's time is the time since the one before it was settled
        dt = now - max(step.launched, self._last_settle)
        self._last_settle = now
        mode = "decode" if batch.is_decode or batch.drafts is not None else "extend"
        self.history.append((time.time(), mode, ntok, dt, tuple(r.rid for r in batch.reqs)))
        if self.drafter is not None and mode == "decode":
            # what a draft row costs is measured on these steps (speculative.Drafter)
            self.drafter.observe_step(batch.prefix_lens, sum(batch.lens) - len(batch.reqs), dt)

    def _count(self, batch: ScheduledBatch, ntok: int) -> None:
        c = self.counters
        c["forward_steps"] += 1
        c["computed_tokens"] += ntok
        c["max_batch_size"] = max(c["max_batch_size"], len(batch.reqs))
        if batch.is_decode:
            c["decode_steps"] += 1
            c["decode_tokens"] += ntok
        elif batch.drafts is not None:   # a decode step with drafts: one token per request
            c["decode_steps"] += 1       # now, the accepted drafts once it settles
            c["decode_tokens"] += len(batch.reqs)
        else:
            c["extend_steps"] += 1
            c["prefill_tokens"] += ntok - batch.riders
            c["decode_tokens"] += batch.riders
            c["mixed_steps"] += bool(batch.riders)
        first_rider = len(batch.reqs) - batch.riders
        for i, (r, n) in enumerate(zip(batch.reqs, batch.lens)):
            r.computed_tokens += n
            if batch.is_decode or batch.drafts is not None or i >= first_rider:
                r.decode_steps += 1

    def _finish(self, r: Req, reason: dict, error: BaseException | None = None) -> None:
        """Free the request's slots and send its result (or `error`, for it alone)."""
        run_ahead.release(r)   # its token in flight will not be used
        if self.drafter is not None and r.status is not Status.FINISHED:
            self.drafter.finished(r)
        if r.status is Status.WAITING:
            self.sched.drop_waiting(r)
        else:
            self.sched.release(r)
        r.status = Status.FINISHED
        r.finish_reason = reason
        self.counters["finished_requests"] += 1
        if reason["type"] == "abort":
            self.counters["aborted_requests"] += 1
        self.reqs.pop(r.rid, None)
        if error is not None:
            r.events.put(StreamEvent("error", error=error))
            return
        r.events.put(StreamEvent("done", result=self.outputs.result(r)))

    def _fail_all(self, e: BaseException) -> None:
        err = EngineError(f"engine failure: {error_line(e)}; load the model again "
                          "(lm.Runtime(...) or %lm model ...)")
        err.__cause__ = e   # the traceback stays reachable (tests, logs, %tb)
        for r in list(self.reqs.values()):
            r.events.put(StreamEvent("error", error=err))
        self.reqs.clear()
        self._empty_inbox(err, run_calls=False)

    def _abort_all_on_stop(self) -> None:
        for r in list(self.reqs.values()):
            try:
                self._finish(r, {"type": "abort"})
            except Exception:  # noqa: BLE001 - shutting down; deliver what we can
                r.events.put(StreamEvent("done", result=self.outputs.result(r)))
        self.reqs.clear()
        self._empty_inbox(EngineError("the runtime was shut down"), run_calls=True)

    def _empty_inbox(self, err: Exception, run_calls: bool) -> None:
        """Answer what is still queued once the loop has ended: submissions get `err`;
        calls run (the state is quiescent) or get `err`."""
        while True:
            try:
                kind, arg = self.inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "submit":
                arg.events.put(StreamEvent("error", error=err))
            elif kind == "call":
                fn, fut = arg
                if not run_calls:
                    fut.set_exception(err)
                    continue
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - delivered to the caller
                    fut.set_exception(e)


def error_line(e: BaseException) -> str:
    """`Type: message` on one line (a user sees it in a cell; a traceback would not help)."""
    msg = " ".join("".join(traceback.format_exception_only(type(e), e)).split())
    return msg[:300]
