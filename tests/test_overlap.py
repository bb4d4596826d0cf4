"""Steps prepared while the one before runs (pimsim.overlap) give the step-after-step run."""

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
