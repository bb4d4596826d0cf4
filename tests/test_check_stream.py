"""The streaming checker (``pimsim.check.StreamChecker``) against the whole-log checker it replaces
(``tests/check_oracle.py``, the former ``pimsim.check``): the same violations, in the same order,
with the same messages and counts, on generated multi-channel logs broken at random, fed in
pieces of every size; and its memory stays bounded by the piece, not the log."""

from __future__ import annotations

from pathlib import Path

import check_oracle as oracle
import numpy as np
import pytest
from conftest import shared_rules_variant

from pimsim.check import StreamChecker, check_command_log, check_log
from pimsim.config import load_config
from pimsim.dma import replay_trace, replay_trace_logged
from pimsim.engine import command_log, simulate_streams
from pimsim.spec.commands import cmd_id
from pimsim.timing import make_stream
from pimsim.trace import load_trace, parse_trace

CFG = shared_rules_variant(load_config("aim-gddr6", refresh=False))
CFG_REF = shared_rules_variant(load_config("aim-gddr6", refresh=True))
AIM_REF = load_config("aim-gddr6", refresh=True)


def _log(cfg, n_ch: int, rows: int, seed: int) -> np.ndarray:
    """A legal multi-channel engine log (rows: cycle, channel, bank, row, cmd), idle gaps included."""
    rng = np.random.default_rng(seed)
    streams = []
    for _ in range(n_ch):
        items = []
        for r in range(rows):
            items += [("WR_GB", -1, 0, int(rng.integers(1, 8))),
                      ("MAC_AB", -1, int(rng.integers(0, 6)), int(rng.integers(8, 64))),
                      ("RD_MAC", -1, 0, 1),
                      ("RD", int(rng.integers(0, 16)), int(rng.integers(0, 4)), int(rng.integers(1, 5))),
                      ("WR_AB", -1, int(rng.integers(0, 4)), 1),
                      ("MAC_SB", int(rng.integers(0, 16)), 1, int(rng.integers(1, 4)))]
            if r % 7 == 3:
                items.append("SYNC")
        items.append("SYNC")
        streams.append(make_stream(items))
    n_sync = [sum(1 for it in s if it[0] < 0) for s in streams]
    assert len(set(n_sync)) == 1
    res = simulate_streams(cfg, streams, log=True,
                           host_cyc=lambda k: int(rng.integers(0, 3)) * cfg.timing.cycles["nREFI"])
    return command_log(res)


def _break(log: np.ndarray, seed: int, n_bad: int) -> np.ndarray:
    """The log with commands moved earlier, dropped, sent to other rows or banks, duplicated."""
    rng = np.random.default_rng(seed)
    bad = log.copy()
    idx = rng.choice(bad.shape[0], size=n_bad, replace=False)
    for k, i in enumerate(idx.tolist()):
        what = k % 4
        if what == 0:
            bad[i, 0] -= int(rng.integers(1, 40))
        elif what == 1:
            bad[i, 3] += 1
        elif what == 2 and bad[i, 2] >= 0:
            bad[i, 2] = (bad[i, 2] + 1) % 16
        else:
            bad[i, 0] = max(0, bad[i, 0] - 3)
    keep = np.ones(bad.shape[0], bool)
    keep[rng.choice(bad.shape[0], size=n_bad // 4, replace=False)] = False
    bad = bad[keep]
    return bad[np.lexsort((bad[:, 1], bad[:, 0]))]


def _stream(log: np.ndarray, cfg, seed: int, piece_rows: int, max_per_rule):
    rng = np.random.default_rng(seed)
    sc = StreamChecker(cfg, max_per_rule=max_per_rule, piece_rows=piece_rows)
    i = 0
    while i < log.shape[0]:
        j = i + int(rng.integers(1, 3 * piece_rows + 2))
        sc.feed(log[i:j])
        i = j
    return sc.finish(), sc


def _fields(v) -> tuple:
    return (v.rule, v.channel, v.preceding, v.following, v.required, v.actual, v.kind)


def _same(got, want):
    assert [str(v) for v in got] == [str(v) for v in want]
    assert [_fields(v) for v in got] == [_fields(v) for v in want]
    assert got.counts == want.counts and got.total == want.total


@pytest.mark.parametrize("cfg", [CFG, CFG_REF, AIM_REF], ids=["shared", "shared+refresh", "aim"])
@pytest.mark.parametrize("seed", range(2))
def test_stream_equals_the_whole_log_checker_on_broken_logs(cfg, seed):
    log = _break(_log(cfg, 2, 6, seed), seed, 40)
    for max_per_rule in (3, None):
        want = oracle.check_command_log(log, cfg, max_per_rule=max_per_rule)
        assert want.total > 0
        _same(check_command_log(log, cfg, max_per_rule=max_per_rule), want)
        for piece_rows in (97, 400, 100_000):
            got, _ = _stream(log, cfg, seed, piece_rows, max_per_rule)
            _same(got, want)
    short = log[:120]  # pieces of one row: every row judged against the history alone
    want = oracle.check_command_log(short, cfg, max_per_rule=2)
    _same(_stream(short, cfg, seed, 1, 2)[0], want)


def test_stream_equals_the_whole_log_checker_on_legal_logs_and_refresh_rules():
    log = _log(CFG_REF, 2, 10, 5)
    assert oracle.check_command_log(log, CFG_REF) == []
    got, _ = _stream(log, CFG_REF, 1, 16, 10)
    assert got == [] and got.total == 0
    # a refresh missing at the end of the log, and one postponed too long, in pieces
    n_refi = CFG_REF.timing.cycles["nREFI"]
    tail = np.array([[int(log[-1, 0]) + 9 * n_refi, 0, -1, 0, cmd_id("REFab")],
                     [int(log[-1, 0]) + 30 * n_refi, 1, 0, 1, cmd_id("ACT")]], np.int64)
    longer = np.concatenate([log, tail])
    want = oracle.check_command_log(longer, CFG_REF)
    assert {v.rule for v in want} >= {"refresh_missing"}
    for piece_rows in (50, 1000):
        _same(_stream(longer, CFG_REF, 2, piece_rows, 10)[0], want)


def test_single_channel_check_log_is_unchanged():
    for seed in range(2):
        full = _break(_log(CFG, 1, 10, seed), seed, 30)
        one = full[:, [0, 4, 2, 3]]
        for max_per_rule in (2, None):
            want = oracle.check_log(one, CFG, channel=4, max_per_rule=max_per_rule)
            _same(check_log(one, CFG, channel=4, max_per_rule=max_per_rule), want)


def test_memory_is_bounded_by_the_piece_not_the_log():
    log = _log(CFG, 2, 120, 9)
    assert log.shape[0] > 10_000
    got, sc = _stream(log, CFG, 3, 512, 10)
    assert got == [] and sc.n_rows == log.shape[0]
    # history (a few rows per command and bank) plus at most three pieces per channel
    assert sc.peak_rows < 2 * (4 * 512 + 1000)


def test_tags_name_the_source_and_order_is_required():
    log = _log(CFG, 1, 10, 2)
    bad = log.copy()
    bad[200, 0] -= 1  # one command a cycle early
    bad = bad[np.argsort(bad[:, 0], kind="stable")]
    sc = StreamChecker(CFG, piece_rows=50, name="x.trace")
    tags = np.arange(bad.shape[0]) + 1000
    for i in range(0, bad.shape[0], 37):
        sc.feed(bad[i:i + 37], tags=tags[i:i + 37])
    vs = sc.finish()
    assert vs and all(v.where is not None and v.where.startswith("x.trace:") for v in vs)
    assert str(vs[0]).startswith(vs[0].where + ": ")
    assert vs == check_command_log(bad, CFG)  # where is a label, not part of the verdict
    assert [_fields(v) for v in vs] == [_fields(v) for v in oracle.check_command_log(bad, CFG)]
    late = StreamChecker(CFG, piece_rows=4)
    late.feed(log[:40])
    with pytest.raises(ValueError, match="cycle order"):
        late.feed(log[:5])


# ---------------------------------------------------------------- the trace replay, a part at a time

ROOT = Path(__file__).resolve().parent.parent
TRACES = [ROOT / "examples" / "gemv_aim.trace",
          *sorted((ROOT / "tests" / "aim_reference").glob("*.trace"))[:2]]


@pytest.mark.parametrize("refresh", [False, True], ids=["no-refresh", "refresh"])
def test_replay_in_parts_gives_the_whole_replays_commands_and_result(refresh):
    cfg = load_config("aim-gddr6", refresh=refresh)
    for path in TRACES:
        tr = load_trace(path, cfg)
        res0, log0 = replay_trace(cfg, tr, log=True)
        for part_lines in (3, 10_000):
            parts: list[np.ndarray] = []
            res1 = replay_trace_logged(cfg, tr, parts.append, part_lines=part_lines)
            rows = np.concatenate(parts) if parts else np.empty((0, 6), np.int64)
            assert res1.cycles == res0.cycles, path.name
            assert res1.command_counts == res0.command_counts, path.name
            log1 = rows[np.lexsort((rows[:, 1], rows[:, 0])), :5]
            assert np.array_equal(log1, log0), path.name
            text_lines = path.read_text().splitlines()
            assert rows[:, 5].min() >= 1 and rows[:, 5].max() <= len(text_lines)
            for ch in np.unique(rows[:, 1]).tolist():  # issue order is cycle order per channel
                assert np.all(np.diff(rows[rows[:, 1] == ch, 0]) >= 0)
        sc = StreamChecker(cfg, piece_rows=4096)
        replay_trace_logged(cfg, tr, lambda r, sc=sc: sc.feed(r[:, :5], tags=r[:, 5]),
                            part_lines=3)
        assert [_fields(v) for v in sc.finish()] == \
            [_fields(v) for v in oracle.check_command_log(log0, cfg)]


def test_every_command_names_the_trace_line_that_issued_it():
    cfg = load_config("aim-gddr6", refresh=False)
    text = "# header\n\nAiM MAC_ABK 8 0x80000000 3\n\nAiM SYNC\nAiM MAC_ABK 4 0x40000000 5\nAiM EOC\n"
    parts: list[np.ndarray] = []
    replay_trace_logged(cfg, parse_trace(text, cfg), parts.append)
    rows = np.concatenate(parts)
    macs = rows[rows[:, 4] == cmd_id("MAC_AB")]
    assert sorted(set(zip(macs[:, 1].tolist(), macs[:, 5].tolist()))) == [(0, 3), (1, 6)]
