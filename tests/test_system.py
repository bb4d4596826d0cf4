"""Systems of several PIM devices: tensor and pipeline parallelism (issue 12).

Checks the partition (which device holds what), that one device is today's result to the cycle,
that tensor parallelism is faster and says where the time went, the pipeline schedule against
its closed form, functional execution across devices, system configs and the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")

from compiler.passes import partition  # noqa: E402
from compiler.passes.images import build_graph_image  # noqa: E402
from compiler.pipeline import compile_model  # noqa: E402
from pimsim.config import load_config  # noqa: E402
from pimsim.decode import comm_cost  # noqa: E402
from pimsim.functional import AsicMath, FlowExecutor, SystemFlowExecutor  # noqa: E402
from pimsim.generate import run_generation  # noqa: E402
from pimsim.interconnect import Fabric  # noqa: E402
from pimsim.pipeline import pipeline_schedule, run_system  # noqa: E402
from pimsim.system import System, SystemError_, resolve  # noqa: E402
from tests.hf_tiny import tiny_model  # noqa: E402
from workloads.models.hf_decode import decode_step_module  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(name="pim-gpt", **kw):
    cfg = load_config(name)
    return dataclasses.replace(cfg, system=resolve(kw.get("devices"), kw.get("tp"),
                                                   kw.get("pp"), cfg.system))


@pytest.fixture(scope="module")
def gqa():
    return tiny_model("llama-gqa")  # 8 query heads, 2 KV heads


def _compiled(model, cfg, tp=1, pp=1):
    return compile_model(decode_step_module(model), cfg, name="m", tp=tp,
                         pp=pp)


# ---------------------------------------------------------------- partition


def test_heads_are_dealt_out_and_kv_heads_repeated_when_fewer_than_devices():
    assert [h.tolist() for h in partition.head_ranks(8, 4, "query")] == [[0, 1], [2, 3], [4, 5],
                                                                        [6, 7]]
    assert [h.tolist() for h in partition.head_ranks(2, 4, "KV")] == [[0], [0], [1], [1]]
    with pytest.raises(ValueError, match="neither divides"):
        partition.head_ranks(6, 4, "query")


def test_stages_take_contiguous_layers_as_equal_as_possible():
    assert [list(r) for r in partition.stage_layers(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [list(r) for r in partition.stage_layers(4, 4)] == [[0], [1], [2], [3]]


def test_tensor_parallel_program_splits_products_and_heads(gqa):
    cfg = _cfg()
    one = _compiled(gqa, cfg).program
    two = _compiled(gqa, cfg, tp=2).program
    kinds = {m: k for m, (k, _) in two.tp_rows.items()}
    assert kinds["L0.qkv"] == "col" and kinds["L0.ffn_up"] == "col"
    assert kinds["L0.out_proj"] == "row" and kinds["L0.ffn_down"] == "row"
    assert kinds["final.lm_head"] == "col"
    for name, m in two.matrices.items():
        full = one.matrices[name]
        if kinds[name] == "col":
            assert (m.out_dim, m.in_dim) == (full.out_dim // 2, full.in_dim), name
        else:
            assert (m.out_dim, m.in_dim) == (full.out_dim, full.in_dim // 2), name
    (kl1, _), (kl2, _) = one.kv_layouts[0], two.kv_layouts[0]
    assert (kl2.n_head, kl2.kv_heads) == (kl1.n_head // 2, kl1.kv_heads // 2)
    # one all-reduce per column/row pair (attention, MLP) per layer, and the logits' gather
    comm = [s for s in two.steps if s.kind == "comm"]
    n_layer = one.dims["n_layer"]
    assert [s.op for s in comm].count("all_reduce") == 2 * n_layer
    assert [s.op for s in comm].count("gather") == 1
    # every device's rows of each column-parallel product, together, are all rows once
    for name, (kind, idx) in two.tp_rows.items():
        if kind == "col":
            assert sorted(np.concatenate(idx).tolist()) == list(range(one.matrices[name].out_dim))


def test_kv_heads_fewer_than_devices_are_repeated(gqa):
    prog = _compiled(gqa, _cfg(), tp=4).program
    q, kv = prog.tp_heads[0]
    assert [h.tolist() for h in kv] == [[0], [0], [1], [1]]
    assert [h.tolist() for h in q] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    kl, _ = prog.kv_layouts[0]
    assert (kl.n_head, kl.kv_heads) == (2, 1)


def test_a_split_the_heads_do_not_allow_is_refused(gqa):
    from compiler.passes.lower import LoweringError

    with pytest.raises(LoweringError, match="cannot be split|neither divides"):
        _compiled(gqa, _cfg(), tp=3)


# ---------------------------------------------------------------- collectives


def test_all_reduce_step_costs_the_fabric_time_in_cycles(gqa):
    cfg = _cfg()
    prog = _compiled(gqa, cfg, tp=4).program
    st = next(s for s in prog.steps if s.op == "all_reduce")
    ic = cfg.system.interconnect
    n_bytes = st.n_elems * 2
    f = Fabric(ic, 4)
    adds_cyc = -(-(cfg.asic.op_latency_cyc["residual"] + -(-(st.n_elems // 4 * 3) //
                 cfg.asic.vector_lanes) * cfg.asic.op_passes["residual"]) * 1e6 //
                 cfg.asic.clock_mhz // cfg.tCK_ps)
    t_ns = f.all_reduce(range(4), n_bytes, reduce_ns=adds_cyc * cfg.tCK_ps / 1000)
    cost = comm_cost(cfg, prog, st)
    assert cost.ns == pytest.approx(t_ns)
    assert cost.cycles(cfg.tCK_ps) == -(-int(round(t_ns * 1000)) // cfg.tCK_ps)


# ---------------------------------------------------------------- timing


@pytest.mark.slow  # 18 s; tests/test_goldens.py holds every system config to the cycle
def test_one_device_system_is_the_single_device_run_to_the_cycle(gqa):
    cfg = _cfg()
    c = _compiled(gqa, cfg)
    a = run_generation(c.program, cfg, prompt=[1, 2, 3], n_tokens=6)
    b = run_system(c.programs, cfg, prompt=[1, 2, 3], n_tokens=6)
    assert b.cycles == a.cycles and b.per_token_ms == a.per_token_ms
    assert b.commands == a.commands and b.energy["per_token_j"] == a.energy["per_token_j"]
    assert b.throughput_tokens_per_s == a.tokens_per_s and b.breakdown["interconnect"] == 0
    # and a preset through the CLI: --devices 1 is the plain run
    cmd = [sys.executable, "-m", "workloads.cli", "run", "gpt2-small", "--tokens", "2",
           "--json", "--no-progress", "--no-cache"]
    plain = json.loads(subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                      check=True).stdout)
    dev1 = json.loads(subprocess.run(cmd + ["--devices", "1"], capture_output=True, text=True,
                                     cwd=REPO, check=True).stdout)
    assert dev1["cycles"] == plain["cycles"] and dev1["system"]["devices"] == 1


def test_tensor_parallel_is_faster_and_shows_where_the_time_went():
    from workloads.models.resolve import resolve_model

    src, name = resolve_model("gpt2-small", weights=False)
    base = load_config("aim-gddr6")
    ms = {}
    for n in (1, 2, 4):
        cfg = dataclasses.replace(base, system=resolve(n, None, None))
        c = compile_model(src, cfg, name=name)
        rep = run_system(c.programs, cfg, prompt=[0] * 8, n_tokens=2, skip_prompt=True)
        ms[n] = rep.ms_per_token
        if n > 1:
            assert rep.breakdown["interconnect"] > 0 and rep.per_op["all_reduce"] > 0
            assert rep.breakdown["pim_mac"] > 0 and rep.breakdown["asic"] > 0
            assert rep.energy["by_component"]["interconnect"] > 0
            assert rep.energy["avg_power_w"] == pytest.approx(
                rep.energy["j_per_token"] * rep.throughput_tokens_per_s)
    assert ms[4] < ms[2] < ms[1]


def test_pipeline_schedule_matches_the_closed_form():
    d, x, b = 1000, 30, 7
    for pp in (1, 2, 4):
        sch = pipeline_schedule(pp, range(20), [x] * (pp - 1), b,
                                lambda s, pos, j, start: start + d)
        period = max(pp * d, pp * d + (pp - 1) * x + b)
        assert sch.latency[-1] == pp * d + (pp - 1) * x
        assert sch.rounds == [period] * 20  # every round, the last one's to the next start
        # steady state: each round of pp tokens takes one period; the last round's other
        # sequences follow the first one stage-time apart
        assert sch.end == 19 * period + pp * d + (pp - 1) * x + (pp - 1) * d
        assert (20 * pp / sch.end) / (pp / period) == pytest.approx(1.0, rel=0.1)
    # a slow stage bounds the throughput at pp / (pp * slowest)
    dur = [100, 100, 4000, 100]
    sch = pipeline_schedule(4, range(30), [0, 0, 0], 0,
                            lambda s, pos, j, start: start + dur[s])
    rounds_cyc = sch.end / 30
    assert rounds_cyc == pytest.approx(4 * 4000, rel=0.03)
    assert sch.busy[2] / sch.end == pytest.approx(1.0, rel=0.03)


def test_programs_for_another_system_are_refused(gqa):
    """The simulator reads tp and pp from the programs: a config whose [system] says otherwise
    is refused, not silently ignored."""
    from pimsim.errors import UserError
    from pimsim.pipeline import check_system

    c = _compiled(gqa, _cfg(tp=2), tp=2)
    check_system(c.programs, _cfg(tp=2))
    for wrong in (_cfg(), _cfg(tp=2, pp=2), _cfg(tp=4)):
        sy = wrong.system
        with pytest.raises(UserError, match=rf"compiled for tp 2 x pp 1, but the system of "
                                            rf"pim-gpt is tp {sy.tp} x pp {sy.pp}; compile for"):
            run_system(c.programs, wrong, prompt=[1], n_tokens=1)
    with pytest.raises(UserError, match="no stage programs"):
        run_system([], _cfg(), prompt=[1], n_tokens=1)


def test_pipeline_throughput_grows_with_stages(gqa):
    thr = {}
    for pp in (1, 2):
        cfg = _cfg(pp=pp)
        c = _compiled(gqa, cfg, pp=pp)
        rep = run_system(c.programs, cfg, prompt=[1], n_tokens=6)
        thr[pp] = rep.throughput_tokens_per_s
        assert len(rep.system["utilisation"]) == pp
        assert 0 <= rep.system["bubble"] < 1
    assert thr[2] > 1.5 * thr[1]


# ---------------------------------------------------------------- functional


@pytest.mark.parametrize("tp,pp", [(2, 1), (4, 1), (1, 2), (2, 2)])
def test_functional_tokens_across_devices_equal_one_device(gqa, tp, pp):
    cfg = _cfg()
    math = AsicMath.from_config(cfg, exact=True)
    one = _compiled(gqa, cfg)
    fx1 = FlowExecutor(one.program, build_graph_image(one.mapping), cfg, math=math)
    c = _compiled(gqa, cfg, tp=tp, pp=pp)
    imgs = [[build_graph_image(mp, rank=r) for r in range(tp)] for mp in c.stage_mappings]
    fx = SystemFlowExecutor(c.programs, imgs, cfg, math=math)
    a = run_generation(one.program, cfg, prompt=[5, 9], n_tokens=12, functional=fx1)
    b = run_system(c.programs, _cfg(tp=tp, pp=pp), prompt=[5, 9], n_tokens=12, functional=fx)
    assert b.tokens == a.tokens and len(b.tokens) == 12


def test_each_device_image_holds_only_its_share(gqa):
    cfg = _cfg()
    c = _compiled(gqa, cfg, tp=2)
    mp = c.mapping
    kind, idx = mp.tp_rows["L0.ffn_down"]
    assert kind == "row"
    w = np.asarray(mp.weights["L0.ffn_down"], np.float32)
    from pimsim.functional import FunctionalExecutor

    m = mp.matrices["L0.ffn_down"]
    for r in range(2):
        fx = FunctionalExecutor(c.program, build_graph_image(mp, rank=r), cfg)
        row = fx._read_matrix_row(m, 3)
        from pimsim.functional import to_bf16
        assert np.array_equal(row[:len(idx[r])], to_bf16(w[3, idx[r]]))


# ---------------------------------------------------------------- configs and CLI


def test_system_configs_load_with_their_device():
    cfg = load_config("aim-cxl-8")
    dev = load_config("aim-gddr6")
    assert cfg.org == dev.org and cfg.timing == dev.timing
    assert (cfg.system.devices, cfg.system.tp, cfg.system.pp) == (8, 8, 1)
    assert load_config("aim-cxl-32").system.devices == 32


def test_resolve_rules():
    assert resolve(8, None, None) == System(devices=8, tp=8, pp=1)
    assert resolve(8, None, 2) == System(devices=8, tp=4, pp=2)
    assert resolve(None, 2, 4) == System(devices=8, tp=2, pp=4)
    for bad in ((8, 3, None), (6, None, 4), (8, 2, 2)):
        with pytest.raises(SystemError_):
            resolve(*bad)


EIGHT = System(devices=8, tp=8, pp=1)


@pytest.mark.parametrize("devices, tp, pp, want", [
    (None, 4, 2, System(devices=8, tp=4, pp=2)),  # both given: they must make the 8
    (None, 8, None, EIGHT),  # the config's own split
    (None, None, 1, EIGHT),
    (4, None, None, System(devices=4, tp=4, pp=1)),  # --devices changes the count
    (2, None, 2, System(devices=2, tp=1, pp=2)),
])
def test_tp_and_pp_keep_a_multi_device_configs_count(devices, tp, pp, want):
    assert resolve(devices, tp, pp, EIGHT) == want


@pytest.mark.parametrize("tp, pp, msg", [
    (4, None, r"--tp 4 x pp 1 \(the config's\) = 4 devices, but cfg has 8 devices; add --pp 2"),
    (None, 4, r"tp 8 \(the config's\) x --pp 4 = 32 devices, but cfg has 8 devices; add --tp 2"),
    (3, None, r"= 3 devices, but cfg has 8 devices; give --tp T and --pp P with T x P = 8"),
    (2, 2, r"--tp 2 x --pp 2 = 4 devices, .*or --devices 4 for a system of that size"),
])
def test_tp_or_pp_that_do_not_make_the_configs_devices_are_refused(tp, pp, msg):
    with pytest.raises(SystemError_, match=msg):
        resolve(None, tp, pp, EIGHT, where="cfg")


def test_a_single_device_config_grows_to_tp_x_pp():
    one = System()
    assert resolve(None, 4, None, one) == System(devices=4, tp=4, pp=1)
    assert resolve(None, None, 2, one) == System(devices=2, tp=1, pp=2)
    assert resolve(None, 2, 2, one) == System(devices=4, tp=2, pp=2)


@pytest.mark.parametrize("args,msg", [
    (["--devices", "6", "--tp", "4"], "--tp 4 x --pp 1"),
    (["--devices", "0"], "--devices"),
    (["--tp", "5"], "cannot be split"),
])
def test_bad_system_flags_exit_2_with_one_line(args, msg):
    r = subprocess.run([sys.executable, "-m", "workloads.cli", "compile", "gpt2-small",
                        "--no-cache", "--no-progress"] + args, capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and "Traceback" not in r.stderr


def test_bad_system_section_is_named(tmp_path):
    from pimsim.errors import UserError

    p = tmp_path / "s.toml"
    p.write_text('[system]\ndevice = "aim-gddr6"\ndevices = 4\ntp = 3\n')
    with pytest.raises(UserError, match=r"\[system\]"):
        load_config(p)
    p.write_text('[system]\ndevice = "aim-gddr6"\nhost = "shared"\n')
    with pytest.raises(Exception, match="host"):
        load_config(p)


# ---------------------------------------------------------------- sweeps


def test_system_sweep_on_a_dask_local_cluster_writes_the_store(tmp_path):
    from dask.distributed import LocalCluster

    from workloads import sweeps as S
    from workloads.plots import plot_sweep

    spec = S.spec_from_dict({"name": "sys", "hw": "aim-gddr6", "model": "tiny", "tokens": 2,
                             "grid": {"prompt": [4, 32]},
                             "points": [{"devices": 1}, {"devices": 2},
                                        {"devices": 4, "tp": 2, "pp": 2}, {"devices": 3,
                                                                          "tp": 2}]},
                            name="sys")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=None) as cluster:
        res = S.run_sweep(spec, tmp_path / "s.db", cluster=cluster.scheduler_address,
                          progress=False, log=lambda s: None)
    assert res.counts == {"ok": 6, "invalid": 2, "error": 0}
    df = res.df
    bad = df[df.status == "invalid"]
    assert bad.reason.str.contains("--tp 2 x --pp 1").all()
    ok = df[df.status == "ok"]
    hw = [json.loads(h)["system"] for h in ok.hw_json]
    assert sorted({(h["devices"], h["tp"], h["pp"]) for h in hw}) == [(1, 1, 1), (2, 2, 1),
                                                                        (4, 2, 2)]
    # the pipeline's two sequences in flight: its throughput is above its single-token rate
    pp_rows = ok[[json.loads(h)["system"]["pp"] == 2 for h in ok.hw_json]]
    assert (pp_rows.tokens_per_s > 1000.0 / pp_rows.ms_per_token).all()
    # points that left tp / pp to the rule show what they resolved to, and the plots draw
    assert ok.tp.notna().all() and ok.pp.notna().all()
    assert sorted(zip(ok.devices, ok.tp, ok.pp)) == [(1, 1, 1), (1, 1, 1), (2, 2, 1), (2, 2, 1),
                                                     (4, 2, 2), (4, 2, 2)]
    pngs = plot_sweep(res, tmp_path / "plots")
    assert {p.name for p in pngs} >= {"vs_devices.png", "vs_prompt.png"}


# ---------------------------------------------------------------- long contexts


@pytest.mark.slow  # 19 s; benchmarks/bench_system.py runs long contexts too
def test_long_context_spreads_over_devices_and_attention_grows_with_position():
    from compiler.passes.mapping import CapacityError
    from workloads.models.resolve import resolve_model

    src, name = resolve_model("mistral-7b", weights=False)  # 32 k context, GQA 32 / 8
    base = load_config("aim-gddr6")
    with pytest.raises(CapacityError, match="more devices"):
        compile_model(src, base, name=name)
    cfg = dataclasses.replace(base, system=resolve(2, None, None))
    c = compile_model(src, cfg, name=name)
    kl, _ = c.program.kv_layouts[0]
    assert kl.n_ctx == 32768 and kl.kv_heads == 4  # each device: half the KV heads, all tokens
    attn = []
    for prompt in (1024, 16384, 32000):
        rep = run_system(c.programs, cfg, prompt=[0] * prompt, n_tokens=1, skip_prompt=True)
        attn.append(rep.per_op["attn_score"] + rep.per_op["attn_value"])
    # the K/V rows read grow linearly with the position (plus a fixed part per step)
    assert attn[0] < attn[1] < attn[2]
    slope_lo = (attn[1] - attn[0]) / (16384 - 1024)
    slope_hi = (attn[2] - attn[1]) / (32000 - 16384)
    assert slope_hi == pytest.approx(slope_lo, rel=0.15)


@pytest.mark.slow  # 16 s: two subprocess compiles
def test_context_flag_reserves_the_cache_and_refuses_past_learned_positions():
    r = subprocess.run([sys.executable, "-m", "workloads.cli", "compile", "gpt2-small",
                        "--context", "4096", "--no-progress"], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 2 and "learned positions for 1024" in r.stderr
    r = subprocess.run([sys.executable, "-m", "workloads.cli", "compile", "gpt2-small",
                        "--context", "256", "--no-progress"], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 0 and "context 256" in r.stdout


def test_attention_kept_on_one_device(gqa):
    cfg = dataclasses.replace(_cfg(), system=resolve(4, None, None, None, "one-device"))
    c = compile_model(decode_step_module(gqa), cfg, name="m")
    prog = c.program
    kl, _ = prog.kv_layouts[0]
    assert (kl.n_head, kl.kv_heads) == (8, 2)  # every head on device 0
    ops = [s.op for s in prog.steps if s.kind == "comm"]
    n_layer = prog.dims["n_layer"]
    assert ops.count("broadcast") == n_layer and ops.count("all_reduce") == n_layer
    kind, cols = prog.tp_rows["L0.out_proj"]
    assert kind == "row" and all(len(x) == 0 for x in cols[1:])
    one = _compiled(gqa, _cfg())
    math = AsicMath.from_config(cfg, exact=True)
    fx1 = FlowExecutor(one.program, build_graph_image(one.mapping), cfg, math=math)
    fx = SystemFlowExecutor(c.programs, [[build_graph_image(mp, rank=r) for r in range(4)]
                                         for mp in c.stage_mappings], cfg, math=math)
    a = run_generation(one.program, _cfg(), prompt=[5, 9], n_tokens=10, functional=fx1)
    b = run_system(c.programs, cfg, prompt=[5, 9], n_tokens=10, functional=fx)
    assert b.tokens == a.tokens
    assert b.per_op["broadcast"] > 0


def test_timeline_of_a_system_shows_the_collectives(tmp_path, gqa):
    from pimsim.timeline import write_timeline

    cfg = _cfg(devices=2)
    c = _compiled(gqa, cfg, tp=2)
    tr = write_timeline(tmp_path / "t.json", c.program, cfg, 3)
    coll = [e for e in tr["traceEvents"] if e.get("cat") == "collective"]
    n_comm = sum(1 for s in c.program.steps if s.kind == "comm")
    assert len(coll) == n_comm and all(e["dur"] > 0 for e in coll)


@pytest.mark.parametrize("tp,pp,schedule", [(2, 1, "serial"), (2, 2, "overlap")])
def test_command_by_command_executor_agrees_on_a_system(gqa, tp, pp, schedule):
    """The SimPy executor (collectives on their own fabric resource) gives the fast path's
    cycles, counts and per-token times exactly."""
    cfg = _cfg(tp=tp, pp=pp)
    c = _compiled(gqa, cfg, tp=tp, pp=pp)
    fast = run_system(c.programs, cfg, prompt=[1, 2], n_tokens=4, schedule=schedule)
    slow = run_system(c.programs, cfg, prompt=[1, 2], n_tokens=4, schedule=schedule, fast=False)
    assert slow.cycles == fast.cycles and slow.per_token_ms == fast.per_token_ms
    assert slow.commands == fast.commands and slow.breakdown == fast.breakdown
