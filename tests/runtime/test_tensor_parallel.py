"""Tensor parallelism on the CPU (gloo, 2 processes): TP=2 greedy tokens equal TP=1 on
dummy SmolLM2-shaped weights; aborts, shutdown, garbage collection and a dying worker
leave no process behind and nothing hangs."""
from __future__ import annotations

import gc
import os
import signal
import time

import pytest
import torch

import lmnb as lm
from lmnb.errors import EngineError, LmnbError
from lmnb.runtime.distributed.protocol import JournalingReqToTokenPool, StepMessage, apply_writes
from lmnb.runtime.distributed.sharding import plan_shards, shard_tensor
from lmnb.runtime.memory import ReqToTokenPool
from lmnb.runtime.models.config import DUMMY_SHAPES, ModelConfig

SPEC = "dummy:smollm2-135m"          # 9 query heads / 3 KV heads: an uneven split over 2
OPTS = {"device": "cpu", "dtype": "float32", "max_total_tokens": 4096, "max_running_requests": 8}
SHARED = list(range(100, 148))        # a 48-token prefix several prompts share
PROMPTS_A = [SHARED + [7, 8, 9], list(range(300, 305)), SHARED[:20] + list(range(900, 930)), [5]]
PROMPTS_B = [SHARED + [11, 12], SHARED + [7, 8, 9, 10], list(range(300, 303)) + [1, 2]]
GEN = {"max_new_tokens": 6, "temperature": 0}


def alive(pid: int) -> bool:
    """A live (not zombie) process with this pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def _tokens(rt, prompts) -> list[list[int]]:
    return [r.output_ids for r in rt.generate(prompts, **GEN)]


# -- sharding and protocol (no processes) ---------------------------------------------
def test_plans_split_heads_by_kv_group():
    cfg = ModelConfig.from_hf(DUMMY_SHAPES["smollm2-135m"])
    p0, p1 = plan_shards(cfg, 2)
    assert (p0.q_heads, p0.kv_heads, p1.q_heads, p1.kv_heads) == ((0, 3), (0, 1), (3, 9), (1, 3))
    assert p0.inter == (0, 768) and p1.inter == (768, 1536)
    big = ModelConfig.from_hf(dict(DUMMY_SHAPES["llama3-8b"], num_attention_heads=64,
                                   num_key_value_heads=8, hidden_size=8192))
    plans = plan_shards(big, 8)
    assert [p.kv_heads for p in plans] == [(k, k + 1) for k in range(8)]
    assert all(p.num_heads == 8 for p in plans)
    rep = plan_shards(ModelConfig.from_hf(DUMMY_SHAPES["qwen2-0.5b"]), 14)   # 2 KV heads, 14 heads
    assert [p.kv_heads for p in rep] == [(0, 1)] * 7 + [(1, 2)] * 7
    assert [p.q_heads for p in rep][:2] == [(0, 1), (1, 2)]
    with pytest.raises(LmnbError, match="tp_size=3"):
        plan_shards(ModelConfig.from_hf(DUMMY_SHAPES["tiny"]), 3)


def test_shards_reassemble_the_full_weights():
    cfg = ModelConfig.from_hf(DUMMY_SHAPES["smollm2-135m"])
    plans = plan_shards(cfg, 2)
    d = cfg.head_dim
    full = {"model.layers.0.self_attn.q_proj.weight": torch.randn(9 * d, 576),
            "model.layers.0.self_attn.k_proj.weight": torch.randn(3 * d, 576),
            "model.layers.0.self_attn.o_proj.weight": torch.randn(576, 9 * d),
            "model.layers.0.mlp.up_proj.weight": torch.randn(1536, 576),
            "model.layers.0.mlp.down_proj.weight": torch.randn(576, 1536)}
    for name, t in full.items():
        parts = [shard_tensor(name, t, p, d) for p in plans]
        dim = 1 if ("o_proj" in name or "down_proj" in name) else 0
        assert torch.equal(torch.cat(parts, dim), t), name
    emb = torch.randn(10, 4)
    assert shard_tensor("model.embed_tokens.weight", emb, plans[1], d) is emb
    assert shard_tensor("lm_head.weight", emb, plans[1], d) is None
    assert shard_tensor("lm_head.weight", emb, plans[0], d) is emb


def test_step_message_round_trip_and_journal():
    rank0 = JournalingReqToTokenPool(4, 16, torch.device("cpu"))
    rank0.write(1, 0, torch.tensor([5, 6, 7]))
    rank0.write_many(torch.tensor([1, 2]), torch.tensor([3, 0]), torch.tensor([8, 9]))
    rank0.write(1, 1, torch.tensor([10]))          # rewrites position 1: the later write wins
    msg = StepMessage(False, False, [1, 2, 3, 4], torch.tensor([5, 6, 7, 8]), [1, 2], [0, 2], [3, 1], [3])
    header, body = msg.encode(rank0.take_writes())
    got, writes = StepMessage.decode(header, body)
    assert (got.is_decode, got.input_ids, got.req_pool_indices, got.prefix_lens, got.extend_lens,
            got.ahead_at) == (False, [1, 2, 3, 4], [1, 2], [0, 2], [3, 1], [3])
    assert torch.equal(got.out_cache_loc, msg.out_cache_loc)
    worker = ReqToTokenPool(4, 16, torch.device("cpu"))
    apply_writes(worker, writes)
    assert torch.equal(worker.table, rank0.table)
    assert rank0.take_writes()[2].numel() == 0


def test_bad_tp_sizes_fail_before_any_process_starts():
    for bad in (0, -1, "2", 2.0, True):
        with pytest.raises(LmnbError, match="tp_size"):
            lm.Runtime("dummy:tiny", device="cpu", tp_size=bad)
    with pytest.raises(LmnbError, match="KV heads"):
        lm.Runtime("dummy:tiny", device="cpu", tp_size=3)


# -- two processes ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    rt = lm.Runtime(SPEC, **OPTS)
    out = (_tokens(rt, PROMPTS_A), _tokens(rt, PROMPTS_B))
    rt.shutdown()
    return out


@pytest.fixture(scope="module")
def tp2():
    rt = lm.Runtime(SPEC, tp_size=2, **OPTS)
    yield rt
    rt.shutdown()


def test_tp2_greedy_tokens_equal_tp1(reference, tp2):
    assert len(tp2.engine.runner.worker_pids) == 1
    assert _tokens(tp2, PROMPTS_A) == reference[0]
    hits = tp2.cache_stats()["hit_tokens"]
    assert _tokens(tp2, PROMPTS_B) == reference[1]
    assert tp2.cache_stats()["hit_tokens"] > hits + len(SHARED)   # the shared prefix was reused
    tp2.check_integrity()


def test_tp2_aborts_mid_generation(tp2):
    long = [tp2.submit(SHARED + [i], stream=True, max_new_tokens=400, temperature=0) for i in range(3)]
    next(iter(long[0]))                       # generation is under way
    for h in long:
        h.abort()
    results = [h.result() for h in long]
    assert all(r.meta.finish_reason == "abort" for r in results)
    assert all(len(r.output_ids) < 400 for r in results)
    assert len(_tokens(tp2, [[1, 2, 3]])[0]) == GEN["max_new_tokens"]   # still in step
    tp2.check_integrity()
    assert tp2.cache_stats()["running"] == 0


def test_shutdown_leaves_no_worker(tp2):
    pids = tp2.engine.runner.worker_pids
    assert pids and all(alive(p) for p in pids)
    tp2.shutdown()
    assert wait_gone(pids, timeout=5) == []
    with pytest.raises(EngineError):
        tp2.generate([1, 2], max_new_tokens=2)
    tp2.shutdown()   # idempotent


def test_garbage_collected_runtime_leaves_no_worker():
    rt = lm.Runtime("dummy:tiny", tp_size=2, **OPTS)
    assert len(rt.generate([[1, 2, 3]], **GEN)[0].output_ids) == GEN["max_new_tokens"]
    pids = rt.engine.runner.worker_pids
    del rt
    gc.collect()
    assert wait_gone(pids) == []


def test_dying_worker_is_one_line_engine_error():
    rt = lm.Runtime("dummy:tiny", tp_size=2, **OPTS)
    try:
        pid = rt.engine.runner.worker_pids[0]
        h = rt.submit([1, 2, 3], stream=True, max_new_tokens=2000, temperature=0, ignore_eos=True)
        it = iter(h)
        next(it)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(EngineError) as err:
            h.result()
        assert time.monotonic() - t0 < 30
        msg = str(err.value)
        assert "\n" not in msg and "tensor-parallel rank 1" in msg, msg
        with pytest.raises(EngineError):
            rt.submit([1, 2], max_new_tokens=2)
    finally:
        rt.shutdown()
    assert wait_gone([pid], timeout=5) == []


def test_lm_model_magic_passes_tp():
    """`%lm model SPEC --tp N` reaches Runtime(tp_size=N) (here a split that cannot work,
    so nothing is spawned); --tp with another command is refused in one line."""
    from IPython.core.interactiveshell import InteractiveShell

    from lmnb.magics.errors import CellError
    from lmnb.magics.lm_magics import LmMagics
    from lmnb.magics.session import KernelSession

    sh = InteractiveShell.instance()
    sh.register_magics(LmMagics(sh, session=KernelSession()))
    with pytest.raises(CellError) as e:                 # the cell fails with its one line
        sh.run_line_magic("lm", "model dummy:tiny --tp 3")
    msg = str(e.value)
    assert "tp_size=3" in msg and "KV heads" in msg and "\n" not in msg, msg
    with pytest.raises(CellError, match="--tp N goes with %lm model SPEC"):
        sh.run_line_magic("lm", "status --tp 2")
