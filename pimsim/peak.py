"""Peak MAC rate of a config's PIM units, from its timing rules and organisation.

A PIM unit has ``pim.mac_lanes_per_bank`` multipliers and is shared by ``pim.banks_per_pim_unit``
banks; each all-bank MAC command (MAC_AB) makes every unit of a channel multiply one column of one
of its banks by the global buffer, so a unit does ``lanes`` MACs per MAC_AB. Back-to-back MAC_ABs
are spaced by their self gap in the compiled rule table (:mod:`pimsim.timing.tables`; nCCDL on the
shipped configs). The peak is every unit of every channel of every device busy at that rate::

    peak MAC/s = devices x channels x (banks / banks_per_pim_unit) x lanes / (gap_cyc x tCK)

The MAC unit clock is ``1 / (gap_cyc x tCK)``: one MAC command per unit per gap. A FLOP count is
2 per MAC (multiply and add), the convention of the published TFLOPS figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from pimsim.config import HwConfig
from pimsim.spec.commands import cmd_id


@dataclass(frozen=True)
class PeakRate:
    """A config's peak MAC rate and what it is made of."""

    devices: int
    channels: int  # per device
    units_per_channel: int
    lanes: int  # MACs per unit per MAC command
    gap_cyc: int  # cycles between back-to-back MAC_AB commands (rule table)
    tck_ps: int

    @property
    def unit_clock_hz(self) -> float:
        """MAC commands per unit per second."""
        return 0.0 if not self.gap_cyc else 1e12 / (self.gap_cyc * self.tck_ps)

    @property
    def units(self) -> int:
        return self.devices * self.channels * self.units_per_channel

    @property
    def macs_per_s(self) -> float:
        return self.units * self.lanes * self.unit_clock_hz

    @property
    def flops(self) -> float:
        return 2.0 * self.macs_per_s

    @property
    def tflops(self) -> float:
        return self.flops / 1e12

    def describe(self) -> str:
        if not self.units:
            return "no PIM units (peak MAC rate 0)"
        return (f"{self.tflops:.4g} TFLOPS = 2 x {self.devices} device(s) x {self.channels} "
                f"channels x {self.units_per_channel} units x {self.lanes} lanes x "
                f"{self.unit_clock_hz / 1e6:.4g} MHz (a MAC command every {self.gap_cyc} "
                f"cycles of {self.tck_ps} ps)")


def mac_gap_cyc(cfg: HwConfig) -> int:
    """Cycles between back-to-back all-bank MAC commands on an open row: MAC_AB's self gap in
    the config's compiled rule table (0 without PIM)."""
    if not cfg.pim.enabled:
        return 0
    from pimsim.timing.tables import CT_SELF_GAP, build_tables

    return int(build_tables(cfg).cmd_tab[cmd_id("MAC_AB"), CT_SELF_GAP])


def peak_rate(cfg: HwConfig) -> PeakRate:
    """The config's peak MAC rate (a system config: every device)."""
    p, o = cfg.pim, cfg.org
    units = o.banks // p.banks_per_pim_unit if p.enabled else 0
    return PeakRate(devices=cfg.system.devices, channels=o.channels, units_per_channel=units,
                    lanes=p.mac_lanes_per_bank if p.enabled else 0, gap_cyc=mac_gap_cyc(cfg),
                    tck_ps=cfg.tCK_ps)
