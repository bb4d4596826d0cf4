"""Batched decode: B sequences, each at its own position, in one decode step on one PIM device.

A batched step is the program's step run once for ``B`` sequences (:class:`BatchedProgram`, a
:class:`~pimsim.isa.Program` whose positions are a tuple, one per sequence):

* weight matrix-vector products share every row activation: the loop order's
  :meth:`~pimsim.isa.MatvecOrder.items` with ``batch=B`` (the global buffer holds the pieces of
  as many sequences' input vectors as fit, each sequence MACs into its own accumulator while
  the row is open; the sequences that do not fit are further passes that refill the buffer);
  the layer parameters (``param_fetch``) are fetched once for all;
* every sequence has its own KV-cache region: sequence 0 uses the compiled program's, sequence
  ``b >= 1`` a copy of the whole KV block placed above every row the program uses; its
  ``kv_write`` / ``attn_score`` / ``attn_value`` items are those of its own layouts at its own
  position, one sequence after the other in the step's stream; the embedding reads one table
  row per sequence;
* ASIC and collective steps work on ``B`` vectors in one invocation: fixed element counts
  times ``B``; per-position counts (softmax) follow each sequence's own position;
* a mixture of experts' expert steps (``Step.expert``) compute only the vectors of the
  sequences routed to the expert (:meth:`BatchedProgram.route`): its weight products one pass
  per pass group of those vectors, its ASIC steps and collectives their elements; an expert
  no sequence chose does not run; the router, attention and shared experts run for all ``B``.

Batch 1 is the compiled program exactly (the same items, element counts and cycles).
:func:`run_batched` runs the steps through :class:`~pimsim.decode.DecodeSimulator` (fast or
command-by-command executor: the items are data) and reports the time per step against the
PIM system's MAC-rate bound (:func:`mac_bound_cyc`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from pimsim.accounting import TimeAccount
from pimsim.config import HwConfig
from pimsim.decode import DecodeSimulator, StepTable, StreamBuilder
from pimsim.energy import EnergyReport
from pimsim.errors import HardwareFitError, UserError
from pimsim.generate import (
    Executor,
    TokenEnergy,
    _energy_summary,
    check_run,
    tpot_ms,
)
from pimsim.isa import (
    ITEM_FIELDS,
    Program,
    Step,
    _attn_score_items,
    _attn_value_items,
    _build_v_write_items,
    _k_write_items,
    _kv_write_items,
    _matvec_items,
    _v_write_place,
    matvec_passes,
    window_pos,
)
from pimsim.prefill import check_prefill, prefill_functional, prefill_positions, use_program
from pimsim.report import RunReport, TimeTotals
from pimsim.timing.jit import cached_njit

MAC_BOUND_FORMULA = ("B x weight MACs / (PIM units x MACs per unit per cycle); PIM units = banks / "
                     "banks_per_pim_unit, MACs per unit per cycle = MAC lanes / nCCDL")


class BatchCapacityError(UserError, HardwareFitError):
    """The KV caches of the asked batch do not fit the device's rows."""


def check_batch(batch: object) -> int:
    """``batch`` as an int >= 1, else a UserError."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise UserError(f"batch {batch!r}: the batch is the number of sequences decoded together",
                        "give a whole number of sequences, at least 1")
    return int(batch)


def rows_in_use(prog: Program) -> int:
    """One past the highest DRAM row any layout of ``prog`` occupies (in any channel)."""
    top = 0
    if prog.vec_layout is not None:
        top = prog.vec_layout.base_row + prog.vec_layout.rows_reserved
    mats = list(prog.matrices.values()) + list(prog.tables.values()) + \
        [s.matrix for s in prog.steps if s.matrix is not None]
    for m in mats:
        top = max(top, max(m.base_row[c] + m.rows_used(c) for c in range(m.geo.channels)))
    for kl, vl in prog.kv_layouts:
        top = max(top, _kv_end(prog, kl, vl))
    return top


def _kv_end(prog: Program, kl, vl) -> int:
    """One past the last row of one attention's K and V caches, with a pipeline stage's
    further caches of the sequences in flight placed after its V (``n_stages - 1`` more K/V
    pairs, :mod:`compiler.passes.place`)."""
    end = max(kl.base_row + kl.rows_reserved, vl.base_row + vl.rows_reserved)
    return end + (prog.n_stages - 1) * (kl.rows_reserved + vl.rows_reserved)


def kv_block(prog: Program) -> tuple[int, int]:
    """(first row, rows) of the program's KV caches (every attention's K and V, as placed; a
    pipeline stage's: with the caches of its other sequences in flight)."""
    if not prog.kv_layouts:
        return 0, 0
    lo = min(min(kl.base_row, vl.base_row) for kl, vl in prog.kv_layouts)
    hi = max(_kv_end(prog, kl, vl) for kl, vl in prog.kv_layouts)
    return lo, hi - lo


def max_batch(prog: Program) -> int:
    """The largest batch whose KV caches fit: the program's own region plus one copy of its KV
    block per further sequence, above the rows in use."""
    _, span = kv_block(prog)
    if span == 0:
        return 1 << 30
    return 1 + (prog.geo.rows - rows_in_use(prog)) // span


class BatchedProgram(Program):
    """``prog``'s decode step for ``batch`` vectors; ``pos`` arguments are a tuple of one
    position per vector (an int: every vector at that position).

    ``kv_regions``: per vector, the KV region it writes and reads (region 0 is the program's
    own, region ``r >= 1`` a copy of the KV block above the rows in use); by default vector
    ``b`` is a sequence of its own, region ``b``. A pipeline stage's KV block holds the caches
    of its ``n_stages`` micro-batches in flight (:mod:`pimsim.pipeline`): a region is a copy
    of all of them, so ``B`` regions hold ``n_stages x B`` sequences' caches (a step runs in
    the first of each region: the micro-batches' steps are alike, as the unbatched pipeline's
    sequences are). Vectors that share a region are tokens of one
    sequence (a prefill step, :mod:`pimsim.prefill`): each writes its K/V at its own position
    and attends over the region's positions up to its own. Raises
    :class:`BatchCapacityError` naming the largest batch that fits when the regions do not fit
    the rows."""

    def __init__(self, prog: Program, batch: int, *, kv_regions: Sequence[int] | None = None):
        batch = check_batch(batch)
        regions = tuple(range(batch)) if kv_regions is None else tuple(int(r) for r in kv_regions)
        if len(regions) != batch or min(regions) < 0:
            raise ValueError(f"kv_regions {kv_regions!r}: one region index >= 0 per vector of "
                             f"the batch of {batch}")
        n_regions = max(regions) + 1
        fits = max_batch(prog)
        if n_regions > fits:
            lo, span = kv_block(prog)
            raise BatchCapacityError(
                f"{prog.model} on {prog.hw}: the KV caches of {n_regions} sequences need "
                f"{rows_in_use(prog) + (n_regions - 1) * span} rows per bank, the device has "
                f"{prog.geo.rows}; the largest batch that fits is {fits}",
                f"use a batch of at most {fits} (or a shorter context, or more devices)")
        super().__init__(**{f.name: getattr(prog, f.name) for f in dataclasses.fields(Program)})
        self.base = prog
        self.batch = batch
        self.kv_regions = regions
        self.steps = [dataclasses.replace(s, n_elems=s.n_elems * batch) for s in prog.steps]
        lo, span = kv_block(prog)
        top = rows_in_use(prog)
        # per vector, the row offset of its region: region r's layouts are region 0's with
        # base_row + shift, so its items are region 0's with every row (>= 0) + shift
        shifts = [0 if r == 0 else top + (r - 1) * span - lo for r in range(n_regions)]
        self.row_shift = np.array([shifts[r] for r in regions], np.int64)
        self._region_shifts = shifts
        # what does not depend on the batch is kept per base program, shared by its batched
        # programs of every size (a serving run makes one per batch size it meets):
        shared = _shared(prog)
        self._region_kv = shared.setdefault("region_kv", {})  # region -> layer -> (K, V) layouts
        self._seq_cache = shared.setdefault("seq", {})  # step index -> items key -> region-0 items
        # (Program.items_key_scope, pos) -> items key: steps of one scope share their keys
        self._key_cache = shared.setdefault("keys", {})
        self._scopes = shared.setdefault("scopes", {})  # step index -> its items_key_scope
        self._v_cache = shared.setdefault("v", {})  # step index -> (chunk, column) -> V writes
        # (pos as asked, positions, distinct positions, per vector its index in them)
        self._last_pos: tuple | None = None
        # the step's routing (:meth:`route`): expert tag -> the vectors routed to it; None:
        # every expert's steps compute every vector
        self.routed: dict[tuple[int, int], int] | None = None

    # ------------------------------------------------------------------ routing (MoE)
    def route(self, counts: dict[tuple[int, int], int] | None) -> None:
        """The routing of the steps that follow: an expert's steps (``Step.expert``) compute
        only the vectors routed to it, ``counts[tag]`` of them (:func:`pimsim.moe.routed_steps`;
        its weight product one pass per pass group of those vectors, its ASIC work and
        collectives their elements); None: every vector (a batched prefill, serving)."""
        self.routed = None if counts is None else dict(counts)

    def routed_step(self, step: Step) -> bool:
        """Whether ``step``'s vectors follow the routing (an expert's step of a batch)."""
        return step.expert is not None and self.batch > 1

    def vectors(self, step: Step) -> int:
        """The vectors ``step`` computes under the current routing (at least 1: a step of an
        expert no vector chose does not run, :func:`pimsim.moe.routed_steps`)."""
        if self.routed is None or not self.routed_step(step):
            return self.batch
        return max(1, int(self.routed.get(step.expert, 0)))

    def step_elems(self, step: Step) -> int:
        """``step.n_elems`` for the vectors it computes (:meth:`vectors`)."""
        if self.routed is None or not self.routed_step(step):
            return step.n_elems
        return self.base.steps[step.index].n_elems * self.vectors(step)

    def weight_product_macs(self) -> int:
        """MACs of the step's weight matrix-vector products for the vectors each computes
        (every expert's for every vector without a routing; a routed step's experts that no
        vector chose: none)."""
        n = 0
        for s in self.base.steps:
            if s.matrix is None or s.matrix.role == "v_cache":
                continue
            if self.routed is not None and self.routed_step(s):
                v = int(self.routed.get(s.expert, 0))
            else:
                v = self.batch
            n += v * s.matrix.out_dim * s.matrix.in_dim
        return n

    def positions(self, pos) -> tuple[int, ...]:
        last = self._last_pos
        # a step's steps all ask with one (immutable) object
        if last is not None and last[0] is pos and isinstance(pos, (tuple, int)):
            return last[1]
        if isinstance(pos, (int, np.integer)):
            ps = (int(pos),) * self.batch
        else:
            ps = tuple(int(p) for p in pos)
            if len(ps) != self.batch:
                raise ValueError(f"{len(ps)} positions for a batch of {self.batch}")
        d = sorted(set(ps))
        at = {p: i for i, p in enumerate(d)}
        self._last_pos = (pos, ps, tuple(d), tuple(at[p] for p in ps))
        return ps

    def _distinct(self, pos) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The distinct positions of ``pos`` (ascending) and, per vector, its index in them."""
        self.positions(pos)
        return self._last_pos[2], self._last_pos[3]

    def asic_elems(self, step: Step, pos) -> int:
        if step.per_pos_elems == 0:
            return self.step_elems(step)
        return step.n_elems + step.per_pos_elems * sum(p + 1 for p in self.positions(pos))

    @property
    def seq_kv(self) -> list[dict[int, tuple]]:
        """Per vector, its region's KV layouts: layer -> (KLayout, VLayout)."""
        return [self._region(r) for r in self.kv_regions]

    def _region(self, r: int) -> dict[int, tuple]:
        got = self._region_kv.get(r)
        if got is None:
            shift = self._region_shifts[r]
            got = self._region_kv[r] = {kl.layer: (
                dataclasses.replace(kl, base_row=kl.base_row + shift),
                dataclasses.replace(vl, base_row=vl.base_row + shift))
                if shift else (kl, vl) for kl, vl in self.base.kv_layouts}
        return got

    def _kv(self, b: int, step: Step) -> tuple:
        return self._region(self.kv_regions[b])[step.kv[0].layer]

    def pim_items(self, step: Step, pos) -> list[np.ndarray]:
        """The step's items for the vectors at ``pos``: each vector's own items one vector
        after the other, as :meth:`pim_items_reference` builds them, built once per distinct
        (step, items key) from region 0's items and moved to each vector's region by adding
        its row offset to every row (items of WR_GB / RD_MAC name no row: -1 stays)."""
        ps = self.positions(pos)
        if step.matrix is not None:
            return _matvec_items(step.matrix, self.vectors(step))
        if step.op == "param_fetch":
            return self.base.pim_items(step, ps[0])
        if self.batch == 1:
            return self.pim_items_reference(step, ps)
        plan = self.gather_plan(step, pos)
        n_ch = self.geo.channels
        lens = plan.lengths()
        out = np.empty((int(lens.sum()), ITEM_FIELDS), np.int64)
        lo = np.cumsum(lens) - lens
        plan.fill(out, lo, np.zeros(n_ch, np.int64))
        return [out[lo[c]:lo[c] + lens[c]] for c in range(n_ch)]

    def gather_plan(self, step: Step, pos) -> "GatherPlan | None":
        """How the step's items for the vectors at ``pos`` are made from region 0's items of
        their distinct positions (:class:`GatherPlan`), or None where :meth:`pim_items` does not
        gather (weight products, parameter fetches, batch 1)."""
        if step.matrix is not None or step.op == "param_fetch" or self.batch == 1:
            return None
        distinct, inv = self._distinct(pos)
        seqs = [self._seq_items(step, p) for p in distinct]
        n_ch = self.geo.channels
        # the distinct positions' items of every channel in one array (channel-major)
        parts = [seqs[i][c] for c in range(n_ch) for i in range(len(seqs))]
        lens_d = np.array([len(a) for a in parts], np.int64).reshape(n_ch, len(seqs))
        flat = np.concatenate(parts) if lens_d.any() else np.empty((0, ITEM_FIELDS), np.int64)
        offs_d = (np.cumsum(lens_d.ravel()) - lens_d.ravel()).reshape(lens_d.shape)
        moved = step.op in ("kv_write", "attn_score", "attn_value") and bool(self.row_shift.any())
        return GatherPlan(flat, offs_d, lens_d, np.asarray(inv, np.int64),
                          self.row_shift if moved else np.zeros(0, np.int64))

    def matvec_passes(self, step: Step) -> list[tuple[np.ndarray, int, np.ndarray]] | None:
        """A weight product's items per channel as (first pass, its repeats, the rest)
        (:func:`pimsim.isa.matvec_passes`; their concatenation is :meth:`pim_items`), None
        for other steps."""
        if step.matrix is None:
            return None
        return matvec_passes(step.matrix, self.vectors(step))

    _SEQ_CACHE_KEYS = 64  # distinct items keys kept per step (oldest dropped first)

    def _seq_items(self, step: Step, p: int) -> list[np.ndarray]:
        """Region 0's items of one vector at ``p`` (the compiled program's, per channel),
        cached per items key (a bounded number per step)."""
        cache = self._seq_cache.setdefault(step.index, {})
        key = self._base_key(step, p)
        got = cache.get(key)
        if got is None:
            if step.op == "kv_write":
                kl, vl = step.kv
                p = p % kl.window if kl.window else p  # a sliding window's ring slot
                k, col = _v_write_place(vl, p)
                vcache = self._v_cache.setdefault(step.index, {})
                v = vcache.get((k, col))
                if v is None:
                    v = [_build_v_write_items(vl, c, k, col) for c in range(self.geo.channels)]
                    _bounded_put(vcache, (k, col), v, self._SEQ_CACHE_KEYS)
                got = list(v)
                ch, k_items = _k_write_items(kl, p)
                got[ch] = np.concatenate([k_items, got[ch]])
            else:
                got = self.base.pim_items(step, p)
            _bounded_put(cache, key, got, self._SEQ_CACHE_KEYS)
        return got

    def _base_key(self, step: Step, p: int):
        scope = self._scopes.get(step.index)
        if scope is None:
            scope = self._scopes[step.index] = self.base.items_key_scope(step)
        got = self._key_cache.get((scope, p))
        if got is None:
            got = self._key_cache[(scope, p)] = self.base.items_key(step, p)
        return got

    def pim_items_reference(self, step: Step, pos) -> list[np.ndarray]:
        """The step's items built vector by vector from each vector's own layouts (the
        definition :meth:`pim_items` is held equal to)."""
        ps = self.positions(pos)
        if step.matrix is not None:
            return _matvec_items(step.matrix, self.vectors(step))
        if step.op == "param_fetch":
            return self.base.pim_items(step, ps[0])
        w = step.kv[0].window if step.kv is not None else 0  # a sliding window: its ring
        if step.op == "kv_write":
            per = [_kv_write_items(*self._kv(b, step), p % w if w else p)
                   for b, p in enumerate(ps)]
        elif step.op == "attn_score":
            per = [_attn_score_items(self._kv(b, step)[0], window_pos(p, w))
                   for b, p in enumerate(ps)]
        elif step.op == "attn_value":
            per = [_attn_value_items(self._kv(b, step)[1], window_pos(p, w))
                   for b, p in enumerate(ps)]
        else:
            per = [self.base.pim_items(step, p) for p in ps]
        if len(per) == 1:
            return per[0]
        return [np.concatenate([arrs[c] for arrs in per]) for c in range(self.geo.channels)]

    def items_key(self, step: Step, pos):
        # a vector's items follow from its position's key and its region (fixed): the keys of
        # the distinct positions and which one each vector is at say what every vector builds;
        # an expert's weight product, from the vectors routed to it
        if step.matrix is not None:
            return ("vectors", self.vectors(step)) if self.routed_step(step) else ()
        if step.op == "param_fetch":
            return ()
        d, inv = self._distinct(pos)
        return tuple(self._base_key(step, p) for p in d), inv

    def weight_macs(self) -> int:
        """MACs of the weight matrix-vector products of one sequence's step."""
        return sum(s.matrix.out_dim * s.matrix.in_dim for s in self.base.steps
                   if s.matrix is not None and s.matrix.role != "v_cache")


@dataclasses.dataclass
class GatherPlan:
    """A batched step's items of one step, per channel: vector ``b``'s are region 0's items of
    its distinct position ``inv[b]`` (``flat[offs_d[c, i]:][:lens_d[c, i]]`` on channel ``c``),
    one vector after the other, every row ``>= 0`` moved by ``row_shift[b]`` (empty: none moved)
    to the vector's own KV region."""

    flat: np.ndarray
    offs_d: np.ndarray
    lens_d: np.ndarray
    inv: np.ndarray
    row_shift: np.ndarray

    def lengths(self) -> np.ndarray:
        """Items per channel."""
        return self.lens_d[:, self.inv].sum(axis=1)

    def fill(self, out: np.ndarray, lo: np.ndarray, link_cols: np.ndarray) -> None:
        """Write channel ``c``'s items at ``out[lo[c]:]`` and the columns they move across the
        link into ``link_cols[c]`` (:func:`pimsim.link.transfer_bytes` / column bytes)."""
        from pimsim.link import LINK_MASK

        _gather_items(out, lo, self.flat, self.offs_d, self.lens_d, self.inv, self.row_shift,
                      LINK_MASK, link_cols)


@cached_njit()
def _gather_items(out, lo, flat, offs_d, lens_d, inv, row_shift, link_mask, link_cols):
    """:meth:`GatherPlan.fill` in one pass (no temporary per-channel arrays)."""
    moved = row_shift.shape[0] > 0
    for c in range(lens_d.shape[0]):
        d = lo[c]
        cols = 0
        for b in range(inv.shape[0]):
            i = inv[b]
            s = offs_d[c, i]
            for j in range(lens_d[c, i]):
                for f in range(flat.shape[1]):
                    out[d, f] = flat[s + j, f]
                if moved and out[d, 2] >= 0:
                    out[d, 2] += row_shift[b]
                if out[d, 0] >= 0 and link_mask[out[d, 0]]:
                    cols += out[d, 3]
                d += 1
        link_cols[c] = cols


class BatchedSteps:
    """What batched decode steps of one program on one config share from step to step, each
    step still simulated from a fresh device state (:func:`run_batched` with ``reuse``):

    * the :class:`BatchedProgram` of each batch size (its caches of per-position items) and
      its :class:`~pimsim.decode.StreamBuilder` (the items that do not depend on the
      positions, laid out once), for the ``sizes`` batch sizes used last;
    * the timing kernels' memo of simulated units (:func:`~pimsim.timing.memo.new_memo`, of
      ``memo_words`` words and ``memo_entries`` entries): an entry is the outcome of a unit of
      items from a state, both relative to the state, so it is exact in any step of the config.
      When it is full it is cleared and refilled with the units that recur: :meth:`memo_usage`
      says how full it is, how often it was cleared and how many units were too large for it
      (``dropped``: simulated whenever they recur, exact but not faster)."""

    def __init__(self, prog: Program, cfg: HwConfig, *, sizes: int = 4,
                 memo_words: int = 1 << 25, memo_entries: int = 1 << 18):
        from pimsim.timing.memo import new_memo

        self.prog, self.cfg, self.sizes = prog, cfg, max(1, int(sizes))
        self.max_batch = max_batch(prog)
        self.memo = new_memo(memo_words, memo_entries)
        self._by_size: dict[int, tuple[BatchedProgram, StreamBuilder, StepTable]] = {}

    def program(self, batch: int) -> tuple[BatchedProgram, StreamBuilder, StepTable]:
        """The batched program of ``batch`` sequences, its stream builder and step table."""
        got = self._by_size.pop(batch, None)  # re-inserted: the dict is oldest-used first
        if got is None:
            bprog = BatchedProgram(self.prog, batch)
            got = (bprog, StreamBuilder(bprog, compact=True), StepTable(bprog, self.cfg))
        _bounded_put(self._by_size, batch, got, self.sizes)
        return got

    def drop_programs(self) -> None:
        """Forget the batched programs and their streams (the memo stays): they are rebuilt
        when next asked for (the memory of a large batch's items is given back)."""
        self._by_size.clear()

    def memo_usage(self) -> dict[str, int]:
        """:func:`pimsim.timing.memo.memo_usage` of the shared memo."""
        from pimsim.timing.memo import memo_usage

        return memo_usage(self.memo)


_SHARED: dict[int, tuple[Program, dict]] = {}  # id(program) -> (program, its shared caches)
_SHARED_PROGRAMS = 4  # base programs whose caches are kept (oldest dropped first)


def _shared(prog: Program) -> dict:
    """Caches the batched programs of ``prog`` share (the program itself is held, so its id
    names it while the entry lives)."""
    got = _SHARED.get(id(prog))
    if got is None or got[0] is not prog:
        got = (prog, {})
        _bounded_put(_SHARED, id(prog), got, _SHARED_PROGRAMS)
    return got[1]


def _bounded_put(cache: dict, key, value, most: int) -> None:
    """``cache[key] = value``, dropping the oldest entry first when ``cache`` holds ``most``."""
    if len(cache) >= most:
        del cache[next(iter(cache))]
    cache[key] = value


def prefill_program(prog: Program, prompt_len: int, sequences: int = 1) -> BatchedProgram:
    """The prefill step (:mod:`pimsim.prefill`) of ``sequences`` prompts of ``prompt_len``
    tokens each: one batched step of ``sequences x prompt_len`` vectors at positions
    :func:`~pimsim.prefill.prefill_positions`, sequence ``s``'s tokens sharing KV region ``s``
    (sequence 0 the program's own region, as in a batched decode step)."""
    if prompt_len < 1 or sequences < 1:
        raise UserError(f"a prefill of {sequences} prompt(s) of {prompt_len} token(s)",
                        "give at least one prompt of at least one token")
    regions = [s for s in range(sequences) for _ in range(prompt_len)]
    return BatchedProgram(prog, sequences * prompt_len, kv_regions=regions)


def mac_bound_cyc(prog: BatchedProgram, cfg: HwConfig) -> float:
    """The PIM device's MAC-rate bound on a batched step, in DRAM command cycles: ``B x weight
    MACs / (PIM units x MACs per unit per cycle)`` (a routed step's experts: their routed
    vectors' MACs, :meth:`BatchedProgram.weight_product_macs`), a unit (one per ``banks_per_pim_unit``
    banks) doing ``mac_lanes_per_bank`` MACs every ``nCCDL`` cycles (one MAC_AB column; an
    all-bank MAC command serves one bank of every unit, :mod:`pimsim.isa`). No schedule of the
    step can be faster."""
    units = prog.geo.channels * prog.geo.banks // cfg.pim.banks_per_pim_unit
    per_unit_per_cyc = cfg.pim.mac_lanes_per_bank / cfg.timing.nCCDL
    return prog.weight_product_macs() / (units * per_unit_per_cyc)


def run_batched(prog: Program, cfg: HwConfig, *, prompts: Sequence[Sequence[int]],
                n_tokens: int, schedule: str = "serial", fast: bool = True,
                functional: Sequence[Executor] | None = None,
                progress: Callable[[int], None] | None = None,
                skip_prompt: bool = False, prefill: str = "token-by-token",
                reuse: BatchedSteps | None = None, routing=None) -> RunReport:
    """Decode ``len(prompts)`` sequences together: each processes its prompt (``prefill``,
    :mod:`pimsim.prefill`: token by token, each prompt position one batched step over the
    sequences; or ``"batched"``, every sequence's every prompt token in one step, each
    sequence's tokens sharing its KV region), then generates ``n_tokens`` tokens greedily;
    every decode step is one batched step over the sequences' positions. ``functional``: one
    executor per sequence (:class:`~pimsim.functional.FlowExecutor`), each reading its
    accumulators where the batched loop order does (``set_batch``; on the shipped configs a
    pass holds one sequence, so that is where batch 1 reads them). ``skip_prompt`` (timing
    only): only the generating steps, sequence ``b`` at positions ``len(prompts[b]) - 1``
    onwards (prompts of different lengths: each sequence at its own position); otherwise the
    prompts must have one length.

    The report: ``ms_per_token`` / ``per_token_ms`` are per step that generated tokens (each
    sequence's token latency; after a batched prefill the first is the prefill step),
    ``tokens_per_s`` = B / step time; ``extra["batch"]`` the batch, the decode step time (after
    a batched prefill: of the steps after it) and the MAC-rate bound (:func:`mac_bound_cyc`);
    a batched prefill's own step is ``extra["prefill"]`` (:func:`prefill_extra`); ``tokens`` one
    list per sequence (functional runs); energy per token (``per_token_j`` too) is a step's
    energy / B; ``ttft_ms`` the end of the step that generated the first tokens, ``tpot_ms``
    the mean step time after it.

    ``reuse`` (a :class:`BatchedSteps` of ``prog`` and ``cfg``; fast executor, decode steps):
    take the batched program, its stream builder and the memo from it instead of making new
    ones (the run still starts from a fresh device state: the same cycles, commands and energy).

    A mixture-of-experts program (:mod:`pimsim.moe`): a decode step runs the union of the
    experts its sequences chose (their routers', else ``routing``'s: a trace or seeded), each
    expert's steps for the sequences routed to it only (:meth:`BatchedProgram.route`); its
    batched prefill step likewise, every prompt token of every sequence one vector choosing
    its experts (the step at index ``L - 1``, the one that generates the first tokens)."""
    from pimsim.expert_parallel import ExpertLoad
    from pimsim.moe import Routing, routed_steps, weight_bytes

    moe = bool(prog.moe)
    load = ExpertLoad(prog) if moe else None  # per-device expert load (EP and the TP split)
    if moe and functional is None and routing is None:
        routing = Routing.seeded()
    if moe and functional is not None and (routing is None or routing.kind != "functional"):
        routing = Routing.recorder()  # pass one in to keep its records (a routing trace)
    w_bytes: list[float] = []
    prefill = check_prefill(prefill)
    prompts = [list(p) for p in prompts]
    streams = table = None
    if reuse is not None:
        if reuse.prog is not prog or reuse.cfg is not cfg or not fast:
            raise ValueError("reuse: batched steps of this program and config, fast executor")
        bprog, streams, table = reuse.program(len(prompts))
    else:
        bprog = BatchedProgram(prog, len(prompts))
    B = bprog.batch
    if functional is not None:
        if len(functional) != B:
            raise ValueError(f"{len(functional)} functional executors for {B} sequences")
        if B > 1:
            for b, fx in enumerate(functional):
                fx.set_batch(B, b)
    lens = [len(p) for p in prompts]
    check_run(prog, lens, n_tokens, skip_prompt, functional)
    if not skip_prompt and len(set(lens)) > 1:
        raise UserError(f"prompts of lengths {sorted(set(lens))} in one batch",
                        "give the sequences prompts of one length (or skip the prompt steps)")
    L = lens[0]
    batched = prefill == "batched" and L > 1 and not skip_prompt
    pprog = prefill_program(prog, L, B) if batched else None
    t_wall = time.perf_counter()
    if batched:
        sim = DecodeSimulator(pprog, cfg, schedule=schedule, fast=fast,
                              memo=reuse.memo if reuse is not None else True)
    else:
        sim = DecodeSimulator(bprog, cfg, schedule=schedule, fast=fast, streams=streams,
                              step_table=table, memo=reuse.memo if reuse is not None else True)
    acct = TimeAccount(sim)
    with_energy = cfg.energy is not None
    e_sum = EnergyReport(table=cfg.energy.table) if with_energy else None
    meter = TokenEnergy(sim) if with_energy else None
    per_step_cyc: list[int] = []
    per_step_j: list[float] = []
    times = TimeTotals()
    toks = [p[0] for p in prompts]
    generated: list[list[int]] = [[] for _ in range(B)]
    first_end_cyc: list[int] = []
    bound_cyc: list[float] = []  # MoE: each step's MAC-rate bound (its routing's products)

    def generating_step(tt) -> None:
        if not first_end_cyc:
            first_end_cyc.append(tt.end_cyc)
        per_step_cyc.append(tt.end_cyc - tt.start_cyc)
        times.add(*acct.split(tt))
        if with_energy:
            er = meter.end(tt)
            e_sum.add(er)
            per_step_j.append(er.total_j)

    steps = range(n_tokens) if skip_prompt else range(L + n_tokens - 1)
    ps = (L - 1,) * B
    if batched:  # every prompt token of every sequence in one step: the first tokens
        if with_energy:
            meter.begin()
        active = None
        toks = None
        if moe:  # every prompt token chooses its experts (the routers run first): the union
            routes: dict = {}
            if functional:
                toks = prefill_functional(functional, prompts, B, routes)
            routing.choose(prog, L - 1, routes, batch=L * B)
            active, counts = routed_steps(pprog, routing.last)
            pprog.route(counts)  # each expert computes its routed vectors only
            if with_energy:
                meter.active = active
        tt = sim.run_token(prefill_positions(L, B), active)
        if toks is None:
            toks = prefill_functional(functional, prompts, B) if functional else [0] * B
        for b in range(B):
            generated[b].append(toks[b])
        generating_step(tt)
        if progress is not None:
            for i in range(L):
                progress(i)
        use_program(sim, bprog)
        acct = TimeAccount(sim)
        meter = TokenEnergy(sim) if with_energy else None
        steps = range(L, L + n_tokens - 1)
    for i in steps:
        ps = tuple(n - 1 + i for n in lens) if skip_prompt else (i,) * B
        if with_energy:
            meter.begin()
        nxts = [int(np.argmax(functional[b].step(toks[b], ps[b]))) if functional else 0
                for b in range(B)]  # the numbers first: the routers choose the experts run
        active = None
        if moe:
            computed = {m: [t for fx in functional for t in fx.routing[m]]
                        for m in range(len(prog.moe))} if functional else None
            routing.choose(prog, i, computed, batch=B)
            active, counts = routed_steps(bprog, routing.last)
            bprog.route(counts)  # each expert computes its routed sequences' vectors only
            bound_cyc.append(mac_bound_cyc(bprog, cfg))
            if with_energy:
                meter.active = active
        tt = sim.run_token(ps, active)
        gen = skip_prompt or i >= L - 1
        if gen:  # one device's bytes (with experts: the devices' mean)
            w_bytes.append(load.add(routing.last) if moe else weight_bytes(bprog, active))
        for b in range(B):
            nxt = nxts[b]
            if not skip_prompt and i + 1 < L:
                toks[b] = int(prompts[b][i + 1])
            else:
                generated[b].append(nxt)
                toks[b] = nxt
        if gen:
            generating_step(tt)
        if progress is not None:
            progress(i)
    ns = cfg.timing.ns
    n_gen = len(per_step_cyc)
    per_step_ms = [ns(c) / 1e6 for c in per_step_cyc]
    ms_step = float(np.mean(per_step_ms)) if per_step_ms else 0.0
    hits, misses = sim.row_hits, sim.row_misses
    bprog.route(None)  # a batched program kept for other runs (reuse) starts unrouted
    bound_ms = ns(float(np.mean(bound_cyc)) if bound_cyc else mac_bound_cyc(bprog, cfg)) / 1e6
    energy = {}
    if with_energy:
        energy = _energy_summary(e_sum, [j / B for j in per_step_j], n_gen * B)
    tps = 1000.0 * B / ms_step if ms_step else 0.0
    decode_ms = per_step_ms[1:] if batched else per_step_ms  # the batched decode steps
    ms_decode = float(np.mean(decode_ms)) if decode_ms else 0.0
    tps_decode = 1000.0 * B / ms_decode if ms_decode else 0.0
    return RunReport(
        model=prog.model, hw=cfg.name, schedule=schedule, refresh=cfg.refresh.enabled,
        functional=functional is not None, prompt_tokens=L if not skip_prompt else max(lens),
        generated_tokens=n_gen * B, tCK_ps=cfg.tCK_ps, cycles=int(sim.now),
        ms_total=ns(sim.now) / 1e6, ms_per_token=ms_step, tokens_per_s=tps,
        per_token_ms=per_step_ms,
        row_hit_rate=hits / (hits + misses) if hits + misses else 0.0,
        **times.report_fields(cfg, n_gen),
        commands=sim.command_counts,
        tokens=(generated if B > 1 else generated[0]) if functional is not None else [],
        energy=energy, wall_s=time.perf_counter() - t_wall,
        prefill=prefill, prompt_skipped=skip_prompt,
        ttft_ms=None if skip_prompt else ns(first_end_cyc[0]) / 1e6,
        tpot_ms=tpot_ms(per_step_ms),
        extra={**({"prefill": prefill_extra(pprog, cfg, per_step_ms[0])} if batched else {}),
               "batch": {"batch": B, "ms_per_step": ms_decode, "tokens_per_s": tps_decode,
                         "mac_bound_ms_per_step": bound_ms, "mac_bound": MAC_BOUND_FORMULA,
                         "weight_macs_per_sequence": bprog.weight_macs(),
                         "max_batch": reuse.max_batch if reuse is not None else max_batch(prog),
                         "positions_last_step": list(ps)}},
        routing=routing.describe() if moe else "",
        weight_bytes_per_step=float(np.mean(w_bytes)) if w_bytes else 0.0,
        expert_load=load.summary() if moe else {})



def prefill_extra(pprog: BatchedProgram, cfg: HwConfig, step_ms: float) -> dict:
    """A batched prefill step's figures for a report's ``extra["prefill"]``: its vectors (the
    prompt tokens of every sequence), its time and its MAC-rate bound."""
    return {"vectors": pprog.batch, "prefill_step_ms": step_ms,
            "mac_bound_ms": cfg.timing.ns(mac_bound_cyc(pprog, cfg)) / 1e6,
            "mac_bound": MAC_BOUND_FORMULA}


def step_cost(prog: Program, cfg: HwConfig, positions: Sequence[int],
              kv_regions: Sequence[int], *, schedule: str = "serial", fast: bool = True,
              memo: bool | np.ndarray = True, routing=None) -> tuple[int, float | None]:
    """(cycles, joules of one device) of ONE batched step from a fresh device state: vector
    ``i`` at ``positions[i]`` in KV region ``kv_regions[i]`` (vectors of one region are tokens of
    one sequence, as in a prefill step; a region's positions below its vectors' are taken as
    already written). A prefill chunk of ``n`` tokens from position ``s`` is
    ``positions = s .. s+n-1`` in one region; a prefill step of several prompts, one region per
    prompt. Joules None without an ``[energy]`` table. ``memo``: a kernel memo array kept from
    step to step (:class:`BatchedSteps`; exact), or True for a fresh one.

    A mixture-of-experts program: every vector chooses its experts (``routing``, a
    :class:`~pimsim.moe.Routing`, seeded uniform by default; vector ``i`` is its ``i``-th
    token), and each expert computes only the vectors routed to it, as in a batched decode step
    (:meth:`BatchedProgram.route`)."""
    from pimsim.moe import Routing, routed_steps

    positions = tuple(int(p) for p in positions)
    n_ctx = int(prog.dims["n_ctx"])
    if not positions or min(positions) < 0 or max(positions) >= n_ctx:
        raise ValueError(f"positions {positions[:4]}..: give 1+ positions in 0..{n_ctx - 1}")
    bprog = BatchedProgram(prog, len(positions), kv_regions=kv_regions)
    sim = DecodeSimulator(bprog, cfg, schedule=schedule, fast=fast, memo=memo)
    meter = TokenEnergy(sim) if cfg.energy is not None else None
    active = None
    if prog.moe:
        routing = routing if routing is not None else Routing.seeded()
        routing.choose(prog, 0, None, batch=len(positions))
        active, counts = routed_steps(bprog, routing.last)
        bprog.route(counts)
        if meter is not None:
            meter.active = active
    if meter is not None:
        meter.begin()
    tt = sim.run_token(positions, active)
    joules = meter.end(tt).total_j if meter is not None else None
    return int(tt.end_cyc - tt.start_cyc), joules
