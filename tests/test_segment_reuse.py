"""Whole channel segments as memo units (``run_steps``' segment memo): a channel's segment of a
step that ran before from an equivalent state, the same items, is replayed in one piece.

Held: decode steps with the segment memo equal those without it and those of the
command-by-command executor (cycles, step ends, energy, command counts, row hits and misses,
refreshes), refresh on and off, with the FR-FCFS controller's KV-cache writes in them; segments
are replayed; a segment memo too small for its entries is cleared and the result stays.
"""

from __future__ import annotations

import dataclasses

import pytest

from pimsim.config import load_config
from pimsim.decode import DecodeSimulator
from pimsim.timing.memo import memo_usage, new_memo
from pimsim.timing.state import NO_MEMO
from tests.test_refresh_reuse import _tokens
from workloads.session import compile_model


def _cfg(refresh: bool):
    cfg = load_config("pim-gpt")
    return dataclasses.replace(cfg, refresh=dataclasses.replace(cfg.refresh, enabled=refresh))


@pytest.mark.parametrize("refresh", [True, False])
def test_segments_replayed_equal_segments_run(refresh):
    cfg = _cfg(refresh)
    assert cfg.controller.scheduler == "frfcfs"  # the KV writes go through its queues
    prog = compile_model("tiny", cfg).program
    positions = list(range(0, 48))
    with_seg = DecodeSimulator(prog, cfg)
    without = DecodeSimulator(prog, cfg)
    without.seg_memo = NO_MEMO
    a = _tokens(with_seg, cfg, positions)
    b = _tokens(without, cfg, positions)
    assert a == b
    u = memo_usage(with_seg.seg_memo)
    assert u["hits"] > len(positions)  # most steps' segments replayed
    assert memo_usage(without.memo)["hits"] > memo_usage(with_seg.memo)["hits"]


@pytest.mark.parametrize("refresh", [True, False])
def test_segments_replayed_equal_the_command_by_command_executor(refresh):
    cfg = _cfg(refresh)
    prog = compile_model("tiny", cfg).program
    positions = [0, 1, 2, 3, 4, 5, 6, 7]
    fast = DecodeSimulator(prog, cfg)
    a = _tokens(fast, cfg, positions)
    assert memo_usage(fast.seg_memo)["hits"] > 0
    assert a == _tokens(DecodeSimulator(prog, cfg, fast=False), cfg, positions)


def test_a_full_segment_memo_is_cleared_and_the_result_stays():
    cfg = _cfg(True)
    prog = compile_model("tiny", cfg).program
    positions = list(range(0, 24))
    small = DecodeSimulator(prog, cfg)
    small.seg_memo = new_memo(1 << 12, 4)
    a = _tokens(small, cfg, positions)
    u = memo_usage(small.seg_memo)
    assert u["cleared"] > 0 and u["entries"] <= 4
    assert a == _tokens(DecodeSimulator(prog, cfg), cfg, positions)
