"""Graph lowering: the decode-step graph, op by op, to a placed :class:`pimsim.isa.Program`.

No model is recognised: every node of the graph (after the graph passes of
:mod:`compiler.pipeline`) is put in one of four classes by what it computes, and the program's
steps and dependencies follow the graph's dataflow, so parallel residuals, untied heads, biases
or none, extra norms, gated MLPs and grouped-query attention need no code of their own.

    analyse    (a) matrix-vector product with a constant weight       -> PIM (packed by input)
               (b) attention over the KV cache (q.K^T, p.V)           -> PIM, K/V once per KV head
               (c) gather of a table row (token or position)          -> PIM read
               (d) everything else                                    -> ASIC op (pimsim.asic_ops)
               data movement (reshape, transpose, slice, ...) is wiring: free, kept in the flow;
               a layer starts at the first op of the norm feeding an attention's projections
                                                                         (passes.analyse)
    partition  pipeline stages and the tensor-parallel split of every product (passes.partition)
    emit       Program steps (timing) + Program.flow (the dataflow the functional executor runs)
                                                                         (passes.emit)
    place      vectors (norm weights, biases, frequencies) per layer, K/V caches, tables and
               matrices on channels and banks (PIM-GPT's placement: pimsim.isa layouts), per
               pipeline stage                                            (passes.place)

The result is one (:class:`~pimsim.isa.Program`, :class:`~compiler.passes.graph_mapping.
GraphMapping`) per pipeline stage.

A MoE router (a matrix product whose weight is chosen by data), a graph whose attention cannot
be traced to the past key/value inputs, or a prefill graph (more than one new token) is refused
with a :class:`LoweringError` naming the node.
"""

from __future__ import annotations

from compiler.ir import Graph
from compiler.passes.analyse import MATRIX_OPS, WIRING, DecodeStepAnalysis, _Matvec
from compiler.passes.emit import Emission
from compiler.passes.fold import fold_graph
from compiler.passes.graph_mapping import GraphMapping, GraphModel
from compiler.passes.lowering_error import LoweringError
from compiler.passes.mapping import geometry
from compiler.passes.partition import TensorParallel
from compiler.passes.place import Placement
from pimsim.asic_ops import OPS as ASIC_OPS
from pimsim.config import HwConfig
from pimsim.isa import Program

__all__ = ["ATTENTION_SPLITS", "GraphMapping", "GraphModel", "LoweringError", "WIRING",
           "lower_graph", "lower_graph_system"]

ATTENTION_SPLITS = ("split", "one-device")  # tensor parallelism: attention by heads, or whole


def lower_graph(graph: Graph, cfg: HwConfig, *, name: str = "model",
                n_ctx: int | None = None) -> tuple[Program, GraphMapping]:
    """Lower a shape-inferred, fused decode-step graph onto ``cfg`` (one device)."""
    (prog, mp), = _Lowering(graph, cfg, name, n_ctx).run()
    return prog, mp


def lower_graph_system(graph: Graph, cfg: HwConfig, *, name: str = "model",
                       n_ctx: int | None = None, tp: int = 1, pp: int = 1,
                       attention: str = "split") -> list[tuple[Program, GraphMapping]]:
    """Lower onto a system of ``tp x pp`` devices: one (program, mapping) per pipeline stage,
    each the program of one device of the stage's tensor-parallel group
    (:mod:`compiler.passes.partition`). ``tp = pp = 1`` is exactly :func:`lower_graph`."""
    return _Lowering(graph, cfg, name, n_ctx, tp=tp, pp=pp, attention=attention).run()


class _Lowering(DecodeStepAnalysis, TensorParallel, Emission, Placement):
    """One lowering of a graph onto a config: analysis (:mod:`~compiler.passes.analyse`),
    partition (:mod:`~compiler.passes.partition`), emission (:mod:`~compiler.passes.emit`) and
    placement (:mod:`~compiler.passes.place`), each a mixin over the state here."""

    def __init__(self, graph: Graph, cfg: HwConfig, name: str, n_ctx: int | None,
                 tp: int = 1, pp: int = 1, attention: str = "split") -> None:
        if attention not in ATTENTION_SPLITS:
            raise LoweringError(f"attention = {attention!r} unknown",
                                f"use one of {', '.join(ATTENTION_SPLITS)}")
        self.attn_one = attention == "one-device"
        self.g = graph.copy()
        self.cfg = cfg
        self.name = name
        self.n_ctx = n_ctx
        self.geo = geometry(cfg)
        self.tp, self.pp = tp, pp

    # ---------------------------------------------------------------- folding
    def fold(self) -> None:
        fold_graph(self.g, self.name)  # a no-op on a graph through the Fold pass already

    # ---------------------------------------------------------------- run
    def run(self) -> tuple[Program, GraphMapping]:
        self.fold()
        self.inputs()
        self.analyse()
        g = self.g
        for n in g.nodes:
            if n.op not in ASIC_OPS and n.op not in ("gather",) and id(n) not in self.skip:
                raise LoweringError(f"{self.name}: op {n.op!r} at node {n.name!r} has no ASIC or "
                                    f"PIM definition")
        # matvecs packed by input
        packs: dict[str, _Matvec] = {}
        self.pack_of: dict[int, _Matvec] = {}
        for n in g.nodes:
            if self.is_weight(n):
                w, _ = self.weight_out_in(n)
                key = n.inputs[0]
                p = packs.get(key)
                if p is None:
                    p = packs[key] = _Matvec([], key)
                p.nodes.append(n)
                self.pack_of[id(n)] = p
            elif n.op in MATRIX_OPS and len(n.inputs) >= 2 and g.is_const(n.inputs[1]) and \
                    n.inputs[0] not in self.pos_only:
                raise LoweringError(f"{self.name}: matrix product at node {n.name!r} has a "
                                    f"weight of shape {g.const_shape(n.inputs[1])}")
        cuts = self.layer_cuts()
        layer_of = {}
        li = -1
        cut_set = {c: k for k, c in enumerate(cuts)}
        for i, n in enumerate(g.nodes):
            if i in cut_set:
                li = cut_set[i]
            layer_of[id(n)] = li
        # nodes after the last attention's block that feed the head: "final" (= n_layer)
        self.n_layer = len(self.attns)
        self.layer_of = layer_of
        if self.pp > max(self.n_layer, 1):
            raise LoweringError(f"{self.name}: {self.pp} pipeline stages for {self.n_layer} "
                                f"layers", f"use at most {self.n_layer} stages (--pp)")
        return self.emit(layer_of)
