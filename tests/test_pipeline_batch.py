"""Batched decode on pipeline stages: each of the pp jobs in flight is a micro-batch of B
sequences (tiny random models on 2 and 4 devices). A micro-batch's step is the stages' batched
steps, each simulated on its own, plus the sends of B vectors; batch 1 is the unbatched
pipeline to the cycle and joule; a stage's KV block holds its micro-batches' caches; a
mixture-of-experts pipeline routes each micro-batch's experts; the command line runs it.
N sequences in flight (``in_flight``) split into pp micro-batches differing by at most one:
N a multiple of pp is the run of micro-batches of N / pp to the cycle; otherwise a round takes
every stage through every micro-batch and yields N tokens."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from hf_tiny import tiny_model, tiny_moe_model  # noqa: E402

from pimsim.batch import BatchCapacityError, kv_block, max_batch, rows_in_use, step_cost  # noqa: E402
from pimsim.errors import UserError  # noqa: E402
from pimsim.moe import Routing  # noqa: E402
from pimsim.pipeline import micro_batches, run_system  # noqa: E402
from pimsim.system import collective  # noqa: E402
from workloads.models.hf_decode import decode_step_module  # noqa: E402

PROMPT = [3, 4, 5, 6]
B = 3


@pytest.fixture(scope="module")
def dense():
    from compiler.pipeline import prepare

    return prepare(decode_step_module(tiny_model("llama-gqa")), name="gqa")


def _system(prep, refresh=None, **kw):
    from compiler.pipeline import lower
    from workloads.compiling import hw_config

    cfg = hw_config("pim-gpt", refresh=refresh, **kw)
    return lower(prep, cfg).programs, cfg


def _prompts(n):
    return [[p + b for p in PROMPT] for b in range(n)]


def _assert_same_run(a, b) -> None:
    """Two pipeline runs equal in time, throughput, commands and energy."""
    assert a.cycles == b.cycles
    assert a.per_token_ms == b.per_token_ms
    assert a.throughput_tokens_per_s == b.throughput_tokens_per_s
    assert a.commands == b.commands
    assert a.energy["per_token_j"] == b.energy["per_token_j"]
    assert a.energy["by_component"] == b.energy["by_component"]


@pytest.mark.parametrize("tp", [1, 2])
def test_a_micro_batch_step_is_the_stages_batched_steps_plus_the_sends(dense, tp):
    progs, cfg = _system(dense, refresh=False, tp=tp, pp=2)
    assert len(progs) == 2 and progs[0].tp == tp
    rep = run_system(progs, cfg, prompt=PROMPT, n_tokens=1, skip_prompt=True,
                     batch_prompts=_prompts(B))
    pos = len(PROMPT) - 1
    # each stage's batched step from a fresh device, B sequences in their own KV regions
    stage_cyc = [step_cost(p, cfg, [pos] * B, range(B))[0] for p in progs]
    ic = cfg.system.interconnect
    send_cyc = collective(ic, "send", 2, B * progs[0].send_elems * progs[0].geo.elem_bytes
                          ).cycles(cfg.tCK_ps)
    want_ms = cfg.timing.ns(sum(stage_cyc) + send_cyc) / 1e6
    assert rep.per_token_ms == [pytest.approx(want_ms, rel=1e-12)]
    assert rep.extra["batch"]["batch"] == B
    assert rep.extra["batch"]["ms_per_step"] == pytest.approx(want_ms, rel=1e-12)
    assert rep.tokens_per_s == pytest.approx(B * 1000 / want_ms)
    assert rep.system["sequences"] == 2 * B and rep.system["pp"] == 2
    assert rep.system["stage_send_cyc"] == [send_cyc]
    # 2 micro-batches of B in flight: more tokens/s than one micro-batch at a time
    assert rep.throughput_tokens_per_s > rep.tokens_per_s
    assert rep.generated_tokens == B


@pytest.mark.parametrize("tp", [1, 2])
def test_batch_1_on_a_pipeline_is_the_unbatched_pipeline(dense, tp):
    progs, cfg = _system(dense, tp=tp, pp=2)
    assert cfg.refresh.enabled
    one = run_system(progs, cfg, prompt=PROMPT, n_tokens=3)
    bat = run_system(progs, cfg, prompt=PROMPT, n_tokens=3, batch_prompts=[PROMPT])
    _assert_same_run(bat, one)
    assert bat.weight_bytes_per_step == one.weight_bytes_per_step
    for k, v in one.system.items():
        assert bat.system[k] == v, k


def test_a_stage_kv_block_holds_its_micro_batches_caches(dense):
    progs, cfg = _system(dense, pp=2)
    for p in progs:
        _, span = kv_block(p)
        assert span == sum(2 * (kl.rows_reserved + vl.rows_reserved) for kl, vl in p.kv_layouts)
        fits = max_batch(p)
        assert rows_in_use(p) + (fits - 1) * span <= p.geo.rows < rows_in_use(p) + fits * span
    fits = min(max_batch(p) for p in progs)
    with pytest.raises(BatchCapacityError, match=f"largest batch that fits is {fits}"):
        run_system(progs, cfg, prompt=PROMPT, n_tokens=1, skip_prompt=True,
                   batch_prompts=[PROMPT] * (fits + 1))


def test_functional_or_ragged_batches_on_a_pipeline_are_refused(dense):
    progs, cfg = _system(dense, pp=2)
    with pytest.raises(UserError, match="functional batched decode on 2 pipeline stages"):
        run_system(progs, cfg, prompt=PROMPT, n_tokens=1, batch_prompts=_prompts(2),
                   functional=[object(), object()])
    with pytest.raises(UserError, match="prompts of lengths"):
        run_system(progs, cfg, prompt=PROMPT, n_tokens=1, skip_prompt=True,
                   batch_prompts=[PROMPT, PROMPT[:2]])


def test_a_moe_pipeline_routes_each_micro_batch():
    from compiler.pipeline import prepare

    prep = prepare(decode_step_module(tiny_moe_model("mixtral")), name="mixtral")
    progs, cfg = _system(prep, pp=2)
    assert progs[0].moe and len(progs) == 2
    kw = dict(prompt=PROMPT, n_tokens=2, skip_prompt=True)
    one = run_system(progs, cfg, **kw, routing=Routing.seeded(5))
    b1 = run_system(progs, cfg, **kw, routing=Routing.seeded(5), batch_prompts=[PROMPT])
    assert b1.cycles == one.cycles and b1.weight_bytes_per_step == one.weight_bytes_per_step
    r = Routing.seeded(5)
    rep = run_system(progs, cfg, **kw, routing=r, batch_prompts=_prompts(4))
    assert "seeded" in rep.routing
    # one choice per step for the micro-batch's 4 sequences, each of the 2 MoE layers
    assert [(x["step"], x["moe"], len(x["experts"])) for x in r.records] == \
        [(3, 0, 4), (3, 1, 4), (4, 0, 4), (4, 1, 4)]
    # the union of 4 sequences' experts reads at least the weights of one sequence's
    assert rep.weight_bytes_per_step >= one.weight_bytes_per_step
    assert rep.extra["batch"]["ms_per_step"] > one.ms_per_token
    assert rep.system["sequences"] == 8


def test_run_batch_on_a_pipeline_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "workloads.cli", "run", "tiny", "--tokens", "2",
                          "--batch", "2", "--devices", "2", "--pp", "2", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["batch"] == 2 and rep["micro_batches"] == 2
    assert rep["tokens_per_s"] == pytest.approx(2 * 1000 / rep["ms_per_step"])


def test_sequences_in_flight_split_into_micro_batches_as_evenly_as_possible():
    assert micro_batches(64, 59) == [2] * 5 + [1] * 54
    assert micro_batches(118, 59) == [2] * 59
    assert micro_batches(7, 3) == [3, 2, 2]
    assert micro_batches(2, 4) == [1, 1]  # fewer sequences than stages: one job each
    for n in range(1, 40):
        for pp in (1, 2, 5, 8):
            sizes = micro_batches(n, pp)
            assert sum(sizes) == n and len(sizes) == min(n, pp)
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(UserError, match="0 sequences in flight"):
        micro_batches(0, 2)


@pytest.mark.parametrize("tp", [1, 2])
def test_in_flight_a_multiple_of_pp_is_the_micro_batch_run(dense, tp):
    progs, cfg = _system(dense, tp=tp, pp=2)
    kw = dict(prompt=PROMPT, n_tokens=3, skip_prompt=True)
    per_mb = run_system(progs, cfg, **kw, batch_prompts=_prompts(B))
    flight = run_system(progs, cfg, **kw, batch_prompts=_prompts(2 * B), in_flight=True)
    _assert_same_run(flight, per_mb)
    assert flight.system == per_mb.system
    assert {k: v for k, v in flight.extra["batch"].items()} == per_mb.extra["batch"]
    assert flight.extra["batch"]["micro_batch_sizes"] == [B, B]
    assert flight.extra["batch"]["in_flight"] == 2 * B


def test_unequal_micro_batches_share_each_stage_round_by_round(dense):
    progs, cfg = _system(dense, refresh=False, pp=2)
    n, kw = 2 * B + 1, dict(prompt=PROMPT, n_tokens=3, skip_prompt=True)
    rep = run_system(progs, cfg, **kw, batch_prompts=_prompts(n), in_flight=True)
    x = rep.extra["batch"]
    assert x["micro_batch_sizes"] == [B + 1, B] and x["in_flight"] == n
    assert x["batch"] == B + 1 and rep.system["sequences"] == n
    # a round: every micro-batch one token, n tokens of the system
    assert rep.throughput_tokens_per_s == pytest.approx(n * 1000 / x["round_ms"], rel=1e-12)
    # each stage runs both micro-batches every round: a round is at least the largest
    # micro-batch's step at the busiest stage (from a fresh device), and at least both
    # micro-batches' steps there (rows left open by the previous job may save a few cycles)
    pos = len(PROMPT) - 1
    big = [step_cost(p, cfg, [pos] * (B + 1), range(B + 1))[0] for p in progs]
    small = [step_cost(p, cfg, [pos] * B, range(B))[0] for p in progs]
    ns = cfg.timing.ns
    assert x["round_ms"] >= ns(max(big)) / 1e6
    assert x["round_ms"] >= 0.99 * ns(max(b + s for b, s in zip(big, small))) / 1e6
    # micro-batch 0 (the larger) has the latency: its stages' steps plus the send
    send_cyc = collective(cfg.system.interconnect, "send", 2,
                          (B + 1) * progs[0].send_elems * progs[0].geo.elem_bytes
                          ).cycles(cfg.tCK_ps)
    assert x["ms_per_step"] >= ns(sum(big) + send_cyc) / 1e6 * 0.99
    # the round lies between those of micro-batches of B and of B + 1 (not its tokens/s: the
    # larger micro-batch's loop through the stages sets the round, so n sequences in flight
    # yield fewer tokens/s than 2 x B here)
    lo = run_system(progs, cfg, **kw, batch_prompts=_prompts(B)).extra["batch"]["round_ms"]
    hi = run_system(progs, cfg, **kw, batch_prompts=_prompts(B + 1)).extra["batch"]["round_ms"]
    assert lo < x["round_ms"] < hi
    # fewer sequences than stages: one job, the pipeline otherwise idle
    one = run_system(progs, cfg, **kw, batch_prompts=_prompts(1), in_flight=True)
    assert one.extra["batch"]["micro_batch_sizes"] == [1] and one.system["sequences"] == 1
    two = run_system(progs, cfg, **kw, batch_prompts=_prompts(1))  # 2 in flight
    assert one.throughput_tokens_per_s < two.throughput_tokens_per_s
    assert one.throughput_tokens_per_s == pytest.approx(
        1000 / one.extra["batch"]["round_ms"], rel=1e-12)


def test_a_moe_pipeline_routes_unequal_micro_batches():
    from compiler.pipeline import prepare

    prep = prepare(decode_step_module(tiny_moe_model("mixtral")), name="mixtral")
    progs, cfg = _system(prep, pp=2)
    kw = dict(prompt=PROMPT, n_tokens=2, skip_prompt=True)
    r = Routing.seeded(5)
    rep = run_system(progs, cfg, **kw, routing=r, batch_prompts=_prompts(3), in_flight=True)
    assert rep.extra["batch"]["micro_batch_sizes"] == [2, 1]
    # one choice per step for the largest micro-batch; the smaller takes its first sequences
    assert [(x["step"], len(x["experts"])) for x in r.records] == [(3, 2), (3, 2), (4, 2), (4, 2)]
    two = run_system(progs, cfg, **kw, routing=Routing.seeded(5), batch_prompts=_prompts(2))
    assert rep.weight_bytes_per_step == two.weight_bytes_per_step  # micro-batch 0's union
    assert rep.throughput_tokens_per_s < two.throughput_tokens_per_s


def test_run_in_flight_on_a_pipeline_from_the_command_line():
    base = [sys.executable, "-m", "workloads.cli", "run", "tiny", "--tokens", "2",
            "--devices", "2", "--pp", "2"]
    out = subprocess.run(base + ["--batch", "3", "--in-flight", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["micro_batch_sizes"] == [2, 1] and rep["in_flight"] == 3
    assert rep["system"]["sequences"] == 3
    out = subprocess.run(base + ["--in-flight"], capture_output=True, text=True)
    assert out.returncode == 2 and "--in-flight" in out.stderr and "Traceback" not in out.stderr
