"""Graph lowering: the decode-step graph, op by op, to a placed :class:`pimsim.isa.Program`.

No model is recognised: every node of the graph (after the graph passes of
:mod:`compiler.pipeline`) is put in one of four classes by what it computes, and the program's
steps and dependencies follow the graph's dataflow, so parallel residuals, untied heads, biases
or none, extra norms, gated MLPs and grouped-query attention need no code of their own.

    classify   (a) matrix-vector product with a constant weight       -> PIM (packed by input)
               (b) attention over the KV cache (q.K^T, p.V)           -> PIM, K/V once per KV head
               (c) gather of a table row (token or position)          -> PIM read
               (d) everything else                                    -> ASIC op (pimsim.asic_ops)
               data movement (reshape, transpose, slice, ...) is wiring: free, kept in the flow;
               a layer starts at the first op of the norm feeding an attention's projections
                                      (passes.classify, passes.decode_step: before the lowering)
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
from compiler.passes.classify import Classify, is_classified
from compiler.passes.decode_step import WIRING, decode_inputs
from compiler.passes.emit import Emission, Emit
from compiler.passes.fold import Fold
from compiler.passes.graph_mapping import GraphMapping, GraphModel
from compiler.passes.lowering_error import LoweringError
from compiler.passes.lowering_state import Attn, Matvec
from compiler.passes.mapping import geometry
from compiler.passes.partition import Partition, TensorParallel
from compiler.passes.place import Place, Placement
from pimsim.config import HwConfig
from pimsim.isa import Program

__all__ = ["ATTENTION_SPLITS", "LOWERING_PASSES", "GraphMapping", "GraphModel", "LoweringError", "WIRING",
           "lower_graph", "lower_graph_system"]

# tensor parallelism: attention split by heads, whole on the first device, or "master": CENT's
# (Chen et al., ASPLOS'25) every product split by output rows over the devices, each input
# broadcast from and each output gathered on the first device, which holds the attention
ATTENTION_SPLITS = ("split", "one-device", "master")

# the lowering's passes, in order, per hardware config over the state of :class:`_Lowering`
# (:mod:`compiler.pipeline` lists them after the graph passes)
LOWERING_PASSES = (Partition(), Emit(), Place())


def lower_graph(graph: Graph, cfg: HwConfig, *, name: str = "model",
                n_ctx: int | None = None) -> tuple[Program, GraphMapping]:
    """Lower a shape-inferred, fused decode-step graph onto ``cfg`` (one device)."""
    (prog, mp), = _Lowering(graph, cfg, name, n_ctx).run()
    return prog, mp


def lower_graph_system(graph: Graph, cfg: HwConfig, *, name: str = "model",
                       n_ctx: int | None = None, tp: int = 1, pp: int = 1,
                       attention: str = "split", ep: int = 1) -> list[tuple[Program, GraphMapping]]:
    """Lower onto a system of ``tp x pp`` devices: one (program, mapping) per pipeline stage,
    each the program of one device of the stage's tensor-parallel group
    (:mod:`compiler.passes.partition`; ``ep = tp``: the experts placed whole over the group,
    :mod:`pimsim.expert_parallel`). ``tp = pp = 1`` is exactly :func:`lower_graph`."""
    return _Lowering(graph, cfg, name, n_ctx, tp=tp, pp=pp, attention=attention, ep=ep).run()


def classified(graph: Graph, name: str) -> Graph:
    """``graph`` folded and classified (the graph passes' last two), unless it is already."""
    if is_classified(graph):
        return graph
    g = graph.copy()
    g.name = name
    return Classify().run(Fold().run(g))


class _Lowering(TensorParallel, Emission, Placement):
    """One lowering of a classified graph onto a config: partition
    (:mod:`~compiler.passes.partition`), emission (:mod:`~compiler.passes.emit`) and placement
    (:mod:`~compiler.passes.place`), each a mixin over the state here."""

    def __init__(self, graph: Graph, cfg: HwConfig, name: str, n_ctx: int | None,
                 tp: int = 1, pp: int = 1, attention: str = "split", ep: int = 1) -> None:
        if attention not in ATTENTION_SPLITS:
            raise LoweringError(f"attention = {attention!r} unknown",
                                f"use one of {', '.join(ATTENTION_SPLITS)}")
        self.attn_master = attention == "master"
        self.attn_one = attention in ("one-device", "master")  # every head on device 0
        self.g = classified(graph, name)
        self.cfg = cfg
        self.name = name
        self.n_ctx = n_ctx
        self.geo = geometry(cfg)
        self.tp, self.pp = tp, pp
        if ep > 1 and (ep != tp or attention == "master"):
            raise LoweringError(f"{name}: expert parallelism over {ep} devices with tp {tp}"
                                + (" and master attention" if attention == "master" else ""),
                                "use --ep equal to --tp, with attention split or one-device")
        self.ep = ep if ep > 1 else 1

    def read_classes(self) -> None:
        """The attentions, cache views, packs and layers, as the classify pass marked them."""
        g = self.g
        inp = decode_inputs(g, self.name)
        self.token, self.position, self.syms = inp.token, inp.position, inp.syms
        self.prod = g.producers()
        self.users = g.users()
        self.pos_only = {inp.position} if inp.position else set()
        self.attns: list[Attn] = []
        self.cache: dict[str, tuple[int, str, bool]] = {}  # value -> (attn, "k"|"v", transposed)
        self.pack_of: dict[int, Matvec] = {}
        packs: dict[str, Matvec] = {}
        self.layer_of = {}
        for n in g.nodes:
            c = n.cls
            self.layer_of[id(n)] = c.layer
            if c.position:
                self.pos_only.update(n.outputs)
            if c.what == "cache_append":
                while len(self.attns) <= c.attn:
                    self.attns.append(Attn(len(self.attns)))
                setattr(self.attns[c.attn], f"{c.which}_concat", n)
            if c.what in ("cache_append", "cache_view") and c.attn >= 0:
                self.cache[n.outputs[0]] = (c.attn, c.which, c.transposed)
            if c.what == "matvec":
                p = packs.get(n.inputs[0])
                if p is None:
                    p = packs[n.inputs[0]] = Matvec([], n.inputs[0], c.role)
                p.nodes.append(n)
                self.pack_of[id(n)] = p
        self.n_layer = len(self.attns)

    # ---------------------------------------------------------------- run
    def run(self) -> list[tuple[Program, GraphMapping]]:
        """The lowering passes (:data:`LOWERING_PASSES`) over this state."""
        low = self
        for p in LOWERING_PASSES:
            low = p.run(low)
        return low.placed
