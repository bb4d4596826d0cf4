"""The time accounting (pimsim.accounting): every cycle of a token in one named share, the shares
summing to the token's time under both schedules, per-op time along the critical path."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest

from pimsim.accounting import SHARE_OF_CMD, TIME_SHARES, TimeAccount
from pimsim.decode import DecodeSimulator, TokenTiming
from pimsim.spec.commands import COMMANDS, N_CMDS
from workloads.session import compile_model, hw_config, simulate

# the shares that are what is left of a step after its named parts: kept small
RESIDUAL_SHARES = ("stall", "queueing")


@lru_cache(maxsize=None)
def _sim_parts(model: str, hw: str, devices: int | None):
    cfg = hw_config(hw, devices=devices)
    return compile_model(model, cfg).programs[0], cfg


def _check_tokens(model, hw, schedule, positions, devices=None):
    """Every token's shares and per-op times sum to its cycles; returns the summed shares."""
    prog, cfg = _sim_parts(model, hw, devices)
    sim = DecodeSimulator(prog, cfg, schedule=schedule)
    acct = TimeAccount(sim)
    total = np.zeros(len(TIME_SHARES))
    for pos in positions:
        tt = sim.run_token(pos)
        shares, ops = acct.split(tt)
        cyc = tt.end_cyc - tt.start_cyc
        assert abs(shares.sum() - cyc) <= 1e-6 * cyc, (pos, shares.sum(), cyc)
        assert abs(sum(ops.values()) - cyc) <= 1e-6 * cyc
        assert (shares >= -1e-9).all(), dict(zip(TIME_SHARES, shares))
        total += shares
    frac = dict(zip(TIME_SHARES, total / total.sum()))
    assert "other" not in frac
    for k in RESIDUAL_SHARES:
        assert frac[k] < 0.02, frac
    return frac


def test_every_command_claims_a_share():
    assert set(SHARE_OF_CMD) == {c.name for c in COMMANDS}
    assert {s for s, _ in SHARE_OF_CMD.values()} <= set(TIME_SHARES)


def _timing(start, end, t0=0, t1=None):
    n = len(start)
    return TokenTiming(0, t0, max(end) if t1 is None else t1, np.array(start, np.int64),
                       np.array(end, np.int64), np.zeros((n, N_CMDS), np.int64),
                       np.zeros(n, np.int64), np.zeros((n, 2), np.int64))


class _Steps:
    def __init__(self, kind):
        self.kind = np.array(kind, np.int64)


class _Step:
    def __init__(self, op, deps):
        self.op, self.deps = op, deps


class _FakeSim:
    """What TimeAccount reads of a simulator: steps (op, deps, kind), schedule, link, timing."""

    def __init__(self, ops_deps_kinds, schedule):
        from pimsim.config import load_config

        self.prog = type("P", (), {"steps": [_Step(o, d) for o, d, _ in ops_deps_kinds]})()
        self.steps = _Steps([k for _, _, k in ops_deps_kinds])
        self.schedule = schedule
        self.link_lat = 0
        self.cfg = load_config("pim-gpt")


def test_critical_path_tiles_the_token_and_skips_the_steps_it_did_not_wait_for():
    # ASIC a (0-10) and PIM b (0-30) in parallel, ASIC c after a (10-15), PIM d after b and c
    # (30-50): the path is d <- b; a and c are hidden behind b
    sim = _FakeSim([("a", (), 0), ("b", (), 1), ("c", (0,), 0), ("d", (1, 2), 1)], "overlap")
    acct = TimeAccount(sim)
    tt = _timing([0, 0, 10, 30], [10, 30, 15, 50])
    idx, lo, hi, gap = acct.critical_path(tt)
    assert idx.tolist() == [3, 1] and lo.tolist() == [30, 0] and hi.tolist() == [50, 30]
    assert gap == 0
    shares, ops = acct.split(tt)
    assert shares.sum() == 50 and ops == {"b": 30.0, "d": 20.0}
    assert shares[TIME_SHARES.index("asic")] == 0
    # the channels take PIM steps in order: a PIM step whose predecessor on the channels ended
    # after its own start owns only the time from that end
    sim = _FakeSim([("p", (), 1), ("q", (), 1)], "overlap")
    idx, lo, hi, gap = TimeAccount(sim).critical_path(_timing([0, 5], [20, 32]))
    assert idx.tolist() == [1, 0] and lo.tolist() == [20, 0] and gap == 0


def test_pim_step_split_follows_the_commands_and_the_link():
    from pimsim.spec.commands import cmd_id

    sim = _FakeSim([("p", (), 1)], "serial")
    sim.link_lat = 8
    acct = TimeAccount(sim)
    t = sim.cfg.timing
    tt = _timing([0], [400])
    tt.step_counts[0, cmd_id("MAC_AB")] = 50
    tt.step_counts[0, cmd_id("ACT_AB")] = 1
    tt.step_wait[0] = (4, 10)  # lead 4, the link went on 10 cycles after the commands
    s = dict(zip(TIME_SHARES, acct.split(tt)[0]))
    assert s["pim_mac"] == 50 * t.nCCDL and s["activate"] == t.nRCDRDMAC
    assert s["link"] == 8 + 10 + 4
    assert s["stall"] == 400 - s["pim_mac"] - s["activate"] - s["link"]
    # more command cycles than the step had: scaled down together, nothing left over
    tt.step_counts[0, cmd_id("MAC_AB")] = 1000
    s = dict(zip(TIME_SHARES, acct.split(tt)[0]))
    assert s["stall"] == 0 and sum(s.values()) == pytest.approx(400)
    assert s["pim_mac"] / s["activate"] == pytest.approx(1000 * t.nCCDL / t.nRCDRDMAC)


@pytest.mark.parametrize("schedule", ["serial", "overlap"])
def test_tiny_every_token_split_exactly(schedule):
    frac = _check_tokens("tiny", "pim-gpt", schedule, range(4))
    assert frac["pim_mac"] > 0 and frac["asic"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["serial", "overlap"])
def test_gpt2_small_on_pim_gpt_every_cycle_named(schedule):
    frac = _check_tokens("gpt2-small", "pim-gpt", schedule, range(3))
    # the PIM-GPT device's time: MACs, activations, precharges and mode switches lead
    assert min(frac[k] for k in ("pim_mac", "activate", "precharge", "mode_switch")) > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["serial", "overlap"])
def test_llama2_7b_on_8_aim_devices_every_cycle_named(schedule):
    frac = _check_tokens("llama2-7b", "aim-gddr6", schedule, range(2), devices=8)
    assert frac["interconnect"] > 0.05


@pytest.mark.parametrize("schedule", ["serial", "overlap"])
def test_report_shares_and_ops_sum_to_the_token_time(schedule):
    rep = simulate("tiny", "pim-gpt", tokens=3, schedule=schedule).report
    cyc_per_token = rep.ms_per_token * 1e9 / rep.tCK_ps
    assert sum(rep.breakdown_cyc.values()) == pytest.approx(cyc_per_token, abs=1)
    assert sum(rep.breakdown.values()) == pytest.approx(1)
    assert sum(rep.per_op.values()) == pytest.approx(rep.ms_per_token)
    assert rep.breakdown["interconnect"] == 0 and rep.breakdown["stall"] < 0.02
    time_line = next(ln for ln in rep.summary().splitlines() if ln.startswith("  time:"))
    assert "interconnect" not in time_line and "other" not in time_line
    assert all(f"{k} " in time_line for k, v in rep.breakdown.items() if v >= 0.0005)
    ops_line = next(ln for ln in rep.summary().splitlines() if "per op" in ln)
    assert all(k not in ops_line.split(":")[1] for k, v in rep.per_op.items() if v == 0)


def test_pipeline_latency_is_split_including_the_sends_and_waits():
    rep = simulate("tiny", "pim-gpt", tokens=3, devices=2, pp=2, schedule="overlap").report
    cyc_per_token = rep.ms_per_token * 1e9 / rep.tCK_ps
    assert sum(rep.breakdown_cyc.values()) == pytest.approx(cyc_per_token, abs=1)
    assert rep.breakdown["interconnect"] > 0 and rep.breakdown["queueing"] >= 0
    assert sum(rep.per_op.values()) == pytest.approx(rep.ms_per_token)
    assert rep.per_op["stage_send"] > 0


def test_json_carries_the_shares():
    out = subprocess.run([sys.executable, "-m", "workloads.cli", "run", "tiny", "--tokens", "2",
                          "--schedule", "overlap", "--json"], capture_output=True, text=True,
                         check=True)
    rep = json.loads(out.stdout)
    assert list(rep["breakdown"]) == list(TIME_SHARES) == list(rep["breakdown_cyc"])
    assert sum(rep["per_op"].values()) == pytest.approx(rep["ms_per_token"])


def test_batched_steps_are_split_exactly_too():
    rep = simulate("tiny", "pim-gpt", tokens=3, prompt=4, batch=2, prefill="batched",
                   schedule="overlap").report
    cyc_per_step = np.mean(rep.per_token_ms) * 1e9 / rep.tCK_ps
    assert sum(rep.breakdown_cyc.values()) == pytest.approx(cyc_per_step, abs=1)
    assert sum(rep.per_op.values()) == pytest.approx(np.mean(rep.per_token_ms))
