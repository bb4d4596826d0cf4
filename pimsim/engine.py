"""Event-driven orchestration of PIM channels and the controlling host/ASIC (SimPy).

One SimPy ``Environment`` owns the clock (DRAM command cycles). Each channel is a process that
advances its numba timing kernel through a whole segment of its command stream in one call, then
waits for the others at the segment's synchronisation point (the host needs every channel's
results, or broadcasts new inputs). The host process opens each segment once all channels have
arrived and the host work in between (``host_cyc``) is done. Per-channel work is never simulated
as one Python event per DRAM command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import simpy

from pimsim.config import HwConfig
from pimsim.timing import SYNC, ChannelTimer
from pimsim.timing.tables import build_tables


@dataclass
class ChannelResult:
    channel: int
    timer: ChannelTimer


@dataclass
class SimResult:
    """What a simulation of per-channel streams produced."""

    cycles: int
    channels: list[ChannelResult]
    segment_end_cyc: list[int]  # cycle at which each synchronisation point completed

    @property
    def command_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ch in self.channels:
            for k, v in ch.timer.command_counts().items():
                out[k] = out.get(k, 0) + v
        return out


class _Barrier:
    """All channels arrive; the host releases the next segment."""

    def __init__(self, env: simpy.Environment, n: int):
        self.env = env
        self.n = n
        self.arrived = 0
        self.all_arrived = env.event()
        self.release = env.event()

    def arrive(self) -> simpy.Event:
        self.arrived += 1
        if self.arrived == self.n:
            self.all_arrived.succeed()
        return self.release


def simulate_streams(
    cfg: HwConfig,
    streams: dict[int, np.ndarray] | Sequence[np.ndarray],
    *,
    log: bool = False,
    fast: bool = True,
    host_cyc: Callable[[int], int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Run per-channel streams (SYNC items separate segments) to completion.

    ``host_cyc(k)`` gives the host/ASIC cycles spent after synchronisation point ``k`` before the
    next segment starts (default 0). ``progress(k)`` is called as each point completes.
    """
    if not isinstance(streams, dict):
        streams = dict(enumerate(streams))
    chans = sorted(streams)
    n_segments = {c: int(np.count_nonzero(streams[c][:, 0] == SYNC)) for c in chans}
    if len(set(n_segments.values())) > 1:
        raise ValueError(f"channels disagree on the number of SYNC points: {n_segments}")
    n_sync = n_segments[chans[0]] if chans else 0
    tables = build_tables(cfg, fast=fast)
    timers = {c: ChannelTimer(cfg, log=log, tables=tables) for c in chans}
    env = simpy.Environment()
    barriers = [_Barrier(env, len(chans)) for _ in range(n_sync)]
    seg_end: list[int] = []

    def channel(c: int):
        timer, stream = timers[c], streams[c]
        pos, k = 0, 0
        while pos < stream.shape[0]:
            pos = timer.run(stream, pos, int(env.now))
            if timer.done_cyc > env.now:
                yield env.timeout(timer.done_cyc - env.now)
            if stream[pos - 1, 0] == SYNC:
                yield barriers[k].arrive()
                k += 1

    def host():
        for k, b in enumerate(barriers):
            yield b.all_arrived
            seg_end.append(int(env.now))
            if progress is not None:
                progress(k)
            extra = host_cyc(k) if host_cyc is not None else 0
            if extra:
                yield env.timeout(extra)
            b.release.succeed()

    for c in chans:
        env.process(channel(c))
    env.process(host())
    env.run()
    cycles = max([t.done_cyc for t in timers.values()] + seg_end + [0])
    return SimResult(
        cycles=int(cycles),
        channels=[ChannelResult(c, timers[c]) for c in chans],
        segment_end_cyc=seg_end,
    )


def merged_log(timers: Sequence[tuple[int, ChannelTimer]]) -> np.ndarray:
    """Issued commands of several channels as rows (cycle, channel, bank, row, cmd), sorted by
    cycle (then channel): the record format of :func:`pimsim.check.check_command_log`."""
    parts = []
    for channel, timer in timers:
        lg = timer.log
        part = np.empty((lg.shape[0], 5), np.int64)
        part[:, 0] = lg[:, 0]
        part[:, 1] = channel
        part[:, 2] = lg[:, 2]
        part[:, 3] = lg[:, 3]
        part[:, 4] = lg[:, 1]
        parts.append(part)
    out = np.concatenate(parts) if parts else np.empty((0, 5), np.int64)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def command_log(result: SimResult) -> np.ndarray:
    """All channels' issued commands of a simulation (see :func:`merged_log`)."""
    return merged_log([(ch.channel, ch.timer) for ch in result.channels])
