"""ONNX -> IR: one IR node per ONNX node, constants hoisted into ``Graph.consts``.

``import_onnx(path_or_proto)`` reads a model (a path, with any external-data files beside it, or
an ``onnx.ModelProto``) and maps each node through :data:`ONNX_OPS`. Inputs that ONNX passes as
tensors but that are compile-time parameters (Reshape's shape, Unsqueeze's axes, Slice's bounds,
a scalar Gather index) become node attributes. Initializers and ``Constant`` nodes become
constants: float arrays are stored as float32, integer arrays as int64. With ``weights=False``
large float initializers are kept as shape-only :class:`~compiler.ir.ConstMeta` (external data is
then never read), which is enough for timing.

Value names are the ONNX tensor names; intermediate shapes are left to the shape-inference pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Callable

import numpy as np

from compiler.frontends.common import UnsupportedOpError, as_const_array, f32_attr
from compiler.frontends.onnx_common import annotated_shape, int_list, node_inputs
from compiler.frontends.onnx_shapes import fold_shape_node
from compiler.ir import Builder, ConstMeta, Graph, Node
from compiler.passes.interpret import _OPS
from compiler.passes.shape_inference import IncrementalShapes

_ONNX_DTYPES = {1: "f32", 2: "u8", 3: "i8", 5: "i16", 6: "i32", 7: "i64", 9: "bool", 10: "f16",
                11: "f64", 16: "bf16"}
_FOLD_MAX = 64  # ops on constants of at most this many elements are evaluated at import
_KEEP_WITHOUT_WEIGHTS = 16  # weights=False still materialises constants up to this many elements


def import_onnx(model_or_path: Any, *, weights: bool = True, base_dir: str | None = None,
                owned: bool = False) -> Graph:
    """Import an ONNX model (``onnx.ModelProto`` or a path) into the IR.

    ``base_dir``: where the external-data files of a ``ModelProto`` live (a path argument
    implies its own directory). ``weights=False``: float tensors larger than 16 elements become
    shape-only ``ConstMeta`` and external data is not loaded. ``owned``: the ``ModelProto`` is
    the caller's own copy (read from a file), which the import may rewrite in place.
    """
    import onnx

    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        proto = onnx.load(path, load_external_data=False)
        base_dir = base_dir or os.path.dirname(os.path.abspath(path))
    elif isinstance(model_or_path, onnx.ModelProto):
        proto = model_or_path
    else:
        raise TypeError(f"import_onnx takes an onnx.ModelProto or a path, got {type(model_or_path)!r}")
    from compiler.frontends.onnx_optimum import rewrite_hf_decode
    from compiler.frontends.onnx_shapes import annotate_shapes

    # the Hugging Face / optimum layout -> pimsim's (a file read here is rewritten in place)
    proto = rewrite_hf_decode(proto, inplace=owned or isinstance(model_or_path, (str, os.PathLike)))
    annotate_shapes(proto)  # a file without shape annotations gets onnx's inferred ones
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=17)
    from compiler.frontends.onnx_rewrites import move_scalar_scale_off_matmul_rhs

    return move_scalar_scale_off_matmul_rhs(_Importer(proto.graph, opset, weights, base_dir).run())


class _Importer:
    def __init__(self, graph: Any, opset: int, weights: bool, base_dir: str | None) -> None:
        self.g = graph
        self.opset = opset
        self.weights = weights
        self.base_dir = base_dir
        self.b = Builder()
        self.alias: dict[str, str] = {}
        self.shape_vals: dict[str, np.ndarray] = {}  # symbolic shape vectors (onnx_shapes)
        self.from_shape: set[str] = set()  # values folded from a Shape (onnx_shapes)
        self.shapes = IncrementalShapes(self.b)  # shapes the file does not annotate

    # ---- constants -----------------------------------------------------------------------

    def _tensor(self, t: Any) -> np.ndarray | ConstMeta:
        from onnx import numpy_helper
        from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

        dtype = _ONNX_DTYPES.get(t.data_type)
        if dtype is None:
            raise ValueError(f"ONNX tensor {t.name!r}: element type {t.data_type} unsupported")
        shape = tuple(int(d) for d in t.dims)
        size = int(np.prod(shape, dtype=np.int64))
        is_float = dtype in ("f32", "f16", "bf16", "f64")
        if not self.weights and is_float and size > _KEEP_WITHOUT_WEIGHTS:
            return ConstMeta(shape, "f32")
        if uses_external_data(t):
            if self.base_dir is None:
                raise ValueError(f"ONNX tensor {t.name!r} is stored in an external file; pass "
                                 f"base_dir= (or a path) so it can be read")
            from onnx import TensorProto
            t2 = TensorProto()
            t2.CopyFrom(t)
            load_external_data_for_tensor(t2, self.base_dir)
            t = t2
        return as_const_array(numpy_helper.to_array(t))

    def const_array(self, name: str, node: Any, what: str) -> np.ndarray:
        name = self.alias.get(name, name)
        if name in self.shape_vals:  # a shape with symbolic entries (Reshape, Expand)
            return self.shape_vals[name]
        c = self.b.consts.get(name)
        if not isinstance(c, np.ndarray):
            raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                     f"{what} must be a constant")
        return c

    def name(self, x: str) -> str:
        return self.alias.get(x, x)

    @property
    def supported_ops(self) -> Iterable[str]:
        """The ONNX op types the importer maps (an unsupported-op error names them)."""
        return ONNX_OPS

    # ---- driver --------------------------------------------------------------------------

    def run(self) -> Graph:
        init_names = set()
        for t in self.g.initializer:
            self.b.const(t.name, self._tensor(t))
            init_names.add(t.name)
        for vi in self.g.input:
            if vi.name in init_names:
                continue
            tt = vi.type.tensor_type
            dims: list[int | str] = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                else:
                    dims.append(d.dim_param or f"{vi.name}_d{i}")
            shape = tuple(dims) if tt.HasField("shape") else None  # no shape: unknown, not scalar
            self.b.input(vi.name, shape, _ONNX_DTYPES.get(tt.elem_type, "?"))
        for idx, node in enumerate(self.g.node):
            if not node.name:
                node.name = f"{node.op_type}_{idx}"
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedOpError("onnx", f"{node.domain}::{node.op_type}", node.name, ONNX_OPS)
            attrs = _attrs(node)
            if fold_shape_node(self, node, attrs):
                continue
            handler = ONNX_OPS.get(node.op_type)
            if handler is None:
                raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS)
            handler(self, node, attrs)
        outputs = [self.name(o.name) for o in self.g.output]
        return self.b.build(outputs).prune().verify()

    def emit(self, op: str, node: Any, inputs: list[str], n_out: int = 1, **attrs: Any) -> None:
        outs = [o for o in list(node.output)[:n_out]]
        ins = [self.name(i) for i in inputs]
        if n_out == 1 and self._fold(op, ins, outs[0], attrs):
            return
        self.b.op(op, ins, out=outs, name=node.name, **attrs)

    def _fold(self, op: str, ins: list[str], out: str, attrs: dict) -> bool:
        """An op on small constants only (a scale computed from a folded shape:
        ``Sqrt(Cast(d_head))``) becomes a constant, evaluated as the IR interpreter defines it."""
        vals = [self.b.consts.get(i) for i in ins]
        if not ins or op not in _OPS or not all(
                isinstance(v, np.ndarray) and v.size <= _FOLD_MAX for v in vals):
            return False
        if op == "div" and any(v.dtype.kind in "iub" for v in vals):
            return False  # integer Div truncates; the IR's div is true division
        try:
            with np.errstate(all="ignore"):
                value = np.asarray(_OPS[op](Node(op, ins, [out], dict(attrs), out), vals, {}))
        except (ValueError, TypeError, KeyError, IndexError):
            return False  # e.g. a symbolic dimension in an attribute: left as an op
        if value.size > _FOLD_MAX:
            return False
        if any(i in self.from_shape for i in ins) and value.dtype.kind in "iu":
            self.from_shape.add(out)
        self.b.const(out, value)
        return True


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


def _dims(xs: Any) -> list:
    """A shape operand: ints, and symbolic dimensions (``past_len+1``) from a folded Shape."""
    return [x if isinstance(x, str) else int(x) for x in np.asarray(xs).reshape(-1)]


# ---- handlers: ONNX op type -> IR ------------------------------------------------------------

Handler = Callable[[_Importer, Any, dict], None]


def _binary(op: str) -> Handler:
    def h(im: _Importer, node: Any, a: dict) -> None:
        im.emit(op, node, node_inputs(node))
    return h


def _unary(op: str) -> Handler:
    return _binary(op)


def _split(im: _Importer, node: Any, a: dict) -> None:
    """Split with explicit sizes (the ``split`` input or attribute): one slice per output."""
    ins = node_inputs(node)
    if len(ins) > 1:
        sizes = int_list(im.const_array(ins[1], node, "split"))
    elif "split" in a:
        sizes = [int(x) for x in a["split"]]
    else:  # equal parts (num_outputs): the axis length from the file's shape annotations
        axis = int(a.get("axis", 0))
        dims = annotated_shape(im, ins[0])
        n = int(a.get("num_outputs", len(node.output)))
        if dims is None or not isinstance(dims[axis], int):
            raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                     "equal split of an axis of unknown length")
        step = -(-dims[axis] // n)
        sizes = [min(step, dims[axis] - k * step) for k in range(n)]
    axis, lo = int(a.get("axis", 0)), 0
    for out, sz in zip(node.output, sizes):
        if out:
            im.b.op("slice", [im.name(ins[0])], out=out, name=node.name, axes=[axis],
                    starts=[lo], ends=[lo + sz], steps=[1])
        lo += sz


def _reciprocal(im: _Importer, node: Any, a: dict) -> None:
    one = f"{node.output[0]}.one"
    im.b.const(one, np.array(1.0, np.float32))
    im.emit("div", node, [one] + node_inputs(node))


def _constant(im: _Importer, node: Any, a: dict) -> None:
    out = node.output[0]
    if "value" in a:
        im.b.const(out, im._tensor(a["value"]))
    elif "value_float" in a:
        im.b.const(out, np.array(a["value_float"], np.float32))
    elif "value_floats" in a:
        im.b.const(out, np.array(a["value_floats"], np.float32))
    elif "value_int" in a:
        im.b.const(out, np.array(a["value_int"], np.int64))
    elif "value_ints" in a:
        im.b.const(out, np.array(a["value_ints"], np.int64))
    else:
        raise UnsupportedOpError("onnx", "Constant", node.name, ONNX_OPS,
                                 f"attribute {sorted(a)} unsupported")


def _identity(im: _Importer, node: Any, a: dict) -> None:
    im.alias[node.output[0]] = im.name(node.input[0])


def _gemm(im: _Importer, node: Any, a: dict) -> None:
    im.emit("gemm", node, node_inputs(node), alpha=f32_attr(a.get("alpha", 1.0)),
            beta=f32_attr(a.get("beta", 1.0)), trans_a=int(a.get("transA", 0)),
            trans_b=int(a.get("transB", 0)))


def _axes(im: _Importer, node: Any, ins: list[str], a: dict) -> list[int] | None:
    """Axes from the second input (opset >= 13/18) or the ``axes`` attribute; None if absent."""
    if len(ins) > 1:
        return int_list(im.const_array(ins[1], node, "axes"))
    return [int(x) for x in a["axes"]] if "axes" in a else None


def _reduce(op: str) -> Handler:
    def h(im: _Importer, node: Any, a: dict) -> None:
        ins = node_inputs(node)
        axes = _axes(im, node, ins, a)
        if axes is None and a.get("noop_with_empty_axes", 0):
            raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS, "noop_with_empty_axes")
        im.emit(op, node, ins[:1], axes=axes, keepdim=bool(a.get("keepdims", 1)))
    return h


def _softmax(im: _Importer, node: Any, a: dict) -> None:
    default = -1 if im.opset >= 13 else 1
    if im.opset < 13:
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                 f"opset {im.opset} < 13 (2-D coerced softmax)")
    im.emit("softmax", node, node_inputs(node), axis=int(a.get("axis", default)))


def _layernorm(im: _Importer, node: Any, a: dict) -> None:
    im.emit("layernorm", node, node_inputs(node), axis=int(a.get("axis", -1)),
            eps=f32_attr(a.get("epsilon", 1e-5)))


def _gelu(im: _Importer, node: Any, a: dict) -> None:
    im.emit("gelu", node, node_inputs(node), approximate=str(a.get("approximate", "none")))


def _gather(im: _Importer, node: Any, a: dict) -> None:
    data, idx = node_inputs(node)
    axis = int(a.get("axis", 0))
    c = im.b.consts.get(im.name(idx))
    if isinstance(c, np.ndarray) and c.ndim == 0:
        im.emit("select", node, [data], axis=axis, index=int(c))
    else:
        im.emit("gather", node, [data, idx], axis=axis)


def _gather_nd(im: _Importer, node: Any, a: dict) -> None:
    """GatherND with ``batch_dims`` 0 and one index per row (``indices[..., 1]``), as torch.onnx
    writes advanced indexing on the first axis: GPT-J's ``embed_positions[position]`` (a constant
    table, runtime indices) becomes ``gather(table, squeeze(indices, -1), axis 0)``; Falcon's
    ``x[[-2]]`` (constant indices, one row or a run of consecutive rows) a slice of axis 0."""
    data, idx = node_inputs(node)
    if int(a.get("batch_dims", 0)) != 0:
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                 f"batch_dims={a['batch_dims']} (only 0)")
    out = node.output[0]
    c = im.b.consts.get(im.name(idx))
    if isinstance(c, ConstMeta) or (c is None and _annotated_rank_last(im, idx) not in (1, None)):
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                 "indices whose last axis is not 1")
    if c is None:  # runtime indices
        flat = f"{out}.index"
        im.b.op("squeeze", [im.name(idx)], out=flat, name=node.name, axes=[-1])
        im.b.op("gather", [im.name(data), flat], out=out, name=node.name, axis=0)
        return
    c = np.asarray(c)
    if c.ndim == 0 or c.shape[-1] != 1:
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                 f"indices of shape {list(c.shape)} (last axis must be 1)")
    rows, lead = [int(v) for v in c.reshape(-1)], c.shape[:-1]
    if len(lead) == 0:
        im.b.op("select", [im.name(data)], out=out, name=node.name, axis=0, index=rows[0])
        return
    consecutive = all(r == rows[0] + k for k, r in enumerate(rows)) and \
        (rows[0] >= 0 or rows[-1] < 0) and int(np.prod(lead[1:], dtype=np.int64)) == 1
    if not consecutive:
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                 f"constant indices {rows[:8]} (only consecutive rows)")
    end = rows[-1] + 1 if rows[-1] != -1 else _INT64_MAX
    sliced = out if len(lead) == 1 else f"{out}.rows"
    im.b.op("slice", [im.name(data)], out=sliced, name=node.name, axes=[0], starts=[rows[0]],
            ends=[end], steps=[1])
    if len(lead) > 1:  # indices [n, 1, ..., 1]: the extra unit axes after the first
        im.b.op("unsqueeze", [sliced], out=out, name=node.name,
                axes=list(range(1, len(lead))))


def _annotated_rank_last(im: _Importer, name: str) -> int | None:
    dims = annotated_shape(im, name)
    return dims[-1] if dims and isinstance(dims[-1], int) else None


_INT64_MAX = (1 << 63) - 1


def _concat(im: _Importer, node: Any, a: dict) -> None:
    im.emit("concat", node, node_inputs(node), axis=int(a["axis"]))


def _gather_elements(im: _Importer, node: Any, a: dict) -> None:
    """GatherElements whose indices are one index per position along ``axis``, broadcast over the
    other axes (TorchScript's ``torch.gather(table, 1, pos.unsqueeze(-1).repeat(1, 1, d))`` for
    GPT-J's rotary table): a plain ``gather`` of those indices along ``axis``. The broadcast is
    found by walking the indices back through ``expand``, repeated ``concat`` (Tile), ``cast``
    and ``unsqueeze`` to a tensor of size 1 on every other axis."""
    data, idx = (im.name(x) for x in node_inputs(node))
    axis = int(a.get("axis", 0))
    prod = {o: n for n in im.b.nodes for o in n.outputs}
    d_shape, i_shape = im.shapes.shape(data), im.shapes.shape(idx)
    why = "indices that are not one index per position broadcast over the other axes"
    if d_shape is None or i_shape is None or len(d_shape) != len(i_shape):
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS, why)
    axis %= len(d_shape)
    if any(i_shape[k] != d_shape[k] for k in range(len(d_shape)) if k != axis):
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                 f"indices {list(i_shape)} smaller than the data {list(d_shape)} "
                                 f"off the gather axis")
    src = idx
    while True:
        sh = im.shapes.shape(src)
        if sh is not None and all(d == 1 for k, d in enumerate(sh) if k != axis):
            break
        n = prod.get(src)
        if n is None or not (n.op in ("expand", "cast") or
                             (n.op == "concat" and len(set(n.inputs)) == 1)):
            raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS, why)
        if n.op == "concat" and n.attrs["axis"] % len(i_shape) == axis:
            raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS, why)
        src = n.inputs[0]
    if len(sh) != len(i_shape) or sh[axis] != i_shape[axis]:
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS, why)
    flat = f"{node.output[0]}.index"
    im.b.op("reshape", [src], out=flat, name=f"{node.name}.index", shape=[-1])
    im.b.op("gather", [data, flat], out=node.output[0], name=node.name, axis=axis)


def _tile(im: _Importer, node: Any, a: dict) -> None:
    """Tile with constant repeats: the input concatenated with itself along each repeated axis
    (GPT-J's interleaved rotary tables)."""
    data, reps_name = node_inputs(node)
    reps = int_list(im.const_array(reps_name, node, "the repeats"))
    cur = im.name(data)
    todo = [(ax, r) for ax, r in enumerate(reps) if r != 1]
    if any(r < 1 for _, r in todo):
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                 f"repeats {reps} (a repeat below 1)")
    if not todo:
        im.alias[node.output[0]] = cur
        return
    for k, (ax, r) in enumerate(todo):
        out = node.output[0] if k == len(todo) - 1 else f"{node.output[0]}.tile{ax}"
        im.b.op("concat", [cur] * r, out=out, name=f"{node.name}" if out == node.output[0]
                else f"{node.name}.axis{ax}", axis=ax)
        cur = out


def _reshape(im: _Importer, node: Any, a: dict) -> None:
    data, shape_name = node_inputs(node)
    shape = _dims(im.const_array(shape_name, node, "the target shape"))
    if 0 in shape and not a.get("allowzero", 0):
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                 "0 (copy the input dimension) in the target shape")
    im.emit("reshape", node, [data], shape=shape)


def _transpose(im: _Importer, node: Any, a: dict) -> None:
    if "perm" not in a:
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS, "no perm attribute")
    im.emit("transpose", node, node_inputs(node), perm=[int(p) for p in a["perm"]])


def _axes_op(op: str) -> Handler:
    def h(im: _Importer, node: Any, a: dict) -> None:
        ins = node_inputs(node)
        axes = _axes(im, node, ins, a)
        if axes is None and op == "unsqueeze":
            raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS, "no axes")
        im.emit(op, node, ins[:1], axes=axes)
    return h


def _slice(im: _Importer, node: Any, a: dict) -> None:
    ins = node_inputs(node)
    if im.opset < 10:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = int_list(im.const_array(ins[1], node, "starts"))
        ends = int_list(im.const_array(ins[2], node, "ends"))
        axes = int_list(im.const_array(ins[3], node, "axes")) if len(ins) > 3 else list(range(len(starts)))
        steps = int_list(im.const_array(ins[4], node, "steps")) if len(ins) > 4 else [1] * len(starts)
    im.emit("slice", node, ins[:1], axes=axes, starts=starts, ends=ends, steps=steps)


def _expand(im: _Importer, node: Any, a: dict) -> None:
    data, shape_name = node_inputs(node)
    im.emit("expand", node, [data], shape=_dims(im.const_array(shape_name, node, "the shape")))


def _shape(im: _Importer, node: Any, a: dict) -> None:
    fold_shape_node(im, node, a)  # folded before dispatch; this entry names Shape as supported


def _cast(im: _Importer, node: Any, a: dict) -> None:
    to = _ONNX_DTYPES.get(int(a["to"]))
    if to is None:
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS, f"to={a['to']}")
    im.emit("cast", node, node_inputs(node), to=to)


ONNX_OPS: dict[str, Handler] = {
    "Add": _binary("add"), "Sub": _binary("sub"), "Mul": _binary("mul"), "Div": _binary("div"),
    "Pow": _binary("pow"), "Sqrt": _unary("sqrt"), "Tanh": _unary("tanh"), "Erf": _unary("erf"),
    "Exp": _unary("exp"), "Neg": _unary("neg"), "Cos": _unary("cos"), "Sin": _unary("sin"),
    "Sigmoid": _unary("sigmoid"), "Relu": _unary("relu"), "Reciprocal": _reciprocal,
    "Split": _split,
    "MatMul": _binary("matmul"), "Gemm": _gemm,
    "ReduceMean": _reduce("reduce_mean"), "ReduceMax": _reduce("reduce_max"),
    "ReduceSum": _reduce("reduce_sum"), "Softmax": _softmax, "LayerNormalization": _layernorm,
    "Gelu": _gelu, "Gather": _gather, "GatherND": _gather_nd, "Concat": _concat,
    "Reshape": _reshape,
    "Transpose": _transpose, "Slice": _slice, "Unsqueeze": _axes_op("unsqueeze"),
    "Squeeze": _axes_op("squeeze"), "Expand": _expand, "Where": _binary("where"), "Cast": _cast,
    "Tile": _tile,
    "GatherElements": _gather_elements,
    "Constant": _constant, "Identity": _identity, "Shape": _shape,
}
