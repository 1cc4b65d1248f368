"""Turns a ScheduledBatch into a ForwardBatch, runs the model, and says which logits row
belongs to which request position. Decode batches and small extends on CUDA replay CUDA
graphs (`cuda_graph.DecodeGraphRunner`) when the attention backend supports them;
everything else runs eagerly."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from lmnb.runtime.attention.base import AttentionBackend
from lmnb.runtime.cuda_graph import DecodeGraphRunner, cuda_graph_enabled
from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.memory import KVPool, ReqToTokenPool
from lmnb.runtime.multimodal import VisionRunner
from lmnb.runtime.run_ahead import reads_device_token
from lmnb.runtime.sampler import to_device
from lmnb.runtime.scheduler import ScheduledBatch

# extends of at most this many tokens (a re-run whose last line changed, the forced
# tokens of jump-forward) replay the decode graphs, one row per token, when a graph that
# large exists: no eager launches. Measured on an H100 with 16 jump-forward requests over
# 3k-token documents (~160 rows): jump-forward speedup 1.20x at 32, 1.39x at 256.
GRAPH_EXTEND_TOKENS = int(os.environ.get("LMNB_GRAPH_EXTEND_TOKENS", "256"))


@dataclass
class StepOutput:
    logits: torch.Tensor              # [rows, V] fp32
    sample_rows: dict[int, int]       # batch index -> row of its last position
    logprob_rows: dict[int, tuple[int, int, int]]  # batch index -> (first row, first pos, count)
    # speculative: batch index -> first of its 1 + len(draft) consecutive rows (the last
    # token's position, then every draft token's)
    draft_rows: dict[int, int] = field(default_factory=dict)


@dataclass
class StepLayout:
    """The host side of one step: its input ids (0 where a request reads its token from
    the device), the hidden-state rows whose logits are needed, and who reads what."""

    input_ids: list[int]
    rows: list[int]                   # hidden-state rows whose logits are computed, in order
    ahead_at: list[int]               # input positions filled from the step before's tokens
    ahead_src: list[int]              # ... and the rows of those tokens
    sample_rows: dict[int, int]
    logprob_rows: dict[int, tuple[int, int, int]]
    draft_rows: dict[int, int] = field(default_factory=dict)   # see StepOutput.draft_rows


def step_layout(sb: ScheduledBatch) -> StepLayout:
    """What the model runs for `sb` and which logits rows go to which request."""
    lay = StepLayout([], [], [], [], {}, {})
    input_ids, rows = lay.input_ids, lay.rows
    tok_off = 0
    for i, (r, n, pre) in enumerate(zip(sb.reqs, sb.lens, sb.prefix_lens)):
        d = sb.drafts[i] if sb.drafts is not None else None
        if d is not None:   # its last token, then the draft: logits at every position
            input_ids += r.fill_slice(pre, pre + 1) + d.tokens
            lay.draft_rows[i] = len(rows)
            rows += range(tok_off, tok_off + n)
            tok_off += n
            continue
        input_ids += r.fill_slice(pre, pre + n)
        if reads_device_token(r, pre + n):
            input_ids[-1] = 0
            lay.ahead_at.append(tok_off + n - 1)
            lay.ahead_src.append(r.ahead_row)
        lp_from = r.logprob_from
        if lp_from >= 0:  # prompt positions whose next-token logprob is wanted
            lo, hi = max(lp_from, pre), min(len(r.input_ids) - 1, pre + n)
            if hi > lo:
                lay.logprob_rows[i] = (len(rows), lo, hi - lo)
                rows += range(tok_off + lo - pre, tok_off + hi - pre)
        if pre + n == r.fill_len:
            lay.sample_rows[i] = len(rows)
            rows.append(tok_off + n - 1)
        tok_off += n
    return lay


def split_sampled_rows(lens: list[int], rows: list[int], exact_rows: int | None
                       ) -> tuple[list[int], list[int]] | None:
    """(body lens, tail) for an extend step that is run as two forwards, or None.

    A step of `exact_rows` rows or more (cpu_linear.DENSE_ROWS) computes its rows in a
    way that depends on the step; a re-run of a cached prompt computes that prompt's last
    row alone. So such a step is run as its body (every request's rows but the last of
    each request whose last row is sampled; `body lens` per request, 0 when nothing is
    left) and then its tail (those last rows: the batch indices), fewer than exact_rows
    rows that each come out as they would alone."""
    if exact_rows is None or sum(lens) < exact_rows:
        return None
    wanted, tail, acc = set(rows), [], 0
    for i, n in enumerate(lens):
        acc += n
        if acc - 1 in wanted:
            tail.append(i)
    tails = set(tail)
    body = [n - 1 if i in tails else n for i, n in enumerate(lens)]
    if not tail or len(tail) >= exact_rows or not any(body):
        return None
    return body, tail


def graph_sized(is_decode: bool, num_tokens: int) -> bool:
    """Whether a step of this kind may replay a decode graph (if one that large exists)."""
    return is_decode or num_tokens <= GRAPH_EXTEND_TOKENS


def replay_positions(is_decode: bool, prefix_lens: list[int], lens: list[int],
                     req_rows: list[int]) -> tuple[list[int], list[int]]:
    """(positions, table rows) of a step run as decode rows, one per new token."""
    if is_decode:
        return list(prefix_lens), list(req_rows)
    positions = [p for pre, n in zip(prefix_lens, lens) for p in range(pre, pre + n)]
    rows = [r for r, n in zip(req_rows, lens) for _ in range(n)]
    return positions, rows


class ModelRunner:
    """`cuda_graph`: None follows `LMNB_CUDA_GRAPH` (default on); graphs are captured at
    the first decode step, for batch sizes up to the req_to_token table's request count."""

    def __init__(self, model, backend: AttentionBackend, pool: KVPool, req_pool: ReqToTokenPool,
                 cuda_graph: bool | None = None, exact_rows: int | None = None) -> None:
        self.model, self.backend, self.pool, self.req_pool = model, backend, pool, req_pool
        self.exact_rows = exact_rows   # see split_sampled_rows (None: steps are not split)
        wanted = cuda_graph_enabled() if cuda_graph is None else cuda_graph
        self.cuda_graph = (wanted and req_pool.table.is_cuda
                           and hasattr(backend, "init_forward_graph"))
        self.graphs: DecodeGraphRunner | None = None
        self.vision = VisionRunner(model) if hasattr(model, "encode_images") else None

    def run(self, sb: ScheduledBatch, ahead_tokens: torch.Tensor | None = None) -> StepOutput:
        """Launch the step. Requests that run ahead (their last token is a placeholder)
        read it from `ahead_tokens`, the device tokens of the step before, at `ahead_row`."""
        lay = step_layout(sb)
        input_ids, rows, ahead_at, ahead_src = lay.input_ids, lay.rows, lay.ahead_at, lay.ahead_src
        sample_rows, logprob_rows, draft_rows = lay.sample_rows, lay.logprob_rows, lay.draft_rows
        fill = None
        if ahead_at:
            if ahead_tokens is None:
                raise RuntimeError("a request runs ahead but the step before sampled nothing")
            dev = self.req_pool.table.device
            fill = (to_device(ahead_at, dev), ahead_tokens[to_device(ahead_src, dev)])
        images = None
        if self.vision is not None and not sb.is_decode:
            images = self.vision.plan(sb.reqs, sb.lens, sb.prefix_lens, input_ids)
        if images is None and graph_sized(sb.is_decode, len(input_ids)) and \
                self._graph_ready(len(input_ids)):
            return StepOutput(self._replay(sb, input_ids, rows, fill), sample_rows, logprob_rows,
                              draft_rows)
        mode = Mode.DECODE if sb.is_decode else Mode.EXTEND
        split = (split_sampled_rows(sb.lens, rows, self.exact_rows)
                 if mode is Mode.EXTEND and images is None and fill is None else None)
        if split is not None:
            return StepOutput(self._run_split(sb, input_ids, rows, *split), sample_rows,
                              logprob_rows, draft_rows)
        fb = ForwardBatch.build(mode, input_ids, [r.req_pool_idx for r in sb.reqs], sb.prefix_lens,
                                sb.lens, sb.out_cache_loc, self.req_pool.table, rows)
        if fill is not None:
            fb.input_ids[fill[0]] = fill[1]
        fb.embed_override = images
        logits = self.model(fb, self.backend, self.pool)
        return StepOutput(logits, sample_rows, logprob_rows, draft_rows)

    def _run_split(self, sb: ScheduledBatch, input_ids: list[int], rows: list[int],
                   body: list[int], tail: list[int]) -> torch.Tensor:
        """The step as its body, then its tail (split_sampled_rows): the logits of `rows`,
        in order, each from the forward that computed its row."""
        starts = [sum(sb.lens[:i]) for i in range(len(sb.lens))]
        reqs, table = [r.req_pool_idx for r in sb.reqs], self.req_pool.table
        b_req = [i for i, n in enumerate(body) if n]
        b_src = [j for i in b_req for j in range(starts[i], starts[i] + body[i])]   # step rows
        last = [starts[i] + sb.lens[i] - 1 for i in tail]
        in_body = {j: k for k, j in enumerate(b_src)}
        in_tail = {j: k for k, j in enumerate(last)}
        b_rows = [in_body[j] for j in rows if j in in_body]
        pick, nb, seen_b = [], len(b_rows), 0   # where each wanted row lands in cat(body, tail)
        for j in rows:
            if j in in_body:
                pick.append(seen_b)
                seen_b += 1
            else:
                pick.append(nb + in_tail[j])
        fb = ForwardBatch.build(Mode.EXTEND, [input_ids[j] for j in b_src], [reqs[i] for i in b_req],
                                [sb.prefix_lens[i] for i in b_req], [body[i] for i in b_req],
                                sb.out_cache_loc[b_src], table, b_rows)
        body_logits = self.model(fb, self.backend, self.pool)
        fb = ForwardBatch.build(Mode.EXTEND, [input_ids[j] for j in last], [reqs[i] for i in tail],
                                [sb.prefix_lens[i] + sb.lens[i] - 1 for i in tail], [1] * len(tail),
                                sb.out_cache_loc[last], table, list(range(len(tail))))
        tail_logits = self.model(fb, self.backend, self.pool)
        return torch.cat([body_logits, tail_logits])[torch.tensor(pick)]

    def counters(self) -> dict:
        """Image counters (zeros for text-only models)."""
        if self.vision is None:
            return {"images_encoded": 0, "image_tokens_computed": 0, "vision_batches": 0}
        return dict(self.vision.counters)

    def _replay(self, sb: ScheduledBatch, input_ids: list[int], rows: list[int],
                fill: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Every new token as one decode row: its request's table row, length = its
        position + 1 (its causal window). The step's KV is stored before attention
        reads it, so a few-token extend is exactly a decode of that many rows."""
        positions, req_rows = replay_positions(sb.is_decode, sb.prefix_lens, sb.lens,
                                               [r.req_pool_idx for r in sb.reqs])
        logits = self.graphs.replay(input_ids, positions, sb.out_cache_loc, req_rows, fill)
        if len(rows) == len(input_ids) and rows == list(range(len(rows))):
            return logits
        return logits[to_device(rows, logits.device)]

    def explain_failure(self, e: BaseException) -> BaseException:
        """The error to report for one that stopped the engine (a tensor-parallel runner
        names the worker that died behind it); here, the error itself."""
        return e

    def release(self) -> None:
        """Drop the model, the KV pool and the captured graphs (their memory pool too)."""
        if self.graphs is not None:
            self.graphs.release()
        self.graphs = self.model = self.backend = self.pool = self.req_pool = None
        self.cuda_graph = False
        if self.vision is not None:
            self.vision.model = None

    def _graph_ready(self, bs: int) -> bool:
        if not self.cuda_graph:
            return False
        if self.graphs is None:
            self.graphs = DecodeGraphRunner(self.model, self.backend, self.pool,
                                            self.req_pool.table, max(1, self.req_pool.max_reqs - 1),
                                            self.req_pool.max_context)
        return self.graphs.can_run(bs)
