"""Shape inference: give every node output a shape and dtype.

Dimensions are ints or symbolic strings. Symbolic arithmetic is limited to what a decode step
needs: sums (``concat`` of ``past_len`` cached rows and one new row is ``past_len+1``), equality,
and cancelling a symbol in ``reshape`` with ``-1``. A dimension that cannot be derived becomes
an opaque string naming the value and axis (``%v.d2``) rather than failing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from compiler.ir import Dim, Graph, IRError, Node, Value

_INT_MAX = 2**62


class ShapeError(IRError):
    """A node's input shapes are inconsistent with its op."""


# ---- symbolic dimensions ---------------------------------------------------------------------

_TERM = re.compile(r"[+-]?[^+-]+")


def _terms(d: Dim) -> tuple[dict[str, int], int]:
    """``"past_len+1"`` -> ({"past_len": 1}, 1); opaque tokens (``2*n``) stay whole symbols."""
    if isinstance(d, int):
        return {}, d
    syms: dict[str, int] = {}
    const = 0
    for tok in _TERM.findall(d.replace(" ", "")):
        sign = -1 if tok.startswith("-") else 1
        body = tok.lstrip("+-")
        if body.isdigit():
            const += sign * int(body)
        else:
            syms[body] = syms.get(body, 0) + sign
    return syms, const


def _format(syms: dict[str, int], const: int) -> Dim:
    parts = []
    for s in sorted(syms):
        k = syms[s]
        if k == 0:
            continue
        coeff = "" if abs(k) == 1 else f"{abs(k)}*"
        parts.append(("-" if k < 0 else "+") + coeff + s)
    if not parts:
        return const
    text = "".join(parts).lstrip("+")
    if const:
        text += f"{const:+d}"
    return text


def dim_add(a: Dim, b: Dim) -> Dim:
    """``a + b`` for ints and symbolic sums."""
    sa, ca = _terms(a)
    sb, cb = _terms(b)
    for s, k in sb.items():
        sa[s] = sa.get(s, 0) + k
    return _format(sa, ca + cb)


def dims_equal(a: Dim, b: Dim) -> bool:
    return _terms(a) == _terms(b)


def _bdim(a: Dim, b: Dim) -> Dim:
    if dims_equal(a, b):
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int) and isinstance(b, int):
        raise ShapeError(f"dimensions {a} and {b} do not broadcast")
    return a if isinstance(a, int) else b  # a symbol equal to a number at run time


def broadcast(*shapes: Sequence[Dim]) -> tuple:
    rank = max(len(s) for s in shapes)
    out: list[Dim] = [1] * rank
    for s in shapes:
        pad = [1] * (rank - len(s)) + list(s)
        out = [_bdim(x, y) for x, y in zip(out, pad)]
    return tuple(out)


def _norm(axis: int, rank: int) -> int:
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < rank:
        raise ShapeError(f"axis {axis} out of range for rank {rank}")
    return a


# ---- per-op rules: (graph, node, input shapes) -> output shape -----------------------------

Rule = Callable[[Graph, Node, list], tuple]


def _same(g: Graph, n: Node, s: list) -> tuple:
    return tuple(s[0])


def _elementwise(g: Graph, n: Node, s: list) -> tuple:
    return broadcast(*s)


def _matmul(g: Graph, n: Node, s: list) -> tuple:
    a, b = list(s[0]), list(s[1])
    squeeze_a, squeeze_b = len(a) == 1, len(b) == 1
    if squeeze_a:
        a = [1] + a
    if squeeze_b:
        b = b + [1]
    if isinstance(a[-1], int) and isinstance(b[-2], int) and a[-1] != b[-2]:
        raise ShapeError(f"matmul inner dimensions {a[-1]} and {b[-2]} differ")
    out = list(broadcast(a[:-2], b[:-2])) + [a[-2], b[-1]]
    if squeeze_a:
        out.pop(-2)
    if squeeze_b:
        out.pop(-1)
    return tuple(out)


def _gemm(g: Graph, n: Node, s: list) -> tuple:
    a, b = s[0], s[1]
    if len(a) != 2 or len(b) != 2:
        raise ShapeError("gemm takes 2-D operands")
    m, k = (a[1], a[0]) if n.attrs["trans_a"] else (a[0], a[1])
    k2, nn = (b[1], b[0]) if n.attrs["trans_b"] else (b[0], b[1])
    if isinstance(k, int) and isinstance(k2, int) and k != k2:
        raise ShapeError(f"gemm inner dimensions {k} and {k2} differ")
    return (m, nn)


def _linear(g: Graph, n: Node, s: list) -> tuple:
    x, w = s[0], s[1]
    if len(w) != 2:
        raise ShapeError(f"linear weight has rank {len(w)}")
    out_dim, in_dim = (w[0], w[1]) if n.attrs["w_layout"] == "out_in" else (w[1], w[0])
    if isinstance(x[-1], int) and isinstance(in_dim, int) and x[-1] != in_dim:
        raise ShapeError(f"linear input has {x[-1]} features, weight expects {in_dim}")
    if len(s) > 2 and tuple(s[2]) not in ((out_dim,), ()):
        raise ShapeError(f"linear bias shape {s[2]} does not match {out_dim} outputs")
    return tuple(x[:-1]) + (out_dim,)


def _reduce(g: Graph, n: Node, s: list) -> tuple:
    x = s[0]
    axes = n.attrs["axes"]
    ax = set(range(len(x))) if not axes else {_norm(a, len(x)) for a in axes}
    if n.attrs["keepdim"]:
        return tuple(1 if i in ax else d for i, d in enumerate(x))
    return tuple(d for i, d in enumerate(x) if i not in ax)


def _gather(g: Graph, n: Node, s: list) -> tuple:
    data, idx = s
    axis = _norm(n.attrs["axis"], len(data))
    return tuple(data[:axis]) + tuple(idx) + tuple(data[axis + 1:])


def _select(g: Graph, n: Node, s: list) -> tuple:
    x = s[0]
    axis = _norm(n.attrs["axis"], len(x))
    return tuple(x[:axis]) + tuple(x[axis + 1:])


def _concat(g: Graph, n: Node, s: list) -> tuple:
    rank = len(s[0])
    axis = _norm(n.attrs["axis"], rank)
    out = list(s[0])
    for other in s[1:]:
        if len(other) != rank:
            raise ShapeError(f"concat of ranks {rank} and {len(other)}")
        for i in range(rank):
            if i == axis:
                out[i] = dim_add(out[i], other[i])
            elif not dims_equal(out[i], other[i]):
                if isinstance(out[i], int) and isinstance(other[i], int):
                    raise ShapeError(f"concat: dimension {i} differs ({out[i]} vs {other[i]})")
    return tuple(out)


def _product(dims: Sequence[Dim]) -> tuple[int, list[str]]:
    num, syms = 1, []
    for d in dims:
        if isinstance(d, int):
            num *= d
        else:
            syms.append(str(d))
    return num, syms


def _reshape(g: Graph, n: Node, s: list) -> tuple:
    x = s[0]
    target = list(n.attrs["shape"])
    if target.count(-1) > 1:
        raise ShapeError("reshape with more than one -1")
    if -1 not in target:
        return tuple(target)
    num_in, sym_in = _product(x)
    known = [d for d in target if d != -1]
    num_t, sym_t = _product(known)
    rest = list(sym_in)
    for sym in sym_t:
        if sym in rest:
            rest.remove(sym)
        else:
            rest = None  # type: ignore[assignment]
            break
    i = target.index(-1)
    if rest is not None and num_t and num_in % num_t == 0:
        k = num_in // num_t
        if not rest:
            target[i] = k
        elif len(rest) == 1 and k == 1:
            target[i] = rest[0]
        else:
            target[i] = f"{n.outputs[0]}.d{i}"
    else:
        target[i] = f"{n.outputs[0]}.d{i}"
    return tuple(target)


def _transpose(g: Graph, n: Node, s: list) -> tuple:
    x = s[0]
    perm = n.attrs["perm"]
    if sorted(_norm(p, len(x)) for p in perm) != list(range(len(x))):
        raise ShapeError(f"perm {perm} is not a permutation of rank {len(x)}")
    return tuple(x[_norm(p, len(x))] for p in perm)


def _slice_len(d: Dim, start: Any, end: Any, step: int) -> Dim:
    if isinstance(d, int) and isinstance(start, int) and isinstance(end, int):
        return len(range(*slice(start, end, step).indices(d)))
    if start == 0 and step == 1 and isinstance(end, int) and end >= _INT_MAX:
        return d
    if step == 1 and isinstance(start, int) and isinstance(end, int) and 0 <= start <= end < _INT_MAX:
        return end - start  # assumes the symbolic dimension is at least ``end``
    return f"slice({d},{start},{end},{step})"


def _slice(g: Graph, n: Node, s: list) -> tuple:
    out = list(s[0])
    a = n.attrs
    for axis, start, end, step in zip(a["axes"], a["starts"], a["ends"], a["steps"]):
        i = _norm(axis, len(out))
        out[i] = _slice_len(out[i], start, end, step)
    return tuple(out)


def _unsqueeze(g: Graph, n: Node, s: list) -> tuple:
    out = list(s[0])
    rank = len(out) + len(n.attrs["axes"])
    for a in sorted(_norm(a, rank) for a in n.attrs["axes"]):
        out.insert(a, 1)
    return tuple(out)


def _squeeze(g: Graph, n: Node, s: list) -> tuple:
    x = s[0]
    axes = n.attrs["axes"]
    if axes is None:
        return tuple(d for d in x if d != 1)
    ax = {_norm(a, len(x)) for a in axes}
    for a in ax:
        if isinstance(x[a], int) and x[a] != 1:
            raise ShapeError(f"squeeze of axis {a} with size {x[a]}")
    return tuple(d for i, d in enumerate(x) if i not in ax)


def _expand(g: Graph, n: Node, s: list) -> tuple:
    x = list(s[0])
    target = list(n.attrs["shape"])
    pad = [1] * (len(target) - len(x)) + x
    target = [p if t == -1 else t for p, t in zip(pad, target)]
    return broadcast(pad, target)


def _constant(g: Graph, n: Node, s: list) -> tuple:
    return tuple(np.asarray(n.attrs["value"]).shape)


RULES: dict[str, Rule] = {
    "matmul": _matmul, "gemm": _gemm, "linear": _linear,
    "add": _elementwise, "sub": _elementwise, "mul": _elementwise, "div": _elementwise,
    "pow": _elementwise, "where": _elementwise,
    "sqrt": _same, "tanh": _same, "erf": _same, "exp": _same, "softmax": _same,
    "rsqrt": _same, "neg": _same, "cos": _same, "sin": _same, "sigmoid": _same, "silu": _same,
    "relu": _same, "clamp": _same,
    "layernorm": _same, "rmsnorm": _same, "gelu": _same, "cast": _same,
    "reduce_mean": _reduce, "reduce_max": _reduce, "reduce_sum": _reduce,
    "gather": _gather, "select": _select, "concat": _concat, "reshape": _reshape,
    "transpose": _transpose, "slice": _slice, "unsqueeze": _unsqueeze, "squeeze": _squeeze,
    "expand": _expand, "constant": _constant,
    "moe_route": _same, "expert_in": _same, "expert_out": _same, "attn_window": _same,
}

_FLOATS = ("f32", "f16", "bf16", "f64")


def _out_dtype(g: Graph, n: Node) -> str:
    if n.op == "cast":
        return n.attrs["to"]
    if n.op == "constant":
        from compiler.ir import dtype_of_array
        return dtype_of_array(np.asarray(n.attrs["value"]))
    if n.op == "gather":
        return g.dtype_of(n.inputs[0])
    if n.op == "where":
        return g.dtype_of(n.inputs[1])
    dts = [g.dtype_of(i) for i in n.inputs]
    return next((d for d in dts if d in _FLOATS), dts[0] if dts else "")


@dataclass(frozen=True)
class ShapeInference:
    """Fill ``Graph.values`` with the shape and dtype of every node output."""

    name: str = "shape_inference"

    def run(self, graph: Graph) -> Graph:
        g = graph.copy()
        for n in g.nodes:
            shapes = []
            for i in n.inputs:
                sh = g.shape_of(i)
                if sh is None:
                    raise ShapeError(f"{g.pretty_node(n)}: shape of {i!r} unknown")
                shapes.append(sh)
            try:
                shape = RULES[n.op](g, n, shapes)
            except ShapeError as e:
                raise ShapeError(f"{g.pretty_node(n)}: {e} (input shapes {shapes})") from None
            for o in n.outputs:
                g.values[o] = Value(o, tuple(shape), _out_dtype(g, n))
        return g.verify()


class IncrementalShapes:
    """Shapes of the values a front end has built so far (``Builder``), inferred with the rules
    above as far as the builder has got: what an importer reads where the source file does not
    annotate a shape (``Shape`` of an unannotated tensor)."""

    def __init__(self, builder: Any) -> None:
        self.b = builder
        self.values: dict[str, Value] = {}
        self.done = 0  # builder nodes inferred so far
        self.g = Graph(builder.nodes, builder.inputs, [], builder.consts, self.values)

    def shape(self, name: str) -> tuple | None:
        """The shape of ``name``, or None where a rule cannot derive it (an opaque dimension
        ``%v.dN`` counts as unknown)."""
        for v in self.b.inputs:
            self.values.setdefault(v.name, v)
        nodes = self.b.nodes
        while self.done < len(nodes):
            n = nodes[self.done]
            self.done += 1
            shapes = [self.g.shape_of(i) for i in n.inputs]
            rule = RULES.get(n.op)
            shape = None
            if rule is not None and all(s is not None for s in shapes):
                try:
                    shape = tuple(rule(self.g, n, shapes))
                except (ShapeError, IRError, KeyError, ValueError, TypeError, IndexError):
                    shape = None
            for o in n.outputs:
                self.values[o] = Value(o, shape, _out_dtype(self.g, n) if shape else "")
        sh = self.g.shape_of(name)
        if sh is None or any(isinstance(d, str) and "%" in d for d in sh):
            return None
        return sh
