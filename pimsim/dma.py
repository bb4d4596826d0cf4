"""The host DMA in front of the channel controllers: replays an AiM trace's host program.

The GDDR6-AiM host (as the public AiM simulator models its DMA) decodes one host line per cycle
and sends each ISR's requests to the channels its mask selects; it stops while a channel's
request queue is full, waits for blocking reads (RD_MAC, RD_AF) to return from every selected
channel, and for every channel to drain at SYNC and EOC. Each channel controller issues its
PIM requests in order at the earliest cycle the timing rules allow (``pimsim.timing``); with
``[controller] scheduler = "frfcfs"`` conventional requests (``R/W MEM``, ``RD_SBK``,
``WR_SBK``) wait in its read and write queues and are scheduled FR-FCFS (the DMA waits while a
queue is full or PIM requests are queued on that channel; a PIM request, SYNC or EOC is a
barrier that drains the queues, see ``kernel.replay_host``). Channels that received the same
requests at the same cycles are simulated once (their outcomes are identical);
``group=False`` simulates each one.

The host's behaviour comes from the config's ``[host]`` section (``line_cyc``,
``queue_entries``, ``blocking_reads``, ``release_cyc``); an all-zero section is an ideal host.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pimsim.config import HwConfig
from pimsim.engine import ChannelResult, SimResult
from pimsim.spec.commands import N_CMDS, cmd_id
from pimsim.spec.rules import rules_for
from pimsim.timing import ChannelStates, ChannelTimer
from pimsim.timing.host_dma import D_STOP, replay_finish, replay_host, replay_lines, replay_state
from pimsim.timing.jit import compile_scope
from pimsim.timing.tables import build_tables
from pimsim.trace import Trace


def blocking_table(cfg: HwConfig) -> np.ndarray:
    """1 for the commands whose data the host waits for before its next request."""
    out = np.zeros(N_CMDS, np.int64)
    for rule in rules_for(cfg):
        if rule.when == "blocking_reads":  # the rule row that holds the next request
            for name in rule.preceding:
                out[cmd_id(name)] = 1
    return out


def replay_trace(cfg: HwConfig, trace: Trace, *, log: bool = False, fast: bool = True,
                 group: bool = True) -> tuple[SimResult, np.ndarray]:
    """Replay ``trace`` on ``cfg``; returns the result and (with ``log``) the issued commands as
    rows (cycle, channel, bank, row, cmd id) sorted by cycle (see :func:`pimsim.engine.command_log`).
    """
    tables = build_tables(cfg, fast=fast)
    n = len(trace.channels)
    st = ChannelStates(cfg, n, tables)
    h = cfg.host
    with compile_scope():
        end, glog = replay_host(
            trace.lines, trace.masks, h.queue_entries, h.line_cyc, h.release_cyc,
            blocking_table(cfg), int(group and not log), int(log),
            tables.cmd_tab, tables.pr_start, tables.pr_tab, tables.win_tab, tables.geom,
            st.ready, st.win_hist, st.win_cnt, st.open_row, st.scal, st.counts, st.stats)
    timers = [ChannelTimer(cfg, states=st, index=i) for i in range(n)]
    res = SimResult(cycles=int(end),
                    channels=[ChannelResult(ch, t) for ch, t in zip(trace.channels, timers)],
                    segment_end_cyc=[])
    rows = np.empty((0, 5), np.int64)
    if log:
        rows = _log_rows(glog, np.array(trace.channels, np.int64))
        rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    return res, rows


def _log_rows(glog: np.ndarray, phys: np.ndarray, extra_cols: int = 0) -> np.ndarray:
    """The replay kernel's log as rows (cycle, physical channel, bank, row, cmd id), with
    ``extra_cols`` more columns left for the caller to fill."""
    rows = np.empty((glog.shape[0], 5 + extra_cols), np.int64)
    rows[:, 0] = glog[:, 0]
    rows[:, 1] = phys[glog[:, 1]]
    rows[:, 2] = glog[:, 3]
    rows[:, 3] = glog[:, 4]
    rows[:, 4] = glog[:, 2]
    return rows


def replay_trace_logged(cfg: HwConfig, trace: Trace, on_log: Callable[[np.ndarray], None], *,
                        fast: bool = True, part_lines: int = 256) -> SimResult:
    """Replay ``trace`` as :func:`replay_trace` with ``log=True`` (every channel simulated on its
    own), handing the issued commands to ``on_log`` a part at a time instead of keeping them:
    after each ``part_lines`` host lines, rows (cycle, channel, bank, row, cmd id, trace line)
    in issue order per channel (``trace line``: the source line, 1-based, of the host line that
    issued the command; -1 where unknown). Memory stays bounded by a part's commands; the
    result and the commands are :func:`replay_trace`'s."""
    tables = build_tables(cfg, fast=fast)
    n = len(trace.channels)
    st = ChannelStates(cfg, n, tables)
    h = cfg.host
    phys = np.array(trace.channels, np.int64)
    src = trace.source_lines
    n_lines = trace.lines.shape[0]
    blocking = blocking_table(cfg)

    def emit(glog: np.ndarray) -> None:
        if glog.shape[0] == 0:
            return
        rows = _log_rows(glog, phys, extra_cols=1)
        idx = glog[:, 5]
        rows[:, 5] = src[idx] if src is not None and src.shape[0] == n_lines else -1
        on_log(rows)

    with compile_scope():
        dma, reqt, nreq, rq, cqs, rep, off = replay_state(
            n, h.queue_entries, tables.geom, 0, st.counts.shape[1] + st.stats.shape[1] + 1)
        args = (tables.cmd_tab, tables.pr_start, tables.pr_tab, tables.win_tab, tables.geom,
                st.ready, st.win_hist, st.win_cnt, st.open_row, st.scal, st.counts, st.stats)
        for i0 in range(0, n_lines, max(1, part_lines)):
            emit(replay_lines(trace.lines, i0, min(n_lines, i0 + part_lines), trace.masks,
                              h.queue_entries, h.line_cyc, h.release_cyc, blocking, 0, 1, *args,
                              dma, reqt, nreq, rq, cqs, rep, off))
            if dma[D_STOP] == 1:
                break
        end, tail = replay_finish(n_lines - 1, 1, *args, dma, reqt, nreq, rq, cqs, rep, off)
        emit(tail)
    timers = [ChannelTimer(cfg, states=st, index=i) for i in range(n)]
    return SimResult(cycles=int(end),
                     channels=[ChannelResult(ch, t) for ch, t in zip(trace.channels, timers)],
                     segment_end_cyc=[])
