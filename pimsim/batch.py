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
  times ``B``; per-position counts (softmax) follow each sequence's own position.

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

from pimsim.config import HwConfig
from pimsim.decode import DecodeSimulator
from pimsim.energy import EnergyReport
from pimsim.errors import HardwareFitError, UserError
from pimsim.generate import (
    Executor,
    TokenEnergy,
    _energy_summary,
    _StepCost,
    check_run,
    token_breakdown,
    tpot_ms,
)
from pimsim.isa import PER_OP_KEYS, Program, Step, _attn_score_items, _attn_value_items, _kv_write_items, _matvec_items
from pimsim.prefill import check_prefill, prefill_functional, prefill_positions, use_program
from pimsim.report import BREAKDOWN_KEYS, RunReport

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
        top = max(top, kl.base_row + kl.rows_reserved, vl.base_row + vl.rows_reserved)
    return top


def kv_block(prog: Program) -> tuple[int, int]:
    """(first row, rows) of the program's KV caches (every attention's K and V, as placed)."""
    if not prog.kv_layouts:
        return 0, 0
    lo = min(min(kl.base_row, vl.base_row) for kl, vl in prog.kv_layouts)
    hi = max(max(kl.base_row + kl.rows_reserved, vl.base_row + vl.rows_reserved)
             for kl, vl in prog.kv_layouts)
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
    ``b`` is a sequence of its own, region ``b``. Vectors that share a region are tokens of one
    sequence (a prefill step, :mod:`pimsim.prefill`): each writes its K/V at its own position
    and attends over the region's positions up to its own. Raises
    :class:`BatchCapacityError` naming the largest batch that fits when the regions do not fit
    the rows."""

    def __init__(self, prog: Program, batch: int, *, kv_regions: Sequence[int] | None = None):
        batch = check_batch(batch)
        if prog.n_stages > 1:
            raise UserError(f"{prog.model}: batched decode of a pipeline stage "
                            f"({prog.n_stages} stages)",
                            "batch on a system without pipeline stages (pp 1)")
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
        region_kv: list[dict[int, tuple]] = []  # per region: layer -> (KLayout, VLayout)
        for r in range(n_regions):
            shift = 0 if r == 0 else top + (r - 1) * span - lo
            region_kv.append({kl.layer: (
                dataclasses.replace(kl, base_row=kl.base_row + shift),
                dataclasses.replace(vl, base_row=vl.base_row + shift))
                if shift else (kl, vl) for kl, vl in prog.kv_layouts})
        self.seq_kv: list[dict[int, tuple]] = [region_kv[r] for r in regions]  # per vector

    def positions(self, pos) -> tuple[int, ...]:
        if isinstance(pos, (int, np.integer)):
            return (int(pos),) * self.batch
        pos = tuple(int(p) for p in pos)
        if len(pos) != self.batch:
            raise ValueError(f"{len(pos)} positions for a batch of {self.batch}")
        return pos

    def asic_elems(self, step: Step, pos) -> int:
        return step.n_elems + step.per_pos_elems * sum(p + 1 for p in self.positions(pos))

    def _kv(self, b: int, step: Step) -> tuple:
        return self.seq_kv[b][step.kv[0].layer]

    def pim_items(self, step: Step, pos) -> list[np.ndarray]:
        ps = self.positions(pos)
        if step.matrix is not None:
            return _matvec_items(step.matrix, self.batch)
        if step.op == "param_fetch":
            return self.base.pim_items(step, ps[0])
        if step.op == "kv_write":
            per = [_kv_write_items(*self._kv(b, step), p) for b, p in enumerate(ps)]
        elif step.op == "attn_score":
            per = [_attn_score_items(self._kv(b, step)[0], p) for b, p in enumerate(ps)]
        elif step.op == "attn_value":
            per = [_attn_value_items(self._kv(b, step)[1], p) for b, p in enumerate(ps)]
        else:
            per = [self.base.pim_items(step, p) for p in ps]
        if len(per) == 1:
            return per[0]
        return [np.concatenate([arrs[c] for arrs in per]) for c in range(self.geo.channels)]

    def items_key(self, step: Step, pos):
        if step.matrix is not None or step.op == "param_fetch":
            return ()
        return tuple(self.base.items_key(step, p) for p in self.positions(pos))

    def weight_macs(self) -> int:
        """MACs of the weight matrix-vector products of one sequence's step."""
        return sum(s.matrix.out_dim * s.matrix.in_dim for s in self.base.steps
                   if s.matrix is not None and s.matrix.role != "v_cache")


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
    MACs / (PIM units x MACs per unit per cycle)``, a unit (one per ``banks_per_pim_unit``
    banks) doing ``mac_lanes_per_bank`` MACs every ``nCCDL`` cycles (one MAC_AB column; an
    all-bank MAC command serves one bank of every unit, :mod:`pimsim.isa`). No schedule of the
    step can be faster."""
    units = prog.geo.channels * prog.geo.banks // cfg.pim.banks_per_pim_unit
    per_unit_per_cyc = cfg.pim.mac_lanes_per_bank / cfg.timing.nCCDL
    return prog.batch * prog.weight_macs() / (units * per_unit_per_cyc)


def run_batched(prog: Program, cfg: HwConfig, *, prompts: Sequence[Sequence[int]],
                n_tokens: int, schedule: str = "serial", fast: bool = True,
                functional: Sequence[Executor] | None = None,
                progress: Callable[[int], None] | None = None,
                skip_prompt: bool = False, prefill: str = "token-by-token") -> RunReport:
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
    the mean step time after it."""
    prefill = check_prefill(prefill)
    prompts = [list(p) for p in prompts]
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
    sim = DecodeSimulator(pprog if batched else bprog, cfg, schedule=schedule, fast=fast)
    cost = _StepCost(sim)
    with_energy = cfg.energy is not None
    e_sum = EnergyReport(table=cfg.energy.table) if with_energy else None
    meter = TokenEnergy(sim) if with_energy else None
    per_step_cyc: list[int] = []
    per_step_j: list[float] = []
    bd = np.zeros(len(BREAKDOWN_KEYS))
    per_op: dict[str, float] = {}
    toks = [p[0] for p in prompts]
    generated: list[list[int]] = [[] for _ in range(B)]
    first_end_cyc: list[int] = []

    def generating_step(tt) -> None:
        if not first_end_cyc:
            first_end_cyc.append(tt.end_cyc)
        per_step_cyc.append(tt.end_cyc - tt.start_cyc)
        b_, ops = token_breakdown(sim, tt, cost)
        bd[:] += b_
        if with_energy:
            er = meter.end(tt)
            e_sum.add(er)
            per_step_j.append(er.total_j)
        for k, v in ops.items():
            per_op[k] = per_op.get(k, 0.0) + v

    steps = range(n_tokens) if skip_prompt else range(L + n_tokens - 1)
    ps = (L - 1,) * B
    if batched:  # every prompt token of every sequence in one step: the first tokens
        if with_energy:
            meter.begin()
        tt = sim.run_token(prefill_positions(L, B))
        toks = prefill_functional(functional, prompts, B) if functional else [0] * B
        for b in range(B):
            generated[b].append(toks[b])
        generating_step(tt)
        if progress is not None:
            for i in range(L):
                progress(i)
        use_program(sim, bprog)
        cost = _StepCost(sim)
        meter = TokenEnergy(sim) if with_energy else None
        steps = range(L, L + n_tokens - 1)
    for i in steps:
        ps = tuple(n - 1 + i for n in lens) if skip_prompt else (i,) * B
        if with_energy:
            meter.begin()
        tt = sim.run_token(ps)
        gen = skip_prompt or i >= L - 1
        for b in range(B):
            nxt = int(np.argmax(functional[b].step(toks[b], ps[b]))) if functional else 0
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
    total = bd.sum()
    bound_ms = ns(mac_bound_cyc(bprog, cfg)) / 1e6
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
        breakdown={k: float(v / total) if total else 0.0 for k, v in zip(BREAKDOWN_KEYS, bd)},
        per_op={k: ns(per_op.get(k, 0.0)) / 1e6 / max(n_gen, 1) for k in PER_OP_KEYS},
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
                         "max_batch": max_batch(prog),
                         "positions_last_step": list(ps)}})



def prefill_extra(pprog: BatchedProgram, cfg: HwConfig, step_ms: float) -> dict:
    """A batched prefill step's figures for a report's ``extra["prefill"]``: its vectors (the
    prompt tokens of every sequence), its time and its MAC-rate bound."""
    return {"vectors": pprog.batch, "prefill_step_ms": step_ms,
            "mac_bound_ms": cfg.timing.ns(mac_bound_cyc(pprog, cfg)) / 1e6,
            "mac_bound": MAC_BOUND_FORMULA}


def step_cost(prog: Program, cfg: HwConfig, positions: Sequence[int],
              kv_regions: Sequence[int], *, schedule: str = "serial",
              fast: bool = True) -> tuple[int, float | None]:
    """(cycles, joules of one device) of ONE batched step from a fresh device state: vector
    ``i`` at ``positions[i]`` in KV region ``kv_regions[i]`` (vectors of one region are tokens of
    one sequence, as in a prefill step; a region's positions below its vectors' are taken as
    already written). A prefill chunk of ``n`` tokens from position ``s`` is
    ``positions = s .. s+n-1`` in one region; a prefill step of several prompts, one region per
    prompt. Joules None without an ``[energy]`` table."""
    positions = tuple(int(p) for p in positions)
    n_ctx = int(prog.dims["n_ctx"])
    if not positions or min(positions) < 0 or max(positions) >= n_ctx:
        raise ValueError(f"positions {positions[:4]}..: give 1+ positions in 0..{n_ctx - 1}")
    bprog = BatchedProgram(prog, len(positions), kv_regions=kv_regions)
    sim = DecodeSimulator(bprog, cfg, schedule=schedule, fast=fast)
    meter = TokenEnergy(sim) if cfg.energy is not None else None
    if meter is not None:
        meter.begin()
    tt = sim.run_token(positions)
    joules = meter.end(tt).total_j if meter is not None else None
    return int(tt.end_cyc - tt.start_cyc), joules
