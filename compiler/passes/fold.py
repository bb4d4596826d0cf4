"""Folding: what depends only on constants is evaluated now, a cache that starts empty is dropped.

The decode step's graph after classification still holds computations of constants (rotary
frequencies, masks, shape arithmetic that became constant) and concatenations with an empty
operand (a KV cache of length 0 in the export). :class:`Fold` evaluates every node whose inputs
are all known constants (with the IR interpreter's op definitions), forwards a concat with one
non-empty operand to that operand, keeps only the first output (the logits: the returned cache
is the PIM's own) and prunes what the logits do not need. Folding twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.ir import ConstMeta, Graph
from compiler.passes.interpret import _OPS as _EVAL
from compiler.passes.lowering_error import LoweringError

_META_VIEWS = ("select", "slice", "reshape", "transpose", "squeeze", "unsqueeze", "cast")


@dataclass(frozen=True)
class Fold:
    """Evaluate constant subgraphs, drop empty cache operands, keep only the logits."""

    name: str = "fold"

    def run(self, graph: Graph) -> Graph:
        g = graph.copy()
        fold_graph(g, g.name)
        return g


def fold_graph(g: Graph, model: str = "model") -> None:
    """Fold ``g`` in place (see the module docstring)."""
    if not g.outputs:
        raise LoweringError(f"{model}: the graph has no outputs")
    g.outputs = g.outputs[:1]  # the logits; the returned cache is the PIM's own
    rename: dict[str, str] = {}
    kept = []
    for n in g.nodes:
        n.inputs = [rename.get(i, i) for i in n.inputs]
        if n.op == "concat":
            ax = n.attrs["axis"]
            live = [i for i in n.inputs
                    if not (isinstance(g.shape_of(i)[ax], int) and g.shape_of(i)[ax] == 0)]
            if len(live) == 1:
                rename[n.outputs[0]] = live[0]
                continue
            n.inputs = live
        if n.inputs and all(g.is_const(i) and g.const_value(i) is not None for i in n.inputs) \
                and n.op in _EVAL and len(n.outputs) == 1:
            try:
                val = _EVAL[n.op](n, [g.consts[i] for i in n.inputs], {})
            except Exception:  # noqa: BLE001 - symbolic attributes: keep the node
                kept.append(n)
                continue
            g.consts[n.outputs[0]] = np.asarray(val)
            g.values.pop(n.outputs[0], None)
            continue
        if n.inputs and n.op in _META_VIEWS and all(g.is_const(i) for i in n.inputs) and \
                len(n.outputs) == 1 and all(isinstance(d, int) for d in g.shape_of(n.outputs[0])):
            # a view of a shape-only weight (one expert's matrix out of a stacked parameter):
            # a shape-only constant of its own
            g.consts[n.outputs[0]] = ConstMeta(tuple(g.shape_of(n.outputs[0])),
                                               g.dtype_of(n.outputs[0]) or "f32")
            g.values.pop(n.outputs[0], None)
            continue
        kept.append(n)
    g.nodes = kept
    g.outputs = [rename.get(o, o) for o in g.outputs]
    g.prune()
