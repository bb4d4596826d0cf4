"""Blocks: a segment that repeats a block of items (the passes of a batched weight product) runs
block by block, each block one memo unit replayed where an equal block ran before from an
equivalent state (pimsim.timing.token_runner.run_blocks, pimsim.timing.memo.block_lookup).

Held: the block found is the items' smallest period (a tail that is a leading part of it is
left over); a batched step with blocks takes the cycles, commands, row hits and misses,
refreshes and energy of the same step with every segment run whole, and of the command-by-command
executor, refresh on and off, with the in-order and the FR-FCFS controller, with a memo warmed
by earlier steps; periods of blocks stepped in closed form (a block starting from the key of an
earlier one) give the result of running every block.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pimsim.batch import BatchedProgram
from pimsim.config import load_config
from pimsim.decode import DecodeSimulator, StreamBuilder
from pimsim.generate import TokenEnergy
from pimsim.spec.commands import SYNC
from pimsim.system import resolve
from pimsim.timing.memo import memo_usage, new_memo
from pimsim.timing.state import ST_REFRESHES
from pimsim.timing.token_runner import MIN_BLOCK_ITEMS, block_period
from workloads.session import compile_model, system_programs


def _items(rows: list[int]) -> np.ndarray:
    return np.array([[3, -1, r, 8, 0] for r in rows], np.int64).reshape(-1, 5)


def test_block_period_is_the_smallest_period():
    block = list(range(10))
    m = MIN_BLOCK_ITEMS
    assert block_period(_items(block * 5), 0, 50, m) == 10
    assert block_period(_items(block * 4 + block[:3]), 0, 43, m) == 10  # a leading part left
    assert block_period(_items([7] + block * 4), 0, 41, m) == 0  # no repeat from the start
    assert block_period(_items(block + block[:9]), 0, 19, m) == 0  # fewer than two blocks
    assert block_period(_items([1, 2] * 20), 0, 40, m) == 0  # shorter than MIN_BLOCK_ITEMS
    assert block_period(_items([1, 2] * 20), 0, 40, 2) == 2
    assert block_period(_items(list(range(m)) * 3), 0, 3 * m, m) == m
    it = _items(block * 4)
    it[4, 0] = SYNC
    it[14, 0] = SYNC
    it[24, 0] = SYNC
    it[34, 0] = SYNC
    assert block_period(it, 0, 40, m) == 0  # a SYNC ends a segment: no blocks across it
    big = _items([99] * 5 + block * 3)
    assert block_period(big, 5, 35, m) == 10  # within [lo, hi)


def _cfg(hw: str, tp: int, refresh: bool, scheduler: str | None):
    cfg = load_config(hw)
    if tp > 1:
        cfg = dataclasses.replace(cfg, system=resolve(tp, tp, 1, cfg.system))
    cfg = dataclasses.replace(cfg, refresh=dataclasses.replace(cfg.refresh, enabled=refresh))
    if scheduler is not None:
        cfg = dataclasses.replace(cfg, controller=dataclasses.replace(cfg.controller,
                                                                      scheduler=scheduler))
    return cfg


def _steps(bprog, cfg, steps, *, blocks: bool, fast: bool = True, memo=True, cycles=True):
    sb = StreamBuilder(bprog)
    sb.build(steps[0])
    for k, s in enumerate(sb.pim_steps):  # the tiny model's passes are short: any block counts
        for c in range(bprog.geo.channels):
            sb.seg_block[c, k] = 0 if not blocks or s.matrix is None else \
                block_period(sb.items, sb.seg_lo[c, k], sb.seg_hi[c, k], 2)
    sim = DecodeSimulator(bprog, cfg, fast=fast, streams=sb, memo=memo)
    sim.block_cycles = cycles
    return _run(sim, cfg, steps) + (sb.seg_block.max(),)


def _run(sim, cfg, steps) -> tuple:
    """Each step's start, end, step ends and energy; then commands, row hits and misses and
    refreshes of the whole run."""
    meter = TokenEnergy(sim) if cfg.energy is not None else None
    out = []
    for ps in steps:
        if meter is not None:
            meter.begin()
        tt = sim.run_token(ps)
        j = meter.end(tt).total_j if meter is not None else None
        out.append((tt.start_cyc, tt.end_cyc, tt.step_end.tolist(), j))
    return out, sim.command_counts, sim.row_hits, sim.row_misses, \
        int(sim.states.stats[:, ST_REFRESHES].sum())


@pytest.mark.parametrize("hw,tp,refresh,scheduler", [
    ("aim-gddr6", 2, True, None), ("aim-gddr6", 2, False, None), ("pim-gpt", 1, True, None),
    ("aim-gddr6", 2, True, "frfcfs")])
def test_a_step_with_blocks_equals_every_segment_run_whole(hw, tp, refresh, scheduler):
    cfg = _cfg(hw, tp, refresh, scheduler)
    prog = system_programs(compile_model("tiny", cfg), cfg)[0]
    bprog = BatchedProgram(prog, 6)
    steps = [(3, 3, 3, 2, 2, 9), (4, 4, 4, 3, 3, 10), (3, 3, 3, 2, 2, 9)]
    memo = new_memo()
    with_blocks = _steps(bprog, cfg, steps, blocks=True, memo=memo)
    assert with_blocks[-1] > 0  # the weight products' passes are blocks
    assert memo_usage(memo)["hits"] > 0
    whole = _steps(bprog, cfg, steps, blocks=False)
    assert with_blocks[:-1] == whole[:-1]
    if refresh:
        assert with_blocks[4] > 0  # refreshes fell inside the steps
    # a memo warmed by the steps above: the blocks replayed, the same result
    assert _steps(bprog, cfg, steps, blocks=True, memo=memo)[:-1] == whole[:-1]


@pytest.mark.parametrize("scheduler", [None, "frfcfs"])
def test_a_step_with_blocks_equals_the_command_by_command_executor(scheduler):
    cfg = _cfg("pim-gpt", 1, True, scheduler)
    prog = system_programs(compile_model("tiny", cfg), cfg)[0]
    bprog = BatchedProgram(prog, 3)
    steps = [(5, 5, 7), (6, 6, 8)]
    fast = _steps(bprog, cfg, steps, blocks=True)
    assert fast[-1] > 0
    slow = _steps(bprog, cfg, steps, blocks=False, fast=False)
    assert fast[:-1] == slow[:-1]


@pytest.mark.parametrize("model,batch,refresh", [("gpt2-small", 64, True), ("tiny", 48, False)])
def test_periods_of_blocks_stepped_in_closed_form_equal_every_block_run(model, batch, refresh):
    """Once a block starts from the key of an earlier block of its segment (refresh time
    included), whole periods are stepped in closed form: the same cycles, commands, refreshes
    and energy as running (or replaying) every block, with fewer memo replays."""
    cfg = _cfg("aim-gddr6", 2, refresh, None)
    prog = system_programs(compile_model(model, cfg), cfg)[0]
    bprog = BatchedProgram(prog, batch)
    steps = [tuple(range(10, 10 + batch))]
    memo_on, memo_off = new_memo(), new_memo()
    on = _steps(bprog, cfg, steps, blocks=True, memo=memo_on)
    off = _steps(bprog, cfg, steps, blocks=True, memo=memo_off, cycles=False)
    assert on[:-1] == off[:-1] == _steps(bprog, cfg, steps, blocks=False)[:-1]
    assert memo_usage(memo_on)["hits"] < memo_usage(memo_off)["hits"]  # periods were stepped
    if refresh:
        assert on[4] > 0


def test_blocks_with_a_full_memo_are_simulated():
    """A memo too small to keep the blocks (cleared again and again, an outcome larger than
    the whole memo dropped): the blocks are simulated, the same result."""
    cfg = _cfg("aim-gddr6", 2, True, None)
    prog = system_programs(compile_model("tiny", cfg), cfg)[0]
    bprog = BatchedProgram(prog, 6)
    steps = [(3, 3, 3, 2, 2, 9), (4, 4, 4, 3, 3, 10)]
    small = new_memo(2048, 8)
    assert _steps(bprog, cfg, steps, blocks=True, memo=small)[:-1] == \
        _steps(bprog, cfg, steps, blocks=False)[:-1]
    u = memo_usage(small)
    assert u["cleared"] + u["dropped"] > 0
    assert u["words"] <= u["capacity_words"] and u["entries"] <= u["max_entries"]


def _compact_steps(bprog, cfg, steps, memo=True, cycles=True):
    sb = StreamBuilder(bprog, compact=True)
    sim = DecodeSimulator(bprog, cfg, streams=sb, memo=memo)
    sim.block_cycles = cycles
    return _run(sim, cfg, steps) + (int(sb.seg_reps.max()), len(sb.items))


@pytest.mark.parametrize("hw,tp,refresh,scheduler,batch", [
    ("aim-gddr6", 2, True, None, 6), ("aim-gddr6", 2, False, None, 5),
    ("pim-gpt", 1, True, "frfcfs", 6), ("hbm-pim", 1, True, None, 4)])
def test_compact_passes_equal_the_passes_written_out(hw, tp, refresh, scheduler, batch):
    """A compact stream holds a batched weight product's pass once and runs it as often as the
    batch has passes (StreamBuilder(compact=True)): the same cycles, commands, row hits and
    misses, refreshes and energy as the passes written out, with the memo, warm, without it,
    and without closed-form periods; fewer items held."""
    cfg = _cfg(hw, tp, refresh, scheduler)
    prog = system_programs(compile_model("tiny", cfg), cfg)[0]
    bprog = BatchedProgram(prog, batch)
    steps = [tuple(range(3, 3 + batch)), tuple(range(4, 4 + batch)), tuple(range(3, 3 + batch))]
    whole = _steps(bprog, cfg, steps, blocks=False, memo=False)
    memo = new_memo()
    compact = _compact_steps(bprog, cfg, steps, memo=memo)
    assert compact[5] == batch  # one sequence a pass on these configs: batch passes
    assert compact[:5] == whole[:5]
    assert _compact_steps(bprog, cfg, steps, memo=memo)[:5] == whole[:5]  # warm memo
    assert _compact_steps(bprog, cfg, steps, memo=False)[:5] == whole[:5]
    assert _compact_steps(bprog, cfg, steps, cycles=False)[:5] == whole[:5]
    written = StreamBuilder(bprog)
    written.build(steps[0])
    assert compact[6] < len(written.items)
    with pytest.raises(ValueError, match="fast executor"):
        DecodeSimulator(bprog, cfg, fast=False, streams=StreamBuilder(bprog, compact=True))
