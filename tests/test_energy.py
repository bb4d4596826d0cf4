"""Energy model: hand-computed energies for single actions, and whole-run properties."""

from __future__ import annotations

import pytest

from pimsim.config import load_config
from pimsim.energy import COMPONENTS, EnergyError, background_pj, command_energies, energy_of
from pimsim.timing import ChannelTimer, make_stream

# pim-gpt's table: VDD 1.35 V; IDD0 71, IDD2N 60, IDD3N 61, IDD4R 248, IDD4W 231, IDD5AB 286 mA
# per chip of 2 channels; tCK 0.5 ns; nRAS 54, nRP 32, nBL 2, nRFC 210; MAC 1314.5 pJ per
# all-bank command (82.15625 pJ per bank's unit x 16);
# global buffer 0.3 pJ/B; I/O 5.5 pJ/bit; 32-byte columns.
CFG = load_config("pim-gpt")
NS = 0.5e-9  # one tCK


def _j(cmds, open_cyc=0, total=0, **kw):
    return energy_of(CFG, cmds, open_cyc_per_channel=[open_cyc], total_cyc=total, **kw)


def test_act_then_pre_after_nras():
    t = ChannelTimer(CFG.with_refresh(False), log=True)
    t.run_all(make_stream([("ACT", 3, 7), ("PRE", 3, 7)]))
    log = t.log
    assert log[1, 0] - log[0, 0] == CFG.timing.nRAS  # PRE waited exactly nRAS
    e = _j(t.command_counts())
    hand = 1.35 * (71e-3 * (54 + 32) * NS - 61e-3 * 54 * NS - 60e-3 * 32 * NS) / 2
    assert e.by_component["banks"] == pytest.approx(hand, rel=1e-12)
    assert hand == pytest.approx(301.05e-12, rel=1e-4)
    assert e.total_j == pytest.approx(hand)
    # the bank was open from the ACT to the PRE
    assert t.open_cyc(int(log[1, 0]) + 1000) == CFG.timing.nRAS


def test_read_burst():
    e = _j({"RD": 1})
    core = 1.35 * (248 - 61) * 1e-3 * 2 * NS / 2
    io = 32 * 8 * 5.5e-12
    assert e.by_component["banks"] == pytest.approx(core)
    assert e.by_component["io"] == pytest.approx(io)
    assert e.total_j == pytest.approx(core + io)


def test_refresh():
    e = _j({"REFab": 1})
    assert e.by_component["refresh"] == pytest.approx(1.35 * (286 - 61) * 1e-3 * 210 * NS / 2)


def test_background_over_an_idle_interval():
    e = _j({}, open_cyc=0, total=1000)
    assert e.by_component["background"] == pytest.approx(1.35 * 60e-3 * 1000 * NS / 2)
    busy = _j({}, open_cyc=1000, total=1000)
    assert busy.by_component["background"] == pytest.approx(1.35 * 61e-3 * 1000 * NS / 2)
    with pytest.raises(EnergyError):
        background_pj(CFG, 2000, 1000)


def test_all_bank_mac_row():
    t = ChannelTimer(CFG.with_refresh(False))
    t.run_all(make_stream([("MAC_AB", -1, 5, 64), ("MAC_AB", -1, 6, 1)]))
    counts = t.command_counts()
    assert counts["ACT_AB"] == 2 and counts["MAC_AB"] == 65 and counts["PREA"] == 1
    e = _j({"ACT_AB": 1, "MAC_AB": 64, "PREA": 1})
    act_pre = 1.35 * (71e-3 * 86 * NS - 61e-3 * 54 * NS - 60e-3 * 32 * NS) / 2
    assert e.by_component["banks"] == pytest.approx(16 * act_pre)
    assert e.by_component["mac_units"] == pytest.approx(64 * 1314.5e-12)
    assert e.by_component["global_buffer"] == pytest.approx(64 * 32 * 0.3e-12)


@pytest.mark.parametrize("k_bytes", [32, 2048, 4096])
def test_link_transfer_of_k_bytes(k_bytes):
    e = _j({"WR_GB": k_bytes // 32})
    assert e.by_component["io"] == pytest.approx(k_bytes * 8 * 5.5e-12)
    assert e.by_component["global_buffer"] == pytest.approx(k_bytes * 0.3e-12)


def test_every_command_has_an_energy_and_components_are_known():
    from pimsim.spec.commands import COMMANDS

    table = command_energies(CFG)
    assert set(table) == {c.name for c in COMMANDS}
    for ce in table.values():
        assert set(ce.parts) <= set(COMPONENTS)
        assert all(v >= 0 for v in ce.parts.values())


def test_config_without_energy_table_is_a_clear_error():
    import dataclasses

    bare = dataclasses.replace(CFG, energy=None)
    with pytest.raises(EnergyError, match=r"\[energy\]"):
        energy_of(bare, {"RD": 1}, open_cyc_per_channel=[0],
                  total_cyc=0)


def test_every_shipped_config_has_a_table_naming_its_source():
    from pimsim.config import available_configs

    for name in available_configs():
        cfg = load_config(name)
        assert cfg.energy is not None and len(cfg.energy.table) > 20


# ------------------------------------------------------------------ whole runs

@pytest.fixture(scope="module")
def small_prog():
    from compiler.pipeline import compile_model
    from workloads.models.resolve import resolve_model

    src, name = resolve_model("gpt2-small", weights=False)
    return compile_model(src, CFG, name=name).program


def test_breakdown_sums_to_the_total_and_names_the_table(small_prog):
    from pimsim.generate import run_generation

    rep = run_generation(small_prog, CFG, prompt=[0], n_tokens=3)
    e = rep.energy
    assert e["table"] == CFG.energy.table
    assert sum(e["by_component"].values()) == pytest.approx(e["j_per_token"])
    assert sum(e["by_command"].values()) == pytest.approx(e["j_per_token"])
    assert len(e["per_token_j"]) == 3
    assert e["by_component"]["mac_units"] > 0 and e["by_component"]["background"] > 0


def test_energy_per_token_grows_with_context(small_prog):
    from pimsim.generate import run_generation

    early = run_generation(small_prog, CFG, prompt=[0], n_tokens=2).energy["j_per_token"]
    late = run_generation(small_prog, CFG, prompt=[0] * 400, n_tokens=2).energy["j_per_token"]
    assert late > early * 1.01


def test_doubling_generated_tokens_roughly_doubles_total_energy(small_prog):
    from pimsim.generate import run_generation

    a = run_generation(small_prog, CFG, prompt=[0], n_tokens=8).energy
    b = run_generation(small_prog, CFG, prompt=[0], n_tokens=16).energy
    ratio = (b["j_per_token"] * 16) / (a["j_per_token"] * 8)
    assert 1.9 < ratio < 2.1
