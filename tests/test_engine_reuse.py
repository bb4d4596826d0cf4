"""Engine speed without a changed cycle: steps prepared while the one before runs (pimsim.overlap)
and channels simulated once for a class of segments equal up to a row offset give the plain runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import pimsim.generate as generate
from compiler.pipeline import compile_model
from pimsim.config import load_config
from pimsim.decode import DecodeSimulator
from pimsim.overlap import OverlappedTokens
from pimsim.pipeline import run_system
from pimsim.timing.state import S_ALLROW, S_MODE, S_NEXT_REF, S_OPEN_CYC
from workloads.models.resolve import resolve_model
from workloads.session import hw_config


def _report(monkeypatch, overlap: bool, run):
    monkeypatch.setattr(generate, "OVERLAP_STEPS", overlap)
    d = dataclasses.asdict(run())
    d.pop("wall_s")
    return d


@pytest.mark.parametrize("schedule", ["serial", "overlap"])
def test_overlapped_steps_give_the_step_after_step_report(monkeypatch, schedule):
    cfg = load_config("pim-gpt")
    src, name = resolve_model("gpt2-small", weights=False)
    prog = compile_model(src, cfg, name=name).program
    seen: list[list[int]] = []

    def run():
        seen.append([])
        return generate.run_generation(prog, cfg, prompt=[0] * 3, n_tokens=40,
                                       schedule=schedule, progress=seen[-1].append)

    a = _report(monkeypatch, True, run)
    b = _report(monkeypatch, False, run)
    assert a == b  # cycles, per-token times, shares, commands, energy by token
    assert seen[0] == seen[1] == list(range(42))  # every position once, in order
    assert a["energy"]["per_token_j"] and len(a["per_token_ms"]) == 40


def test_overlapped_steps_on_a_tensor_parallel_system(monkeypatch):
    cfg = hw_config("aim-gddr6", devices=8)
    src, name = resolve_model("llama2-7b", weights=False)
    c = compile_model(src, cfg, name=name)

    def run():
        return run_system(c.programs, cfg, prompt=[0] * 200, n_tokens=24, skip_prompt=True)

    assert _report(monkeypatch, True, run) == _report(monkeypatch, False, run)


def test_overlapped_steps_of_a_functional_run(monkeypatch):
    # the numbers of the next step computed while the kernel runs this one
    from workloads.validation import functional_executor

    cfg = load_config("pim-gpt")
    src, name = resolve_model("tiny", weights=True)
    c = compile_model(src, cfg, name=name)

    def run():
        return generate.run_generation(c.program, cfg, prompt=[1, 2, 3], n_tokens=12,
                                       functional=functional_executor(c, cfg, exact=False))

    a = _report(monkeypatch, True, run)
    assert a == _report(monkeypatch, False, run)
    assert len(a["tokens"]) == 12


def test_overlapped_steps_of_a_mixture_of_experts(monkeypatch):
    # experts chosen token by token (seeded): each token's own steps, energy and weight bytes
    pytest.importorskip("transformers")
    from hf_tiny import tiny_moe_model

    from workloads.models.hf_decode import decode_step_module

    cfg = load_config("pim-gpt")
    prog = compile_model(decode_step_module(tiny_moe_model("mixtral")), cfg,
                         name="mixtral").program

    def run():
        return generate.run_generation(prog, cfg, prompt=[0] * 2, n_tokens=20)

    a = _report(monkeypatch, True, run)
    assert a == _report(monkeypatch, False, run)
    assert a["expert_load"] and a["routing"]


def test_overlapped_tokens_match_run_token_and_end_in_order():
    cfg = load_config("pim-gpt")
    src, name = resolve_model("gpt2-small", weights=False)
    prog = compile_model(src, cfg, name=name).program
    ref = DecodeSimulator(prog, cfg)
    want = [ref.run_token(p) for p in range(30)]
    sim = DecodeSimulator(prog, cfg)
    runner = OverlappedTokens(sim, after=lambda: sim.states.counts.sum())
    got = []
    for p in range(30):
        got += runner.run(p)
    got += runner.finish()
    assert [tt.pos for tt, _ in got] == list(range(30))
    for (tt, _), w in zip(got, want):
        assert (tt.start_cyc, tt.end_cyc) == (w.start_cyc, w.end_cyc)
        assert np.array_equal(tt.step_end, w.step_end)
        assert np.array_equal(tt.step_counts, w.step_counts)
    assert got[-1][1] == ref.states.counts.sum()
    assert np.array_equal(sim.states.ready, ref.states.ready)
    with pytest.raises(ValueError, match="fast executor"):
        OverlappedTokens(DecodeSimulator(prog, cfg, fast=False))


def test_channels_equal_up_to_a_row_offset_share_one_simulation():
    """Channels whose segments differ only by a row offset (their weights placed at other
    rows) are simulated once where their open rows agree (pimsim.timing.token_runner): the
    same cycles, counts, statistics and final state as simulating every channel."""
    cfg = hw_config("aim-gddr6", devices=8)
    src, name = resolve_model("llama2-7b", weights=False)
    prog = compile_model(src, cfg, name=name).programs[0]
    grouped = DecodeSimulator(prog, cfg)
    alone = DecodeSimulator(prog, cfg, group=False)
    for pos in range(300, 306):
        a, b = grouped.run_token(pos), alone.run_token(pos)
        assert (a.start_cyc, a.end_cyc) == (b.start_cyc, b.end_cyc)
        assert np.array_equal(a.step_end, b.step_end)
        assert np.array_equal(a.step_counts, b.step_counts)
    assert (grouped.streams.seg_rows[:, :, 0] != 0).any()  # offsets did occur
    assert grouped.channels_run < alone.channels_run / 4
    g, s = grouped.states, alone.states
    for f in ("open_row", "counts", "stats"):
        assert np.array_equal(getattr(g, f), getattr(s, f)), f
    # timers that still bind (those in the past bind nothing either way), the scalars that
    # decide the next commands and the open-bank time (energy)
    now = grouped.now
    assert np.array_equal(np.maximum(g.ready, now), np.maximum(s.ready, now))
    for x in (S_NEXT_REF, S_MODE, S_ALLROW, S_OPEN_CYC):
        assert np.array_equal(g.scal[:, x], s.scal[:, x]), x


@pytest.mark.parametrize("refresh", [True, False])
def test_row_offset_classes_equal_the_command_by_command_executor(refresh):
    cfg = load_config("pim-gpt", refresh=refresh)
    src, name = resolve_model("tiny", weights=False)
    prog = compile_model(src, cfg, name=name).program
    fast = DecodeSimulator(prog, cfg)
    slow = DecodeSimulator(prog, cfg, fast=False)
    for pos in range(12):
        a, b = fast.run_token(pos), slow.run_token(pos)
        assert (a.start_cyc, a.end_cyc) == (b.start_cyc, b.end_cyc), pos
        assert np.array_equal(a.step_counts, b.step_counts)
    assert (fast.streams.seg_rows[:, :, 0] != 0).any()
    assert np.array_equal(fast.states.counts, slow.states.counts)
    assert np.array_equal(fast.states.open_row, slow.states.open_row)


def _tiny_gpt_oss():
    # gpt-oss's two attention kinds in four layers: windowed (4 tokens), full, windowed, full
    pytest.importorskip("transformers")
    from hf_tiny import _moe_configs, tiny_model_from

    from workloads.models.hf_decode import decode_step_module

    mc = _moe_configs()["gpt-oss"]()
    mc.num_hidden_layers = 4
    mc.layer_types = ["sliding_attention", "full_attention"] * 2
    cfg = load_config("pim-gpt")
    return compile_model(decode_step_module(tiny_model_from(mc)), cfg, name="gpt-oss").program


@pytest.mark.parametrize("model,devices", [("llama2-7b", 8), ("mistral-7b-v0.1", 1),
                                           ("tiny-gpt-oss", 1)])
def test_attention_steps_copied_from_the_first_layer_equal_their_own_items(model, devices):
    # every layer's KV write, score and value items are the first layer's with the rows moved
    # (Program.items_shift): copied so, the streams equal those built step by step, with GQA,
    # a sliding window (ring positions) and layers of two attention kinds (gpt-oss)
    from pimsim.decode import StreamBuilder

    if model == "tiny-gpt-oss":
        prog = _tiny_gpt_oss()
        positions = range(64)  # its context
    else:
        cfg = hw_config("aim-gddr6", devices=devices)
        src, name = resolve_model(model, weights=False)
        prog = compile_model(src, cfg, name=name).programs[0]
        positions = [*range(0, 40), *range(4090, 4100), 4200, 131]
    a = StreamBuilder(prog, compact=True)
    b = StreamBuilder(prog, compact=True)
    b._follow = {}  # every step built from its own layouts
    assert len(a._follow) >= len(a._dynamic) // 3
    for pos in positions:
        ia, la, ha = a.build(pos)
        ib, lb, hb = b.build(pos)
        for k in range(len(a.pim_steps)):
            for c in range(a.n_ch):
                assert np.array_equal(ia[la[c, k]:ha[c, k]], ib[lb[c, k]:hb[c, k]]), (pos, k, c)
        for f in ("seg_cls", "seg_rows", "seg_bytes", "seg_lead", "seg_block", "seg_reps"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), (pos, f)
        if b.changed is not None:  # every region rewritten is said to be (link cycles)
            assert set(b.changed.tolist()) <= set(a.changed.tolist())
