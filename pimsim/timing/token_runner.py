"""Segment and token runners: a channel's stream up to the next sync point, a program's steps on all
channels (numba).

:func:`run_segment` advances one channel through its items up to the next ``SYNC`` (in order,
through the FR-FCFS queues, in closed form or from the memo). :func:`run_steps` runs a program's
steps (one token) on all channels with their links and the ASIC and collective steps between
them; channels with identical segments and equivalent controller states
(:func:`channels_equivalent`) are simulated once per step. A segment that repeats a block of
items (:func:`block_period`; the passes of a batched matrix-vector product) runs block by block,
each block replayed from the memo where an equal block ran before from an equivalent state
(:func:`run_blocks`).
"""

from __future__ import annotations

import numpy as np

from pimsim.spec.commands import SYNC
from pimsim.timing.frfcfs import is_queued, run_queued
from pimsim.timing.issue import fast_forward_pairs, pair_run, run_item
from pimsim.timing.jit import cached_njit
from pimsim.timing.memo import (
    B_CP,
    H_CP,
    MEMO_BLOCK,
    block_jump,
    block_key,
    block_lookup,
    block_record,
    block_seen,
    memo_unit,
)
from pimsim.timing.state import (
    N_SCAL,
    S_ALLROW,
    S_DONE,
    S_LAST,
    S_LOG_N,
    S_MODE,
    S_NEXT_REF,
    S_OPEN_CYC,
    TIMED_FIELDS,
    copy_into,
    open_cyc_at,
)
from pimsim.timing.tables import CT_ENABLED, G_BUS, G_FAST

# pair runs of at least this many pairs are memo units of their own (kind 1, stepped in closed
# form on a miss); shorter ones go into the blocks of items around them
PAIR_UNIT = np.int64(16)


@cached_njit()
def run_segment(stream, pos, end, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                win_hist, win_cnt, open_row, scal, counts, stats, log, memo):
    """Issue stream items from ``pos`` up to (and past) the next SYNC item, or to ``end``.

    With the FR-FCFS controller a run of consecutive conventional RD/WR items goes through
    ``run_queued`` (drained before the next PIM item or SYNC, which act as barriers).

    No stream command issues before ``not_before``. Returns (next position, log). In fast mode
    (without a log) runs of identical item pairs are stepped in closed form once they are
    periodic (see ``fast_forward_pairs``), and with a memo (``memo.shape[0] > 0``) units of
    items that were simulated before from an equivalent state are replayed (``memo_unit``).
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
            n_req = stream[pos, 3]
            while e < end and stream[e, 0] >= 0 and is_queued(stream[e, 0], geom):
                n_req += stream[e, 3]
                e += 1
            if use_memo and n_req >= 4:  # requests, not items: an item may hold many
                pos, log = memo_unit(stream, pos, np.int64(2), e - pos, not_before, cmd_tab,
                                     pr_start, pr_tab, win_tab, geom, ready, win_hist, win_cnt,
                                     open_row, scal, counts, stats, log, memo)
            else:
                log = run_queued(stream, pos, e, not_before, cmd_tab, pr_start, pr_tab, win_tab,
                                 geom, ready, win_hist, win_cnt, open_row, scal, counts, stats,
                                 log)
                pos = e
            continue
        if geom[G_FAST] == 1 and log.shape[0] == 0:
            # the whole run of pairs, refreshes inside it included (fast_forward_pairs steps
            # through them): one memo unit where a unit per refresh interval would cost a
            # lookup each
            m = pair_run(stream, pos, end, cmd_tab, np.int64(1 << 20))
            if use_memo:
                kind = 1
                n_it = m
                if m < PAIR_UNIT:
                    # a block of items: a short pair run it starts with (a unit's lookup costs
                    # more than such a run gains alone), then items up to the next pair run
                    # (blocks keep to the items' own structure, so repeated items give
                    # repeated blocks)
                    kind = 0
                    q = pos + (2 * m if m >= 3 else 1)
                    while (q < end and q - pos < MEMO_BLOCK and stream[q, 0] != SYNC
                           and not is_queued(stream[q, 0], geom)
                           and pair_run(stream, q, end, cmd_tab, np.int64(3)) < 3):
                        q += 1
                    n_it = min(q, end) - pos
                if kind == 1 or n_it >= 4:
                    pos, log = memo_unit(stream, pos, kind, n_it, not_before, cmd_tab, pr_start,
                                         pr_tab, win_tab, geom, ready, win_hist, win_cnt,
                                         open_row, scal, counts, stats, log, memo)
                    continue
            if m >= 3:
                pos, log = fast_forward_pairs(stream, pos, m, not_before, cmd_tab, pr_start,
                                              pr_tab, win_tab, geom, ready, win_hist, win_cnt,
                                              open_row, scal, counts, stats, log)
                continue
        log = run_item(stream, pos, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
                       win_hist, win_cnt, open_row, scal, counts, stats, log)
        pos += 1
    return pos, log


# a channel's segment is a memo unit of its own (run_steps' segment memo) from this many items
SEG_MIN_ITEMS = 8
SEG_BUF_WORDS = 1 << 16  # its key buffer: segments of up to about 7,000 items
BLOCK_BUF_WORDS = 1 << 15  # run_blocks' key buffer
BLOCK_HIST_WORDS = 1 << 18  # run_blocks' records of block starts (cycle detection)
# run_steps' scratch (:func:`new_scratch`): the buffers above, one array kept by the caller
# instead of 2.8 MiB allocated and zeroed every token (the records need no zeroing: each is read
# only after the call wrote it)
SCRATCH_WORDS = BLOCK_BUF_WORDS + BLOCK_HIST_WORDS + SEG_BUF_WORDS


def new_scratch() -> np.ndarray:
    """Scratch for :func:`run_steps`, reused call after call (one per simulator: calls on one
    scratch must not overlap)."""
    return np.zeros(SCRATCH_WORDS, np.int64)

MIN_BLOCK_ITEMS = 8  # shorter periods are left to the pair runs and units of run_segment


@cached_njit()
def block_period(items, lo, hi, min_items):
    """The length of the block that items ``[lo, hi)`` repeat (at least twice, then possibly a
    leading part of it), or 0: the smallest period of the items (KMP failure function) when it
    is at least ``min_items`` items (:data:`MIN_BLOCK_ITEMS` in the simulator; any block gives
    the same result) and no item is a SYNC. Items are compared in their timed fields
    (:data:`~pimsim.timing.state.TIMED_FIELDS`): a block may move other data."""
    n = hi - lo
    if n < 2 * max(min_items, 1):
        return 0
    fail = np.zeros(n, np.int64)
    k = 0
    for i in range(1, n):
        while True:
            same = True
            for f in range(TIMED_FIELDS):
                if items[lo + i, f] != items[lo + k, f]:
                    same = False
                    break
            if same or k == 0:
                break
            k = fail[k - 1]
        if same:
            k += 1
        fail[i] = k
    p = n - fail[n - 1]
    if p < max(min_items, 1) or 2 * p > n:
        return 0
    for i in range(lo, lo + p):
        if items[i, 0] == SYNC:
            return 0
    return p


@cached_njit()
def run_blocks(stream, lo, hi, block, reps, not_before, cmd_tab, pr_start, pr_tab, win_tab,
               geom, ready, win_hist, win_cnt, open_row, scal, counts, stats, log, memo, buf,
               hist):
    """``run_segment`` of items ``[lo, hi)`` that repeat a block of ``block`` items (0: none):
    block after block, each replayed from the memo (:func:`~pimsim.timing.memo.block_lookup`)
    or run and recorded, then the rest. The same commands as one ``run_segment`` call: a block
    boundary is a boundary of its units unless it would split a run of FR-FCFS requests (then
    the segment is run whole). Once a block starts from the same key as an earlier block of
    the segment (the state the rest depends on, refresh time included), the blocks between them
    are a period that repeats exactly: whole periods are stepped in closed form
    (:func:`~pimsim.timing.memo.block_jump`), the rest run block by block. A compact segment
    (``reps > 0``, a batched weight product's passes, :class:`pimsim.decode.StreamBuilder`)
    holds its block once: it runs ``reps`` times, then the items after it (no FR-FCFS
    requests in it: a pass is PIM commands). Returns the log."""
    pos = lo
    step = block if reps == 0 else 0  # how far a block moves along the items
    if reps > 0 and not (memo.shape[0] > 0 and geom[G_FAST] == 1 and log.shape[0] == 0):
        for _ in range(reps):  # without the memo: every pass run
            _, log = run_segment(stream, lo, lo + block, not_before, cmd_tab, pr_start, pr_tab,
                                 win_tab, geom, ready, win_hist, win_cnt, open_row, scal, counts,
                                 stats, log, memo)
        pos = lo + block
    elif block > 0 and (reps > 0 or (
            memo.shape[0] > 0 and geom[G_FAST] == 1 and log.shape[0] == 0
            and not (is_queued(stream[lo, 0], geom)
                     and is_queued(stream[lo + block - 1, 0], geom)))):
        n_blocks = (hi - lo) // block if reps == 0 else reps
        rec_off = np.empty(n_blocks + 1, np.int64)
        n_rec = 0
        detect = hist.shape[0] > 0
        b = 0
        while b < n_blocks:
            klen = block_key(stream, pos, block, not_before, geom, win_tab, ready, win_hist,
                             win_cnt, open_row, scal, counts, stats, buf)
            if klen <= 0:
                _, log = run_segment(stream, pos, pos + block, not_before, cmd_tab, pr_start,
                                     pr_tab, win_tab, geom, ready, win_hist, win_cnt, open_row,
                                     scal, counts, stats, log, memo)
                pos += step
                b += 1
                detect = False
                continue
            if detect:
                r = block_seen(geom, win_cnt, scal, counts, stats, buf, hist, n_rec, rec_off)
                if r >= 0:
                    period = n_rec - r
                    m = (n_blocks - b) // period
                    o = rec_off[r]
                    detect = False
                    if m > 0 and buf[B_CP] > hist[o + H_CP]:  # time moves over a period
                        block_jump(m, o, geom, win_tab, ready, win_hist, win_cnt, scal, counts,
                                   stats, hist, buf[B_CP])
                        b += m * period
                        pos += m * period * step
                        continue
                else:
                    n_rec += 1
            r = block_lookup(geom, win_tab, ready, win_hist, win_cnt, open_row, scal, counts,
                             stats, memo, buf)
            if r != 1:
                _, log = run_segment(stream, pos, pos + block, not_before, cmd_tab, pr_start,
                                     pr_tab, win_tab, geom, ready, win_hist, win_cnt, open_row,
                                     scal, counts, stats, log, memo)
                block_record(block, geom, win_tab, ready, win_hist, win_cnt, open_row, scal,
                             counts, stats, memo, buf)
            pos += step
            b += 1
        if reps > 0:
            pos = lo + block
    _, log = run_segment(stream, pos, hi, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
                         ready, win_hist, win_cnt, open_row, scal, counts, stats, log, memo)
    return log


@cached_njit()
def _segments_shift(items, a0, a1, b0, b1):
    """Whether stream items [a0, a1) issue the commands of [b0, b1) with every row moved by
    one offset (equal in every timed field, :data:`~pimsim.timing.state.TIMED_FIELDS`, but the
    row, and rows ``>= 0`` differing by one ``d``; negative rows equal): returns (equal, d).
    Timing depends on which rows are equal, not on their numbers (the memo's keys relabel them
    too); the first column no timing rule reads."""
    if a1 - a0 != b1 - b0:
        return False, 0
    d = 0
    have = False
    for p in range(a1 - a0):
        for f in range(TIMED_FIELDS):
            x = items[a0 + p, f]
            y = items[b0 + p, f]
            if f == _ROW and x >= 0 and y >= 0:
                if not have:
                    d = x - y
                    have = True
                elif x - y != d:
                    return False, 0
            elif x != y:
                return False, 0
    return True, d


_ROW = 2  # the row field of a stream item
(R_SHIFT, R_MIN, R_MAX) = range(3)  # seg_rows[c, k]: rows moved from the class's, row range


@cached_njit()
def segment_classes(items, seg_lo, seg_hi, seg_reps, steps, cls, rows):
    """For each step ``k`` in ``steps``: ``cls[c, k]`` = the first channel whose segment ``k``
    issues the same commands as channel ``c``'s up to a row offset (:func:`_segments_shift`;
    compact segments, ``seg_reps > 0``, also repeat their block as often), ``rows[c, k]`` =
    (that offset, the least and the greatest row ``>= 0`` of the segment; an empty range when
    none). Channels of one class issue the same commands at the same cycles from equivalent
    states (:func:`_rows_equivalent`), their rows moved by their offsets."""
    for k in steps:
        for c in range(cls.shape[0]):
            lo = np.int64(1)
            hi = np.int64(0)
            for p in range(seg_lo[c, k], seg_hi[c, k]):
                r = items[p, _ROW]
                if r >= 0:
                    if hi < lo:
                        lo = r
                        hi = r
                    else:
                        lo = min(lo, r)
                        hi = max(hi, r)
            rows[c, k, R_MIN] = lo
            rows[c, k, R_MAX] = hi
            cls[c, k] = c
            rows[c, k, R_SHIFT] = 0
            for r in range(c):
                if cls[r, k] == r and seg_reps[c, k] == seg_reps[r, k]:
                    same, d = _segments_shift(items, seg_lo[c, k], seg_hi[c, k], seg_lo[r, k],
                                              seg_hi[r, k])
                    if same:
                        cls[c, k] = r
                        rows[c, k, R_SHIFT] = d
                        break


@cached_njit()
def copy_moved(items, seg_lo, seg_hi, dst, src, shift):
    """Region ``(c, dst[j])`` of every channel ``c`` := region ``(c, src[j])`` with every row
    ``>= 0`` moved by ``shift[j]`` (its end set; the room is the caller's to give)."""
    for j in range(dst.shape[0]):
        for c in range(seg_lo.shape[0]):
            a = seg_lo[c, src[j]]
            n = seg_hi[c, src[j]] - a
            b = seg_lo[c, dst[j]]
            for p in range(n):
                for f in range(items.shape[1]):
                    items[b + p, f] = items[a + p, f]
                if items[b + p, _ROW] >= 0:
                    items[b + p, _ROW] += shift[j]
            seg_hi[c, dst[j]] = b + n


@cached_njit()
def _rows_equivalent(c, r, d, lo, hi, open_row, scal):
    """Whether channel ``c``'s open rows are channel ``r``'s moved by ``d`` as far as a segment
    of ``r``'s with rows in ``[lo, hi]`` (and ``c``'s moved by ``d``) can tell: a bank whose open
    row (either's) lies in that range holds the moved row in ``c``; a closed bank is closed in
    both; rows outside the range no command of the segment names, so only which of them are
    equal matters (the same banks' in both)."""
    sa = scal[c, S_ALLROW]
    sb = scal[r, S_ALLROW]
    if sa >= 0 and sb >= 0:  # one row open in every bank of each
        if lo <= sb <= hi or lo <= sa - d <= hi:
            return sa - d == sb
        return True
    n_b = open_row.shape[1]
    for b in range(n_b):
        x = open_row[c, b]
        y = open_row[r, b]
        if x < 0 or y < 0:
            if x != y:
                return False
        elif (lo <= y <= hi) or (lo <= x - d <= hi):
            if x - d != y:
                return False
        else:
            for b2 in range(b + 1, n_b):
                x2 = open_row[c, b2]
                y2 = open_row[r, b2]
                if (x2 == x) != (y2 == y):
                    return False
    return sa == sb or (sa >= 0 and sb >= 0)


@cached_njit()
def _take_rows(c, r, d, lo, hi, open_row, scal):
    """Channel ``c`` takes the open rows channel ``r`` left after a segment with rows in
    ``[lo, hi]`` (``c``'s the same moved by ``d``): rows in that range moved by ``d``, closed
    banks closed; a bank still holding a row outside it was not touched (the segment opens
    only its own rows) and keeps ``c``'s own. ``S_ALLROW`` follows."""
    same = np.int64(-3)
    for b in range(open_row.shape[1]):
        y = open_row[r, b]
        if y < 0:
            open_row[c, b] = y
        elif lo <= y <= hi:
            open_row[c, b] = y + d
        x = open_row[c, b]
        if same == -3:
            same = x
        elif x != same:
            same = -2
    scal[c, S_ALLROW] = same


@cached_njit()
def channels_equivalent(a, b, cpt, start, win_tab, geom, ready, win_hist, win_cnt, open_row, scal):
    """Whether channels ``a`` and ``b`` behave identically from now on for the same items.

    No command issues before ``cpt`` (the earlier of the segment start and the refresh due
    time), so ready times, the last issue and window entries at or before ``cpt`` cannot
    bind and compare as equal; completion times compare from ``start`` on. Statistics (counts,
    hits, open-bank time) are not behaviour and are not compared.
    """
    if scal[a, S_ALLROW] != scal[b, S_ALLROW]:
        return False
    for i in range(open_row.shape[1]):
        if open_row[a, i] != open_row[b, i]:
            return False
    return timing_equivalent(a, b, cpt, start, win_tab, geom, ready, win_hist, win_cnt, scal)


@cached_njit()
def scalars_equivalent(a, b, cpt, start, geom, scal):
    """The part of :func:`timing_equivalent` in the channels' scalars: the next refresh, the
    mode, the last issue (as far as it binds from ``cpt`` on) and the completion time (from
    ``start`` on)."""
    for x in (S_NEXT_REF, S_MODE):
        if scal[a, x] != scal[b, x]:
            return False
    bus = geom[G_BUS]
    if max(scal[a, S_LAST] + bus, cpt) != max(scal[b, S_LAST] + bus, cpt):
        return False
    return max(scal[a, S_DONE], start) == max(scal[b, S_DONE], start)


@cached_njit()
def timing_equivalent(a, b, cpt, start, win_tab, geom, ready, win_hist, win_cnt, scal):
    """:func:`channels_equivalent` but for the open rows (see :func:`_rows_equivalent`)."""
    if not scalars_equivalent(a, b, cpt, start, geom, scal):
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


@cached_njit()
def asic_gap(busy, start, dur):
    """The first cycle from ``start`` at which a step of ``dur`` cycles fits on an ASIC that
    ``busy`` (rows ``[begin, end)``, disjoint, in order) already holds: the device's ASIC
    taken by the steps of other pipeline stages on the device (:mod:`pimsim.pipeline`)."""
    lo, hi = 0, busy.shape[0]
    while lo < hi:  # the first interval that ends after start
        mid = (lo + hi) // 2
        if busy[mid, 1] <= start:
            lo = mid + 1
        else:
            hi = mid
    while lo < busy.shape[0] and busy[lo, 0] < start + dur:
        if busy[lo, 1] > start:
            start = busy[lo, 1]
        lo += 1
    return start


@cached_njit(nogil=True)
def run_steps(items, seg_lo, seg_hi, seg_cls, kind, pim_index, dur, dep_start, dep_idx, serial,
              link_lat, link_busy, link_lead, t0, cmd_tab, pr_start, pr_tab, win_tab, geom, ready,
              win_hist, win_cnt, open_row, scal, counts, stats, step_start, step_end, step_counts,
              step_link, step_wait, group, memo, seg_block, seg_reps, cycles, asic_busy,
              seg_rows, seg_memo, scratch):
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
    (``kind == 2``) ``dur`` cycles after its dependencies and the previous collective; a step
    not run this token (``kind == 3``, an expert not chosen) ends where it starts. An ASIC
    step also waits for the first gap in ``asic_busy`` that holds it (:func:`asic_gap`; no
    rows: the ASIC is the program's alone).
    Fills step_start/end and per-step command counts of the critical (last-finishing) channel,
    and ``step_wait[i]`` = (the critical channel's lead, the cycles its link went on after its
    last command completed): outputs for the time accounting only, they change no timing;
    returns the token's end cycle.

    With ``group == 1`` a channel whose segment and controller state (see
    ``channels_equivalent``) equal those of an earlier channel is not simulated: it issues
    exactly the same commands at the same cycles, so it takes that channel's new state and adds
    the same counts (balanced weight layouts give most channels identical streams). A segment
    with ``seg_block[c, k] > 0`` repeats a block of that many items (:func:`block_period`; or
    holds it once, ``seg_reps[c, k]`` times, a compact segment) and
    runs through :func:`run_blocks` (``cycles == 1``: with periods of blocks stepped in closed
    form). With a segment memo (``seg_memo``, :func:`~pimsim.timing.memo.new_memo`; no rows:
    none) a channel's whole segment is one unit first: replayed when the same items ran before
    from an equivalent state (:func:`~pimsim.timing.memo.block_lookup`, the refresh rule of
    every unit), else run as above and recorded. ``scratch`` (:func:`new_scratch`) holds the
    key buffers, zeroed here, and the block-start records, each read only after this call wrote
    it. Returns (end cycle, channels run).
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
    # alias[c] != c: channel c's bank timers and windows are those of channel alias[c] (a
    # channel that ran this step), not copied yet: it took that channel's outcome at every PIM
    # step since and neither ran on its own. Copied when c runs other items, and at the end
    alias = np.arange(n_ch)
    was = np.arange(n_ch)  # alias at the step's start
    blocks = seg_block.shape[0] > 0 and seg_block.max() > 0
    buf = scratch[:BLOCK_BUF_WORDS if blocks else 0]
    buf[:] = 0
    hist = scratch[BLOCK_BUF_WORDS:BLOCK_BUF_WORDS + (BLOCK_HIST_WORDS if blocks and cycles == 1
                                                     else 0)]
    # whole segments as memo units: their own memo (entries the size of a segment would crowd
    # out the units) and key buffer
    segs = seg_memo.shape[0] > 0 and geom[G_FAST] == 1
    h1 = BLOCK_BUF_WORDS + BLOCK_HIST_WORDS
    sbuf = scratch[h1:h1 + (SEG_BUF_WORDS if segs else 0)]
    sbuf[:] = 0
    n_run = 0
    for i in range(kind.shape[0]):
        start = t0
        for j in range(dep_start[i], dep_start[i + 1]):
            start = max(start, step_end[dep_idx[j]])
        if serial == 1:
            start = max(start, now)
        if kind[i] == 3:  # not run this token (an expert not chosen): takes no time
            step_start[i] = start
            step_end[i] = start
            continue
        if kind[i] == 1:
            k = pim_index[i]
            done = start
            crit = 0
            for c in range(n_ch):
                was[c] = alias[c]
            for c in range(n_ch):
                rep[c] = c
                if group == 1:
                    s_c = start + link_lead[c, k]  # equal for equal segment classes
                    cpt = min(s_c, scal[c, S_NEXT_REF])
                    a = alias[c]
                    if a != c and seg_cls[c, k] == seg_cls[a, k]:
                        # the bank timers and windows of an earlier channel (it took them at
                        # an earlier step and neither ran on its own since): equal, so
                        # equivalent without comparing them; the open rows are compared
                        r = rep[a]
                        d = seg_rows[c, k, R_SHIFT] - seg_rows[r, k, R_SHIFT]
                        if _rows_equivalent(c, r, d, seg_rows[r, k, R_MIN],
                                            seg_rows[r, k, R_MAX], open_row, scal):
                            rep[c] = r
                    if rep[c] == c and a != c:
                        # its bank timers and windows are a's: so are those of a class's
                        # representative that had them at the step's start (a itself, or one
                        # that took its copy this step; no channel has run yet), and only the
                        # scalars and open rows can differ
                        for r in range(c):
                            if rep[r] != r or seg_cls[c, k] != seg_cls[r, k] or was[r] != a:
                                continue
                            d = seg_rows[c, k, R_SHIFT] - seg_rows[r, k, R_SHIFT]
                            if (_rows_equivalent(c, r, d, seg_rows[r, k, R_MIN],
                                                 seg_rows[r, k, R_MAX], open_row, scal)
                                    and scalars_equivalent(c, r, cpt, s_c, geom, scal)):
                                rep[c] = r
                                break
                    if rep[c] == c:
                        if a != c:  # it runs on its own: its own copy of the state first
                            _take_state(c, a, ready, win_hist, win_cnt)
                            alias[c] = c
                        for r in range(c):
                            if rep[r] != r or seg_cls[c, k] != seg_cls[r, k]:
                                continue
                            d = seg_rows[c, k, R_SHIFT] - seg_rows[r, k, R_SHIFT]
                            if (_rows_equivalent(c, r, d, seg_rows[r, k, R_MIN],
                                                 seg_rows[r, k, R_MAX], open_row, scal)
                                    and timing_equivalent(c, r, cpt, s_c, win_tab, geom, ready,
                                                          win_hist, win_cnt, scal)):
                                rep[c] = r
                                break
                    oc_before[c] = open_cyc_at(scal[c], cpt)
                if rep[c] == c:  # it runs: its counts before (a channel taking its outcome
                    # takes the difference)
                    for x in range(counts.shape[1]):
                        before[c, x] = counts[c, x]
                    for x in range(stats.shape[1]):
                        st_before[c, x] = stats[c, x]
            for c in range(n_ch):
                if rep[c] != c:
                    continue
                n_run += 1
                lo = seg_lo[c, k]
                n_it = seg_hi[c, k] - lo
                nb = start + link_lead[c, k]
                rec = False
                if segs and seg_reps[c, k] == 0 and n_it >= SEG_MIN_ITEMS:
                    # the whole segment: replayed, or run and then recorded
                    if block_key(items, lo, n_it, nb, geom, win_tab, ready[c], win_hist[c],
                                 win_cnt[c], open_row[c], scal[c], counts[c], stats[c],
                                 sbuf) > 0:
                        if block_lookup(geom, win_tab, ready[c], win_hist[c], win_cnt[c],
                                        open_row[c], scal[c], counts[c], stats[c], seg_memo,
                                        sbuf) == 1:
                            continue
                        rec = True
                log = run_blocks(items, lo, lo + n_it, seg_block[c, k], seg_reps[c, k], nb,
                                 cmd_tab, pr_start, pr_tab, win_tab, geom, ready[c],
                                 win_hist[c], win_cnt[c], open_row[c], scal[c], counts[c],
                                 stats[c], log, memo, buf, hist)
                if rec:
                    block_record(n_it, geom, win_tab, ready[c], win_hist[c], win_cnt[c],
                                 open_row[c], scal[c], counts[c], stats[c], seg_memo, sbuf)
            for c in range(n_ch):
                r = rep[c]
                if r != c:
                    # the bank timers and windows stay r's until c needs its own (alias)
                    alias[c] = r
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
                    # r's open rows, moved to c's (and S_ALLROW)
                    _take_rows(c, r, seg_rows[c, k, R_SHIFT] - seg_rows[r, k, R_SHIFT],
                               seg_rows[r, k, R_MIN], seg_rows[r, k, R_MAX], open_row, scal)
                link_free[c] = max(start, link_free[c]) + link_busy[c, k]
                if max(scal[c, S_DONE], link_free[c]) > done:
                    done = max(scal[c, S_DONE], link_free[c])
                    crit = c
            for x in range(counts.shape[1]):
                step_counts[i, x] = counts[rep[crit], x] - before[rep[crit], x]
            step_link[i] = link_busy[crit, k]
            step_wait[i, 0] = link_lead[crit, k]
            step_wait[i, 1] = done - max(scal[crit, S_DONE], start)
            end = done + link_lat
        elif kind[i] == 2:
            start = max(start, comm_free)
            end = start + dur[i]
            comm_free = end
        else:
            start = max(start, asic_free)
            if asic_busy.shape[0] > 0:
                start = asic_gap(asic_busy, start, dur[i])
            end = start + dur[i]
            asic_free = end
        step_start[i] = start
        step_end[i] = end
        if end > now:
            now = end
    for c in range(n_ch):
        if alias[c] != c:
            _take_state(c, alias[c], ready, win_hist, win_cnt)
    return now, n_run


@cached_njit()
def _take_state(c, r, ready, win_hist, win_cnt):
    """Channel ``c`` takes channel ``r``'s bank timers and windows (the rest of its state it
    took when it last copied ``r``'s outcome)."""
    copy_into(ready[c], ready[r])
    copy_into(win_hist[c], win_hist[r])
    copy_into(win_cnt[c], win_cnt[r])
