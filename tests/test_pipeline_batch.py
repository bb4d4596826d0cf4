"""Batched decode on pipeline stages: each of the pp jobs in flight is a micro-batch of B
sequences (tiny random models on 2 and 4 devices). A micro-batch's step is the stages' batched
steps, each simulated on its own, plus the sends of B vectors; batch 1 is the unbatched
pipeline to the cycle and joule; a stage's KV block holds its micro-batches' caches; a
mixture-of-experts pipeline routes each micro-batch's experts; the command line runs it."""

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
from pimsim.pipeline import run_system  # noqa: E402
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
    assert bat.cycles == one.cycles
    assert bat.per_token_ms == one.per_token_ms
    assert bat.throughput_tokens_per_s == one.throughput_tokens_per_s
    assert bat.commands == one.commands
    assert bat.energy["per_token_j"] == one.energy["per_token_j"]
    assert bat.energy["by_component"] == one.energy["by_component"]
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
