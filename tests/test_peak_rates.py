"""Every shipped config's peak MAC rate (pimsim.peak, from the rule table and organisation)
against the figure its config comment cites, and the MAC schedule of PIM units shared by banks.

A published TFLOPS figure is rounded (AiM "1 TFLOPS", HBM-PIM "1.2 TFLOPS"); each entry keeps
the figure as printed and the source's own arithmetic behind it (units x lanes x 2 FLOP x unit
clock). The config's rate, at the source's unit clock, must be within 1 % of that arithmetic,
and the arithmetic must round to the printed figure. Where the config's clock differs from the
source's (hbm-pim runs the 2.0 Gb/s/pin timing set, the 1.2 TFLOPS figure is at 2.4 Gb/s/pin)
the entry names the config's unit clock, and the config's own rate is checked too.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pimsim.config import available_configs, load_config
from pimsim.peak import peak_rate

HWCONFIGS = Path(__file__).resolve().parent.parent / "hwconfigs"

# config -> (printed figure in TFLOPS, its significant digits, what it counts (units of the
# config that one figure covers), the source's arithmetic in TFLOPS, the source's unit clock
# in Hz, the config's own unit clock in Hz, status: "cited" / "derived" / "assumed")
AIM_CHIP = 32 * 16 * 2 * 1e9 / 1e12  # [isscc22] 32 banks x 16 BF16 MACs x 2 FLOP x 1 GHz
PUBLISHED = {
    # [isscc22] 1 TFLOPS per chip of 2 channels; 32 channels = 16 chips
    "aim-gddr6": (1.0, 1, 16, AIM_CHIP, 1e9, 1e9, "cited"),
    # [hbmpim] 1.2 TFLOPS per stack: 128 units x 16 FP16 lanes x 2 FLOP x 300 MHz; the config
    # runs the [saitsim] timing set at tCK 1 ns, a PIM op every nCCDL = 4 ns (250 MHz)
    "hbm-pim": (1.2, 2, 1, 128 * 16 * 2 * 300e6 / 1e12, 300e6, 250e6, "cited"),
    # [assumed] PIM-GPT publishes no peak: its 128 banks at AiM's per-bank rate = 4 AiM chips
    "pim-gpt": (4.0, 1, 1, 4 * AIM_CHIP, 1e9, 1e9, "assumed"),
    # [derived] CENT publishes no system peak: devices x 16 AiM chips x the ISSCC 2022 figure
    "aim-cxl-8": (1.0, 1, 8 * 16, AIM_CHIP, 1e9, 1e9, "derived"),
    "aim-cxl-32": (1.0, 1, 32 * 16, AIM_CHIP, 1e9, 1e9, "derived"),
    # [attacc] (scale-snu/attacc_simulator c60005143a6b492d7ef83231723386478b59a506, src/config.py)
    # 670.4 GB/s per stack x BW_SCALE 16 x 1 FLOP/B, bank PIM without the power constraint; the
    # stack's command clock 1.3 GHz (5.2 Gb/s/pin), a MACAB every 4 tCK = 325 MHz unit clock.
    # Derived: AttAcc prints no TFLOPS figure, the arithmetic is its simulator's
    "hbm3-pim": (10.7, 3, 1, 670.4e9 * 16 / 1e12, 1.3e9 / 4, 1e12 / 769 / 4, "derived"),
    # [derived] its Ramulator preset's power-constrained nCCDAB = 6: 2/3 of the NPC rate
    "hbm3-pim-power": (7.2, 2, 1, 670.4e9 * 16 * 4 / 6 / 1e12, 1.3e9 / 6, 1e12 / 769 / 6,
                       "derived"),
    # [jedec] plain DRAM: no MAC units
    "gddr6": (0.0, 1, 1, 0.0, 0.0, 0.0, "cited"),
}


def test_every_shipped_config_has_a_published_figure():
    assert sorted(PUBLISHED) == sorted(available_configs())


@pytest.mark.parametrize("hw", sorted(PUBLISHED))
def test_peak_rate_matches_its_source(hw):
    figure, digits, per, exact_tflops, src_clock_hz, cfg_clock_hz, status = PUBLISHED[hw]
    r = peak_rate(load_config(hw))
    if not exact_tflops:
        assert r.macs_per_s == 0 and r.units == 0
        return
    assert r.unit_clock_hz == pytest.approx(cfg_clock_hz, rel=1e-12)
    at_source_clock = r.tflops * src_clock_hz / r.unit_clock_hz / per
    assert at_source_clock == pytest.approx(exact_tflops, rel=0.01), r.describe()
    assert float(f"{exact_tflops:.{digits}g}") == figure  # the printed figure is this rounded
    if status != "assumed":
        # where the clocks agree, the config's own rate is the published one
        own = r.tflops / per
        assert own == pytest.approx(exact_tflops * cfg_clock_hz / src_clock_hz, rel=0.01)


@pytest.mark.parametrize("hw", sorted(PUBLISHED))
def test_config_comment_cites_its_peak(hw):
    text = (HWCONFIGS / f"{hw}.toml").read_text()
    line = re.search(r"^# Peak MAC rate: \[(\w+)\]", text, re.M)
    assert line, f"{hw}.toml has no '# Peak MAC rate:' citation"
    status = PUBLISHED[hw][6]
    assert (line.group(1) == "assumed") == (status == "assumed")
    assert (line.group(1) == "derived") == (status == "derived")
    r = peak_rate(load_config(hw))
    if r.units:  # the comment states the config's total, to the digits printed
        assert f"{r.tflops:.6g} TFLOPS" in text.replace("\n# ", " "), r.describe()


def test_hbm_pim_is_half_its_per_bank_rate():
    """HBM-PIM's unit serves two banks: half the rate of one unit per bank at equal lanes."""
    cfg = load_config("hbm-pim")
    one = cfg.replace(pim=dataclasses.replace(cfg.pim, banks_per_pim_unit=1))
    assert peak_rate(cfg).macs_per_s * 2 == peak_rate(one).macs_per_s
    assert peak_rate(cfg).describe().startswith("1.024 TFLOPS = 2 x 1 device(s) x 16 channels x 8 units")


def test_shared_units_double_the_mac_commands_not_the_numbers():
    """With 2 banks per unit the matrix-vector products issue every all-bank MAC once for the
    even and once for the odd banks: twice the MAC_AB commands, more cycles, the same MAC unit
    energy (half the units per command), the same tokens and logits."""
    from workloads.session import simulate

    cfg = load_config("hbm-pim")
    one = cfg.replace(pim=dataclasses.replace(cfg.pim, banks_per_pim_unit=1))
    two = simulate("tiny", cfg, tokens=2, prompt=1, functional=True, keep_logits=True)
    ref = simulate("tiny", one, tokens=2, prompt=1, functional=True, keep_logits=True)
    assert two.report.commands["MAC_AB"] == 2 * ref.report.commands["MAC_AB"]
    assert two.report.tokens == ref.report.tokens
    for a, b in zip(two.logits, ref.logits):
        assert (a == b).all()
    # each unit reads and multiplies each bank's column once either way; the global buffer
    # (GRF_A) is read by every MAC command, so its share grows with the commands
    e2, e1 = two.report.energy["by_component"], ref.report.energy["by_component"]
    assert e2["mac_units"] == pytest.approx(e1["mac_units"], rel=1e-12)
    assert e2["global_buffer"] > e1["global_buffer"]
    assert two.report.cycles > ref.report.cycles
