"""State of one DRAM/PIM channel controller as the timing kernels keep it: slot names and helpers.

A channel's controller state is a set of ``int64`` arrays that every kernel of ``pimsim.timing``
reads and advances in place: ``ready`` (earliest cycle per node and command), the windows
(``win_hist``, ``win_cnt``), ``open_row`` per bank, the scalars ``scal`` (last issue, next
refresh due, mode, completion, log length, open row and open-bank time), ``counts`` per command
and ``stats`` (row hits, misses, refreshes, inserted commands). This module names the slots of
``scal`` and ``stats``, sentinel values and small array helpers. (The stream item that ends a
segment, ``SYNC``, is defined with the command ids in ``pimsim.spec.commands``.)

The kernels run in plain Python under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import numpy as np

from pimsim.timing.jit import cached_njit

NOTHING = -2  # "no command needed" (e.g. ACT of a row that is already open)
NEVER = -(1 << 40)  # "last issue" before any command was issued
NO_MEMO = np.zeros(0, np.int64)  # memo argument that disables memoisation
NONE_I64 = np.int64(-1)  # "no bank / row / command" as an int64 value (no literal specialisation)
ONE_I64 = np.int64(1)
ZERO_I64 = np.int64(0)

# stream item fields the timing reads: (cmd, bank, row, count); the fifth, col0, names which
# data a command moves and no timing rule, link transfer or energy count reads it, so items
# equal in these fields issue the same commands at the same cycles
TIMED_FIELDS = 4

# scal[] slots of the per-channel state
S_LAST, S_NEXT_REF, S_MODE, S_DONE, S_LOG_N, S_ALLROW, S_OPEN_SINCE, S_OPEN_CYC = range(8)
N_SCAL = 8
# stats[] slots
ST_HITS, ST_MISSES, ST_REFRESHES, ST_INSERTED = range(4)
N_STATS = 4


@cached_njit(inline="always")
def copy_into(dst, src):
    """``dst[...] = src`` for two C-contiguous arrays of one shape, as a flat loop (a slice
    assignment would compile numba's broadcasting and its error formatting for every rank)."""
    d = dst.reshape(-1)
    s = src.reshape(-1)
    for i in range(d.shape[0]):
        d[i] = s[i]


@cached_njit(inline="always")
def log_room(log, n, need):
    """``log`` (rows of a command log, ``n`` in use) with room for ``need`` rows: a copy of
    twice the size (or ``need``) when it is too small."""
    if need <= log.shape[0]:
        return log
    grown = np.zeros((max(2 * log.shape[0], need), log.shape[1]), np.int64)
    for i in range(n):
        for j in range(log.shape[1]):
            grown[i, j] = log[i, j]
    return grown


@cached_njit(inline="always")
def open_cyc_at(scal, t):
    """Cycles with a bank open up to ``t`` (no open/close transition after ``t`` yet)."""
    if scal[S_ALLROW] != -1:
        return scal[S_OPEN_CYC] + t - scal[S_OPEN_SINCE]
    return scal[S_OPEN_CYC]
