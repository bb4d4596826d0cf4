"""The batched step's items built fast (pimsim.batch.BatchedProgram.pim_items) are the items
built vector by vector from each vector's own KV layouts (``pim_items_reference``).

A vector's KV region is region 0's layouts with ``base_row`` moved up by the region's row
offset, so its kv_write / attn_score / attn_value items are region 0's at its position with
every row (>= 0) moved by that offset; the fast builder builds each distinct position once and
moves copies. Held equal, column by column, over random batch sizes and position tuples (and
prefill steps whose vectors share regions) on aim-gddr6 under tensor parallelism, on pim-gpt
and hbm-pim, for a GPT preset and a grouped-query-attention Llama; a step simulated from either
builder's items takes the same cycles and commands, refresh on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pimsim.batch import BatchedProgram, max_batch, prefill_program
from pimsim.config import load_config
from pimsim.decode import DecodeSimulator, StreamBuilder
from pimsim.system import resolve
from pimsim.timing.state import ST_REFRESHES
from workloads.session import compile_model, system_programs


def _cfg(hw: str, tp: int = 1):
    cfg = load_config(hw)
    if tp > 1:
        cfg = dataclasses.replace(cfg, system=resolve(tp, tp, 1, cfg.system))
    return cfg


def _gqa_program(cfg, tp: int):
    pytest.importorskip("transformers")
    from compiler.pipeline import compile_model as compile_module
    from tests.hf_tiny import tiny_model
    from workloads.models.hf_decode import decode_step_module

    return compile_module(decode_step_module(tiny_model("llama-gqa")), cfg, name="m", tp=tp,
                          pp=1).programs[0]


def _assert_same_items(bprog: BatchedProgram, ps) -> None:
    for st in bprog.steps:
        if st.kind != "pim" or st.matrix is not None or st.op == "param_fetch":
            continue  # weight products and parameter fetches: one call in both builders
        fast, ref = bprog.pim_items(st, ps), bprog.pim_items_reference(st, ps)
        assert len(fast) == len(ref) == bprog.geo.channels
        for c, (a, b) in enumerate(zip(fast, ref)):
            assert a.dtype == b.dtype and a.shape == b.shape, (st.name, c)
            assert np.array_equal(a, b), (st.name, c)


def _random_tuples(rng, prog, n: int) -> list[tuple[int, ...]]:
    n_ctx = prog.dims["n_ctx"]
    top = min(max_batch(prog), 24)
    out = []
    for i in range(n):
        B = int(rng.integers(2, top + 1))
        if i % 2:  # groups of equal positions, as a serving step has
            groups = int(rng.integers(1, 4))
            starts = rng.integers(0, n_ctx, groups)
            out.append(tuple(int(starts[b * groups // B]) for b in range(B)))
        else:
            out.append(tuple(int(p) for p in rng.integers(0, n_ctx, B)))
    return out


CASES = [("tiny", "aim-gddr6", 2), ("tiny", "hbm-pim", 1),
         ("llama-gqa", "aim-gddr6", 2), ("llama-gqa", "pim-gpt", 1)]


@pytest.mark.parametrize("model,hw,tp", CASES)
def test_fast_items_equal_the_vector_by_vector_items(model, hw, tp):
    cfg = _cfg(hw, tp)
    prog = _gqa_program(cfg, tp) if model == "llama-gqa" else \
        system_programs(compile_model(model, cfg), cfg)[0]
    assert prog.tp == tp
    rng = np.random.default_rng(7)
    tuples = _random_tuples(rng, prog, 6)
    by_size: dict[int, BatchedProgram] = {}
    for ps in tuples:
        # one program per size kept across tuples: its caches carry over as in a serving run
        bprog = by_size.setdefault(len(ps), BatchedProgram(prog, len(ps)))
        _assert_same_items(bprog, ps)
        _assert_same_items(bprog, tuple(p + 1 if p + 1 < prog.dims["n_ctx"] else p for p in ps))
    # a prefill step: vectors of one sequence share a region
    pprog = prefill_program(prog, 3, 4)
    _assert_same_items(pprog, tuple(i % 3 for i in range(12)))


@pytest.mark.parametrize("model,hw,tp", CASES[:2])
def test_steps_of_one_items_key_scope_have_one_key_at_every_position(model, hw, tp):
    # the batched builder shares items keys between steps of one scope (Program.items_key_scope)
    cfg = _cfg(hw, tp)
    prog = system_programs(compile_model(model, cfg), cfg)[0]
    by_scope: dict[tuple, list] = {}
    for st in prog.steps:
        if st.kind == "pim":
            by_scope.setdefault(prog.items_key_scope(st), []).append(st)
    assert any(len(v) > 1 for v in by_scope.values())
    for scope, steps in by_scope.items():
        for p in range(prog.dims["n_ctx"]):
            assert len({repr(prog.items_key(st, p)) for st in steps}) == 1, (scope, p)


def test_region_items_are_region_zero_moved_by_the_row_offset():
    cfg = _cfg("aim-gddr6", 2)
    prog = system_programs(compile_model("tiny", cfg), cfg)[0]
    bprog = BatchedProgram(prog, 3)
    assert bprog.row_shift[0] == 0 and (np.diff(bprog.row_shift) > 0).all()
    st = next(s for s in bprog.steps if s.op == "attn_score")
    one = BatchedProgram(prog, 1).pim_items(st, 9)
    three = bprog.pim_items(st, (9, 9, 9))
    for c in range(prog.geo.channels):
        n = len(one[c])
        assert len(three[c]) == 3 * n
        for b in range(3):
            part = three[c][b * n:(b + 1) * n]
            moved = one[c].copy()
            moved[moved[:, 2] >= 0, 2] += bprog.row_shift[b]
            assert np.array_equal(part, moved)


@pytest.mark.parametrize("hw,tp", [("aim-gddr6", 2), ("pim-gpt", 1)])
def test_a_step_from_the_fast_items_takes_the_cycles_of_the_reference_items(hw, tp):
    cfg = _cfg(hw, tp)
    cfg = cfg.with_refresh(True)
    prog = system_programs(compile_model("tiny", cfg), cfg)[0]

    class Reference(BatchedProgram):
        pim_items = BatchedProgram.pim_items_reference

    ps = (5, 5, 5, 30, 30, 63, 0)
    runs = []
    for cls in (BatchedProgram, Reference):
        sim = DecodeSimulator(cls(prog, len(ps)), cfg)
        tts = [sim.run_token(ps), sim.run_token(tuple(min(p + 1, 63) for p in ps))]
        runs.append(([(t.start_cyc, t.end_cyc) for t in tts], sim.command_counts,
                     sim.row_hits, sim.row_misses, int(sim.states.stats[:, ST_REFRESHES].sum())))
    assert runs[0] == runs[1]
    assert runs[0][4] > 0  # refreshes happened inside the steps


@pytest.mark.parametrize("compact", [False, True])
def test_a_reused_stream_builder_holds_the_items_of_a_fresh_one(compact):
    """Regions that outgrow their room move to the end of the buffer: every segment still
    holds the step's items at the new positions, as a builder made for them does (a reused
    builder writes a batched step's attention and KV-write regions in place from a
    GatherPlan; a fresh one lays out the items pim_items gives), with the same link bytes,
    lead columns and channel classes."""
    cfg = _cfg("aim-gddr6", 2)
    prog = system_programs(compile_model("tiny", cfg), cfg)[0]
    bprog = BatchedProgram(prog, 6)
    reused = StreamBuilder(bprog, compact=compact)
    moved = False
    for ps in [(0,) * 6, (1, 1, 1, 0, 0, 0), (40, 41, 42, 43, 44, 45), (63,) * 6, (2,) * 6]:
        lo_before = reused.seg_lo.copy()
        items, lo, hi = reused.build(ps)
        fresh = StreamBuilder(bprog, compact=compact)
        f_items, f_lo, f_hi = fresh.build(ps)
        assert np.array_equal(hi - lo, f_hi - f_lo)
        for c in range(bprog.geo.channels):
            for k in range(len(reused.pim_steps)):
                assert np.array_equal(items[lo[c, k]:hi[c, k]], f_items[f_lo[c, k]:f_hi[c, k]])
        assert np.array_equal(reused.seg_cls, fresh.seg_cls)
        assert np.array_equal(reused.seg_bytes, fresh.seg_bytes)
        assert np.array_equal(reused.seg_lead, fresh.seg_lead)
        moved |= lo_before.any() and not np.array_equal(lo_before, lo)
    assert moved


@pytest.mark.parametrize("order", ["pim-gpt", "reuse"])
@pytest.mark.parametrize("gb_rows,acc", [(1, 1), (4, 4), (2, 1)])
def test_batched_weight_items_are_the_loop_orders_items(order, gb_rows, acc):
    """A batch's weight items, built once per distinct pass size and concatenated, are the
    loop order's items for the batch (its passes one after the other)."""
    from config_edit import with_

    from pimsim.isa import _arr, _build_matvec_items

    cfg = with_(load_config("pim-gpt"), pim__mapping=order, pim__accumulators_per_bank=acc,
                pim__global_buffer_bytes=2048 * gb_rows)
    prog = system_programs(compile_model("tiny", cfg), cfg)[0]
    mats = [s.matrix for s in prog.steps if s.matrix is not None]
    for m in mats[:3] + mats[-1:]:
        for batch in (2, 5, 7):
            built = _build_matvec_items(m, batch)
            for ch in range(m.geo.channels):
                assert np.array_equal(built[ch], _arr(m.strategy.items(m, ch, batch)))


@pytest.mark.parametrize("model,hw,tp", CASES)
def test_a_weight_products_passes_are_its_items(model, hw, tp):
    # BatchedProgram.matvec_passes: (first pass, repeats, the rest) written out = pim_items
    cfg = _cfg(hw, tp)
    prog = _gqa_program(cfg, tp) if model == "llama-gqa" else \
        system_programs(compile_model(model, cfg), cfg)[0]
    for batch in (1, 3, min(max_batch(prog), 7)):
        bprog = BatchedProgram(prog, batch)
        for st in bprog.steps:
            if st.matrix is None:
                assert bprog.matvec_passes(st) is None
                continue
            for (block, reps, tail), full in zip(bprog.matvec_passes(st), bprog.pim_items(st, 0)):
                assert reps >= 1
                assert np.array_equal(np.concatenate([block] * reps + [tail]), full), st.name
