"""Batched PIM steps simulated in worker processes: every core busy, the same numbers.

A :class:`~workloads.serving.costs.PimBatchedCost` simulates every distinct batched step from a
fresh device state: its cycles and joules are a function of the step's key alone (the exact
ordered positions of a decode step, the exact chunks of a prefill step), whichever process
simulates it and whatever that process simulated before (the kernels' memo is exact; a test
holds a warm memo equal to a fresh simulation). So steps may be simulated anywhere, in any
order. :class:`StepPool` forks ``jobs`` worker processes from the process that holds the cost
(after the cost simulated a step itself, so that every worker starts with the compiled
program, its batched programs and the loaded timing kernels), and

* hands them the steps a scheduler step needs, all at once (a scheduler step of 256 decode
  sequences on a device that holds 128 is two batched steps: two workers);
* while fewer steps than workers are in flight, also the steps the next scheduler step will
  likely need (:func:`next_decode_keys`: every decode group one position on, what a step of
  decode only asks next). Such a result is kept and used only when a later step asks for
  exactly that key: a wrong guess costs a worker's time, never a number.

Results come back in the order the cost asks for them, so the serving run, its JSON and its
plots are the same for any ``jobs`` (``tests/test_serving.py`` holds ``jobs=2`` equal to
``jobs=1``). Workers are forked (POSIX ``fork``): where the platform has no fork, the cost
simulates in its own process.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Hashable

_COST: Any = None  # the cost forked workers simulate with (set in the parent before forking)


def _simulate(kind: str, key: Hashable) -> tuple[Any, float, int, dict]:
    """In a worker: the step ``key`` of ``kind`` simulated by the inherited cost, the wall
    seconds it took, the worker's pid and its kernel memo's usage."""
    t0 = time.perf_counter()
    got = _COST.simulate(kind, key)
    return got, time.perf_counter() - t0, os.getpid(), _COST.reuse.memo_usage()


def fork_available() -> bool:
    """Whether worker processes can be forked here (POSIX)."""
    return "fork" in multiprocessing.get_all_start_methods()


def next_decode_keys(groups: list[tuple[int, ...]], n_ctx: int) -> list[tuple[int, ...]]:
    """The decode steps the next scheduler step asks for if every sequence decodes on: each
    group one position on (groups that would pass the context are left out)."""
    return [tuple(p + 1 for p in g) for g in groups if g and max(g) + 1 < n_ctx]


class StepPool:
    """``jobs`` forked workers simulating the steps of ``cost`` (see the module docstring)."""

    def __init__(self, cost: Any, jobs: int):
        global _COST
        _COST = cost
        self.jobs = int(jobs)
        self._ex = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("fork"))
        self._pending: dict[tuple[str, Hashable], Future] = {}
        self.usage: dict[int, dict] = {}  # worker pid -> its memo usage at its last result
        self.wasted = 0  # speculative steps no later step asked for (counted at close)

    def in_flight(self) -> int:
        """Steps handed out and not finished."""
        return sum(not f.done() for f in self._pending.values())

    def submit(self, kind: str, key: Hashable) -> None:
        """Hand step ``key`` of ``kind`` to a worker unless it is already handed out."""
        if (kind, key) not in self._pending:
            self._pending[kind, key] = self._ex.submit(_simulate, kind, key)

    def speculate(self, kind: str, keys: list[Hashable], known) -> None:
        """Hand out ``keys`` (not already ``known``) while fewer steps than workers are in
        flight."""
        for key in keys:
            if self.in_flight() >= self.jobs:
                return
            if not known(key) and (kind, key) not in self._pending:
                self.submit(kind, key)

    def result(self, kind: str, key: Hashable) -> tuple[Any, float]:
        """The result of step ``key`` (handed out now if it was not) and the worker's wall
        seconds for it."""
        self.submit(kind, key)
        got, wall_s, pid, usage = self._pending.pop((kind, key)).result()
        self.usage[pid] = usage
        return got, wall_s

    def close(self) -> None:
        """Stop the workers (steps still in flight are dropped)."""
        self.wasted += len(self._pending)
        for f in self._pending.values():
            f.cancel()
        self._pending.clear()
        self._ex.shutdown(wait=True, cancel_futures=True)
