"""Shape-only ONNX subgraphs, folded at import: ``Shape(x)`` and the integer arithmetic on it.

An exported decode step often computes a reshape target from a tensor's own shape (torch.onnx
writes ``Shape -> Slice -> Concat -> Reshape`` for a reshape whose sizes depend on the cache
length). Here ``Shape(x)`` becomes a vector of dimensions taken from the file's shape
annotations (``value_info``), each an int or a symbolic dimension of the IR (``past_len+1``);
``Slice``, ``Concat``, ``Gather``, ``Unsqueeze``, ``Squeeze``, ``Cast``, ``Add``, ``Sub``,
``Mul``, ``Div``, ``Reshape``, ``ConstantOfShape``, ``Equal`` and ``Where`` on such vectors
(TorchScript's ``expand`` writes ``Where(Equal(shape, -1), 1, shape)``) are evaluated right away.
A vector whose entries all became ints is a plain int64 constant; one with symbols is read by
``Reshape`` / ``Expand`` as a shape with symbolic entries, which the shape inference and the
lowering bind to the decode position.

A file without those annotations (optimum's TorchScript export writes none) is first given them
by :func:`annotate_shapes`: onnx's own shape inference with data propagation, which carries the
inputs' symbolic dimensions (``past_sequence_length + sequence_length``) through the graph; a
dimension it could not express (its ``unk__N``) stays unknown, and the importer derives it from
the IR's own shape rules over what it has imported so far.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compiler.frontends.common import UnsupportedOpError
from compiler.frontends.onnx_common import annotated_shape, int_list, node_inputs
from compiler.passes.shape_inference import _format, _terms

FOLDABLE = ("Shape", "Slice", "Concat", "Gather", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub",
            "Mul", "Div", "Reshape", "ConstantOfShape", "Equal", "Where")


_INT_TYPES = (2, 3, 4, 5, 6, 7, 12, 13)  # ONNX's integer element types (a Cast that stays exact)
_MAX_FILL = 1 << 16  # ConstantOfShape folded up to this many elements


def annotate_shapes(proto: Any) -> None:
    """Add onnx's inferred shapes (``value_info``) for the values of ``proto`` the file leaves
    unannotated, in place; the file's own annotations are kept as they are."""
    import onnx

    g = proto.graph
    known = {vi.name for vi in list(g.value_info) + list(g.input) + list(g.output)}
    known |= {t.name for t in g.initializer}
    if all(o in known for n in g.node for o in n.output if o):
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 - an uninferable file keeps what it had
        return
    for vi in inferred.graph.value_info:
        if vi.name in known:
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param.startswith("unk__"):
                d.ClearField("dim_param")  # onnx's placeholder for "not inferable": unknown
        g.value_info.add().CopyFrom(vi)


def _dim(d: Any) -> Any:
    """An annotated dimension as the IR writes it: an int, or ``past_len+1`` (no spaces)."""
    if isinstance(d, (int, np.integer)):
        return int(d)
    syms, const = _terms(str(d))
    return _format(syms, const)


def _arith(op: str, a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        if op == "Div":
            if b == 0:
                raise ValueError(f"division of a dimension {a} by 0")
            q = abs(a) // abs(b)  # ONNX integer Div truncates toward zero
            return q if (a >= 0) == (b > 0) else -q
        return {"Add": a + b, "Sub": a - b, "Mul": a * b}[op]
    (sa, ca), (sb, cb) = _terms(a), _terms(b)
    if op == "Div":
        if sb or cb == 0 or ca % cb or any(v % cb for v in sa.values()):
            raise ValueError(f"a symbolic dimension {a!r} / {b!r} that is not exact")
        return _format({s: v // cb for s, v in sa.items()}, ca // cb)
    if op == "Mul":
        if sa and sb:
            raise ValueError(f"product of symbolic dimensions {a!r} * {b!r}")
        k, (syms, const) = (cb, (sa, ca)) if sa else (ca, (sb, cb))
        if syms and k != 1:  # the IR's dimensions are sums of symbols (no 2*n)
            raise ValueError(f"a multiple {k} of a symbolic dimension")
        return _format({s: k * v for s, v in syms.items()}, k * const)
    sign = 1 if op == "Add" else -1
    syms = dict(sa)
    for s, v in sb.items():
        syms[s] = syms.get(s, 0) + sign * v
    return _format(syms, ca + sign * cb)


def _equal(a: Any, b: Any) -> bool:
    """``a == b`` for dimensions: decided when both are ints, both the same sum of symbols, or a
    symbol against a negative int (a dimension never is)."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    (sa, ca), (sb, cb) = _terms(a), _terms(b)
    if sa == sb:
        return ca == cb
    if not sa or not sb:
        n = ca if not sa else cb
        if n < 0:
            return False
    raise ValueError(f"whether {a!r} equals {b!r} depends on the past length")


def _constant_of_shape(im: Any, node: Any, a: dict) -> bool:
    """``ConstantOfShape`` of a folded shape of ints: a constant tensor of that shape."""
    from onnx import numpy_helper

    shape = _vector(im, node.input[0])
    if shape is None or not _from_shape(im, [node.input[0]]):
        return False
    if not all(isinstance(v, int) for v in shape.reshape(-1)) or \
            int(np.prod([int(v) for v in shape.reshape(-1)], dtype=np.int64)) > _MAX_FILL:
        return False  # a symbolic or a large size: left to the importer (which refuses it)
    value = a.get("value")
    fill = numpy_helper.to_array(value).reshape(-1) if value is not None else \
        np.zeros(1, np.float32)
    out = np.full([int(v) for v in shape.reshape(-1)], fill[0], dtype=fill.dtype)
    if out.dtype.kind in "iu":
        im.from_shape.add(node.output[0])
    im.b.const(node.output[0], out)
    return True


def _vector(im: Any, name: str) -> np.ndarray | None:
    """The folded value of ``name``: a symbolic vector, an int constant, or None."""
    name = im.name(name)
    if name in im.shape_vals:
        return im.shape_vals[name]
    c = im.b.consts.get(name)
    if isinstance(c, np.ndarray) and c.dtype.kind in "iub":
        return c.astype(np.int64).astype(object)
    return None


def _from_shape(im: Any, ins: list[str]) -> bool:
    """Some input is a folded Shape (or derived from one): int constants otherwise stay ops."""
    return any(im.name(i) in im.from_shape for i in ins)


def _shape_of(im: Any, node: Any, a: dict) -> np.ndarray:
    dims = annotated_shape(im, node.input[0])
    if dims is None or any(d in ("", None) for d in dims):
        raise UnsupportedOpError("onnx", node.op_type, node.name, im.supported_ops,
                                 f"the shape of {node.input[0]!r} is not annotated in the file "
                                 f"and does not follow from the graph inputs' shapes (give "
                                 f"every graph input a shape, static or symbolic)")
    dims = [_dim(d) for d in dims]
    lo, hi = int(a.get("start", 0)), a.get("end")
    return np.array(dims[lo:None if hi is None else int(hi)], dtype=object)


def fold_shape_node(im: Any, node: Any, a: dict) -> bool:
    """Evaluate ``node`` if it is shape-only; True when folded (nothing is emitted)."""
    if node.op_type not in FOLDABLE:
        return False
    ins = node_inputs(node)
    if node.op_type == "Shape":
        out = _shape_of(im, node, a)
    elif node.op_type == "ConstantOfShape":
        return _constant_of_shape(im, node, a)
    else:
        if node.op_type == "Reshape" and _vector(im, ins[0]) is None:
            return False  # a tensor reshaped to a (folded) shape: the importer's Reshape
        symbolic = any(im.name(i) in im.shape_vals for i in ins)
        int_cast = node.op_type != "Cast" or int(a.get("to", 0)) in _INT_TYPES
        int_consts = int_cast and all(
            _vector(im, i) is not None for i in ins)  # exact int arithmetic on a folded shape
        if not symbolic and not (int_consts and _from_shape(im, ins)):
            return False
        vals = [_vector(im, i) for i in ins]
        if any(v is None for v in vals):
            raise UnsupportedOpError("onnx", node.op_type, node.name, im.supported_ops,
                                     "a shape computation mixed with tensor data")
        x = vals[0]
        op = node.op_type
        try:
            if op == "Slice":
                out = x
                starts, ends = int_list(vals[1]), int_list(vals[2])
                axes = int_list(vals[3]) if len(vals) > 3 else list(range(len(starts)))
                steps = int_list(vals[4]) if len(vals) > 4 else [1] * len(starts)
                for ax, s, e, st in zip(axes, starts, ends, steps):
                    idx = [slice(None)] * out.ndim
                    idx[ax] = slice(s, e, st)
                    out = out[tuple(idx)]
            elif op == "Concat":
                out = np.concatenate([v.reshape(-1) if v.ndim == 0 else v for v in vals],
                                     axis=int(a["axis"]))
            elif op == "Gather":
                out = np.take(x, vals[1].astype(np.int64), axis=int(a.get("axis", 0)))
            elif op == "Unsqueeze":
                axes = int_list(vals[1]) if len(vals) > 1 else [int(v) for v in a["axes"]]
                out = np.expand_dims(x, tuple(axes))
            elif op == "Squeeze":
                axes = int_list(vals[1]) if len(vals) > 1 else a.get("axes")
                out = np.squeeze(x, None if axes is None else tuple(int(v) for v in axes))
            elif op == "Cast":
                out = x
            elif op == "Reshape":
                out = x.reshape(int_list(vals[1]))
            elif op == "Equal":
                xa, xb = np.broadcast_arrays(x, vals[1])
                out = np.array([_equal(p, q) for p, q in zip(xa.reshape(-1), xb.reshape(-1))],
                               dtype=object).reshape(xa.shape)
            elif op == "Where":
                c, xa, xb = np.broadcast_arrays(x, vals[1], vals[2])
                out = np.where(c.astype(bool), xa, xb)
            else:  # Add, Sub, Mul with numpy broadcasting
                xa, xb = np.broadcast_arrays(x, vals[1])
                out = np.array([_arith(op, p, q) for p, q in zip(xa.reshape(-1),
                                                                  xb.reshape(-1))],
                               dtype=object).reshape(xa.shape)
        except (ValueError, IndexError, TypeError) as e:
            raise UnsupportedOpError("onnx", node.op_type, node.name, im.supported_ops,
                                     f"shape computation ({e})") from None
    name = node.output[0]
    out = np.asarray(out, dtype=object)  # np.take of a scalar index gives the bare element
    im.from_shape.add(name)
    if node.op_type == "Equal":
        im.b.const(name, out.astype(bool))
    elif all(isinstance(v, int) for v in out.reshape(-1)):
        im.b.const(name, out.astype(np.int64))
    else:
        im.shape_vals[name] = out
    return True
