"""One test per GDDR6-AiM rule row (``AIM_RULES``) and per AiM device option, engine and checker.

Same method as ``test_timing_rules.py``: the engine's earliest cycle for the following command is
exactly preceding + latency (computed here from the config's values), the checker accepts it on
time and flags exactly that rule one cycle early. Most rows relate commands of both TMOD modes,
where the 32-cycle mode switch would hide them; they are tested with ``mode_switch = "none"``
(the rows stay: they belong to the standard), and timing values are moved apart where AiM's
values make rules tie (nBL = nCCDS = nCCDL = 2).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_timing_rules import assert_rule, with_timing

from pimsim.check import check_log
from pimsim.config import load_config
from pimsim.spec.commands import AF_PSEUDO_ROW, cmd_id
from pimsim.spec.rules import AIM_RULES
from pimsim.timing import ChannelTimer, make_stream

AIM = load_config("aim-gddr6", refresh=False)
NOMODE = AIM.replace(pim=dataclasses.replace(AIM.pim, mode_switch="none"),
                     host=dataclasses.replace(AIM.host, blocking_reads=False))
c = AIM.timing.cycles
B = 200
AF_ROW = AF_PSEUDO_ROW
OPEN0 = [("ACT", 0, 3, 0)]  # bank 0 (bank group 0) open at row 3
COVERED: set[str] = set()

# (rule, timing changes, setup [(cmd, bank, row, cycle)], following (cmd, bank, row), latency)
CASES = [
    ("aim_rd_bus_nBL", {"nBL": 4}, OPEN0 + [("RD", 0, 3, B)], ("RD_MAC", -1, -1), 4),
    ("aim_wr_bus_nBL", {"nBL": 4}, [("WR_MAC", -1, -1, B)], ("WR_GB", -1, -1), 4),
    ("aim_wr_nCCDS", {}, OPEN0 + [("WR_CP", 0, 3, B)], ("WR_GB", -1, -1), c["nCCDS"]),
    ("aim_to_allbank_rd_nCCDL", {"nMACACC": 1}, OPEN0 + [("MAC_SB", 0, 3, B)],
     ("RD_MAC", -1, -1), c["nCCDL"]),
    ("aim_allbank_rd_to_rd_nCCDL", {}, OPEN0 + [("RD_AF", -1, -1, B)], ("RD_CP", 0, 3),
     c["nCCDL"]),
    ("aim_to_allbank_wr_nCCDL", {"nCCDS": 1}, OPEN0 + [("WR_CP", 0, 3, B)], ("WR_MAC", -1, -1),
     c["nCCDL"]),
    ("aim_allbank_wr_to_wr_nCCDL", {"nCCDS": 1}, OPEN0 + [("WR_MAC", -1, -1, B)],
     ("WR_CP", 0, 3), c["nCCDL"]),
    ("aim_rd_to_wr_tRTW", {}, OPEN0 + [("RD", 0, 3, B)], ("WR", 0, 3),
     c["nCL"] + c["nBL"] + 3 - c["nCWL"] + c["nWPRE"]),
    ("aim_rd_to_wrgb_tRTW", {}, OPEN0 + [("RD", 0, 3, B)], ("WR_GB", -1, -1),
     c["nCL"] + c["nBL"] + 3 - c["nCWLGB"] + c["nWPRE"]),
    ("aim_rd_to_wrmac_tRTW", {}, OPEN0 + [("RD", 0, 3, B)], ("WR_MAC", -1, -1),
     c["nCL"] + c["nBL"] + 3 - c["nCWLREG"] + c["nWPRE"]),
    ("aim_rdreg_to_wr_tRTW", {"nCWL": 1}, OPEN0 + [("RD_MAC", -1, -1, B)], ("WR", 0, 3),
     c["nCLREG"] + c["nBL"] + 3 - 1 + c["nWPRE"]),
    ("aim_rdreg_to_wrgb_tRTW", {}, [("RD_AF", -1, -1, B)], ("WR_GB", -1, -1),
     c["nCLREG"] + c["nBL"] + 3 - c["nCWLGB"] + c["nWPRE"]),
    ("aim_rdreg_to_wrmac_tRTW", {}, [("RD_MAC", -1, -1, B)], ("WR_MAC", -1, -1),
     c["nCLREG"] + c["nBL"] + 3 - c["nCWLREG"] + c["nWPRE"]),
    ("aim_wr_to_rd_nWTRS", {}, [("ACT", 0, 3, 0), ("ACT", 4, 3, 10), ("WR", 0, 3, B)],
     ("RD", 4, 3), c["nCWL"] + c["nBL"] + c["nWTRS"]),
    ("aim_wr_to_rdreg_nWTRL", {}, OPEN0 + [("WR", 0, 3, B)], ("RD_MAC", -1, -1),
     c["nCWL"] + c["nBL"] + c["nWTRL"]),
    ("aim_wr_to_rd_same_bg_nWTRL", {}, [("ACT", 0, 3, 0), ("ACT", 1, 3, 10), ("WR", 0, 3, B)],
     ("RD", 1, 3), c["nCWL"] + c["nBL"] + c["nWTRL"]),
    ("aim_wrab_to_rd_nWTRL", {}, [("ACT_AB", -1, 3, 0), ("WR_AB", -1, 3, B)],
     ("RD_MAC", -1, -1), c["nCWL"] + c["nBL"] + c["nWTRL"]),
    ("aim_wrgb_to_rd_nWTRS", {}, [("WR_GB", -1, -1, B)], ("RD_AF", -1, -1),
     c["nCWLGB"] + c["nBL"] + c["nWTRS"]),
    ("aim_wrmac_to_rd_nWTRL", {}, [("WR_MAC", -1, -1, B)], ("RD_AF", -1, -1),
     c["nCWLREG"] + c["nBL"] + c["nWTRL"]),
    ("af_act_to_af_nRCDRDAF", {}, [("ACT_AB", -1, AF_ROW, B)], ("AF", -1, AF_ROW),
     c["nRCDRDAF"]),
    ("af_to_pre_nRTP", {}, [("ACT_AB", -1, AF_ROW, 0), ("AF", -1, AF_ROW, B)], ("PREA", -1, -1),
     c["nRTP"]),
    ("ewmul_writeback_to_pre", {}, [("ACT_AB", -1, 3, 0), ("EWMUL", -1, 3, B)],
     ("PREA", -1, -1), c["nCWL"] + c["nWR"]),
]


@pytest.mark.parametrize("rule,changes,setup,following,lat", CASES, ids=[x[0] for x in CASES])
def test_aim_rule_earliest_cycle(rule, changes, setup, following, lat):
    COVERED.add(rule)
    cfg = with_timing(NOMODE, **changes) if changes else NOMODE
    pre = max(cyc for *_, cyc in setup)
    assert_rule(setup, following, rule, pre + lat, cfg=cfg)


def test_blocking_read_holds_the_next_request():
    COVERED.add("blocking_read_to_next_request")
    cfg = AIM.replace(pim=dataclasses.replace(AIM.pim, mode_switch="none"))
    assert cfg.host.blocking_reads
    lat = c["nCLREG"] + c["nBL"] + cfg.host.release_cyc
    assert_rule([("RD_MAC", -1, -1, B)], ("RD_AF", -1, -1), "blocking_read_to_next_request",
                B + lat, cfg=cfg)


def test_every_aim_rule_has_a_test():
    test_blocking_read_holds_the_next_request()
    for case in CASES:
        COVERED.add(case[0])
    names = {r.name for r in AIM_RULES}
    assert names == COVERED, f"untested: {sorted(names - COVERED)}, unknown: {sorted(COVERED - names)}"


def _log(cfg, items):
    t = ChannelTimer(cfg, log=True)
    t.run_all(make_stream(items))
    assert check_log(t.log, cfg) == []
    return t.log


def test_register_mode_switch_waits_for_the_command_it_enables():
    """GEMV tile on AiM: MAC16 -> TMOD (issued when RD_MAC would be ready) -> RD_MAC -> TMOD
    (issued when the next tile's PREA would be ready) -> PREA: 69 cycles from the last MAC."""
    log = _log(AIM, [("MAC_AB", -1, 0, 4), ("RD_MAC", -1, -1), ("MAC_AB", -1, 1, 4)])
    names = [k for k in log[:, 1].tolist()]
    mac, tmod, rdmac, prea = (cmd_id(n) for n in ("MAC_AB", "TMOD", "RD_MAC", "PREA"))
    last_mac = int(log[np.flatnonzero(np.array(names) == mac)[3], 0])
    t1, t2 = (int(x) for x in log[np.array(names) == tmod, 0])
    t_rd = int(log[np.array(names) == rdmac, 0][0])
    t_pa = int(log[np.array(names) == prea, 0][0])
    assert t1 == last_mac + c["nMACACC"]  # the RD_MAC's own constraint, not TMOD's
    assert t_rd == t1 + c["nMODCH"]
    assert t2 == t_rd + c["nCLREG"] + c["nBL"] + AIM.host.release_cyc  # the blocking read
    assert t_pa == t2 + c["nMODCH"] and t_pa - last_mac == 69


def test_af_loop_without_macs_issues_each_tmod_the_cycle_after_the_register_access():
    """WR_BIAS, AF, RD_AF repeated with no MAC between (the AF row stays open): each TMOD issues
    the cycle after the command before it (AiM has no WRMAC16 -> AF16 or AF16 -> RDAF16 row),
    the command it enables nMODCH later, and the next WR_MAC waits the register read's tRTW."""
    items = [("AF", -1, AF_ROW)] + [it for _ in range(3) for it in
                                     (("WR_MAC", -1, -1), ("AF", -1, AF_ROW), ("RD_AF", -1, -1))]
    log = _log(AIM, items)
    names = [int(k) for k in log[:, 1]]
    at = {n: [int(t) for t, k in zip(log[:, 0], names) if k == cmd_id(n)]
          for n in ("WR_MAC", "AF", "RD_AF", "TMOD")}
    rtw = c["nCLREG"] + c["nBL"] + 3 - c["nCWLREG"] + c["nWPRE"]
    for i in range(3):
        wr, af, rd = at["WR_MAC"][i], at["AF"][i + 1], at["RD_AF"][i]
        assert af == wr + 1 + c["nMODCH"]  # TMOD at wr + 1
        assert rd == af + 1 + c["nMODCH"]  # TMOD at af + 1
        if i:
            assert wr == at["RD_AF"][i - 1] + max(rtw, c["nCLREG"] + c["nBL"]
                                                  + AIM.host.release_cyc)
    period = at["WR_MAC"][2] - at["WR_MAC"][1]
    assert period == 2 * (1 + c["nMODCH"]) + rtw == 71


def test_bank_mode_switch_issues_as_soon_as_legal():
    cfg = AIM.replace(pim=dataclasses.replace(AIM.pim, mode_switch="bank-mode"),
                      host=dataclasses.replace(AIM.host, blocking_reads=False))
    log = _log(cfg, [("WR", 0, 3), ("MAC_AB", -1, 0, 4)])
    tmods = log[log[:, 1] == cmd_id("TMOD"), 0]
    wr = int(log[log[:, 1] == cmd_id("WR"), 0][0])
    assert int(tmods[-1]) == wr + 1  # right after the write, not when the MAC's row is ready


def test_af_opens_its_pseudo_row_and_the_next_mac_reopens_its_own():
    log = _log(AIM, [("MAC_AB", -1, 5, 64), ("AF", -1, AF_ROW), ("MAC_AB", -1, 5, 1)])
    acts = log[log[:, 1] == cmd_id("ACT_AB")]
    assert acts[:, 3].tolist() == [5, AF_ROW, 5]
    af = int(log[log[:, 1] == cmd_id("AF"), 0][0])
    assert af - int(acts[1, 0]) == c["nRCDRDAF"]
