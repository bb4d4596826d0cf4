"""Timing constraints between DRAM/PIM commands, as a table (Ramulator-2 style).

A rule ``Rule(level, preceding, following, latency, window)`` says: once a command in
``preceding`` has been issued, a command in ``following`` that touches the same node of ``level``
(the same bank, the same bank group, or anywhere in the channel) may issue no earlier than
``latency`` cycles later. With ``window = W > 0`` the rule counts the last ``W`` preceding commands
instead (tFAW: a fifth ACT waits ``nFAW`` after the first of the last four).

An all-bank command touches every bank and bank group of its channel, so bank-level rules apply to
it bank by bank (an ACT_AB counts as an ACT in each bank; a MAC_AB waits for every bank's ACT).

Latencies are expressions over the timing names of a hardware config (``nCWL + nBL + nWR``).
``"*"`` stands for every command. Adding a command or a standard means adding rows here.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVEL_CHANNEL = 0
LEVEL_BANKGROUP = 1
LEVEL_BANK = 2
LEVEL_NAMES = {"channel": LEVEL_CHANNEL, "bankgroup": LEVEL_BANKGROUP, "bank": LEVEL_BANK}


@dataclass(frozen=True)
class Rule:
    """One timing constraint: following waits ``latency`` after preceding on a shared node."""

    name: str
    level: str
    preceding: tuple[str, ...]
    following: tuple[str, ...]
    latency: str
    window: int = 0


def _r(name, level, preceding, following, latency, window=0):
    return Rule(name, level, tuple(preceding.split()), tuple(following.split()), latency, window)


ACTS = "ACT ACT_AB"
PRES = "PRE PREA"
# column commands that read a bank's row buffer (data stays in the bank for the PIM ones)
COL_READS = "RD MAC_AB MAC_SB EWMUL RD_CP"
COL_WRITES = "WR WR_AB WR_CP"
INTERNAL_READS = "MAC_AB MAC_SB EWMUL RD_CP"

# Rows shared by every GDDR6-family device (plain GDDR6, GDDR6-AiM, HBM-PIM pseudo-channels).
DRAM_RULES: tuple[Rule, ...] = (
    _r("cmd_bus", "channel", "*", "*", "1"),
    # activate / precharge, per bank
    _r("act_to_act_same_bank_nRC", "bank", ACTS, ACTS, "nRC"),
    _r("act_to_pre_nRAS", "bank", ACTS, PRES, "nRAS"),
    _r("pre_to_act_nRP", "bank", PRES, ACTS + " REFab", "nRP"),
    _r("act_to_rd_nRCDRD", "bank", ACTS, "RD", "nRCDRD"),
    _r("act_to_wr_nRCDWR", "bank", ACTS, "WR WR_AB", "nRCDWR"),
    _r("rd_to_pre_nRTP", "bank", COL_READS, PRES, "nRTP"),
    _r("wr_to_pre_write_recovery", "bank", "WR WR_CP", PRES, "nCWL + nBL + nWR"),
    # activates across banks
    _r("act_to_act_same_bg_nRRDL", "bankgroup", ACTS, ACTS, "nRRDL"),
    _r("act_to_act_nRRDS", "channel", ACTS, ACTS, "nRRDS"),
    _r("four_activate_window_nFAW", "channel", "ACT", "ACT", "nFAW", window=4),
    # column-to-column
    _r("rd_to_rd_same_bg_nCCDL", "bankgroup", COL_READS, COL_READS, "nCCDL"),
    _r("rd_to_rd_nCCDS", "channel", COL_READS, COL_READS, "nCCDS"),
    _r("wr_to_wr_same_bg_nCCDL", "bankgroup", COL_WRITES, COL_WRITES, "nCCDL"),
    _r("wr_to_wr_nCCDS", "channel", COL_WRITES, COL_WRITES, "nCCDS"),
    _r("wr_to_rd_same_bg_nWTRL", "bankgroup", COL_WRITES, COL_READS, "nCWL + nBL + nWTRL"),
    _r("wr_to_rd_nWTRS", "channel", COL_WRITES, COL_READS, "nCWL + nBL + nWTRS"),
    _r("rd_to_wr_bus_turnaround", "channel", "RD", COL_WRITES, "nCL + nBL + 2 - nCWL"),
    _r("internal_rd_to_wr_same_bg_nCCDL", "bankgroup", INTERNAL_READS, COL_WRITES, "nCCDL"),
    # refresh
    _r("ref_to_act_nRFC", "channel", "REFab", ACTS + " REFab", "nRFC"),
)

# Rows only PIM devices have (GDDR6-AiM command set; HBM-PIM maps onto the same names).
PIM_RULES: tuple[Rule, ...] = (
    _r("act_to_mac_nRCDRDMAC", "bank", ACTS, "MAC_AB MAC_SB", "nRCDRDMAC"),
    _r("act_to_ewmul_nRCDEWMUL", "bank", ACTS, "EWMUL", "nRCDEWMUL"),
    _r("act_to_rdcp_nRCDRDCP", "bank", ACTS, "RD_CP", "nRCDRDCP"),
    _r("act_to_wrcp_nRCDWRCP", "bank", ACTS, "WR_CP", "nRCDWRCP"),
    # WRA16 precharges by itself: the next activate waits for write recovery and nRP
    _r("wrab_autopre_to_act", "bank", "WR_AB", ACTS + " REFab", "nCWL + nBL + nWR + nRP"),
    # global buffer: one 32 B burst per nBL, data lands nCWLGB + nBL after the command
    _r("wrgb_to_wrgb_nBL", "channel", "WR_GB", "WR_GB WR_MAC WR", "nBL"),
    _r("wrgb_to_mac_data_ready", "channel", "WR_GB", "MAC_AB MAC_SB EWMUL WR_CP", "nCWLGB + nBL"),
    _r("rdcp_to_gb_use", "channel", "RD_CP", "MAC_AB MAC_SB EWMUL WR_CP", "nCLGB + nBL"),
    # accumulators
    _r("wrmac_to_mac", "channel", "WR_MAC", "MAC_AB MAC_SB AF RD_MAC", "nCWLREG + nBL"),
    _r("mac_to_rdmac_accumulate", "channel", "MAC_AB MAC_SB EWMUL AF", "RD_MAC RD_AF AF", "nMACACC"),
    _r("rdmac_to_rdmac_nBL", "channel", "RD_MAC RD_AF", "RD_MAC RD_AF RD", "nBL"),
    # mode switch
    _r("tmod_to_any_nMODCH", "channel", "TMOD", "*", "nMODCH"),
)
