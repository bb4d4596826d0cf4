"""Event-driven orchestration: segments, sync points, host time, determinism."""

import numpy as np
import pytest

from pimsim.config import load_config
from pimsim.engine import command_log, simulate_streams
from pimsim.timing import ChannelTimer, make_stream
from pimsim.trace import parse_trace


@pytest.fixture(scope="module")
def cfg():
    return load_config("aim-gddr6", refresh=False)


def test_independent_channels_equal_single_channel_timing(cfg):
    s = make_stream([("MAC_AB", -1, r, 64) for r in range(4)])
    res = simulate_streams(cfg, [s, s, s])
    alone = ChannelTimer(cfg)
    alone.run_all(s)
    assert res.cycles == alone.done_cyc
    assert all(ch.timer.done_cyc == alone.done_cyc for ch in res.channels)


def test_sync_waits_for_slowest_channel_and_host_time(cfg):
    long = make_stream([("MAC_AB", -1, r, 64) for r in range(3)] + ["SYNC", ("MAC_AB", -1, 9, 1)])
    short = make_stream([("MAC_AB", -1, 0, 1), "SYNC", ("MAC_AB", -1, 9, 1)])
    res = simulate_streams(cfg, [long, short], log=True, host_cyc=lambda k: 100)
    t_sync = res.segment_end_cyc[0]
    ref = ChannelTimer(cfg)
    ref.run(long, 0, 0)
    assert t_sync == ref.done_cyc
    # after the sync every channel's next command issues no earlier than sync + host time
    log = command_log(res)
    after = log[log[:, 0] >= t_sync]
    assert after.shape[0] >= 2
    assert after[:, 0].min() >= t_sync + 100


def test_channels_disagreeing_on_syncs_is_an_error(cfg):
    with pytest.raises(ValueError, match="SYNC"):
        simulate_streams(cfg, [make_stream(["SYNC"]), make_stream([("MAC_AB", -1, 0, 1)])])


def test_same_input_same_cycles(cfg):
    text = "\n".join(f"AiM MAC_ABK 64 0xffff {r}\nAiM RD_MAC 0 0xffff\nAiM SYNC" for r in range(20))
    c = load_config("aim-gddr6")
    a = simulate_streams(c, parse_trace(text, c).streams, log=True)
    b = simulate_streams(c, parse_trace(text, c).streams, log=True)
    assert a.cycles == b.cycles
    assert np.array_equal(command_log(a), command_log(b))


def test_fast_and_slow_paths_agree_on_a_trace_with_refresh():
    c = load_config("aim-gddr6")
    text = "\n".join(
        f"AiM WR_GB 64 0 0xf\nAiM MAC_ABK 64 0xf {r}\nAiM RD_MAC 0 0xf\nAiM SYNC" for r in range(60)
    )
    streams = parse_trace(text, c).streams
    fast = simulate_streams(c, streams, log=True, fast=True)
    slow = simulate_streams(c, streams, log=True, fast=False)
    assert fast.cycles == slow.cycles
    assert fast.command_counts == slow.command_counts
    assert fast.command_counts["REFab"] > 0
    assert np.array_equal(command_log(fast), command_log(slow))


def test_refresh_issued_at_due_time_while_channel_idles():
    c = load_config("aim-gddr6")
    n_refi = c.timing.nREFI
    s = make_stream([("MAC_AB", -1, 0, 1), "SYNC", ("MAC_AB", -1, 0, 1)])
    res = simulate_streams(c, [s], log=True, host_cyc=lambda k: 3 * n_refi)
    log = command_log(res)
    from pimsim.spec.commands import cmd_id
    refs = log[log[:, 4] == cmd_id("REFab"), 0]
    assert len(refs) == 3
    # each refresh at (or just after, for the PREA) its due time, not bunched at the end
    assert refs[0] < 2 * n_refi and refs[1] < 3 * n_refi


def test_kernel_compile_scope_restores_numba_settings(monkeypatch):
    """The kernels' compile options apply inside the scope only; a user's NUMBA_OPT wins."""
    import numba

    from pimsim.timing.jit import compile_scope

    before = numba.config.OPT
    monkeypatch.delenv("NUMBA_OPT", raising=False)
    with compile_scope():
        assert numba.config.OPT == 1
    assert numba.config.OPT == before
    monkeypatch.setenv("NUMBA_OPT", "3")
    with compile_scope():
        assert numba.config.OPT == before
