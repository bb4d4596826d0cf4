"""Classification: what each node is on the PIM system (``cls``), where it runs (``kind``) and
what it is for (``role``). The only place node classes are decided; the lowering reads them.

cls (a :class:`~compiler.ir.NodeClass`, from :class:`~compiler.passes.decode_step.DecodeStep`)
    cache view, cache append, attention, table read, matrix-vector product and its role, ASIC op
    or wiring, and the layer; a graph that is not a decode step the PIM system can run is
    refused here with a :class:`~compiler.passes.lowering_error.LoweringError`. Runs on a
    folded graph (after :class:`~compiler.passes.fold.Fold`).

kind
    ``pim``  matrix-vector products: a ``linear`` / ``gemm`` / ``matmul`` with a constant weight
             (the projections, the FFN and the LM head), and the two attention products over the
             KV cache, ``q . K^T`` and ``softmax . V``.
    ``asic`` everything that computes on vectors: layernorm, softmax, gelu, the residual and other
             elementwise ops, reductions, the embedding gathers.
    ``data`` pure data movement: reshape, transpose, concat, select, slice, (un)squeeze, expand,
             cast.

role (found from the graph's structure, never from names)
    ``embedding`` (gather from a constant table), ``embedding_add``, ``layernorm``, ``qkv_q``,
    ``qkv_k``, ``qkv_v``, ``head_split``, ``kv_slice`` (one layer's cache out of the
    ``[n_layer, ...]`` input), ``kv_concat`` (cache + new row), ``attn_score`` (q . K^T),
    ``attn_scale``, ``softmax``, ``attn_value`` (p . V), ``head_merge``, ``out_proj``,
    ``residual``, ``ffn_up``, ``gelu``, ``ffn_down``, ``lm_head``, ``kv_present`` (assembling the
    returned cache; gone once folded). Nodes with no recognised purpose keep ``role=""``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.ir import DATA_OPS, ELEMENTWISE_BINARY, ELEMENTWISE_UNARY, REDUCTIONS, Graph, Node
from compiler.passes.decode_step import DecodeStep

_MATRIX_OPS = ("linear", "gemm", "matmul")
_ASIC_OPS = ("layernorm", "rmsnorm", "softmax", "gelu", "where") + ELEMENTWISE_BINARY + ELEMENTWISE_UNARY \
    + REDUCTIONS
_VIEW_OPS = ("reshape", "transpose", "expand", "unsqueeze", "squeeze", "cast", "slice")


class _Graph:
    """Graph lookups of the classify pass (producers, users, walks through views)."""

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.prod = g.producers()
        self.users = g.users()
        self.input_names = {v.name for v in g.inputs}

    def back(self, value: str, through: tuple[str, ...] = _VIEW_OPS) -> tuple[str, list[Node]]:
        """Follow ``value`` up through single-input data ops; (source value, nodes passed)."""
        passed = []
        while True:
            n = self.prod.get(value)
            if n is None or n.op not in through:
                return value, passed
            passed.append(n)
            value = n.inputs[0]

    def source(self, value: str, through: tuple[str, ...] = _VIEW_OPS) -> Node | None:
        return self.prod.get(self.back(value, through)[0])

    def forward(self, value: str, through: tuple[str, ...] = _VIEW_OPS) -> tuple[list[Node], list[Node]]:
        """Users of ``value`` after single-user chains of data ops; (users, data nodes passed)."""
        passed: list[Node] = []
        while True:
            us = self.users.get(value, [])
            if len(us) == 1 and us[0].op in through and value not in self.g.outputs:
                passed.append(us[0])
                value = us[0].outputs[0]
                continue
            return us, passed

    def weight(self, n: Node) -> str | None:
        """The constant weight of a matrix op, or None."""
        if n.op in _MATRIX_OPS and len(n.inputs) >= 2 and self.g.is_const(n.inputs[1]):
            return n.inputs[1]
        return None


def _same_table(g: Graph, w: str, table: str, layout: str) -> bool:
    if w == table:
        return True
    a, b = g.const_value(w), g.const_value(table)
    if a is None or b is None:
        return False
    a = a if layout == "out_in" else a.T
    return a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(frozen=True)
class Classify:
    """Set ``cls``, ``kind`` and ``role`` on every node of a folded decode-step graph."""

    name: str = "classify"

    def run(self, graph: Graph) -> Graph:
        g = graph.copy()
        classes = DecodeStep(g, g.name).classes()
        for n in g.nodes:
            n.cls = classes[id(n)]
        return mark_kinds_and_roles(g)


def is_classified(g: Graph) -> bool:
    """Whether the classify pass has run on ``g`` (every node has its class)."""
    return bool(g.nodes) and all(n.cls is not None for n in g.nodes)


def mark_kinds_and_roles(graph: Graph) -> Graph:
    """Set ``kind`` and the descriptive ``role`` on every node (in place; returns the graph);
    a cache append (``cls``) is a ``kv_concat``."""
    g = graph
    q = _Graph(g)
    for n in g.nodes:
        n.kind, n.role = _kind(g, n), ""
    tables = {n.inputs[0] for n in g.nodes if n.op == "gather" and g.is_const(n.inputs[0])}

    def set_role(nodes: list[Node], role: str) -> None:
        for x in nodes:
            if not x.role:
                x.role = role

    for n in g.nodes:
        if n.op == "gather" and n.inputs[0] in tables:
            n.role = "embedding"
        elif n.op in ("layernorm", "softmax", "gelu"):
            n.role = n.op
        elif n.op == "select" and n.inputs[0] in q.input_names:
            n.role = "kv_slice"
        elif n.cls is not None and n.cls.what == "cache_append":
            n.role = "kv_concat"

    # attention products: two activations, the right one reaching the cache (or a k/v
    # projection directly when there is no cache)
    for n in g.nodes:
        if n.op not in ("matmul", "gemm") or any(g.is_const(i) for i in n.inputs[:2]):
            continue
        a, b = n.inputs[:2]
        kv = q.source(b)
        if kv is None or not (kv.role == "kv_concat" or q.weight(kv) is not None):
            continue
        left_src, left_passed = q.back(a)
        left = q.prod.get(left_src)
        scale_nodes: list[Node] = []
        while left is not None and left.op in ("mul", "div") and any(
                g.scalar(i) is not None for i in left.inputs):
            scale_nodes.append(left)
            left_src, more = q.back(next(i for i in left.inputs if not g.is_const(i)))
            left_passed += more
            left = q.prod.get(left_src)
        if left is not None and left.op == "softmax":
            n.kind, n.role = "pim", "attn_value"
            proj_role = "qkv_v"
        else:
            n.kind, n.role = "pim", "attn_score"
            proj_role = "qkv_k"
            if left is not None and q.weight(left) is not None:
                left.role = "qkv_q"
                set_role(left_passed, "head_split")
            set_role(scale_nodes, "attn_scale")
        _, kv_passed = q.back(b)
        if kv.role == "kv_concat":
            proj_src, proj_passed = q.back(kv.inputs[1])
            proj = q.prod.get(proj_src)
        else:
            proj, proj_passed = kv, kv_passed
        if proj is not None and q.weight(proj) is not None:
            proj.role = proj_role
            set_role(proj_passed, "head_split")

    for n in g.nodes:
        if n.role == "softmax":
            src, passed = q.back(n.inputs[0])
            scale = q.prod.get(src)
            if scale is not None and scale.op in ("mul", "div") and any(
                    g.scalar(i) is not None for i in scale.inputs):
                scale.role = scale.role or "attn_scale"

    for n in g.nodes:
        w = q.weight(n)
        if w is None or n.role:
            continue
        src = q.source(n.inputs[0])
        users, _ = q.forward(n.outputs[0])
        layout = n.attrs.get("w_layout", "in_out")
        if src is not None and src.role == "attn_value":
            n.role = "out_proj"
            set_role(q.back(n.inputs[0])[1], "head_merge")
        elif src is not None and src.role == "gelu":
            n.role = "ffn_down"
        elif len(users) == 1 and users[0].role == "gelu":
            n.role = "ffn_up"
        elif any(_same_table(g, w, t, layout) for t in sorted(tables)):
            n.role = "lm_head"

    embed = {o for n in g.nodes if n.role == "embedding" for o in n.outputs}
    for n in g.nodes:
        if n.op == "add" and not n.role and not any(g.is_const(i) for i in n.inputs):
            srcs = [q.back(i)[0] for i in n.inputs]
            n.role = "embedding_add" if all(s in embed for s in srcs) else "residual"
    # the returned cache: views and concats from kv_concat results to graph outputs
    concat_out = {n.outputs[0] for n in g.nodes if n.role == "kv_concat"}
    for n in g.nodes:
        if n.role or n.kind != "data":
            continue
        if all(q.back(i)[0] in concat_out for i in n.inputs) and _reaches_output(q, n):
            n.role = "kv_present"
    return g.verify()


def _reaches_output(q: _Graph, n: Node) -> bool:
    seen = set()
    todo = [n]
    while todo:
        x = todo.pop()
        if any(o in q.g.outputs for o in x.outputs):
            return True
        for o in x.outputs:
            for u in q.users.get(o, []):
                if u.kind == "data" and id(u) not in seen:
                    seen.add(id(u))
                    todo.append(u)
    return False


def _kind(g: Graph, n: Node) -> str:
    if n.op in _MATRIX_OPS:
        return "pim" if n.op == "linear" or any(g.is_const(i) for i in n.inputs[:2]) else "asic"
    if n.op == "gather":
        return "asic" if g.is_const(n.inputs[0]) else "data"
    if n.op in _ASIC_OPS:
        return "asic"
    if n.op in DATA_OPS:
        return "data"
    return "asic"
