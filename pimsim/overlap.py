"""Decode steps on two cores: the next step's streams built while the kernel runs this one.

A timing run's step at position ``p`` runs what :meth:`pimsim.decode.DecodeSimulator.prepare`
builds from ``p`` alone (the streams, link cycles and durations), from the device state the step
before left. :class:`OverlappedTokens` prepares step ``p + 1`` on the calling thread while step
``p`` runs in the fast executor's kernel on a worker thread (the kernel releases the GIL), the
two steps' streams in two stream builders taken in turn. The steps still run one after another
from the state the one before left, so every cycle, count and joule is that of
:meth:`~pimsim.decode.DecodeSimulator.run_token` step after step; tests hold both equal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from pimsim.decode import DecodeSimulator, StreamBuilder, TokenTiming

SWITCH_S = 2e-4  # the interpreter's thread switch interval while steps overlap


class OverlappedTokens:
    """Runs a fast simulator's decode steps in order, each prepared while the one before runs.

    :meth:`run` prepares a step, waits for the step before and starts this one; it returns the
    steps that finished (the one before, with what ``after`` returned right after it ran, before
    the next started: the device state then, for energy meters). :meth:`finish` waits for the
    last. The first step runs on the calling thread (its kernels compile there)."""

    def __init__(self, sim: DecodeSimulator, after: Callable[[], object] | None = None):
        if not sim.fast:
            raise ValueError("overlapped steps need the fast executor (fast=True)")
        self.sim = sim
        self.after = after
        self.builders = [sim.streams, StreamBuilder(sim.prog, compact=sim.streams.compact)]
        self._pool: ThreadPoolExecutor | None = None
        self._running: Future | None = None
        self._n = 0

    def run(self, pos, active: np.ndarray | None = None) -> list[tuple[TokenTiming, object]]:
        job = self.sim.prepare(pos, active, streams=self.builders[self._n % 2])
        self._n += 1
        done = self._wait()
        if self._n == 1:
            tt = self.sim.execute(job)
            done.append((tt, self.after() if self.after is not None else None))
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pimsim-step")
                # the worker takes the GIL to start and to end a kernel: while this thread
                # prepares the next step, it gets it within this (default 5 ms)
                self._switch_s = sys.getswitchinterval()
                sys.setswitchinterval(SWITCH_S)
            self._running = self._pool.submit(self.sim.execute, job)
        return done

    def finish(self) -> list[tuple[TokenTiming, object]]:
        """The last step's timing (if one still runs); the worker thread ends."""
        try:
            return self._wait()
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            sys.setswitchinterval(self._switch_s)

    def _wait(self) -> list[tuple[TokenTiming, object]]:
        if self._running is None:
            return []
        fut, self._running = self._running, None
        tt = fut.result()
        return [(tt, self.after() if self.after is not None else None)]
