"""Memo of simulated units of a channel's command stream: exact replay from an equivalent state.

A unit (a run of identical item pairs, a block of items, or a run of conventional RD/WR requests
through the FR-FCFS queues) that was simulated before from an equivalent controller state is
replayed from the memo instead of simulated again (:func:`memo_unit`); the state moves exactly as
simulating it would. One flat ``int64`` array holds the memo (:func:`new_memo`): a header, an
open-addressing hash table of entry ids, per-entry metadata, the entry words, and scratch.
"""

from __future__ import annotations

import numpy as np

from pimsim.timing.frfcfs import run_queued
from pimsim.timing.issue import fast_forward_pairs, run_item
from pimsim.timing.jit import cached_njit
from pimsim.timing.state import (
    S_ALLROW,
    S_DONE,
    S_LAST,
    S_MODE,
    S_NEXT_REF,
    S_OPEN_CYC,
    S_OPEN_SINCE,
    open_cyc_at,
)
from pimsim.timing.tables import G_BUS, G_REFRESH

# One flat int64 array holds the memo: a header, an open-addressing hash table of entry ids,
# per-entry metadata (hash, offset, key length, value length), the entry words, and scratch.
(M_HT, M_MAXE, M_CAP, M_N, M_USED, M_TAB, M_META, M_DAT, M_SCR, M_SCR_LEN, M_HITS,
 M_MISSES, M_DROPPED, M_CLEARED) = range(14)
M_HEADER = 16
MEMO_BLOCK = 64  # stream items per block unit (units that are not pair runs)
_NO_REF = -(1 << 50)  # key slot value: entry valid for any refresh time after its last command
# a key's item in one word (_memo_key): command, bank + 1, row label + 8 and count in these ranges
_PACK_CMD, _PACK_BANK, _PACK_LAB, _PACK_LAB_NEG, _PACK_CNT = 1 << 10, 1 << 10, 1 << 16, 8, 1 << 24


def new_memo(capacity_words: int = 1 << 24, max_entries: int = 1 << 17,
             scratch_words: int = 1 << 15) -> np.ndarray:
    """An empty memo (see ``memo_unit``); ``np.zeros(0)`` disables memoisation."""
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


def memo_usage(memo: np.ndarray) -> dict[str, int]:
    """How full a memo is: entries and words used of their capacities, units replayed
    (``hits``) and simulated (``misses``), how often it was cleared because it was full
    (``cleared``: its entries forgotten, the units that recur recorded again) and units not
    recorded because one alone does not fit it (``dropped``: simulated whenever they recur,
    exact but not faster)."""
    if memo.shape[0] == 0:
        return {}
    return {"entries": int(memo[M_N]), "max_entries": int(memo[M_MAXE]),
            "words": int(memo[M_USED]), "capacity_words": int(memo[M_CAP]),
            "hits": int(memo[M_HITS]), "misses": int(memo[M_MISSES]),
            "cleared": int(memo[M_CLEARED]), "dropped": int(memo[M_DROPPED])}


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
def _label_in(memo, lab0, n_lab, row, lo, hi):
    """:func:`_label`, with ``[lo, hi]`` the range of the rows labelled so far: a row outside
    it is new without a search (rows that move on, a new one every MAC pair, label in constant
    time). Returns (label, labels used, lo, hi)."""
    if row < 0:
        return row, n_lab, lo, hi
    if n_lab == 0 or row < lo or row > hi:
        memo[lab0 + n_lab] = row
        if n_lab == 0:
            return n_lab, n_lab + 1, row, row
        return n_lab, n_lab + 1, min(lo, row), max(hi, row)
    lab, n_lab = _label(memo, lab0, n_lab, row)
    return lab, n_lab, lo, hi


@cached_njit(inline="always")
def _pack_ready(ready, cp, memo, n):
    """Write the ready times after ``cp`` at ``memo[n:]``: a count, then one word per time
    (row << 40 | column << 32 | cycles after cp; a replay writes it back without a division).
    Returns the next free index, or -1 if one does not fit."""
    nz_at = n
    n += 1
    ncol = ready.shape[1]
    if ncol > 256:
        return -1  # a column does not fit its eight bits: not recorded
    for i in range(ready.shape[0]):
        for j in range(ncol):
            v = ready[i, j] - cp
            if v > 0:
                if v >= (1 << 31):
                    return -1
                memo[n] = (i << 40) | (j << 32) | v
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
    memo[n + 2] = max(nb - cp, 0)
    memo[n + 3] = scal[S_DONE] - cp
    memo[n + 4] = scal[S_MODE]
    n += 5
    n_lab = 0
    lo = np.int64(0)
    hi = np.int64(-1)
    last_row = np.int64(-1)
    last_lab = np.int64(-1)
    for b in range(open_row.shape[0]):
        r = open_row[b]
        if r != last_row:
            last_lab, n_lab, lo, hi = _label_in(memo, lab0, n_lab, r, lo, hi)
            last_row = r
        memo[n] = last_lab
        n += 1
    packed = 0
    if kind != 1:
        # one word per item where its fields fit (the key's second word says which form)
        packed = 1
        n0 = n
        for p in range(pos, pos + n_it):
            r = stream[p, 2]
            lab = r  # a negative row (none, or all rows) stays, without disturbing the cache
            if r >= 0:
                if r != last_row:
                    last_lab, n_lab, lo, hi = _label_in(memo, lab0, n_lab, r, lo, hi)
                    last_row = r
                lab = last_lab
            cmd, bank, cnt = stream[p, 0], stream[p, 1], stream[p, 3]
            if (0 <= cmd < _PACK_CMD and -1 <= bank < _PACK_BANK - 1
                    and -_PACK_LAB_NEG <= lab < _PACK_LAB - _PACK_LAB_NEG
                    and 0 <= cnt < _PACK_CNT):
                memo[n] = (((cmd * _PACK_BANK + bank + 1) * _PACK_LAB + lab + _PACK_LAB_NEG)
                           * _PACK_CNT + cnt)
                n += 1
            else:
                packed = 0
                break
        if packed == 0:
            n = n0
            for p in range(pos, pos + n_it):
                memo[n] = stream[p, 0]
                memo[n + 1] = stream[p, 1]
                memo[n + 2], n_lab, lo, hi = _label_in(memo, lab0, n_lab, stream[p, 2], lo, hi)
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
            r = stream[pos + 2 * j, 2]
            if r != last_row:
                last_lab, n_lab, lo, hi = _label_in(memo, lab0, n_lab, r, lo, hi)
                last_row = r
            memo[n] = last_lab
            n += 1
    memo[k0 + 1] = 2 * n_it + packed
    n = _pack_ready(ready, cp, memo, n)
    if n < 0:
        return -1, 0, cp
    n = _pack_windows(win_tab, win_hist, win_cnt, cp, memo, n, memo, -1)
    memo[n] = _NO_REF  # the refresh slot, last (see memo_unit; _hash_with_ref)
    return n + 1 - k0, n_lab, cp


@cached_njit(inline="always")
def _same_words(a, a0, b, b0, n):
    """Whether ``a[a0:a0+n]`` equals ``b[b0:b0+n]``."""
    for i in range(n):
        if a[a0 + i] != b[b0 + i]:
            return False
    return True


@cached_njit(inline="always")
def _memo_hash(memo, k0, klen):
    """FNV-1a over four interleaved lanes of the words (independent multiply chains), the
    lanes then folded in order."""
    prime = np.int64(1099511628211)
    h0 = np.int64(-3750763034362895579)  # FNV-1a offset basis
    h1 = h0 ^ 1
    h2 = h0 ^ 2
    h3 = h0 ^ 3
    i = k0
    end4 = k0 + (klen // 4) * 4
    while i < end4:
        h0 = (h0 ^ memo[i]) * prime
        h1 = (h1 ^ memo[i + 1]) * prime
        h2 = (h2 ^ memo[i + 2]) * prime
        h3 = (h3 ^ memo[i + 3]) * prime
        i += 4
    while i < k0 + klen:
        h0 = (h0 ^ memo[i]) * prime
        i += 1
    return (((h0 * prime) ^ h1) * prime ^ h2) * prime ^ h3


@cached_njit(inline="always")
def _hash_with_ref(h_rest, ref):
    """:func:`_memo_hash` of a key whose words but the last (the refresh slot) hash to
    ``h_rest``, with ``ref`` in the refresh slot."""
    return (h_rest ^ ref) * np.int64(1099511628211)


@cached_njit()
def _memo_find(memo, k0, klen, h):
    """Entry id of the key at ``memo[k0:k0+klen]`` (full comparison), or -1."""
    return _memo_find_in(memo, memo, k0, klen, h)


@cached_njit()
def _memo_find_in(memo, src, k0, klen, h):
    """Entry id of the key at ``src[k0:k0+klen]`` (full comparison), or -1."""
    mask = memo[M_HT] - 1
    tab = memo[M_TAB]
    meta = memo[M_META]
    dat = memo[M_DAT]
    slot = h & mask
    while memo[tab + slot] != 0:
        e = memo[tab + slot] - 1
        if memo[meta + 4 * e] == h and memo[meta + 4 * e + 2] == klen:
            if _same_words(memo, dat + memo[meta + 4 * e + 1], src, k0, klen):
                return e
        slot = (slot + 1) & mask
    return -1


@cached_njit()
def _memo_insert(memo, k0, klen, v0, vlen, h):
    _memo_insert_from(memo, memo, k0, klen, v0, vlen, h)


@cached_njit()
def _memo_insert_from(memo, src, k0, klen, v0, vlen, h):
    """Record the key ``src[k0:k0+klen]`` with the value ``src[v0:v0+vlen]``. A full memo is
    cleared first: units whose state or items move on with the position (attention over a
    growing context, refresh phases) leave entries that never recur, and keeping the first
    ones would leave no room for the units that do. An entry larger than the whole memo is
    counted as dropped instead."""
    if klen + vlen > memo[M_CAP]:
        memo[M_DROPPED] += 1  # simulated whenever it recurs (exact, just not faster)
        return
    e = memo[M_N]
    if e >= memo[M_MAXE] or memo[M_USED] + klen + vlen > memo[M_CAP]:
        tab = memo[M_TAB]
        for i in range(memo[M_HT]):
            memo[tab + i] = 0
        memo[M_N] = 0
        memo[M_USED] = 0
        memo[M_CLEARED] += 1
        e = 0
    off = memo[M_DAT] + memo[M_USED]
    for i in range(klen):
        memo[off + i] = src[k0 + i]
    for i in range(vlen):
        memo[off + klen + i] = src[v0 + i]
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
        f_pre = open_cyc_at(scal, cp)
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
    nz = memo[n]
    n += 1
    for _ in range(nz):
        w = memo[n]
        ready[w >> 40, (w >> 32) & 0xFF] = cp + (w & 0xFFFFFFFF)
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


@cached_njit(inline="always")
def _snapshot_before(dst, pre0, counts, stats, scal, cp, win_cnt):
    """A unit's starting counts, statistics, open-bank state, next refresh and window counts,
    written to ``dst`` from ``pre0`` (what :func:`_memo_value` subtracts to store a delta)."""
    n_c, n_s = counts.shape[0], stats.shape[0]
    for x in range(n_c):
        dst[pre0 + x] = counts[x]
    for x in range(n_s):
        dst[pre0 + n_c + x] = stats[x]
    dst[pre0 + n_c + n_s] = scal[S_OPEN_CYC]
    dst[pre0 + n_c + n_s + 1] = scal[S_OPEN_SINCE]
    dst[pre0 + n_c + n_s + 2] = scal[S_NEXT_REF]
    dst[pre0 + n_c + n_s + 3] = open_cyc_at(scal, cp)
    q = pre0 + n_c + n_s + 4
    for w in range(win_cnt.shape[0]):
        for node in range(win_cnt.shape[1]):
            dst[q] = win_cnt[w, node]
            q += 1


@cached_njit()
def memo_unit(stream, pos, kind, n_it, not_before, cmd_tab, pr_start, pr_tab, win_tab, geom,
              ready, win_hist, win_cnt, open_row, scal, counts, stats, log, memo):
    """Run one unit (``kind`` 1: a run of ``n_it`` identical pairs, see fast_forward_pairs;
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
    ref_at = k0 + klen - 1  # the key's refresh slot
    if klen > 0:
        h_rest = _memo_hash(memo, k0, klen - 1)
        h0 = _hash_with_ref(h_rest, _NO_REF)
        e0 = _memo_find(memo, k0, klen, h0)
        if e0 >= 0:
            ev = memo[M_DAT] + memo[memo[M_META] + 4 * e0 + 1] + klen
            if geom[G_REFRESH] == 0 or scal[S_NEXT_REF] - cp > memo[ev + 1]:
                memo[M_HITS] += 1
                return pos + _memo_apply(memo, ev, cp, lab0, win_tab, ready, win_hist, win_cnt,
                                         open_row, scal, counts, stats), log
        if geom[G_REFRESH] == 1:
            memo[ref_at] = scal[S_NEXT_REF] - cp
            h1 = _hash_with_ref(h_rest, memo[ref_at])
            e1 = _memo_find(memo, k0, klen, h1)
            if e1 >= 0:
                ev = memo[M_DAT] + memo[memo[M_META] + 4 * e1 + 1] + klen
                memo[M_HITS] += 1
                return pos + _memo_apply(memo, ev, cp, lab0, win_tab, ready, win_hist, win_cnt,
                                         open_row, scal, counts, stats), log
        _snapshot_before(memo, pre0, counts, stats, scal, cp, win_cnt)
    if kind == 1:
        p, log = fast_forward_pairs(stream, pos, n_it, not_before, cmd_tab, pr_start, pr_tab,
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
                memo[ref_at] = _NO_REF
                _memo_insert(memo, k0, klen, v0, vlen, h0)
            elif geom[G_REFRESH] == 1:
                # a refresh happened, or an entry without the refresh time is there but the
                # refresh was due too early for it: key the refresh time
                _memo_insert(memo, k0, klen, v0, vlen, h1)
    return p, log


# Blocks: a segment that repeats a block of items (the passes of a batched matrix-vector product
# are the same items once per pass) is run block by block, each block one memo unit of its own
# (kind 3) whose simulation on a miss runs the block's own units (kind 0 to 2) as usual. The
# block's key, labels and state before it are kept in ``buf`` (:func:`new_block_buf`), since
# the units inside it use the memo's scratch.
BLOCK_KIND = 3
(B_KLEN, B_NLAB, B_CP, B_H0, B_H1, B_E0, B_LAB, B_PRE, B_K0, B_V0, B_ROOM) = range(11)
B_HEADER = 16


def new_block_buf(words: int = 1 << 15) -> np.ndarray:
    """Scratch for :func:`block_lookup` / :func:`block_record` (one block's key and value)."""
    return np.zeros(words, np.int64)


@cached_njit()
def block_key(stream, pos, n_it, not_before, geom, win_tab, ready, win_hist, win_cnt, open_row,
              scal, counts, stats, buf):
    """Write the key of the block of items ``[pos, pos + n_it)`` from the current state into
    ``buf`` (``memo_unit``'s key of a unit of kind :data:`BLOCK_KIND`, refresh slot empty);
    returns its length, or -1 when it does not fit."""
    n_c = counts.shape[0]
    n_s = stats.shape[0]
    n_w = win_cnt.shape[0] * win_cnt.shape[1]
    lab0 = B_HEADER
    pre0 = lab0 + open_row.shape[0] + 4 * n_it + 1
    k0 = pre0 + n_c + n_s + 4 + n_w
    room = (buf.shape[0] - k0) // 2
    if room <= 0:
        return -1
    klen, n_lab, cp = _memo_key(stream, pos, np.int64(0), n_it, not_before, geom, win_tab,
                                ready, win_hist, win_cnt, open_row, scal, buf, k0, lab0, room)
    if klen <= 0:
        return -1
    buf[k0] = BLOCK_KIND
    buf[B_KLEN], buf[B_NLAB], buf[B_CP] = klen, n_lab, cp
    buf[B_LAB], buf[B_PRE], buf[B_K0], buf[B_V0], buf[B_ROOM] = lab0, pre0, k0, k0 + room, room
    return klen


@cached_njit(inline="always")
def _block_replay(memo, ev, buf, lab0, n_lab, cp, win_tab, ready, win_hist, win_cnt, open_row,
                  scal, counts, stats):
    """Apply the memo entry whose value starts at ``ev`` to the state, the block's row labels
    (kept in ``buf``) copied to the memo's scratch first."""
    lab_m = memo[M_SCR]
    for i in range(n_lab):
        memo[lab_m + i] = buf[lab0 + i]
    memo[M_HITS] += 1
    _memo_apply(memo, ev, cp, lab_m, win_tab, ready, win_hist, win_cnt, open_row, scal, counts,
                stats)


@cached_njit()
def block_lookup(geom, win_tab, ready, win_hist, win_cnt, open_row, scal, counts, stats, memo,
                 buf):
    """Replay the block whose key :func:`block_key` wrote into ``buf`` from the memo when an
    equal block ran before from an equivalent state (``memo_unit``'s refresh rule): returns 1,
    the state moved exactly as running the block would. Else returns 0 with the state before
    the block kept in ``buf`` for :func:`block_record` (run the block, then record it)."""
    klen, n_lab, cp = buf[B_KLEN], buf[B_NLAB], buf[B_CP]
    lab0, pre0, k0 = buf[B_LAB], buf[B_PRE], buf[B_K0]
    ref_at = k0 + klen - 1
    buf[ref_at] = _NO_REF
    h_rest = _memo_hash(buf, k0, klen - 1)
    h0 = _hash_with_ref(h_rest, _NO_REF)
    e0 = _memo_find_in(memo, buf, k0, klen, h0)
    if e0 >= 0:
        ev = memo[M_DAT] + memo[memo[M_META] + 4 * e0 + 1] + klen
        if geom[G_REFRESH] == 0 or scal[S_NEXT_REF] - cp > memo[ev + 1]:
            _block_replay(memo, ev, buf, lab0, n_lab, cp, win_tab, ready, win_hist, win_cnt,
                          open_row, scal, counts, stats)
            return 1
    h1 = np.int64(0)
    if geom[G_REFRESH] == 1:
        buf[ref_at] = scal[S_NEXT_REF] - cp
        h1 = _hash_with_ref(h_rest, buf[ref_at])
        e1 = _memo_find_in(memo, buf, k0, klen, h1)
        if e1 >= 0:
            ev = memo[M_DAT] + memo[memo[M_META] + 4 * e1 + 1] + klen
            _block_replay(memo, ev, buf, lab0, n_lab, cp, win_tab, ready, win_hist, win_cnt,
                          open_row, scal, counts, stats)
            return 1
    _snapshot_before(buf, pre0, counts, stats, scal, cp, win_cnt)
    buf[B_H0], buf[B_H1], buf[B_E0] = h0, h1, e0
    return 0


# a block start kept for cycle detection (block_seen): hash, key length, cp, open cycles at cp,
# next refresh, then counts, stats, window counts and the key
(H_HASH, H_KLEN, H_CP, H_OPEN, H_REF) = range(5)
H_FIXED = 5


@cached_njit()
def block_seen(geom, win_cnt, scal, counts, stats, buf, hist, n_rec, rec_off):
    """Cycle detection over the starts of a segment's blocks: the key :func:`block_key` wrote
    into ``buf`` with the refresh slot set to the next refresh (relative, refresh on) is the
    whole state the rest of the segment depends on. Returns the record of an earlier block
    start with the same key (-1: none), else keeps this one as record ``n_rec`` (when ``hist``
    has room; ``rec_off[n_rec]`` is set to its offset, -1 when it did not fit)."""
    klen, cp, k0 = buf[B_KLEN], buf[B_CP], buf[B_K0]
    buf[k0 + klen - 1] = scal[S_NEXT_REF] - cp if geom[G_REFRESH] == 1 else _NO_REF
    h = _memo_hash(buf, k0, klen)
    for r in range(n_rec):
        o = rec_off[r]
        if o < 0 or hist[o + H_HASH] != h or hist[o + H_KLEN] != klen:
            continue
        n_c = counts.shape[0]
        n_s = stats.shape[0]
        n_w = win_cnt.shape[0] * win_cnt.shape[1]
        if _same_words(hist, o + H_FIXED + n_c + n_s + n_w, buf, k0, klen):
            return r
    o = 0 if n_rec == 0 else rec_off[n_rec - 1]
    if n_rec > 0:
        if o < 0:
            rec_off[n_rec] = -1
            return -1
        o += H_FIXED + counts.shape[0] + stats.shape[0] + win_cnt.shape[0] * win_cnt.shape[1]
        o += hist[rec_off[n_rec - 1] + H_KLEN]
    need = H_FIXED + counts.shape[0] + stats.shape[0] + win_cnt.shape[0] * win_cnt.shape[1] + klen
    if o + need > hist.shape[0]:
        rec_off[n_rec] = -1
        return -1
    rec_off[n_rec] = o
    hist[o + H_HASH], hist[o + H_KLEN], hist[o + H_CP] = h, klen, cp
    hist[o + H_OPEN], hist[o + H_REF] = open_cyc_at(scal, cp), scal[S_NEXT_REF]
    q = o + H_FIXED
    for x in range(counts.shape[0]):
        hist[q] = counts[x]
        q += 1
    for x in range(stats.shape[0]):
        hist[q] = stats[x]
        q += 1
    for w in range(win_cnt.shape[0]):
        for node in range(win_cnt.shape[1]):
            hist[q] = win_cnt[w, node]
            q += 1
    for i in range(klen):
        hist[q + i] = buf[k0 + i]
    return -1


@cached_njit()
def block_jump(m, o, geom, win_tab, ready, win_hist, win_cnt, scal, counts, stats, hist, cp):
    """Move the state, now at a block start with the same key as the earlier block start kept at
    ``hist[o:]`` (:func:`block_seen`), over ``m`` more periods of the blocks between them: the
    blocks of a period run from equal keys, so every period issues the same commands shifted by
    the period's cycles (``cp`` now minus then), with the same counts, statistics, window
    entries and open-bank time. Ready times and window entries that still bind move by the
    periods' cycles; those at or before ``cp`` bind nothing either way."""
    dt = cp - hist[o + H_CP]
    shift = m * dt
    n_c = counts.shape[0]
    n_s = stats.shape[0]
    q = o + H_FIXED
    for x in range(n_c):
        counts[x] += m * (counts[x] - hist[q + x])
    q += n_c
    for x in range(n_s):
        stats[x] += m * (stats[x] - hist[q + x])
    q += n_s
    for w in range(win_cnt.shape[0]):
        size = win_tab[w, 4]
        for node in range(win_cnt.shape[1]):
            c = win_cnt[w, node]
            dc = c - hist[q]
            q += 1
            if dc == 0:
                continue
            # both counts fill the window (their keys hold equal entry numbers): oldest first
            tmp = np.empty(size, np.int64)
            for j in range(size):
                tmp[j] = win_hist[w, node, (c + j) % size] + shift
            c2 = c + m * dc
            for j in range(size):
                win_hist[w, node, (c2 + j) % size] = tmp[j]
            win_cnt[w, node] = c2
    for i in range(ready.shape[0]):
        for j in range(ready.shape[1]):
            if ready[i, j] > cp:
                ready[i, j] += shift
    d_open = open_cyc_at(scal, cp) - hist[o + H_OPEN]
    scal[S_OPEN_CYC] += m * d_open
    scal[S_OPEN_SINCE] += shift
    scal[S_LAST] += shift
    scal[S_DONE] += shift
    if geom[G_REFRESH] == 1:
        scal[S_NEXT_REF] += shift


@cached_njit()
def block_record(n_items, geom, win_tab, ready, win_hist, win_cnt, open_row, scal, counts,
                 stats, memo, buf):
    """Record the block that :func:`block_lookup` missed (kept in ``buf``) with the state it
    left after running it (as ``memo_unit`` records a unit)."""
    klen, k0, v0 = buf[B_KLEN], buf[B_K0], buf[B_V0]
    memo[M_MISSES] += 1
    vlen = _memo_value(buf, v0, buf[B_ROOM], n_items, buf[B_CP], buf[B_LAB], buf[B_NLAB],
                       buf[buf[B_PRE]:k0], win_tab, ready, win_hist, win_cnt, open_row, scal,
                       counts, stats)
    if vlen <= 0:
        return
    if buf[v0 + 4] == 0 and buf[B_E0] < 0:
        buf[k0 + klen - 1] = _NO_REF
        _memo_insert_from(memo, buf, k0, klen, v0, vlen, buf[B_H0])
    elif geom[G_REFRESH] == 1:
        _memo_insert_from(memo, buf, k0, klen, v0, vlen, buf[B_H1])
