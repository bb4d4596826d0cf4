"""Per-channel DRAM/PIM command scheduling kernel (numba), driven by the compiled rule tables.

Models one memory controller channel with an in-order command queue and an open-row policy: each
stream item ``(cmd, bank, row, count, 0)`` asks for ``count`` column commands (or one row/channel
command); the kernel inserts the mode switch, PRE/PREA and ACT/ACT_AB the item needs, issues each
command at the earliest cycle every rule allows, and inserts an all-bank refresh (PREA + REFab)
whenever one is due (every nREFI) before the next command would issue. An item with
``cmd == SYNC`` ends a segment: the kernel returns so the event layer can synchronise channels.

Conventional RD/WR items go through a queued FR-FCFS controller instead when the config selects
it (``[controller] scheduler = "frfcfs"``, ``run_queued`` / ``_cq_step``): they wait in read and
write queues and are scheduled first-ready, oldest first, with write drain; a PIM item or a SYNC
is a barrier (the queues are drained before it). PIM commands always issue in order.

Fast path: after the first command of a run of identical column commands, the rest issue exactly
``self_gap`` cycles apart (every earlier constraint was already met by the first; nothing else is
issued in between), so they are stepped in closed form, up to the next refresh. The slow path
(``fast = 0``) issues them one by one; tests check that both give identical results. Two more
exact shortcuts for whole tokens (``run_steps``): channels with identical streams and equivalent
states are simulated once per step, and a memo replays units of items simulated before from an
equivalent state (``_memo_unit``).

Runs in plain Python under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import numpy as np

from pimsim.timing.jit import cached_njit, compile_scope  # noqa: F401 (compile_scope: re-exported)
from pimsim.timing.tables import (
    CT_CLOSED_FORM, CT_COLUMN, CT_DONE, CT_ENABLED, CT_MODE, CT_ROW, CT_SCOPE, CT_SELF_GAP,
    G_BANKS, G_BG, G_BPG, G_BUS, G_CMD_ACT, G_CMD_ACTAB, G_CMD_PRE, G_CMD_PREA, G_CMD_REF, G_CMD_TMOD,
    G_FAST, G_NODES, G_NREFI, G_PIM, G_REFRESH, G_TMOD_GATED, G_SCHED, G_RQ, G_WQ, G_WHI, G_WLO,
    G_CMD_RD, G_CMD_WR, SCHED_FRFCFS,
)

SYNC = -1  # stream pseudo-command: end of a segment
NOTHING = -2  # "no command needed" (e.g. ACT of a row that is already open)
NEVER = -(1 << 40)  # "last issue" before any command was issued
NO_MEMO = np.zeros(0, np.int64)  # memo argument that disables memoisation
_NONE = np.int64(-1)  # "no bank / row / command" as an int64 value (no literal specialisation)
_ONE = np.int64(1)
_ZERO = np.int64(0)

# scal[] slots of the per-channel state
S_LAST, S_NEXT_REF, S_MODE, S_DONE, S_LOG_N, S_ALLROW, S_OPEN_SINCE, S_OPEN_CYC = range(8)
N_SCAL = 8
# stats[] slots
ST_HITS, ST_MISSES, ST_REFRESHES, ST_INSERTED = range(4)
N_STATS = 4

_SCOPE_BANK = 0
_SCOPE_ALLBANK = 1
_ROW_NONE, _ROW_NEEDS_OPEN, _ROW_OPENS, _ROW_CLOSES, _ROW_NEEDS_OPEN_CLOSES, _ROW_ALL_CLOSED = range(6)


@cached_njit(inline="always")
def _copy_into(dst, src):
    """``dst[...] = src`` for two C-contiguous arrays of one shape, as a flat loop (a slice
    assignment would compile numba's broadcasting and its error formatting for every rank)."""
    d = dst.reshape(-1)
    s = src.reshape(-1)
    for i in range(d.shape[0]):
        d[i] = s[i]


@cached_njit(inline="always")
def _room(log, n, need):
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
def earliest(cmd, bank, cmd_tab, win_tab, geom, ready, win_hist, win_cnt, scal_last):
    """Earliest cycle at which ``cmd`` (to ``bank`` for bank commands) satisfies every rule.

    ``ready[node, f]`` holds the earliest cycle for ``f`` on one node; rows ``N`` and ``N + 1``
    hold constraints from all-bank commands on every bank group / bank, rows ``N + 2`` and
    ``N + 3`` the maximum over all bank groups / banks (so every check is O(1)).
    """
    scope = cmd_tab[cmd, CT_SCOPE]
    n_bg = geom[G_BG]
    nn = geom[G_NODES]
    t = max(ready[0, cmd], scal_last + geom[G_BUS])
    if scope == _SCOPE_BANK:
        g = bank // geom[G_BPG]
        t = max(t, ready[1 + g, cmd])
        t = max(t, ready[1 + n_bg + bank, cmd])
        t = max(t, ready[nn, cmd])
        t = max(t, ready[nn + 1, cmd])
    elif scope == _SCOPE_ALLBANK:
        for row in range(nn, nn + 4):
            t = max(t, ready[row, cmd])
    for w in range(win_tab.shape[0]):
        if win_tab[w, 1] != cmd:
            continue
        lvl = win_tab[w, 2]
        lat = win_tab[w, 3]
        size = win_tab[w, 4]
        lo, hi = _level_nodes(scope, bank, lvl, geom)
        for node in range(lo, hi):
            cnt = win_cnt[w, node]
            if cnt >= size:
                t = max(t, win_hist[w, node, cnt % size] + lat)
    return t


@cached_njit(inline="always")
def _level_nodes(scope, bank, lvl, geom):
    """Range [lo, hi) of nodes of level ``lvl`` that a command of ``scope`` touches."""
    n_bg = geom[G_BG]
    if lvl == 0:
        return 0, 1
    if scope == _SCOPE_BANK:
        if lvl == 1:
            g = 1 + bank // geom[G_BPG]
            return g, g + 1
        b = 1 + n_bg + bank
        return b, b + 1
    if scope == _SCOPE_ALLBANK:
        if lvl == 1:
            return 1, 1 + n_bg
        return 1 + n_bg, 1 + n_bg + geom[G_BANKS]
    return 0, 0  # channel-scope commands touch no bank or bank-group node


@cached_njit()
def issue(cmd, bank, row, t, n_same, cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist,
          win_cnt, open_row, scal, counts, log):
    """Record ``n_same`` issues of ``cmd`` ending at cycle ``t`` (spaced by its self gap).

    Updates every rule's ready time, windows, row and mode state, counters and the log; returns
    the (possibly grown) log array.
    """
    scope = cmd_tab[cmd, CT_SCOPE]
    nn = geom[G_NODES]
    n_bg = geom[G_BG]
    node_bg = 1 + bank // geom[G_BPG] if scope == _SCOPE_BANK else 0
    node_bank = 1 + n_bg + bank
    for r in range(pr_start[cmd], pr_start[cmd + 1]):
        f = pr_tab[r, 0]
        lvl = pr_tab[r, 1]
        v = t + pr_tab[r, 2]
        if lvl == 0:
            if ready[0, f] < v:
                ready[0, f] = v
            continue
        if scope == _SCOPE_BANK:
            node = node_bg if lvl == 1 else node_bank
            if ready[node, f] < v:
                ready[node, f] = v
        elif scope == _SCOPE_ALLBANK:
            if ready[nn - 1 + lvl, f] < v:
                ready[nn - 1 + lvl, f] = v
        else:
            continue  # channel-scope commands touch no bank or bank group
        if ready[nn + 1 + lvl, f] < v:
            ready[nn + 1 + lvl, f] = v
    gap = cmd_tab[cmd, CT_SELF_GAP]
    for w in range(win_tab.shape[0]):
        if win_tab[w, 0] != cmd:
            continue
        size = win_tab[w, 4]
        lo, hi = _level_nodes(scope, bank, win_tab[w, 2], geom)
        first = max(0, n_same - size)
        for node in range(lo, hi):
            for j in range(first, n_same):
                tj = t - (n_same - 1 - j) * gap
                win_hist[w, node, win_cnt[w, node] % size] = tj
                win_cnt[w, node] += 1
    rowb = cmd_tab[cmd, CT_ROW]
    if rowb == _ROW_OPENS or rowb == _ROW_CLOSES or rowb == _ROW_NEEDS_OPEN_CLOSES:
        was_open = scal[S_ALLROW] != -1
        new_row = row if rowb == _ROW_OPENS else -1
        if scope == _SCOPE_BANK:
            open_row[bank] = new_row
            same = open_row[0]
            for b in range(1, open_row.shape[0]):
                if open_row[b] != same:
                    same = -2
                    break
            scal[S_ALLROW] = same
        else:
            for b in range(open_row.shape[0]):
                open_row[b] = new_row
            scal[S_ALLROW] = new_row
        # cycles with at least one bank open (active vs precharged standby, for energy)
        now_open = scal[S_ALLROW] != -1
        if was_open and not now_open:
            scal[S_OPEN_CYC] += t - scal[S_OPEN_SINCE]
        elif now_open and not was_open:
            scal[S_OPEN_SINCE] = t
    if cmd == geom[G_CMD_TMOD]:
        scal[S_MODE] = 1 - scal[S_MODE]
    counts[cmd] += n_same
    scal[S_LAST] = t
    done = t + cmd_tab[cmd, CT_DONE]
    if done > scal[S_DONE]:
        scal[S_DONE] = done
    if log.shape[0] > 0:
        n = scal[S_LOG_N]
        log = _room(log, n, n + n_same)
        for j in range(n_same):
            log[n + j, 0] = t - (n_same - 1 - j) * gap
            log[n + j, 1] = cmd
            log[n + j, 2] = bank if scope == _SCOPE_BANK else -1
            log[n + j, 3] = row
        scal[S_LOG_N] = n + n_same
    return log


@cached_njit(inline="always")
def next_needed(cmd, bank, row, cmd_tab, geom, open_row, scal):
    """The command that must issue next to make progress on ``cmd``: (cmd, bank, row)."""
    if geom[G_PIM] == 1:
        mode = cmd_tab[cmd, CT_MODE]
        if mode >= 0 and mode != scal[S_MODE]:
            return geom[G_CMD_TMOD], -1, -1
    return row_step(cmd, bank, row, cmd_tab, geom, open_row, scal)


@cached_njit(inline="always")
def row_step(cmd, bank, row, cmd_tab, geom, open_row, scal):
    """The row command (PRE/PREA/ACT/ACT_AB) ``cmd`` needs next, or ``cmd`` itself, once the
    channel is in its mode."""
    scope = cmd_tab[cmd, CT_SCOPE]
    rowb = cmd_tab[cmd, CT_ROW]
    allrow = scal[S_ALLROW]  # row open in every bank, -1 all closed, -2 mixed
    if rowb == _ROW_NEEDS_OPEN or rowb == _ROW_NEEDS_OPEN_CLOSES:
        if scope == _SCOPE_BANK:
            if open_row[bank] == row:
                return cmd, bank, row
            if open_row[bank] >= 0:
                return geom[G_CMD_PRE], bank, open_row[bank]
            return geom[G_CMD_ACT], bank, row
        if allrow == row:
            return cmd, bank, row
        if allrow != -1:
            return geom[G_CMD_PREA], -1, -1
        act = geom[G_CMD_ACTAB]
        if geom[G_PIM] == 1 and cmd_tab[act, CT_MODE] >= 0 and scal[S_MODE] != cmd_tab[act, CT_MODE]:
            return geom[G_CMD_TMOD], -1, -1
        return act, -1, row
    if rowb == _ROW_OPENS:
        if scope == _SCOPE_BANK:
            if open_row[bank] == row:
                return NOTHING, bank, row
            if open_row[bank] >= 0:
                return geom[G_CMD_PRE], bank, open_row[bank]
            return cmd, bank, row
        if allrow == row:
            return NOTHING, -1, row
        if allrow != -1:
            return geom[G_CMD_PREA], -1, -1
        return cmd, -1, row
    if rowb == _ROW_CLOSES:
        if scope == _SCOPE_BANK:
            if open_row[bank] < 0:
                return NOTHING, bank, -1
            return cmd, bank, open_row[bank]
        if allrow == -1:
            return NOTHING, -1, -1
        return cmd, -1, -1
    if rowb == _ROW_ALL_CLOSED:
        if allrow != -1:
            return geom[G_CMD_PREA], -1, -1
        return cmd, -1, -1
    return cmd, bank, row


@cached_njit(inline="always")
def _refresh_due(t, geom, scal):
    return geom[G_REFRESH] == 1 and t >= scal[S_NEXT_REF]


@cached_njit()
def run_item(stream, pos, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
             win_hist, win_cnt, open_row, scal, counts, stats, log):
    """Issue one stream item (with the ACT/PRE/mode switch/refresh it needs); returns the log."""
    ref = geom[G_CMD_REF]
    prea = geom[G_CMD_PREA]
    cmd = stream[pos, 0]
    bank = stream[pos, 1]
    row = stream[pos, 2]
    count = stream[pos, 3]
    is_column = cmd_tab[cmd, CT_COLUMN] == 1
    k = 0
    missed = False
    while k < count:
        ncmd, nbank, nrow = next_needed(cmd, bank, row, cmd_tab, geom, open_row, scal)
        if ncmd == NOTHING:
            k += 1
            continue
        t = max(not_before, earliest(ncmd, nbank, cmd_tab, win_tab, geom, ready, win_hist,
                                     win_cnt, scal[S_LAST]))
        if ncmd == geom[G_CMD_TMOD] and geom[G_TMOD_GATED] == 1:
            # the switch issues in place of the command it enables, once that one is ready
            pcmd, pbank, _ = row_step(cmd, bank, row, cmd_tab, geom, open_row, scal)
            if pcmd >= 0:
                t = max(t, earliest(pcmd, pbank, cmd_tab, win_tab, geom, ready, win_hist,
                                    win_cnt, scal[S_LAST]))
        if _refresh_due(t, geom, scal):
            # precharge everything still open, then refresh, at the earliest legal cycles
            # from the due time on (which may fall in idle time before ``not_before``)
            log = _cq_refresh(cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist,
                              win_cnt, open_row, scal, counts, stats, log)
            if geom[G_FAST] == 1 and log.shape[0] == 0:
                log = _idle_refreshes(not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                                      ready, win_hist, win_cnt, open_row, scal, counts, stats,
                                      log)
            continue
        log = issue(ncmd, nbank, nrow, t, _ONE, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                    win_hist, win_cnt, open_row, scal, counts, log)
        if ncmd != cmd:
            stats[ST_INSERTED] += 1
            missed = True
            continue
        k += 1
        if is_column:
            if missed:
                stats[ST_MISSES] += 1
            else:
                stats[ST_HITS] += 1
        missed = False
        if geom[G_FAST] == 1 and k < count and cmd_tab[cmd, CT_CLOSED_FORM] == 1:
            gap = cmd_tab[cmd, CT_SELF_GAP]
            n = count - k
            if geom[G_REFRESH] == 1:
                n = min(n, max(0, (scal[S_NEXT_REF] - 1 - t) // gap))
            if n > 0:
                log = issue(cmd, bank, row, t + n * gap, n, cmd_tab, pr_start, pr_tab,
                            win_tab, geom, ready, win_hist, win_cnt, open_row, scal, counts,
                            log)
                k += n
                if is_column:
                    stats[ST_HITS] += n
    return log


@cached_njit()
def _pair_run(stream, pos, end, cmd_tab, limit):
    """How many identical item pairs (at most ``limit``) start at ``pos``: (all-bank column
    command, channel command), e.g. (MAC_AB row r, RD_MAC), differing only in the row (a new
    row every pair, or the same row every pair) and the starting column (no timing effect)."""
    if pos + 1 >= end:
        return 0
    a = stream[pos, 0]
    b = stream[pos + 1, 0]
    if a < 0 or b < 0:
        return 0
    if not (cmd_tab[a, CT_SCOPE] == _SCOPE_ALLBANK and cmd_tab[a, CT_ROW] == _ROW_NEEDS_OPEN
            and cmd_tab[b, CT_SCOPE] == 2 and cmd_tab[b, CT_ROW] == _ROW_NONE):
        return 0
    m = 1
    p = pos + 2
    same_row = p < end and stream[p, 2] == stream[pos, 2]  # all hits, or a new row each pair
    while p + 1 < end and m < limit:
        row_ok = stream[p, 2] == stream[pos, 2] if same_row else stream[p, 2] != stream[p - 2, 2]
        same = (stream[p, 0] == a and stream[p, 1] == stream[pos, 1]
                and stream[p, 3] == stream[pos, 3] and row_ok and stream[p, 2] >= 0)
        for f in range(5):
            if stream[p + 1, f] != stream[pos + 1, f]:
                same = False
        if not same:
            break
        m += 1
        p += 2
    return m


@cached_njit()
def _fast_forward_pairs(stream, pos, m, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                        ready, win_hist, win_cnt, open_row, scal, counts, stats, log):
    """Run ``m >= 3`` identical pairs starting at ``pos``; returns the next position.

    Pairs are issued command by command until the controller state after pair j equals the
    state after pair j-1 shifted by the pair period P: every ready time relative to the last
    issue (times at or before it can no longer bind), the open row, the mode, the completion
    time and when the open row was opened; no refresh and no window rule in the pair. The
    scheduling rules being invariant under a shift of time, every further pair is pair j
    shifted by P again, up to the next refresh. Those pairs are applied in closed form: the
    state moves by k P and the counters by k pairs' worth.
    """
    end_pair = pos + 2 * m
    ready0 = ready.copy()
    counts0 = counts.copy()
    stats0 = stats.copy()
    scal0 = scal.copy()
    have_prev = False
    p = pos
    while p < end_pair:
        if have_prev:
            _copy_into(ready0, ready)
            _copy_into(counts0, counts)
            _copy_into(stats0, stats)
            _copy_into(scal0, scal)
        win0 = win_cnt.sum()
        log = run_item(stream, p, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                       win_hist, win_cnt, open_row, scal, counts, stats, log)
        log = run_item(stream, p + 1, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                       ready, win_hist, win_cnt, open_row, scal, counts, stats, log)
        p += 2
        if not have_prev:
            have_prev = True
            continue
        if p >= end_pair:
            break
        last0 = scal0[S_LAST]
        last1 = scal[S_LAST]
        period = last1 - last0
        steady = (period > 0 and scal[S_ALLROW] == stream[p - 2, 2]
                  and scal0[S_ALLROW] == stream[p - 4, 2] and scal[S_MODE] == scal0[S_MODE]
                  and win_cnt.sum() == win0 and stats[ST_REFRESHES] == stats0[ST_REFRESHES]
                  and scal[S_DONE] - last1 == scal0[S_DONE] - last0)
        same_row = stream[p - 2, 2] == stream[p - 4, 2]  # the row stays open over the run
        if same_row:
            steady = steady and scal[S_OPEN_SINCE] == scal0[S_OPEN_SINCE]
        else:
            steady = steady and scal[S_OPEN_SINCE] - last1 == scal0[S_OPEN_SINCE] - last0
        if steady:
            for i in range(ready.shape[0]):
                for j in range(ready.shape[1]):
                    if max(ready[i, j] - last1, 0) != max(ready0[i, j] - last0, 0):
                        steady = False
                        break
                if not steady:
                    break
        if not steady:
            continue
        k = (end_pair - p) // 2
        if geom[G_REFRESH] == 1:
            k = min(k, max(0, (scal[S_NEXT_REF] - 1 - last1) // period))
        if k <= 0:
            break
        shift = k * period
        for i in range(ready.shape[0]):
            for j in range(ready.shape[1]):
                ready[i, j] += shift
        for x in range(counts.shape[0]):
            counts[x] += k * (counts[x] - counts0[x])
        for x in range(stats.shape[0]):
            stats[x] += k * (stats[x] - stats0[x])
        scal[S_OPEN_CYC] += k * (scal[S_OPEN_CYC] - scal0[S_OPEN_CYC])
        scal[S_LAST] += shift
        scal[S_DONE] += shift
        if not same_row:
            scal[S_OPEN_SINCE] += shift
        p += 2 * k
        new_row = stream[p - 2, 2]
        for b in range(open_row.shape[0]):
            open_row[b] = new_row
        scal[S_ALLROW] = new_row
        break
    return p, log


# ---------------------------------------------------------------- queued controller (FR-FCFS)
# Conventional RD/WR requests of a channel wait in a read and a write queue (``geom[G_RQ]``,
# ``geom[G_WQ]`` entries) and are scheduled FR-FCFS, as Ramulator 2's controller (which the public
# AiM simulator uses) does; see ``_cq_step``. Queue rows: (cmd, bank, row, arrival cycle,
# activated for it, a row command was issued for it), oldest first.
Q_CMD, Q_BANK, Q_ROW, Q_ARR, Q_ACT, Q_MISS = range(6)
QF = 6
# controller state: requests queued, write-drain mode (1 = serving writes), reads and writes
# holding a queue entry (an entry frees when its request's column command issues)
CQ_N, CQ_WMODE, CQ_NR, CQ_NW = range(4)
N_CQ = 4
_FAR = np.int64(1 << 60)


@cached_njit(inline="always")
def is_queued(cmd, geom):
    """Whether stream command ``cmd`` is conventional traffic the FR-FCFS controller queues."""
    return geom[G_SCHED] == SCHED_FRFCFS and (cmd == geom[G_CMD_RD] or cmd == geom[G_CMD_WR])


@cached_njit()
def _idle_refreshes(not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist,
                    win_cnt, open_row, scal, counts, stats, log):
    """Closed form over an idle gap, right after a refresh: every further refresh due before
    ``not_before`` but the last issues at its due time (the banks are closed and REF -> REF
    nRFC < nREFI, which the config loader guarantees), so they are recorded at once; the last
    one is left to the command loop. Identical to issuing them one by one (fast mode only)."""
    nrefi = geom[G_NREFI]
    m = (not_before - scal[S_NEXT_REF]) // nrefi
    if m <= 0 or scal[S_ALLROW] != -1:
        return log
    ref = geom[G_CMD_REF]
    if earliest(ref, -1, cmd_tab, win_tab, geom, ready, win_hist, win_cnt,
                scal[S_LAST]) > scal[S_NEXT_REF] or cmd_tab[ref, CT_SELF_GAP] > nrefi:
        return log
    t_last = scal[S_NEXT_REF] + (m - 1) * nrefi
    log = issue(ref, _NONE, _NONE, t_last, m, cmd_tab, pr_start, pr_tab, win_tab, geom,
                ready, win_hist, win_cnt, open_row, scal, counts, log)
    stats[ST_REFRESHES] += m
    scal[S_NEXT_REF] += m * nrefi
    return log


@cached_njit()
def _cq_refresh(cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist, win_cnt, open_row,
                scal, counts, stats, log):
    """The all-bank refresh that is due (PREA if a bank is open, then REFab), at the earliest
    legal cycles from the due time on (as ``run_item``)."""
    ref = geom[G_CMD_REF]
    prea = geom[G_CMD_PREA]
    if scal[S_ALLROW] != -1:
        tp = max(scal[S_NEXT_REF], earliest(prea, -1, cmd_tab, win_tab, geom, ready, win_hist,
                                            win_cnt, scal[S_LAST]))
        log = issue(prea, _NONE, _NONE, tp, _ONE, cmd_tab,
                    pr_start, pr_tab, win_tab, geom, ready,
                    win_hist, win_cnt, open_row, scal, counts, log)
        stats[ST_INSERTED] += 1
    tr = max(scal[S_NEXT_REF], earliest(ref, -1, cmd_tab, win_tab, geom, ready, win_hist, win_cnt,
                                        scal[S_LAST]))
    log = issue(ref, _NONE, _NONE, tr, _ONE, cmd_tab,
                pr_start, pr_tab, win_tab, geom, ready, win_hist,
                win_cnt, open_row, scal, counts, log)
    stats[ST_REFRESHES] += 1
    scal[S_NEXT_REF] += geom[G_NREFI]
    return log


@cached_njit()
def _cq_step(q, cq, limit, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist,
             win_cnt, open_row, scal, counts, stats, log):
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
    * a due refresh goes first (PREA + REFab, ``_cq_refresh``); a mode switch (TMOD) issues in
      place of the chosen command when the channel is not in the mode RD/WR need.

    Every command goes through ``earliest`` / ``issue`` of the rule table, so the checker
    verifies the log as for in-order streams.
    """
    n = cq[CQ_N]
    if n == 0:
        return 0, _FAR, log
    nr = 0
    nw = 0
    wr_cmd = geom[G_CMD_WR]
    for i in range(n):
        if q[i, Q_ACT] == 0:
            if q[i, Q_CMD] == wr_cmd:
                nw += 1
            else:
                nr += 1
    wm = cq[CQ_WMODE]
    if wm == 0:
        if nw > geom[G_WHI] or nr == 0:
            wm = 1
    elif nw < geom[G_WLO] and nr != 0:
        wm = 0
    cq[CQ_WMODE] = wm
    best = -1
    best_t = _FAR
    best_pri = 3
    best_cmd = _NONE
    best_bank = _NONE
    best_row = _NONE
    pre = geom[G_CMD_PRE]
    for i in range(n):
        cmd = q[i, Q_CMD]
        act = q[i, Q_ACT]
        if act == 0 and (cmd == wr_cmd) != (wm == 1):
            continue
        bank = q[i, Q_BANK]
        ncmd, nbank, nrow = row_step(cmd, bank, q[i, Q_ROW], cmd_tab, geom, open_row, scal)
        if ncmd == pre:
            guarded = False
            for j in range(n):
                if (q[j, Q_ACT] == 1 and q[j, Q_BANK] == bank
                        and q[j, Q_ROW] == open_row[bank]):
                    guarded = True
                    break
            if guarded:
                continue
        t = max(not_before, q[i, Q_ARR], earliest(ncmd, nbank, cmd_tab, win_tab, geom, ready,
                                                   win_hist, win_cnt, scal[S_LAST]))
        pri = 1
        if ncmd == cmd and act == 1:
            pri = 0
        if t < best_t or (t == best_t and pri < best_pri):
            best, best_t, best_pri = i, t, pri
            best_cmd, best_bank, best_row = ncmd, nbank, nrow
    if best < 0:
        return 0, _FAR, log  # cannot happen: an activated request's column is always a candidate
    t = best_t
    tmod = geom[G_CMD_TMOD]
    switch = False
    if geom[G_PIM] == 1:
        mode = cmd_tab[q[best, Q_CMD], CT_MODE]
        if mode >= 0 and mode != scal[S_MODE]:
            switch = True
            t = earliest(tmod, -1, cmd_tab, win_tab, geom, ready, win_hist, win_cnt, scal[S_LAST])
            t = max(t, not_before)
            if geom[G_TMOD_GATED] == 1:
                t = max(t, best_t)
    if _refresh_due(t, geom, scal):
        if scal[S_NEXT_REF] >= limit:
            return 0, t, log  # a request arriving before the refresh is due may go first
        log = _cq_refresh(cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist, win_cnt,
                          open_row, scal, counts, stats, log)
        for i in range(n):
            q[i, Q_ACT] = 0  # their rows were closed
        return 1, t, log
    if t >= limit:
        return 0, t, log
    if switch:
        log = issue(tmod, _NONE, _NONE, t, _ONE, cmd_tab,
                    pr_start, pr_tab, win_tab, geom, ready,
                    win_hist, win_cnt, open_row, scal, counts, log)
        stats[ST_INSERTED] += 1
        return 1, t, log
    log = issue(best_cmd, best_bank, best_row, t, _ONE, cmd_tab, pr_start, pr_tab, win_tab, geom,
                ready, win_hist, win_cnt, open_row, scal, counts, log)
    if best_cmd != q[best, Q_CMD]:
        stats[ST_INSERTED] += 1
        q[best, Q_MISS] = 1
        if best_cmd == geom[G_CMD_ACT]:
            q[best, Q_ACT] = 1
        return 1, t, log
    if cmd_tab[best_cmd, CT_COLUMN] == 1:
        if q[best, Q_MISS] == 1:
            stats[ST_MISSES] += 1
        else:
            stats[ST_HITS] += 1
    if best_cmd == wr_cmd:
        cq[CQ_NW] -= 1
    else:
        cq[CQ_NR] -= 1
    for i in range(best, n - 1):
        for f in range(QF):
            q[i, f] = q[i + 1, f]
    cq[CQ_N] = n - 1
    return 1, t, log


@cached_njit(inline="always")
def _cq_room(cmd, cq, geom):
    """Whether the queue of ``cmd`` (reads or writes) has a free entry."""
    if cmd == geom[G_CMD_WR]:
        return cq[CQ_NW] < geom[G_WQ]
    return cq[CQ_NR] < geom[G_RQ]


@cached_njit(inline="always")
def _cq_push(q, cq, cmd, bank, row, arr, geom):
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


@cached_njit()
def run_queued(stream, pos, end, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
               win_hist, win_cnt, open_row, scal, counts, stats, log):
    """Serve the conventional RD/WR items ``[pos, end)`` through the FR-FCFS controller and
    drain it (the next item is a PIM command, a SYNC or the end: a barrier). Item ``(cmd, bank,
    row, n)`` is ``n`` requests to that row; they enter the queues in stream order, all ready at
    ``not_before``, each as soon as its queue has a free entry (an entry frees when its request's
    column command issues). Returns the log."""
    q = np.zeros((geom[G_RQ] + geom[G_WQ], QF), np.int64)
    cq = np.zeros(N_CQ, np.int64)
    cq[CQ_WMODE] = 1  # no read waits: Ramulator 2's hysteresis is in write mode
    arr = not_before
    for p in range(pos, end):
        cmd = stream[p, 0]
        for _ in range(stream[p, 3]):
            while not _cq_room(cmd, cq, geom):
                ok, t, log = _cq_step(q, cq, _FAR, not_before, cmd_tab, pr_start, pr_tab,
                                      win_tab, geom, ready, win_hist, win_cnt, open_row, scal,
                                      counts, stats, log)
                arr = max(arr, t)
            _cq_push(q, cq, cmd, stream[p, 1], stream[p, 2], arr, geom)
    while cq[CQ_N] > 0:
        ok, t, log = _cq_step(q, cq, _FAR, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                              ready, win_hist, win_cnt, open_row, scal, counts, stats, log)
    return log


# ---------------------------------------------------------------- memo of simulated units
# One flat int64 array holds the memo: a header, an open-addressing hash table of entry ids,
# per-entry metadata (hash, offset, key length, value length), the entry words, and scratch.
(M_HT, M_MAXE, M_CAP, M_N, M_USED, M_TAB, M_META, M_DAT, M_SCR, M_SCR_LEN, M_HITS,
 M_MISSES) = range(12)
M_HEADER = 16
MEMO_BLOCK = 16  # stream items per block unit (units that are not pair runs)
_NO_REF = -(1 << 50)  # key slot value: entry valid for any refresh time after its last command


def new_memo(capacity_words: int = 1 << 23, max_entries: int = 1 << 16,
             scratch_words: int = 1 << 15) -> np.ndarray:
    """An empty memo (see ``_memo_unit``); ``np.zeros(0)`` disables memoisation."""
    ht = 1
    while ht < 2 * max_entries:
        ht *= 2
    memo = np.zeros(M_HEADER + ht + 4 * max_entries + capacity_words + scratch_words, np.int64)
    memo[M_HT], memo[M_MAXE], memo[M_CAP] = ht, max_entries, capacity_words
    memo[M_TAB] = M_HEADER
    memo[M_META] = M_HEADER + ht
    memo[M_DAT] = M_HEADER + ht + 4 * max_entries
    memo[M_SCR] = memo[M_DAT] + capacity_words
    memo[M_SCR_LEN] = scratch_words
    return memo


@cached_njit(inline="always")
def _label(memo, lab0, n_lab, row):
    """Canonical label of ``row``: the order of its first appearance (negative rows stay)."""
    if row < 0:
        return row, n_lab
    for i in range(n_lab):
        if memo[lab0 + i] == row:
            return i, n_lab
    memo[lab0 + n_lab] = row
    return n_lab, n_lab + 1


@cached_njit(inline="always")
def _pack_ready(ready, cp, memo, n):
    """Write the ready times after ``cp`` at ``memo[n:]``: a count, then one word per time
    (index << 32 | cycles after cp). Returns the next free index, or -1 if one does not fit."""
    nz_at = n
    n += 1
    ncol = ready.shape[1]
    for i in range(ready.shape[0]):
        for j in range(ncol):
            v = ready[i, j] - cp
            if v > 0:
                if v >= (1 << 31):
                    return -1
                memo[n] = ((i * ncol + j) << 32) | v
                n += 1
    memo[nz_at] = n - nz_at - 1
    return n


@cached_njit(inline="always")
def _pack_windows(win_tab, win_hist, win_cnt, cp, memo, n, pre, q):
    """Write the window state at ``memo[n:]``: per (window, node), the change of its count since
    ``pre[q], pre[q + 1], ...`` (only when ``q >= 0``), the number of entries that count, then
    those entries oldest first as cycles their window still binds after ``cp`` (0: no longer).
    Returns the next free index."""
    for w in range(win_tab.shape[0]):
        lat = win_tab[w, 3]
        size = win_tab[w, 4]
        for node in range(win_cnt.shape[1]):
            c = win_cnt[w, node]
            if q >= 0:
                memo[n] = c - pre[q]
                n += 1
                q += 1
            memo[n] = min(c, size)
            n += 1
            for j in range(min(c, size)):
                memo[n] = max(win_hist[w, node, (c + j) % size if c >= size else j] + lat - cp, 0)
                n += 1
    return n


@cached_njit()
def _memo_key(stream, pos, kind, n_it, nb, geom, win_tab, ready, win_hist, win_cnt, open_row,
              scal, memo, k0, lab0, room):
    """Write the unit's key at ``memo[k0:]``: everything its outcome depends on, relative to
    ``cp`` (the last issue + bus gap; no later command can issue earlier, so ready times,
    window entries and the completion time at or before it compare as equal) and with rows
    relabelled canonically (timing depends on which rows are equal, not on their numbers).
    Returns (key length or -1 if it does not fit, labels used, cp)."""
    cp = scal[S_LAST] + geom[G_BUS]
    need = 16 + open_row.shape[0] + 4 * n_it + 2 * ready.shape[0] * ready.shape[1]
    need += win_cnt.shape[0] * win_cnt.shape[1] * (1 + win_hist.shape[2])
    if need > room:
        return -1, 0, cp
    n = k0
    memo[n] = kind
    memo[n + 1] = n_it
    memo[n + 2] = max(nb - cp, 0)
    memo[n + 3] = scal[S_DONE] - cp
    memo[n + 4] = scal[S_MODE]
    memo[n + 5] = _NO_REF  # refresh slot, see _memo_unit
    n += 6
    n_lab = 0
    for b in range(open_row.shape[0]):
        memo[n], n_lab = _label(memo, lab0, n_lab, open_row[b])
        n += 1
    if kind != 1:
        for p in range(pos, pos + n_it):
            memo[n] = stream[p, 0]
            memo[n + 1] = stream[p, 1]
            memo[n + 2], n_lab = _label(memo, lab0, n_lab, stream[p, 2])
            memo[n + 3] = stream[p, 3]
            n += 4
    else:
        memo[n] = stream[pos, 0]
        memo[n + 1] = stream[pos, 1]
        memo[n + 2] = stream[pos, 3]
        for f in range(4):
            memo[n + 3 + f] = stream[pos + 1, f]
        n += 7
        for j in range(n_it):
            memo[n], n_lab = _label(memo, lab0, n_lab, stream[pos + 2 * j, 2])
            n += 1
    n = _pack_ready(ready, cp, memo, n)
    if n < 0:
        return -1, 0, cp
    n = _pack_windows(win_tab, win_hist, win_cnt, cp, memo, n, memo, -1)
    return n - k0, n_lab, cp


@cached_njit(inline="always")
def _memo_hash(memo, k0, klen):
    h = np.int64(-3750763034362895579)  # FNV-1a offset basis
    for i in range(k0, k0 + klen):
        h = (h ^ memo[i]) * np.int64(1099511628211)
    return h


@cached_njit()
def _memo_find(memo, k0, klen, h):
    """Entry id of the key at ``memo[k0:k0+klen]`` (full comparison), or -1."""
    mask = memo[M_HT] - 1
    tab = memo[M_TAB]
    meta = memo[M_META]
    dat = memo[M_DAT]
    slot = h & mask
    while memo[tab + slot] != 0:
        e = memo[tab + slot] - 1
        if memo[meta + 4 * e] == h and memo[meta + 4 * e + 2] == klen:
            off = dat + memo[meta + 4 * e + 1]
            same = True
            for i in range(klen):
                if memo[off + i] != memo[k0 + i]:
                    same = False
                    break
            if same:
                return e
        slot = (slot + 1) & mask
    return -1


@cached_njit()
def _memo_insert(memo, k0, klen, v0, vlen, h):
    e = memo[M_N]
    if e >= memo[M_MAXE] or memo[M_USED] + klen + vlen > memo[M_CAP]:
        return  # full: later units are simulated (exact, just not faster)
    off = memo[M_DAT] + memo[M_USED]
    for i in range(klen):
        memo[off + i] = memo[k0 + i]
    for i in range(vlen):
        memo[off + klen + i] = memo[v0 + i]
    meta = memo[M_META] + 4 * e
    memo[meta], memo[meta + 1], memo[meta + 2], memo[meta + 3] = h, memo[M_USED], klen, vlen
    memo[M_USED] += klen + vlen
    memo[M_N] = e + 1
    mask = memo[M_HT] - 1
    slot = h & mask
    while memo[memo[M_TAB] + slot] != 0:
        slot = (slot + 1) & mask
    memo[memo[M_TAB] + slot] = e + 1


@cached_njit()
def _memo_apply(memo, v0, cp, lab0, win_tab, ready, win_hist, win_cnt, open_row, scal, counts,
                stats):
    """Move the state by a recorded outcome (see ``_memo_value``); returns the items consumed."""
    n_items = memo[v0]
    if memo[v0 + 5] == 1:
        f_pre = _open_cyc_at(scal, cp)
        scal[S_OPEN_CYC] = f_pre + memo[v0 + 6]
        scal[S_OPEN_SINCE] = cp + memo[v0 + 7]
    scal[S_LAST] = cp + memo[v0 + 1]
    scal[S_DONE] = cp + memo[v0 + 2]
    scal[S_MODE] = memo[v0 + 3]
    scal[S_NEXT_REF] += memo[v0 + 4]
    n = v0 + 8
    same = -3
    for b in range(open_row.shape[0]):
        lb = memo[n]
        open_row[b] = memo[lab0 + lb] if lb >= 0 else lb
        if same == -3:
            same = open_row[b]
        elif open_row[b] != same:
            same = -2
        n += 1
    scal[S_ALLROW] = same
    ncol = ready.shape[1]
    nz = memo[n]
    n += 1
    for _ in range(nz):
        i = memo[n] >> 32
        ready[i // ncol, i % ncol] = cp + (memo[n] & 0xFFFFFFFF)
        n += 1
    for w in range(win_tab.shape[0]):
        lat = win_tab[w, 3]
        size = win_tab[w, 4]
        for node in range(win_cnt.shape[1]):
            c = win_cnt[w, node] + memo[n]
            k = memo[n + 1]
            n += 2
            win_cnt[w, node] = c
            for j in range(k):
                win_hist[w, node, (c + j) % size if c >= size else j] = cp + memo[n] - lat
                n += 1
    for x in range(counts.shape[0]):
        counts[x] += memo[n + x]
    n += counts.shape[0]
    for x in range(stats.shape[0]):
        stats[x] += memo[n + x]
    return n_items


@cached_njit()
def _memo_value(memo, v0, room, n_items, cp, lab0, n_lab, pre, win_tab, ready, win_hist, win_cnt,
                open_row, scal, counts, stats):
    """Write the outcome of a simulated unit at ``memo[v0:]`` relative to ``cp``; ``pre`` holds
    the state's counters before it. Returns the value length, or -1 (not recordable)."""
    n_c = counts.shape[0]
    n_s = stats.shape[0]
    need = 16 + open_row.shape[0] + 2 * ready.shape[0] * ready.shape[1] + n_c + n_s
    need += win_cnt.shape[0] * win_cnt.shape[1] * (2 + win_hist.shape[2])
    if need > room:
        return -1
    memo[v0] = n_items
    memo[v0 + 1] = scal[S_LAST] - cp
    memo[v0 + 2] = scal[S_DONE] - cp
    memo[v0 + 3] = scal[S_MODE]
    memo[v0 + 4] = scal[S_NEXT_REF] - pre[n_c + n_s + 2]
    changed = scal[S_OPEN_CYC] != pre[n_c + n_s] or scal[S_OPEN_SINCE] != pre[n_c + n_s + 1]
    memo[v0 + 5] = 1 if changed else 0
    memo[v0 + 6] = scal[S_OPEN_CYC] - pre[n_c + n_s + 3]  # minus the open time at cp before
    memo[v0 + 7] = scal[S_OPEN_SINCE] - cp
    n = v0 + 8
    for b in range(open_row.shape[0]):
        r = open_row[b]
        lb = r
        if r >= 0:
            lb = -1
            for i in range(n_lab):
                if memo[lab0 + i] == r:
                    lb = i
                    break
            if lb < 0:
                return -1  # a row the key did not name (cannot happen for well-formed units)
        memo[n] = lb
        n += 1
    n = _pack_ready(ready, cp, memo, n)
    if n < 0:
        return -1
    n = _pack_windows(win_tab, win_hist, win_cnt, cp, memo, n, pre, n_c + n_s + 4)
    for x in range(n_c):
        memo[n + x] = counts[x] - pre[x]
    n += n_c
    for x in range(n_s):
        memo[n + x] = stats[x] - pre[n_c + x]
    n += n_s
    return n - v0


@cached_njit()
def _memo_unit(stream, pos, kind, n_it, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
               ready, win_hist, win_cnt, open_row, scal, counts, stats, log, memo):
    """Run one unit (``kind`` 1: a run of ``n_it`` identical pairs, see _fast_forward_pairs;
    0: ``n_it`` items; 2: a run of ``n_it`` conventional RD/WR items through the FR-FCFS queues,
    ``run_queued``) from the memo if an equal unit was simulated before, else simulate and
    record it. Returns (next position, log).

    The key (``_memo_key``) holds every input the unit's commands depend on: ready times,
    window entries and completion relative to the last issue, mode, open rows and the unit's
    items with rows relabelled, the segment start. An entry recorded without a refresh is valid
    whenever the next refresh falls after its last command (the refresh time then never
    entered a decision); one with a refresh adds the refresh time to the key. Applying an
    entry moves the state exactly as simulating the unit would; tests hold both equal.
    """
    n_c = counts.shape[0]
    n_s = stats.shape[0]
    n_w = win_cnt.shape[0] * win_cnt.shape[1]
    scr = memo[M_SCR]
    lab0 = scr
    pre0 = lab0 + open_row.shape[0] + (n_it if kind == 1 else 4 * n_it) + 1
    k0 = pre0 + n_c + n_s + 4 + n_w
    room = (scr + memo[M_SCR_LEN] - k0) // 2
    v0 = k0 + room
    klen = -1
    n_lab = 0
    cp = 0
    if room > 0:
        klen, n_lab, cp = _memo_key(stream, pos, kind, n_it, not_before, geom, win_tab, ready,
                                    win_hist, win_cnt, open_row, scal, memo, k0, lab0, room)
    h0 = 0
    e0 = -1
    h1 = 0
    if klen > 0:
        h0 = _memo_hash(memo, k0, klen)
        e0 = _memo_find(memo, k0, klen, h0)
        if e0 >= 0:
            ev = memo[M_DAT] + memo[memo[M_META] + 4 * e0 + 1] + klen
            if geom[G_REFRESH] == 0 or scal[S_NEXT_REF] - cp > memo[ev + 1]:
                memo[M_HITS] += 1
                return pos + _memo_apply(memo, ev, cp, lab0, win_tab, ready, win_hist, win_cnt,
                                         open_row, scal, counts, stats), log
        if geom[G_REFRESH] == 1:
            memo[k0 + 5] = scal[S_NEXT_REF] - cp
            h1 = _memo_hash(memo, k0, klen)
            e1 = _memo_find(memo, k0, klen, h1)
            if e1 >= 0:
                ev = memo[M_DAT] + memo[memo[M_META] + 4 * e1 + 1] + klen
                memo[M_HITS] += 1
                return pos + _memo_apply(memo, ev, cp, lab0, win_tab, ready, win_hist, win_cnt,
                                         open_row, scal, counts, stats), log
        for x in range(n_c):
            memo[pre0 + x] = counts[x]
        for x in range(n_s):
            memo[pre0 + n_c + x] = stats[x]
        memo[pre0 + n_c + n_s] = scal[S_OPEN_CYC]
        memo[pre0 + n_c + n_s + 1] = scal[S_OPEN_SINCE]
        memo[pre0 + n_c + n_s + 2] = scal[S_NEXT_REF]
        memo[pre0 + n_c + n_s + 3] = _open_cyc_at(scal, cp)
        q = pre0 + n_c + n_s + 4
        for w in range(win_cnt.shape[0]):
            for node in range(win_cnt.shape[1]):
                memo[q] = win_cnt[w, node]
                q += 1
    if kind == 1:
        p, log = _fast_forward_pairs(stream, pos, n_it, not_before, cmd_tab, pr_start, pr_tab,
                                     win_tab, geom, ready, win_hist, win_cnt, open_row, scal,
                                     counts, stats, log)
    elif kind == 2:
        log = run_queued(stream, pos, pos + n_it, not_before, cmd_tab, pr_start, pr_tab, win_tab,
                         geom, ready, win_hist, win_cnt, open_row, scal, counts, stats, log)
        p = pos + n_it
    else:
        for q in range(pos, pos + n_it):
            log = run_item(stream, q, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                           ready, win_hist, win_cnt, open_row, scal, counts, stats, log)
        p = pos + n_it
    if klen > 0:
        memo[M_MISSES] += 1
        vlen = _memo_value(memo, v0, room, p - pos, cp, lab0, n_lab, memo[pre0:k0], win_tab,
                           ready, win_hist, win_cnt, open_row, scal, counts, stats)
        if vlen > 0:
            if memo[v0 + 4] == 0 and e0 < 0:
                # no refresh: valid whenever the next refresh falls after its last command
                memo[k0 + 5] = _NO_REF
                _memo_insert(memo, k0, klen, v0, vlen, h0)
            elif geom[G_REFRESH] == 1:
                # a refresh happened, or it ended earlier than an entry without the refresh
                # time (a closed-form run stopped short of the refresh): key the refresh time
                _memo_insert(memo, k0, klen, v0, vlen, h1)
    return p, log


@cached_njit()
def run_segment(stream, pos, end, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                win_hist, win_cnt, open_row, scal, counts, stats, log, memo):
    """Issue stream items from ``pos`` up to (and past) the next SYNC item, or to ``end``.

    With the FR-FCFS controller a run of consecutive conventional RD/WR items goes through
    ``run_queued`` (drained before the next PIM item or SYNC, which act as barriers).

    No stream command issues before ``not_before``. Returns (next position, log). In fast mode
    (without a log) runs of identical item pairs are stepped in closed form once they are
    periodic (see ``_fast_forward_pairs``), and with a memo (``memo.shape[0] > 0``) units of
    items that were simulated before from an equivalent state are replayed (``_memo_unit``).
    """
    use_memo = memo.shape[0] > 0 and geom[G_FAST] == 1 and log.shape[0] == 0
    while pos < end:
        cmd = stream[pos, 0]
        if cmd == SYNC:
            return pos + 1, log
        if cmd < 0 or cmd >= cmd_tab.shape[0] or cmd_tab[cmd, CT_ENABLED] == 0:
            raise ValueError("stream item names a command this device does not have "
                             "(a PIM command with pim.enabled = false, or an unknown id)")
        if is_queued(cmd, geom):
            # a run of conventional RD/WR requests: through the FR-FCFS queues, drained at its end
            e = pos + 1
            while e < end and stream[e, 0] >= 0 and is_queued(stream[e, 0], geom):
                e += 1
            if use_memo and e - pos >= 4:
                pos, log = _memo_unit(stream, pos, np.int64(2), e - pos, not_before, cmd_tab, pr_start,
                                      pr_tab, win_tab, geom, ready, win_hist, win_cnt, open_row,
                                      scal, counts, stats, log, memo)
            else:
                log = run_queued(stream, pos, e, not_before, cmd_tab, pr_start, pr_tab, win_tab,
                                 geom, ready, win_hist, win_cnt, open_row, scal, counts, stats,
                                 log)
                pos = e
            continue
        if geom[G_FAST] == 1 and log.shape[0] == 0:
            # pairs that can pass before the next refresh (each takes at least count * gap)
            limit = 1 << 20
            if geom[G_REFRESH] == 1:
                c0 = stream[pos, 0]
                if c0 >= 0:
                    per = max(1, stream[pos, 3] * cmd_tab[c0, CT_SELF_GAP])
                    limit = 3 + max(0, scal[S_NEXT_REF] - scal[S_LAST]) // per
            m = _pair_run(stream, pos, end, cmd_tab, limit)
            if use_memo:
                kind = 1
                n_it = m
                if m < 3:
                    kind = 0
                    q = pos + 1
                    while (q < end and q - pos < MEMO_BLOCK and stream[q, 0] != SYNC
                           and not is_queued(stream[q, 0], geom)
                           and _pair_run(stream, q, end, cmd_tab, np.int64(3)) < 3):
                        q += 1
                    n_it = q - pos
                if kind == 1 or n_it >= 4:
                    pos, log = _memo_unit(stream, pos, kind, n_it, not_before, cmd_tab, pr_start,
                                          pr_tab, win_tab, geom, ready, win_hist, win_cnt,
                                          open_row, scal, counts, stats, log, memo)
                    continue
            if m >= 3:
                pos, log = _fast_forward_pairs(stream, pos, m, not_before, cmd_tab, pr_start,
                                               pr_tab, win_tab, geom, ready, win_hist, win_cnt,
                                               open_row, scal, counts, stats, log)
                continue
        log = run_item(stream, pos, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                       win_hist, win_cnt, open_row, scal, counts, stats, log)
        pos += 1
    return pos, log


@cached_njit()
def _segments_equal(items, a0, a1, b0, b1):
    """Whether stream items [a0, a1) and [b0, b1) are identical."""
    if a1 - a0 != b1 - b0:
        return False
    for p in range(a1 - a0):
        for f in range(items.shape[1]):
            if items[a0 + p, f] != items[b0 + p, f]:
                return False
    return True


@cached_njit()
def segment_classes(items, seg_lo, seg_hi, steps, cls):
    """For each step ``k`` in ``steps``: ``cls[c, k]`` = the first channel whose segment ``k``
    is identical to channel ``c``'s (channels of one class issue the same items)."""
    for k in steps:
        for c in range(cls.shape[0]):
            cls[c, k] = c
            for r in range(c):
                if cls[r, k] == r and _segments_equal(items, seg_lo[c, k], seg_hi[c, k],
                                                      seg_lo[r, k], seg_hi[r, k]):
                    cls[c, k] = r
                    break


@cached_njit()
def _equivalent(a, b, cpt, start, win_tab, geom, ready, win_hist, win_cnt, open_row, scal):
    """Whether channels ``a`` and ``b`` behave identically from now on for the same items.

    No command issues before ``cpt`` (the earlier of the segment start and the refresh due
    time), so ready times, the last issue and window entries at or before ``cpt`` cannot
    bind and compare as equal; completion times compare from ``start`` on. Statistics (counts,
    hits, open-bank time) are not behaviour and are not compared.
    """
    for x in (S_NEXT_REF, S_MODE, S_ALLROW):
        if scal[a, x] != scal[b, x]:
            return False
    bus = geom[G_BUS]
    if max(scal[a, S_LAST] + bus, cpt) != max(scal[b, S_LAST] + bus, cpt):
        return False
    if max(scal[a, S_DONE], start) != max(scal[b, S_DONE], start):
        return False
    for i in range(open_row.shape[1]):
        if open_row[a, i] != open_row[b, i]:
            return False
    for i in range(ready.shape[1]):
        for j in range(ready.shape[2]):
            if max(ready[a, i, j], cpt) != max(ready[b, i, j], cpt):
                return False
    for w in range(win_tab.shape[0]):
        lat = win_tab[w, 3]
        size = win_tab[w, 4]
        for node in range(win_cnt.shape[2]):
            na = win_cnt[a, w, node]
            nb = win_cnt[b, w, node]
            if na < size or nb < size:
                if na != nb:
                    return False
                for j in range(na):
                    if (max(win_hist[a, w, node, j] + lat, cpt)
                            != max(win_hist[b, w, node, j] + lat, cpt)):
                        return False
            else:
                for j in range(size):  # oldest first
                    if (max(win_hist[a, w, node, (na + j) % size] + lat, cpt)
                            != max(win_hist[b, w, node, (nb + j) % size] + lat, cpt)):
                        return False
    return True


@cached_njit(inline="always")
def _open_cyc_at(scal, t):
    """Cycles with a bank open up to ``t`` (no open/close transition after ``t`` yet)."""
    if scal[S_ALLROW] != -1:
        return scal[S_OPEN_CYC] + t - scal[S_OPEN_SINCE]
    return scal[S_OPEN_CYC]


@cached_njit()
def run_steps(items, seg_lo, seg_hi, seg_cls, kind, pim_index, dur, dep_start, dep_idx, serial,
              link_lat, link_busy, link_lead, t0, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
              win_hist, win_cnt, open_row, scal, counts, stats, step_start, step_end, step_counts,
              step_link, group, memo):
    """Run a program's steps (one token) on all channels (state arrays stacked by channel).

    A PIM step (``kind == 1``) runs segment ``pim_index`` (items ``[seg_lo, seg_hi)``, identical
    segments share a ``seg_cls``) of every channel from its start (its
    dependencies' end; in serial mode also every earlier step's end) and ends when the last
    channel is done plus ``link_lat``, a channel being done once its commands are and its link
    has moved the segment's transfers (``link_busy[c, k]`` cycles, queued in program order on
    the channel's link from the step's start, see ``pimsim.link``; ``step_link`` gets the
    critical channel's); a channel starts its segment ``link_lead[c, k]`` cycles after the
    step (its first command's data is still crossing the link); an ASIC step (``kind == 0``)
    runs ``dur`` cycles after its dependencies and the previous ASIC step, a collective
    (``kind == 2``) ``dur`` cycles after its dependencies and the previous collective. Kept in this module so numba's cache invalidates with the kernel.
    Fills step_start/end and per-step command counts of the critical (last-finishing) channel;
    returns the token's end cycle.

    With ``group == 1`` a channel whose segment and controller state (see ``_equivalent``) equal
    those of an earlier channel is not simulated: it issues exactly the same commands at the
    same cycles, so it takes that channel's new state and adds the same counts (balanced
    weight layouts give most channels identical streams). Returns (end cycle, channels run).
    """
    n_ch = ready.shape[0]
    log = np.zeros((0, 4), np.int64)
    now = t0
    asic_free = t0
    comm_free = t0
    before = np.zeros((n_ch, counts.shape[1]), np.int64)
    st_before = np.zeros((n_ch, stats.shape[1]), np.int64)
    oc_before = np.zeros(n_ch, np.int64)
    rep = np.zeros(n_ch, np.int64)
    link_free = np.full(n_ch, t0, np.int64)
    n_run = 0
    for i in range(kind.shape[0]):
        start = t0
        for j in range(dep_start[i], dep_start[i + 1]):
            start = max(start, step_end[dep_idx[j]])
        if serial == 1:
            start = max(start, now)
        if kind[i] == 1:
            k = pim_index[i]
            done = start
            crit = 0
            for c in range(n_ch):
                for x in range(counts.shape[1]):
                    before[c, x] = counts[c, x]
                rep[c] = c
                if group == 1:
                    s_c = start + link_lead[c, k]  # equal for equal segment classes
                    cpt = min(s_c, scal[c, S_NEXT_REF])
                    for r in range(c):
                        if (rep[r] == r
                                and seg_cls[c, k] == seg_cls[r, k]
                                and _equivalent(c, r, cpt, s_c, win_tab, geom, ready, win_hist,
                                                win_cnt, open_row, scal)):
                            rep[c] = r
                            break
                    for x in range(stats.shape[1]):
                        st_before[c, x] = stats[c, x]
                    oc_before[c] = _open_cyc_at(scal[c], cpt)
            for c in range(n_ch):
                if rep[c] != c:
                    continue
                n_run += 1
                _, log = run_segment(items, seg_lo[c, k], seg_hi[c, k],
                                     start + link_lead[c, k], cmd_tab,
                                     pr_start, pr_tab, win_tab, geom, ready[c], win_hist[c],
                                     win_cnt[c], open_row[c], scal[c], counts[c], stats[c], log,
                                     memo)
            for c in range(n_ch):
                r = rep[c]
                if r != c:
                    _copy_into(ready[c], ready[r])
                    _copy_into(win_hist[c], win_hist[r])
                    _copy_into(win_cnt[c], win_cnt[r])
                    _copy_into(open_row[c], open_row[r])
                    for x in range(counts.shape[1]):
                        counts[c, x] += counts[r, x] - before[r, x]
                    for x in range(stats.shape[1]):
                        stats[c, x] += stats[r, x] - st_before[r, x]
                    # open-bank time: the same transitions from cpt on as channel r
                    oc = scal[r, S_OPEN_CYC] + oc_before[c] - oc_before[r]
                    for x in range(N_SCAL):
                        if x != S_LOG_N:
                            scal[c, x] = scal[r, x]
                    scal[c, S_OPEN_CYC] = oc
                link_free[c] = max(start, link_free[c]) + link_busy[c, k]
                if max(scal[c, S_DONE], link_free[c]) > done:
                    done = max(scal[c, S_DONE], link_free[c])
                    crit = c
            for x in range(counts.shape[1]):
                step_counts[i, x] = counts[crit, x] - before[crit, x]
            step_link[i] = link_busy[crit, k]
            end = done + link_lat
        elif kind[i] == 2:
            start = max(start, comm_free)
            end = start + dur[i]
            comm_free = end
        else:
            start = max(start, asic_free)
            end = start + dur[i]
            asic_free = end
        step_start[i] = start
        step_end[i] = end
        if end > now:
            now = end
    return now, n_run


# ---------------------------------------------------------------- host DMA (trace replay)
# host program line kinds (``lines[:, 0]``)
L_ISR, L_HOST, L_SYNC, L_EOC = 0, 1, 2, 3


@cached_njit()
def _copy_slot(src, dst, ready, win_hist, win_cnt, open_row, scal, counts, stats, reqt, nreq,
               rq, cqs):
    _copy_into(ready[dst], ready[src])
    _copy_into(win_hist[dst], win_hist[src])
    _copy_into(win_cnt[dst], win_cnt[src])
    _copy_into(open_row[dst], open_row[src])
    _copy_into(scal[dst], scal[src])
    _copy_into(counts[dst], counts[src])
    _copy_into(stats[dst], stats[src])
    _copy_into(reqt[dst], reqt[src])
    nreq[dst] = nreq[src]
    _copy_into(rq[dst], rq[src])
    _copy_into(cqs[dst], cqs[src])


# extra controller state of trace replay (``cqs`` columns after the queue's own): cycle of the
# last PIM request's command, cycle the last queued request left its queue in AiM's terms (its
# activate, or its column command when it was a row hit)
CQ_PIMLAST = N_CQ
CQ_LEFT = N_CQ + 1
N_CQR = N_CQ + 2


@cached_njit()
def _cq_pending(q, cq):
    """Queued requests whose row has not been activated for them (AiM's read/write buffers)."""
    n = 0
    for i in range(cq[CQ_N]):
        if q[i, Q_ACT] == 0:
            n += 1
    return n


@cached_njit()
def _cq_step_r(q, cq, limit, cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist, win_cnt,
               open_row, scal, counts, stats, log):
    """``_cq_step`` for trace replay, also keeping ``cq[CQ_LEFT]``."""
    before = _cq_pending(q, cq)
    ok, t, log = _cq_step(q, cq, limit, _ZERO, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                          win_hist, win_cnt, open_row, scal, counts, stats, log)
    if ok == 1 and _cq_pending(q, cq) < before:
        cq[CQ_LEFT] = t
    return ok, t, log


@cached_njit()
def _flush_log(scratch, scal_c, c, glog, gn):
    nl = scal_c[S_LOG_N]
    glog = _room(glog, gn, gn + nl)
    for j in range(nl):
        glog[gn, 0] = scratch[j, 0]
        glog[gn, 1] = c
        glog[gn, 2] = scratch[j, 1]
        glog[gn, 3] = scratch[j, 2]
        glog[gn, 4] = scratch[j, 3]
        gn += 1
    scal_c[S_LOG_N] = 0
    return glog, gn


@cached_njit()
def _cq_drain_all(n_ch, rep, rq, cqs, keep_log, scratch, glog, gn, cmd_tab, pr_start, pr_tab,
                  win_tab, geom, ready, win_hist, win_cnt, open_row, scal, counts, stats):
    """Serve every queued request of every channel (a barrier: SYNC, EOC, the end)."""
    for c in range(n_ch):
        if rep[c] != c:
            continue
        while cqs[c, CQ_N] > 0:
            _, _, scratch = _cq_step_r(rq[c], cqs[c], _FAR, cmd_tab, pr_start, pr_tab, win_tab,
                                       geom, ready[c], win_hist[c], win_cnt[c], open_row[c],
                                       scal[c], counts[c], stats[c], scratch)
            if scratch.shape[0] > 0:
                if keep_log == 1:
                    glog, gn = _flush_log(scratch, scal[c], c, glog, gn)
                else:
                    scal[c, S_LOG_N] = 0
    return scratch, glog, gn


@cached_njit()
def _queues_alike(cqs, a, b, start):
    """The FR-FCFS queue states of channels ``a`` and ``b`` act alike from ``start`` on: equal
    fields, where times (last PIM issue, last request left) may differ while both are past."""
    for x in range(N_CQR):
        if x == CQ_PIMLAST or x == CQ_LEFT:
            if cqs[a, x] != cqs[b, x] and (cqs[a, x] >= start or cqs[b, x] >= start):
                return False
        elif cqs[a, x] != cqs[b, x]:
            return False
    return True


@cached_njit()
def _merge_classes(rep, start, win_tab, geom, ready, win_hist, win_cnt, open_row, scal, counts,
                   stats, off, cqs):
    """At a barrier: a class whose state is equivalent to an earlier class's (``_equivalent``:
    equal from ``start`` on, queues included) joins it; ``off[c]`` keeps each channel's
    statistics relative to its representative's (counts, stats, open-bank cycles), added back at
    the end."""
    n_ch = rep.shape[0]
    nc = counts.shape[1]
    ns = stats.shape[1]
    cpt = start
    for b in range(n_ch):
        if rep[b] != b:
            continue
        cpt = min(start, scal[b, S_NEXT_REF])
        for a in range(b):
            if rep[a] != a or scal[a, S_NEXT_REF] != scal[b, S_NEXT_REF]:
                continue
            if not _queues_alike(cqs, a, b, start):
                continue
            if not _equivalent(a, b, cpt, start, win_tab, geom, ready, win_hist, win_cnt,
                               open_row, scal):
                continue
            oa = _open_cyc_at(scal[a], cpt)
            ob = _open_cyc_at(scal[b], cpt)
            for u in range(n_ch):
                if rep[u] == b:
                    rep[u] = a
                    for x in range(nc):
                        off[u, x] += counts[b, x] - counts[a, x]
                    for x in range(ns):
                        off[u, nc + x] += stats[b, x] - stats[a, x]
                    off[u, nc + ns] += ob - oa
            break


@cached_njit()
def replay_host(lines, masks, queue_entries, line_cyc, release_cyc, blocking, group, keep_log,
                cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist, win_cnt, open_row,
                scal, counts, stats):
    """Replay a host program through the DMA that feeds the channel controllers (AiM style).

    ``lines[i] = (kind, cmd, bank, row, count, mask id, 0)``; ``masks[m, c]`` selects channel
    slot ``c``. Times are controller cycles. The DMA decodes one line per ``line_cyc``; the
    requests of an ISR reach its channels at the line's release time ``R``; a channel queue of
    ``queue_entries`` requests (0: unbounded) holds the DMA until the request ``queue_entries``
    before its last one has issued (then the line is done the cycle after); a blocking command
    (``blocking[cmd]``) holds it until the data returned on every selected channel plus
    ``release_cyc``; SYNC and EOC until every channel has drained. Each channel runs its items in
    order (``run_item``) from their release times.

    With the FR-FCFS controller (``geom[G_SCHED]``) conventional RD/WR requests instead enter the
    channel's read or write queue at ``R`` and are scheduled by ``_cq_step``; as in the AiM
    simulator's DMA, such a request waits (and holds the DMA) while its queue is full (until a
    request of it is served, then it enters the cycle after and the line is done) or while PIM
    requests are still queued on its channel (until the last one issued); a PIM request waits
    while conventional requests whose row has not been opened for them are queued (until the
    last one's activate or column command), and every queued request is served before it (a
    barrier, as at SYNC and EOC).

    With ``group == 1`` channels that received the same items at the same times share one
    simulated state (a class, split when a mask separates its members): their outcomes are
    identical. Returns (end cycle, log of (cycle, channel, cmd, bank, row) when ``keep_log``).
    """
    n_ch = ready.shape[0]
    q = queue_entries
    rsz = max(q, 1) + 1
    reqt = np.zeros((n_ch, rsz), np.int64)  # issue cycles of each slot's last requests (ring)
    nreq = np.zeros(n_ch, np.int64)
    frfcfs = geom[G_SCHED] == SCHED_FRFCFS
    qcap = geom[G_RQ] + geom[G_WQ] if frfcfs else 1
    rq = np.zeros((n_ch, qcap, QF), np.int64)  # FR-FCFS request queues
    cqs = np.zeros((n_ch, N_CQR), np.int64)
    for c in range(n_ch):
        cqs[c, CQ_WMODE] = 1
        cqs[c, CQ_PIMLAST] = NEVER
        cqs[c, CQ_LEFT] = NEVER
    rep = np.zeros(n_ch, np.int64)
    for c in range(n_ch):
        rep[c] = 0 if group == 1 else c
    off = np.zeros((n_ch, counts.shape[1] + stats.shape[1] + 1), np.int64)
    need_times = q > 0 or keep_log == 1 or frfcfs
    scratch = np.zeros((256 if need_times else 0, 4), np.int64)
    glog = np.zeros((1024 if keep_log == 1 else 0, 5), np.int64)
    gn = _ZERO
    item = np.zeros((1, 5), np.int64)
    sel = np.zeros(n_ch, np.bool_)
    seen = np.zeros(n_ch, np.bool_)
    r_t = np.int64(1)  # release time of the line being decoded (the DMA decodes at r_t - 1)
    end = 0
    for i in range(lines.shape[0]):
        kind = lines[i, 0]
        if kind == L_HOST:
            r_t += line_cyc
            continue
        if kind == L_SYNC or kind == L_EOC:
            if frfcfs:
                scratch, glog, gn = _cq_drain_all(n_ch, rep, rq, cqs, keep_log, scratch, glog,
                                                  gn, cmd_tab, pr_start, pr_tab, win_tab, geom,
                                                  ready, win_hist, win_cnt, open_row, scal,
                                                  counts, stats)
            cb = r_t + 1
            for c in range(n_ch):
                if rep[c] == c:
                    cb = max(cb, scal[c, S_LAST] + 2, scal[c, S_DONE] + 1)
            end = cb
            if kind == L_EOC:
                break
            r_t = max(r_t + line_cyc, cb + release_cyc)
            if group == 1:  # channels that did different work may be alike again
                _merge_classes(rep, r_t, win_tab, geom, ready, win_hist, win_cnt, open_row,
                               scal, counts, stats, off, cqs)
            continue
        cmd = lines[i, 1]
        queued = is_queued(cmd, geom)
        m = lines[i, 5]
        for c in range(n_ch):
            sel[c] = masks[m, c]
            seen[c] = False
        # split every class that the mask separates: the unselected part moves to a copy
        for c in range(n_ch):
            if not sel[c] or seen[rep[c]]:
                continue
            r = rep[c]
            seen[r] = True
            mixed = False
            for u in range(n_ch):
                if rep[u] == r and not sel[u]:
                    mixed = True
                    break
            if not mixed:
                continue
            # the selected members keep r if r is selected, else move to c; the rest the other
            keep_sel = sel[r]
            new = -1
            for u in range(n_ch):
                if rep[u] == r and sel[u] != keep_sel:
                    if new < 0:
                        new = u
                        _copy_slot(r, u, ready, win_hist, win_cnt, open_row, scal, counts,
                                   stats, reqt, nreq, rq, cqs)
                    rep[u] = new
            if not keep_sel:
                seen[new] = True
        # run the item on each selected class representative
        item[0, 0] = cmd
        item[0, 1] = lines[i, 2]
        item[0, 2] = lines[i, 3]
        item[0, 3] = lines[i, 4]
        nxt = r_t + line_cyc
        for c in range(n_ch):
            if not sel[c] or rep[c] != c:
                continue
            scal[c, S_LOG_N] = 0
            if frfcfs:
                # what the queues issue before this line's requests arrive
                while True:
                    ok, _, scratch = _cq_step_r(rq[c], cqs[c], r_t, cmd_tab, pr_start, pr_tab,
                                                win_tab, geom, ready[c], win_hist[c], win_cnt[c],
                                                open_row[c], scal[c], counts[c], stats[c],
                                                scratch)
                    if ok == 0:
                        break
            if queued:
                arr = r_t
                if cqs[c, CQ_PIMLAST] >= r_t:  # PIM requests still queued: wait for the last
                    arr = cqs[c, CQ_PIMLAST] + 1
                    nxt = max(nxt, cqs[c, CQ_PIMLAST] + 2)
                for _ in range(item[0, 3]):
                    while not _cq_room(cmd, cqs[c], geom):
                        _, t, scratch = _cq_step_r(rq[c], cqs[c], _FAR, cmd_tab, pr_start,
                                                   pr_tab, win_tab, geom, ready[c], win_hist[c],
                                                   win_cnt[c], open_row[c], scal[c], counts[c],
                                                   stats[c], scratch)
                        if _cq_room(cmd, cqs[c], geom):  # an entry freed at t
                            arr = max(arr, t + 1)
                            nxt = max(nxt, t + 2)
                    _cq_push(rq[c], cqs[c], cmd, item[0, 1], item[0, 2], arr, geom)
            else:
                rel = r_t
                if frfcfs and cqs[c, CQ_N] > 0:
                    # a barrier: the PIM request enters once no request waits for its row, and
                    # every queued request is served before it
                    while _cq_pending(rq[c], cqs[c]) > 0:
                        _, _, scratch = _cq_step_r(rq[c], cqs[c], _FAR, cmd_tab, pr_start,
                                                   pr_tab, win_tab, geom, ready[c], win_hist[c],
                                                   win_cnt[c], open_row[c], scal[c], counts[c],
                                                   stats[c], scratch)
                    if cqs[c, CQ_LEFT] >= r_t:
                        rel = cqs[c, CQ_LEFT] + 1
                        nxt = max(nxt, cqs[c, CQ_LEFT] + 2)
                    while cqs[c, CQ_N] > 0:
                        _, _, scratch = _cq_step_r(rq[c], cqs[c], _FAR, cmd_tab, pr_start,
                                                   pr_tab, win_tab, geom, ready[c], win_hist[c],
                                                   win_cnt[c], open_row[c], scal[c], counts[c],
                                                   stats[c], scratch)
                n0 = scal[c, S_LOG_N]
                scratch = run_item(item, np.int64(0), rel, cmd_tab, pr_start, pr_tab, win_tab, geom,
                                   ready[c], win_hist[c], win_cnt[c], open_row[c], scal[c],
                                   counts[c], stats[c], scratch)
                cqs[c, CQ_PIMLAST] = scal[c, S_LAST]
                if q > 0 or keep_log == 1:
                    for j in range(n0, scal[c, S_LOG_N]):
                        if scratch[j, 1] == cmd:
                            reqt[c, nreq[c] % rsz] = scratch[j, 0]
                            nreq[c] += 1
                if q > 0 and nreq[c] > q:
                    # the last request entered the queue once the one q before it had issued
                    nxt = max(nxt, reqt[c, (nreq[c] - 1 - q) % rsz] + 2)
                if blocking[cmd] == 1:
                    nxt = max(nxt, scal[c, S_LAST] + cmd_tab[cmd, CT_DONE] + release_cyc)
            if need_times:
                if keep_log == 1:
                    glog, gn = _flush_log(scratch, scal[c], c, glog, gn)
                scal[c, S_LOG_N] = 0
        r_t = nxt
    if frfcfs:
        scratch, glog, gn = _cq_drain_all(n_ch, rep, rq, cqs, keep_log, scratch, glog, gn,
                                          cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                                          win_hist, win_cnt, open_row, scal, counts, stats)
    if end == 0:
        end = r_t
        for c in range(n_ch):
            if rep[c] == c:
                end = max(end, scal[c, S_DONE])
    # members take their class's final state (statistics: plus their offsets from merges)
    nc = counts.shape[1]
    ns = stats.shape[1]
    for c in range(n_ch):
        if rep[c] != c:
            _copy_slot(rep[c], c, ready, win_hist, win_cnt, open_row, scal, counts, stats, reqt,
                       nreq, rq, cqs)
    for c in range(n_ch):
        for x in range(nc):
            counts[c, x] += off[c, x]
        for x in range(ns):
            stats[c, x] += off[c, nc + x]
        scal[c, S_OPEN_CYC] += off[c, nc + ns]
    return end, glog[:gn]
