"""Host DMA of the AiM trace replay: a host program of instruction lines fed to the channel
controllers (numba).

:func:`replay_host` decodes one line per ``line_cyc``, releases each line's requests to the
channels its mask selects, holds the DMA on full queues, blocking commands and SYNC / EOC, and runs
each channel's requests in order or through its FR-FCFS queues; channels that received the same
items at the same times share one simulated state.
"""

from __future__ import annotations

import numpy as np

from pimsim.timing.frfcfs import (
    CQ_N,
    CQ_WMODE,
    FAR_CYC,
    N_CQ,
    Q_ACT,
    QF,
    cq_push,
    cq_room,
    cq_step,
    is_queued,
)
from pimsim.timing.issue import run_item
from pimsim.timing.jit import cached_njit
from pimsim.timing.state import (
    NEVER,
    S_DONE,
    S_LAST,
    S_LOG_N,
    S_NEXT_REF,
    S_OPEN_CYC,
    ZERO_I64,
    copy_into,
    log_room,
    open_cyc_at,
)
from pimsim.timing.tables import CT_DONE, G_RQ, G_SCHED, G_WQ, SCHED_FRFCFS
from pimsim.timing.token_runner import channels_equivalent

# host program line kinds (``lines[:, 0]``)
L_ISR, L_HOST, L_SYNC, L_EOC = 0, 1, 2, 3


@cached_njit()
def _copy_slot(src, dst, ready, win_hist, win_cnt, open_row, scal, counts, stats, reqt, nreq,
               rq, cqs):
    copy_into(ready[dst], ready[src])
    copy_into(win_hist[dst], win_hist[src])
    copy_into(win_cnt[dst], win_cnt[src])
    copy_into(open_row[dst], open_row[src])
    copy_into(scal[dst], scal[src])
    copy_into(counts[dst], counts[src])
    copy_into(stats[dst], stats[src])
    copy_into(reqt[dst], reqt[src])
    nreq[dst] = nreq[src]
    copy_into(rq[dst], rq[src])
    copy_into(cqs[dst], cqs[src])


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
    """``cq_step`` for trace replay, also keeping ``cq[CQ_LEFT]``."""
    before = _cq_pending(q, cq)
    ok, t, log = cq_step(q, cq, limit, ZERO_I64, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                         win_hist, win_cnt, open_row, scal, counts, stats, log,
                         np.zeros((cmd_tab.shape[0], open_row.shape[0] + 1, 3), np.int64))
    if ok == 1 and _cq_pending(q, cq) < before:
        cq[CQ_LEFT] = t
    return ok, t, log


@cached_njit()
def _flush_log(scratch, scal_c, c, glog, gn, line):
    nl = scal_c[S_LOG_N]
    glog = log_room(glog, gn, gn + nl)
    for j in range(nl):
        glog[gn, 0] = scratch[j, 0]
        glog[gn, 1] = c
        glog[gn, 2] = scratch[j, 1]
        glog[gn, 3] = scratch[j, 2]
        glog[gn, 4] = scratch[j, 3]
        glog[gn, 5] = line
        gn += 1
    scal_c[S_LOG_N] = 0
    return glog, gn


@cached_njit()
def _cq_drain_all(n_ch, rep, rq, cqs, keep_log, scratch, glog, gn, cmd_tab, pr_start, pr_tab,
                  win_tab, geom, ready, win_hist, win_cnt, open_row, scal, counts, stats, line):
    """Serve every queued request of every channel (a barrier: SYNC, EOC, the end); the log
    names ``line`` as the host line that issued them."""
    for c in range(n_ch):
        if rep[c] != c:
            continue
        while cqs[c, CQ_N] > 0:
            _, _, scratch = _cq_step_r(rq[c], cqs[c], FAR_CYC, cmd_tab, pr_start, pr_tab, win_tab,
                                       geom, ready[c], win_hist[c], win_cnt[c], open_row[c],
                                       scal[c], counts[c], stats[c], scratch)
            if scratch.shape[0] > 0:
                if keep_log == 1:
                    glog, gn = _flush_log(scratch, scal[c], c, glog, gn, line)
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
    """At a barrier: a class whose state is equivalent to an earlier class's
    (``channels_equivalent``: equal from ``start`` on, queues included) joins it; ``off[c]`` keeps
    each channel's statistics relative to its representative's (counts, stats, open-bank cycles),
    added back at the end."""
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
            if not channels_equivalent(a, b, cpt, start, win_tab, geom, ready, win_hist, win_cnt,
                                       open_row, scal):
                continue
            oa = open_cyc_at(scal[a], cpt)
            ob = open_cyc_at(scal[b], cpt)
            for u in range(n_ch):
                if rep[u] == b:
                    rep[u] = a
                    for x in range(nc):
                        off[u, x] += counts[b, x] - counts[a, x]
                    for x in range(ns):
                        off[u, nc + x] += stats[b, x] - stats[a, x]
                    off[u, nc + ns] += ob - oa
            break


# the DMA's own state between parts of a replay (``dma``): release time of the next line, end
# cycle (0 until a SYNC or EOC), 1 once EOC has ended the program
D_RT, D_END, D_STOP = 0, 1, 2


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
    channel's read or write queue at ``R`` and are scheduled by ``cq_step``; as in the AiM
    simulator's DMA, such a request waits (and holds the DMA) while its queue is full (until a
    request of it is served, then it enters the cycle after and the line is done) or while PIM
    requests are still queued on its channel (until the last one issued); a PIM request waits
    while conventional requests whose row has not been opened for them are queued (until the
    last one's activate or column command), and every queued request is served before it (a
    barrier, as at SYNC and EOC).

    With ``group == 1`` channels that received the same items at the same times share one
    simulated state (a class, split when a mask separates its members): their outcomes are
    identical. Returns (end cycle, log when ``keep_log``).

    Identical to :func:`replay_state`, :func:`replay_lines` over all lines and
    :func:`replay_finish` (which a caller uses to take the log a part at a time); the log's rows
    are (cycle, channel, cmd, bank, row, index of the host line that issued it).
    """
    dma, reqt, nreq, rq, cqs, rep, off = replay_state(ready.shape[0], queue_entries, geom, group,
                                                     counts.shape[1] + stats.shape[1] + 1)
    glog = replay_lines(lines, ZERO_I64, lines.shape[0], masks, queue_entries, line_cyc,
                        release_cyc, blocking, group, keep_log, cmd_tab, pr_start, pr_tab,
                        win_tab, geom, ready, win_hist, win_cnt, open_row, scal, counts, stats,
                        dma, reqt, nreq, rq, cqs, rep, off)
    end, tail = replay_finish(lines.shape[0] - 1, keep_log, cmd_tab, pr_start, pr_tab, win_tab,
                              geom, ready, win_hist, win_cnt, open_row, scal, counts, stats, dma,
                              reqt, nreq, rq, cqs, rep, off)
    if tail.shape[0] == 0:
        return end, glog
    return end, np.concatenate((glog, tail))


@cached_njit()
def replay_state(n_ch, queue_entries, geom, group, n_off):
    """The DMA's and the queues' state at the start of a replay (see :func:`replay_lines`)."""
    rsz = max(queue_entries, 1) + 1
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
    off = np.zeros((n_ch, n_off), np.int64)
    dma = np.zeros(3, np.int64)
    dma[D_RT] = 1  # release time of the line being decoded (the DMA decodes at r_t - 1)
    return dma, reqt, nreq, rq, cqs, rep, off


@cached_njit()
def replay_lines(lines, i0, i1, masks, queue_entries, line_cyc, release_cyc, blocking, group,
                 keep_log, cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist, win_cnt,
                 open_row, scal, counts, stats, dma, reqt, nreq, rq, cqs, rep, off):
    """Replay host lines ``[i0, i1)`` (see :func:`replay_host`) from the state a previous part
    left (``replay_state`` at the start); stops at EOC (``dma[D_STOP]``). Returns the log of
    the commands these lines issued (with ``keep_log``)."""
    n_ch = ready.shape[0]
    q = queue_entries
    rsz = reqt.shape[1]
    frfcfs = geom[G_SCHED] == SCHED_FRFCFS
    need_times = q > 0 or keep_log == 1 or frfcfs
    scratch = np.zeros((256 if need_times else 0, 4), np.int64)
    glog = np.zeros((1024 if keep_log == 1 else 0, 6), np.int64)
    gn = ZERO_I64
    item = np.zeros((1, 5), np.int64)
    sel = np.zeros(n_ch, np.bool_)
    seen = np.zeros(n_ch, np.bool_)
    r_t = dma[D_RT]
    end = dma[D_END]
    if dma[D_STOP] == 1:
        return glog[:0]
    for i in range(i0, i1):
        kind = lines[i, 0]
        if kind == L_HOST:
            r_t += line_cyc
            continue
        if kind == L_SYNC or kind == L_EOC:
            if frfcfs:
                scratch, glog, gn = _cq_drain_all(n_ch, rep, rq, cqs, keep_log, scratch, glog,
                                                  gn, cmd_tab, pr_start, pr_tab, win_tab, geom,
                                                  ready, win_hist, win_cnt, open_row, scal,
                                                  counts, stats, i)
            cb = r_t + 1
            for c in range(n_ch):
                if rep[c] == c:
                    cb = max(cb, scal[c, S_LAST] + 2, scal[c, S_DONE] + 1)
            end = cb
            if kind == L_EOC:
                dma[D_STOP] = 1
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
                    while not cq_room(cmd, cqs[c], geom):
                        _, t, scratch = _cq_step_r(rq[c], cqs[c], FAR_CYC, cmd_tab, pr_start,
                                                   pr_tab, win_tab, geom, ready[c], win_hist[c],
                                                   win_cnt[c], open_row[c], scal[c], counts[c],
                                                   stats[c], scratch)
                        if cq_room(cmd, cqs[c], geom):  # an entry freed at t
                            arr = max(arr, t + 1)
                            nxt = max(nxt, t + 2)
                    cq_push(rq[c], cqs[c], cmd, item[0, 1], item[0, 2], arr, geom)
            else:
                rel = r_t
                if frfcfs and cqs[c, CQ_N] > 0:
                    # a barrier: the PIM request enters once no request waits for its row, and
                    # every queued request is served before it
                    while _cq_pending(rq[c], cqs[c]) > 0:
                        _, _, scratch = _cq_step_r(rq[c], cqs[c], FAR_CYC, cmd_tab, pr_start,
                                                   pr_tab, win_tab, geom, ready[c], win_hist[c],
                                                   win_cnt[c], open_row[c], scal[c], counts[c],
                                                   stats[c], scratch)
                    if cqs[c, CQ_LEFT] >= r_t:
                        rel = cqs[c, CQ_LEFT] + 1
                        nxt = max(nxt, cqs[c, CQ_LEFT] + 2)
                    while cqs[c, CQ_N] > 0:
                        _, _, scratch = _cq_step_r(rq[c], cqs[c], FAR_CYC, cmd_tab, pr_start,
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
                    glog, gn = _flush_log(scratch, scal[c], c, glog, gn, i)
                scal[c, S_LOG_N] = 0
        r_t = nxt
    dma[D_RT] = r_t
    dma[D_END] = end
    return glog[:gn]


@cached_njit()
def replay_finish(last_line, keep_log, cmd_tab, pr_start, pr_tab, win_tab, geom, ready, win_hist,
                  win_cnt, open_row, scal, counts, stats, dma, reqt, nreq, rq, cqs, rep, off):
    """End a replay (see :func:`replay_lines`): drain the queues (their commands logged as issued
    by ``last_line``), give every channel its class's final state; returns (end cycle, log)."""
    n_ch = ready.shape[0]
    frfcfs = geom[G_SCHED] == SCHED_FRFCFS
    scratch = np.zeros((256, 4), np.int64)
    glog = np.zeros((1024 if keep_log == 1 else 0, 6), np.int64)
    gn = ZERO_I64
    r_t = dma[D_RT]
    end = dma[D_END]
    if frfcfs:
        scratch, glog, gn = _cq_drain_all(n_ch, rep, rq, cqs, keep_log, scratch, glog, gn,
                                          cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                                          win_hist, win_cnt, open_row, scal, counts, stats,
                                          last_line)
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
    dma[D_END] = end
    return end, glog[:gn]
