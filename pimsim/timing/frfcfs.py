"""Queued FR-FCFS controller of one channel for conventional RD/WR traffic (numba).

When the config selects it (``[controller] scheduler = "frfcfs"``), conventional RD/WR requests
of a channel wait in a read and a write queue (``geom[G_RQ]``, ``geom[G_WQ]`` entries) and are
scheduled first-ready, oldest first, with write drain, as Ramulator 2's controller (which the
public AiM simulator uses) does (:func:`cq_step`). A PIM item or a SYNC is a barrier: the queues
are drained before it (:func:`run_queued`). PIM commands always issue in order.
"""

from __future__ import annotations

import numpy as np

from pimsim.timing.issue import (
    bank_window_cyc,
    bg_node,
    earliest,
    earliest_channel,
    has_bank_windows,
    idle_refreshes,
    issue,
    issue_refresh,
    issue_state,
    refresh_due,
    row_step,
)
from pimsim.timing.jit import cached_njit
from pimsim.timing.state import (
    NONE_I64,
    ONE_I64,
    S_ALLROW,
    S_DONE,
    S_LAST,
    S_MODE,
    S_NEXT_REF,
    S_OPEN_CYC,
    S_OPEN_SINCE,
    ST_HITS,
    ST_INSERTED,
    ST_MISSES,
    ST_REFRESHES,
)
from pimsim.timing.tables import (
    CT_COLUMN,
    CT_MODE,
    G_BG,
    G_CMD_ACT,
    G_CMD_PRE,
    G_CMD_RD,
    G_CMD_TMOD,
    G_CMD_WR,
    G_FAST,
    G_PIM,
    G_REFRESH,
    G_RQ,
    G_SCHED,
    G_TMOD_GATED,
    G_WHI,
    G_WLO,
    G_WQ,
    SCHED_FRFCFS,
)

# Conventional RD/WR requests of a channel wait in a read and a write queue (``geom[G_RQ]``,
# ``geom[G_WQ]`` entries) and are scheduled FR-FCFS, as Ramulator 2's controller (which the public
# AiM simulator uses) does; see ``cq_step``. Queue rows: (cmd, bank, row, arrival cycle,
# activated for it, a row command was issued for it), oldest first.
Q_CMD, Q_BANK, Q_ROW, Q_ARR, Q_ACT, Q_MISS = range(6)
QF = 6
# controller state: requests queued, write-drain mode (1 = serving writes), reads and writes
# holding a queue entry (an entry frees when its request's column command issues)
CQ_N, CQ_WMODE, CQ_NR, CQ_NW = range(4)
N_CQ = 4
FAR_CYC = np.int64(1 << 60)


@cached_njit(inline="always")
def is_queued(cmd, geom):
    """Whether stream command ``cmd`` is conventional traffic the FR-FCFS controller queues."""
    return geom[G_SCHED] == SCHED_FRFCFS and (cmd == geom[G_CMD_RD] or cmd == geom[G_CMD_WR])


@cached_njit()
def cq_step(q, cq, limit, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist,
            win_cnt, open_row, scal, counts, stats, log, etab):
    """Issue the next command of the queued controller, if it issues before cycle ``limit``.

    Returns (issued: 1, or 0 when the queue is empty or the next command would issue at or after
    ``limit``, when the next request arrives; cycle of the next command, log). The policy, each
    cycle as in a cycle-by-cycle controller (commands issue at the first cycle they are legal,
    so evaluating it at the next legal cycle of any candidate is exact):

    * write-drain mode (Ramulator 2 / AiM): entered when the write queue holds more than the high
      watermark or no read waits, left when it holds fewer than the low watermark and a read
      waits (requests whose row is being opened for them do not count: they are served first);
    * candidates: every request whose row was activated for it, and the requests of the queue
      being served (reads, or writes in drain mode); each needs its next command (PRE, ACT or its
      column command, ``row_step``); a PRE that would close the row of an activated request
      waits for it;
    * of the candidates legal at the earliest cycle ("first ready": a row hit's column command
      is usually legal before a miss's PRE/ACT): the column command of an activated request,
      then the oldest (Ramulator 2's FRFCFS; a strict row-hit-first order differs from the AiM
      simulator by 3 % on the mem_row_conflicts reference trace);
    * a due refresh goes first (PREA + REFab, ``issue_refresh``); a mode switch (TMOD) issues in
      place of the chosen command when the channel is not in the mode RD/WR need.

    Every command goes through ``earliest`` / ``issue`` of the rule table, so the checker
    verifies the log as for in-order streams. The choice is :func:`cq_pick`'s;
    :func:`cq_step_quiet` is this step for kernels that keep no log.
    """
    if cq[CQ_N] == 0:
        return 0, FAR_CYC, log
    best, best_t, best_cmd, best_bank, best_row = cq_pick(q, cq, not_before, cmd_tab, win_tab,
                                                          geom, ready, win_hist, win_cnt,
                                                          open_row, scal, etab)
    if best < 0:
        return 0, FAR_CYC, log  # cannot happen: an activated request's column is always a candidate
    t, switch = _cq_when(q, best, best_t, not_before, cmd_tab, win_tab, geom, ready, win_hist,
                         win_cnt, scal)
    if refresh_due(t, geom, scal):
        ok, log = _cq_refresh(q, cq, limit, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                              ready, win_hist, win_cnt, open_row, scal, counts, stats, log)
        return ok, t, log
    if t >= limit:
        return 0, t, log
    if switch:
        log = issue(geom[G_CMD_TMOD], NONE_I64, NONE_I64, t, ONE_I64, cmd_tab, pr_start, pr_tab,
                    win_tab, geom, ready, win_hist, win_cnt, open_row, scal, counts, log)
        stats[ST_INSERTED] += 1
        return 1, t, log
    log = issue(best_cmd, best_bank, best_row, t, ONE_I64, cmd_tab, pr_start, pr_tab, win_tab, geom,
                ready, win_hist, win_cnt, open_row, scal, counts, log)
    _cq_issued(q, cq, best, best_cmd, cmd_tab, geom, stats)
    return 1, t, log


@cached_njit()
def cq_step_quiet(q, cq, limit, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                  win_hist, win_cnt, open_row, scal, counts, stats, log, etab):
    """``cq_step`` without a log (``log`` has no rows): returns (issued, cycle) only. The same
    decisions and state; a kernel returning an array pays for its reference counting at every
    call, here as much as the step's own work."""
    if cq[CQ_N] == 0:
        return 0, FAR_CYC
    best, best_t, best_cmd, best_bank, best_row = cq_pick(q, cq, not_before, cmd_tab, win_tab,
                                                          geom, ready, win_hist, win_cnt,
                                                          open_row, scal, etab)
    if best < 0:
        return 0, FAR_CYC
    t, switch = _cq_when(q, best, best_t, not_before, cmd_tab, win_tab, geom, ready, win_hist,
                         win_cnt, scal)
    if refresh_due(t, geom, scal):
        ok, _ = _cq_refresh(q, cq, limit, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                            ready, win_hist, win_cnt, open_row, scal, counts, stats, log)
        return ok, t
    if t >= limit:
        return 0, t
    if switch:
        issue_state(geom[G_CMD_TMOD], NONE_I64, NONE_I64, t, ONE_I64, cmd_tab, pr_start,
                    pr_tab, win_tab, geom, ready, win_hist, win_cnt, open_row, scal, counts)
        stats[ST_INSERTED] += 1
        return 1, t
    issue_state(best_cmd, best_bank, best_row, t, ONE_I64, cmd_tab, pr_start, pr_tab, win_tab,
                geom, ready, win_hist, win_cnt, open_row, scal, counts)
    _cq_issued(q, cq, best, best_cmd, cmd_tab, geom, stats)
    return 1, t


@cached_njit(inline="always")
def cq_pick(q, cq, not_before, cmd_tab, win_tab, geom, ready, win_hist, win_cnt, open_row, scal,
            etab):
    """Set the write-drain mode and choose the next request to serve (``cq_step``'s policy):
    returns (queue index, cycle its next command is legal, that command, its bank, its row);
    index -1 if none. Fast mode: :func:`_pick_fast`, the same choice at less cost; else
    :func:`_pick_plain`, the policy as written, request by request (the reference)."""
    n = cq[CQ_N]
    wr_cmd = geom[G_CMD_WR]
    nr = 0
    nw = 0
    # banks whose open row an activated request waits for (a PRE there waits for it); a bit
    # per bank up to 63 banks, else the scan per candidate
    n_banks = open_row.shape[0]
    guard_bits = np.int64(0)
    for i in range(n):
        if q[i, Q_ACT] == 0:
            if q[i, Q_CMD] == wr_cmd:
                nw += 1
            else:
                nr += 1
        elif n_banks < 64:
            bj = q[i, Q_BANK]
            if q[i, Q_ROW] == open_row[bj]:
                guard_bits |= np.int64(1) << bj
    wm = cq[CQ_WMODE]
    if wm == 0:
        if nw > geom[G_WHI] or nr == 0:
            wm = 1
    elif nw < geom[G_WLO] and nr != 0:
        wm = 0
    cq[CQ_WMODE] = wm
    # ``etab`` (int64 [commands, banks + 1, 3], zeros, kept by the caller): [0, 0, 0] counts
    # the calls; an entry written in this call (its [1] is the count) holds a cycle ([2]) that
    # holds for the whole call (the state does not change before the choice): the plain scan's
    # earliest cycle of (cmd, bank) at [cmd, bank + 1], the fast one's channel part of cmd at
    # [cmd, 0] (and at [cmd, 1, 0] whether a bank or bank-group window spaces cmd)
    etab[0, 0, 0] += 1
    if geom[G_FAST] == 1:
        return _pick_fast(q, n, wm, guard_bits, not_before, win_tab, geom, ready, win_hist,
                          win_cnt, open_row, scal, etab)
    return _pick_plain(q, n, wm, guard_bits, not_before, cmd_tab, win_tab, geom, ready, win_hist,
                       win_cnt, open_row, scal, etab)


@cached_njit(inline="always")
def _guarded(q, n, bank, guard_bits, open_row):
    """Whether an activated request waits for ``bank``'s open row (a PRE there must wait)."""
    if open_row.shape[0] < 64:
        return (guard_bits >> bank) & 1 == 1
    for j in range(n):
        if q[j, Q_ACT] == 1 and q[j, Q_BANK] == bank and q[j, Q_ROW] == open_row[bank]:
            return True
    return False


@cached_njit(inline="always")
def _pick_plain(q, n, wm, guard_bits, not_before, cmd_tab, win_tab, geom, ready, win_hist,
                win_cnt, open_row, scal, etab):
    """``cq_pick``'s choice as the policy reads: every candidate's next command (``row_step``)
    and its earliest cycle (``earliest``), the first legal, a column of an activated request
    before others, then the oldest."""
    wr_cmd = geom[G_CMD_WR]
    pre = geom[G_CMD_PRE]
    stamp = etab[0, 0, 0]
    best = -1
    best_t = FAR_CYC
    best_pri = 3
    best_cmd = NONE_I64
    best_bank = NONE_I64
    best_row = NONE_I64
    for i in range(n):
        cmd = q[i, Q_CMD]
        act = q[i, Q_ACT]
        if act == 0 and (cmd == wr_cmd) != (wm == 1):
            continue
        bank = q[i, Q_BANK]
        ncmd, nbank, nrow = row_step(cmd, bank, q[i, Q_ROW], cmd_tab, geom, open_row, scal)
        if ncmd == pre and _guarded(q, n, bank, guard_bits, open_row):
            continue
        lo_t = max(not_before, q[i, Q_ARR])
        if lo_t > best_t:
            continue  # cannot be chosen: a candidate is legal earlier
        slot = nbank + 1
        if etab[ncmd, slot, 1] == stamp:
            te = etab[ncmd, slot, 2]
        else:
            te = earliest(ncmd, nbank, cmd_tab, win_tab, geom, ready, win_hist, win_cnt,
                          scal[S_LAST])
            etab[ncmd, slot, 1] = stamp
            etab[ncmd, slot, 2] = te
        t = max(lo_t, te)
        pri = 1
        if ncmd == cmd and act == 1:
            pri = 0
        if t < best_t or (t == best_t and pri < best_pri):
            best, best_t, best_pri = i, t, pri
            best_cmd, best_bank, best_row = ncmd, nbank, nrow
    return best, best_t, best_cmd, best_bank, best_row


@cached_njit(inline="always")
def _pick_fast(q, n, wm, guard_bits, not_before, win_tab, geom, ready, win_hist, win_cnt,
               open_row, scal, etab):
    """``_pick_plain``'s choice, cheaper: a request's arrival is checked before its next
    command is looked at; the next command of RD/WR (bank commands that need their row open,
    ``pimsim.spec.commands``) is read off the bank's open row (``row_step``'s rule for them);
    the earliest cycle is the command's channel part, once per call, and its bank part
    (``earliest`` = the larger of the two for bank commands)."""
    wr_cmd = geom[G_CMD_WR]
    pre = geom[G_CMD_PRE]
    act_cmd = geom[G_CMD_ACT]
    stamp = etab[0, 0, 0]
    last = scal[S_LAST]
    n_bg = geom[G_BG]
    best = -1
    best_t = FAR_CYC
    best_pri = 3
    best_cmd = NONE_I64
    best_bank = NONE_I64
    best_row = NONE_I64
    for i in range(n):
        cmd = q[i, Q_CMD]
        act = q[i, Q_ACT]
        if act == 0 and (cmd == wr_cmd) != (wm == 1):
            continue
        lo_t = max(not_before, q[i, Q_ARR])
        if lo_t > best_t:
            continue  # cannot be chosen: a candidate is legal earlier
        bank = q[i, Q_BANK]
        row = q[i, Q_ROW]
        orow = open_row[bank]
        if orow == row:
            ncmd = cmd
        elif orow >= 0:
            if _guarded(q, n, bank, guard_bits, open_row):
                continue
            ncmd = pre
            row = orow
        else:
            ncmd = act_cmd
        if etab[ncmd, 0, 1] != stamp:
            etab[ncmd, 0, 1] = stamp
            etab[ncmd, 0, 2] = earliest_channel(ncmd, win_tab, geom, ready, win_hist, win_cnt,
                                                last)
            etab[ncmd, 1, 0] = 1 if has_bank_windows(ncmd, win_tab) else 0
        # ``earliest_in_bank``, its windows called only where there are any
        t = max(lo_t, etab[ncmd, 0, 2], ready[bg_node(bank, geom), ncmd], ready[1 + n_bg + bank, ncmd])
        if etab[ncmd, 1, 0] == 1:
            t = max(t, bank_window_cyc(ncmd, bank, win_tab, geom, win_hist, win_cnt))
        pri = 1
        if ncmd == cmd and act == 1:
            pri = 0
        if t < best_t or (t == best_t and pri < best_pri):
            best, best_t, best_pri = i, t, pri
            best_cmd, best_bank, best_row = ncmd, bank, row
    return best, best_t, best_cmd, best_bank, best_row


@cached_njit(inline="always")
def _cq_when(q, best, best_t, not_before, cmd_tab, win_tab, geom, ready, win_hist, win_cnt,
             scal):
    """Cycle of the chosen request's next command, and whether a mode switch (TMOD) issues in
    its place (the channel is not in the mode RD/WR need)."""
    t = best_t
    switch = False
    if geom[G_PIM] == 1:
        mode = cmd_tab[q[best, Q_CMD], CT_MODE]
        if mode >= 0 and mode != scal[S_MODE]:
            switch = True
            t = earliest(geom[G_CMD_TMOD], -1, cmd_tab, win_tab, geom, ready, win_hist, win_cnt,
                         scal[S_LAST])
            t = max(t, not_before)
            if geom[G_TMOD_GATED] == 1:
                t = max(t, best_t)
    return t, switch


@cached_njit()
def _cq_refresh(q, cq, limit, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                win_hist, win_cnt, open_row, scal, counts, stats, log):
    """The refresh due before the next command: issued (returns 1 and the log) unless it is
    due at or after ``limit`` (0: a request arriving before it may go first)."""
    if scal[S_NEXT_REF] >= limit:
        return 0, log
    log = issue_refresh(cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist, win_cnt,
                        open_row, scal, counts, stats, log)
    if geom[G_FAST] == 1 and log.shape[0] == 0:
        # an idle gap (nothing issues before ``not_before``; no refresh at or after
        # ``limit``): the further refreshes due in it in closed form, as the calls that
        # follow would issue them one by one
        log = idle_refreshes(min(not_before, limit), cmd_tab, pr_start, pr_tab, win_tab,
                             geom, ready, win_hist, win_cnt, open_row, scal, counts, stats,
                             log)
    for i in range(cq[CQ_N]):
        q[i, Q_ACT] = 0  # their rows were closed
    return 1, log


@cached_njit(inline="always")
def _cq_issued(q, cq, best, best_cmd, cmd_tab, geom, stats):
    """The chosen request's command issued: a row command marks it (missed; activated for it
    by an ACT), its column command counts the hit or miss and frees its entry."""
    if best_cmd != q[best, Q_CMD]:
        stats[ST_INSERTED] += 1
        q[best, Q_MISS] = 1
        if best_cmd == geom[G_CMD_ACT]:
            q[best, Q_ACT] = 1
        return
    if cmd_tab[best_cmd, CT_COLUMN] == 1:
        if q[best, Q_MISS] == 1:
            stats[ST_MISSES] += 1
        else:
            stats[ST_HITS] += 1
    if best_cmd == geom[G_CMD_WR]:
        cq[CQ_NW] -= 1
    else:
        cq[CQ_NR] -= 1
    n = cq[CQ_N]
    for i in range(best, n - 1):
        for f in range(QF):
            q[i, f] = q[i + 1, f]
    cq[CQ_N] = n - 1


@cached_njit(inline="always")
def cq_room(cmd, cq, geom):
    """Whether the queue of ``cmd`` (reads or writes) has a free entry."""
    if cmd == geom[G_CMD_WR]:
        return cq[CQ_NW] < geom[G_WQ]
    return cq[CQ_NR] < geom[G_RQ]


@cached_njit(inline="always")
def cq_push(q, cq, cmd, bank, row, arr, geom):
    n = cq[CQ_N]
    q[n, Q_CMD] = cmd
    q[n, Q_BANK] = bank
    q[n, Q_ROW] = row
    q[n, Q_ARR] = arr
    q[n, Q_ACT] = 0
    q[n, Q_MISS] = 0
    cq[CQ_N] = n + 1
    if cmd == geom[G_CMD_WR]:
        cq[CQ_NW] += 1
    else:
        cq[CQ_NR] += 1


# closed form of periodic queued runs (``run_queued``): the longest item period looked for, how
# many periods a stretch may be simulated looking for a steady one before it stops looking (until
# the next refresh), and at how many items in a row a search may fail before it stops too (a
# search is cheap: items that repeat with a break between, a KV write's K and V parts, find the
# next period a few items after the break)
MAX_PERIOD_ITEMS = 64
MAX_PERIOD_TRIES = 16
MAX_PERIOD_SEARCHES = 2 * MAX_PERIOD_ITEMS  # items in a row where a period may begin
N_SNAP = 8  # controller states kept, one per item period: it may repeat after several
NO_SHIFT = np.int64(-(1 << 62))


@cached_njit(inline="always")
def _row_shift(stream, a, b):
    """How far item ``b``'s row lies from item ``a``'s when the items are otherwise equal
    (both rows real), else ``NO_SHIFT``."""
    for f in (0, 1, 3):  # not the fifth field, col0: no timing rule reads it
        if stream[a, f] != stream[b, f]:
            return NO_SHIFT
    if stream[a, 2] < 0 or stream[b, 2] < 0:
        return NO_SHIFT
    return stream[b, 2] - stream[a, 2]


@cached_njit()
def queued_period(stream, x, end):
    """The shortest item period ``L`` of the run from item ``x``: items ``[x, x + L)`` and
    ``[x + L, x + 2L)`` equal but for rows that all move by one step ``rs``. Returns (L, rs),
    (0, 0) if there is none up to ``MAX_PERIOD_ITEMS``."""
    for n in range(1, MAX_PERIOD_ITEMS + 1):
        if x + 2 * n > end:
            break
        rs = _row_shift(stream, x, x + n)
        if rs == NO_SHIFT:
            continue
        ok = True
        for j in range(1, n):
            if _row_shift(stream, x + j, x + j + n) != rs:
                ok = False
                break
        if ok:
            return n, rs
    return 0, 0


@cached_njit(inline="always")
def _row_moved(r, r0, rs):
    """Whether row ``r`` is row ``r0`` moved by ``rs`` (none, -1 and below, stays as it is)."""
    if r < 0 or r0 < 0:
        return r == r0
    return r - r0 == rs


@cached_njit()
def _queued_steady(q, cq, arr, ready, win_tab, win_hist, win_cnt, open_row, scal, rs,
                   q0, cq0, arr0, ready0, win_hist0, win_cnt0, open_row0, scal0, tpl_open):
    """Whether the queued controller's state now equals the snapshot's moved by one period:
    times by the cycles between their last issues, rows by ``rs``; times at or before the last
    issue compare as equal (no command can issue before it), as in ``fast_forward_pairs``.

    ``tpl_open`` -1: a snapshot of this stretch (no refresh since), the refresh due and the
    open-bank time compare as they are. 0 or 1: the template of a steady period (a refresh
    since, see ``run_queued``): the refresh due does not compare (no decision read it in the
    period; the periods applied end before the next one), the open-bank time as that period
    moves it (1: it opened or closed banks: when they opened, relative to the last issue; 0:
    it did not: nothing to compare)."""
    last = scal[S_LAST]
    last0 = scal0[S_LAST]
    if last - last0 <= 0:
        return False
    if scal[S_MODE] != scal0[S_MODE] or scal[S_DONE] - last != scal0[S_DONE] - last0:
        return False
    if tpl_open < 0 and scal[S_NEXT_REF] != scal0[S_NEXT_REF]:
        return False
    if not _row_moved(scal[S_ALLROW], scal0[S_ALLROW], rs):
        return False
    # open-bank time: no open/close transition, or each period's the same moved along
    if tpl_open < 0:
        if not ((scal[S_OPEN_SINCE] == scal0[S_OPEN_SINCE]
                 and scal[S_OPEN_CYC] == scal0[S_OPEN_CYC])
                or scal[S_OPEN_SINCE] - last == scal0[S_OPEN_SINCE] - last0):
            return False
    elif tpl_open == 1 and scal[S_OPEN_SINCE] - last != scal0[S_OPEN_SINCE] - last0:
        return False
    for b in range(open_row.shape[0]):
        if not _row_moved(open_row[b], open_row0[b], rs):
            return False
    for x in range(cq.shape[0]):
        if cq[x] != cq0[x]:
            return False
    # arrival times at or before the last issue no longer bind (every arrival is)
    if max(arr - last, 0) != max(arr0 - last0, 0):
        return False
    for i in range(cq[CQ_N]):
        if (q[i, Q_CMD] != q0[i, Q_CMD] or q[i, Q_BANK] != q0[i, Q_BANK]
                or q[i, Q_ACT] != q0[i, Q_ACT] or q[i, Q_MISS] != q0[i, Q_MISS]
                or max(q[i, Q_ARR] - last, 0) != max(q0[i, Q_ARR] - last0, 0)
                or q[i, Q_ROW] - q0[i, Q_ROW] != rs):
            return False
    for i in range(ready.shape[0]):
        for j in range(ready.shape[1]):
            if max(ready[i, j] - last, 0) != max(ready0[i, j] - last0, 0):
                return False
    for w in range(win_tab.shape[0]):
        lat = win_tab[w, 3]
        size = win_tab[w, 4]
        for node in range(win_cnt.shape[1]):
            c = win_cnt[w, node]
            c0 = win_cnt0[w, node]
            if min(c, size) != min(c0, size):
                return False
            for j in range(min(c, size)):
                h = win_hist[w, node, (c + j) % size if c >= size else j]
                h0 = win_hist0[w, node, (c0 + j) % size if c0 >= size else j]
                if max(h + lat - last, 0) != max(h0 + lat - last0, 0):
                    return False
    return True


@cached_njit()
def _queued_skip(k, q, cq, ready, win_tab, win_hist, win_cnt, open_row, scal, counts, stats,
                 rs, win_cnt0, scal0, counts0, stats0):
    """Move the state on by ``k`` periods: each one repeats the last (see ``_queued_steady``)
    ``shift`` cycles later with rows ``rs`` further on. Returns the shift in cycles."""
    period = scal[S_LAST] - scal0[S_LAST]
    shift = k * period
    for i in range(ready.shape[0]):
        for j in range(ready.shape[1]):
            ready[i, j] += shift
    for w in range(win_tab.shape[0]):
        size = win_tab[w, 4]
        for node in range(win_cnt.shape[1]):
            d = win_cnt[w, node] - win_cnt0[w, node]
            if d == 0:
                continue  # no entry in a period: the entries kept have expired
            c = win_cnt[w, node]  # >= size: see _queued_steady
            c1 = c + k * d
            tmp = np.empty(size, np.int64)
            for j in range(size):
                tmp[j] = win_hist[w, node, (c + j) % size] + shift
            for j in range(size):
                win_hist[w, node, (c1 + j) % size] = tmp[j]
            win_cnt[w, node] = c1
    for b in range(open_row.shape[0]):
        if open_row[b] >= 0:
            open_row[b] += k * rs
    if scal[S_ALLROW] >= 0:
        scal[S_ALLROW] += k * rs
    for i in range(cq[CQ_N]):
        q[i, Q_ROW] += k * rs
        q[i, Q_ARR] += shift
    for x in range(counts.shape[0]):
        counts[x] += k * (counts[x] - counts0[x])
    for x in range(stats.shape[0]):
        stats[x] += k * (stats[x] - stats0[x])
    if not (scal[S_OPEN_SINCE] == scal0[S_OPEN_SINCE] and scal[S_OPEN_CYC] == scal0[S_OPEN_CYC]):
        scal[S_OPEN_CYC] += k * (scal[S_OPEN_CYC] - scal0[S_OPEN_CYC])
        scal[S_OPEN_SINCE] += shift
    scal[S_LAST] += shift
    scal[S_DONE] += shift
    return shift


@cached_njit()
def _state_before(counts, stats, win_cnt, scal, d_counts, d_stats, d_win, cyc, tpl_open,
                  open_cyc, counts_p, stats_p, win_cnt_p, scal_p):
    """What ``_queued_skip`` reads of the state one period back, for a period known from the
    template: the counters, statistics and window counts less what the period adds, the last
    issue ``cyc`` cycles earlier, the open-bank time as the period moves it."""
    for x in range(counts.shape[0]):
        counts_p[x] = counts[x] - d_counts[x]
    for x in range(stats.shape[0]):
        stats_p[x] = stats[x] - d_stats[x]
    for w in range(win_cnt.shape[0]):
        for x in range(win_cnt.shape[1]):
            win_cnt_p[w, x] = win_cnt[w, x] - d_win[w, x]
    for x in range(scal.shape[0]):
        scal_p[x] = scal[x]
    scal_p[S_LAST] = scal[S_LAST] - cyc
    if tpl_open == 1:
        scal_p[S_OPEN_SINCE] = scal[S_OPEN_SINCE] - cyc
        scal_p[S_OPEN_CYC] = scal[S_OPEN_CYC] - open_cyc


@cached_njit()
def _snapshot(o, q, cq, arr, ready, win_hist, win_cnt, open_row, scal, counts, stats, q0, cq0,
              arr0, ready0, win_hist0, win_cnt0, open_row0, scal0, counts0, stats0):
    """Keep the queued controller's state in snapshot slot ``o`` (``run_queued``)."""
    arr0[o] = arr
    q0[o] = q
    cq0[o] = cq
    ready0[o] = ready
    win_hist0[o] = win_hist
    win_cnt0[o] = win_cnt
    open_row0[o] = open_row
    scal0[o] = scal
    counts0[o] = counts
    stats0[o] = stats


@cached_njit()
def run_queued(stream, pos, end, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
               win_hist, win_cnt, open_row, scal, counts, stats, log):
    """Serve the conventional RD/WR items ``[pos, end)`` through the FR-FCFS controller and
    drain it (the next item is a PIM command, a SYNC or the end: a barrier). Item ``(cmd, bank,
    row, n)`` is ``n`` requests to that row; they enter the queues in stream order, all ready at
    ``not_before``, each as soon as its queue has a free entry (an entry frees when its request's
    column command issues). Returns the log.

    Closed form (fast mode, no log): where the items repeat with a period of ``L`` items, rows
    moving on by a fixed step each period (a KV-cache write walking the banks row after row),
    the state before pushing an item is compared with the states one to ``N_SNAP`` periods
    earlier (a write queue draining between its watermarks repeats after several periods); once
    it is the same moved by those periods' cycles and row steps (every time relative to the
    last issue, the queues, open rows, windows, mode, no refresh in them), every further period of
    the repeating items is that period again, moved on; they are applied at once, up to the
    next refresh due (the one rule that is not invariant under a shift in time). The period
    found is kept as a template: after the refresh, the state at each period boundary is
    compared with it (the refresh due aside), and once the same moved along, the periods
    repeat from there, with what one period adds known from the template (a run with a refresh
    inside need not find its period again from new snapshots). Identical to scheduling them
    request by request; tests hold both equal.
    """
    q = np.zeros((geom[G_RQ] + geom[G_WQ], QF), np.int64)
    etab = np.zeros((cmd_tab.shape[0], open_row.shape[0] + 1, 3), np.int64)  # cq_step's
    cq = np.zeros(N_CQ, np.int64)
    cq[CQ_WMODE] = 1  # no read waits: Ramulator 2's hysteresis is in write mode
    arr = not_before
    quiet = log.shape[0] == 0  # no log: the steps that return none (cq_step_quiet)
    closed = geom[G_FAST] == 1 and quiet and end - pos >= 8
    tries = 0
    searches = 0
    snap_at = -1  # where the snapshots of the current item period start (-1: none)
    n_snap = 0  # snapshots taken since, one per period: at snap_at + j * per
    per = 0
    rs = np.int64(0)
    # the last N_SNAP snapshots, snapshot j in slot j % N_SNAP: the controller may repeat only
    # after several item periods (a write queue draining between its watermarks)
    # slot N_SNAP: the template, the state at the start of the last steady period applied
    ns = N_SNAP + 1 if closed else 0
    arr0 = np.zeros(N_SNAP + 1, np.int64)
    q0 = np.zeros((ns, q.shape[0], QF), np.int64)
    cq0 = np.zeros((ns, N_CQ), np.int64)
    ready0 = np.zeros((ns, ready.shape[0], ready.shape[1]), np.int64)
    win_hist0 = np.zeros((ns, win_hist.shape[0], win_hist.shape[1], win_hist.shape[2]), np.int64)
    win_cnt0 = np.zeros((ns, win_cnt.shape[0], win_cnt.shape[1]), np.int64)
    open_row0 = np.zeros((ns, open_row.shape[0]), np.int64)
    scal0 = np.zeros((ns, scal.shape[0]), np.int64)
    counts0 = np.zeros((ns, counts.shape[0]), np.int64)
    stats0 = np.zeros((ns, stats.shape[0]), np.int64)
    # the template's period (items, row step, cycles, open-bank rule as _queued_steady's
    # tpl_open), the position it was taken at, where its items stop repeating, the refreshes
    # then (tpl_per 0: none); what the period adds to the counters, the statistics, the window
    # counts and the open-bank time; and room for the state one period before a match
    tpl_per = 0
    tpl_rs = np.int64(0)
    tpl_cyc = np.int64(0)
    tpl_open = 0
    tpl_pos = 0
    tpl_end = 0
    tpl_refs = np.int64(0)
    tpl_open_cyc = np.int64(0)
    nt = 1 if closed else 0
    d_counts = np.zeros((nt, counts.shape[0]), np.int64)
    d_stats = np.zeros((nt, stats.shape[0]), np.int64)
    d_win = np.zeros((nt, win_cnt.shape[0], win_cnt.shape[1]), np.int64)
    counts_p = np.zeros((nt, counts.shape[0]), np.int64)
    stats_p = np.zeros((nt, stats.shape[0]), np.int64)
    win_cnt_p = np.zeros((nt, win_cnt.shape[0], win_cnt.shape[1]), np.int64)
    scal_p = np.zeros((nt, scal.shape[0]), np.int64)
    p = pos
    epoch_ref = stats[ST_REFRESHES]
    while p < end:
        if (tpl_per > 0 and stats[ST_REFRESHES] != tpl_refs and p > tpl_pos
                and (p - tpl_pos) % tpl_per == 0 and p + tpl_per <= tpl_end
                and _queued_steady(q, cq, arr, ready, win_tab, win_hist, win_cnt, open_row, scal,
                                   (p - tpl_pos) // tpl_per * tpl_rs, q0[N_SNAP], cq0[N_SNAP],
                                   arr0[N_SNAP], ready0[N_SNAP], win_hist0[N_SNAP],
                                   win_cnt0[N_SNAP], open_row0[N_SNAP], scal0[N_SNAP],
                                   tpl_open)):
            # back in the steady period after a refresh: the template's period repeats from
            # here (its items do, up to tpl_end), up to the next refresh
            k = (tpl_end - p) // tpl_per
            k = min(k, max(0, (scal[S_NEXT_REF] - 1 - scal[S_LAST]) // tpl_cyc))
            if k > 0:
                _state_before(counts, stats, win_cnt, scal, d_counts[0], d_stats[0], d_win[0],
                              tpl_cyc, tpl_open, tpl_open_cyc, counts_p[0], stats_p[0],
                              win_cnt_p[0], scal_p[0])
                arr += _queued_skip(k, q, cq, ready, win_tab, win_hist, win_cnt, open_row, scal,
                                    counts, stats, tpl_rs, win_cnt_p[0], scal_p[0], counts_p[0],
                                    stats_p[0])
                p += k * tpl_per
                snap_at = -1
                tries = 0
                searches = 0
                epoch_ref = stats[ST_REFRESHES]
                continue
        if closed and tries >= MAX_PERIOD_TRIES and stats[ST_REFRESHES] != epoch_ref:
            # a refresh ended the stretch the closed form stopped at (or the search that gave
            # up): look again from here
            tries = 0
            searches = 0
            epoch_ref = stats[ST_REFRESHES]
        if closed and tries < MAX_PERIOD_TRIES:
            if snap_at >= 0 and p == snap_at + n_snap * per:
                j = n_snap
                # the items of the last period repeat the one before (else the chain ends)
                same = True
                for x in range(p - per, p):
                    if _row_shift(stream, x - per, x) != rs:
                        same = False
                        break
                hit = -1
                if same:
                    for i in range(j - 1, max(0, j - N_SNAP) - 1, -1):
                        o = i % N_SNAP
                        if (not_before <= scal0[o, S_LAST]
                                and stats[ST_REFRESHES] == stats0[o, ST_REFRESHES]
                                and _queued_steady(q, cq, arr, ready, win_tab, win_hist, win_cnt,
                                                   open_row, scal, rs * (j - i), q0[o], cq0[o],
                                                   arr0[o], ready0[o], win_hist0[o], win_cnt0[o],
                                                   open_row0[o], scal0[o], -1)):
                            hit = i
                            break
                if hit >= 0:
                    o = hit % N_SNAP
                    per_t = (j - hit) * per
                    rs_t = (j - hit) * rs
                    e = p
                    while e < end and _row_shift(stream, e - per_t, e) == rs_t:
                        e += 1
                    k = (e - p) // per_t
                    if geom[G_REFRESH] == 1:
                        period = scal[S_LAST] - scal0[o, S_LAST]
                        k = min(k, max(0, (scal[S_NEXT_REF] - 1 - scal[S_LAST]) // period))
                    snap_at = -1
                    # the period found is the template for after the next refresh
                    tpl_per = per_t
                    tpl_rs = rs_t
                    tpl_cyc = scal[S_LAST] - scal0[o, S_LAST]
                    tpl_open = 0 if (scal[S_OPEN_SINCE] == scal0[o, S_OPEN_SINCE]
                                     and scal[S_OPEN_CYC] == scal0[o, S_OPEN_CYC]) else 1
                    tpl_open_cyc = scal[S_OPEN_CYC] - scal0[o, S_OPEN_CYC]
                    tpl_end = e
                    for x in range(counts.shape[0]):
                        d_counts[0, x] = counts[x] - counts0[o, x]
                    for x in range(stats.shape[0]):
                        d_stats[0, x] = stats[x] - stats0[o, x]
                    for w in range(win_cnt.shape[0]):
                        for x in range(win_cnt.shape[1]):
                            d_win[0, w, x] = win_cnt[w, x] - win_cnt0[o, w, x]
                    if k > 0:
                        arr += _queued_skip(k, q, cq, ready, win_tab, win_hist, win_cnt,
                                            open_row, scal, counts, stats, rs_t, win_cnt0[o],
                                            scal0[o], counts0[o], stats0[o])
                        p += k * per_t
                    tpl_pos = p
                    tpl_refs = stats[ST_REFRESHES]
                    _snapshot(N_SNAP, q, cq, arr, ready, win_hist, win_cnt, open_row, scal,
                              counts, stats, q0, cq0, arr0, ready0, win_hist0, win_cnt0,
                              open_row0, scal0, counts0, stats0)
                    if k > 0:
                        # the next stretch (other items, or after the refresh): look again
                        tries = 0
                        searches = 0
                        epoch_ref = stats[ST_REFRESHES]
                        continue
                    tries += 1
                elif same:
                    tries += 1
                    if tries < MAX_PERIOD_TRIES:
                        _snapshot(j % N_SNAP, q, cq, arr, ready, win_hist, win_cnt, open_row,
                                  scal, counts, stats, q0, cq0, arr0, ready0, win_hist0,
                                  win_cnt0, open_row0, scal0, counts0, stats0)
                        n_snap += 1
                else:
                    tries += 1
                    snap_at = -1
            if snap_at < 0 and tries < MAX_PERIOD_TRIES:
                per, rs = queued_period(stream, p, end)
                if per > 0:
                    snap_at = p
                    n_snap = 1
                    searches = 0
                    _snapshot(0, q, cq, arr, ready, win_hist, win_cnt, open_row, scal, counts,
                              stats, q0, cq0, arr0, ready0, win_hist0, win_cnt0, open_row0,
                              scal0, counts0, stats0)
                else:
                    searches += 1
                    if searches >= MAX_PERIOD_SEARCHES:
                        tries = MAX_PERIOD_TRIES
        cmd = stream[p, 0]
        for _ in range(stream[p, 3]):
            while not cq_room(cmd, cq, geom):
                if quiet:
                    ok, t = cq_step_quiet(q, cq, FAR_CYC, not_before, cmd_tab, pr_start, pr_tab,
                                          win_tab, geom, ready, win_hist, win_cnt, open_row, scal,
                                          counts, stats, log, etab)
                else:
                    ok, t, log = cq_step(q, cq, FAR_CYC, not_before, cmd_tab, pr_start, pr_tab,
                                         win_tab, geom, ready, win_hist, win_cnt, open_row, scal,
                                         counts, stats, log, etab)
                arr = max(arr, t)
            cq_push(q, cq, cmd, stream[p, 1], stream[p, 2], arr, geom)
        p += 1
    while cq[CQ_N] > 0:
        if quiet:
            cq_step_quiet(q, cq, FAR_CYC, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                          ready, win_hist, win_cnt, open_row, scal, counts, stats, log, etab)
        else:
            ok, t, log = cq_step(q, cq, FAR_CYC, not_before, cmd_tab, pr_start, pr_tab, win_tab,
                                 geom, ready, win_hist, win_cnt, open_row, scal, counts, stats,
                                 log, etab)
    return log
