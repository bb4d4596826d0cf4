"""Per-channel DRAM/PIM command scheduling kernel (numba), driven by the compiled rule tables.

Models one memory controller channel with an in-order command queue and an open-row policy: each
stream item ``(cmd, bank, row, count, 0)`` asks for ``count`` column commands (or one row/channel
command); the kernel inserts the mode switch, PRE/PREA and ACT/ACT_AB the item needs, issues each
command at the earliest cycle every rule allows, and inserts an all-bank refresh (PREA + REFab)
whenever one is due (every nREFI) before the next command would issue. An item with
``cmd == SYNC`` ends a segment: the kernel returns so the event layer can synchronise channels.

Fast path: after the first command of a run of identical column commands, the rest issue exactly
``self_gap`` cycles apart (every earlier constraint was already met by the first; nothing else is
issued in between), so they are stepped in closed form, up to the next refresh. The slow path
(``fast = 0``) issues them one by one; tests check that both give identical results.

Runs in plain Python under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pimsim.timing.tables import (
    CT_CLOSED_FORM, CT_COLUMN, CT_DONE, CT_ENABLED, CT_MODE, CT_ROW, CT_SCOPE, CT_SELF_GAP,
    G_BANKS, G_BG, G_BPG, G_BUS, G_CMD_ACT, G_CMD_ACTAB, G_CMD_PRE, G_CMD_PREA, G_CMD_REF, G_CMD_TMOD,
    G_FAST, G_NODES, G_NREFI, G_PIM, G_REFRESH,
)

SYNC = -1  # stream pseudo-command: end of a segment
NOTHING = -2  # "no command needed" (e.g. ACT of a row that is already open)
NEVER = -(1 << 40)  # "last issue" before any command was issued

# scal[] slots of the per-channel state
S_LAST, S_NEXT_REF, S_MODE, S_DONE, S_LOG_N, S_ALLROW, S_OPEN_SINCE, S_OPEN_CYC = range(8)
N_SCAL = 8
# stats[] slots
ST_HITS, ST_MISSES, ST_REFRESHES, ST_INSERTED = range(4)
N_STATS = 4

_SCOPE_BANK = 0
_SCOPE_ALLBANK = 1
_ROW_NONE, _ROW_NEEDS_OPEN, _ROW_OPENS, _ROW_CLOSES, _ROW_NEEDS_OPEN_CLOSES, _ROW_ALL_CLOSED = range(6)


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
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


@njit(cache=True)
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
        if n + n_same > log.shape[0]:
            grown = np.empty((max(2 * log.shape[0], n + n_same), 4), np.int64)
            grown[:n] = log[:n]
            log = grown
        for j in range(n_same):
            log[n + j, 0] = t - (n_same - 1 - j) * gap
            log[n + j, 1] = cmd
            log[n + j, 2] = bank if scope == _SCOPE_BANK else -1
            log[n + j, 3] = row
        scal[S_LOG_N] = n + n_same
    return log


@njit(cache=True, inline="always")
def next_needed(cmd, bank, row, cmd_tab, geom, open_row, scal):
    """The command that must issue next to make progress on ``cmd``: (cmd, bank, row)."""
    if geom[G_PIM] == 1:
        mode = cmd_tab[cmd, CT_MODE]
        if mode >= 0 and mode != scal[S_MODE]:
            return geom[G_CMD_TMOD], -1, -1
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
        if geom[G_PIM] == 1 and scal[S_MODE] != cmd_tab[act, CT_MODE]:
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


@njit(cache=True, inline="always")
def _refresh_due(t, geom, scal):
    return geom[G_REFRESH] == 1 and t >= scal[S_NEXT_REF]


@njit(cache=True)
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
        if _refresh_due(t, geom, scal):
            # precharge everything still open, then refresh, at the earliest legal cycles
            # from the due time on (which may fall in idle time before ``not_before``)
            if scal[S_ALLROW] != -1:
                tp = max(scal[S_NEXT_REF],
                         earliest(prea, -1, cmd_tab, win_tab, geom, ready, win_hist,
                                  win_cnt, scal[S_LAST]))
                log = issue(prea, -1, -1, tp, 1, cmd_tab, pr_start, pr_tab, win_tab,
                            geom, ready, win_hist, win_cnt, open_row, scal, counts, log)
                stats[ST_INSERTED] += 1
            tr = max(scal[S_NEXT_REF],
                     earliest(ref, -1, cmd_tab, win_tab, geom, ready, win_hist, win_cnt,
                              scal[S_LAST]))
            log = issue(ref, -1, -1, tr, 1, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                        win_hist, win_cnt, open_row, scal, counts, log)
            stats[ST_REFRESHES] += 1
            scal[S_NEXT_REF] += geom[G_NREFI]
            continue
        log = issue(ncmd, nbank, nrow, t, 1, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
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


@njit(cache=True)
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


@njit(cache=True)
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
            ready0[:, :] = ready
            counts0[:] = counts
            stats0[:] = stats
            scal0[:] = scal
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


@njit(cache=True)
def run_segment(stream, pos, end, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                win_hist, win_cnt, open_row, scal, counts, stats, log):
    """Issue stream items from ``pos`` up to (and past) the next SYNC item, or to ``end``.

    No stream command issues before ``not_before``. Returns (next position, log). In fast mode
    (without a log) runs of identical item pairs are stepped in closed form once they are
    periodic (see ``_fast_forward_pairs``).
    """
    while pos < end:
        cmd = stream[pos, 0]
        if cmd == SYNC:
            return pos + 1, log
        if cmd < 0 or cmd >= cmd_tab.shape[0] or cmd_tab[cmd, CT_ENABLED] == 0:
            raise ValueError("stream item names a command this device does not have "
                             "(a PIM command with pim.enabled = false, or an unknown id)")
        if geom[G_FAST] == 1 and log.shape[0] == 0:
            # pairs that can pass before the next refresh (each takes at least count * gap)
            limit = 1 << 20
            if geom[G_REFRESH] == 1:
                c0 = stream[pos, 0]
                if c0 >= 0:
                    per = max(1, stream[pos, 3] * cmd_tab[c0, CT_SELF_GAP])
                    limit = 3 + max(0, scal[S_NEXT_REF] - scal[S_LAST]) // per
            m = _pair_run(stream, pos, end, cmd_tab, limit)
            if m >= 3:
                pos, log = _fast_forward_pairs(stream, pos, m, not_before, cmd_tab, pr_start,
                                               pr_tab, win_tab, geom, ready, win_hist, win_cnt,
                                               open_row, scal, counts, stats, log)
                continue
        log = run_item(stream, pos, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                       win_hist, win_cnt, open_row, scal, counts, stats, log)
        pos += 1
    return pos, log


@njit(cache=True)
def _segments_equal(items, a0, a1, b0, b1):
    """Whether stream items [a0, a1) and [b0, b1) are identical."""
    if a1 - a0 != b1 - b0:
        return False
    for p in range(a1 - a0):
        for f in range(items.shape[1]):
            if items[a0 + p, f] != items[b0 + p, f]:
                return False
    return True


@njit(cache=True)
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


@njit(cache=True, inline="always")
def _open_cyc_at(scal, t):
    """Cycles with a bank open up to ``t`` (no open/close transition after ``t`` yet)."""
    if scal[S_ALLROW] != -1:
        return scal[S_OPEN_CYC] + t - scal[S_OPEN_SINCE]
    return scal[S_OPEN_CYC]


@njit(cache=True)
def run_steps(items, seg_lo, seg_hi, kind, pim_index, dur, dep_start, dep_idx, serial, link_lat, t0,
              cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist, win_cnt, open_row, scal,
              counts, stats, step_start, step_end, step_counts, group):
    """Run a program's steps (one token) on all channels (state arrays stacked by channel).

    A PIM step (``kind == 1``) runs segment ``pim_index`` (items ``[seg_lo, seg_hi)``) of every channel from its start (its
    dependencies' end; in serial mode also every earlier step's end) and ends when the last
    channel is done plus ``link_lat``; an ASIC step runs ``dur`` cycles after its dependencies
    and the previous ASIC step. Kept in this module so numba's cache invalidates with the kernel.
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
    before = np.zeros((n_ch, counts.shape[1]), np.int64)
    st_before = np.zeros((n_ch, stats.shape[1]), np.int64)
    oc_before = np.zeros(n_ch, np.int64)
    rep = np.zeros(n_ch, np.int64)
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
                    cpt = min(start, scal[c, S_NEXT_REF])
                    for r in range(c):
                        if (rep[r] == r
                                and _segments_equal(items, seg_lo[c, k], seg_hi[c, k],
                                                    seg_lo[r, k], seg_hi[r, k])
                                and _equivalent(c, r, cpt, start, win_tab, geom, ready, win_hist,
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
                _, log = run_segment(items, seg_lo[c, k], seg_hi[c, k], start, cmd_tab,
                                     pr_start, pr_tab, win_tab, geom, ready[c], win_hist[c],
                                     win_cnt[c], open_row[c], scal[c], counts[c], stats[c], log)
            for c in range(n_ch):
                r = rep[c]
                if r != c:
                    ready[c] = ready[r]
                    win_hist[c] = win_hist[r]
                    win_cnt[c] = win_cnt[r]
                    open_row[c] = open_row[r]
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
                if scal[c, S_DONE] > done:
                    done = scal[c, S_DONE]
                    crit = c
            for x in range(counts.shape[1]):
                step_counts[i, x] = counts[crit, x] - before[crit, x]
            end = done + link_lat
        else:
            start = max(start, asic_free)
            end = start + dur[i]
            asic_free = end
        step_start[i] = start
        step_end[i] = end
        if end > now:
            now = end
    return now, n_run
