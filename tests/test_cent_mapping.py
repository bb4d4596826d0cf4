"""CENT's mapping choices as options (Chen et al., ASPLOS'25; issue 23): tensor parallelism with
every product split by rows and the attention on a master device, GQA unrolled per query head,
pipeline stages smaller than a device, and the host's sampling time. Tiny models, few tokens."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("transformers")

from compiler.passes.images import build_graph_image  # noqa: E402
from compiler.pipeline import compile_model  # noqa: E402
from pimsim.config import load_config  # noqa: E402
from pimsim.functional import AsicMath, FlowExecutor, SystemFlowExecutor  # noqa: E402
from pimsim.generate import run_generation  # noqa: E402
from pimsim.pipeline import run_system  # noqa: E402
from pimsim.system import resolve  # noqa: E402
from tests.hf_tiny import tiny_model  # noqa: E402
from workloads.models.hf_decode import decode_step_module  # noqa: E402


@pytest.fixture(scope="module")
def gqa():
    return tiny_model("llama-gqa")  # 8 query heads, 2 KV heads


def _cfg(devices=None, tp=None, pp=None, attention=None, name="pim-gpt"):
    cfg = load_config(name)
    return dataclasses.replace(cfg, system=resolve(devices, tp, pp, cfg.system, attention))


def _compiled(model, cfg):
    return compile_model(decode_step_module(model), cfg, name="m")


def test_master_splits_every_product_by_rows_and_keeps_attention_on_device_0(gqa):
    cfg = _cfg(4, attention="master")
    c = _compiled(gqa, cfg)
    prog = c.program
    kl, _ = prog.kv_layouts[0]
    assert (kl.n_head, kl.kv_heads) == (8, 2)  # every head on the master
    for m, (kind, rows) in prog.tp_rows.items():  # every product, q/k/v/o and the head included
        assert kind == "col", m
        n = sum(len(r) for r in rows)
        assert [len(r) for r in rows] == [len(x) for x in
                                          __import__("numpy").array_split(range(n), 4)] or \
            max(len(r) for r in rows) == -(-n // 4), m
    n_layer, n_mat = prog.dims["n_layer"], len(prog.tp_rows)
    ops = [s.op for s in prog.steps if s.kind == "comm"]
    # one broadcast of the input and one gather of the rows per product; no all-reduce
    assert ops.count("broadcast") == ops.count("gather") == n_mat
    assert "all_reduce" not in ops and n_mat == 4 * n_layer + 1
    for s in prog.steps:  # each product waits for its input's broadcast
        if s.kind == "pim" and s.matrix:
            assert prog.steps[s.deps[0]].op == "broadcast", s.name


def test_master_tokens_equal_one_device(gqa):
    cfg = _cfg(4, attention="master")
    c = _compiled(gqa, cfg)
    one = _compiled(gqa, _cfg())
    math = AsicMath.from_config(cfg, exact=True)
    fx1 = FlowExecutor(one.program, build_graph_image(one.mapping), cfg, math=math)
    fx = SystemFlowExecutor(c.programs, [[build_graph_image(mp, rank=r) for r in range(4)]
                                         for mp in c.stage_mappings], cfg, math=math)
    a = run_generation(one.program, _cfg(), prompt=[5, 9], n_tokens=8, functional=fx1)
    b = run_system(c.programs, cfg, prompt=[5, 9], n_tokens=8, functional=fx)
    assert b.tokens == a.tokens
    assert b.per_op["broadcast"] > 0 and b.per_op["gather"] > 0
