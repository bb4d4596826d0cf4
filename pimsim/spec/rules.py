"""Timing constraints between DRAM/PIM commands, as a table (Ramulator-2 style).

A rule ``Rule(level, preceding, following, latency, window)`` says: once a command in
``preceding`` has been issued, a command in ``following`` that touches the same node of ``level``
(the same bank, the same bank group, or anywhere in the channel) may issue no earlier than
``latency`` cycles later. With ``window = W > 0`` the rule counts the last ``W`` preceding commands
instead (tFAW: a fifth ACT waits ``nFAW`` after the first of the last four).

An all-bank command touches every bank and bank group of its channel, so bank-level rules apply to
it bank by bank (an ACT_AB counts as an ACT in each bank; a MAC_AB waits for every bank's ACT).

Latencies are expressions over the timing names of a hardware config (``nCWL + nBL + nWR``) and
the host's ``host_release_cyc``. ``"*"`` stands for every command. A rule may hold only for some
devices: ``when`` names a feature of the config (``"GDDR6-AiM"``, the standard; ``af_pseudo_row``,
``ewmul_writeback``, ``blocking_reads``, ``register_mode_switch``, the device options), ``"!name"`` its absence
(:func:`config_features`, :func:`rules_for`). Adding a command or a standard means adding rows here.
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
    when: str = ""  # "" always, "feature" only with it, "!feature" only without it


def _r(name, level, preceding, following, latency, window=0, when=""):
    return Rule(name, level, tuple(preceding.split()), tuple(following.split()), latency, window,
                when)


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
    # write-to-read and read-to-write turnarounds (GDDR6-AiM: AIM_RULES below)
    _r("wr_to_rd_same_bg_nWTRL", "bankgroup", COL_WRITES, COL_READS, "nCWL + nBL + nWTRL",
       when="!GDDR6-AiM"),
    _r("wr_to_rd_nWTRS", "channel", COL_WRITES, COL_READS, "nCWL + nBL + nWTRS",
       when="!GDDR6-AiM"),
    _r("rd_to_wr_bus_turnaround", "channel", "RD", COL_WRITES, "nCL + nBL + 2 - nCWL",
       when="!GDDR6-AiM"),
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
    # accumulators: a bias written into them, or a MAC / AF result, is ready after the write
    # data lands (nCWLREG + nBL) or the accumulation ends (nMACACC). With register-access mode
    # switching (AiM) a TMOD always separates a register access (WR_MAC, RD_MAC, RD_AF) from a
    # MAC or AF, and it waits nMODCH, longer than either (the config loader checks), so those
    # pairs need no row of their own; the AiM simulator (arkhadem/aim_simulator 0f28a07,
    # GDDR6.cpp) has none (no WRMAC16 -> MAC16 / AF16, no AF16 -> RDAF16): a row here would hold
    # back the TMOD itself, which issues once the command it enables is legal.
    _r("wrmac_to_mac", "channel", "WR_MAC", "MAC_AB MAC_SB AF", "nCWLREG + nBL",
       when="!register_mode_switch"),
    _r("wrmac_to_rdmac", "channel", "WR_MAC", "RD_MAC", "nCWLREG + nBL"),
    _r("mac_to_rdmac_accumulate", "channel", "MAC_AB MAC_SB EWMUL AF", "RD_MAC RD_AF", "nMACACC",
       when="!register_mode_switch"),
    _r("mac_to_af_accumulate", "channel", "MAC_AB MAC_SB EWMUL AF", "AF", "nMACACC"),
    _r("rdmac_to_rdmac_nBL", "channel", "RD_MAC RD_AF", "RD_MAC RD_AF RD", "nBL"),
    # mode switch
    _r("tmod_to_any_nMODCH", "channel", "TMOD", "*", "nMODCH"),
)

# Rows of the GDDR6-AiM standard as the public AiM simulator (arkhadem/aim_simulator 0f28a07,
# GDDR6.cpp) defines them, where they add to the shared rows above: the external data bus is
# shared by column reads/writes and the register/global-buffer transfers (RD_MAC, RD_AF, WR_GB,
# WR_MAC), the bank-group bus by all-bank MAC/EWMUL and register reads, and the turnarounds
# are between external-bus transfers only (an internal copy WR_CP -> RD_CP has none). Every
# command still touches the nodes of its scope, so a channel-level row is exactly AiM's.
_AIM_RD_BUS = "RD RD_MAC RD_AF"
_AIM_WR_BUS = "WR WR_AB WR_GB WR_MAC"
AIM = "GDDR6-AiM"
AIM_RULES: tuple[Rule, ...] = (
    _r("aim_rd_bus_nBL", "channel", _AIM_RD_BUS, _AIM_RD_BUS, "nBL", when=AIM),
    _r("aim_wr_bus_nBL", "channel", _AIM_WR_BUS, _AIM_WR_BUS, "nBL", when=AIM),
    _r("aim_wr_nCCDS", "channel", "WR WR_AB WR_GB WR_CP WR_MAC", "WR WR_AB WR_GB WR_CP WR_MAC",
       "nCCDS", when=AIM),
    _r("aim_to_allbank_rd_nCCDL", "channel", "RD MAC_SB RD_CP RD_MAC RD_AF MAC_AB EWMUL",
       "RD_MAC RD_AF MAC_AB EWMUL", "nCCDL", when=AIM),
    _r("aim_allbank_rd_to_rd_nCCDL", "channel", "RD_MAC RD_AF MAC_AB EWMUL",
       "RD MAC_SB RD_CP RD_MAC RD_AF MAC_AB EWMUL", "nCCDL", when=AIM),
    _r("aim_to_allbank_wr_nCCDL", "channel", "WR WR_CP WR_AB WR_MAC EWMUL", "WR_AB WR_MAC EWMUL",
       "nCCDL", when=AIM),
    _r("aim_allbank_wr_to_wr_nCCDL", "channel", "WR_AB WR_MAC EWMUL",
       "WR WR_CP WR_AB WR_MAC EWMUL", "nCCDL", when=AIM),
    # read -> write: the bus turns around (AiM's tRTW = read latency + burst + 3 - write latency
    # + write preamble), for each pair of external transfers
    _r("aim_rd_to_wr_tRTW", "channel", "RD", "WR WR_AB", "nCL + nBL + 3 - nCWL + nWPRE",
       when=AIM),
    _r("aim_rd_to_wrgb_tRTW", "channel", "RD", "WR_GB", "nCL + nBL + 3 - nCWLGB + nWPRE",
       when=AIM),
    _r("aim_rd_to_wrmac_tRTW", "channel", "RD", "WR_MAC", "nCL + nBL + 3 - nCWLREG + nWPRE",
       when=AIM),
    _r("aim_rdreg_to_wr_tRTW", "channel", "RD_MAC RD_AF", "WR WR_AB",
       "nCLREG + nBL + 3 - nCWL + nWPRE", when=AIM),
    _r("aim_rdreg_to_wrgb_tRTW", "channel", "RD_MAC RD_AF", "WR_GB",
       "nCLREG + nBL + 3 - nCWLGB + nWPRE", when=AIM),
    _r("aim_rdreg_to_wrmac_tRTW", "channel", "RD_MAC RD_AF", "WR_MAC",
       "nCLREG + nBL + 3 - nCWLREG + nWPRE", when=AIM),
    # write -> read: write latency + burst + tWTR (S: any bank group, L: the same one)
    _r("aim_wr_to_rd_nWTRS", "channel", "WR", "RD RD_MAC RD_AF", "nCWL + nBL + nWTRS", when=AIM),
    _r("aim_wr_to_rdreg_nWTRL", "channel", "WR", "RD_MAC RD_AF", "nCWL + nBL + nWTRL", when=AIM),
    _r("aim_wr_to_rd_same_bg_nWTRL", "bankgroup", "WR", "RD", "nCWL + nBL + nWTRL", when=AIM),
    _r("aim_wrab_to_rd_nWTRL", "channel", "WR_AB", "RD RD_MAC RD_AF", "nCWL + nBL + nWTRL",
       when=AIM),
    _r("aim_wrgb_to_rd_nWTRS", "channel", "WR_GB", "RD RD_MAC RD_AF", "nCWLGB + nBL + nWTRS",
       when=AIM),
    _r("aim_wrmac_to_rd_nWTRL", "channel", "WR_MAC", "RD RD_MAC RD_AF", "nCWLREG + nBL + nWTRL",
       when=AIM),
    # device options
    _r("af_act_to_af_nRCDRDAF", "bank", ACTS, "AF", "nRCDRDAF", when="af_pseudo_row"),
    _r("af_to_pre_nRTP", "channel", "AF", PRES, "nRTP", when="af_pseudo_row"),
    _r("ewmul_writeback_to_pre", "channel", "EWMUL", PRES, "nCWL + nWR", when="ewmul_writeback"),
    # the host waits for a blocking read's data before it sends the next request
    _r("blocking_read_to_next_request", "channel", "RD_MAC RD_AF", "*",
       "nCLREG + nBL + host_release_cyc", when="blocking_reads"),
)

ALL_RULES: tuple[Rule, ...] = DRAM_RULES + PIM_RULES + AIM_RULES


def config_features(cfg) -> set[str]:
    """The features of a hardware config that ``Rule.when`` can name."""
    feats = {cfg.org.standard}
    if cfg.pim.enabled:
        feats.add("pim")
        for name in ("af_pseudo_row", "ewmul_writeback"):
            if getattr(cfg.pim, name):
                feats.add(name)
        if cfg.host.blocking_reads:
            feats.add("blocking_reads")
        if cfg.pim.mode_switch == "register":
            feats.add("register_mode_switch")
    return feats


def rules_for(cfg) -> list[Rule]:
    """The rules that hold on a config's device (PIM rows only where PIM is enabled)."""
    feats = config_features(cfg)
    out = []
    for r in ALL_RULES:
        if r in PIM_RULES and not cfg.pim.enabled:
            continue
        if r.when.startswith("!"):
            if r.when[1:] in feats:
                continue
        elif r.when and r.when not in feats:
            continue
        out.append(r)
    return out


def rule_namespace(cfg) -> dict[str, int]:
    """Names a latency expression may use: the timing values and the host's release cycles."""
    return {**cfg.timing.cycles, "host_release_cyc": cfg.host.release_cyc}
