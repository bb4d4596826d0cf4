"""Properties of the timing engine, checked against the independent checker (hypothesis).

* any stream the engine schedules is legal (zero checker violations), refresh on and off, on
  GDDR6-AiM and on plain GDDR6 (and on a variant with a very short refresh interval, so refreshes
  interrupt every kind of command);
* scheduling is deterministic, and the closed-form fast path equals the one-by-one slow path
  exactly (log, command counts, done cycle);
* refresh costs what it should on a long MAC stream;
* the checker is not a no-op: moving one rule-bound command a cycle earlier is always caught.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimsim.check import check_log, check_report
from pimsim.config import ConfigError, Timing, load_config
from pimsim.spec.commands import cmd_id
from pimsim.timing import ChannelTimer, make_stream
from pimsim.timing.memo import M_HITS
from pimsim.timing.state import S_LOG_N

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load(name: str, refresh: bool):
    try:
        return load_config(name, refresh=refresh)
    except ConfigError as e:
        if "not found" in str(e):
            pytest.skip(f"hwconfigs/{name}.toml not written yet")
        raise


def _short_refi(cfg):
    """A variant with refresh due every nRFC + 150 cycles: refresh lands everywhere."""
    cyc = dict(cfg.timing.cycles, nREFI=cfg.timing.cycles["nRFC"] + 150)
    return cfg.replace(timing=Timing(cfg.timing.tCK_ps, cyc))


CONFIGS = {
    "aim-off": lambda: _load("aim-gddr6", False),
    "aim-on": lambda: _load("aim-gddr6", True),
    "aim-on-short-refi": lambda: _short_refi(_load("aim-gddr6", True)),
    "gddr6-off": lambda: _load("gddr6", False),
    "gddr6-on": lambda: _load("gddr6", True),
    "gddr6-on-short-refi": lambda: _short_refi(_load("gddr6", True)),
    "hbm-pim-on": lambda: _load("hbm-pim", True),  # nCCDL > nCCDS, other org of PIM timing
    "pim-gpt-on-short-refi": lambda: _short_refi(_load("pim-gpt", True)),
}


def items(pim: bool):
    bank = st.integers(0, 15)
    row = st.integers(0, 3)
    col_sb = ["RD", "WR"] + (["MAC_SB", "RD_CP", "WR_CP"] if pim else [])
    opts = [
        st.tuples(st.sampled_from(col_sb), bank, row, st.integers(1, 8)),
        st.tuples(st.just("ACT"), bank, row, st.just(1)),
        st.tuples(st.just("PRE"), bank, st.just(0), st.just(1)),
        st.tuples(st.just("PREA"), st.just(-1), st.just(0), st.just(1)),
        st.just("SYNC"),
    ]
    if pim:
        opts += [
            st.tuples(st.sampled_from(["MAC_AB", "EWMUL", "WR_AB"]), st.just(-1), row,
                      st.integers(1, 64)),
            st.tuples(st.sampled_from(["WR_GB", "RD_MAC", "WR_MAC", "AF", "RD_AF"]), st.just(-1),
                      st.just(0), st.integers(1, 4)),
            st.tuples(st.sampled_from(["ACT_AB", "TMOD"]), st.just(-1), row, st.just(1)),
        ]
    return st.one_of(opts)


def streams(pim: bool):
    return st.tuples(st.lists(items(pim), min_size=5, max_size=60), st.integers(1, 3))


def _run(cfg, stream, *, fast=True):
    t = ChannelTimer(cfg, log=True, fast=fast)
    t.run_all(stream)
    return t


@pytest.mark.parametrize("which", list(CONFIGS))
def test_engine_schedules_are_legal_deterministic_and_fast_equals_slow(which):
    cfg = CONFIGS[which]()

    @settings(max_examples=100, **SETTINGS)
    @given(streams(cfg.pim.enabled))
    def prop(arg):
        its, repeat = arg
        s = make_stream(its * repeat)
        a = _run(cfg, s)
        vs = check_log(a.log, cfg)
        assert vs == [], check_report(vs)
        b = _run(cfg, s)
        assert np.array_equal(a.log, b.log) and a.done_cyc == b.done_cyc
        slow = _run(cfg, s, fast=False)
        assert np.array_equal(a.log, slow.log)
        assert a.command_counts() == slow.command_counts()
        assert a.done_cyc == slow.done_cyc
        assert (a.row_hits, a.row_misses, a.refreshes) == (slow.row_hits, slow.row_misses,
                                                           slow.refreshes)

    prop()


@pytest.mark.parametrize("which", list(CONFIGS))
def test_long_random_streams(which):
    """A few long random streams (numpy RNG, fixed seeds): thousands of commands, many refreshes."""
    cfg = CONFIGS[which]()
    pim = cfg.pim.enabled
    col_sb = ["RD", "WR"] + (["MAC_SB", "RD_CP", "WR_CP"] if pim else [])
    for seed in range(3):
        rng = np.random.default_rng(seed)
        its = []
        for _ in range(1500):
            k = rng.integers(0, 6 if pim else 3)
            if k == 0:
                its.append((str(rng.choice(col_sb)), int(rng.integers(16)), int(rng.integers(4)),
                            int(rng.integers(1, 9))))
            elif k == 1:
                its.append((str(rng.choice(["ACT", "PRE"])), int(rng.integers(16)),
                            int(rng.integers(4)), 1))
            elif k == 2:
                its.append("SYNC" if rng.random() < 0.5 else ("PREA", -1, 0, 1))
            elif k == 3:
                its.append((str(rng.choice(["MAC_AB", "EWMUL", "WR_AB"])), -1,
                            int(rng.integers(4)), int(rng.integers(1, 65))))
            elif k == 4:
                its.append((str(rng.choice(["WR_GB", "RD_MAC", "WR_MAC", "AF", "RD_AF"])), -1, 0,
                            int(rng.integers(1, 5))))
            else:
                its.append((str(rng.choice(["ACT_AB", "TMOD"])), -1, int(rng.integers(4)), 1))
        s = make_stream(its)
        a = _run(cfg, s)
        vs = check_log(a.log, cfg)
        assert vs == [], check_report(vs)
        slow = _run(cfg, s, fast=False)
        assert np.array_equal(a.log, slow.log) and a.done_cyc == slow.done_cyc
        assert a.command_counts() == slow.command_counts()
        if cfg.refresh.enabled:
            assert a.refreshes >= 3


REFAB_ID, PREA_ID = cmd_id("REFab"), cmd_id("PREA")


def _bound_candidates(log, refresh_cmd=REFAB_ID, prea=PREA_ID):
    """Rows the engine placed at a rule's earliest cycle: all but the first, and but a PREA that
    the refresh logic placed at the refresh due time (it may be bound by that time only)."""
    n = log.shape[0]
    ok = np.arange(n) > 0
    ok[:-1] &= ~((log[:-1, 1] == prea) & (log[1:, 1] == refresh_cmd))
    return np.flatnonzero(ok)


@pytest.mark.parametrize("which", ["aim-off", "aim-on-short-refi", "gddr6-on-short-refi"])
def test_checker_catches_a_command_moved_one_cycle_early(which):
    cfg = CONFIGS[which]()

    @settings(max_examples=100, **SETTINGS)
    @given(streams(cfg.pim.enabled), st.data())
    def prop(arg, data):
        its, repeat = arg
        log = _run(cfg, make_stream(its * repeat)).log
        cand = _bound_candidates(log)
        if cfg.pim.enabled and cfg.pim.mode_switch == "register":
            # a mode switch waits for the command it enables (a policy, not a rule)
            cand = cand[log[cand, 1] != cmd_id("TMOD")]
        if cand.shape[0] == 0:
            return
        i = int(cand[data.draw(st.integers(0, cand.shape[0] - 1), label="index")])
        bad = log.copy()
        bad[i, 0] -= 1
        assert check_log(bad, cfg), f"moving {log[i].tolist()} one cycle earlier went unnoticed"

    prop()


def test_refresh_slowdown_on_a_long_mac_stream():
    """2000 rows x 64 all-bank MACs: refresh on vs off.

    Without refresh a row takes P = nRCDRDMAC + 63 nCCDL + nRTP + nRP cycles (ACT_AB to ACT_AB).
    Each refresh costs nRFC plus whatever it breaks, depending on where in the row (phase phi
    after the ACT_AB) it falls due:

    * during the ACT -> first-MAC wait (0 < phi <= nRCDRDMAC): the activation is wasted: PREA at
      max(phi, nRAS), REF nRP later, re-ACT nRFC later, first MAC nRCDRDMAC later:
      overhead = max(phi, nRAS) + nRP + nRFC;
    * during the MACs: PREA nRTP after the last MAC, REF, re-ACT, wait nRCDRDMAC, instead of the
      next MAC nCCDL later: overhead = nRTP + nRP + nRFC + nRCDRDMAC - nCCDL;
    * between the last MAC and the next ACT_AB (the row was closing anyway): overhead = nRFC.

    Averaged over phases (the due times k * nREFI fall at effectively uniform phases, since nREFI
    is not a multiple of P), this is the expected overhead per refresh; the slowdown is then
    ovh / (nREFI - ovh) (refreshes also fall due during the time refresh itself adds).

    Tolerances: the per-refresh overhead is bounded exactly by [nRFC, nRTP + nRP + nRFC +
    nRCDRDMAC - nCCDL], so the mean must lie inside; the ~150 refreshes sample only ~150
    phases, quasi-periodically, with a per-refresh spread (std) of ~38 cycles: the mean must be
    within 5% of the phase average (about 4.5 standard errors), and the slowdown within 8% of
    its expectation (the same 5% plus the rounding of the refresh count at the stream's end).
    It must also clearly exceed the naive nRFC / nREFI: refresh costs more than nRFC here.
    """
    cfg_on = load_config("aim-gddr6", refresh=True)
    cfg_off = load_config("aim-gddr6", refresh=False)
    c = cfg_on.timing.cycles
    s = make_stream([("MAC_AB", -1, r, 64) for r in range(2000)])
    off = _run(cfg_off, s)
    on = _run(cfg_on, s)
    t_off, t_on, n_ref = off.done_cyc, on.done_cyc, on.refreshes
    assert off.refreshes == 0 and n_ref > 100

    a = c["nRCDRDMAC"]
    m = 63 * c["nCCDL"]
    period = a + m + c["nRTP"] + c["nRP"]
    tmod = c["nMODCH"] if cfg_on.pim.mode_switch == "bank-mode" else 0  # MACs in mode 0 (AiM)
    assert t_off == tmod + 1999 * period + a + m + c["nCCDL"]  # closed form, refresh off

    def overhead(phi: int) -> int:
        if phi <= a:
            return max(phi, c["nRAS"]) + c["nRP"] + c["nRFC"]
        if phi <= a + m:
            return c["nRTP"] + c["nRP"] + c["nRFC"] + a - c["nCCDL"]
        return c["nRFC"]

    ovh_lo = c["nRFC"]
    ovh_hi = c["nRTP"] + c["nRP"] + c["nRFC"] + a - c["nCCDL"]
    ovh_exp = sum(overhead(phi) for phi in range(1, period + 1)) / period
    ovh = (t_on - t_off) / n_ref
    assert ovh_lo <= ovh <= ovh_hi
    assert abs(ovh - ovh_exp) <= 0.05 * ovh_exp, (ovh, ovh_exp)

    slowdown = t_on / t_off - 1
    expected = ovh_exp / (c["nREFI"] - ovh_exp)
    assert abs(slowdown - expected) <= 0.08 * expected, (slowdown, expected)
    assert slowdown > 1.2 * c["nRFC"] / c["nREFI"]
    # refresh count: one per nREFI of the (longer) run
    assert t_on // c["nREFI"] - 1 <= n_ref <= t_on // c["nREFI"]
    assert check_log(on.log, cfg_on) == []


def expand_pairs(parts) -> list:
    """Stream items of a ``pair_runs()`` example (pair runs written out)."""
    its = []
    for p in parts:
        if isinstance(p, tuple) and len(p) == 6:
            a, cols, b, n, same, row0 = p
            for j in range(n):
                its += [(a, -1, row0 if same else row0 + j, cols), (b, -1, 0, 1)]
        else:
            its.append(p)
    return its


def assert_same_schedule(a: ChannelTimer, b: ChannelTimer) -> None:
    """Every observable of two channels equal: done cycle, counts, row hits and refreshes,
    open-bank time, controller state (ready times that can still bind)."""
    end = max(a.done_cyc, b.done_cyc)
    assert a.done_cyc == b.done_cyc
    assert a.command_counts() == b.command_counts()
    assert np.array_equal(a.stats, b.stats)
    assert a.open_cyc(end) == b.open_cyc(end)
    assert np.array_equal(a.scal, b.scal)
    assert np.array_equal(a.open_row, b.open_row)
    assert np.array_equal(np.maximum(a.ready, a.last_issue_cyc),
                          np.maximum(b.ready, b.last_issue_cyc))


def pair_runs():
    """Streams built from runs of (all-bank MAC row, channel command) pairs - new row every
    pair or the same row - mixed with other items: the pattern the pair fast path steps."""
    pair = st.tuples(st.sampled_from(["MAC_AB", "EWMUL"]), st.integers(1, 64),
                     st.sampled_from(["RD_MAC", "WR_GB", "AF"]), st.integers(3, 40),
                     st.booleans(), st.integers(0, 50))
    return st.lists(st.one_of(pair, items(True)), min_size=1, max_size=8)


@pytest.mark.parametrize("which", ["aim-on", "aim-off", "pim-gpt-on-short-refi", "hbm-pim-on"])
def test_pair_fast_forward_equals_command_by_command(which):
    """Without a log the kernel steps periodic item pairs in closed form; every observable
    (done cycle, counts, row hits, refreshes, open-bank time, controller state) must equal the
    one-by-one schedule."""
    cfg = CONFIGS[which]()

    @settings(max_examples=60, **SETTINGS)
    @given(pair_runs())
    def prop(parts):
        its = expand_pairs(parts)
        s = make_stream(its)
        fast = ChannelTimer(cfg, fast=True)
        fast.run_all(s)
        slow = ChannelTimer(cfg, fast=False)
        slow.run_all(s)
        assert_same_schedule(fast, slow)

    prop()


# a layer-like run of units: MAC rows, then single-column writes over the banks
LAYER_TAIL = ([it for j in range(12) for it in (("MAC_AB", -1, 9 + j, 8), ("RD_MAC", -1, 0, 1))]
              + [("WR", b % 16, 3 + b // 16, 1) for b in range(48)])


@pytest.mark.parametrize("which", ["aim-on", "pim-gpt-on-short-refi", "aim-off",
                                   "hbm-pim-on"])
def test_memo_replay_equals_command_by_command(which):
    """With a memo, units of items seen before from an equivalent state are replayed instead of
    simulated: every observable must still equal the one-by-one schedule. Random streams
    (followed by a layer-like tail, repeated, so refresh lands at different points each time)
    for exactness; a fixed repeated layer for exactness with replays that surely happen."""
    cfg = CONFIGS[which]()

    def compare(s) -> int:
        memo = ChannelTimer(cfg, fast=True, memo=True)
        memo.run_all(s)
        slow = ChannelTimer(cfg, fast=False)
        slow.run_all(s)
        assert_same_schedule(memo, slow)
        return int(memo.memo[M_HITS])

    @settings(max_examples=40, **SETTINGS)
    @given(pair_runs(), st.integers(3, 5))
    def prop(parts, repeat):
        compare(make_stream((expand_pairs(parts) + LAYER_TAIL) * repeat))

    prop()
    assert compare(make_stream(LAYER_TAIL * 6)) > 0


@pytest.mark.parametrize("which", ["aim-on", "gddr6-on", "pim-gpt-on-short-refi"])
@pytest.mark.parametrize("gap_refi", [0.5, 3, 1000.25])
def test_idle_gap_refreshes_in_closed_form_equal_one_by_one(which, gap_refi):
    """Over an idle gap (``not_before`` far ahead) the fast path records the refreshes due in it
    at once; the command-by-command path (a log: one REF at a time) gives the same state."""
    cfg = CONFIGS[which]()
    nrefi = cfg.timing.cycles["nREFI"]
    pim = cfg.pim.enabled
    part = [("MAC_AB", -1, 1, 8), ("RD_MAC", -1, 0, 1)] if pim else [("RD", 3, 1, 4), ("WR", 5, 2, 2)]
    s = make_stream(part + ["SYNC"] + part + ["SYNC"])
    fast = ChannelTimer(cfg, log=False, fast=True)
    slow = ChannelTimer(cfg, log=True, fast=True)
    for t in (fast, slow):
        pos = t.run(s, 0, 0)
        t.run(s, pos, t.done_cyc + int(gap_refi * nrefi))
    assert slow.refreshes >= int(gap_refi)
    vs = check_log(slow.log, cfg)
    assert vs == [], check_report(vs)
    slow.scal[S_LOG_N] = 0  # the log's length, the one state the two may differ in
    assert_same_schedule(fast, slow)
