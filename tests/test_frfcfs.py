"""The FR-FCFS controller for conventional RD/WR requests (``[controller] scheduler``).

Timing tests in the style of ``test_timing_rules.py``: a queued stream is run with a log, the
command the scheduler moved earlier (an ACT overlapping another bank's access, a row hit served
before an older miss) issues exactly at the cycle its binding rule allows (computed here from the
config's values), the checker accepts the whole log, and flags exactly that rule once the command
is moved one cycle earlier. Then the policy (write drain, queue entries, barriers) and properties
(legal on random streams, equal to in-order with 1-entry queues, fast = command by command).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimsim.check import check_log, check_report
from pimsim.config import ConfigError, config_from_dict, load_config
from pimsim.spec.commands import cmd_id
from pimsim.timing import ChannelTimer, make_stream
from pimsim.timing.memo import M_HITS
from pimsim.timing.state import S_LOG_N, S_OPEN_CYC

AIM = load_config("aim-gddr6", refresh=False)
c = AIM.timing.cycles
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACT, PRE, RD, WR = (cmd_id(n) for n in ("ACT", "PRE", "RD", "WR"))


def ctrl(cfg, **kw):
    return cfg.replace(controller=dataclasses.replace(cfg.controller, **kw))


def run(cfg, items, *, fast=False, log=True, memo=False):
    t = ChannelTimer(cfg, log=log, fast=fast, memo=memo)
    t.run_all(make_stream(items))
    return t


def nth(log, cmd, bank=None, n=0):
    """Index in ``log`` of the ``n``-th issue of ``cmd`` (to ``bank``)."""
    idx = [i for i, r in enumerate(log) if r[1] == cmd and (bank is None or r[2] == bank)]
    return idx[n]


def assert_moved_command(cfg, log, i, expected, rule):
    """Log row ``i`` issues at ``expected``; the log is legal; one cycle early only ``rule``
    is violated."""
    assert log[i, 0] == expected, f"issued at {log[i, 0]}, expected {expected} ({rule})"
    assert check_log(log, cfg) == []
    early = log.copy()
    early[i, 0] -= 1
    found = {v.rule for v in check_log(early, cfg)}
    assert found == {rule}, f"one cycle early: {found}, expected {rule}"


def test_frfcfs_is_the_default_of_the_shipped_dram_configs():
    for name in ("aim-gddr6", "pim-gpt", "gddr6"):
        assert load_config(name).controller.scheduler == "frfcfs"


def test_act_to_another_bank_group_overlaps_after_nrrds():
    # in order, bank 4's ACT would wait for bank 0's RD (nRCDRD); queued, it waits only nRRDS
    t = run(AIM, [("RD", 0, 3), ("RD", 4, 3)])
    a0, a1 = nth(t.log, ACT, 0), nth(t.log, ACT, 4)
    assert t.log[a1, 0] < t.log[nth(t.log, RD, 0), 0]
    assert_moved_command(AIM, t.log, a1, t.log[a0, 0] + c["nRRDS"], "act_to_act_nRRDS")


def test_act_to_the_same_bank_group_waits_nrrdl():
    assert c["nRRDL"] > c["nRRDS"]
    t = run(AIM, [("WR", 0, 3), ("WR", 1, 3)])
    a0, a1 = nth(t.log, ACT, 0), nth(t.log, ACT, 1)
    assert_moved_command(AIM, t.log, a1, t.log[a0, 0] + c["nRRDL"], "act_to_act_same_bg_nRRDL")


def test_fifth_act_waits_nfaw():
    assert 4 * c["nRRDS"] < c["nFAW"], "nFAW must bind over nRRDS here"
    banks = [0, 4, 8, 12, 1]  # four bank groups, then bank group 0 again
    t = run(AIM, [("RD", b, 3) for b in banks])
    acts = [nth(t.log, ACT, b) for b in banks]
    assert_moved_command(AIM, t.log, acts[4], t.log[acts[0], 0] + c["nFAW"],
                         "four_activate_window_nFAW")


def test_row_hit_is_served_before_an_older_miss_to_its_bank():
    # RD r3, RD r5, RD r3 to bank 0: the third request hits the open row and goes before the
    # second's PRE (not legal until nRAS after the ACT); it waits nCCDL after the first RD
    # (AiM's nBL = nCCDS = nCCDL = 2 tie: nCCDL is moved apart, as in test_aim_rules.py)
    cfg = AIM.replace(timing=dataclasses.replace(AIM.timing, cycles={**c, "nCCDL": 4}))
    t = run(cfg, [("RD", 0, 3), ("RD", 0, 5), ("RD", 0, 3)])
    cmds = [(int(r[1]), int(r[3])) for r in t.log]
    assert cmds == [(ACT, 3), (RD, 3), (RD, 3), (PRE, 3), (ACT, 5), (RD, 5)]
    assert t.row_hits == 1 and t.row_misses == 2  # the third request hit
    assert_moved_command(cfg, t.log, 2, t.log[1, 0] + 4, "rd_to_rd_same_bg_nCCDL")


def test_in_order_controller_keeps_stream_order():
    t = run(ctrl(AIM, scheduler="in-order"), [("RD", 0, 3), ("RD", 0, 5), ("RD", 0, 3)])
    cmds = [(int(r[1]), int(r[3])) for r in t.log]
    assert cmds == [(ACT, 3), (RD, 3), (PRE, 3), (ACT, 5), (RD, 5), (PRE, 5), (ACT, 3), (RD, 3)]


def _act_banks(log):
    return [int(r[2]) for r in log if r[1] == ACT]


def test_reads_go_first_while_fewer_writes_than_the_low_watermark_wait():
    # 8 write entries: low watermark 0.2 x 8 = 1.6; one queued write is below it, so the
    # controller leaves write-drain mode (its state with empty queues) and serves the reads
    # first, although the write is older
    cfg = ctrl(AIM, read_queue_entries=8, write_queue_entries=8)
    t = run(cfg, [("WR", 0, 3), ("RD", 4, 3), ("RD", 8, 3)])
    assert _act_banks(t.log) == [4, 8, 0]
    assert [int(r[1]) for r in t.log if r[1] in (RD, WR)] == [RD, RD, WR]


def test_writes_drain_first_at_the_low_watermark():
    # two queued writes (not below 1.6): drain mode stays, the younger writes' ACT goes first;
    # once that write's row is open it no longer counts (1 < 1.6) and the read goes next
    cfg = ctrl(AIM, read_queue_entries=8, write_queue_entries=8)
    t = run(cfg, [("RD", 4, 3), ("WR", 0, 3), ("WR", 1, 3)])
    assert _act_banks(t.log) == [0, 4, 1]
    assert check_log(t.log, cfg) == []


def test_drain_thresholds_follow_ramulators_comparisons():
    # drain when the write queue holds more than 0.8 x entries, stop below 0.2 x entries
    assert ctrl(AIM, write_queue_entries=32).controller.drain_thresholds() == (25, 7)
    assert ctrl(AIM, write_queue_entries=8).controller.drain_thresholds() == (6, 2)
    assert ctrl(AIM, write_queue_entries=10).controller.drain_thresholds() == (8, 2)


def test_a_full_queue_holds_the_next_request_until_an_entry_frees():
    # 2 read entries: the third request enters when the first's RD issues, so its ACT cannot
    # issue before that RD (queued it would go nRRDS after the second ACT)
    cfg = ctrl(AIM, read_queue_entries=2)
    t = run(cfg, [("RD", 0, 3), ("RD", 4, 3), ("RD", 8, 3)])
    first_rd = t.log[nth(t.log, RD), 0]
    assert t.log[nth(t.log, ACT, 8), 0] == first_rd + 1  # the command bus after the RD
    assert check_log(t.log, cfg) == []
    wide = run(AIM, [("RD", 0, 3), ("RD", 4, 3), ("RD", 8, 3)])
    assert wide.log[nth(wide.log, ACT, 8), 0] < first_rd


def test_pim_command_is_a_barrier_for_queued_requests():
    cfg = ctrl(AIM, read_queue_entries=8)
    items = [("RD", b, 3) for b in (0, 4, 8)] + [("PREA", -1, 0), ("RD", 12, 3)]
    t = run(cfg, items)
    prea = nth(t.log, cmd_id("PREA"))
    assert all(t.log[i, 1] != RD for i in range(prea + 1, len(t.log) - 1))
    assert sum(1 for r in t.log[:prea] if r[1] == RD) == 3
    assert check_log(t.log, cfg) == []


def test_refresh_between_queued_requests_is_legal():
    cfg = ctrl(load_config("aim-gddr6", refresh=True))
    items = [("WR" if i % 3 else "RD", i % 16, i // 16) for i in range(1500)]
    t = run(cfg, items)
    assert t.refreshes > 0
    vs = check_log(t.log, cfg)
    assert vs == [], check_report(vs)


def _rw_items(kinds):
    bank = st.integers(0, 15)
    row = st.integers(0, 3)
    return st.tuples(st.sampled_from(kinds), bank, row, st.integers(1, 4))


def _with_barriers():
    return st.one_of(_rw_items(["RD", "WR"]), st.just("SYNC"),
                     st.tuples(st.just("MAC_AB"), st.just(-1), st.integers(0, 3),
                               st.integers(1, 8)))


CONFIGS = {
    "aim": lambda: AIM,
    "aim-refresh": lambda: load_config("aim-gddr6", refresh=True),
    "gddr6-refresh": lambda: load_config("gddr6", refresh=True),
    "aim-small-queues": lambda: ctrl(AIM, read_queue_entries=3, write_queue_entries=2),
}


@pytest.mark.parametrize("which", list(CONFIGS))
def test_frfcfs_never_issues_an_illegal_command_and_fast_equals_slow(which):
    cfg = CONFIGS[which]()
    pim = cfg.pim.enabled

    @settings(max_examples=60, **SETTINGS)
    @given(st.lists(_with_barriers() if pim else _rw_items(["RD", "WR"]), min_size=1,
                    max_size=80))
    def prop(its):
        slow = run(cfg, its)
        vs = check_log(slow.log, cfg)
        assert vs == [], check_report(vs)
        again = run(cfg, its)
        assert np.array_equal(slow.log, again.log)  # deterministic
        fast = run(cfg, its, fast=True, log=False, memo=True)
        assert fast.done_cyc == slow.done_cyc
        assert fast.command_counts() == slow.command_counts()
        assert (fast.row_hits, fast.row_misses, fast.refreshes) == (
            slow.row_hits, slow.row_misses, slow.refreshes)

    prop()


@pytest.mark.parametrize("kind", ["RD", "WR"])
@pytest.mark.parametrize("refresh", [False, True])
def test_one_entry_queues_equal_the_in_order_controller(kind, refresh):
    # one request queued at a time: nothing to reorder. (Mixed reads and writes use one queue
    # each, so even 1-entry queues can serve a younger read before an older write.)
    cfg = ctrl(load_config("aim-gddr6", refresh=refresh), read_queue_entries=1,
               write_queue_entries=1)
    ino = ctrl(cfg, scheduler="in-order")

    @settings(max_examples=60, **SETTINGS)
    @given(st.lists(_rw_items([kind]), min_size=1, max_size=120))
    def prop(its):
        a, b = run(cfg, its), run(ino, its)
        assert np.array_equal(a.log, b.log)
        assert a.done_cyc == b.done_cyc
        assert (a.row_hits, a.row_misses) == (b.row_hits, b.row_misses)

    prop()


def test_memo_replays_queued_runs_exactly():
    # the same conventional run, repeated after a barrier, from the same state: a memo hit
    unit = [("WR", b, r) for r in range(3) for b in range(16)] + [("MAC_AB", -1, 9, 4)]
    its = unit * 6
    fast = run(AIM, its, fast=True, log=False, memo=True)
    slow = run(AIM, its)
    assert fast.memo[M_HITS] > 0
    assert fast.done_cyc == slow.done_cyc and fast.command_counts() == slow.command_counts()


# ---------------------------------------------------------------- the config section

BASE = load_config("aim-gddr6")


@pytest.mark.parametrize("key,value,match", [
    ("scheduler", "fifo", "scheduler = 'fifo'"),
    ("read_queue_entries", 0, "read_queue_entries = 0 is out of range"),
    ("write_queue_entries", 5000, "write_queue_entries = 5000 is out of range"),
    ("write_high_watermark", 1.5, "write_high_watermark = 1.5 must be a fraction"),
    ("write_low_watermark", float("nan"), "write_low_watermark = nan must be a fraction"),
    ("queue", 3, "unknown key"),
])
def test_bad_controller_values_are_config_errors(key, value, match):
    import tomllib

    from pimsim.config import HWCONFIG_DIR
    data = tomllib.loads((HWCONFIG_DIR / "aim-gddr6.toml").read_text())
    data["controller"][key] = value
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data, "x.toml")


def test_low_watermark_above_high_is_refused():
    import tomllib

    from pimsim.config import HWCONFIG_DIR
    data = tomllib.loads((HWCONFIG_DIR / "aim-gddr6.toml").read_text())
    data["controller"].update(write_high_watermark=0.3, write_low_watermark=0.5)
    with pytest.raises(ConfigError, match="write_low_watermark = 0.5 is above"):
        config_from_dict(data, "x.toml")


def test_scheduler_changes_results_and_the_timing_table_key():
    from pimsim.timing.tables import G_SCHED, build_tables
    ino = ctrl(BASE, scheduler="in-order")
    assert build_tables(BASE).geom[G_SCHED] != build_tables(ino).geom[G_SCHED]
    its = [("WR", b, 3) for b in range(16)]
    assert run(BASE, its).done_cyc < run(ino, its).done_cyc


def test_sweep_points_keep_the_controller_and_host_sections():
    # a sweep rebuilds each point's config from its dict: the scheduler must survive and be
    # part of the point's key (it changes results)
    from workloads.sweeps import canonical_hw, config_to_dict
    d = config_to_dict(BASE)
    back = config_from_dict(d, "point")
    assert back.controller == BASE.controller and back.host == BASE.host
    d2 = config_to_dict(ctrl(BASE, scheduler="in-order"))
    assert canonical_hw(d) != canonical_hw(d2)


def test_refreshes_over_a_long_idle_gap_in_closed_form_equal_one_by_one():
    """Queued RD/WR requests that start long after the last command (a collective of a slow
    interconnect): the due refreshes are recorded in closed form (fast mode) and equal the
    command-by-command controller's (slow mode): cycles, counts, refreshes, statistics."""
    cfg = load_config("aim-gddr6", refresh=True)
    n_refi = cfg.timing.cycles["nREFI"]
    stream = make_stream([("RD", 3, 7, 4), ("WR", 5, 2, 3), ("MAC_AB", -1, 9, 16), ("RD", 1, 7, 2)])
    out = []
    for fast in (True, False):
        t = ChannelTimer(cfg, fast=fast)
        pos = t.run(stream, 0, 0, end=2)
        t.run(stream, pos, 500 * n_refi + 17)
        out.append((t.done_cyc, t.command_counts(), t.refreshes, t.stats.tolist(),
                    t.scal.tolist()))
    assert out[0] == out[1]
    assert out[0][2] >= 500


# ---------------------------------------------------------------- periodic runs in closed form

def test_queued_period_finds_the_item_period_and_row_step():
    from pimsim.timing.frfcfs import queued_period

    s = make_stream([("WR", 5, 9, 64)] + [("WR", b, r) for r in range(25, 30) for b in range(16)])
    assert queued_period(s, 1, len(s)) == (16, 1)
    assert queued_period(s, 0, len(s)) == (0, 0)  # the bulk item does not repeat
    assert queued_period(s, 1, 20) == (0, 0)  # two periods must fit


@pytest.mark.parametrize("refresh", [False, True])
@pytest.mark.parametrize("pattern", ["4banks", "16banks", "reads", "lead"])
def test_periodic_queued_runs_in_closed_form_equal_request_by_request(refresh, pattern):
    # bank-walking runs whose schedule turns periodic (the fast path applies the repeating
    # periods at once, up to the next refresh): equal to the command-by-command controller
    cfg = load_config("aim-gddr6", refresh=refresh)
    items = {"4banks": [("WR", b, r) for r in range(50) for b in range(4)],
             "16banks": [("WR", b, r) for r in range(30) for b in range(16)],
             "reads": [("RD", b, r, 2) for r in range(60) for b in range(4)],
             "lead": [("WR", 5, 9, 40), ("WR", 5, 17, 20)]
             + [("WR", b, r) for r in range(25, 60) for b in range(4)]}[pattern]
    slow = run(cfg, items)
    fast = run(cfg, items, fast=True, log=False)
    assert fast.done_cyc == slow.done_cyc
    assert fast.command_counts() == slow.command_counts()
    assert (fast.row_hits, fast.row_misses, fast.refreshes) == (
        slow.row_hits, slow.row_misses, slow.refreshes)
    assert np.array_equal(fast.open_row, slow.open_row)
    assert fast.scal[S_OPEN_CYC] == slow.scal[S_OPEN_CYC]  # open-bank time (energy)


def _kv_write_like(n_cohorts: int, per_cohort: int) -> np.ndarray:
    """A batched decode step's KV writes on one channel: cohorts of sequences (one position
    each), every sequence a K write of 8 requests then one V element per bank of its own row,
    the cohorts' bank order alternating; the data column (col0) differs between cohorts."""
    items, col0 = [], []
    row = 3
    for k in range(n_cohorts):
        banks = range(16) if k % 2 == 0 else range(15, -1, -1)
        for _ in range(per_cohort):
            items.append(("WR", 10, row + 90, 8))
            col0.append(0)
            items += [("WR", b, row) for b in banks]
            col0 += [k + 18] * 16
            row += 96
    s = make_stream(items)
    s[:, 4] = col0
    return s


def _prefill_kv_like(n_breaks: int, tokens: int) -> np.ndarray:
    """A prefill step's KV writes on one channel: a few irregular items, then stretches of V
    writes of consecutive tokens into one row of every bank (row hits), a K write between them."""
    items = [("WR", 3, 7, 2), ("WR", 9, 1, 8), ("WR", 2, 5)]
    for k in range(n_breaks):
        items += [("WR", b, 3 + k // 2) for _ in range(tokens) for b in range(16)]
        items.append(("WR", 0, 1, 8))
    return make_stream(items)


@pytest.mark.parametrize("refresh", [False, True])
@pytest.mark.parametrize("shape", ["decode", "prefill"])
def test_every_periodic_stretch_of_a_queued_run_in_closed_form_equals_request_by_request(
        refresh, shape):
    # several periodic stretches (other items between them) and several refreshes in one run:
    # the closed form is looked for again after each stretch and each refresh, the controller
    # compared with its states one to several periods back; the data column names no timing
    # and does not break a period
    cfg = load_config("aim-gddr6", refresh=refresh)
    s = _kv_write_like(6, 14) if shape == "decode" else _prefill_kv_like(8, 48)
    out = []
    for fast in (False, True):
        t = ChannelTimer(cfg, log=not fast, fast=fast, memo=False)
        t.run_all(s)
        out.append((t.done_cyc, t.command_counts(), t.row_hits, t.row_misses, t.refreshes,
                    t.open_row.tolist(), np.delete(t.scal, S_LOG_N).tolist(),
                    t.stats.tolist()))
    assert out[0] == out[1]
    if refresh:
        assert out[0][4] >= 3  # the run crosses several refreshes


# ---------------------------------------------------------------- the fast pick and the template

PIM_GPT_STARTS = range(40, 2400, 97)  # cycles before the first refresh is due: every stage


def _decode_kv_write(n_items: int = 208, row0: int = 25) -> np.ndarray:
    """A decode step's KV-cache write on one channel as gpt2-xl's on pim-gpt: one request an
    item, banks 0..15 in turn, the row one on every 16 items (every request a row miss)."""
    return make_stream([("WR", i % 16, row0 + i // 16) for i in range(n_items)])


def _state(t: ChannelTimer) -> tuple:
    """Every observable of a channel but the log: cycles, counts, statistics, open rows,
    controller scalars (less the log length), ready times that can still bind, windows."""
    return (t.done_cyc, t.command_counts(), t.stats.tolist(), t.open_row.tolist(),
            np.delete(t.scal, S_LOG_N).tolist(),
            np.maximum(t.ready, t.last_issue_cyc).tolist(), t.win_cnt.tolist())


def _three_ways(cfg, stream, not_before: int, prefix=None):
    """The stream run request by request (slow, the plain pick, logged), by the fast pick with
    a log (no closed form) and fast without a log (closed form), from the same state."""
    out = []
    for fast, log in ((False, True), (True, True), (True, False)):
        t = ChannelTimer(cfg, fast=fast, log=log)
        if prefix is not None:
            t.run_all(prefix)
        t.run(stream, 0, not_before)
        out.append(t)
    return out


@pytest.mark.parametrize("refresh", [True, False])
def test_decode_kv_write_runs_equal_request_by_request(refresh):
    # the fast pick issues the same commands at the same cycles as the plain one; the closed
    # form (with the template of the steady period after a refresh) ends in the same state,
    # wherever the refresh falls in the run
    cfg = load_config("pim-gpt", refresh=refresh)
    n_refi = cfg.timing.cycles["nREFI"]
    s = _decode_kv_write()
    prefix = make_stream([("MAC_AB", -1, 3, 8), ("RD_MAC", -1, 0, 1)] * 3)
    inside = 0
    for d in PIM_GPT_STARTS:
        slow, fast_log, fast = _three_ways(cfg, s, n_refi - d, prefix if d % 2 else None)
        assert np.array_equal(fast_log.log, slow.log)
        assert _state(fast) == _state(slow) == _state(fast_log)
        refs = np.flatnonzero(slow.log[:, 1] == cmd_id("REFab"))
        inside += int(len(refs) > 0 and 0 < refs[0] < len(slow.log) - 100)
        assert slow.refreshes <= (1 if refresh else 0)
    if refresh:
        assert inside >= len(PIM_GPT_STARTS) // 2  # most runs have the refresh mid-run


def test_long_kv_write_run_across_several_refreshes_equals_request_by_request():
    # several refreshes, each followed by the steady period again (the template applies)
    cfg = load_config("pim-gpt", refresh=True)
    slow, fast_log, fast = _three_ways(cfg, _decode_kv_write(1600), 17)
    assert slow.refreshes >= 3
    assert np.array_equal(fast_log.log, slow.log)
    assert _state(fast) == _state(slow)


FAST_PICK_CONFIGS = {
    "pim-gpt-refresh": lambda: load_config("pim-gpt", refresh=True),
    "aim-refresh": lambda: load_config("aim-gddr6", refresh=True),  # mode switches (TMOD)
    "gddr6-refresh": lambda: load_config("gddr6", refresh=True),
    "aim-small-queues": lambda: ctrl(AIM, read_queue_entries=3, write_queue_entries=2),
}


@pytest.mark.parametrize("which", list(FAST_PICK_CONFIGS))
def test_fast_pick_equals_the_plain_pick_on_random_mixed_streams(which):
    cfg = FAST_PICK_CONFIGS[which]()
    n_refi = cfg.timing.cycles["nREFI"]

    @settings(max_examples=40, **SETTINGS)
    @given(st.lists(_rw_items(["RD", "WR"]), min_size=1, max_size=120),
           st.integers(0, 2 * n_refi))
    def prop(its, not_before):
        slow, fast_log, fast = _three_ways(cfg, make_stream(its), not_before)
        assert np.array_equal(fast_log.log, slow.log)
        assert _state(fast) == _state(slow) == _state(fast_log)

    prop()


def test_fast_pick_with_bank_group_and_bank_windows_equals_the_plain_pick():
    # no shipped rule spaces a command by a window of its bank group or bank; such windows (two
    # ACTs per bank group in 60 cycles, two per bank in 300 [assumed, for the test]) take the
    # fast pick's other branch for a bank's part of the earliest cycle
    from pimsim.timing.tables import build_tables

    cfg = load_config("pim-gpt", refresh=True)
    n_refi = cfg.timing.cycles["nREFI"]

    def tables(fast, windows=True):
        t = build_tables(cfg, fast=fast)
        if not windows:
            return t
        win = np.vstack([t.win_tab, [[ACT, ACT, 1, 60, 2], [ACT, ACT, 2, 300, 2]]])
        return dataclasses.replace(t, win_tab=win.astype(np.int64),
                                   max_window=max(t.max_window, 2))

    def run3(stream, not_before):
        out = []
        for fast, log in ((False, True), (True, True), (True, False)):
            t = ChannelTimer(cfg, fast=fast, log=log, tables=tables(fast))
            t.run(stream, 0, not_before)
            out.append(t)
        return out

    # the windows bind: bank group 0's banks, three rows each
    walk = make_stream([("WR", b, r) for r in range(3) for b in range(4)])
    plain = ChannelTimer(cfg, tables=tables(True, windows=False))
    plain.run(walk, 0, 0)
    slow, fast_log, fast = run3(walk, 0)
    assert slow.done_cyc > plain.done_cyc
    assert np.array_equal(fast_log.log, slow.log) and _state(fast) == _state(slow)

    @settings(max_examples=30, **SETTINGS)
    @given(st.lists(_rw_items(["RD", "WR"]), min_size=1, max_size=120),
           st.integers(0, 2 * n_refi))
    def prop(its, not_before):
        slow, fast_log, fast = run3(make_stream(its), not_before)
        assert np.array_equal(fast_log.log, slow.log)
        assert _state(fast) == _state(slow) == _state(fast_log)

    prop()
