"""Mixtures of experts: tiny random Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE / gpt-oss models
lowered op by op (router on PIM + ASIC, each expert's FFN as GEMVs) give the model's own greedy
tokens; a decode step runs only the chosen experts' steps, its time and weight bytes follow the
choice; a routing trace written by a functional run replays to the same cycles."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from hf_tiny import assert_same_generation, greedy_steps, hf_greedy, tiny_moe_model  # noqa: E402

from compiler.pipeline import compile_model  # noqa: E402
from pimsim.config import load_config  # noqa: E402
from pimsim.errors import UserError  # noqa: E402
from pimsim.moe import Routing, active_steps, weight_bytes  # noqa: E402
from workloads.models.hf_decode import decode_step_module  # noqa: E402
from workloads.validation import functional_executor  # noqa: E402

N_TOKENS = 16
PROMPT = [3]


@pytest.fixture(scope="module")
def cfg():
    return load_config("pim-gpt")


@pytest.fixture(scope="module")
def mixtral(cfg):
    m = tiny_moe_model("mixtral")
    return m, compile_model(decode_step_module(m), cfg, name="mixtral")


def _greedy(c, cfg, n: int) -> tuple[list[int], list[np.ndarray]]:
    return greedy_steps(functional_executor(c, cfg, exact=True), n, PROMPT)


def _check_family(family: str, cfg, split: dict) -> None:
    model = tiny_moe_model(family)
    want = hf_greedy(model, PROMPT, N_TOKENS)
    step = decode_step_module(model)
    for kw in ({}, split):
        c = compile_model(step, cfg, name=family, **kw)
        assert len(c.program.moe) == 2 and all(m["k"] == 2 for m in c.program.moe)
        assert_same_generation(f"{family} {kw}", _greedy(c, cfg, N_TOKENS), want)


def test_mixtral_greedy_tokens_match_the_hf_model(mixtral, cfg):
    model, c = mixtral
    assert_same_generation("mixtral", _greedy(c, cfg, N_TOKENS), hf_greedy(model, PROMPT, N_TOKENS))


@pytest.mark.slow
@pytest.mark.parametrize("family,split", [("mixtral", {"tp": 2}), ("qwen2-moe", {"tp": 2}),
                                          ("qwen3-moe", {"tp": 2}), ("olmoe", {"pp": 2}),
                                          ("mixtral", {"pp": 2}), ("gpt-oss", {"tp": 2}),
                                          ("gpt-oss", {"pp": 2})])
def test_moe_family_greedy_tokens_match_the_hf_model(family, split, cfg):
    # OLMoE normalises q and k over all heads (q_norm over hidden_size): a reduction across a
    # tensor-parallel split that pimsim refuses, so its two devices are pipeline stages
    _check_family(family, cfg, split)


def test_experts_are_tagged_and_the_router_is_an_asic_step(mixtral):
    _, c = mixtral
    prog = c.program
    tags = {s.expert for s in prog.steps if s.expert is not None}
    assert tags == {(m, e) for m in range(2) for e in range(4)}
    route = [s for s in prog.steps if s.name.endswith("moe_route")]
    assert len(route) == 2 and all(s.kind == "asic" and s.expert is None for s in route)
    for m in range(2):  # each expert: its up and down GEMVs
        for e in range(4):
            ops = [s.op for s in prog.steps if s.expert == (m, e) and s.kind == "pim"]
            assert ops == ["ffn_up", "ffn_down"], ops


def test_a_step_runs_only_the_chosen_experts(mixtral, cfg):
    from pimsim.decode import DecodeSimulator

    _, c = mixtral
    prog = c.program
    pos = 5
    choice = {0: {1, 3}, 1: {0, 2}}
    act = active_steps(prog, choice)
    every = DecodeSimulator(prog, cfg).run_token(pos)
    fast = DecodeSimulator(prog, cfg).run_token(pos, act)
    slow = DecodeSimulator(prog, cfg, fast=False).run_token(pos, act)
    assert (fast.end_cyc - fast.start_cyc) == (slow.end_cyc - slow.start_cyc)
    assert np.array_equal(fast.step_counts, slow.step_counts)
    assert fast.end_cyc < every.end_cyc
    for s in prog.steps:
        ran = fast.step_counts[s.index].sum() > 0 or fast.step_end[s.index] > fast.step_start[s.index]
        if s.expert is not None and s.expert[1] not in choice[s.expert[0]]:
            assert not ran, s.name
        elif s.kind == "pim":
            assert ran, s.name
    # the other two experts of each layer cost what these do (same shapes, other rows)
    other = {0: {0, 2}, 1: {1, 3}}
    t2 = DecodeSimulator(prog, cfg).run_token(pos, active_steps(prog, other))
    assert abs((t2.end_cyc - t2.start_cyc) - (fast.end_cyc - fast.start_cyc)) < \
        0.05 * (fast.end_cyc - fast.start_cyc)


def test_weight_bytes_per_step_follow_the_choice_and_the_batch_union(mixtral, cfg):
    from pimsim.batch import BatchedProgram, run_batched

    _, c = mixtral
    prog = c.program
    eb = prog.geo.elem_bytes
    size = {s.index: s.matrix.out_dim * s.matrix.in_dim * eb for s in prog.steps
            if s.kind == "pim" and s.matrix is not None}
    attn = sum(v for i, v in size.items() if prog.steps[i].op in ("qkv", "out_proj"))
    router = sum(v for i, v in size.items() if prog.steps[i].op == "ffn_up"
                 and prog.steps[i].expert is None)
    expert = sum(v for i, v in size.items() if prog.steps[i].expert == (0, 0))
    head = sum(v for i, v in size.items() if prog.steps[i].op == "lm_head")
    assert router == 2 * 4 * 64 * eb and expert == 3 * 64 * 64 * eb  # gate+up, down
    one = attn + router + 2 * 2 * expert + head  # 2 layers x 2 experts
    assert weight_bytes(prog, active_steps(prog, {0: {0, 1}, 1: {2, 3}})) == one
    # batch 2: the union of the sequences' experts (3 in layer 0, 2 in layer 1)
    bprog = BatchedProgram(prog, 2)
    union = active_steps(bprog, {0: {0, 1, 3}, 1: {2, 3}})
    assert weight_bytes(bprog, union) == one + expert
    trace = Routing("trace", lines={(p, m): [[0, 1], [1, 3]] if m == 0 else [[2, 3], [3, 2]]
                                    for p in range(3) for m in range(2)}, path="t")
    rep = run_batched(prog, cfg, prompts=[[3], [5]], n_tokens=3, routing=trace)
    assert rep.weight_bytes_per_step == one + expert
    assert rep.routing == "trace t"


def test_routing_trace_replays_to_the_functional_cycles(mixtral, cfg, tmp_path):
    from pimsim.generate import run_generation

    model, c = mixtral
    rec = Routing.recorder()
    ex = functional_executor(c, cfg, exact=True)
    fun = run_generation(c.program, cfg, prompt=[3, 9], n_tokens=4, functional=ex, routing=rec)
    assert fun.routing.startswith("functional")
    path = tmp_path / "routing.jsonl"
    rec.write(str(path))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 5 * 2 and sorted(lines[0]) == ["experts", "layer", "moe", "step"]
    assert all(len(x["experts"]) == 1 and len(x["experts"][0]) == 2 for x in lines)
    replay = run_generation(c.program, cfg, prompt=[3, 9], n_tokens=4,
                            routing=Routing.trace(str(path)))
    assert replay.cycles == fun.cycles and replay.per_token_ms == fun.per_token_ms
    assert replay.weight_bytes_per_step == fun.weight_bytes_per_step
    assert replay.routing == f"trace {path}"
    seeded = run_generation(c.program, cfg, prompt=[3, 9], n_tokens=4)
    assert seeded.routing == "seeded uniform, seed 0"


def test_seeded_routing_is_deterministic_and_skew_concentrates_the_choice(mixtral):
    _, c = mixtral
    prog = c.program

    def counts(r):
        n = np.zeros(4)
        for pos in range(400):
            for e in r.choose(prog, pos)[0]:
                n[e] += 1
        return np.sort(n)[::-1]

    u = counts(Routing.seeded(1))
    assert np.array_equal(u, counts(Routing.seeded(1)))
    s = counts(Routing.seeded(1, "skewed", 2.0))
    assert s[0] > u[0] + 60 and s[-1] < u[-1] - 60
    assert Routing.seeded(1, "skewed", 2.0).describe() == "seeded skewed (Zipf exponent 2.0), seed 1"
    with pytest.raises(UserError, match="skew"):
        Routing.seeded(0, "skewed", 0.0)
    with pytest.raises(UserError, match="unknown"):
        Routing.seeded(0, "zipf")


def test_bad_routing_traces_are_refused(mixtral, tmp_path):
    _, c = mixtral
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0, "moe": 0}\n')
    with pytest.raises(UserError, match="line 1"):
        Routing.trace(str(bad))
    short = tmp_path / "short.jsonl"
    short.write_text('{"step": 0, "moe": 0, "layer": 0, "experts": [[0, 1]]}\n')
    with pytest.raises(UserError, match="no line for step 0, MoE layer 1"):
        Routing.trace(str(short)).choose(c.program, 0)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"step": 0, "moe": 0, "layer": 0, "experts": [[0, 9]]}\n'
                     '{"step": 0, "moe": 1, "layer": 1, "experts": [[0, 1]]}\n')
    with pytest.raises(UserError, match=r"experts \[0, 9\]"):
        Routing.trace(str(wrong)).choose(c.program, 0)


@pytest.mark.slow  # two compiles through torch.export (~9 s)
def test_cli_writes_and_replays_a_routing_trace(tmp_path, monkeypatch, capsys):
    from workloads.cli import main

    (tmp_path / "moe_models.py").write_text(
        "import hf_tiny\nmix = hf_tiny.tiny_moe_model('mixtral')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tr = tmp_path / "r.jsonl"
    args = ["run", "moe_models:mix", "--hw", "pim-gpt", "--tokens", "3", "--json", "--no-cache"]
    assert main(args + ["--functional", "--exact", "--routing-trace-out", str(tr)]) == 0
    fun = json.loads(capsys.readouterr().out)
    assert main(args + ["--routing-trace", str(tr)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["cycles"] == fun["cycles"] and rep["routing"] == f"trace {tr}"
    assert rep["weight_bytes_per_step"] == fun["weight_bytes_per_step"] > 0
    assert main(args + ["--routing-trace-out", str(tr)]) == 2
    assert "needs --functional" in capsys.readouterr().err


def test_shape_only_experts_are_gemvs_split_over_devices(cfg):
    import torch
    import transformers as T

    with torch.device("meta"):  # a preset's weightless model: views of stacked meta weights
        m = T.AutoModelForCausalLM.from_config(T.MixtralConfig(
            hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
            num_local_experts=4, num_experts_per_tok=2))
    step = decode_step_module(m.eval())
    for tp in (1, 2):
        prog = compile_model(step, cfg, name="meta-mixtral", tp=tp).program
        ups = [s.matrix for s in prog.steps if s.expert is not None and s.op == "ffn_up"]
        downs = [s.matrix for s in prog.steps if s.expert is not None and s.op == "ffn_down"]
        assert [(u.out_dim, u.in_dim) for u in ups] == [(128 // tp, 64)] * 4
        assert [d.out_dim for d in downs] == [64] * 4
        if tp > 1:  # gate/up column-parallel, down row-parallel: half the columns each
            assert {prog.tp_rows[u.name][0] for u in ups} == {"col"}
            assert [[len(c) for c in prog.tp_rows[d.name][1]] for d in downs] == [[32, 32]] * 4
        assert not any(s.op == "elementwise" and s.expert is not None and "linear" in s.name
                       for s in prog.steps)


def test_every_run_reports_the_weight_bytes_of_the_whole_system():
    from workloads.session import simulate

    one = simulate("tiny", "pim-gpt", tokens=2)
    prog = one.compiled.program
    every = sum(s.matrix.out_dim * s.matrix.in_dim * prog.geo.elem_bytes
                for s in prog.steps if s.kind == "pim" and s.matrix is not None)
    assert one.report.weight_bytes_per_step == every > 0
    assert one.report.to_dict()["weight_bytes_per_step"] == every and one.report.routing == ""
    two = simulate("tiny", "pim-gpt", tokens=2, tp=2)  # both devices' shares
    share = sum(s.matrix.out_dim * s.matrix.in_dim * prog.geo.elem_bytes
                for s in two.compiled.program.steps if s.kind == "pim" and s.matrix is not None)
    assert two.report.weight_bytes_per_step == 2 * share


@pytest.mark.parametrize("at", [
    dict(k=2, score="softmax", norm=True, n_group=1, topk_group=1, scale=1.0),  # Mixtral
    dict(k=3, score="softmax", norm=False, n_group=1, topk_group=1, scale=1.0),  # OLMoE
    dict(k=4, score="sigmoid", norm=True, n_group=4, topk_group=2, scale=2.5),  # DeepSeek-V3
    dict(k=2, score="topk_softmax", norm=False, n_group=1, topk_group=1, scale=1.0),  # gpt-oss
])
def test_asic_routing_equals_the_reference_router(at):
    import torch

    from pimsim.functional import AsicMath
    from pimsim.moe import chosen, route
    from workloads.models.moe_ops import route_reference

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 16)).astype(np.float32)
    bias = rng.normal(scale=0.3, size=16).astype(np.float32) if at["score"] == "sigmoid" else None
    M = AsicMath.from_config(load_config("pim-gpt"), exact=True)
    got = route(M, logits, bias, at)
    want = route_reference(torch.from_numpy(logits), None if bias is None else
                           torch.from_numpy(bias), **at).numpy()
    assert [len(c) for c in chosen(got)] == [at["k"]] * 3
    assert chosen(got) == chosen(want)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)
    if at["n_group"] > 1:  # the experts lie in the topk_group best groups of 4
        for c in chosen(got):
            assert len({e // 4 for e in c}) <= 2
