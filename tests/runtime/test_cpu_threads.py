"""A CPU runtime keeps its multi-threaded torch work on the engine thread: loading starts
no OpenMP team on the caller's thread (a second team would stop libgomp's workers from
spinning and slow every step, see lmnb/runtime/cpu_threads.py), and the engine's steps
use the caller's thread count. Run in a fresh interpreter with two intra-op threads, so
the test suite's own thread settings and earlier tests' teams do not count."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from lmnb.runtime.cpu_threads import serial_caller

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import os, torch
    import lmnb as lm
    torch.set_num_threads(2)
    tasks = lambda: len(os.listdir("/proc/self/task"))
    rt = lm.Runtime("dummy:tiny", device="cpu", max_total_tokens=256, speculative="off")
    out = rt.generate("a b c", max_new_tokens=4, temperature=0)[0]
    assert out["meta"]["completion_tokens"] == 4, out["meta"]
    engine_threads = rt.engine.call(torch.get_num_threads)
    before = tasks()
    torch.ones(1 << 22).sum()          # this thread's first multi-threaded op makes its team
    print("new_threads", tasks() - before, "engine_threads", engine_threads,
          "caller_threads", torch.get_num_threads())
    rt.shutdown()
""")


def test_load_starts_no_team_on_the_caller_and_steps_use_its_threads():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("new_threads")][-1].split()
    got = dict(zip(line[::2], map(int, line[1::2])))
    assert got == {"new_threads": 1, "engine_threads": 2, "caller_threads": 2}, (got, r.stderr[-2000:])


def test_serial_caller_restores_the_thread_count_and_leaves_cuda_alone():
    n = torch.get_num_threads()
    with serial_caller(torch.device("cpu")) as had:
        assert had == n and torch.get_num_threads() == 1
    assert torch.get_num_threads() == n
    with serial_caller(torch.device("cuda")) as had:
        assert had == n and torch.get_num_threads() == n
