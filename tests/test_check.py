"""The independent checker (``pimsim.check``): API, state and refresh rules, multi-channel logs."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_rules_variant

import pimsim.check as check_mod
from pimsim.check import (
    Violation,
    check_command_log,
    check_log,
    check_report,
    rule_latencies,
)
from pimsim.config import ConfigError, load_config
from pimsim.spec.commands import COMMANDS, SCOPE_BANK, cmd_id
from pimsim.spec.rules import PIM_RULES
from pimsim.timing import ChannelTimer, make_stream
from pimsim.timing.tables import active_rules

# checker semantics on a generic PIM device (single-bank / all-bank mode switch, shared rows);
# the GDDR6-AiM rows and options are checked in test_aim_rules.py
CFG = shared_rules_variant(load_config("aim-gddr6", refresh=False))
CFG_REF = shared_rules_variant(load_config("aim-gddr6", refresh=True))
c = CFG.timing.cycles
N_REFI = c["nREFI"]


def _gddr6():
    try:
        return load_config("gddr6", refresh=False)
    except ConfigError as e:
        if "not found" in str(e):
            pytest.skip("hwconfigs/gddr6.toml not written yet")
        raise


def L(*rows):
    """A one-channel log from (name, bank, row, cycle) tuples."""
    out = []
    for name, bank, row, cyc in rows:
        is_bank = COMMANDS[cmd_id(name)].scope == SCOPE_BANK
        out.append([cyc, cmd_id(name), bank if is_bank else -1, row])
    return np.array(out, np.int64).reshape(-1, 4)


def rules_of(vs):
    return {v.rule for v in vs}


# ---------------------------------------------------------------- independence


def test_checker_does_not_import_the_timing_engine():
    src = Path(check_mod.__file__).read_text()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("pimsim.timing")
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("pimsim.timing") for a in node.names)
    code = ("import sys, pimsim.check; "
            "bad = [m for m in sys.modules if m.startswith('pimsim.timing')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["aim-gddr6", "gddr6"])
def test_rule_latencies_agree_with_the_engine_tables(name):
    cfg = CFG if name == "aim-gddr6" else _gddr6()
    mine = rule_latencies(cfg)
    engine = {r.name: lat for r, lat, _pre, _fol in active_rules(cfg)}
    assert mine == engine


def test_plain_gddr6_has_no_pim_rules_and_rejects_pim_commands():
    g = _gddr6()
    assert not set(rule_latencies(g)) & {r.name for r in PIM_RULES}
    vs = check_log(L(("TMOD", -1, -1, 0), ("WR_GB", -1, 0, 100)), g)
    assert rules_of(vs) == {"command_not_available"}
    assert "does not exist" in str(vs[0])


# ---------------------------------------------------------------- timing rules


def test_violation_fields_and_text():
    log = L(("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, 100), ("MAC_AB", -1, 3, 155))
    vs = check_log(log, CFG, channel=7)
    assert len(vs) == 1
    v = vs[0]
    assert isinstance(v, Violation)
    assert v == Violation("act_to_mac_nRCDRDMAC", 7, ("ACT_AB", 100, -1), ("MAC_AB", 155, -1),
                          c["nRCDRDMAC"], 55, "timing")
    text = str(v)
    for part in ("ch7", "act_to_mac_nRCDRDMAC", "MAC_AB@155", "ACT_AB@100", "all banks",
                 f">= {c['nRCDRDMAC']}", "short by 1"):
        assert part in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.rule = "x"  # frozen


def test_all_bank_command_waits_for_every_bank():
    # 16 single-bank ACTs open every bank; MAC_AB must wait nRCDRDMAC after the *last* of them
    acts, t = [], 100
    for b in range(16):
        acts.append(("ACT", b, 3, t))
        t += c["nFAW"]  # far enough apart for nRRD and the four-activate window
    last = acts[-1][3]
    timer = ChannelTimer(CFG, log=True)
    timer.issue_at("TMOD", -1, -1, 0)
    for a in acts:
        timer.issue_at(*a)
    assert timer.earliest("MAC_AB") == last + c["nRCDRDMAC"]
    log = L(("TMOD", -1, -1, 0), *acts, ("MAC_AB", -1, 3, last + c["nRCDRDMAC"] - 1))
    vs = check_log(log, CFG)
    assert rules_of(vs) == {"act_to_mac_nRCDRDMAC"}
    assert vs[0].preceding == ("ACT", last, 15)
    assert check_log(L(("TMOD", -1, -1, 0), *acts, ("MAC_AB", -1, 3, last + c["nRCDRDMAC"])),
                     CFG) == []


def test_bank_command_waits_for_all_bank_command_and_not_for_other_banks():
    base = [("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, 100)]
    # MAC_SB of any bank waits for the ACT_AB (it activated that bank too)
    vs = check_log(L(*base, ("MAC_SB", 9, 3, 100 + c["nRCDRDMAC"] - 1)), CFG)
    assert rules_of(vs) == {"act_to_mac_nRCDRDMAC"}
    # a single-bank ACT elsewhere does not delay a read in another bank
    log = L(("ACT", 0, 1, 0), ("ACT", 4, 1, 10), ("RD", 0, 1, 10 + c["nRCDRD"]))
    assert check_log(log, CFG) == []
    assert rules_of(check_log(L(("ACT", 0, 1, 0), ("ACT", 4, 1, 10),
                                ("RD", 4, 1, 9 + c["nRCDRD"])), CFG)) == {"act_to_rd_nRCDRD"}


def test_channel_commands_do_not_touch_bank_rules():
    # WR_GB is channel-scope: a bank-level rule never relates it to anything
    log = L(("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, 100), ("WR_GB", -1, 0, 101),
            ("WR_GB", -1, 0, 101 + c["nBL"]))
    assert check_log(log, CFG) == []


@pytest.mark.parametrize("name", ["aim-gddr6", "gddr6"])
def test_two_commands_in_one_cycle(name):
    cfg = CFG if name == "aim-gddr6" else _gddr6()
    log = L(("ACT", 0, 1, 10), ("ACT", 8, 1, 10))
    assert rules_of(check_log(log, cfg)) == {"cmd_bus", "act_to_act_nRRDS"}


def test_log_out_of_order_is_sorted_by_cycle():
    log = L(("ACT", 0, 1, 10), ("RD", 0, 1, 10 + c["nRCDRD"]))
    assert check_log(log[::-1], CFG) == []


def test_window_counts_only_the_last_four():
    s = c["nRRDS"] + 1
    acts = [("ACT", b, 0, 100 + k * s) for k, b in enumerate((0, 4, 8, 12))]
    ok = L(*acts, ("ACT", 1, 0, 100 + c["nFAW"]))
    assert check_log(ok, CFG) == []
    bad = L(*acts, ("ACT", 1, 0, 99 + c["nFAW"]))
    vs = check_log(bad, CFG)
    assert rules_of(vs) == {"four_activate_window_nFAW"}
    assert vs[0].preceding == ("ACT", 100, 0) and vs[0].actual == c["nFAW"] - 1


def test_bank_group_window_rule_and_expressions(monkeypatch):
    """The window code path for bank/bank-group levels (no shipped rule uses it yet), and the
    checker's own latency evaluator (products, unary minus), on an extra synthetic rule."""
    from pimsim.spec.rules import Rule

    extra = Rule("test_bg_window", "bankgroup", ("ACT", "ACT_AB"), ("ACT", "ACT_AB"),
                 "2 * nRC + -1 * nRRDS + 33", window=2)
    shipped = check_mod.rules_for
    monkeypatch.setattr(check_mod, "rules_for", lambda cfg: shipped(cfg) + [extra])
    monkeypatch.setattr(check_mod, "_RULE_CACHE", {})
    lat = 2 * c["nRC"] - c["nRRDS"] + 33
    assert rule_latencies(CFG)["test_bg_window"] == lat
    # bank group 0: ACTs to banks 0 and 1; a third ACT in the group waits lat after the first
    base = [("ACT", 0, 0, 100), ("ACT", 1, 0, 100 + c["nFAW"])]
    assert check_log(L(*base, ("ACT", 2, 0, 100 + lat)), CFG) == []
    vs = check_log(L(*base, ("ACT", 2, 0, 99 + lat)), CFG)
    assert rules_of(vs) == {"test_bg_window"}
    assert vs[0].preceding == ("ACT", 100, 0) and vs[0].actual == lat - 1
    # another bank group is not affected
    assert check_log(L(*base, ("ACT", 4, 0, 99 + lat)), CFG) == []
    # an all-bank command touches every group: after two ACT_ABs, a bank ACT in any group waits
    ab = [("TMOD", -1, -1, 0), ("ACT_AB", -1, 0, 100), ("PREA", -1, -1, 100 + c["nRAS"]),
          ("ACT_AB", -1, 1, 100 + c["nRC"]), ("PREA", -1, -1, 100 + c["nRC"] + c["nRAS"])]
    assert 100 + c["nRC"] + c["nRAS"] + c["nRP"] < 99 + lat
    assert check_log(L(*ab, ("ACT", 13, 0, 100 + lat)), CFG) == []
    vs = check_log(L(*ab, ("ACT", 13, 0, 99 + lat)), CFG)
    assert rules_of(vs) == {"test_bg_window"} and vs[0].preceding == ("ACT_AB", 100, -1)


# ---------------------------------------------------------------- state


@pytest.mark.parametrize("rows,rule", [
    # column command to a bank that was never opened
    ([("RD", 0, 1, 50)], "row_not_open"),
    # to the wrong row
    ([("ACT", 0, 2, 0), ("RD", 0, 1, 100)], "row_not_open"),
    # after the bank was precharged
    ([("ACT", 0, 1, 0), ("PRE", 0, 1, 100), ("RD", 0, 1, 200)], "row_not_open"),
    # ACT to an open bank
    ([("ACT", 0, 1, 0), ("ACT", 0, 2, 200)], "act_to_open_bank"),
])
def test_single_bank_state(rows, rule):
    vs = check_log(L(*rows), CFG)
    assert rules_of(vs) == {rule}
    assert vs[0].kind == "state"
    assert "row" in str(vs[0]) or "closed" in str(vs[0])


def test_pre_closes_and_act_reopens():
    ok = L(("ACT", 0, 1, 0), ("PRE", 0, 1, 100), ("ACT", 0, 2, 200), ("RD", 0, 2, 300))
    assert check_log(ok, CFG) == []


@pytest.mark.parametrize("rows,rule", [
    # MAC_AB with one bank open at another row (ACT_AB then PRE + ACT of bank 5)
    ([("ACT_AB", -1, 3, 100), ("PRE", 5, 3, 200), ("ACT", 5, 4, 300), ("MAC_AB", -1, 3, 400)],
     "row_not_open"),
    # WR_AB auto-precharges: a MAC_AB after it needs a new ACT_AB
    ([("ACT_AB", -1, 3, 100), ("WR_AB", -1, 3, 200), ("MAC_AB", -1, 3, 400)], "row_not_open"),
    # ACT_AB while one bank is open
    ([("ACT", 5, 4, 100), ("ACT_AB", -1, 3, 300)], "act_to_open_bank"),
    # refresh with a bank open
    ([("ACT", 5, 4, 100), ("REFab", -1, -1, 300)], "refresh_with_open_bank"),
])
def test_all_bank_state(rows, rule):
    vs = check_log(L(("TMOD", -1, -1, 0), *rows), CFG)
    assert rules_of(vs) == {rule}


def test_wrab_then_reactivate_is_legal():
    w = 100 + c["nRCDWR"]
    a2 = w + c["nCWL"] + c["nBL"] + c["nWR"] + c["nRP"]
    log = L(("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, 100), ("WR_AB", -1, 3, w),
            ("ACT_AB", -1, 3, a2), ("MAC_AB", -1, 3, a2 + c["nRCDRDMAC"]))
    assert check_log(log, CFG) == []


def test_mode():
    # MAC_AB without the TMOD into all-bank mode; RD while in all-bank mode
    assert rules_of(check_log(L(("ACT_AB", -1, 3, 100), ("MAC_AB", -1, 3, 200)), CFG)) == {"mode"}
    log = L(("TMOD", -1, -1, 0), ("ACT", 0, 3, 100), ("RD", 0, 3, 200))
    assert rules_of(check_log(log, CFG)) == {"mode"}
    log = L(("TMOD", -1, -1, 0), ("ACT", 0, 3, 100), ("TMOD", -1, -1, 150), ("RD", 0, 3, 200))
    assert check_log(log, CFG) == []


# ---------------------------------------------------------------- refresh


def test_refresh_too_early():
    vs = check_log(L(("REFab", -1, -1, N_REFI - 1)), CFG_REF)
    assert rules_of(vs) == {"refresh_too_early"}
    assert check_log(L(("REFab", -1, -1, N_REFI)), CFG_REF) == []
    # refresh off: no schedule is imposed
    assert check_log(L(("REFab", -1, -1, 5)), CFG) == []


def test_refresh_postponed_too_long():
    due = N_REFI
    assert check_log(L(("REFab", -1, -1, due + 8 * N_REFI - 1)), CFG_REF) == []
    vs = check_log(L(("REFab", -1, -1, due + 8 * N_REFI)), CFG_REF)
    assert rules_of(vs) == {"refresh_postponed_too_long"}
    assert "due cycle" in str(vs[0])


def test_refresh_missing():
    # no refresh at all: a log that reaches 9 x nREFI is 8 x nREFI past the first due time
    assert check_log(L(("ACT", 0, 1, 9 * N_REFI - 1)), CFG_REF) == []
    vs = check_log(L(("ACT", 0, 1, 9 * N_REFI)), CFG_REF)
    assert rules_of(vs) == {"refresh_missing"}
    assert "never issued" in str(vs[0])
    assert check_log(L(("ACT", 0, 1, 9 * N_REFI)), CFG) == []  # refresh off
    # one refresh, then nothing for too long
    log = L(("REFab", -1, -1, N_REFI), ("ACT", 0, 1, 10 * N_REFI))
    assert rules_of(check_log(log, CFG_REF)) == {"refresh_missing"}


def test_engine_log_with_refresh_passes():
    t = ChannelTimer(CFG_REF, log=True)
    t.run_all(make_stream([("MAC_AB", -1, r, 64) for r in range(200)]))
    assert t.refreshes >= 10
    assert check_log(t.log, CFG_REF) == []


# ---------------------------------------------------------------- corrupted engine logs


def _engine_log(cfg=CFG, rows=40):
    items = []
    for r in range(rows):
        items += [("WR_GB", -1, 0, 4), ("MAC_AB", -1, r % 5, 64), ("RD_MAC", -1, 0, 1),
                  ("RD", r % 16, r % 3, 4), ("WR_AB", -1, r % 4, 1), ("MAC_SB", (3 * r) % 16, 1, 3)]
    t = ChannelTimer(cfg, log=True)
    t.run_all(make_stream(items))
    return t.log.copy()


def test_dropping_an_act_or_changing_a_row_is_caught():
    log = _engine_log()
    assert check_log(log, CFG) == []
    acts = np.flatnonzero(log[:, 1] == cmd_id("ACT_AB"))
    assert rules_of(check_log(np.delete(log, acts[5], axis=0), CFG)) & {"row_not_open"}
    macs = np.flatnonzero(log[:, 1] == cmd_id("MAC_AB"))
    bad = log.copy()
    bad[macs[100], 3] += 1
    assert "row_not_open" in rules_of(check_log(bad, CFG))


def test_every_single_shift_earlier_is_caught():
    """The engine issues every command at its earliest legal cycle (refresh off, no idle time),
    so moving any one of them a cycle earlier must break a rule."""
    log = _engine_log(rows=8)
    for i in range(1, log.shape[0]):
        bad = log.copy()
        bad[i, 0] -= 1
        assert check_log(bad, CFG), f"shifting row {i} {log[i].tolist()} went unnoticed"


# ---------------------------------------------------------------- many channels, API


def test_check_command_log_groups_by_channel_and_accepts_names():
    one = L(("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, 100), ("MAC_AB", -1, 3, 100 + c["nRCDRDMAC"]))
    bad = L(("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, 100), ("MAC_AB", -1, 3, 99 + c["nRCDRDMAC"]))
    names = [cm.name for cm in COMMANDS]
    recs = []
    for ch, lg in ((0, one), (5, bad), (2, one)):
        for cyc, cmd, bank, row in lg.tolist():
            recs.append((cyc, ch, bank, row, names[cmd]))
    recs.sort()
    vs = check_command_log(recs, CFG)
    assert [v.channel for v in vs] == [5]
    assert vs[0].rule == "act_to_mac_nRCDRDMAC"
    # ids instead of names, as a 2-D array (the layout of pimsim.engine.command_log)
    arr = np.array([(a, b, cc, d, cmd_id(e)) for a, b, cc, d, e in recs], np.int64)
    assert check_command_log(arr, CFG) == vs
    # a structured array with named fields, command as text
    st = np.array(recs, dtype=[("cycle", "i8"), ("channel", "i8"), ("bank", "i8"), ("row", "i8"),
                               ("command", "U8")])
    assert check_command_log(st, CFG) == vs
    assert check_command_log([], CFG) == []


def test_engine_command_log_passes():
    from pimsim.engine import command_log, simulate_streams

    s = [make_stream([("MAC_AB", -1, ch, 64), ("RD_MAC", -1, 0, 1), "SYNC",
                      ("WR_GB", -1, 0, 8 * (ch + 1)), ("MAC_AB", -1, ch + 1, 64), "SYNC"])
         for ch in range(3)]
    res = simulate_streams(CFG_REF, s, log=True, host_cyc=lambda k: 3 * N_REFI)  # idle refreshes
    log = command_log(res)
    assert np.count_nonzero(log[:, 4] == cmd_id("REFab")) >= 3 * 3
    assert check_command_log(log, CFG_REF) == []


def test_bad_input():
    with pytest.raises(ValueError, match="unknown command"):
        check_command_log([(0, 0, -1, 0, "NOPE")], CFG)
    with pytest.raises(ValueError, match="bank"):
        check_log(L(("ACT", 0, 1, 0))[:, :] + np.array([0, 0, 99, 0]), CFG)


def test_report_and_truncation():
    assert check_report([]) == "check: no violations"
    log = _engine_log(rows=20)
    bad = log.copy()
    bad[:, 0] = np.arange(bad.shape[0])  # squeeze everything: violations everywhere
    vs = check_log(bad, CFG, max_per_rule=3)
    assert vs.truncated and vs.total > len(vs)
    assert all(n <= 3 for n in (sum(v.rule == k for v in vs) for k in vs.counts))
    rep = check_report(vs, show=5)
    assert rep.startswith(f"check: {vs.total} violation(s)")
    assert "more not listed" in rep
    full = check_log(bad, CFG, max_per_rule=None)
    assert len(full) == vs.total


# ---------------------------------------------------------------- a long log


def test_a_million_commands_check_clean():
    """A log of over a million commands (refresh on) is checked end to end without a finding
    (its speed is measured by benchmarks/, not asserted here)."""
    t = ChannelTimer(CFG_REF, log=True)
    t.run_all(make_stream([("MAC_AB", -1, r % 4096, 64) for r in range(15700)]))
    log = t.log
    assert log.shape[0] > 1_000_000
    assert check_log(log, CFG_REF) == []
