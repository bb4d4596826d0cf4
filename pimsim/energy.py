"""Energy model: the simulator counts actions; an energy table turns them into joules.

DRAM command energies follow the IDD method (Micron / DRAMPower style), per chip and divided
among the chip's channels, with times from the config's timing (cycles x tCK):

    E_ACT+PRE = VDD * (IDD0 * (tRAS + tRP) - IDD3N * tRAS - IDD2N * tRP)     one bank
    E_RD      = VDD * (IDD4R - IDD3N) * tBurst      E_WR = VDD * (IDD4W - IDD3N) * tBurst
    E_REF     = VDD * (IDD5AB - IDD3N) * tRFC
    background = VDD * (IDD3N * t_any_bank_open + IDD2N * t_all_precharged)

An all-bank activate counts one ACT+PRE per bank. PIM MACs, the global buffer, the off-chip I/O
(every byte that crosses an ASIC-PIM link) and the ASIC (per vector-op element and per SRAM
byte) take their energies from the table directly. Components: ``banks`` (activation and column
access), ``mac_units``, ``global_buffer``, ``io``, ``asic``, ``background``, ``refresh``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pimsim.config import Energy, HwConfig

COMPONENTS = ("banks", "mac_units", "global_buffer", "io", "asic", "background", "refresh",
              "interconnect")


class EnergyError(ValueError):
    pass


@dataclass(frozen=True)
class CommandEnergy:
    """Energy of one command, split over components (pJ)."""

    parts: dict[str, float]

    @property
    def total_pj(self) -> float:
        return sum(self.parts.values())


def _table(cfg: HwConfig) -> Energy:
    if cfg.energy is None:
        raise EnergyError(f"hardware config {cfg.name!r} has no [energy] table; add one (see "
                          f"hwconfigs/pim-gpt.toml) to report energy")
    return cfg.energy


def idd_energies_pj(cfg: HwConfig) -> dict[str, float]:
    """Per-channel IDD-method energies (pJ): act_pre (one bank), rd, wr (one burst), ref."""
    e = _table(cfg)
    t = cfg.timing
    tck_s = cfg.tCK_ps * 1e-12
    v = e.vdd_v
    share = 1.0 / e.channels_per_chip
    ma = 1e-3
    t_ras, t_rp = t.nRAS * tck_s, t.nRP * tck_s
    t_burst = t.nBL * tck_s
    act_pre = v * (e.idd0_ma * (t_ras + t_rp) - e.idd3n_ma * t_ras - e.idd2n_ma * t_rp) * ma
    rd = v * (e.idd4r_ma - e.idd3n_ma) * ma * t_burst
    wr = v * (e.idd4w_ma - e.idd3n_ma) * ma * t_burst
    ref = v * (e.idd5ab_ma - e.idd3n_ma) * ma * t.nRFC * tck_s
    return {k: x * share * 1e12 for k, x in
            (("act_pre", act_pre), ("rd", rd), ("wr", wr), ("ref", ref))}


def command_energies(cfg: HwConfig) -> dict[str, CommandEnergy]:
    """Energy of every command of the config (pJ, split over components)."""
    e = _table(cfg)
    idd = idd_energies_pj(cfg)
    o = cfg.org
    io = o.column_bytes * 8 * e.io_pj_per_bit
    gb = o.column_bytes * e.gb_pj_per_byte
    banks = o.banks
    units = banks // cfg.pim.banks_per_pim_unit if cfg.pim.enabled else 0
    mac_ab = e.mac_unit_pj * units
    table = {
        "ACT": {"banks": idd["act_pre"]},  # the matching PRE costs nothing extra
        "PRE": {},
        "PREA": {},
        "ACT_AB": {"banks": idd["act_pre"] * banks},
        "RD": {"banks": idd["rd"], "io": io},
        "WR": {"banks": idd["wr"], "io": io},
        "REFab": {"refresh": idd["ref"]},
        "MAC_AB": {"mac_units": mac_ab, "global_buffer": gb},
        "MAC_SB": {"mac_units": e.mac_unit_pj, "global_buffer": gb},
        "EWMUL": {"mac_units": mac_ab, "global_buffer": gb},
        "WR_AB": {"banks": idd["wr"] * banks},
        "WR_GB": {"global_buffer": gb, "io": io},
        "RD_MAC": {"io": io},
        "WR_MAC": {"io": io},
        "AF": {"mac_units": mac_ab},
        "RD_AF": {"io": io},
        "RD_CP": {"banks": idd["rd"], "global_buffer": gb},
        "WR_CP": {"banks": idd["wr"], "global_buffer": gb},
        "TMOD": {"banks": e.mode_switch_pj},
    }
    return {k: CommandEnergy(v) for k, v in table.items()}


def background_pj(cfg: HwConfig, open_cyc: int, total_cyc: int) -> float:
    """Standby energy of one channel: active standby while any bank is open, else precharged."""
    e = _table(cfg)
    if open_cyc > total_cyc:
        raise EnergyError(f"open cycles {open_cyc} exceed the interval {total_cyc}")
    tck_s = cfg.tCK_ps * 1e-12
    j = e.vdd_v * 1e-3 * (e.idd3n_ma * open_cyc + e.idd2n_ma * (total_cyc - open_cyc)) * tck_s
    return j / e.channels_per_chip * 1e12


def asic_pj(cfg: HwConfig, op_elems: dict[str, int]) -> float:
    """ASIC energy for ``{op: elements processed}``: every pass over the data is one vector
    operation per element, and every element is read and written once in SRAM (bf16)."""
    e = _table(cfg)
    a = cfg.asic
    total = 0.0
    for op, n in op_elems.items():
        key = "reduction" if op == "argmax" else op
        passes = a.op_passes.get(key, 1)
        total += n * passes * e.asic_op_pj + n * 2 * 2 * e.asic_sram_pj_per_byte
    return total


@dataclass
class EnergyReport:
    """Energy of an interval: totals by component and by command (joules)."""

    table: str
    total_j: float = 0.0
    by_component: dict[str, float] = field(default_factory=lambda: {c: 0.0 for c in COMPONENTS})
    by_command: dict[str, float] = field(default_factory=dict)

    def add(self, other: "EnergyReport") -> None:
        self.total_j += other.total_j
        for k, v in other.by_component.items():
            self.by_component[k] = self.by_component.get(k, 0.0) + v
        for k, v in other.by_command.items():
            self.by_command[k] = self.by_command.get(k, 0.0) + v


def energy_of(cfg: HwConfig, commands: dict[str, int], *, open_cyc_per_channel: list[int],
              total_cyc: int, asic_elems: dict[str, int] | None = None) -> EnergyReport:
    """Energy of an interval of ``total_cyc`` cycles in which ``commands`` issued (summed over
    channels), each channel had a bank open for ``open_cyc_per_channel[c]`` cycles, and the
    ASIC processed ``asic_elems``."""
    e = _table(cfg)
    per_cmd = command_energies(cfg)
    rep = EnergyReport(table=e.table)
    for name, n in commands.items():
        if not n:
            continue
        ce = per_cmd[name]
        for comp, pj in ce.parts.items():
            rep.by_component[comp] += pj * n * 1e-12
        rep.by_command[name] = ce.total_pj * n * 1e-12
    bg = sum(background_pj(cfg, oc, total_cyc) for oc in open_cyc_per_channel) * 1e-12
    rep.by_component["background"] += bg
    rep.by_command["(background)"] = bg
    if asic_elems:
        aj = asic_pj(cfg, asic_elems) * 1e-12
        rep.by_component["asic"] += aj
        rep.by_command["(asic)"] = aj
    rep.total_j = sum(rep.by_component.values())
    return rep
