"""The op-by-op graph lowering reproduces PIM-GPT's emitter on GPT-style presets: the same steps
(kind, op, dependencies, sizes), the same instruction streams at every position tried, and the
same logits bit for bit; only step names differ (named after the graph's ops)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from compiler.passes.images import build_graph_image, build_image
from compiler.pipeline import compile_model
from pimsim.config import load_config
from pimsim.functional import AsicMath, FlowExecutor, FunctionalExecutor
from workloads.models.resolve import resolve_model


@pytest.fixture(scope="module")
def cfg():
    return load_config("pim-gpt")


def _config(hw: str):
    """A shipped config, or pim-gpt with ``section__field=value`` changes after a colon."""
    name, _, changes = hw.partition(":")
    c = load_config(name)
    for kv in filter(None, changes.split(",")):
        key, v = kv.split("=")
        sec, fld = key.split("__")
        c = c.replace(**{sec: dataclasses.replace(getattr(c, sec), **{
            fld: int(v) if v.isdigit() else v})})
    return c


# other data paths too: a global buffer smaller than a row (partial sums per fill: the ASIC
# reduction adds more of them), several accumulators, the reuse order (whole sums)
@pytest.mark.parametrize("preset,hw", [
    ("tiny", "pim-gpt"), ("tiny-wide", "pim-gpt"), ("gpt2-small", "pim-gpt"),
    ("gpt3-small", "pim-gpt"), ("tiny", "hbm-pim"), ("tiny-wide", "aim-gddr6"),
    ("tiny", "pim-gpt:pim__global_buffer_bytes=64,pim__accumulators_per_bank=2"),
    ("tiny-wide", "pim-gpt:pim__global_buffer_bytes=192,pim__accumulators_per_bank=4,"
                  "pim__mapping=reuse"),
])
def test_graph_lowering_gives_pim_gpt_program(preset, hw):
    cfg = _config(hw)
    src, name = resolve_model(preset, weights=False)
    a = compile_model(src, cfg, name=name, lowering="pim-gpt").program
    b = compile_model(src, cfg, name=name, lowering="graph").program
    assert len(a.steps) == len(b.steps)
    for x, y in zip(a.steps, b.steps):
        assert (x.kind, x.op, x.deps, x.n_elems, x.per_pos_elems, x.layer) == \
            (y.kind, y.op, y.deps, y.n_elems, y.per_pos_elems, y.layer), (x.name, y.name)
    n_ctx = a.dims["n_ctx"]
    for pos in (0, 17, n_ctx - 1):
        for x, y in zip(a.steps, b.steps):
            if x.kind == "pim":
                for ia, ib in zip(a.pim_items(x, pos), b.pim_items(y, pos)):
                    np.testing.assert_array_equal(ia, ib, err_msg=f"{x.name} at {pos}")


def test_graph_lowering_gives_pim_gpt_logits(cfg):
    src, name = resolve_model("tiny", weights=True)
    a = compile_model(src, cfg, name=name, lowering="pim-gpt")
    b = compile_model(src, cfg, name=name, lowering="graph")
    for exact in (True, False):
        m = AsicMath.from_config(cfg, exact=exact)
        fa = FunctionalExecutor(a.program, build_image(a.mapping), cfg, math=m, eps=a.spec.eps)
        fb = FlowExecutor(b.program, build_graph_image(b.mapping), cfg, math=m)
        tok = 1
        for pos in range(5):
            la, lb = fa.step(tok, pos), fb.step(tok, pos)
            np.testing.assert_array_equal(la, lb)
            tok = int(np.argmax(la))
