"""Reuse across refreshes: a run of (MAC row, accumulator read) pairs is one memo unit however
many refreshes fall inside it (``fast_forward_pairs`` issues the pairs around each refresh one
by one and looks for the period again after it), and a full memo is cleared and refilled.

Held: the fast executor with and without a memo equals the command-by-command one (cycles,
command counts, row hits, refreshes, open-bank time, controller state), refresh on and off; a
long run is one unit; a decode step of a model gives the same cycles, commands and energy as
the command-by-command executor; a memo far too small for the units is cleared (never left
full) and the result stays the same.
"""

from __future__ import annotations

import dataclasses

import pytest

from pimsim.config import load_config
from pimsim.decode import DecodeSimulator
from pimsim.generate import TokenEnergy
from pimsim.timing import ChannelTimer, make_stream
from pimsim.timing.memo import memo_usage, new_memo
from pimsim.timing.state import ST_REFRESHES
from tests.test_timing_properties import assert_same_schedule
from workloads.session import compile_model


def _pairs(n: int, row0: int = 0) -> list:
    return [it for j in range(n) for it in (("MAC_AB", -1, row0 + j, 8), ("RD_MAC", -1, 0, 1))]


@pytest.mark.parametrize("refresh", [True, False])
def test_a_long_pair_run_is_one_unit_across_refreshes(refresh):
    cfg = load_config("pim-gpt", refresh=refresh)
    # a write first: a unit is keyed relative to the last issue (none before it); then pairs
    # few enough for a key in the memo's scratch
    s = make_stream([("WR", 0, 3, 1)] + _pairs(1500))
    memo = ChannelTimer(cfg, fast=True, memo=True)
    memo.run_all(s)
    plain = ChannelTimer(cfg, fast=True)
    plain.run_all(s)
    slow = ChannelTimer(cfg, fast=False)
    slow.run_all(s)
    assert_same_schedule(memo, slow)
    assert_same_schedule(plain, slow)
    u = memo_usage(memo.memo)
    assert u["hits"] + u["misses"] == 1  # the whole run: one unit
    n_ref = int(slow.stats[ST_REFRESHES])
    assert (n_ref >= 3) if refresh else (n_ref == 0)


@pytest.mark.parametrize("refresh", [True, False])
def test_pair_runs_with_refreshes_replayed_equal_command_by_command(refresh):
    """Layers of pair runs of several lengths, repeated: the refresh lands at other points of
    the runs each time; the replays and the runs recorded with a refresh inside them give the
    one-by-one schedule."""
    cfg = load_config("pim-gpt", refresh=refresh)
    layer = _pairs(400) + [("WR", b, 3, 1) for b in range(16)] + _pairs(37, 500) + _pairs(90, 7)
    s = make_stream(layer * 8)
    memo = ChannelTimer(cfg, fast=True, memo=True)
    memo.run_all(s)
    slow = ChannelTimer(cfg, fast=False)
    slow.run_all(s)
    assert_same_schedule(memo, slow)
    assert memo_usage(memo.memo)["hits"] > 0
    if refresh:
        assert int(slow.stats[ST_REFRESHES]) > 10


def test_a_full_memo_is_cleared_and_the_result_stays():
    cfg = load_config("pim-gpt", refresh=True)
    layer = _pairs(60) + [("WR", b, 3, 1) for b in range(16)] + _pairs(20, 300)
    s = make_stream(layer * 12)
    small = ChannelTimer(cfg, fast=True, memo=True)
    small.memo = new_memo(1 << 10, 2)
    small.run_all(s)
    slow = ChannelTimer(cfg, fast=False)
    slow.run_all(s)
    assert_same_schedule(small, slow)
    u = memo_usage(small.memo)
    assert u["cleared"] > 0
    assert u["entries"] <= 2 and u["words"] <= 1 << 10


def _tokens(sim, cfg, positions):
    meter = TokenEnergy(sim)
    out = []
    for p in positions:
        meter.begin()
        tt = sim.run_token(p)
        out.append((tt.start_cyc, tt.end_cyc, tt.step_end.tolist(), meter.end(tt).total_j))
    return out, sim.command_counts, sim.row_hits, sim.row_misses, \
        int(sim.states.stats[:, ST_REFRESHES].sum())


@pytest.mark.parametrize("refresh", [True, False])
def test_decode_steps_equal_the_command_by_command_executor(refresh):
    cfg = load_config("pim-gpt")
    cfg = dataclasses.replace(cfg, refresh=dataclasses.replace(cfg.refresh, enabled=refresh))
    prog = compile_model("tiny", cfg).program
    positions = [3, 4, 5, 6]
    fast = _tokens(DecodeSimulator(prog, cfg), cfg, positions)
    slow = _tokens(DecodeSimulator(prog, cfg, fast=False), cfg, positions)
    assert fast == slow
    assert (fast[4] > 0) == refresh
