"""Cycle-by-cycle timing of GPT decode steps: a Program run token by token on a PIM system.

Each token runs every step of the program at its position. A PIM step issues its per-channel
instruction streams through the channel timing kernels (with refresh, row policy, every rule);
it ends when the slowest channel is done, and its link has moved the step's transfers
(:mod:`pimsim.link`: bytes queued on each channel's link at ``link.bytes_per_cyc``), plus the
link latency (``link.latency_cyc``). An ASIC step takes ``op_latency_cyc + ceil(n / vector_lanes) *
op_passes`` ASIC cycles, converted to DRAM command cycles. Two schedules:

* ``serial`` (the PIM-GPT paper): every step starts after the previous one ended; ASIC and PIM
  never overlap.
* ``overlap``: a step starts once its dependencies are done; PIM steps queue in order on the
  channels and ASIC steps in order on the ASIC, so independent work overlaps.

Two executors give identical cycles: a SimPy one (ASIC and channel processes, a barrier per PIM
step) with command-by-command kernels, and a fast one that runs a whole token in one numba call
with closed-form runs, one simulation per group of equivalent channels and a memo of units
simulated before. Tests hold them equal.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import simpy

from pimsim.cent_ops import host_lines
from pimsim.config import HwConfig
from pimsim.isa import ITEM_FIELDS, Program
from pimsim.link import (
    lead_columns,
    lead_columns_at,
    lead_delay_cyc,
    link_busy_cyc,
    link_latency_cyc,
    transfer_bytes,
    transfer_bytes_at,
)
from pimsim.spec.commands import N_CMDS
from pimsim.system import CommCost, collective
from pimsim.timing import ChannelStates, ChannelTimer
from pimsim.timing.jit import compile_scope
from pimsim.timing.memo import new_memo
from pimsim.timing.state import NO_MEMO, ST_HITS, ST_MISSES
from pimsim.timing.tables import build_tables
from pimsim.timing.token_runner import (
    MIN_BLOCK_ITEMS,
    R_MAX,
    R_MIN,
    asic_gap,
    block_period,
    copy_moved,
    new_scratch,
    run_steps,
    segment_classes,
)

ASIC_COST_OP = {"argmax": "reduction"}  # ops without their own cost row use another's
KIND_CODE = {"asic": 0, "pim": 1, "comm": 2}  # step kinds as the kernels see them
# the memo of whole channel segments (DecodeSimulator.seg_memo): words and entries; when full it
# is cleared (the segments that recur are recorded again)
SEG_MEMO_WORDS = 1 << 25
SEG_MEMO_ENTRIES = 1 << 17


def asic_cycles(cfg: HwConfig, op: str, n_elems: int) -> int:
    """Cost of one ASIC op on ``n_elems`` elements, in DRAM command cycles (rounded up)."""
    a = cfg.asic
    key = ASIC_COST_OP.get(op, op)
    cyc = a.op_latency_cyc[key] + math.ceil(n_elems / a.vector_lanes) * a.op_passes[key]
    return math.ceil(cyc * 1e6 / a.clock_mhz / cfg.tCK_ps)


def comm_cost(cfg: HwConfig, prog: Program, step) -> CommCost:
    """Time and wire bits of a collective step on the system's interconnect
    (:mod:`pimsim.system`): ``n_elems`` data elements per device over the program's tensor-
    parallel group; an all-reduce's adds (each device sums the others' contributions to its
    share) run on the device's ASIC."""
    if step.op == "host_sample":  # the host's sampling time, not a collective
        return CommCost(cfg.system.host_sample_ns, 0)
    ic, n = cfg.system.interconnect, prog.tp
    n_bytes = step.n_elems * prog.geo.elem_bytes
    reduce_ns = 0.0
    if step.op == "all_reduce" and n > 1:
        adds = math.ceil(step.n_elems / n) * (n - 1)
        reduce_ns = asic_cycles(cfg, "residual", adds) * cfg.tCK_ps / 1000.0
    return collective(ic, step.op, n, n_bytes, reduce_ns)


class LinkCycles:
    """Per-region link cycles: busy cycles of transfer byte counts, and the delay of the
    leading input (memoised: a program has few distinct values)."""

    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        self._busy: dict[int, int] = {0: 0}
        self._lead: dict[int, int] = {0: 0}

    @staticmethod
    def _map(arr: np.ndarray, memo: dict[int, int], fn) -> np.ndarray:
        vals, inv = np.unique(arr, return_inverse=True)
        out = np.empty(len(vals), np.int64)
        for i, b in enumerate(vals.tolist()):
            v = memo.get(b)
            if v is None:
                v = memo[b] = fn(b)
            out[i] = v
        return out[inv].reshape(arr.shape)

    def busy(self, seg_bytes: np.ndarray) -> np.ndarray:
        return self._map(seg_bytes, self._busy, lambda b: link_busy_cyc(self.cfg, b))

    def lead(self, seg_lead_cols: np.ndarray) -> np.ndarray:
        return self._map(seg_lead_cols, self._lead, lambda n: lead_delay_cyc(self.cfg, n))


class StepTable:
    """The program's steps as arrays for the executors."""

    def __init__(self, prog: Program, cfg: HwConfig):
        steps = prog.steps
        self.kind = np.array([KIND_CODE[s.kind] for s in steps], np.int64)
        self.pim_index = np.cumsum(self.kind == 1) - 1
        self.n_pim = int((self.kind == 1).sum())
        dep_start = [0]
        dep_idx: list[int] = []
        for s in steps:
            dep_idx += list(s.deps)
            dep_start.append(len(dep_idx))
        self.dep_start = np.array(dep_start, np.int64)
        self.dep_idx = np.array(dep_idx, np.int64)
        self.comm = {s.index: comm_cost(cfg, prog, s) for s in steps if s.kind == "comm"}
        # a batch's expert steps on the ASIC and the interconnect: their elements follow the
        # vectors routed to the expert (pimsim.batch.BatchedProgram.route)
        routed = getattr(prog, "routed_step", None)
        self.routed = {s.index for s in steps
                       if routed is not None and s.kind != "pim" and routed(s)}
        self._comm_routed: dict[tuple[int, int], CommCost] = {}
        self.fixed_cyc = np.array(
            [-1 if s.index in self.routed else
             asic_cycles(cfg, s.op, s.n_elems) if s.kind == "asic" and not s.per_pos_elems else
             self.comm[s.index].cycles(cfg.tCK_ps) if s.kind == "comm" else -1
             for s in steps], np.int64)
        self.prog = prog
        self.cfg = cfg
        self._asic_cyc: dict[tuple[str, int], int] = {}  # (op, elements) -> asic_cycles

    def comm_of(self, i: int) -> CommCost:
        """The cost of collective step ``i`` for the vectors it moves this step."""
        if i not in self.routed:
            return self.comm[i]
        s = self.prog.steps[i]
        n = self.prog.step_elems(s)
        got = self._comm_routed.get((i, n))
        if got is None:
            got = self._comm_routed[(i, n)] = comm_cost(self.cfg, self.prog,
                                                        dataclasses.replace(s, n_elems=n))
        return got

    def durations(self, pos: int) -> np.ndarray:
        dur = self.fixed_cyc.copy()
        for i in np.flatnonzero(dur < 0):
            s = self.prog.steps[i]
            if s.kind == "asic":
                key = (s.op, self.prog.asic_elems(s, pos))
                got = self._asic_cyc.get(key)
                if got is None:
                    got = self._asic_cyc[key] = asic_cycles(self.cfg, *key)
                dur[i] = got
            elif s.kind == "comm":
                dur[i] = self.comm_of(int(i)).cycles(self.cfg.tCK_ps)
            else:
                dur[i] = 0
        return dur


_GATHERED = object()  # build(): a region written in place from a GatherPlan


class StreamBuilder:
    """Per-token channel streams: every PIM step's items, one region per (channel, step).

    Items that do not depend on the position are built once and stay in place; a
    position-dependent step's region is rewritten only when its items change (regions have
    room to grow; a region that outgrows its room moves to the end of the buffer, with room
    for half as many items again; where a region lies does not change what its items
    do). ``build`` returns
    the item buffer and each region's used span ``[seg_lo, seg_hi)``; ``seg_bytes`` holds the
    bytes each region moves across the link and ``seg_lead`` the input columns its first item
    needs (:func:`pimsim.link.transfer_bytes`, :func:`pimsim.link.lead_columns`).

    ``compact`` (the fast executor only): a batched weight product's region holds its first
    pass once and then the rest (:meth:`~pimsim.batch.BatchedProgram.matvec_passes`), with
    ``seg_block`` the pass's items and ``seg_reps`` its repeats: the kernel runs the pass
    ``seg_reps`` times, then the rest (:func:`~pimsim.timing.token_runner.run_blocks`), the
    same commands as the items written out (a batch's passes are copies of one pass: a
    128-sequence step of a 7B model holds ~20 M items written out, ~0.2 M compact)."""

    def __init__(self, prog: Program, *, compact: bool = False):
        self.prog = prog
        self.compact = compact
        self.pim_steps = [s for s in prog.steps if s.kind == "pim"]
        self._static: dict[int, list[np.ndarray]] = {}
        # step index -> per channel (items of the pass, its repeats, link bytes of the region)
        self._passes: dict[int, list[tuple[int, int, int]]] = {}
        self.col_bytes = prog.geo.col_elems * prog.geo.elem_bytes
        # a batch's expert products: their vectors follow the step's routing, so their items
        # are rebuilt (items_key: the vectors routed) like a position-dependent step's
        routed = getattr(prog, "routed_step", None)
        self._routed = {s.index for s in self.pim_steps
                        if routed is not None and s.matrix is not None and routed(s)}
        for s in self.pim_steps:
            if s.index in self._routed:
                continue
            passes = prog.matvec_passes(s) if compact and hasattr(prog, "matvec_passes") \
                else None
            if passes is not None:
                self._static[s.index] = self._compact(s.index, passes)
            elif s.matrix is not None or s.op == "param_fetch":
                self._static[s.index] = prog.pim_items(s, 0)
        self.n_ch = prog.geo.channels
        n_seg = len(self.pim_steps)
        # steps of one items_key_scope share their items keys at every position: each key is
        # computed once per build (a plain Program's keys only; a batched program's have their
        # own cache)
        own_keys = type(prog).items_key is Program.items_key
        self._scope = [prog.items_key_scope(s) if own_keys and s.index not in self._static
                       else None for s in self.pim_steps]
        # the steps whose items may change from build to build
        self._dynamic = [k for k, s in enumerate(self.pim_steps) if s.index not in self._static]
        # dynamic steps whose items are an earlier one's with the rows moved, at every position
        # (Program.items_shift: every layer's attention over KV caches of one shape): step ->
        # (that step, the offset). After the first build they are copied from it, moved
        self._follow: dict[int, tuple[int, int]] = {}
        if own_keys:
            leads: list[int] = []
            for k in self._dynamic:
                s = self.pim_steps[k]
                if s.kv is None or s.index in self._routed:
                    continue
                for k0 in leads:
                    d = prog.items_shift(s, self.pim_steps[k0])
                    if d is not None:
                        self._follow[k] = (k0, d)
                        break
                else:
                    leads.append(k)
        # the steps whose regions the last build rewrote (None: all of them, laid out anew),
        # and the builds so far (a user of ``changed`` knows whether it saw the one before)
        self.changed: np.ndarray | None = None
        self.n_builds = 0
        self._last: list[list[np.ndarray] | None] = [None] * n_seg
        self._keys: list[object] = [None] * n_seg  # Program.items_key of the items in place
        self.cap = np.zeros((self.n_ch, n_seg), np.int64)
        self.seg_lo = np.zeros((self.n_ch, n_seg), np.int64)
        self.seg_hi = np.zeros((self.n_ch, n_seg), np.int64)
        self.items = np.empty((0, ITEM_FIELDS), np.int64)
        self._end = 0  # items in use by regions (the buffer may be longer)
        self.seg_cls = np.zeros((self.n_ch, n_seg), np.int64)  # see kernel.segment_classes
        # per region: rows moved from its class's, least and greatest row (segment_classes)
        self.seg_rows = np.zeros((self.n_ch, n_seg, 3), np.int64)
        self.seg_bytes = np.zeros((self.n_ch, n_seg), np.int64)
        self.seg_lead = np.zeros((self.n_ch, n_seg), np.int64)  # pimsim.link.lead_columns
        # the block a static region repeats (token_runner.block_period; 0: none)
        self.seg_block = np.zeros((self.n_ch, n_seg), np.int64)
        # compact regions: the times their block runs before the rest (0: written out)
        self.seg_reps = np.zeros((self.n_ch, n_seg), np.int64)
        # lines CENT's host writes for each region's step (pimsim.cent_ops.host_lines; 0 for
        # every step not of CENT's lowering), decoded by the device's DMA one after another:
        # the all-channel lines and the single-bank ones
        self.seg_host = np.zeros(n_seg, np.int64)
        self.seg_host_bank = np.zeros(n_seg, np.int64)

    def _compact(self, index: int, passes: list) -> list[np.ndarray]:
        """A compact region's items (each channel's first pass, then the rest), its pass
        figures kept in ``_passes``."""
        per_ch = []  # (pass items, repeats, link bytes); one pass (or none) stays written out
        for b, r, t in passes:
            n = r * transfer_bytes(b, self.col_bytes) + transfer_bytes(t, self.col_bytes)
            per_ch.append((len(b), r, n) if len(b) and r > 1 else (0, 0, n))
        self._passes[index] = per_ch
        return [np.concatenate([b, t]) for b, _, t in passes]

    def build(self, pos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.n_builds += 1
        first = any(last is None for last in self._last)
        gather = getattr(self.prog, "gather_plan", None) if not first else None
        # static steps keep their items (the same arrays): only the others are looked at
        per_step = list(self._last) if not first else \
            [self._static.get(s.index) for s in self.pim_steps]
        gathered = []  # steps whose items a GatherPlan wrote in place
        keys: dict = {}  # items_key_scope -> the key at pos
        for k in self._dynamic:
            if not first and k in self._follow:
                continue  # copied from the step it follows, below
            s = self.pim_steps[k]
            scope = self._scope[k]
            if scope is None:
                key = self.prog.items_key(s, pos)
            else:
                key = keys.get(scope)
                if key is None:
                    key = keys[scope] = self.prog.items_key(s, pos)
            if self._last[k] is not None and key == self._keys[k]:
                continue
            plan = gather(s, pos) if gather is not None and not s.cent else None
            if plan is not None:
                self._fill(k, plan)
                gathered.append(k)
                arrs = _GATHERED
            else:
                if s.index in self._routed and self.compact:
                    arrs = self._compact(s.index, self.prog.matvec_passes(s))
                else:
                    arrs = self.prog.pim_items(s, pos)
                if s.cent:
                    self.seg_host[k], self.seg_host_bank[k] = host_lines(arrs)
            self._keys[k] = key
            per_step[k] = arrs
        if first:  # the first build: lay every region out
            self._layout(per_step)
            self._last = per_step
            self.changed = None
            return self.items, self.seg_lo, self.seg_hi
        writes = []
        for k in self._dynamic:
            arrs, last = per_step[k], self._last[k]
            if arrs is last or arrs is _GATHERED:
                continue
            for c in range(self.n_ch):
                if last is _GATHERED or arrs[c] is not last[c]:
                    if len(arrs[c]) > self.cap[c, k]:
                        self._move_to_end(c, k, len(arrs[c]))
                    writes.append((c, k, arrs[c]))
        if writes:
            wc = np.array([c for c, _, _ in writes], np.int64)
            wk = np.array([k for _, k, _ in writes], np.int64)
            lo = self.seg_lo[wc, wk]
            n = np.array([len(a) for _, _, a in writes], np.int64)
            for (_, _, a), at in zip(writes, lo.tolist()):
                self.items[at:at + len(a)] = a
            self.seg_hi[wc, wk] = lo + n
            self.seg_lead[wc, wk] = lead_columns_at(self.items, lo, n)
            self.seg_bytes[wc, wk] = transfer_bytes_at(self.items, lo, n, self.col_bytes)
            for c, k, a in writes:
                index = self.pim_steps[k].index
                if index in self._routed:  # an expert's product: as laid out, for its vectors
                    self._region_passes(c, k, index, int(self.seg_lo[c, k]), len(a))
        dirty = np.unique(np.concatenate([wk if writes else np.zeros(0, np.int64),
                                          np.array(gathered, np.int64)]))
        if len(dirty):
            segment_classes(self.items, self.seg_lo, self.seg_hi, self.seg_reps, dirty,
                            self.seg_cls, self.seg_rows)
            dirty = self._copy_followers(dirty)
        self.changed = dirty
        self._last = per_step
        return self.items, self.seg_lo, self.seg_hi

    def _copy_followers(self, dirty: np.ndarray) -> np.ndarray:
        """Rewrite the regions of the steps that follow a rewritten one (``_follow``): its
        items with the rows moved, the same link bytes, lead, classes and row ranges moved.
        Returns the rewritten steps, theirs added."""
        rewritten = set(dirty.tolist())
        fol = [(k, k0, d) for k, (k0, d) in self._follow.items() if k0 in rewritten]
        if not fol:
            return dirty
        dst = np.array([f[0] for f in fol], np.int64)
        src = np.array([f[1] for f in fol], np.int64)
        shift = np.array([f[2] for f in fol], np.int64)
        need = self.seg_hi[:, src] - self.seg_lo[:, src]
        for c, j in zip(*np.nonzero(need > self.cap[:, dst])):
            self._move_to_end(int(c), int(dst[j]), int(need[c, j]))
        copy_moved(self.items, self.seg_lo, self.seg_hi, dst, src, shift)
        self.seg_lead[:, dst] = self.seg_lead[:, src]
        self.seg_bytes[:, dst] = self.seg_bytes[:, src]
        self.seg_cls[:, dst] = self.seg_cls[:, src]
        rows = self.seg_rows[:, src].copy()
        some = rows[:, :, R_MIN] <= rows[:, :, R_MAX]  # a range (else none: kept empty)
        rows[:, :, R_MIN] += np.where(some, shift, 0)
        rows[:, :, R_MAX] += np.where(some, shift, 0)
        self.seg_rows[:, dst] = rows
        return np.union1d(dirty, dst)

    def _fill(self, k: int, plan) -> None:
        """Write region ``k``'s items of every channel in place from a batched program's
        :class:`~pimsim.batch.GatherPlan` (the items :meth:`pim_items` would give, without
        building them per channel first), with their link bytes and lead columns."""
        n = plan.lengths()
        for c in np.nonzero(n > self.cap[:, k])[0]:
            self._move_to_end(int(c), k, int(n[c]))
        lo = self.seg_lo[:, k].copy()
        cols = np.zeros(self.n_ch, np.int64)
        plan.fill(self.items, lo, cols)
        self.seg_hi[:, k] = lo + n
        self.seg_bytes[:, k] = cols * self.col_bytes
        self.seg_lead[:, k] = lead_columns_at(self.items, lo, n)

    def _region_passes(self, c: int, k: int, index: int, lo: int, n: int,
                       blocks: bool = True) -> None:
        """Block, repeats and link bytes of region (``c``, ``k``) of step ``index`` (items in
        place): compact, its pass repeated; written out, the block its items repeat (where
        ``blocks``: a static region or a routed product)."""
        passes = self._passes.get(index) if self.compact else None
        if passes is not None and passes[c][1]:
            self.seg_block[c, k], self.seg_reps[c, k], self.seg_bytes[c, k] = passes[c]
            return
        self.seg_reps[c, k] = 0
        self.seg_bytes[c, k] = passes[c][2] if passes is not None else \
            transfer_bytes(self.items[lo:lo + n], self.col_bytes)
        if blocks:
            self.seg_block[c, k] = block_period(self.items, lo, lo + n, MIN_BLOCK_ITEMS)

    def _move_to_end(self, c: int, k: int, n: int) -> None:
        """Give region (``c``, ``k``) room for ``n`` items and half as many again at the end of
        the buffer (grown by doubling); its old room is left unused."""
        room = n + n // 2 + 16
        need = self._end + room
        if need > len(self.items):
            grown = np.zeros((max(need, 2 * len(self.items)), ITEM_FIELDS), np.int64)
            grown[:self._end] = self.items[:self._end]
            self.items = grown
        self.seg_lo[c, k] = self._end
        self.cap[c, k] = room
        self._end = need

    def _layout(self, per_step: list[list[np.ndarray]]) -> None:
        n_seg = len(per_step)
        for k, s in enumerate(self.pim_steps):
            for c in range(self.n_ch):
                n = len(per_step[k][c])
                grow = n if s.index in self._static else n + n // 2 + 16
                self.cap[c, k] = max(self.cap[c, k], grow)
        lo = np.concatenate([[0], np.cumsum(self.cap.ravel())[:-1]]).reshape(self.cap.shape)
        self.seg_lo[:] = lo
        self._end = int(self.cap.sum())
        self.items = np.zeros((self._end, ITEM_FIELDS), np.int64)
        for k in range(n_seg):
            idx = self.pim_steps[k].index
            blocks = idx in self._static or idx in self._routed
            for c in range(self.n_ch):
                a = per_step[k][c]
                self.items[lo[c, k]:lo[c, k] + len(a)] = a
                self.seg_hi[c, k] = lo[c, k] + len(a)
                self.seg_lead[c, k] = lead_columns(a)
                self._region_passes(c, k, idx, lo[c, k], len(a), blocks)
        segment_classes(self.items, self.seg_lo, self.seg_hi, self.seg_reps,
                        np.arange(n_seg, dtype=np.int64), self.seg_cls, self.seg_rows)


@dataclass
class TokenTiming:
    pos: int
    start_cyc: int
    end_cyc: int
    step_start: np.ndarray
    step_end: np.ndarray
    step_counts: np.ndarray  # [n_steps, n_cmds], critical channel of each PIM step
    step_link: np.ndarray  # [n_steps] link busy cycles of the critical channel (0: ASIC steps)
    # [n_steps, 2] of the critical channel of each PIM step: its lead (cycles its first command
    # waited for data on the link) and the cycles its link went on after its commands completed
    step_wait: np.ndarray | None = None


@dataclass
class TokenJob:
    """A decode step prepared to run (:meth:`DecodeSimulator.prepare`): the steps' kinds this
    token, the streams and their regions, link cycles and step durations."""

    pos: int
    kind: np.ndarray
    items: np.ndarray
    seg_lo: np.ndarray
    seg_hi: np.ndarray
    seg_cls: np.ndarray
    seg_rows: np.ndarray
    seg_block: np.ndarray
    seg_reps: np.ndarray
    busy: np.ndarray
    lead: np.ndarray
    dur: np.ndarray


class DecodeSimulator:
    """Runs a Program token after token, keeping DRAM state (open rows, refresh) across tokens."""

    # fast executor: periods of repeated blocks stepped in closed form (run_blocks; exact, tests
    # compare with it off)
    block_cycles = True

    def __init__(self, prog: Program, cfg: HwConfig, *, schedule: str = "serial",
                 fast: bool = True, log: bool = False, group: bool = True,
                 memo: bool | np.ndarray = True, streams: StreamBuilder | None = None,
                 step_table: StepTable | None = None):
        """``log`` keeps every issued command (SimPy executor only; see :meth:`command_log`).
        ``group`` (fast executor) simulates one channel of each group of channels with identical
        streams and equivalent states and copies its result to the others; ``memo`` (fast
        executor) replays units of items simulated before from an equivalent state: True for a
        memo of its own, or a memo array (:func:`~pimsim.timing.memo.new_memo`) shared with
        other simulators of the same config (entries hold outcomes relative to the state they
        start from, so they are exact for any simulator of that config). ``streams``: a
        :class:`StreamBuilder` of ``prog`` to reuse (its items are a function of the positions
        only; the device state starts fresh all the same); ``step_table``: a
        :class:`StepTable` of ``prog`` and ``cfg`` to reuse."""
        if schedule not in ("serial", "overlap"):
            raise ValueError(f"schedule must be 'serial' or 'overlap', got {schedule!r}")
        if log and fast:
            raise ValueError("the command log is kept by the command-by-command executor: "
                             "use fast=False with log=True")
        self.prog, self.cfg, self.schedule, self.fast = prog, cfg, schedule, fast
        self.group = group
        self.channels_run = 0  # channel segments the fast executor actually simulated
        if not fast or memo is False:
            self.memo = NO_MEMO
        else:
            self.memo = memo if isinstance(memo, np.ndarray) else new_memo()
        # whole channel segments as memo units (run_steps), in a memo of their own
        self.seg_memo = (NO_MEMO if self.memo is NO_MEMO
                         else new_memo(SEG_MEMO_WORDS, SEG_MEMO_ENTRIES))
        self._scratch = new_scratch()
        if step_table is not None and (step_table.prog is not prog or step_table.cfg is not cfg):
            raise ValueError("the step table was made for another program or config")
        self.steps = step_table if step_table is not None else StepTable(prog, cfg)
        if streams is not None and streams.prog is not prog:
            raise ValueError("the stream builder was made for another program")
        if streams is not None and streams.compact and not fast:
            raise ValueError("compact streams are for the fast executor: the command-by-"
                             "command executor reads every item (StreamBuilder(compact=False))")
        self.streams = streams if streams is not None else StreamBuilder(prog, compact=fast)
        self.tables = build_tables(cfg, fast=fast)
        self.states = ChannelStates(cfg, prog.geo.channels, self.tables)
        self.link_lat = link_latency_cyc(cfg)
        self.link_cyc = LinkCycles(cfg)
        # id(stream builder) -> (its build count, busy, lead) of the last build (_link_cycles)
        self._link: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self.host_line_cyc = cfg.host.line_cyc if cfg.host is not None else 0
        # CENT's pipeline trace: every stage on the device writes its single-bank lines for
        # each in-bank step through the one DMA at once ([system] host_lines = "device")
        sysm = cfg.system
        self.host_line_stages = sysm.stages_per_device if sysm.host_lines == "device" else 1
        self.now = 0
        # the device's ASIC cycles already taken by other pipeline stages on the device (rows
        # [begin, end), disjoint, in order; pimsim.pipeline sets them before each job): this
        # program's ASIC steps wait for a gap that holds them. No rows: the ASIC is its own
        self.asic_busy = np.zeros((0, 2), np.int64)
        self.timers = [ChannelTimer(cfg, states=self.states, index=c, log=log)
                       for c in range(prog.geo.channels)]

    def run_token(self, pos: int, active: np.ndarray | None = None) -> TokenTiming:
        """One decode step at ``pos``; ``active``: a mask of the steps that run this token
        (:func:`pimsim.moe.active_steps`: only the chosen experts' steps), None for all (with
        expert parallelism: every expert chosen, each device running its own)."""
        return self.execute(self.prepare(pos, active))

    def prepare(self, pos: int, active: np.ndarray | None = None,
                streams: StreamBuilder | None = None) -> TokenJob:
        """What the decode step at ``pos`` runs (its streams built, link cycles, durations),
        without the device state: :meth:`execute` runs it. ``streams``: another
        :class:`StreamBuilder` of the program to build into (the simulator's own by default),
        so that a step can be prepared while the one before runs on its own streams
        (:class:`OverlappedTokens`)."""
        if active is None and getattr(self.prog, "ep", 1) > 1 and self.prog.moe:
            from pimsim.expert_parallel import every_expert
            from pimsim.moe import active_steps

            active = active_steps(self.prog, every_expert(self.prog))
        sb = self.streams if streams is None else streams
        if sb.prog is not self.prog:
            raise ValueError("the stream builder was made for another program")
        kind = self.steps.kind if active is None else np.where(active, self.steps.kind, 3)
        items, seg_lo, seg_hi = sb.build(pos)
        busy, lead = self._link_cycles(sb)
        return TokenJob(pos, kind, items, seg_lo, seg_hi, sb.seg_cls, sb.seg_rows, sb.seg_block,
                        sb.seg_reps, busy, lead, self.steps.durations(pos))

    def execute(self, job: TokenJob) -> TokenTiming:
        """Run a prepared decode step (:meth:`prepare`) from the device state now: the fast
        executor's kernel releases the GIL, so another thread may prepare the next step."""
        n = len(self.prog.steps)
        st, en = np.zeros(n, np.int64), np.zeros(n, np.int64)
        cnt = np.zeros((n, N_CMDS), np.int64)
        lk = np.zeros(n, np.int64)
        wt = np.zeros((n, 2), np.int64)
        t0 = self.now
        if self.fast:
            s, t = self.steps, self.tables
            with compile_scope():
                now, n_run = run_steps(
                    job.items, job.seg_lo, job.seg_hi, job.seg_cls, job.kind, s.pim_index,
                    job.dur, s.dep_start, s.dep_idx, int(self.schedule == "serial"),
                    self.link_lat, job.busy, job.lead, t0, t.cmd_tab, t.pr_start, t.pr_tab,
                    t.win_tab, t.geom, self.states.ready, self.states.win_hist,
                    self.states.win_cnt, self.states.open_row, self.states.scal,
                    self.states.counts, self.states.stats, st, en, cnt, lk, wt, int(self.group),
                    self.memo, job.seg_block, job.seg_reps, int(self.block_cycles),
                    self.asic_busy, job.seg_rows, self.seg_memo, self._scratch)
            self.now = int(now)
            self.channels_run += int(n_run)
        else:
            self.now = self._run_token_simpy(job.items, job.seg_lo, job.seg_hi, job.busy,
                                             job.lead, job.dur, t0, st, en, cnt, lk, wt,
                                             job.kind)
        return TokenTiming(job.pos, t0, self.now, st, en, cnt, lk, wt)

    def _link_cycles(self, sb: StreamBuilder) -> tuple[np.ndarray, np.ndarray]:
        """Each region's link busy cycles and lead delay for the streams ``sb`` just built: the
        regions the build rewrote are computed again, the rest kept from the build before
        (when this simulator saw it; else all of them)."""
        got = self._link.get(id(sb))
        if got is None or got[0] != sb.n_builds - 1 or sb.changed is None:
            cols = slice(None)
            busy = np.zeros(sb.seg_bytes.shape, np.int64)
            lead = np.zeros(sb.seg_lead.shape, np.int64)
        else:
            cols, busy, lead = sb.changed, got[1], got[2]
        self._link[id(sb)] = (sb.n_builds, busy, lead)
        if isinstance(cols, np.ndarray) and not len(cols):
            return busy, lead
        b = self.link_cyc.busy(sb.seg_bytes[:, cols])
        if self.host_line_cyc:
            # CENT's lowering: the step's host lines pass the device's DMA one after another
            # (line_cyc each, a write line carrying its data) while the channels work; a
            # channel is not done before they are through
            lines = sb.seg_host[cols] + self.host_line_stages * sb.seg_host_bank[cols]
            b = np.maximum(b, self.host_line_cyc * lines[None, :])
        busy[:, cols] = b
        lead[:, cols] = self.link_cyc.lead(sb.seg_lead[:, cols])
        return busy, lead

    def _run_token_simpy(self, items, seg_lo, seg_hi, busy, lead, dur, t0, st, en, cnt,
                         lk, wt, kind=None) -> int:
        """Reference executor: SimPy processes for the steps, the ASIC and each channel.

        PIM steps reach the channels in program order (each channel is an in-order queue); the
        ASIC takes its steps in program order. Each channel's link takes a step's transfers
        (``busy`` cycles) in program order too, from the step's start; a channel starts its
        part ``lead`` cycles after the step (its first command's data crossing the link)."""
        prog, s = self.prog, self.steps
        kind = s.kind if kind is None else kind
        n_ch = prog.geo.channels
        timers = self.timers
        env = simpy.Environment(initial_time=t0)
        done_ev = [env.event() for _ in prog.steps]
        issued = [env.event() for _ in prog.steps]  # a PIM step has handed its commands over
        serial = self.schedule == "serial"
        asic = simpy.Resource(env, capacity=1)
        fabric = simpy.Resource(env, capacity=1)
        link_free = [t0] * n_ch
        prev_pim = [-1] * len(prog.steps)
        last = -1
        for i in range(len(prog.steps)):
            prev_pim[i] = last
            if kind[i] == 1:
                last = i

        def channel(c: int, k: int, start: int, out: list):
            before = timers[c].counts.copy()
            timers[c].run(items, int(seg_lo[c, k]), start, end=int(seg_hi[c, k]))
            out[c] = (timers[c].done_cyc, timers[c].counts - before)
            yield env.timeout(max(0, timers[c].done_cyc - env.now))

        def step(i: int):
            req = asic.request() if kind[i] == 0 else \
                fabric.request() if kind[i] == 2 else None  # FIFO: program order
            deps = [done_ev[j] for j in prog.steps[i].deps]
            if serial and i > 0:
                deps.append(done_ev[i - 1])
            if deps:
                yield env.all_of(deps)
            start = int(env.now)
            if kind[i] == 3:  # not run this token (an expert not chosen)
                st[i], en[i] = start, start
                done_ev[i].succeed()
                return
            if kind[i] == 1:
                if prev_pim[i] >= 0:
                    yield issued[prev_pim[i]]
                out: list = [None] * n_ch
                k = int(s.pim_index[i])
                procs = [env.process(channel(c, k, start + int(lead[c, k]), out))
                         for c in range(n_ch)]
                ends = []
                for c in range(n_ch):  # the link takes the step's transfers in program order
                    link_start = max(start, link_free[c])
                    link_free[c] = link_start + int(busy[c, k])
                    ends.append(link_free[c])
                issued[i].succeed()
                yield env.all_of(procs)
                done, crit = start, 0
                for c in range(n_ch):
                    e = max(out[c][0], ends[c])
                    if e > done:
                        done, crit = e, c
                cnt[i] = out[crit][1]
                lk[i] = busy[crit, k]
                wt[i] = lead[crit, k], done - max(out[crit][0], start)
                end = done + self.link_lat
            else:
                yield req
                start = int(env.now)
                if kind[i] == 0 and len(self.asic_busy):  # the device's ASIC: a gap that holds it
                    start = int(asic_gap(self.asic_busy, start, int(dur[i])))
                    yield env.timeout(start - env.now)
                end = start + int(dur[i])
            yield env.timeout(max(0, end - env.now))
            if req is not None:
                (asic if kind[i] == 0 else fabric).release(req)
            st[i], en[i] = start, end
            done_ev[i].succeed()

        for i in range(len(prog.steps)):
            env.process(step(i))
        env.run()
        return int(max(en.max(), t0))

    # ------------------------------------------------------------------ totals
    def command_log(self) -> np.ndarray:
        """Issued commands so far, rows (cycle, channel, bank, row, cmd) sorted by cycle."""
        from pimsim.engine import merged_log

        return merged_log(list(enumerate(self.timers)))

    @property
    def command_counts(self) -> dict[str, int]:
        from pimsim.spec.commands import COMMANDS
        tot = self.states.counts.sum(axis=0)
        return {c.name: int(n) for c, n in zip(COMMANDS, tot) if n}

    @property
    def row_hits(self) -> int:
        return int(self.states.stats[:, ST_HITS].sum())

    @property
    def row_misses(self) -> int:
        return int(self.states.stats[:, ST_MISSES].sum())
