"""Command issue of one DRAM/PIM channel controller, in order, with an open-row policy (numba).

Each stream item ``(cmd, bank, row, count, 0)`` asks for ``count`` column commands (or one
row/channel command); :func:`run_item` inserts the mode switch, PRE/PREA and ACT/ACT_AB the item
needs, issues each command at the earliest cycle every rule allows (:func:`earliest`, driven by
the compiled rule tables of ``pimsim.timing.tables``; :func:`issue` records it), and inserts an
all-bank refresh (PREA + REFab) whenever one is due (every nREFI) before the next command would
issue.

Closed-form runs: after the first command of a run of identical column commands, the rest issue
exactly ``self_gap`` cycles apart (every earlier constraint was already met by the first; nothing
else is issued in between), so they are stepped in closed form, up to the next refresh; runs of
identical item pairs are stepped in closed form once periodic (:func:`fast_forward_pairs`). The
slow path (``fast = 0``) issues them one by one; tests check that both give identical results.
"""

from __future__ import annotations

from pimsim.timing.jit import cached_njit
from pimsim.timing.state import (
    NEVER,
    NONE_I64,
    NOTHING,
    ONE_I64,
    S_ALLROW,
    S_DONE,
    S_LAST,
    S_LOG_N,
    S_MODE,
    S_NEXT_REF,
    S_OPEN_CYC,
    S_OPEN_SINCE,
    ST_HITS,
    ST_INSERTED,
    ST_MISSES,
    ST_REFRESHES,
    copy_into,
    log_room,
)
from pimsim.timing.tables import (
    CT_CLOSED_FORM,
    CT_COLUMN,
    CT_DONE,
    CT_MODE,
    CT_ROW,
    CT_SCOPE,
    CT_SELF_GAP,
    G_BANKS,
    G_BG,
    G_BPG,
    G_BPG_SHIFT,
    G_BUS,
    G_CMD_ACT,
    G_CMD_ACTAB,
    G_CMD_PRE,
    G_CMD_PREA,
    G_CMD_REF,
    G_CMD_TMOD,
    G_FAST,
    G_NODES,
    G_NREFI,
    G_PIM,
    G_REFRESH,
    G_TMOD_GATED,
)

_SCOPE_BANK = 0
_SCOPE_ALLBANK = 1
_ROW_NONE, _ROW_NEEDS_OPEN, _ROW_OPENS, _ROW_CLOSES, _ROW_NEEDS_OPEN_CLOSES, _ROW_ALL_CLOSED = range(6)


@cached_njit(inline="always")
def earliest(cmd, bank, cmd_tab, win_tab, geom, ready, win_hist, win_cnt, scal_last):
    """Earliest cycle at which ``cmd`` (to ``bank`` for bank commands) satisfies every rule.

    ``ready[node, f]`` holds the earliest cycle for ``f`` on one node; rows ``N`` and ``N + 1``
    hold constraints from all-bank commands on every bank group / bank, rows ``N + 2`` and
    ``N + 3`` the maximum over all bank groups / banks (so every check is O(1)). A bank
    command's is the larger of its channel part and its bank part (:func:`earliest_channel`,
    :func:`earliest_in_bank`).
    """
    scope = cmd_tab[cmd, CT_SCOPE]
    if scope == _SCOPE_BANK:
        return max(earliest_channel(cmd, win_tab, geom, ready, win_hist, win_cnt, scal_last),
                   earliest_in_bank(cmd, bank, win_tab, geom, ready, win_hist, win_cnt))
    nn = geom[G_NODES]
    t = max(ready[0, cmd], scal_last + geom[G_BUS])
    if scope == _SCOPE_ALLBANK:
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
def earliest_channel(cmd, win_tab, geom, ready, win_hist, win_cnt, scal_last):
    """The part of a bank command's earliest cycle that is the same for every bank: the
    channel's rules, the command bus, the all-bank commands' rules, channel-level windows."""
    nn = geom[G_NODES]
    t = max(ready[0, cmd], scal_last + geom[G_BUS], ready[nn, cmd], ready[nn + 1, cmd])
    for w in range(win_tab.shape[0]):
        if win_tab[w, 1] != cmd or win_tab[w, 2] != 0:
            continue
        cnt = win_cnt[w, 0]
        size = win_tab[w, 4]
        if cnt >= size:
            t = max(t, win_hist[w, 0, cnt % size] + win_tab[w, 3])
    return t


@cached_njit(inline="always")
def bg_node(bank, geom):
    """The node (row of the ready times, window) of bank ``bank``'s group: ``1 + bank //
    banks per group``, by a shift where that is a power of two (a division costs more than
    the rest of a request's look in the FR-FCFS choice)."""
    sh = geom[G_BPG_SHIFT]
    if sh >= 0:
        return 1 + (bank >> sh)
    return 1 + bank // geom[G_BPG]


@cached_njit(inline="always")
def earliest_in_bank(cmd, bank, win_tab, geom, ready, win_hist, win_cnt):
    """The part of a bank command's earliest cycle that depends on its bank: the rules and
    windows of its bank group and of the bank."""
    t = max(ready[bg_node(bank, geom), cmd], ready[1 + geom[G_BG] + bank, cmd])
    return max(t, _bank_window_cyc(cmd, bank, win_tab, geom, win_hist, win_cnt))


@cached_njit(inline="always")
def _bank_window_cyc(cmd, bank, win_tab, geom, win_hist, win_cnt):
    """Earliest cycle for bank command ``cmd`` by the windows of its bank group and bank."""
    t = NEVER
    for w in range(win_tab.shape[0]):
        if win_tab[w, 1] != cmd or win_tab[w, 2] == 0:
            continue
        node = bg_node(bank, geom) if win_tab[w, 2] == 1 else 1 + geom[G_BG] + bank
        cnt = win_cnt[w, node]
        size = win_tab[w, 4]
        if cnt >= size:
            t = max(t, win_hist[w, node, cnt % size] + win_tab[w, 3])
    return t


@cached_njit()
def bank_window_cyc(cmd, bank, win_tab, geom, win_hist, win_cnt):
    """``_bank_window_cyc``, called (not inlined): for a scan over many requests, where the
    loop inlined into it costs every request as much as the rest of its work."""
    return _bank_window_cyc(cmd, bank, win_tab, geom, win_hist, win_cnt)


@cached_njit(inline="always")
def has_bank_windows(cmd, win_tab):
    """Whether a window rule of a bank group or a bank spaces ``cmd``."""
    for w in range(win_tab.shape[0]):
        if win_tab[w, 1] == cmd and win_tab[w, 2] != 0:
            return True
    return False


@cached_njit(inline="always")
def _level_nodes(scope, bank, lvl, geom):
    """Range [lo, hi) of nodes of level ``lvl`` that a command of ``scope`` touches."""
    n_bg = geom[G_BG]
    if lvl == 0:
        return 0, 1
    if scope == _SCOPE_BANK:
        if lvl == 1:
            g = bg_node(bank, geom)
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

    Updates every rule's ready time, windows, row and mode state, counters
    (:func:`issue_state`) and the log; returns the (possibly grown) log array.
    """
    issue_state(cmd, bank, row, t, n_same, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                win_hist, win_cnt, open_row, scal, counts)
    scope = cmd_tab[cmd, CT_SCOPE]
    gap = cmd_tab[cmd, CT_SELF_GAP]
    if log.shape[0] > 0:
        n = scal[S_LOG_N]
        log = log_room(log, n, n + n_same)
        for j in range(n_same):
            log[n + j, 0] = t - (n_same - 1 - j) * gap
            log[n + j, 1] = cmd
            log[n + j, 2] = bank if scope == _SCOPE_BANK else -1
            log[n + j, 3] = row
        scal[S_LOG_N] = n + n_same
    return log


@cached_njit(inline="always")
def issue_state(cmd, bank, row, t, n_same, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                win_hist, win_cnt, open_row, scal, counts):
    """``n_same`` issues of ``cmd`` ending at cycle ``t`` in the controller state: every rule's
    ready time, windows, row and mode state, counters; no log (``issue`` records it). Inlined:
    a kernel that keeps no log calls this and returns no array (returning one, the log, costs
    its reference counting at every call, about as much as the issue itself)."""
    scope = cmd_tab[cmd, CT_SCOPE]
    nn = geom[G_NODES]
    n_bg = geom[G_BG]
    node_bg = bg_node(bank, geom) if scope == _SCOPE_BANK else 0
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
def refresh_due(t, geom, scal):
    return geom[G_REFRESH] == 1 and t >= scal[S_NEXT_REF]


@cached_njit()
def run_item(stream, pos, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
             win_hist, win_cnt, open_row, scal, counts, stats, log):
    """Issue one stream item (with the ACT/PRE/mode switch/refresh it needs); returns the log."""
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
        if refresh_due(t, geom, scal):
            # precharge everything still open, then refresh, at the earliest legal cycles
            # from the due time on (which may fall in idle time before ``not_before``)
            log = issue_refresh(cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist,
                                win_cnt, open_row, scal, counts, stats, log)
            if geom[G_FAST] == 1 and log.shape[0] == 0:
                log = idle_refreshes(not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                                      ready, win_hist, win_cnt, open_row, scal, counts, stats,
                                      log)
            continue
        log = issue(ncmd, nbank, nrow, t, ONE_I64, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
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
def pair_run(stream, pos, end, cmd_tab, limit):
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
def fast_forward_pairs(stream, pos, m, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                       ready, win_hist, win_cnt, open_row, scal, counts, stats, log):
    """Run ``m >= 3`` identical pairs starting at ``pos``; returns the next position.

    Pairs are issued command by command until the controller state after pair j equals the
    state after pair j-1 shifted by the pair period P: every ready time relative to the last
    issue (times at or before it can no longer bind), the open row, the mode, the completion
    time and when the open row was opened; no refresh and no window rule in the pair. The
    scheduling rules being invariant under a shift of time, every further pair is pair j
    shifted by P again, up to the next refresh. Those pairs are applied in closed form: the
    state moves by k P and the counters by k pairs' worth. The pairs around the refresh are
    issued one by one (the refresh as it falls due), then the period is looked for again, so
    a run of any length is one call however many refreshes fall inside it.
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
            copy_into(ready0, ready)
            copy_into(counts0, counts)
            copy_into(stats0, stats)
            copy_into(scal0, scal)
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
            continue  # the refresh is due: issue pairs one by one through it
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
        have_prev = False  # up to the refresh: through it pair by pair, then look again
    return p, log


@cached_njit()
def idle_refreshes(not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist,
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
    log = issue(ref, NONE_I64, NONE_I64, t_last, m, cmd_tab, pr_start, pr_tab, win_tab, geom,
                ready, win_hist, win_cnt, open_row, scal, counts, log)
    stats[ST_REFRESHES] += m
    scal[S_NEXT_REF] += m * nrefi
    return log


@cached_njit()
def issue_refresh(cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist, win_cnt, open_row,
                  scal, counts, stats, log):
    """The all-bank refresh that is due (PREA if a bank is open, then REFab), at the earliest
    legal cycles from the due time on (as ``run_item``)."""
    ref = geom[G_CMD_REF]
    prea = geom[G_CMD_PREA]
    if scal[S_ALLROW] != -1:
        tp = max(scal[S_NEXT_REF], earliest(prea, -1, cmd_tab, win_tab, geom, ready, win_hist,
                                            win_cnt, scal[S_LAST]))
        log = issue(prea, NONE_I64, NONE_I64, tp, ONE_I64, cmd_tab,
                    pr_start, pr_tab, win_tab, geom, ready,
                    win_hist, win_cnt, open_row, scal, counts, log)
        stats[ST_INSERTED] += 1
    tr = max(scal[S_NEXT_REF], earliest(ref, -1, cmd_tab, win_tab, geom, ready, win_hist, win_cnt,
                                        scal[S_LAST]))
    log = issue(ref, NONE_I64, NONE_I64, tr, ONE_I64, cmd_tab,
                pr_start, pr_tab, win_tab, geom, ready, win_hist,
                win_cnt, open_row, scal, counts, log)
    stats[ST_REFRESHES] += 1
    scal[S_NEXT_REF] += geom[G_NREFI]
    return log
