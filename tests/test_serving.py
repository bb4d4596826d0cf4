"""The serving layer (workloads.serving, session.serve, pimsim serve): continuous batching over
a request stream with the tiny model on pim-gpt."""

from __future__ import annotations

import json
import math

import pytest

from pimsim.errors import UserError
from workloads import session
from workloads.serving import GpuModelCost, PimBatchedCost, PimSerialCost, Request, load_jsonl, synthetic
from workloads.serving.costs import PIM_BATCHED_LABEL, PIM_SERIAL_LABEL, PREFILL_LABELS

BATCHED_DEFAULT = f"{PIM_BATCHED_LABEL}, {PREFILL_LABELS['batched']}"  # the default PIM cost


@pytest.fixture(scope="module")
def tiny():
    cfg = session.hw_config("pim-gpt")
    return session.compile_model("tiny", cfg), cfg


def serve(tiny, **kw):
    c, cfg = tiny
    return session.serve(c, cfg, **kw)


def check_limits(res):
    """No step exceeds the KV capacity, max_num_seqs or the token budget."""
    cfg = res.config
    assert res.steps
    for s in res.steps:
        assert s.kv_used_tokens <= cfg["kv_capacity_tokens"]
        assert s.num_seqs <= cfg["max_num_seqs"]
        assert s.num_running <= cfg["max_num_seqs"]
        assert s.num_batched_tokens <= cfg["max_num_batched_tokens"]
        assert s.num_batched_tokens == len(s.decode_ctx_lens) + sum(n for _, n in s.prefill_chunks)
        assert s.num_seqs == len(s.decode_ctx_lens) + len(s.prefill_chunks)
    for a, b in zip(res.steps, res.steps[1:]):  # steps follow each other in time
        assert b.start_s >= a.start_s + a.time_s


def test_every_request_completes_with_its_output_length(tiny):
    res = serve(tiny, num_prompts=6, input_len=6, output_len=5, request_rate=2e5, seed=1,
                max_num_seqs=3, max_num_batched_tokens=8)
    m = res.metrics
    assert m["completed"] == 6 and m["refused"] == 0
    for r in res.requests:
        assert r.output_tokens == r.output_len == 5
        assert len(r.itl_ms) == 4 and r.finish_s >= r.first_token_s >= r.arrival_s
        assert r.tpot_ms == pytest.approx((r.e2el_ms - r.ttft_ms) / 4)
    assert m["total_output_tokens"] == 30
    assert m["output_throughput"] * m["duration"] == pytest.approx(30, rel=1e-12)
    assert m["total_token_throughput"] * m["duration"] == pytest.approx(30 + 36, rel=1e-12)
    assert m["duration"] == max(r.finish_s for r in res.requests)
    assert sum(s.output_tokens for s in res.steps) == 30
    assert res.config["cost_label"] == BATCHED_DEFAULT
    assert BATCHED_DEFAULT in res.summary()
    check_limits(res)
    assert m["max_num_seqs_seen"] == 3  # the limit binds
    for k in ("request_throughput", "mean_ttft_ms", "median_tpot_ms", "p99_itl_ms",
              "mean_e2el_ms", "energy_per_output_token_mj", "avg_power_w", "utilisation"):
        assert m[k] is not None and m[k] > 0, k
    df = res.to_pandas()
    assert len(df) == 6 and list(df["output_tokens"]) == [5] * 6


@pytest.mark.parametrize("prefill", ["batched", "token-by-token"])
def test_ttft_is_at_least_the_prefill_time(tiny, prefill):
    c, cfg = tiny
    res = serve(tiny, num_prompts=5, input_len=7, output_len=3, max_num_batched_tokens=4,
                prefill=prefill)
    cost = PimBatchedCost(c, cfg, prefill=prefill)
    # the prompt's chunks (at most 4 tokens a step), each alone in its step
    prefill_s = cost.step([], [(0, 4)]).time_s + cost.step([], [(4, 3)]).time_s
    for r in res.requests:
        assert r.ttft_ms / 1e3 >= prefill_s * (1 - 1e-12)
    check_limits(res)
    assert any(len(s.prefill_chunks) > 1 for s in res.steps)  # chunks of several prompts
    assert all(n <= 4 for s in res.steps for _, n in s.prefill_chunks)  # chunked prefill


def test_same_seed_same_json(tiny):
    kw = dict(num_prompts=6, input_len=5, output_len=4, request_rate=3e4, seed=7,
              max_num_seqs=2)
    a, b = serve(tiny, **kw), serve(tiny, **kw)
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    c = serve(tiny, **{**kw, "seed": 8})
    assert [r.arrival_s for r in c.requests] != [r.arrival_s for r in a.requests]


def test_preemption_when_kv_is_small(tiny):
    res = serve(tiny, num_prompts=4, input_len=8, output_len=10, kv_capacity_tokens=30)
    m = res.metrics
    assert m["num_preemptions"] > 0
    assert m["num_preemptions"] == sum(r.preemptions for r in res.requests)
    assert m["num_preemptions"] == sum(s.num_preempted for s in res.steps)
    assert m["completed"] == 4
    assert all(r.output_tokens == 10 for r in res.requests)
    check_limits(res)
    assert m["max_kv_used_tokens"] <= 30


def test_a_request_that_can_never_fit_is_refused(tiny):
    reqs = [Request(0, 0.0, 8, 4), Request(1, 0.0, 20, 20), Request(2, 0.0, 60, 10),
            Request(3, 1e-6, 4, 4)]
    res = serve(tiny, requests=reqs, kv_capacity_tokens=30)
    m = res.metrics
    assert m["refused"] == 2 and m["completed"] == 2
    why = {r["id"]: r["reason"] for r in res.refused}
    assert "KV capacity of 30" in why[1]
    assert "context of 64" in why[2]
    assert res.to_dict()["refused_requests"] == res.refused
    assert "refused request 1" in res.summary()


def test_pim_serial_cost_is_the_sum_of_batch_1_simulations(tiny):
    c, cfg = tiny
    cost = PimSerialCost(c, cfg)
    decode, chunks = [3, 10, 10, 40], [(0, 3), (20, 2)]
    st = cost.step(decode, chunks)
    positions = decode + [0, 1, 2, 20, 21]
    sims = [session.simulate(c, cfg, tokens=1, prompt=p + 1, skip_prompt=True).report
            for p in positions]
    assert st.cycles == sum(r.cycles for r in sims)
    assert st.time_s == cfg.timing.ns(st.cycles) / 1e9
    assert st.energy_j == math.fsum(r.energy["per_token_j"][0] for r in sims)
    assert st.per_device_busy_s == (st.time_s,)
    fresh = PimSerialCost(c, cfg).step(list(reversed(decode)), list(reversed(chunks)))
    assert (fresh.cycles, fresh.energy_j) == (st.cycles, st.energy_j)  # order, memo: no effect


def test_pim_batched_cost_at_batch_1_is_the_serial_cost(tiny):
    c, cfg = tiny
    batched = PimBatchedCost(c, cfg, prefill="token-by-token")
    serial = PimSerialCost(c, cfg)
    for decode, chunks in (([3], []), ([40], [(0, 3)]), ([], [(20, 2)]), ([0], [])):
        a, b = batched.step(decode, chunks), serial.step(decode, chunks)
        assert (a.cycles, a.time_s, a.energy_j) == (b.cycles, b.time_s, b.energy_j)
    one = PimBatchedCost(c, cfg)  # a prefill chunk of one token is one decode step either way
    assert one.step([], [(7, 1)]).cycles == serial.step([], [(7, 1)]).cycles


def test_pim_batched_step_is_the_batched_simulation_and_never_above_serial(tiny):
    c, cfg = tiny
    cost, serial = PimBatchedCost(c, cfg), PimSerialCost(c, cfg)
    for p, b in ((5, 3), (30, 4)):
        sim = session.simulate(c, cfg, tokens=1, prompt=p + 1, skip_prompt=True, batch=b).report
        cyc, s, j = cost.batch_step([p] * b)
        assert cyc == sim.cycles and s == sim.per_token_ms[0] / 1e3
        assert j == pytest.approx(sim.energy["per_token_j"][0] * b, rel=1e-12)
    decode, chunks = [3, 10, 10, 40], [(0, 3), (20, 2)]
    st, ser = cost.step(decode, chunks), serial.step(decode, chunks)
    assert st.cycles <= ser.cycles and st.time_s <= ser.time_s
    assert st.time_s == cfg.timing.ns(st.cycles) / 1e9
    assert st.per_device_busy_s == (st.time_s,)
    dec = cost.batch_step(decode)
    pre = cost.prefill_step(chunks)  # the two prompt chunks as one batched step
    assert st.cycles == dec[0] + pre[0] and st.energy_j == math.fsum([dec[2], pre[2]])
    tbt = PimBatchedCost(c, cfg, prefill="token-by-token")
    pre = [serial.position_step(p) for p in (0, 1, 2, 20, 21)]
    st = tbt.step(decode, chunks)
    assert st.cycles == dec[0] + sum(x[0] for x in pre)  # decode batched, prompts one by one
    assert st.energy_j == math.fsum([dec[2]] + [x[2] for x in pre])


def test_pim_batched_memo_hit_is_a_fresh_simulation(tiny):
    c, cfg = tiny
    cost = PimBatchedCost(c, cfg)
    key = (7, 2, 19)
    first = cost.batch_step(key)
    n = cost.simulated_batch_steps
    assert cost.batch_step(list(key)) == first and cost.simulated_batch_steps == n  # a hit
    assert PimBatchedCost(c, cfg).batch_step(key) == first  # equals simulating afresh
    other = cost.batch_step((19, 2, 7))  # another order is another key: simulated
    assert cost.simulated_batch_steps == n + 1 and other[0] > 0


def test_pim_batched_step_past_the_kv_regions_is_consecutive_batched_steps(tiny):
    c, cfg = tiny
    cost = PimBatchedCost(c, cfg)
    assert cost.max_batch >= 3
    cost.max_batch = 2  # as if two sequences' KV regions filled the rows
    st = cost.step([4, 9, 13], [])
    a, b = cost.batch_step([4, 9]), cost.batch_step([13])
    assert st.cycles == a[0] + b[0] and st.energy_j == math.fsum([a[2], b[2]])
    with pytest.raises(ValueError, match="1 to 2"):
        cost.batch_step([1, 2, 3])
    cost.max_batch = 3  # 7 sequences: three batched steps of 3, 2, 2 in order
    assert cost.groups(range(7)) == [(0, 1, 2), (3, 4), (5, 6)]
    assert cost.groups([5, 6, 7]) == [(5, 6, 7)] and cost.groups([]) == []


def test_serving_with_either_pim_cost_keeps_the_invariants(tiny):
    kw = dict(num_prompts=6, input_len=5, output_len=6, request_rate=2e5, seed=3,
              max_num_seqs=4, max_num_batched_tokens=8)
    bat = serve(tiny, **kw)
    ser = serve(tiny, pim_cost="serial", **kw)
    assert ser.config["cost_label"] == PIM_SERIAL_LABEL
    for res in (bat, ser):
        check_limits(res)
        assert res.metrics["completed"] == 6
        assert all(r.output_tokens == 6 for r in res.requests)
    # the same schedule (KV is per token either way); each batched step no longer than serial
    assert [s.decode_ctx_lens for s in bat.steps] == [s.decode_ctx_lens for s in ser.steps]
    assert all(a.time_s <= b.time_s for a, b in zip(bat.steps, ser.steps))
    assert any(a.time_s < b.time_s for a, b in zip(bat.steps, ser.steps)
               if len(a.decode_ctx_lens) > 1)
    with pytest.raises(UserError, match="PIM cost 'fast'"):
        serve(tiny, pim_cost="fast", num_prompts=1)


def test_gpu_cost_batch_1_is_the_gpu_model_and_batching_shares_weights():
    from workloads.gpu.calibration import serving_preset
    from workloads.gpu.model import predict

    cost = GpuModelCost("H100", "tiny")
    h100, how = serving_preset("H100")
    for p in (0, 17, 63):
        one = cost.step([p], [])
        ref = predict(h100, "tiny", p, power="util")
        assert one.time_s * 1e3 == pytest.approx(ref["ms"], rel=1e-12)
        assert one.energy_j == pytest.approx(ref["joules"], rel=1e-12)
    four = cost.step([5, 9, 20, 30], [])
    assert four.time_s < sum(cost.step([p], []).time_s for p in (5, 9, 20, 30))
    assert cost.kv_capacity_tokens > 1_000_000
    res = session.serve("tiny", cost="gpu:H100", num_prompts=4, input_len=6, output_len=4)
    assert res.metrics["completed"] == 4 and res.config["cost"] == "gpu:H100"
    assert how in res.config["cost_label"] and "calibrat" in how


def test_gpu_cost_is_the_gpu_models_batched_step():
    from workloads.gpu.calibration import serving_preset
    from workloads.gpu.model import predict_batch, predict_prefill, predict_step

    h100 = serving_preset("H100")[0]
    cost = GpuModelCost("H100", "llama2-7b", power="board")
    decode, chunks = [5, 90, 700], [(0, 32), (100, 7)]
    st = cost.step(decode, chunks)
    ref = predict_step(h100, "llama2-7b", decode, chunks, power="board")
    assert (st.time_s * 1e3, st.energy_j) == (ref["ms"], ref["joules"])
    b = predict_batch(h100, "llama2-7b", 4, 300)
    assert GpuModelCost("H100", "llama2-7b").step([300] * 4, []).time_s * 1e3 == b["ms"]
    p = predict_prefill(h100, "llama2-7b", 256, batch=2)
    assert GpuModelCost("H100", "llama2-7b").step([], [(0, 256)] * 2).energy_j == p["joules"]


def test_synthetic_streams():
    a = synthetic(5, request_rate=math.inf, input_len=3, output_len=2)
    assert [r.arrival_s for r in a] == [0.0] * 5
    assert {(r.prompt_len, r.output_len) for r in a} == {(3, 2)}
    b = synthetic(50, request_rate=10.0, length_dist="sharegpt", seed=3, max_total_len=2048)
    assert b == synthetic(50, request_rate=10.0, length_dist="sharegpt", seed=3,
                          max_total_len=2048)
    t = [r.arrival_s for r in b]
    assert t == sorted(t) and t[0] == 0.0 and t[-1] > 0
    assert all(r.kv_tokens_needed <= 2048 for r in b)
    assert len({r.prompt_len for r in b}) > 10  # a spread, not one length
    with pytest.raises(UserError, match="request_rate"):
        synthetic(3, request_rate=0)
    with pytest.raises(UserError, match="length distribution"):
        synthetic(3, length_dist="zipf")


@pytest.mark.parametrize("line, field", [
    ('{"arrival_s": 0, "prompt_len": 4}', "output_len"),
    ('{"arrival_s": -1, "prompt_len": 4, "output_len": 2}', "arrival_s"),
    ('{"arrival_s": 0, "prompt_len": 0, "output_len": 2}', "prompt_len"),
    ('{"arrival_s": 0, "prompt_len": 4, "output_len": 2.5}', "output_len"),
    ('{"arrival_s": 0, "prompt_len": 2, "output_len": 2, "prompt_token_ids": [1]}',
     "prompt_token_ids"),
    ('{"arrival_s": 0, "prompt_len": 2, "output_len": 2, "priority": 1}', "priority"),
    ('[1, 2]', "JSON object"),
    ('{"arrival_s": 0, ', "not valid JSON"),
])
def test_bad_jsonl_lines(tmp_path, line, field):
    f = tmp_path / "r.jsonl"
    f.write_text('{"arrival_s": 0.5, "prompt_len": 4, "output_len": 2}\n' + line + "\n")
    with pytest.raises(UserError, match="line 2") as e:
        load_jsonl(f)
    assert field in str(e.value)


def test_jsonl_is_read_in_arrival_order(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"arrival_s": 0.5, "prompt_len": 4, "output_len": 2}\n\n'
                 '{"arrival_s": 0.1, "prompt_len": 2, "output_len": 3, '
                 '"prompt_token_ids": [5, 6]}\n')
    r = load_jsonl(f)
    assert [(x.id, x.arrival_s, x.prompt_len) for x in r] == [(0, 0.1, 2), (1, 0.5, 4)]
    assert r[0].prompt_token_ids == (5, 6)


def run_cli(argv, capsys):
    from workloads.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv, msg", [
    (["--max-num-seqs", "0"], "--max-num-seqs"),
    (["--max-num-batched-tokens", "-3"], "--max-num-batched-tokens"),
    (["--request-rate", "0"], "--request-rate"),
    (["--request-rate", "nan"], "--request-rate"),
    (["--length-dist", "zipf"], "--length-dist"),
    (["--requests", "BAD", "--num-prompts", "3"], "both given"),
    (["--requests", "missing.jsonl"], "missing.jsonl"),
    (["--gpu", "NOPE"], "NOPE"),
    (["--kv-capacity", "0"], "--kv-capacity"),
    (["--pim-cost", "fast"], "--pim-cost"),
    (["--context", "0"], "--context"),
])
def test_cli_bad_options_exit_2(tmp_path, capsys, argv, msg):
    if "BAD" in argv:
        argv = [str(tmp_path / "x.jsonl") if a == "BAD" else a for a in argv]
    if "missing.jsonl" in argv:
        argv = [str(tmp_path / a) if a == "missing.jsonl" else a for a in argv]
    rc, _, err = run_cli(["serve", "tiny", *argv], capsys)
    assert rc == 2
    assert err.startswith("pimsim: error:") and err.count("\n") == 1 and msg in err


def test_cli_bad_jsonl_line_exit_2(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    f.write_text('{"arrival_s": 0, "prompt_len": 4, "output_len": 2}\n'
                 '{"arrival_s": 0, "prompt_len": "four", "output_len": 2}\n')
    rc, _, err = run_cli(["serve", "tiny", "--requests", str(f)], capsys)
    assert rc == 2 and "line 2" in err and "prompt_len" in err and err.count("\n") == 1


def test_cli_serve_json_csv_plot(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    f.write_text('{"arrival_s": 0, "prompt_len": 4, "output_len": 3}\n'
                 '{"arrival_s": 0.00001, "prompt_len": 2, "output_len": 2}\n')
    csv_f, plots = tmp_path / "out" / "r.csv", tmp_path / "plots"
    csv_f.parent.mkdir()  # an output's folder must exist (the command line creates none)
    rc, out, _ = run_cli(["serve", "tiny", "--requests", str(f), "--json", "--csv", str(csv_f),
                          "--plot", str(plots), "--max-num-seqs", "2"], capsys)
    assert rc == 0
    doc = json.loads(out)
    assert doc["metrics"]["completed"] == 2 and len(doc["requests"]) == 2
    assert doc["config"]["cost_label"] == BATCHED_DEFAULT
    assert len(csv_f.read_text().splitlines()) == 3
    assert (plots / "latency_cdf.png").stat().st_size > 0
    assert (plots / "throughput.png").stat().st_size > 0
    rc, out, _ = run_cli(["serve", "tiny", "--requests", str(f), "--json", "--pim-cost", "serial",
                          "--context", "32"], capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["config"]["cost_label"] == PIM_SERIAL_LABEL and doc["config"]["n_ctx"] == 32


def test_batched_prefill_is_one_step_per_scheduler_step(tiny):
    """A step's prompt chunks run as ONE batched prefill step: chunk (s, n) is n vectors at
    positions s..s+n-1 in a region of their own (pimsim.batch.step_cost); a whole prompt equals
    run's batched prefill step to the cycle; it beats the prompt token by token."""
    from pimsim.batch import step_cost
    from pimsim.generate import prompt_ids
    from pimsim.pipeline import run_system

    c, cfg = tiny
    cost = PimBatchedCost(c, cfg)
    assert cost.prefill == "batched"
    cyc, _, e = cost.prefill_step([(0, 6)])
    rep = run_system(c.programs, cfg, prompt=prompt_ids(6, c.spec.vocab), n_tokens=1,
                     prefill="batched")
    assert cyc == rep.cycles and e == pytest.approx(rep.energy["per_token_j"][0], rel=1e-12)
    # a chunk that starts later: its positions and the earlier KV of its region
    assert cost.prefill_step([(3, 6)])[0] == step_cost(c.programs[0], cfg, range(3, 9), [0] * 6)[0]
    two = cost.prefill_step([(0, 6), (2, 3)])[0]
    assert two == step_cost(c.programs[0], cfg, [*range(6), 2, 3, 4], [0] * 6 + [1] * 3)[0]
    assert two < cyc + cost.prefill_step([(2, 3)])[0]  # the two chunks share the weight reads
    tbt = PimBatchedCost(c, cfg, prefill="token-by-token")
    assert tbt.step([], [(0, 6)]).cycles == sum(tbt.position_step(p)[0] for p in range(6)) > cyc
    assert cost.step([4], [(0, 6)]).cycles == cost.batch_step((4,))[0] + cyc
    # past prefill_step_vectors tokens a step's chunks run as consecutive batched steps
    small = PimBatchedCost(c, cfg, prefill_step_vectors=4)
    assert small.prefill_groups([(0, 6), (2, 3)]) == [[(0, 4)], [(4, 2)], [(2, 3)]]
    assert small.prefill_groups([(0, 2), (5, 1), (0, 1)]) == [[(0, 2), (5, 1), (0, 1)]]
    assert small.step([], [(0, 6)]).cycles == \
        small.prefill_step([(0, 4)])[0] + small.prefill_step([(4, 2)])[0]


def test_batched_prefill_serving_gives_the_first_token_after_its_prefill_step(tiny):
    bat = serve(tiny, num_prompts=4, input_len=6, output_len=3, max_num_seqs=4)
    tbt = serve(tiny, num_prompts=4, input_len=6, output_len=3, max_num_seqs=4,
                prefill="token-by-token")
    assert bat.config["cost_label"] == BATCHED_DEFAULT
    assert tbt.config["cost_label"] == f"{PIM_BATCHED_LABEL}, {PREFILL_LABELS['token-by-token']}"
    first = bat.steps[0]
    assert first.prefill_chunks and first.time_s > 0
    for r in bat.requests:
        assert r.ttft_ms >= first.time_s * 1e3 * (1 - 1e-12)
    assert bat.metrics["mean_ttft_ms"] < tbt.metrics["mean_ttft_ms"]
    with pytest.raises(UserError, match="serial"):
        serve(tiny, num_prompts=1, pim_cost="serial", prefill="batched")
    with pytest.raises(UserError, match="prefill 'chunky'"):
        serve(tiny, num_prompts=1, prefill="chunky")


def test_pim_batched_steps_reusing_programs_and_a_warm_memo_are_fresh_simulations():
    """The batched cost keeps the batched programs, their streams and the kernels' memo from
    step to step (pimsim.batch.BatchedSteps); every step starts from a fresh device state, so
    its cycles, commands and energy are those of a simulation with nothing kept, on aim-gddr6
    under tensor parallelism with refresh on; so are a memo too small to keep every unit's
    outcome (cleared when full, then refilled) and a repeated step replayed entirely from the memo."""
    from pimsim.batch import BatchedSteps
    from pimsim.generate import prompt_ids
    from pimsim.pipeline import run_system

    cfg = session.hw_config("aim-gddr6", devices=2).with_refresh(True)
    c = session.compile_model("tiny", cfg)
    prog = session.system_programs(c, cfg)[0]
    warm, small = BatchedSteps(prog, cfg), BatchedSteps(prog, cfg, memo_words=2048, memo_entries=8)

    def run(key, reuse=None):
        return run_system([prog], cfg, prompt=prompt_ids(key[0] + 1, 256), n_tokens=1,
                          skip_prompt=True, batch_prompts=[prompt_ids(p + 1, 256) for p in key],
                          batch_reuse=reuse)

    keys = [(3,) * 4 + (20,) * 4, (4,) * 4 + (21,) * 4, (60, 2, 2), (5,) * 4 + (22,) * 4,
            (61, 3, 3), (3,) * 4 + (20,) * 4]
    for i, key in enumerate(keys):
        fresh = run(key)
        before = warm.memo_usage()
        for reuse in (warm, small):
            got = run(key, reuse)
            assert (got.cycles, got.per_token_ms, got.commands, got.row_hit_rate) == \
                (fresh.cycles, fresh.per_token_ms, fresh.commands, fresh.row_hit_rate)
            assert got.energy == fresh.energy
        if i == len(keys) - 1:  # the first step again: every unit replayed
            assert warm.memo_usage()["misses"] == before["misses"]
            assert warm.memo_usage()["hits"] > before["hits"]
    w, m = warm.memo_usage(), small.memo_usage()
    assert w["dropped"] == w["cleared"] == 0  # the small memo was full: cleared or dropped
    assert m["cleared"] + m["dropped"] > 0


def test_steps_simulated_by_worker_processes_give_the_same_json(tiny):
    # two workers forked from the cost: the steps of a scheduler step at once, the next step's
    # likely decode groups in between; a result is used only for the key it was simulated for
    from workloads.serving.parallel import fork_available

    if not fork_available():
        pytest.skip("no fork on this platform: the cost simulates in its own process")
    c, cfg = tiny
    kw = dict(num_prompts=7, input_len=5, output_len=6, request_rate=5e4, seed=3,
              max_num_seqs=5, max_num_batched_tokens=12)
    one = PimBatchedCost(c, cfg)
    two = PimBatchedCost(c, cfg, jobs=2)
    for cost in (one, two):
        cost.max_batch = 2  # several batched steps per scheduler step
    a = session.serve(c, cfg, cost=one, **kw)
    b = session.serve(c, cfg, cost=two, **kw)
    assert two._pool is not None and two._pool.usage  # the workers simulated steps
    spec = two._pool
    two.close()
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    assert two.simulated_batch_steps == one.simulated_batch_steps
    assert spec.wasted >= 0 and two._pool is None
    assert two.batch_step([1, 2]) == one.batch_step([1, 2])  # closed: simulated here again
    with pytest.raises(UserError, match="jobs"):
        PimBatchedCost(c, cfg, jobs=-1)


def test_the_schedule_planned_ahead_is_the_schedule_run():
    # once every request has arrived the rest of the schedule does not depend on the steps'
    # times: the plan handed to the cost is exactly the steps then asked for, preemptions too
    from workloads.serving.costs import StepTime
    from workloads.serving.scheduler import SchedulerConfig, simulate_serving

    class Timed:
        name, label, n_ctx, devices = "t", "t", 64, 1

        def __init__(self, cap):
            self.kv_capacity_tokens, self.asked, self.plans = cap, [], []

        def plan_ahead(self, steps):
            self.plans.append((len(self.asked), list(steps)))

        def step(self, decode, chunks):
            self.asked.append((tuple(decode), tuple(chunks)))
            return StepTime(1e-3 * (1 + len(decode)) + 1e-4 * sum(n for _, n in chunks), 0.0)

    for rate, cap in ((math.inf, 1000), (3e3, 1000), (3e3, 40)):
        cost = Timed(cap)
        reqs = synthetic(9, request_rate=rate, input_len=7, output_len=6, seed=2)
        simulate_serving(reqs, cost, SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=10))
        assert len(cost.plans) == 1
        at, plan = cost.plans[0]
        assert plan == cost.asked[at:] and plan
