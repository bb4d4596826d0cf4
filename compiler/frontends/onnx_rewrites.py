"""IR rewrites for ONNX exports, applied right after the import.

``matmul(a, b * c)`` with a scalar constant ``c`` becomes ``matmul(a * c, b)``: the same product,
with the scale on the other operand. torch.onnx decomposes ``scaled_dot_product_attention``
(Falcon's own attention) into ``(q * sqrt(s)) @ (K^T * sqrt(s))``; moved this way, the cached
keys are read by the product alone, as the lowering requires.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node


def move_scalar_scale_off_matmul_rhs(g: Graph) -> Graph:
    prod = g.producers()
    users = g.users()
    nodes: list[Node] = []
    for n in g.nodes:
        p = prod.get(n.inputs[1]) if n.op == "matmul" else None
        if p is not None and p.op == "mul" and len(users.get(p.outputs[0], [])) == 1:
            consts = [i for i in p.inputs if g.is_const(i)]
            c = g.const_value(consts[0]) if len(consts) == 1 else None
            if c is not None and np.asarray(c).size == 1:
                data = next(i for i in p.inputs if i != consts[0])
                scaled = f"{n.outputs[0]}.lhs_scaled"
                nodes.append(Node("mul", [n.inputs[0], consts[0]], [scaled],
                                  name=f"{n.name}.lhs_scale"))
                n.inputs = [scaled, data]
        nodes.append(n)
    g.nodes = nodes
    return g.prune()
