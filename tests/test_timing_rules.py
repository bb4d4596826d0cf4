"""One test per timing rule of ``pimsim.spec.rules`` (Ramulator-2 style), engine and checker both.

Each test places the preceding command (and whatever setup the following command needs) with
``ChannelTimer.issue_at`` and asserts

1. the engine's earliest legal cycle for the following command is exactly
   ``preceding cycle + latency`` (the latency computed here from ``cfg.timing.cycles``), and
2. the independent checker (``pimsim.check``) finds no violation with the following command placed
   on time, and, placed one cycle early, reports exactly the rule under test (plus any rule that
   the config makes tie with it, named explicitly). That second assertion is what shows the rule
   under test is the binding one in the chosen setup.

Every rule name of ``DRAM_RULES`` and ``PIM_RULES`` must be registered by ``@covers`` below;
``test_every_rule_has_a_test`` enforces it.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_rules_variant

from pimsim.check import check_log
from pimsim.config import Timing, load_config
from pimsim.errors import ConfigError
from pimsim.spec.commands import AF_PSEUDO_ROW, COMMANDS, SCOPE_BANK, cmd_id
from pimsim.spec.rules import DRAM_RULES, PIM_RULES
from pimsim.timing import ChannelTimer, make_stream

# The shared rows (DRAM_RULES, PIM_RULES) on the AiM timing set, with the HBM-PIM-style
# single-bank / all-bank mode switch and no AiM-only rows; those are in test_aim_rules.py.
CFG = shared_rules_variant(load_config("aim-gddr6", refresh=False))
CFG_REF = shared_rules_variant(load_config("aim-gddr6", refresh=True))
c = CFG.timing.cycles  # latencies come from the config, never hard-coded
B = 100  # base cycle of each scenario: after a TMOD at 0 (nMODCH) and clear of reset

COVERED: dict[str, list[str]] = {}


def covers(*rules: str):
    """Register the rule(s) a test checks (see ``test_every_rule_has_a_test``)."""

    def deco(fn):
        for r in rules:
            COVERED.setdefault(r, []).append(fn.__name__)
        return fn

    return deco


def with_timing(cfg, **changes):
    """The config with some timing values changed (re-validated)."""
    return cfg.replace(timing=Timing(cfg.timing.tCK_ps, {**cfg.timing.cycles, **changes}))


def _row(name, bank, row, cycle):
    is_bank = COMMANDS[cmd_id(name)].scope == SCOPE_BANK
    return [cycle, cmd_id(name), bank if is_bank else -1, row]


def assert_rule(setup, following, rule, expected, *, cfg=CFG, also=()):
    """Place ``setup`` [(name, bank, row, cycle)], then check ``following`` (name, bank, row).

    Asserts the engine's earliest cycle == ``expected`` and that the checker flags exactly
    ``{rule, *also}`` one cycle early and nothing on time. Returns the timer.
    """
    timer = ChannelTimer(cfg, log=True)
    for name, bank, row, cyc in setup:
        timer.issue_at(name, bank, row, cyc)
    base = timer.log.copy()
    assert check_log(base, cfg) == [], "the setup itself must be legal"
    fname, fbank, frow = following
    got = timer.earliest(fname, fbank)
    assert got == expected, f"engine: {fname} earliest {got}, expected {expected} ({rule})"
    on_time = np.vstack([base, [_row(fname, fbank, frow, expected)]])
    assert check_log(on_time, cfg) == [], f"checker flags a legal {fname} at {expected}"
    early = np.vstack([base, [_row(fname, fbank, frow, expected - 1)]])
    found = {v.rule for v in check_log(early, cfg)}
    assert found == {rule, *also}, f"one cycle early: checker found {found}, expected {rule}"
    return timer


def tie(a: str, b: str, rule: str) -> set[str]:
    """``{rule}`` when timing values ``a`` and ``b`` are equal in the config (the rules tie)."""
    return {rule} if c[a] == c[b] else set()


# ---------------------------------------------------------------- command bus


@covers("cmd_bus")
def test_cmd_bus_one_command_per_cycle():
    # WR_GB -> RD_MAC: no other rule relates them
    assert_rule([("TMOD", -1, -1, 0), ("WR_GB", -1, 0, B)], ("RD_MAC", -1, 0), "cmd_bus", B + 1)


@covers("cmd_bus")
def test_cmd_bus_between_banks():
    # ACT to bank 0, then PRE to bank 1 (opened long before): only the bus separates them
    assert_rule([("ACT", 1, 0, 0), ("ACT", 0, 0, B)], ("PRE", 1, 0), "cmd_bus", B + 1)


# ---------------------------------------------------------------- activate / precharge


@covers("act_to_act_same_bank_nRC")
def test_act_to_act_same_bank_waits_nrc():
    assert c["nRC"] > c["nRAS"] + c["nRP"], "nRC must be the binding constraint here"
    assert_rule([("ACT", 0, 0, B), ("PRE", 0, 0, B + c["nRAS"])], ("ACT", 0, 1),
                "act_to_act_same_bank_nRC", B + c["nRC"])


@covers("act_to_act_same_bank_nRC")
def test_act_ab_to_act_ab_waits_nrc():
    assert_rule([("TMOD", -1, -1, 0), ("ACT_AB", -1, 0, B), ("PREA", -1, -1, B + c["nRAS"])],
                ("ACT_AB", -1, 1), "act_to_act_same_bank_nRC", B + c["nRC"])


@covers("act_to_pre_nRAS")
@pytest.mark.parametrize("pre", ["PRE", "PREA"])
def test_act_to_pre_waits_nras(pre):
    assert_rule([("ACT", 0, 3, B)], (pre, 0 if pre == "PRE" else -1, 3), "act_to_pre_nRAS",
                B + c["nRAS"])


@covers("pre_to_act_nRP")
@pytest.mark.parametrize("pre", ["PRE", "PREA"])
@pytest.mark.parametrize("fol", ["ACT", "ACT_AB", "REFab"])
def test_prea_to_act_waits_nrp(pre, fol):
    p = B + c["nRC"]  # late enough that nRC from the ACT is already met
    setup = [("TMOD", -1, -1, 0), ("ACT", 0, 3, B), (pre, 0 if pre == "PRE" else -1, 3, p)]
    assert_rule(setup, (fol, 0 if fol == "ACT" else -1, 5), "pre_to_act_nRP", p + c["nRP"])


@covers("act_to_rd_nRCDRD")
def test_rd_after_act_waits_nrcdrd():
    assert_rule([("ACT", 0, 3, B)], ("RD", 0, 3), "act_to_rd_nRCDRD", B + c["nRCDRD"])


@covers("act_to_wr_nRCDWR")
def test_wr_after_act_waits_nrcdwr():
    assert_rule([("ACT", 0, 3, B)], ("WR", 0, 3), "act_to_wr_nRCDWR", B + c["nRCDWR"])


@covers("act_to_wr_nRCDWR")
def test_wrab_after_act_ab_waits_nrcdwr():
    assert_rule([("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, B)], ("WR_AB", -1, 3),
                "act_to_wr_nRCDWR", B + c["nRCDWR"])


# column read -> precharge: the read is placed late enough that nRAS is already met
_READS = {  # read: (activate, the read's own activate-to-read latency name, bank, pim mode)
    "RD": ("ACT", "nRCDRD", 0, False),
    "MAC_SB": ("ACT", "nRCDRDMAC", 0, True),
    "RD_CP": ("ACT", "nRCDRDCP", 0, True),
    "MAC_AB": ("ACT_AB", "nRCDRDMAC", -1, True),
    "EWMUL": ("ACT_AB", "nRCDEWMUL", -1, True),
}


@covers("rd_to_pre_nRTP")
@pytest.mark.parametrize("read", list(_READS))
def test_rd_to_pre_waits_nrtp(read):
    act, rcd, bank, pim = _READS[read]
    r = B + max(c["nRAS"], c[rcd])
    setup = ([("TMOD", -1, -1, 0)] if pim else []) + [(act, bank, 3, B), (read, bank, 3, r)]
    pre = "PRE" if bank >= 0 else "PREA"
    assert_rule(setup, (pre, bank, 3), "rd_to_pre_nRTP", r + c["nRTP"])


@covers("rd_to_pre_nRTP")
def test_last_mac_to_prea_waits_nrtp():
    first = B + c["nRCDRDMAC"]
    setup = [("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, B)]
    setup += [("MAC_AB", -1, 3, first + k * c["nCCDL"]) for k in range(64)]
    last = first + 63 * c["nCCDL"]
    assert last >= B + c["nRAS"]
    assert_rule(setup, ("PREA", -1, -1), "rd_to_pre_nRTP", last + c["nRTP"])


@covers("wr_to_pre_write_recovery")
def test_write_recovery():
    w = B + c["nRCDWR"]
    exp = w + c["nCWL"] + c["nBL"] + c["nWR"]
    assert exp > B + c["nRAS"]
    assert_rule([("ACT", 0, 3, B), ("WR", 0, 3, w)], ("PRE", 0, 3), "wr_to_pre_write_recovery",
                exp)


@covers("wr_to_pre_write_recovery")
def test_write_recovery_after_wrcp_to_prea():
    w = B + c["nRCDWRCP"]
    exp = w + c["nCWL"] + c["nBL"] + c["nWR"]
    assert_rule([("TMOD", -1, -1, 0), ("ACT", 0, 3, B), ("WR_CP", 0, 3, w)], ("PREA", -1, -1),
                "wr_to_pre_write_recovery", exp)


# ---------------------------------------------------------------- activates across banks


@covers("act_to_act_same_bg_nRRDL")
def test_rrd_l():
    assert c["nRRDL"] > c["nRRDS"]
    assert_rule([("ACT", 0, 0, B)], ("ACT", 1, 0), "act_to_act_same_bg_nRRDL", B + c["nRRDL"])


@covers("act_to_act_same_bg_nRRDL")
def test_rrd_l_last_bank_of_group():
    assert_rule([("ACT", 12, 0, B)], ("ACT", 15, 0), "act_to_act_same_bg_nRRDL", B + c["nRRDL"])


@covers("act_to_act_nRRDS")
def test_rrd_s():
    assert_rule([("ACT", 0, 0, B)], ("ACT", 4, 0), "act_to_act_nRRDS", B + c["nRRDS"])


@covers("four_activate_window_nFAW")
def test_faw_window():
    s = c["nRRDS"]
    assert c["nFAW"] > 4 * s and c["nFAW"] > c["nRRDL"]
    setup = [("ACT", b, 0, B + k * s) for k, b in enumerate((0, 4, 8, 12))]
    # the fifth ACT (bank 1, bank group 0) waits nFAW after the first of the last four
    assert_rule(setup, ("ACT", 1, 0), "four_activate_window_nFAW", B + c["nFAW"])


@covers("four_activate_window_nFAW")
def test_faw_window_slides():
    s = c["nRRDS"] + 1  # one more than nRRDS, so the sixth ACT is bound by the window alone
    assert 3 * s < c["nFAW"]
    setup = [("ACT", b, 0, B + k * s) for k, b in enumerate((0, 4, 8, 12))]
    setup.append(("ACT", 1, 0, B + c["nFAW"]))
    # sixth ACT: the window now starts at the second ACT
    assert_rule(setup, ("ACT", 5, 0), "four_activate_window_nFAW", B + s + c["nFAW"])


# ---------------------------------------------------------------- column to column


def _two_banks_open(b0, b1, pim=False):
    setup = [("TMOD", -1, -1, 0)] if pim else []
    return setup + [("ACT", b0, 3, B), ("ACT", b1, 3, B + c["nRRDL"])]


R = B + 200  # column commands well after their ACTs


@covers("rd_to_rd_same_bg_nCCDL")
def test_rd_to_rd_same_bg_waits_nccdl():
    assert_rule(_two_banks_open(0, 1) + [("RD", 0, 3, R)], ("RD", 1, 3),
                "rd_to_rd_same_bg_nCCDL", R + c["nCCDL"],
                also=tie("nCCDS", "nCCDL", "rd_to_rd_nCCDS"))


@covers("rd_to_rd_same_bg_nCCDL")
def test_rd_to_rd_same_bg_nccdl_binds_when_longer_than_nccds():
    cfg = with_timing(CFG, nCCDL=c["nCCDS"] + 3)
    assert_rule(_two_banks_open(0, 1) + [("RD", 0, 3, R)], ("RD", 1, 3),
                "rd_to_rd_same_bg_nCCDL", R + c["nCCDS"] + 3, cfg=cfg)


@covers("rd_to_rd_same_bg_nCCDL")
def test_mac_to_mac_waits_nccdl():
    m = B + c["nRCDRDMAC"]
    assert_rule([("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, B), ("MAC_AB", -1, 3, m)],
                ("MAC_AB", -1, 3), "rd_to_rd_same_bg_nCCDL", m + c["nCCDL"],
                also=tie("nCCDS", "nCCDL", "rd_to_rd_nCCDS"))


@covers("rd_to_rd_nCCDS")
def test_rd_to_rd_other_bg_waits_nccds():
    assert_rule(_two_banks_open(0, 4) + [("RD", 0, 3, R)], ("RD", 4, 3), "rd_to_rd_nCCDS",
                R + c["nCCDS"])


@covers("rd_to_rd_nCCDS")
def test_mac_sb_to_mac_sb_other_bg_waits_nccds():
    assert_rule(_two_banks_open(0, 4, pim=True) + [("MAC_SB", 0, 3, R)], ("MAC_SB", 4, 3),
                "rd_to_rd_nCCDS", R + c["nCCDS"])


@covers("wr_to_wr_same_bg_nCCDL")
def test_wr_to_wr_same_bg_waits_nccdl():
    assert_rule(_two_banks_open(0, 1) + [("WR", 0, 3, R)], ("WR", 1, 3),
                "wr_to_wr_same_bg_nCCDL", R + c["nCCDL"],
                also=tie("nCCDS", "nCCDL", "wr_to_wr_nCCDS"))


@covers("wr_to_wr_same_bg_nCCDL")
def test_wr_to_wr_same_bg_nccdl_binds_when_longer_than_nccds():
    cfg = with_timing(CFG, nCCDL=c["nCCDS"] + 3)
    assert_rule(_two_banks_open(0, 1) + [("WR", 0, 3, R)], ("WR", 1, 3),
                "wr_to_wr_same_bg_nCCDL", R + c["nCCDS"] + 3, cfg=cfg)


@covers("wr_to_wr_nCCDS")
def test_wr_to_wr_other_bg_waits_nccds():
    assert_rule(_two_banks_open(0, 4) + [("WR", 0, 3, R)], ("WR", 4, 3), "wr_to_wr_nCCDS",
                R + c["nCCDS"])


@covers("wr_to_rd_same_bg_nWTRL")
def test_wr_to_rd_same_bg_waits_nwtrl():
    assert c["nWTRL"] > c["nWTRS"]
    assert_rule(_two_banks_open(0, 1) + [("WR", 0, 3, R)], ("RD", 1, 3),
                "wr_to_rd_same_bg_nWTRL", R + c["nCWL"] + c["nBL"] + c["nWTRL"])


@covers("wr_to_rd_same_bg_nWTRL")
def test_wr_to_rd_same_bank_waits_nwtrl():
    assert_rule(_two_banks_open(0, 1) + [("WR", 0, 3, R)], ("RD", 0, 3),
                "wr_to_rd_same_bg_nWTRL", R + c["nCWL"] + c["nBL"] + c["nWTRL"])


@covers("wr_to_rd_nWTRS")
def test_wr_to_rd_other_bg_waits_nwtrs():
    assert_rule(_two_banks_open(0, 4) + [("WR", 0, 3, R)], ("RD", 4, 3), "wr_to_rd_nWTRS",
                R + c["nCWL"] + c["nBL"] + c["nWTRS"])


@covers("wr_to_rd_nWTRS")
def test_wrcp_to_rdcp_other_bg_waits_nwtrs():
    assert_rule(_two_banks_open(0, 4, pim=True) + [("WR_CP", 0, 3, R)], ("RD_CP", 4, 3),
                "wr_to_rd_nWTRS", R + c["nCWL"] + c["nBL"] + c["nWTRS"])


@covers("rd_to_wr_bus_turnaround")
@pytest.mark.parametrize("other", [1, 4])
def test_rd_to_wr_bus_turnaround(other):
    assert_rule(_two_banks_open(0, other) + [("RD", 0, 3, R)], ("WR", other, 3),
                "rd_to_wr_bus_turnaround", R + c["nCL"] + c["nBL"] + 2 - c["nCWL"])


@covers("internal_rd_to_wr_same_bg_nCCDL")
def test_internal_rd_to_wr_same_bg_waits_nccdl():
    assert_rule(_two_banks_open(0, 1, pim=True) + [("MAC_SB", 0, 3, R)], ("WR_CP", 1, 3),
                "internal_rd_to_wr_same_bg_nCCDL", R + c["nCCDL"])


@covers("internal_rd_to_wr_same_bg_nCCDL")
def test_mac_ab_to_wr_ab_waits_nccdl():
    m = B + c["nRCDRDMAC"]
    assert_rule([("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, B), ("MAC_AB", -1, 3, m)],
                ("WR_AB", -1, 3), "internal_rd_to_wr_same_bg_nCCDL", m + c["nCCDL"])


# ---------------------------------------------------------------- refresh


@covers("ref_to_act_nRFC")
@pytest.mark.parametrize("fol", ["ACT", "ACT_AB", "REFab"])
def test_ref_to_act_waits_nrfc(fol):
    assert_rule([("TMOD", -1, -1, 0), ("REFab", -1, -1, B)], (fol, 0 if fol == "ACT" else -1, 2),
                "ref_to_act_nRFC", B + c["nRFC"])


@covers("ref_to_act_nRFC")
def test_refresh_blocks_for_nrfc():
    # refresh on: the first REFab is due at nREFI; the next ACT waits nRFC after it
    n = CFG_REF.timing.nREFI
    assert_rule([("REFab", -1, -1, n)], ("ACT", 0, 1), "ref_to_act_nRFC", n + c["nRFC"],
                cfg=CFG_REF)
    # and in a scheduled stream every refresh blocks the channel for exactly nRFC
    t = ChannelTimer(CFG_REF, log=True)
    t.run_all(make_stream([("MAC_AB", -1, r, 64) for r in range(60)]))
    log = t.log
    refs = np.flatnonzero(log[:, 1] == cmd_id("REFab"))
    assert len(refs) >= 3 and t.refreshes == len(refs)
    for k, i in enumerate(refs):
        assert log[i, 0] >= (k + 1) * n, "refresh issued before it was due"
        assert log[i + 1, 1] == cmd_id("ACT_AB")
        assert log[i + 1, 0] - log[i, 0] == c["nRFC"]
    assert check_log(log, CFG_REF) == []


# ---------------------------------------------------------------- PIM: activate to command


@covers("act_to_mac_nRCDRDMAC")
def test_mac_after_act_waits_nrcdrdmac():
    assert_rule([("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, B)], ("MAC_AB", -1, 3),
                "act_to_mac_nRCDRDMAC", B + c["nRCDRDMAC"])


@covers("act_to_mac_nRCDRDMAC")
def test_mac_sb_after_act_waits_nrcdrdmac():
    assert_rule([("TMOD", -1, -1, 0), ("ACT", 7, 3, B)], ("MAC_SB", 7, 3),
                "act_to_mac_nRCDRDMAC", B + c["nRCDRDMAC"])


@covers("act_to_ewmul_nRCDEWMUL")
def test_ewmul_after_act_waits_nrcdewmul():
    assert_rule([("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, B)], ("EWMUL", -1, 3),
                "act_to_ewmul_nRCDEWMUL", B + c["nRCDEWMUL"])


@covers("act_to_rdcp_nRCDRDCP")
def test_rdcp_after_act_waits_nrcdrdcp():
    assert_rule([("TMOD", -1, -1, 0), ("ACT", 2, 3, B)], ("RD_CP", 2, 3),
                "act_to_rdcp_nRCDRDCP", B + c["nRCDRDCP"])


@covers("act_to_wrcp_nRCDWRCP")
def test_wrcp_after_act_waits_nrcdwrcp():
    assert_rule([("TMOD", -1, -1, 0), ("ACT", 2, 3, B)], ("WR_CP", 2, 3),
                "act_to_wrcp_nRCDWRCP", B + c["nRCDWRCP"])


@covers("wrab_autopre_to_act")
@pytest.mark.parametrize("fol", ["ACT_AB", "ACT", "REFab"])
def test_wrab_autoprecharge_to_act(fol):
    w = B + c["nRCDWR"]
    exp = w + c["nCWL"] + c["nBL"] + c["nWR"] + c["nRP"]
    assert exp > B + c["nRC"], "write recovery + nRP must be what binds, not nRC"
    assert_rule([("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, B), ("WR_AB", -1, 3, w)],
                (fol, 9 if fol == "ACT" else -1, 4), "wrab_autopre_to_act", exp)


# ---------------------------------------------------------------- PIM: global buffer, accumulators


@covers("wrgb_to_wrgb_nBL")
@pytest.mark.parametrize("fol", ["WR_GB", "WR_MAC"])
def test_wrgb_to_wrgb_waits_nbl(fol):
    assert c["nBL"] > 1
    assert_rule([("TMOD", -1, -1, 0), ("WR_GB", -1, 0, B)], (fol, -1, 0), "wrgb_to_wrgb_nBL",
                B + c["nBL"])


def _ab_open(at=B):
    return [("TMOD", -1, -1, 0), ("ACT_AB", -1, 3, at)]


@covers("wrgb_to_mac_data_ready")
@pytest.mark.parametrize("fol", ["MAC_AB", "EWMUL", "MAC_SB", "WR_CP"])
def test_wrgb_to_mac_waits_data_ready(fol):
    g = B + c["nRCDRDMAC"]  # every activate-to-command delay is met by then
    assert c["nCWLGB"] + c["nBL"] > 1
    bank = 6 if COMMANDS[cmd_id(fol)].scope == SCOPE_BANK else -1
    assert_rule(_ab_open() + [("WR_GB", -1, 0, g)], (fol, bank, 3), "wrgb_to_mac_data_ready",
                g + c["nCWLGB"] + c["nBL"])


@covers("rdcp_to_gb_use")
@pytest.mark.parametrize("fol", ["MAC_SB", "WR_CP", "MAC_AB", "EWMUL"])
def test_rdcp_to_gb_use(fol):
    r = B + c["nRCDRDCP"]
    exp = r + c["nCLGB"] + c["nBL"]
    assert exp - r > c["nCCDL"], "the buffer rule must be longer than column spacing"
    bank = 0 if COMMANDS[cmd_id(fol)].scope == SCOPE_BANK else -1
    assert_rule(_ab_open() + [("RD_CP", 0, 3, r)], (fol, bank, 3), "rdcp_to_gb_use", exp)


@covers("wrmac_to_mac", "wrmac_to_rdmac")
@pytest.mark.parametrize("fol", ["MAC_AB", "MAC_SB", "AF", "RD_MAC"])
def test_wrmac_to_mac(fol):
    g = B + c["nRCDRDMAC"]
    assert c["nCWLREG"] + c["nBL"] > 1
    bank = 6 if COMMANDS[cmd_id(fol)].scope == SCOPE_BANK else -1
    rule = "wrmac_to_rdmac" if fol == "RD_MAC" else "wrmac_to_mac"
    assert_rule(_ab_open() + [("WR_MAC", -1, 0, g)], (fol, bank, 3), rule,
                g + c["nCWLREG"] + c["nBL"])


@covers("mac_to_rdmac_accumulate", "mac_to_af_accumulate")
@pytest.mark.parametrize("pre,fol", [("MAC_AB", "RD_MAC"), ("MAC_SB", "RD_MAC"),
                                     ("EWMUL", "RD_MAC"), ("MAC_AB", "AF"), ("AF", "RD_AF"),
                                     ("AF", "AF")])
def test_mac_to_rdmac_waits_accumulate(pre, fol):
    m = B + c["nRCDRDMAC"]
    assert c["nMACACC"] > 1
    bank = 6 if COMMANDS[cmd_id(pre)].scope == SCOPE_BANK else -1
    rule = "mac_to_af_accumulate" if fol == "AF" else "mac_to_rdmac_accumulate"
    assert_rule(_ab_open() + [(pre, bank, 3, m)], (fol, -1, 0), rule, m + c["nMACACC"])


def test_register_mode_switch_tmod_covers_the_accumulator_rows():
    """With register-access mode switching (AiM) WR_MAC -> AF and AF -> RD_AF have no row of
    their own (the AiM simulator's GDDR6 table has none): the TMOD in between issues the cycle
    after the first and the second follows nMODCH later, which covers the data latency."""
    aim = load_config("aim-gddr6", refresh=False)
    a = aim.timing.cycles
    af_row = aim.timing.cycles["nRCDRDAF"]  # the AF pseudo-row opened long before
    for pre, fol, lat in (("WR_MAC", "AF", a["nCWLREG"] + a["nBL"]),
                          ("AF", "RD_AF", a["nMACACC"])):
        timer = ChannelTimer(aim, log=True)
        timer.issue_at("ACT_AB", -1, AF_PSEUDO_ROW + 3, 0)
        timer.issue_at(pre, -1, AF_PSEUDO_ROW + 3, B + af_row)
        t_tmod = timer.earliest("TMOD", -1)
        assert t_tmod == B + af_row + 1  # the TMOD waits for the command bus only
        timer.issue_at("TMOD", -1, -1, t_tmod)
        assert timer.earliest(fol, -1) == t_tmod + a["nMODCH"]
        assert 1 + a["nMODCH"] > lat  # what the config loader checks
    with pytest.raises(ConfigError, match="nMODCH"):
        with_timing(aim, nMODCH=1)


@covers("rdmac_to_rdmac_nBL")
@pytest.mark.parametrize("pre,fol", [("RD_MAC", "RD_MAC"), ("RD_MAC", "RD_AF"),
                                     ("RD_AF", "RD_MAC")])
def test_rdmac_to_rdmac_waits_nbl(pre, fol):
    # (RD_MAC -> RD also carries this rule, but RD needs single-bank mode: the TMOD in between
    # waits nMODCH > nBL, so that pair can never be the binding one)
    assert c["nMODCH"] > c["nBL"] > 1
    assert_rule([("TMOD", -1, -1, 0), (pre, -1, 0, B)], (fol, -1, 0), "rdmac_to_rdmac_nBL",
                B + c["nBL"])


@covers("tmod_to_any_nMODCH")
@pytest.mark.parametrize("fol", ["ACT_AB", "WR_GB", "ACT", "TMOD"])
def test_tmod_to_any_waits_nmodch(fol):
    assert_rule([("TMOD", -1, -1, B)], (fol, 0 if fol == "ACT" else -1, 3), "tmod_to_any_nMODCH",
                B + c["nMODCH"])


# ---------------------------------------------------------------- closed forms


def _acts(log, name="ACT_AB"):
    return log[log[:, 1] == cmd_id(name), 0]


def test_closed_form_all_bank_mac_row():
    t = ChannelTimer(CFG, log=True)
    t.run_all(make_stream([("MAC_AB", -1, 0, 64), ("MAC_AB", -1, 1, 64)]))
    a = _acts(t.log)
    assert len(a) == 2
    assert a[1] - a[0] == 56 + 63 * 2 + 12 + 32  # nRCDRDMAC + 63 nCCDL + nRTP + nRP (aim-gddr6)
    assert a[1] - a[0] == c["nRCDRDMAC"] + 63 * c["nCCDL"] + c["nRTP"] + c["nRP"]
    assert check_log(t.log, CFG) == []


def test_closed_form_all_bank_write_row():
    t = ChannelTimer(CFG, log=True)
    t.run_all(make_stream([("WR_AB", -1, 0, 1), ("WR_AB", -1, 1, 1)]))
    a = _acts(t.log)
    assert len(a) == 2
    assert a[1] - a[0] == 28 + 6 + 2 + 33 + 32  # nRCDWR + nCWL + nBL + nWR + nRP (aim-gddr6)
    assert a[1] - a[0] == c["nRCDWR"] + c["nCWL"] + c["nBL"] + c["nWR"] + c["nRP"]
    assert check_log(t.log, CFG) == []


def test_closed_form_mac_row_done_cycle():
    """One row of 64 MACs from reset: TMOD, ACT_AB after nMODCH, last MAC completes nCCDL later."""
    t = ChannelTimer(CFG, log=True)
    done = t.run_all(make_stream([("MAC_AB", -1, 0, 64)]))
    assert done == c["nMODCH"] + c["nRCDRDMAC"] + 63 * c["nCCDL"] + c["nCCDL"]


def test_engine_rejects_pim_commands_on_plain_dram():
    from pimsim.config import ConfigError

    try:
        g = load_config("gddr6", refresh=False)
    except ConfigError as e:
        if "not found" in str(e):
            pytest.skip("hwconfigs/gddr6.toml not written yet")
        raise
    with pytest.raises(ValueError, match="does not have"):
        ChannelTimer(g).run_all(make_stream([("MAC_AB", -1, 0, 4)]))


# ---------------------------------------------------------------- coverage


def test_every_rule_has_a_test():
    names = [r.name for r in DRAM_RULES + PIM_RULES]
    assert len(names) == len(set(names)), "rule names must be unique"
    missing = sorted(set(names) - set(COVERED))
    assert not missing, f"timing rules without a test in this file: {missing}"
    unknown = sorted(set(COVERED) - set(names))
    assert not unknown, f"tests name rules that do not exist: {unknown}"
