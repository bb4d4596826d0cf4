"""The ASIC op table: every op's cost row exists in every shipped config, and with exact math
every op computes what the compiler's reference interpreter says it means."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.ir import Node
from compiler.passes.interpret import _OPS as REFERENCE
from pimsim.asic_ops import OPS
from pimsim.config import ASIC_OPS, available_configs, load_config
from pimsim.decode import asic_cycles
from pimsim.functional import AsicMath

EXACT = AsicMath(exact=True)
APPROX = AsicMath()
UNARY = ("sqrt", "rsqrt", "exp", "tanh", "erf", "cos", "sin", "sigmoid", "silu", "relu", "neg")
ATTRS = {"gelu": {"approximate": "tanh"}, "layernorm": {"axis": -1, "eps": 1e-5},
         "rmsnorm": {"axis": -1, "eps": 1e-6}, "softmax": {"axis": -1},
         "reduce_mean": {"axes": [-1], "keepdim": True},
         "reduce_sum": {"axes": [-1], "keepdim": True},
         "reduce_max": {"axes": [-1], "keepdim": True}}


@pytest.mark.parametrize("name", available_configs())
def test_every_charged_op_has_a_cost_row(name):
    cfg = load_config(name)
    for op, spec in OPS.items():
        if spec.cost is None:
            continue
        assert spec.cost in ASIC_OPS, op
        assert asic_cycles(cfg, spec.cost, 1000) > asic_cycles(cfg, spec.cost, 1), op


@pytest.mark.parametrize("op", UNARY + tuple(ATTRS) + ("add", "mul", "sub", "div"))
def test_exact_definition_matches_the_reference_interpreter(op):
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 2.0, (3, 16)).astype(np.float32)
    args = [x] if op not in ("add", "mul", "sub", "div") else [x, x[::-1].copy()]
    if op == "rmsnorm":
        args.append(rng.normal(1, 0.1, 16).astype(np.float32))
    attrs = ATTRS.get(op, {})
    got = OPS[op].fn(EXACT, args, attrs)
    want = REFERENCE[op](Node(op, [], ["y"], attrs), args, {})
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    approx = OPS[op].fn(APPROX, args, attrs)  # the ASIC's approximations stay close
    np.testing.assert_allclose(approx, want, rtol=2e-3, atol=2e-4)
