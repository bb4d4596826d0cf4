"""Cycle-accurate timing of DRAM/PIM channels: rule tables compiled to arrays, numba kernels.

:class:`ChannelTimer` holds the state of one channel and advances it segment by segment; streams
are ``int64`` arrays of items ``(cmd, bank, row, count, 0)`` built with :func:`make_stream`.

The modules, lowest first: ``tables`` (rule tables of a config as arrays), ``jit`` (how the
kernels are compiled and cached), ``state`` (a channel controller's state arrays), ``issue``
(in-order command issue, refresh, closed-form runs), ``frfcfs`` (the queued FR-FCFS controller),
``memo`` (replay of units simulated before), ``token_runner`` (a segment of one channel, a token
on all channels), ``host_dma`` (the host DMA of AiM trace replay).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pimsim.config import HwConfig
from pimsim.spec.commands import COMMANDS, N_CMDS, SYNC, cmd_id

# the kernels under other names: ``pimsim.timing.issue`` stays the module
from pimsim.timing.issue import earliest as earliest_cyc
from pimsim.timing.issue import issue as issue_command
from pimsim.timing.jit import compile_scope
from pimsim.timing.memo import new_memo
from pimsim.timing.state import (
    N_SCAL,
    N_STATS,
    NEVER,
    NO_MEMO,
    S_ALLROW,
    S_DONE,
    S_LAST,
    S_LOG_N,
    S_NEXT_REF,
    S_OPEN_CYC,
    S_OPEN_SINCE,
    ST_HITS,
    ST_MISSES,
    ST_REFRESHES,
)
from pimsim.timing.tables import TimingTables, build_tables
from pimsim.timing.token_runner import run_segment

__all__ = ["ITEM_FIELDS", "SYNC", "ChannelStates", "ChannelTimer", "make_stream"]

ITEM_FIELDS = 5


def make_stream(items: Iterable[tuple]) -> np.ndarray:
    """Build a stream from ``(name, bank, row, count)`` tuples; ``"SYNC"`` ends a segment.

    ``bank`` is ignored (use -1) for all-bank and channel commands; ``count`` defaults to 1.
    """
    rows = []
    for it in items:
        if it == "SYNC" or (isinstance(it, tuple) and it[0] == "SYNC"):
            rows.append((SYNC, -1, -1, 0, 0))
            continue
        name, bank, row, *rest = it
        rows.append((cmd_id(name), bank, row, rest[0] if rest else 1, 0))
    return np.array(rows, np.int64).reshape(-1, ITEM_FIELDS)


def open_cyc_of(scal: np.ndarray, now: int):
    """Cycles up to ``now`` during which at least one bank was open, from a channel's scalars
    (``scal[..., :]``: one channel, or every channel of a :class:`ChannelStates` at once)."""
    return scal[..., S_OPEN_CYC] + np.where(scal[..., S_ALLROW] != -1,
                                            np.maximum(0, now - scal[..., S_OPEN_SINCE]), 0)


class ChannelStates:
    """Controller state of several channels, stacked along a leading channel axis."""

    def __init__(self, cfg: HwConfig, n_channels: int, tables: TimingTables):
        self.tables = tables
        n_nodes = int(tables.geom[3])
        n_win = max(tables.win_tab.shape[0], 1)
        c = n_channels
        self.ready = np.zeros((c, n_nodes + 4, N_CMDS), np.int64)
        self.win_hist = np.zeros((c, n_win, n_nodes, tables.max_window), np.int64)
        self.win_cnt = np.zeros((c, n_win, n_nodes), np.int64)
        self.open_row = np.full((c, cfg.org.banks), -1, np.int64)
        self.scal = np.zeros((c, N_SCAL), np.int64)
        self.scal[:, S_NEXT_REF] = cfg.timing.nREFI
        self.scal[:, S_ALLROW] = -1
        self.scal[:, S_LAST] = NEVER
        self.counts = np.zeros((c, N_CMDS), np.int64)
        self.stats = np.zeros((c, N_STATS), np.int64)


class ChannelTimer:
    """One channel's controller state, advanced by the numba kernel between sync points.

    With ``states`` and ``index`` it is a view on one channel of a :class:`ChannelStates`.
    ``memo`` (fast mode without a log) replays units of items simulated before from an
    equivalent state (see :func:`pimsim.timing.memo.memo_unit`).
    """

    def __init__(self, cfg: HwConfig, *, log: bool = False, fast: bool = True,
                 tables: TimingTables | None = None, states: ChannelStates | None = None,
                 index: int = 0, memo: bool = False):
        self.cfg = cfg
        if states is None:
            tables = tables if tables is not None else build_tables(cfg, fast=fast)
            states = ChannelStates(cfg, 1, tables)
            index = 0
        self.tables = states.tables
        self.ready = states.ready[index]
        self.win_hist = states.win_hist[index]
        self.win_cnt = states.win_cnt[index]
        self.open_row = states.open_row[index]
        self.scal = states.scal[index]
        self.counts = states.counts[index]
        self.stats = states.stats[index]
        self._log = np.zeros((1024 if log else 0, 4), np.int64)
        self.memo = new_memo(1 << 18, 1 << 12) if memo else NO_MEMO

    def run(self, stream: np.ndarray, pos: int = 0, not_before: int = 0,
            end: int | None = None) -> int:
        """Issue items from ``pos`` through the next SYNC (or ``end``); return the next position."""
        t = self.tables
        with compile_scope():
            pos, self._log = run_segment(
                stream, pos, stream.shape[0] if end is None else end, not_before, t.cmd_tab,
                t.pr_start, t.pr_tab, t.win_tab, t.geom, self.ready, self.win_hist, self.win_cnt,
                self.open_row, self.scal, self.counts, self.stats, self._log, self.memo,
            )
        return pos

    def run_all(self, stream: np.ndarray) -> int:
        """Run a whole stream, treating SYNC items as no-ops; return the done cycle."""
        pos = 0
        while pos < stream.shape[0]:
            pos = self.run(stream, pos, 0)
        return self.done_cyc

    # --- direct access for rule tests and tools
    def earliest(self, name: str, bank: int = -1) -> int:
        t = self.tables
        return int(earliest_cyc(cmd_id(name), bank, t.cmd_tab, t.win_tab, t.geom, self.ready,
                                self.win_hist, self.win_cnt, self.scal[S_LAST]))

    def issue_at(self, name: str, bank: int, row: int, cycle: int) -> None:
        """Issue one command at a given cycle (no legality check: that is the caller's job)."""
        t = self.tables
        self._log = issue_command(cmd_id(name), bank, row, cycle, 1, t.cmd_tab, t.pr_start,
                                  t.pr_tab, t.win_tab, t.geom, self.ready, self.win_hist,
                                  self.win_cnt, self.open_row, self.scal, self.counts, self._log)

    @property
    def done_cyc(self) -> int:
        """Cycle at which every issued command has completed."""
        return int(self.scal[S_DONE])

    @property
    def last_issue_cyc(self) -> int:
        return int(self.scal[S_LAST])

    @property
    def log(self) -> np.ndarray:
        """Issued commands so far: rows of (cycle, cmd, bank (-1 = all/channel), row)."""
        return self._log[: int(self.scal[S_LOG_N])]

    def command_counts(self) -> dict[str, int]:
        return {c.name: int(n) for c, n in zip(COMMANDS, self.counts) if n}

    def open_cyc(self, now: int) -> int:
        """Cycles up to ``now`` during which at least one bank was open (active standby)."""
        return int(open_cyc_of(self.scal, now))

    @property
    def row_hits(self) -> int:
        return int(self.stats[ST_HITS])

    @property
    def row_misses(self) -> int:
        return int(self.stats[ST_MISSES])

    @property
    def refreshes(self) -> int:
        return int(self.stats[ST_REFRESHES])
