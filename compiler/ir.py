"""The compiler's graph IR: a small, flat, SSA-style dataflow graph.

Nothing downstream of the front ends sees a torch or ONNX type: a model becomes a :class:`Graph`
of :class:`Node` s over named values, with weights held as numpy arrays (or shape-only
:class:`ConstMeta` when the model was imported without its weights).

Names: every value (graph input or node output) and every constant has a unique name. In the
printed form values are written ``%name`` and constants ``@name``::

    input %past_k : [2,4,past_len,16] f32
    const @model.h.0.ln_1.weight : [64] f32
    %layer_norm = layernorm(%add, @model.h.0.ln_1.weight, @model.h.0.ln_1.bias) {axis=-1, eps=1e-05}
        : [1,64] f32  # asic layernorm   (one line in the dump)
    output %linear_12, %stack, %stack_1

Shapes are tuples of ints and strings; a string is a symbolic dimension (``"past_len"``,
``"past_len+1"``). ``shape=None`` means "not inferred yet" (the shape-inference pass fills it).

Op vocabulary (:data:`OPS`): what the two front ends produce for ``GPT.decode_step`` plus the
written-out forms the fuse pass recognises. Semantics follow numpy / ONNX:

=============  ============================================================================
matmul(a, b)   numpy ``a @ b`` (batched, broadcast batch dims)
gemm(a, b, c?) ``alpha * op(a) @ op(b) + beta * c``; attrs alpha, beta, trans_a, trans_b
linear(x, W, b?)  ``x @ W.T + b`` with ``W [out, in]`` (``w_layout=out_in``), or ``x @ W + b``
               with ``W [in, out]`` (``w_layout=in_out``, ONNX MatMul / HF Conv1D storage)
add sub mul div pow   elementwise, numpy broadcasting
sqrt tanh erf exp     elementwise unary
rsqrt neg cos sin     elementwise unary (``rsqrt(x) = 1 / sqrt(x)``)
sigmoid silu relu     activations (``silu(x) = x * sigmoid(x)``)
reduce_mean reduce_max reduce_sum   attrs axes (list), keepdim (bool)
softmax(x)     attr axis
layernorm(x, w?, b?)  over the trailing axes from ``axis``; attrs axis, eps
rmsnorm(x, w?)  ``x / sqrt(mean(x^2) + eps) * w`` over the last axis; attrs axis, eps
gelu(x)        attr approximate ("tanh" or "none")
gather(t, i)   ``take(t, i, axis)`` (embedding lookup when ``t`` is a weight table)
select(x)      ``x[..., index, ...]`` on ``axis`` (removes the axis); attrs axis, index
concat(*xs)    attr axis
reshape(x)     attr shape (ints / symbolic strings; -1 infers one dimension)
transpose(x)   attr perm
slice(x)       attrs axes, starts, ends, steps
unsqueeze(x) squeeze(x)   attr axes
expand(x)      attr shape (numpy broadcast_to; -1 keeps the input dimension)
where(c, a, b) elementwise select
cast(x)        attr to (dtype string)
constant()     attr value (numpy array); front ends hoist constants into ``Graph.consts``, so
               this op only appears in hand-written graphs
=============  ============================================================================

Dtypes are short strings: ``f32 f16 bf16 f64 i64 i32 i16 i8 u8 bool``.
"""

from __future__ import annotations

import copy as _copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

import numpy as np

Dim = Union[int, str]
Shape = tuple  # tuple[Dim, ...]

DTYPES = ("f32", "f16", "bf16", "f64", "i64", "i32", "i16", "i8", "u8", "bool")

_NP_TO_DTYPE = {
    np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.float64): "f64",
    np.dtype(np.int64): "i64", np.dtype(np.int32): "i32", np.dtype(np.int16): "i16",
    np.dtype(np.int8): "i8", np.dtype(np.uint8): "u8", np.dtype(np.bool_): "bool",
}


def dtype_of_array(arr: np.ndarray) -> str:
    """The IR dtype string of a numpy array."""
    try:
        return _NP_TO_DTYPE[arr.dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {arr.dtype} has no IR dtype") from None


# op -> (min inputs, max inputs or None for variadic, required attrs, kind the op has by default)
OPS: dict[str, tuple[int, int | None, tuple[str, ...]]] = {
    "matmul": (2, 2, ()),
    "gemm": (2, 3, ("alpha", "beta", "trans_a", "trans_b")),
    "linear": (2, 3, ("w_layout",)),
    "add": (2, 2, ()),
    "sub": (2, 2, ()),
    "mul": (2, 2, ()),
    "div": (2, 2, ()),
    "pow": (2, 2, ()),
    "sqrt": (1, 1, ()),
    "tanh": (1, 1, ()),
    "erf": (1, 1, ()),
    "exp": (1, 1, ()),
    "rsqrt": (1, 1, ()),
    "neg": (1, 1, ()),
    "cos": (1, 1, ()),
    "sin": (1, 1, ()),
    "sigmoid": (1, 1, ()),
    "silu": (1, 1, ()),
    "relu": (1, 1, ()),
    "reduce_mean": (1, 1, ("axes", "keepdim")),
    "reduce_max": (1, 1, ("axes", "keepdim")),
    "reduce_sum": (1, 1, ("axes", "keepdim")),
    # softmax(x[, sink]): a sink (gpt-oss's attention sinks) is one logit per row along
    # ``axis`` that joins the denominator and has no output of its own
    "softmax": (1, 2, ("axis",)),
    "clamp": (1, 1, ("min", "max")),  # min / max: a float, or None for no bound
    "layernorm": (1, 3, ("axis", "eps")),
    "rmsnorm": (1, 2, ("axis", "eps")),
    "gelu": (1, 1, ("approximate",)),
    "gather": (2, 2, ("axis",)),
    "select": (1, 1, ("axis", "index")),
    "concat": (1, None, ("axis",)),
    "reshape": (1, 1, ("shape",)),
    "transpose": (1, 1, ("perm",)),
    "slice": (1, 1, ("axes", "starts", "ends", "steps")),
    "unsqueeze": (1, 1, ("axes",)),
    "squeeze": (1, 1, ("axes",)),
    "expand": (1, 1, ("shape",)),
    "where": (3, 3, ()),
    "cast": (1, 1, ("to",)),
    "constant": (0, 0, ("value",)),
    # mixture of experts (workloads.models.moe_ops, pimsim.moe): dense routing weights, an
    # expert's input (wiring) and its output scaled by its routing weight
    "moe_route": (1, 2, ("k", "score", "norm", "n_group", "topk_group", "scale")),
    "expert_in": (2, 2, ("expert",)),
    "expert_out": (2, 2, ("expert",)),
    # a query whose attention reads the last ``window`` tokens (a sliding window; pimsim.isa)
    "attn_window": (1, 1, ("window",)),
}

ELEMENTWISE_BINARY = ("add", "sub", "mul", "div", "pow")
ELEMENTWISE_UNARY = ("sqrt", "tanh", "erf", "exp", "rsqrt", "neg", "cos", "sin", "sigmoid", "silu",
                     "relu", "clamp")
REDUCTIONS = ("reduce_mean", "reduce_max", "reduce_sum")
DATA_OPS = ("reshape", "transpose", "concat", "slice", "select", "unsqueeze", "squeeze",
            "expand", "cast", "constant")
KINDS = ("", "pim", "asic", "data")


class IRError(ValueError):
    """The graph breaks an IR invariant (see :meth:`Graph.verify`)."""


@dataclass(frozen=True)
class ConstMeta:
    """A constant known by shape and dtype only (weights not materialised, e.g. a meta model)."""

    shape: tuple[int, ...]
    dtype: str = "f32"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


Const = Union[np.ndarray, ConstMeta]


@dataclass
class Value:
    """A named tensor: a graph input or a node output. ``shape=None``: not inferred yet."""

    name: str
    shape: tuple | None = None
    dtype: str = ""


CLASSES = ("cache_view", "cache_append", "attention", "table_read", "matvec", "asic", "wiring")


@dataclass(frozen=True)
class NodeClass:
    """What a node is on the PIM system, decided once by the classify pass and read by the
    lowering.

    ``what``: ``cache_view`` (a view of a KV cache: free), ``cache_append`` (a new key / value
    written to its cache), ``attention`` (q.K^T or p.V over a cache), ``table_read`` (a row of a
    constant table), ``matvec`` (a matrix-vector product with a constant weight), ``asic`` (an
    op with a cost on the ASIC) or ``wiring`` (data movement, free). ``role``: a matvec's
    ``qkv`` / ``out_proj`` / ``ffn_up`` / ``ffn_down`` / ``lm_head`` (products sharing an input
    share it), an attention's ``score`` / ``value``, an ASIC op's ``residual`` /
    ``embedding_sum`` / ``attn_scale``. ``layer``: -1 the
    embedding, ``n_layer`` the head. ``attn``, ``which``, ``transposed``: the attention, the
    cache (``k`` / ``v``) and its orientation a cache node or attention reads (``attn = -1``: a
    view of the past input). ``position``: computed from the position alone.
    """

    what: str
    role: str = ""
    layer: int = -1
    attn: int = -1
    which: str = ""
    transposed: bool = False
    position: bool = False

    def text(self) -> str:
        parts = [self.what, self.role]
        if self.which:
            parts.append(self.which + ("" if self.attn < 0 else str(self.attn))
                         + ("^T" if self.transposed else ""))
        if self.position:
            parts.append("position")
        parts.append(f"layer={self.layer}")
        return " ".join(p for p in parts if p)


@dataclass(eq=False)
class Node:
    """One operation. ``kind`` ("pim" / "asic" / "data"), ``role`` and ``cls`` (a
    :class:`NodeClass`) are set by classify.

    Nodes compare and hash by identity (two nodes never share an output name).
    """

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    kind: str = ""
    role: str = ""
    cls: NodeClass | None = None


@dataclass
class Graph:
    """A dataflow graph; ``nodes`` are in a topological (definition-before-use) order.
    ``name``: the model's name, for messages."""

    nodes: list[Node]
    inputs: list[Value]
    outputs: list[str]
    consts: dict[str, Const] = field(default_factory=dict)
    values: dict[str, Value] = field(default_factory=dict)
    name: str = "model"

    # ---- construction / queries ------------------------------------------------------

    def copy(self) -> Graph:
        """A copy whose nodes, values and dicts may be changed freely (const arrays are shared)."""
        values = {k: Value(v.name, v.shape, v.dtype) for k, v in self.values.items()}
        return Graph(
            nodes=[Node(n.op, list(n.inputs), list(n.outputs), _copy.deepcopy(n.attrs), n.name,
                        n.kind, n.role, n.cls) for n in self.nodes],
            inputs=[values.get(v.name) or Value(v.name, v.shape, v.dtype) for v in self.inputs],
            outputs=list(self.outputs),
            consts=dict(self.consts),
            values=values,
            name=self.name,
        )

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def const_shape(self, name: str) -> tuple[int, ...]:
        c = self.consts[name]
        return tuple(int(d) for d in c.shape)

    def const_value(self, name: str) -> np.ndarray | None:
        """The array of a constant, or None when it is shape-only."""
        c = self.consts[name]
        return None if isinstance(c, ConstMeta) else c

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant, else None."""
        if name not in self.consts:
            return None
        c = self.consts[name]
        if isinstance(c, ConstMeta) or c.size != 1:
            return None
        return float(c.reshape(-1)[0])

    def shape_of(self, name: str) -> tuple | None:
        if name in self.consts:
            return self.const_shape(name)
        v = self.values.get(name)
        return None if v is None else v.shape

    def dtype_of(self, name: str) -> str:
        if name in self.consts:
            c = self.consts[name]
            return c.dtype if isinstance(c, ConstMeta) else dtype_of_array(c)
        v = self.values.get(name)
        return "" if v is None else v.dtype

    def producers(self) -> dict[str, Node]:
        """value name -> the node that defines it."""
        return {o: n for n in self.nodes for o in n.outputs}

    def users(self) -> dict[str, list[Node]]:
        """value or const name -> the nodes that read it (in node order, each node once)."""
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in dict.fromkeys(n.inputs):
                out.setdefault(i, []).append(n)
        return out

    def prune(self) -> Graph:
        """Drop (in place) dead nodes, then constants and values nothing refers to; returns self."""
        live = set(self.outputs)
        kept: list[Node] = []
        for n in reversed(self.nodes):
            if any(o in live for o in n.outputs):
                kept.append(n)
                live.update(n.inputs)
        self.nodes = kept[::-1]
        used = {i for n in self.nodes for i in n.inputs} | set(self.outputs)
        self.consts = {k: v for k, v in self.consts.items() if k in used}
        defined = {v.name for v in self.inputs} | {o for n in self.nodes for o in n.outputs}
        self.values = {k: v for k, v in self.values.items() if k in defined}
        return self

    # ---- checking ----------------------------------------------------------------------

    def verify(self) -> Graph:
        """Check the invariants; raises :class:`IRError`. Returns self.

        Every node's op is in :data:`OPS` with a legal input count and its required attrs; every
        input is a constant, a graph input or the output of an earlier node; every name is
        defined once; every defined value has a :class:`Value`; the outputs are defined.
        """
        defined: set[str] = set()
        for name in self.consts:
            defined.add(name)
        for v in self.inputs:
            if v.name in defined:
                raise IRError(f"graph input %{v.name} defined twice")
            if v.name not in self.values:
                raise IRError(f"graph input %{v.name} missing from values")
            defined.add(v.name)
        for idx, n in enumerate(self.nodes):
            where = f"node {idx} ({n.op}, outputs {', '.join('%' + o for o in n.outputs)})"
            if n.op not in OPS:
                raise IRError(f"{where}: unknown op {n.op!r}")
            lo, hi, req = OPS[n.op]
            if len(n.inputs) < lo or (hi is not None and len(n.inputs) > hi):
                raise IRError(f"{where}: {len(n.inputs)} inputs, {n.op} takes "
                              f"{lo}..{'n' if hi is None else hi}")
            missing = [a for a in req if a not in n.attrs]
            if missing:
                raise IRError(f"{where}: missing attrs {missing}")
            for i in n.inputs:
                if i not in defined:
                    raise IRError(f"{where}: input {i!r} used before it is defined")
            if not n.outputs:
                raise IRError(f"{where}: no outputs")
            for o in n.outputs:
                if o in defined:
                    raise IRError(f"{where}: {o!r} defined twice")
                if o not in self.values:
                    raise IRError(f"{where}: output %{o} has no Value")
                defined.add(o)
            if n.kind not in KINDS:
                raise IRError(f"{where}: kind {n.kind!r} not in {KINDS}")
            if n.cls is not None and n.cls.what not in CLASSES:
                raise IRError(f"{where}: class {n.cls.what!r} not in {CLASSES}")
        for o in self.outputs:
            if o not in defined:
                raise IRError(f"graph output {o!r} is not defined")
        return self

    # ---- printing ------------------------------------------------------------------------

    def pretty(self) -> str:
        """Deterministic text: inputs, constants (sorted by name), one line per node, outputs."""
        lines = [f"input %{v.name} : {_fmt_type(self.values.get(v.name, v))}" for v in self.inputs]
        for name in sorted(self.consts):
            c = self.consts[name]
            line = f"const @{name} : {_fmt_shape(c.shape)} {self.dtype_of(name)}"
            if isinstance(c, np.ndarray) and c.size <= 8:
                line += f" = {_fmt_array(c)}"
            lines.append(line)
        for n in self.nodes:
            lines.append(self.pretty_node(n))
        lines.append("output " + ", ".join(f"%{o}" for o in self.outputs))
        return "\n".join(lines) + "\n"

    def pretty_node(self, n: Node) -> str:
        args = ", ".join(("@" if i in self.consts else "%") + i for i in n.inputs)
        s = ", ".join(f"%{o}" for o in n.outputs) + f" = {n.op}({args})"
        if n.attrs:
            s += " {" + ", ".join(f"{k}={_fmt_attr(n.attrs[k])}" for k in sorted(n.attrs)) + "}"
        s += " : " + ", ".join(_fmt_type(self.values.get(o)) for o in n.outputs)
        tag = " ".join(t for t in (n.kind, n.role) if t)
        if n.cls is not None:
            tag += ("; " if tag else "") + n.cls.text()
        if tag:
            s += f"  # {tag}"
        return s

    def __str__(self) -> str:
        return self.pretty()


# ---- formatting helpers -------------------------------------------------------------------


def fmt_float(x: float) -> str:
    """Shortest text that reads back as the same float32 (``1e-05``, ``0.044715``)."""
    f = np.float32(x)
    if np.isfinite(f) and f == np.round(f) and abs(f) < 1e15:
        return str(int(f))
    return str(f)


def f32_attr(x: float) -> float:
    """A float rounded to its shortest float32 text (ONNX stores 1e-5 as 9.9999997e-06)."""
    return float(fmt_float(float(x)))


def _fmt_shape(shape: Iterable[Dim] | None) -> str:
    if shape is None:
        return "?"
    return "[" + ",".join(str(d) for d in shape) + "]"


def _fmt_type(v: Value | None) -> str:
    if v is None or v.shape is None:
        return "?" + (f" {v.dtype}" if v is not None and v.dtype else "")
    return f"{_fmt_shape(v.shape)} {v.dtype or '?'}"


def _fmt_array(a: np.ndarray) -> str:
    flat = a.reshape(-1)
    if a.dtype.kind == "f":
        items = [fmt_float(float(x)) for x in flat]
    elif a.dtype.kind == "b":
        items = ["true" if x else "false" for x in flat]
    else:
        items = [str(int(x)) for x in flat]
    return items[0] if a.ndim == 0 else "[" + ", ".join(items) + "]"


def _fmt_attr(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return fmt_float(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_attr(x) for x in v) + "]"
    if isinstance(v, np.ndarray):
        return _fmt_array(v)
    return str(v)


class Builder:
    """Builds a :class:`Graph` node by node (front ends, tests)::

        b = Builder()
        x = b.input("x", (1, 8), "f32")
        w = b.const("w", np.ones(8, np.float32))
        y = b.op("mul", [x, w])
        g = b.build([y])
    """

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.consts: dict[str, Const] = {}
        self.values: dict[str, Value] = {}
        self._n = 0

    def fresh(self, stem: str = "v") -> str:
        while True:
            name = f"{stem}{self._n}"
            self._n += 1
            if name not in self.values and name not in self.consts:
                return name

    def input(self, name: str, shape: tuple | None, dtype: str = "f32") -> str:
        v = Value(name, None if shape is None else tuple(shape), dtype)
        self.inputs.append(v)
        self.values[name] = v
        return name

    def const(self, name: str, value: Const) -> str:
        self.consts[name] = value
        return name

    def op(self, op: str, inputs: list[str], *, out: str | list[str] | None = None, name: str = "",
           **attrs: Any) -> str:
        """Add a node; returns its (first) output name. ``out`` defaults to a fresh name."""
        outs = [out] if isinstance(out, str) else list(out) if out else [self.fresh()]
        for o in outs:
            self.values[o] = Value(o)
        self.nodes.append(Node(op, list(inputs), outs, dict(attrs), name or outs[0]))
        return outs[0]

    def build(self, outputs: list[str]) -> Graph:
        return Graph(self.nodes, self.inputs, list(outputs), self.consts, self.values)
