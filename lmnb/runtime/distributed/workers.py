"""Rank 0's handle on its worker processes: spawn, start-up handshake, liveness, stop.

Workers are spawned (not forked: the user's process has threads and maybe CUDA) as daemon
processes, each with a one-way pipe for its start-up stages and its last error. A watchdog
thread waits on their sentinels; a worker that exits while the runtime runs is recorded
(and on NCCL the device group is aborted, so collectives in flight fail instead of
hanging). `stop` asks politely (STOP message), then terminates, then kills: after it no
worker process is left.
"""
from __future__ import annotations

import threading
import time
from multiprocessing.connection import wait

import torch.multiprocessing as mp

from lmnb.errors import EngineError, LmnbError
from lmnb.runtime.distributed.comm import multicast_off
from lmnb.runtime.distributed.worker import WorkerArgs, worker_main

START_TIMEOUT = 600.0   # seconds for a worker to import, join and load its shard


class WorkerGroup:
    def __init__(self, args: list[WorkerArgs]) -> None:
        multicast_off()   # inherited by the spawned workers from their first instruction
        ctx = mp.get_context("spawn")
        self.procs, self.conns, self.errors = [], [], {}
        self.stopping = False
        self.died: tuple[int, int | None] | None = None   # (rank, exit code) of a lost worker
        self.on_death = None
        for a in args:
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=worker_main, args=(a, send), daemon=True, name=f"lmnb-tp-rank{a.rank}")
            p.start()
            send.close()
            self.procs.append(p)
            self.conns.append(recv)
        self._watch = threading.Thread(target=self._watchdog, name="lmnb-tp-watchdog", daemon=True)
        self._watch.start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    # -- start-up ---------------------------------------------------------------
    def expect(self, stage: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until every worker reported `stage`; a one-line LmnbError if one failed."""
        waiting = set(range(len(self.procs)))
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LmnbError(f"tensor-parallel workers did not reach '{stage}' within {timeout:.0f} s")
            for i in list(waiting):
                if self.conns[i].poll():
                    msg = self._recv(i)
                    if msg == stage:
                        waiting.discard(i)
                    elif isinstance(msg, tuple):
                        raise LmnbError(f"tensor-parallel rank {i + 1} failed to start ({msg[1]})")
                elif not self.procs[i].is_alive():
                    raise LmnbError(f"tensor-parallel rank {i + 1} exited during start-up "
                                    f"(exit code {self.procs[i].exitcode}){self._error_of(i)}")
            if waiting:
                wait([self.conns[i] for i in waiting] + [self.procs[i].sentinel for i in waiting],
                     timeout=min(left, 1.0))

    def _recv(self, i: int):
        try:
            msg = self.conns[i].recv()
        except (EOFError, OSError):
            return None
        if isinstance(msg, tuple) and msg and msg[0] == "error":
            self.errors[i] = msg[1]
        return msg

    def _error_of(self, i: int) -> str:
        while self.conns[i].poll():
            if self._recv(i) is None:
                break
        return f": {self.errors[i]}" if i in self.errors else ""

    # -- liveness ---------------------------------------------------------------
    def _watchdog(self) -> None:
        sentinels = {p.sentinel: i for i, p in enumerate(self.procs)}
        try:
            ready = wait(list(sentinels))
        except (OSError, ValueError):   # closed by stop()
            return
        if self.stopping or not ready:
            return
        i = sentinels[ready[0]]
        self.died = (i + 1, self.procs[i].exitcode)
        if self.on_death is not None:
            self.on_death()

    def check(self) -> None:
        """Raise a one-line EngineError if a worker has gone."""
        for i, p in enumerate(self.procs):
            if not p.is_alive():
                self.died = self.died or (i + 1, p.exitcode)
        if self.died is not None:
            raise self.lost_error()

    def lost_error(self, cause: BaseException | None = None) -> EngineError:
        rank, code = self.died if self.died else (None, None)
        if rank is None:
            from lmnb.runtime.engine import error_line

            return EngineError(f"a tensor-parallel collective failed ({error_line(cause)})")
        return EngineError(f"tensor-parallel rank {rank} exited (exit code {code})"
                           f"{self._error_of(rank - 1)}")

    def wait_for_death(self, timeout: float) -> bool:
        """After a collective failed: give a dying worker a moment to be seen as dead."""
        wait([p.sentinel for p in self.procs], timeout=timeout)
        for i, p in enumerate(self.procs):
            if p.exitcode is not None:
                self.died = self.died or (i + 1, p.exitcode)
        return self.died is not None

    # -- stop ---------------------------------------------------------------------
    def all_alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def stop(self, grace: float = 10.0) -> None:
        """Wait for the workers (after STOP was sent), then terminate / kill what is left."""
        self.stopping = True
        deadline = time.monotonic() + grace
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._watch.join(timeout=5)   # it wakes once a worker has exited
        for c in self.conns:
            c.close()
        for p in self.procs:
            p.close()
        self.procs, self.conns = [], []
