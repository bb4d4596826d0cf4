"""Batched mixture-of-experts steps: an expert's steps compute only the vectors of the
sequences routed to it (a tiny random Mixtral, 4 experts, 2 per token, 2 MoE layers): the fast
and the command-by-command executors agree to the cycle, command and joule; the expert MAC
commands of a step are the routed tokens' passes, not B per chosen expert; streams kept from
a step of another routing give what fresh ones give."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from hf_tiny import tiny_moe_model  # noqa: E402

from pimsim.batch import BatchedProgram, BatchedSteps, run_batched  # noqa: E402
from pimsim.config import load_config  # noqa: E402
from pimsim.decode import DecodeSimulator  # noqa: E402
from pimsim.moe import Routing, routed_steps  # noqa: E402
from workloads.models.hf_decode import decode_step_module  # noqa: E402

B = 4
PROMPTS = [[3, 4], [5, 6, 7], [8, 9], [10, 11, 12, 13]]  # each sequence at its own position
MACS = ("MAC_AB", "MAC_SB")


@pytest.fixture(scope="module")
def prep():
    from compiler.pipeline import prepare

    return prepare(decode_step_module(tiny_moe_model("mixtral")), name="mixtral")


@pytest.fixture(scope="module")
def systems(prep):
    """One device; two with the experts split tensor-parallel (an all-reduce per expert); two
    with expert parallelism (whole experts, one all-reduce per MoE layer). Refresh on."""
    from compiler.pipeline import lower
    from workloads.compiling import hw_config

    out = {}
    for name, kw in (("one", {}), ("tp", {"tp": 2}), ("ep", {"tp": 2, "ep": 2})):
        cfg = hw_config("pim-gpt", **kw) if kw else load_config("pim-gpt")
        assert cfg.refresh.enabled
        out[name] = (lower(prep, cfg).program, cfg)
    return out


@pytest.mark.parametrize("system", ["one", "tp", "ep"])
def test_fast_and_command_by_command_executors_agree_on_routed_steps(systems, system):
    prog, cfg = systems[system]
    reps = [run_batched(prog, cfg, prompts=PROMPTS, n_tokens=3, skip_prompt=True, fast=fast,
                        routing=Routing.seeded(7)) for fast in (True, False)]
    fast, slow = reps
    assert fast.cycles == slow.cycles
    assert fast.per_token_ms == slow.per_token_ms
    assert fast.commands == slow.commands
    assert fast.energy["per_token_j"] == slow.energy["per_token_j"]
    assert fast.energy["by_component"] == slow.energy["by_component"]


def _macs(counts: dict[str, int]) -> int:
    return sum(counts.get(c, 0) for c in MACS)


def _step_macs(prog, cfg, mask: np.ndarray, pos) -> int:
    """MAC commands of the steps of ``mask`` alone, one step at ``pos``."""
    sim = DecodeSimulator(prog, cfg)
    sim.run_token(pos, mask)
    return _macs(sim.command_counts)


@pytest.mark.parametrize("system", ["one", "tp"])
def test_expert_macs_are_the_routed_tokens_passes(systems, system):
    prog, cfg = systems[system]
    pos = 5
    tags = [s.expert for s in prog.steps]
    shared = _step_macs(prog, cfg, np.array([t is None for t in tags]), pos)
    one = {t: _step_macs(prog, cfg, np.array([u == t for u in tags]), pos)
           for t in set(tags) - {None}}
    assert all(v > 0 for v in one.values()) and shared > 0
    # sequence b chose experts (b, b+1 mod 4) in layer 0 and (0, b % 2 + 2) in layer 1
    tokens = {0: [[b, (b + 1) % 4] for b in range(B)], 1: [[0, b % 2 + 2] for b in range(B)]}
    active, counts = routed_steps(BatchedProgram(prog, B), tokens)
    assert counts == {(0, 0): 2, (0, 1): 2, (0, 2): 2, (0, 3): 2, (1, 0): 4, (1, 2): 2, (1, 3): 2}
    bprog = BatchedProgram(prog, B)
    bprog.route(counts)
    sim = DecodeSimulator(bprog, cfg)
    sim.run_token((pos,) * B, active)
    got = _macs(sim.command_counts)
    want = B * shared + sum(n * one[t] for t, n in counts.items())
    assert got == want
    every = B * shared + B * sum(one[t] for t in counts)  # B passes per chosen expert
    assert got < every
    bprog.route(None)  # unrouted: every chosen expert for all B sequences (a prefill, serving)
    sim = DecodeSimulator(bprog, cfg)
    sim.run_token((pos,) * B, active)
    assert _macs(sim.command_counts) == every
    # the MAC-rate bound counts the routed products
    from pimsim.batch import mac_bound_cyc

    bprog.route(counts)
    routed_bound = mac_bound_cyc(bprog, cfg)
    bprog.route(None)
    assert routed_bound < mac_bound_cyc(bprog, cfg)


@pytest.mark.parametrize("system", ["one", "ep"])
def test_streams_kept_from_another_routing_give_the_fresh_cycles(systems, system):
    prog, cfg = systems[system]
    reuse = BatchedSteps(prog, cfg)
    first = run_batched(prog, cfg, prompts=PROMPTS, n_tokens=3, skip_prompt=True,
                        routing=Routing.seeded(1), reuse=reuse)
    second = run_batched(prog, cfg, prompts=PROMPTS, n_tokens=3, skip_prompt=True,
                         routing=Routing.seeded(2), reuse=reuse)
    fresh = run_batched(prog, cfg, prompts=PROMPTS, n_tokens=3, skip_prompt=True,
                        routing=Routing.seeded(2))
    assert second.cycles == fresh.cycles and second.commands == fresh.commands
    assert second.per_token_ms == fresh.per_token_ms
    assert second.energy["per_token_j"] == fresh.energy["per_token_j"]
    assert first.per_token_ms != second.per_token_ms  # the routings differ, and so do the steps
    assert reuse.program(B)[0].routed is None  # a kept program starts unrouted


def test_ep_simulates_the_device_with_the_most_routed_tokens(systems):
    prog, cfg = systems["ep"]  # experts 0, 1 on device 0, experts 2, 3 on device 1
    # layer 0: device 0 runs 2 experts for 1 token each, device 1 one expert for 3 tokens
    tokens = {0: [[0, 2], [1, 2], [2, 3]], 1: [[0, 1]] * 3}
    _, counts = routed_steps(BatchedProgram(prog, 3), tokens)
    assert counts == {(0, 0): 3, (0, 1): 1, (1, 0): 3, (1, 1): 3}  # slots of device 1, then 0
    trace = Routing("trace", lines={(p, m): tokens[m] for p in range(4) for m in range(2)},
                    path="t")
    rep = run_batched(prog, cfg, prompts=[[3]] * 3, n_tokens=2, skip_prompt=True, routing=trace)
    load = rep.expert_load["ep"]
    # token x expert pairs per device per step: layer 0 2 and 4, layer 1 6 and 0
    assert load["pairs_per_device"] == [8.0, 4.0]


def test_a_functional_batch_routes_with_its_routers_and_gives_the_single_runs_tokens(prep):
    from compiler.pipeline import lower
    from pimsim.generate import run_generation
    from workloads.validation import functional_executor

    cfg = load_config("pim-gpt")
    c = lower(prep, cfg)
    prompts = [[3, 4], [10, 11], [20, 21]]
    singles = [run_generation(c.program, cfg, prompt=p, n_tokens=4,
                              functional=functional_executor(c, cfg, False)).tokens
               for p in prompts]
    fxs = [functional_executor(c, cfg, False) for _ in prompts]
    routing = Routing.recorder()
    rep = run_batched(c.program, cfg, prompts=prompts, n_tokens=4, functional=fxs,
                      routing=routing)
    assert rep.tokens == singles
    # the steps ran the routers' choice: replayed as a trace, the same cycles
    trace = Routing("trace", path="t", lines={(r["step"], r["moe"]): r["experts"]
                                              for r in routing.records})
    again = run_batched(c.program, cfg, prompts=prompts, n_tokens=4, routing=trace)
    assert again.cycles == rep.cycles and again.commands == rep.commands


@pytest.mark.parametrize("system", ["one", "tp"])
def test_a_prefill_step_routes_each_token(systems, system):
    """A batched prefill step (serving's, :func:`pimsim.batch.step_cost`) routes every prompt
    token: the executors agree, and it is shorter than the step with every expert computing
    every token."""
    from pimsim.batch import step_cost
    from pimsim.generate import TokenEnergy

    prog, cfg = systems[system]
    positions = [0, 1, 2, 3, 4, 0, 1, 2]  # two prompts' chunks
    regions = [0] * 5 + [1] * 3
    fast = step_cost(prog, cfg, positions, regions, routing=Routing.seeded(3))
    slow = step_cost(prog, cfg, positions, regions, routing=Routing.seeded(3), fast=False)
    assert fast == slow
    assert step_cost(prog, cfg, positions, regions) == step_cost(
        prog, cfg, positions, regions, routing=Routing.seeded(0))  # seeded uniform by default
    every = BatchedProgram(prog, len(positions), kv_regions=regions)  # unrouted
    sim = DecodeSimulator(every, cfg)
    meter = TokenEnergy(sim)
    meter.begin()
    tt = sim.run_token(tuple(positions))
    assert fast[0] < tt.end_cyc - tt.start_cyc
    assert fast[1] < meter.end(tt).total_j


def test_a_batched_prefill_run_routes_its_prompt_and_replays_from_its_trace(prep):
    """``run --prefill batched``: the prompt step runs each prompt token's experts only (the
    routers' choice in a functional run, the same tokens as token-by-token prefill); the trace it
    writes replays to its cycles, commands and energy; a trace of another batch is refused."""
    from compiler.pipeline import lower
    from pimsim.errors import UserError
    from workloads.validation import functional_executor

    cfg = load_config("pim-gpt")
    c = lower(prep, cfg)
    prompts = [[3, 4, 5], [10, 11, 12]]
    by_token = run_batched(c.program, cfg, prompts=prompts, n_tokens=3,
                           functional=[functional_executor(c, cfg, False) for _ in prompts])
    rec = Routing.recorder()
    rep = run_batched(c.program, cfg, prompts=prompts, n_tokens=3, prefill="batched",
                      functional=[functional_executor(c, cfg, False) for _ in prompts],
                      routing=rec)
    assert rep.tokens == by_token.tokens
    first = [r for r in rec.records if r["step"] == 2]
    assert len(first) == 2 and all(len(r["experts"]) == 6 for r in first)  # 2 x 3 prompt tokens
    trace = Routing("trace", path="t", lines={(r["step"], r["moe"]): r["experts"]
                                              for r in rec.records})
    again = run_batched(c.program, cfg, prompts=prompts, n_tokens=3, prefill="batched",
                        routing=trace)
    assert (again.cycles, again.commands) == (rep.cycles, rep.commands)
    assert again.energy["per_token_j"] == rep.energy["per_token_j"]
    # the routed prompt step is shorter than one computing every expert for every token
    every = Routing("trace", path="t", lines={
        (r["step"], r["moe"]): ([[0, 1], [2, 3]] * 3 if r["step"] == 2 else r["experts"])
        for r in rec.records})
    assert run_batched(c.program, cfg, prompts=prompts, n_tokens=3, prefill="batched",
                       routing=every).per_token_ms[0] > rep.per_token_ms[0]
    short = Routing("trace", path="t", lines={(r["step"], r["moe"]): r["experts"][:1]
                                              for r in rec.records})
    with pytest.raises(UserError, match="routes 1 token"):
        run_batched(c.program, cfg, prompts=prompts, n_tokens=3, prefill="batched",
                    routing=short)
