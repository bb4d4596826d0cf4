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
def mixtral_prep():
    """The tiny Mixtral and its exported decode step, lowered by the tests onto each system."""
    from compiler.pipeline import prepare

    m = tiny_moe_model("mixtral")
    return m, prepare(decode_step_module(m), name="mixtral")


@pytest.fixture(scope="module")
def mixtral(cfg, mixtral_prep):
    from compiler.pipeline import lower

    m, prep = mixtral_prep
    return m, lower(prep, cfg)


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


# ---------------------------------------------------------------- expert parallelism


@pytest.fixture(scope="module")
def split_and_ep(mixtral_prep):
    """The tiny Mixtral (4 experts) on 2 devices: experts split tensor-parallel, and whole
    (expert parallelism: experts 0, 1 on device 0, experts 2, 3 on device 1)."""
    from compiler.pipeline import lower
    from workloads.compiling import hw_config

    _, prep = mixtral_prep
    out = {}
    for name, kw in (("tp", {}), ("ep", {"ep": 2})):
        c = hw_config("pim-gpt", tp=2, **kw)
        out[name] = (lower(prep, c), c)
    return out


def test_expert_parallel_places_whole_experts_and_gives_the_single_device_tokens(
        mixtral, cfg, split_and_ep):
    c1 = mixtral[1]
    c, ecfg = split_and_ep["ep"]
    prog = c.program
    assert prog.ep == 2 and ecfg.system.ep == 2
    # the device's program: its own experts' steps, one per local slot, whole GEMVs
    ups = {s.expert: s.matrix for s in prog.steps if s.expert is not None and s.op == "ffn_up"}
    assert {k: (m.out_dim, m.in_dim) for k, m in ups.items()} == \
        {(m, e): (128, 64) for m in range(2) for e in range(2)}
    for m in range(2):  # device 1's experts lie at device 0's rows (one layout per device)
        names = sorted((n for n in prog.matrices if n.startswith(f"L{m}.ffn_up")
                        and n != f"L{m}.ffn_up"),  # the router's gate: L{m}.ffn_up
                       key=lambda n: int(n[len(f"L{m}.ffn_up"):]))  # ffn_up1 .. ffn_up4
        mats = [prog.matrices[n] for n in names]
        assert [prog.tp_rows[n] for n in names] == \
            [("expert", 0), ("expert", 0), ("expert", 1), ("expert", 1)]
        assert mats[0] is ups[(m, 0)] and mats[1] is ups[(m, 1)]
        assert mats[2].base_row == mats[0].base_row != mats[1].base_row == mats[3].base_row
    comm = [s.name for s in prog.steps if s.kind == "comm"]
    assert [n for n in comm if ".moe." in n] == ["L0.moe.all_reduce", "L1.moe.all_reduce"]
    assert all(s.expert is None for s in prog.steps if s.kind == "comm")  # none per expert
    tp_comm = [s for s in split_and_ep["tp"][0].program.steps if s.kind == "comm"]
    assert sum(s.expert is not None for s in tp_comm) == 8  # TP: one per expert's down
    want = _greedy(c1, cfg, 8)
    assert_same_generation("ep 2", greedy_steps(functional_executor(c, ecfg, exact=True), 8,
                                                PROMPT), want)


def _one_device_trace(experts: list[int]) -> Routing:
    return Routing("trace", lines={(p, m): [experts] for p in range(4) for m in range(2)},
                   path="t")


def test_a_step_waits_for_the_device_holding_every_chosen_expert(split_and_ep):
    from pimsim.decode import DecodeSimulator
    from pimsim.pipeline import run_system

    c, ecfg = split_and_ep["ep"]
    prog = c.program
    reps = {d: run_system(c.programs, ecfg, prompt=[3], n_tokens=4,
                          routing=_one_device_trace([2 * d, 2 * d + 1])) for d in (0, 1)}

    def device_ms(slots: set[int]) -> list[float]:  # one device running only these experts
        sim = DecodeSimulator(prog, ecfg)
        mask = np.array([s.expert is None or s.expert[1] in slots for s in prog.steps])
        return [ecfg.timing.ns(t.end_cyc - t.start_cyc) / 1e6
                for t in (sim.run_token(p, mask) for p in range(4))]

    for d, rep in reps.items():
        assert rep.per_token_ms == device_ms({0, 1})  # its two experts, in local slots 0, 1
        load = rep.expert_load
        assert load["placement"] == "ep" and load["devices"] == 2
        assert load["ep"]["imbalance"] == 2.0  # the device count: all on one device
        assert load["ep"]["pairs_per_device"] == ([4.0, 0.0] if d == 0 else [0.0, 4.0])
        assert load["tp"]["imbalance"] == 1.0 and load["tp"]["pairs_per_device"] == [2.0, 2.0]
        assert load["ep"]["weight_bytes_imbalance"] > 1.0
        assert "imbalance 2.00" in rep.summary() and "ep 2" in rep.summary()
    idle = device_ms(set())  # the other device: no expert work
    assert all(a > b for a, b in zip(reps[0].per_token_ms, idle))
    # device 1's experts sit at device 0's rows: the same steps, the same time
    assert reps[1].per_token_ms == reps[0].per_token_ms
    mixed = run_system(c.programs, ecfg, prompt=[3], n_tokens=4,  # one expert on each device
                       routing=_one_device_trace([1, 2]))
    assert mixed.per_token_ms == device_ms({1})  # a tie: device 0's expert 1, its slot 1
    assert mixed.expert_load["ep"]["imbalance"] == 1.0
    assert all(a < b for a, b in zip(mixed.per_token_ms, reps[0].per_token_ms))


def test_ep_reads_the_weight_bytes_tp_reads_and_shows_the_skew(split_and_ep):
    from pimsim.pipeline import run_system

    reps = {}
    for name, (c, sc) in split_and_ep.items():
        reps[name] = run_system(c.programs, sc, prompt=[3], n_tokens=3,
                                batch_prompts=[[3]] * 8, routing=Routing.seeded(2, "skewed", 2.0))
    tp, ep = reps["tp"], reps["ep"]
    assert tp.weight_bytes_per_step == ep.weight_bytes_per_step > 0  # the same experts read
    assert tp.expert_load["placement"] == "tp" and ep.expert_load["placement"] == "ep"
    for p in ("ep", "tp"):  # one routing: the same load whichever placement ran
        for k, v in tp.expert_load[p].items():
            assert v == pytest.approx(ep.expert_load[p][k]), (p, k)
    load = ep.expert_load
    assert sum(load["ep"]["pairs_per_device"]) == pytest.approx(8 * 2 * 2)  # B x layers x k
    assert load["ep"]["imbalance"] > 1.05 and load["tp"]["imbalance"] == 1.0
    assert tp.system["ep"] == 1 and ep.system["ep"] == 2


def test_ep_that_does_not_divide_the_experts_is_refused(mixtral_prep):
    from compiler.pipeline import lower
    from workloads.compiling import hw_config

    with pytest.raises(UserError, match=r"--ep 8 does not divide the 4 experts of MoE layer "
                                        r"0; use an --ep \(and --tp\) dividing 4"):
        lower(mixtral_prep[1], hw_config("pim-gpt", tp=8, ep=8))
    with pytest.raises(UserError, match="compiled with expert parallelism 1, but the system"):
        from pimsim.pipeline import check_system

        c = lower(mixtral_prep[1], hw_config("pim-gpt", tp=2))
        check_system(c.programs, hw_config("pim-gpt", tp=2, ep=2))


@pytest.mark.slow  # two exports (~20 s)
@pytest.mark.parametrize("family", ["qwen2-moe", "qwen3-moe"])
def test_moe_family_greedy_tokens_under_expert_parallelism(family):
    # Qwen2-MoE: its shared expert stays tensor-parallel beside the whole routed experts
    from workloads.compiling import hw_config

    ecfg = hw_config("pim-gpt", tp=2, ep=2)
    model = tiny_moe_model(family)
    c = compile_model(decode_step_module(model), ecfg, name=family)
    assert c.program.ep == 2
    assert sum(s.name.endswith(".moe.all_reduce") for s in c.program.steps) == 2
    assert_same_generation(f"{family} ep 2", _greedy(c, ecfg, N_TOKENS),
                           hf_greedy(model, PROMPT, N_TOKENS))
