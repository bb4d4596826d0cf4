"""Write a decode-step :class:`~pimsim.isa.Program` as an AiM instruction trace.

The output is the grammar :mod:`pimsim.trace` reads (that of the public GDDR6-AiM simulator), so
one token's PIM work can be replayed by ``pimsim trace`` and by the AiM simulator. Every PIM
step at position ``pos`` becomes a block of ISR lines followed by ``AiM SYNC``; the trace ends
with ``AiM EOC``. ASIC steps have no ISR form and are left out (a trace is PIM work only).

Commands map onto the ISRs of the trace reader (:data:`pimsim.trace.AIM_OPS`, read backwards):
MAC_AB -> ``MAC_ABK``, WR_GB -> ``WR_GB``, RD_MAC -> ``RD_MAC``, ..., and the conventional reads
and writes (parameter fetches, KV-cache writes) -> ``RD_SBK`` / ``WR_SBK``, one line per column.
The AiM simulator turns RD_SBK / WR_SBK into the same DRAM requests as ``R MEM`` / ``W MEM`` (a RD
or WR to the addressed bank and row), but they take a channel mask, so channels that access the
same place share a line. Its MEM-type requests all carry address -1, so a read is "forwarded"
from any write still queued in its channel (a defect); SYNC drains every queue and the decode
program never reads behind a write within a step, so emitted traces do not hit it. An item of
more columns than an ISR's ``opsize`` may give (a row's ``columns``) is split into lines of the
same row; ISRs without an opsize repeat. GPR operands are 0 (no register file is modelled).
A column offset (``col0``) has no operand in these ISRs and is dropped: the AiM simulator starts
every ISR at column 0, and no timing rule depends on the column.

Interleaving. AiM's DMA decodes one line per cycle, in order; it stops while a line's requests do
not fit a channel's request queue (``host.queue_entries``) and holds every later line behind a
blocking read (RD_MAC, RD_AF) until all its channels answered. Written channel by channel, or
position by position, a step makes channels wait for one another: one channel's RD_MAC placed
before another's independent MACs stalls them, and a slow channel's full queue holds a fast
channel's lines (a KV-cache write: one channel's key columns hit an open row while every
channel's value writes miss). So a step's lines follow the cycles at which the channels would
issue them on their own: each group of channels with equal units (a *class*) is timed by
pimsim's channel kernel (refresh off, so the trace does not depend on the config's refresh
setting), continuing from the state the previous steps left, and

* a unit is keyed by the cycle of its first command (the ACT, PRE or mode switch it needs, else
  its first column command), never below an earlier key of its class;
* equal blocking reads of several classes form one line when a later one starts before the
  earliest one's data is back (it would otherwise wait behind it): keyed at that release
  cycle, so every unit another channel issues before the barrier lifts is sent ahead of it;
* lines are sorted by key (a read before other units at the same key), then by channel; equal
  units of several classes at the same key share a line (their channel mask).

When a step's channels differ, long units are cut into pieces of ``queue_entries - 1`` columns:
a line of more requests than its channels' queues hold would stop the DMA until they drained,
while other channels wait for their first requests (with pieces, each channel's queue is full
before the DMA waits on any of them, so every channel stays busy meanwhile). Each
channel's own order is never changed (checked per step; a round-by-round order is the fallback),
so the per-channel streams are exactly the program's, in units (:func:`unit_streams`). A
balanced step (all channels equal) becomes one line per instruction, as a hand-written AiM trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pimsim.config import HwConfig, channel_ids
from pimsim.errors import UserError
from pimsim.isa import ITEM_FIELDS, Program
from pimsim.spec.commands import AF_PSEUDO_ROW, COMMANDS, SYNC, cmd_id
from pimsim.timing import ChannelTimer
from pimsim.timing.state import S_LOG_N
from pimsim.timing.tables import CT_DONE, build_tables
from pimsim.trace import AIM_OPS, SINGLE_CHANNEL_OPS

# pimsim command id -> (ISR name, its operand names): the trace reader's table read backwards
_ISR_OF: dict[int, tuple[str, tuple[str, ...]]] = {
    cmd_id(dram): (op, names) for op, (names, dram) in AIM_OPS.items()}
# commands the channel kernel inserts on its own (never stream items of a program)
_INSERTED = np.array([cmd_id(n) for n in ("ACT", "PRE", "PREA", "ACT_AB", "TMOD", "REFab")])
_AF = cmd_id("AF")
_BLOCKING = np.array([cmd_id(n) for n in ("RD_MAC", "RD_AF")])


class EmitError(UserError):
    """A program or config that cannot be written as an AiM trace."""


def check_aim_config(cfg: HwConfig) -> None:
    """Raise :class:`EmitError` unless ``cfg`` is a GDDR6-AiM-style PIM config whose channels and
    banks the AiM trace grammar can address."""
    fix = "use a GDDR6-AiM config such as aim-gddr6 or pim-gpt"
    if cfg.org.standard != "GDDR6-AiM" or not cfg.pim.enabled:
        raise EmitError(f"config {cfg.name!r} is not an AiM-style PIM device (standard "
                        f"{cfg.org.standard!r}, pim.enabled = {cfg.pim.enabled}); AiM traces need "
                        f"standard 'GDDR6-AiM' with PIM enabled", fix)
    if cfg.host.mask_order != "msb32":
        raise EmitError(f"config {cfg.name!r} numbers mask bits lsb-first (host.mask_order "
                        f"{cfg.host.mask_order!r}); AiM channel masks are msb32 "
                        f"(bit i = channel 31 - i)", fix)
    chans = channel_ids(cfg)
    if chans and max(chans) > 31:
        raise EmitError(f"config {cfg.name!r} has channel {max(chans)}; an AiM channel mask "
                        f"addresses channels 0..31", fix)
    if cfg.org.banks > 16:
        raise EmitError(f"config {cfg.name!r} has {cfg.org.banks} banks per channel; AiM ISRs "
                        f"address banks 0..15", fix)


def to_units(items: np.ndarray, max_opsize: int, piece: int = 0) -> np.ndarray:
    """A channel's items ``(cmd, bank, row, count, col0)`` as ISR units ``(cmd, bank, row,
    count)``, in order: an ISR with an opsize takes at most ``max_opsize`` columns (``piece``,
    when given and smaller: at most that many), one without repeats once per column. Operands
    the ISR does not have become -1 (as the trace reader gives them)."""
    items = np.asarray(items, np.int64).reshape(-1, ITEM_FIELDS)
    if items.shape[0] == 0:
        return np.empty((0, 4), np.int64)
    cmd = items[:, 0]
    bad = sorted({int(c) for c in np.unique(cmd)} - set(_ISR_OF))
    if bad:
        raise EmitError(f"command(s) {', '.join(COMMANDS[c].name for c in bad)} have no AiM "
                        f"ISR form", f"AiM traces carry "
                        f"{', '.join(sorted(COMMANDS[c].name for c in _ISR_OF))}")
    has_size = np.array([("opsize" in _ISR_OF[int(c)][1]) for c in cmd])
    has_bank = np.array([("bank" in _ISR_OF[int(c)][1]) for c in cmd])
    has_row = np.array([("row" in _ISR_OF[int(c)][1]) or c == _AF for c in cmd])
    lim = max_opsize if not piece else min(piece, max_opsize)
    count = items[:, 3]
    n_units = np.where(has_size, -(-count // lim), count)
    idx = np.repeat(np.arange(items.shape[0]), n_units)
    out = np.empty((idx.shape[0], 4), np.int64)
    out[:, 0] = cmd[idx]
    out[:, 1] = np.where(has_bank, items[:, 1], -1)[idx]
    out[:, 2] = np.where(has_row, items[:, 2], -1)[idx]
    # unit j of an item: min(lim, count - j * lim) columns with an opsize, else 1
    first = np.repeat(np.cumsum(n_units) - n_units, n_units)
    j = np.arange(idx.shape[0]) - first
    out[:, 3] = np.where(has_size[idx], np.minimum(lim, count[idx] - j * lim), 1)
    return out


def _first_cycles(log: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cycles of the first command each unit caused (the ACT / PRE / mode switch it needed, else
    its first column command) and of its last, from the channel's issue log of these units."""
    own = ~np.isin(log[:, 1], _INSERTED)
    own_unit = np.repeat(np.arange(units.shape[0]), units[:, 3])
    if int(own.sum()) != own_unit.shape[0]:
        raise AssertionError("issue log does not match the units")  # pragma: no cover
    k = np.cumsum(own) - own  # own commands before each row: the unit that row works for
    unit_of = own_unit[np.minimum(k, own_unit.shape[0] - 1)]
    first = np.full(units.shape[0], -1, np.int64)
    last = np.full(units.shape[0], -1, np.int64)
    rows = np.arange(log.shape[0])
    last[unit_of[rows]] = log[rows, 0]  # the latest row wins
    first[unit_of[rows[::-1]]] = log[rows[::-1], 0]  # the earliest row wins
    return first, last


class _Estimator:
    """Each channel's controller run on its own (the channel kernel, with its log): channels
    whose streams were equal so far share one simulated state (a class)."""

    def __init__(self, cfg: HwConfig, n_ch: int):
        self.cfg = cfg
        # refresh is a replay option (the AiM simulator has none): the order does not depend on it
        self.tables = build_tables(cfg).with_options(refresh=False)
        self.cls = [0] * n_ch
        self.timers = {0: ChannelTimer(cfg, log=True, tables=self.tables)}
        self.start = 0

    def _clone(self, t: ChannelTimer) -> ChannelTimer:
        n = ChannelTimer(self.cfg, log=True, tables=self.tables)
        for a in ("ready", "win_hist", "win_cnt", "open_row", "scal", "counts", "stats"):
            getattr(n, a)[...] = getattr(t, a)
        return n

    def step(self, units: list[np.ndarray]) -> tuple[list[int], dict[int, np.ndarray]]:
        """Time one step's units; returns each channel's class and each class's first cycles.

        A class is the channels with equal units in this step; it continues from the state of
        its first channel (the others' states may differ by a few cycles: the order of the
        lines needs estimates, not exact times)."""
        keys: dict[bytes, int] = {}
        new_cls = [keys.setdefault(u.tobytes(), len(keys)) for u in units]
        timers, times = {}, {}
        used: set[int] = set()
        for k in range(len(keys)):
            old = self.cls[new_cls.index(k)]
            t = self.timers[old]
            timers[k] = t if old not in used else self._clone(t)
            used.add(old)
        for k in range(len(keys)):  # clones were all taken before any class ran
            u = units[new_cls.index(k)]
            t = timers[k]
            t.scal[S_LOG_N] = 0
            if u.shape[0]:
                stream = np.zeros((u.shape[0], ITEM_FIELDS), np.int64)
                stream[:, :4] = u
                t.run(stream, 0, self.start)
            times[k] = _first_cycles(t.log, u)
        self.cls, self.timers = new_cls, timers
        # the next step starts when every channel is done (the SYNC barrier)
        self.start = max([self.start] + [t.done_cyc + 2 for t in timers.values()])
        return new_cls, times


def _render(u: tuple[int, int, int, int], chans: list[int], state: dict) -> list[str]:
    """The line(s) of unit ``u`` on physical channels ``chans``."""
    cmd, bank, row, n = u
    chans = sorted(chans)
    bits = 0
    for c in chans:
        bits |= 1 << (31 - c)
    op, names = _ISR_OF[cmd]
    out = []
    if cmd == _AF:  # AF's pseudo-row selects the activation function (W CFR 2 <f>)
        f = row - AF_PSEUDO_ROW if row >= AF_PSEUDO_ROW else 0
        if f != state.get("afm", 0):
            state["afm"] = f
            out.append(f"W CFR 2 {f}")
    masks = [1 << (31 - c) for c in chans] if op in SINGLE_CHANNEL_OPS else [bits]
    for m in masks:
        vals = {"opsize": n, "gpr": 0, "mask": f"0x{m:08x}", "bank": bank, "row": row}
        out.append(" ".join(["AiM", op] + [str(vals[k]) for k in names]))
    return out


def step_lines(per_channel: list[np.ndarray], chans: list[int], cfg: HwConfig,
               est: _Estimator, state: dict | None = None) -> list[str]:
    """ISR lines of one PIM step (no SYNC): ``per_channel[i]`` are the items of physical channel
    ``chans[i]``, written in the order of the module docstring."""
    state = {} if state is None else state
    units = _step_units(per_channel, cfg)
    cls, times = est.step(units)
    members: dict[int, list[int]] = {}
    for c, k in enumerate(cls):
        members.setdefault(k, []).append(chans[c])
    cu = {k: units[cls.index(k)] for k in members}
    order = _timed_order(cu, times, est.tables.cmd_tab[:, CT_DONE], cfg.host.release_cyc)
    if not _keeps_order(order, cu):  # never seen; the round order always keeps it
        order = _round_order(cu)
    out: list[str] = []
    for u, ks in order:
        out.extend(_render(u, [c for k in ks for c in members[k]], state))
    return out


def _timed_order(cu: dict[int, np.ndarray], times: dict, done: np.ndarray,
                 release_cyc: int) -> list[tuple[tuple, list[int]]]:
    """Lines as (unit, classes), ordered by when the classes would issue them (docstring)."""
    # blocking reads, clustered: an equal read of another class that starts before this one's
    # data is back (and would wait behind it) shares its line, placed at that release time
    blk = []
    for k, u in cu.items():
        first, last = times[k]
        for i in np.flatnonzero(np.isin(u[:, 0], _BLOCKING)).tolist():
            blk.append((int(first[i]), int(last[i] + done[u[i, 0]] + release_cyc), k, i,
                        tuple(u[i].tolist())))
    blk.sort()
    cluster_of: dict[tuple[int, int], int] = {}
    clusters: list[tuple[int, tuple, list[int]]] = []  # (key, unit, classes)
    taken = [False] * len(blk)
    for a, (_, r0, k0, _, u0) in enumerate(blk):
        if taken[a]:
            continue
        ks, idx = {k0}, [a]
        for b in range(a + 1, len(blk)):
            s1, _, k1, _, u1 = blk[b]
            if s1 >= r0:
                break
            if not taken[b] and u1 == u0 and k1 not in ks:
                ks.add(k1)
                idx.append(b)
        for j in idx:
            taken[j] = True
            cluster_of[(blk[j][2], blk[j][3])] = len(clusters)
        clusters.append((r0, u0, [blk[j][2] for j in idx]))
    # other units keyed by their first cycle, never below an earlier key of their class; equal
    # units of several classes at one key share a line
    entries: dict[tuple, list[int]] = {}
    for j, (r0, _, _) in enumerate(clusters):
        entries[(r0, 0, j)] = []
    for k, u in cu.items():
        first = times[k][0]
        kk = -1
        seen: dict[tuple, int] = {}
        for i in range(u.shape[0]):
            j = cluster_of.get((k, i))
            if j is None:
                kk = max(kk, int(first[i]))
                t = tuple(u[i].tolist())
                n = seen.get((kk, t), 0)
                seen[(kk, t)] = n + 1
                entries.setdefault((kk, 1, t, n), []).append(k)
            else:
                kk = max(kk, clusters[j][0])
    # at equal keys a read goes first (a unit after it was keyed up to its key), then by class
    ordered = sorted(entries.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                      min(kv[1]) if kv[1] else -1))
    out = []
    for key, ks in ordered:
        if key[1] == 0:
            _, u, cks = clusters[key[2]]
            out.append((u, cks))
        else:
            out.append((key[2], ks))
    return out


def _round_order(cu: dict[int, np.ndarray]) -> list[tuple[tuple, list[int]]]:
    """Lines in rounds: each class's units up to its next blocking read, lockstep by position,
    then the round's reads (equal ones share a line). Keeps every class's order."""
    rounds = {}
    for k, u in cu.items():
        cuts = np.flatnonzero(np.isin(u[:, 0], _BLOCKING)).tolist()
        lo, rs = 0, []
        for b in cuts:
            rs.append((list(range(lo, b)), b))
            lo = b + 1
        if lo < u.shape[0]:
            rs.append((list(range(lo, u.shape[0])), -1))
        rounds[k] = rs
    out: list[tuple[tuple, list[int]]] = []
    for r in range(max((len(x) for x in rounds.values()), default=0)):
        part = [(k, rs[r]) for k, rs in rounds.items() if r < len(rs)]
        for j in range(max(len(idx) for _, (idx, _) in part)):
            line: dict[tuple, list[int]] = {}
            for k, (idx, _) in part:
                if j < len(idx):
                    line.setdefault(tuple(cu[k][idx[j]].tolist()), []).append(k)
            out.extend(line.items())
        line = {}
        for k, (_, b) in part:
            if b >= 0:
                line.setdefault(tuple(cu[k][b].tolist()), []).append(k)
        out.extend(line.items())
    return out


def _keeps_order(order: list[tuple[tuple, list[int]]], cu: dict[int, np.ndarray]) -> bool:
    """Whether every class's units appear in ``order`` exactly in its own order."""
    got: dict[int, list[tuple]] = {k: [] for k in cu}
    for u, ks in order:
        for k in ks:
            got[k].append(u)
    return all(got[k] == [tuple(r) for r in cu[k].tolist()] for k in cu)


def _step_units(per_channel: list[np.ndarray], cfg: HwConfig) -> list[np.ndarray]:
    """Each channel's units of a step; cut into pieces when the channels differ (docstring)."""
    cols, q = cfg.org.columns, cfg.host.queue_entries
    units = [to_units(a, cols) for a in per_channel]
    if q > 2 and len({u.tobytes() for u in units}) > 1:
        units = [to_units(a, cols, q - 1) for a in per_channel]
    return units


def unit_streams(prog: Program, cfg: HwConfig, pos: int) -> dict[int, np.ndarray]:
    """The per-channel command streams the emitted trace carries: every PIM step's items as ISR
    units ``(cmd, bank, row, count)``, a SYNC item after each step (the form of
    :attr:`pimsim.trace.Trace.streams`, so a parsed trace can be compared with it exactly)."""
    chans = channel_ids(cfg)
    parts: dict[int, list[np.ndarray]] = {c: [] for c in chans}
    sync = np.array([[SYNC, -1, -1, 0]], np.int64)
    for st in prog.steps:
        if st.kind != "pim":
            continue
        units = _step_units(prog.pim_items(st, pos), cfg)
        for c, u in zip(chans, units):
            parts[c] += [u, sync]
    out = {}
    for c, p in parts.items():
        s = np.concatenate(p) if p else np.empty((0, 4), np.int64)
        full = np.zeros((s.shape[0], ITEM_FIELDS), np.int64)
        full[:, :4] = s
        out[c] = full
    return out


def trace_lines(prog: Program, cfg: HwConfig, pos: int) -> Iterator[str]:
    """The whole trace of the token at ``pos``, line by line (comment header, steps, EOC).
    Bad input raises :class:`EmitError` at once, before the first line."""
    check_aim_config(cfg)
    n_ctx = prog.dims.get("n_ctx")
    if n_ctx is not None and not 0 <= pos < n_ctx:
        raise EmitError(f"position {pos} is outside {prog.model}'s context 0..{n_ctx - 1}",
                        f"give a position in 0..{n_ctx - 1}")
    chans = channel_ids(cfg)
    if len(chans) != prog.geo.channels:
        raise EmitError(f"program {prog.model} was compiled for {prog.geo.channels} channels, "
                        f"config {cfg.name!r} has {len(chans)}",
                        "compile the program for this config")
    return _lines(prog, cfg, pos, chans)


def _lines(prog: Program, cfg: HwConfig, pos: int, chans: list[int]) -> Iterator[str]:
    est = _Estimator(cfg, len(chans))
    state: dict = {}
    yield f"# {prog.model} on {prog.hw}: PIM work of the decode step at position {pos}"
    yield "# written by pimsim (pimsim.aim_emit); one AiM SYNC after each PIM step"
    for st in prog.steps:
        if st.kind != "pim":
            continue
        yield f"# step {st.index} {st.name} ({st.op})"
        yield from step_lines(prog.pim_items(st, pos), chans, cfg, est, state)
        yield "AiM SYNC"
    yield "AiM EOC"


def write_aim_trace(path: str | Path, prog: Program, cfg: HwConfig, pos: int, *,
                    what: str = "AiM trace file") -> int:
    """Write the trace of the token at ``pos`` to ``path`` (atomically,
    :func:`pimsim.outputs.atomic_write`); returns the number of lines written (comments not
    counted)."""
    from pimsim.outputs import atomic_write

    lines = trace_lines(prog, cfg, pos)
    n = 0
    with atomic_write(path, what) as f:
        buf: list[str] = []
        for ln in lines:
            n += not ln.startswith("#")
            buf.append(ln)
            if len(buf) >= 65536:
                f.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            f.write("\n".join(buf) + "\n")
    return n


def stage_trace_paths(path: str | Path, n_stages: int) -> list[Path]:
    """Where the AiM traces of a system's ``n_stages`` pipeline stages go: ``path`` itself for
    one stage, else one file per stage with the stage in its name (``step.trace`` ->
    ``step.stage0.trace``, ``step.stage1.trace``, ...)."""
    path = Path(path)
    if n_stages <= 1:
        return [path]
    return [path.with_name(f"{path.stem}.stage{s}{path.suffix}") for s in range(n_stages)]


def write_stage_traces(path: str | Path, programs: list[Program], cfg: HwConfig,
                       pos: int) -> list[tuple[Path, int]]:
    """The trace of the token at ``pos`` of every pipeline stage's program (one device of each
    stage: the devices of a tensor-parallel group run the same program), one file per stage
    (:func:`stage_trace_paths`); (path, lines written) per stage."""
    return [(p, write_aim_trace(p, prog, cfg, pos))
            for p, prog in zip(stage_trace_paths(path, len(programs)), programs, strict=True)]


def aim_trace_text(prog: Program, cfg: HwConfig, pos: int) -> str:
    """The trace of the token at ``pos`` as one string."""
    return "\n".join(trace_lines(prog, cfg, pos)) + "\n"


def decode_pim_cycles(prog: Program, cfg: HwConfig, pos: int) -> int:
    """PIM time of the token at ``pos`` in pimsim's own decode simulation (the executor of
    ``pimsim run``, fresh state): the sum of its PIM steps' durations without the link latency
    each step adds, i.e. the work an emitted trace carries."""
    from pimsim.decode import DecodeSimulator

    sim = DecodeSimulator(prog, cfg)
    tt = sim.run_token(pos)
    pim = np.array([s.kind == "pim" for s in prog.steps])
    return int((tt.step_end - tt.step_start)[pim].sum() - pim.sum() * sim.link_lat)
