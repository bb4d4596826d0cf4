"""Shape-only ONNX subgraphs, folded at import: ``Shape(x)`` and the integer arithmetic on it.

An exported decode step often computes a reshape target from a tensor's own shape (torch.onnx
writes ``Shape -> Slice -> Concat -> Reshape`` for a reshape whose sizes depend on the cache
length). Here ``Shape(x)`` becomes a vector of dimensions taken from the file's shape
annotations (``value_info``), each an int or a symbolic dimension of the IR (``past_len+1``);
``Slice``, ``Concat``, ``Gather``, ``Unsqueeze``, ``Squeeze``, ``Cast``, ``Add``, ``Sub`` and
``Mul`` on such vectors are evaluated right away. A vector whose entries all became ints is a
plain int64 constant; one with symbols is read by ``Reshape`` / ``Expand`` as a shape with
symbolic entries, which the shape inference and the lowering bind to the decode position.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compiler.frontends.common import UnsupportedOpError
from compiler.passes.shape_inference import _format, _terms

FOLDABLE = ("Shape", "Slice", "Concat", "Gather", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub",
            "Mul")


def _dim(d: Any) -> Any:
    """An annotated dimension as the IR writes it: an int, or ``past_len+1`` (no spaces)."""
    if isinstance(d, (int, np.integer)):
        return int(d)
    syms, const = _terms(str(d))
    return _format(syms, const)


def _arith(op: str, a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        return {"Add": a + b, "Sub": a - b, "Mul": a * b}[op]
    (sa, ca), (sb, cb) = _terms(a), _terms(b)
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
    from compiler.frontends.onnx_frontend import ONNX_OPS, _annotated_shape

    dims = _annotated_shape(im, node.input[0])
    if dims is None or any(d in ("", None) for d in dims):
        raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                 f"the shape of {node.input[0]!r} is not annotated in the file "
                                 f"(run onnx.shape_inference.infer_shapes on it first)")
    dims = [_dim(d) for d in dims]
    lo, hi = int(a.get("start", 0)), a.get("end")
    return np.array(dims[lo:None if hi is None else int(hi)], dtype=object)


def fold_shape_node(im: Any, node: Any, a: dict) -> bool:
    """Evaluate ``node`` if it is shape-only; True when folded (nothing is emitted)."""
    from compiler.frontends.onnx_frontend import ONNX_OPS, _inputs, _ints

    if node.op_type not in FOLDABLE:
        return False
    ins = _inputs(node)
    if node.op_type == "Shape":
        out = _shape_of(im, node, a)
    else:
        symbolic = any(im.name(i) in im.shape_vals for i in ins)
        int_consts = node.op_type != "Cast" and all(
            _vector(im, i) is not None for i in ins)  # exact int arithmetic on a folded shape
        if not symbolic and not (int_consts and _from_shape(im, ins)):
            return False
        vals = [_vector(im, i) for i in ins]
        if any(v is None for v in vals):
            raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                     "a shape computation mixed with tensor data")
        x = vals[0]
        op = node.op_type
        try:
            if op == "Slice":
                out = x
                starts, ends = _ints(vals[1]), _ints(vals[2])
                axes = _ints(vals[3]) if len(vals) > 3 else list(range(len(starts)))
                steps = _ints(vals[4]) if len(vals) > 4 else [1] * len(starts)
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
                axes = _ints(vals[1]) if len(vals) > 1 else [int(v) for v in a["axes"]]
                out = np.expand_dims(x, tuple(axes))
            elif op == "Squeeze":
                axes = _ints(vals[1]) if len(vals) > 1 else a.get("axes")
                out = np.squeeze(x, None if axes is None else tuple(int(v) for v in axes))
            elif op == "Cast":
                out = x
            else:  # Add, Sub, Mul with numpy broadcasting
                xa, xb = np.broadcast_arrays(x, vals[1])
                out = np.array([_arith(op, p, q) for p, q in zip(xa.reshape(-1),
                                                                  xb.reshape(-1))],
                               dtype=object).reshape(xa.shape)
        except (ValueError, IndexError, TypeError) as e:
            raise UnsupportedOpError("onnx", node.op_type, node.name, ONNX_OPS,
                                     f"shape computation ({e})") from None
    name = node.output[0]
    out = np.asarray(out, dtype=object)  # np.take of a scalar index gives the bare element
    im.from_shape.add(name)
    if all(isinstance(v, int) for v in out.reshape(-1)):
        im.b.const(name, out.astype(np.int64))
    else:
        im.shape_vals[name] = out
    return True
