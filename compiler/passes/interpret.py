"""A slow, obviously-correct numpy interpreter for the IR: what every op means.

``evaluate(graph, inputs)`` returns every value of the graph (inputs, constants, node outputs),
for checking a front end against the source model and a pass against the graph it rewrote.
Symbolic dimensions in attributes (``reshape {shape=[4,past_len+1,16]}``) are bound from the
shapes of the actual inputs.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from compiler.ir import ConstMeta, Graph, Node
from compiler.passes.shape_inference import _terms

_NP = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64, "i32": np.int32,
       "i16": np.int16, "i8": np.int8, "u8": np.uint8, "bool": np.bool_}
_erf = np.vectorize(math.erf, otypes=[np.float64])


def evaluate(graph: Graph, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``inputs`` (name -> array); returns name -> array for every value."""
    env: dict[str, np.ndarray] = {}
    syms: dict[str, int] = {}
    for v in graph.inputs:
        arr = np.asarray(inputs[v.name])
        if v.shape is not None:
            if len(v.shape) != arr.ndim:
                raise ValueError(f"input {v.name}: rank {arr.ndim}, graph expects {len(v.shape)}")
            for d, n in zip(v.shape, arr.shape):
                if isinstance(d, str):
                    syms.setdefault(d, n)
        env[v.name] = arr
    for name, c in graph.consts.items():
        if isinstance(c, ConstMeta):
            raise ValueError(f"constant {name} is shape-only; cannot evaluate")
        env[name] = c
    for n in graph.nodes:
        args = [env[i] for i in n.inputs]
        out = _OPS[n.op](n, args, syms)
        env[n.outputs[0]] = np.asarray(out)
    return env


def _dim(d: Any, syms: dict[str, int]) -> int:
    if isinstance(d, int):
        return d
    terms, const = _terms(d)
    try:
        return const + sum(k * syms[s] for s, k in terms.items())
    except KeyError as e:
        raise ValueError(f"symbolic dimension {d!r}: {e.args[0]!r} unbound") from None


def _axes(n: Node, x: np.ndarray) -> tuple[int, ...] | None:
    axes = n.attrs["axes"]
    return None if not axes else tuple(a % x.ndim for a in axes)


def _layernorm(n: Node, a: list, s: dict) -> np.ndarray:
    x = a[0]
    axes = tuple(range(n.attrs["axis"] % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(n.attrs["eps"]))
    if len(a) > 1:
        y = y * a[1]
    if len(a) > 2:
        y = y + a[2]
    return y.astype(x.dtype)


def _rmsnorm(n: Node, a: list, s: dict) -> np.ndarray:
    x = a[0]
    y = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + np.float32(n.attrs["eps"]))
    return (y * a[1] if len(a) > 1 else y).astype(x.dtype)


def _gelu(n: Node, a: list, s: dict) -> np.ndarray:
    x = a[0]
    if n.attrs["approximate"] == "tanh":
        y = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    else:
        y = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    return y.astype(x.dtype)


def _softmax(n: Node, a: list, s: dict) -> np.ndarray:
    x, ax = a[0], n.attrs["axis"]
    if len(a) > 1:  # a sink: one more logit per row in the denominator, no output
        shape = list(x.shape)
        shape[ax] = 1
        x = np.concatenate([x, np.broadcast_to(a[1], shape).astype(x.dtype)], axis=ax)
    e = np.exp(x - x.max(axis=ax, keepdims=True))
    p = e / e.sum(axis=ax, keepdims=True)
    return np.delete(p, -1, axis=ax) if len(a) > 1 else p


def _clamp(n: Node, a: list, s: dict) -> np.ndarray:
    lo, hi = n.attrs["min"], n.attrs["max"]
    return np.clip(a[0], lo, hi).astype(a[0].dtype)


def _gemm(n: Node, a: list, s: dict) -> np.ndarray:
    at = n.attrs
    A = a[0].T if at["trans_a"] else a[0]
    B = a[1].T if at["trans_b"] else a[1]
    y = np.float32(at["alpha"]) * (A @ B)
    if len(a) > 2:
        y = y + np.float32(at["beta"]) * a[2]
    return y


def _linear(n: Node, a: list, s: dict) -> np.ndarray:
    W = a[1].T if n.attrs["w_layout"] == "out_in" else a[1]
    y = a[0] @ W
    return y + a[2] if len(a) > 2 else y


def _slice(n: Node, a: list, s: dict) -> np.ndarray:
    x = a[0]
    idx = [slice(None)] * x.ndim
    at = n.attrs
    for ax, st, en, sp in zip(at["axes"], at["starts"], at["ends"], at["steps"]):
        idx[ax % x.ndim] = slice(_dim(st, s), _dim(en, s), sp)
    return x[tuple(idx)]


def _unsqueeze(n: Node, a: list, s: dict) -> np.ndarray:
    x = a[0]
    rank = x.ndim + len(n.attrs["axes"])
    for ax in sorted(ax % rank for ax in n.attrs["axes"]):
        x = np.expand_dims(x, ax)
    return x


def _expand(n: Node, a: list, s: dict) -> np.ndarray:
    x = a[0]
    target = [_dim(d, s) for d in n.attrs["shape"]]
    pad = [1] * (len(target) - x.ndim) + list(x.shape)
    target = [p if t == -1 else t for p, t in zip(pad, target)]
    return np.broadcast_to(x.reshape(pad), np.broadcast_shapes(tuple(pad), tuple(target)))


_OPS: dict[str, Callable[[Node, list, dict], Any]] = {
    "matmul": lambda n, a, s: np.matmul(a[0], a[1]),
    "gemm": _gemm,
    "linear": _linear,
    "add": lambda n, a, s: a[0] + a[1],
    "sub": lambda n, a, s: a[0] - a[1],
    "mul": lambda n, a, s: a[0] * a[1],
    "div": lambda n, a, s: a[0] / a[1],
    "pow": lambda n, a, s: np.power(a[0], a[1]),
    "sqrt": lambda n, a, s: np.sqrt(a[0]),
    "tanh": lambda n, a, s: np.tanh(a[0]),
    "erf": lambda n, a, s: _erf(a[0]).astype(a[0].dtype),
    "exp": lambda n, a, s: np.exp(a[0]),
    "rsqrt": lambda n, a, s: (1 / np.sqrt(a[0])).astype(a[0].dtype),
    "neg": lambda n, a, s: -a[0],
    "cos": lambda n, a, s: np.cos(a[0]),
    "sin": lambda n, a, s: np.sin(a[0]),
    "sigmoid": lambda n, a, s: (1 / (1 + np.exp(-a[0]))).astype(a[0].dtype),
    "silu": lambda n, a, s: (a[0] / (1 + np.exp(-a[0]))).astype(a[0].dtype),
    "relu": lambda n, a, s: np.maximum(a[0], 0).astype(a[0].dtype),
    "clamp": _clamp,
    "reduce_mean": lambda n, a, s: a[0].mean(axis=_axes(n, a[0]), keepdims=n.attrs["keepdim"]),
    "reduce_max": lambda n, a, s: a[0].max(axis=_axes(n, a[0]), keepdims=n.attrs["keepdim"]),
    "reduce_sum": lambda n, a, s: a[0].sum(axis=_axes(n, a[0]), keepdims=n.attrs["keepdim"]),
    "softmax": _softmax,
    "layernorm": _layernorm,
    "rmsnorm": _rmsnorm,
    "gelu": _gelu,
    "gather": lambda n, a, s: np.take(a[0], a[1], axis=n.attrs["axis"]),
    "select": lambda n, a, s: np.take(a[0], n.attrs["index"], axis=n.attrs["axis"]),
    "concat": lambda n, a, s: np.concatenate(a, axis=n.attrs["axis"]),
    "reshape": lambda n, a, s: a[0].reshape([_dim(d, s) for d in n.attrs["shape"]]),
    "transpose": lambda n, a, s: np.transpose(a[0], n.attrs["perm"]),
    "slice": _slice,
    "unsqueeze": _unsqueeze,
    "squeeze": lambda n, a, s: np.squeeze(a[0], axis=_axes(n, a[0])),
    "expand": _expand,
    "where": lambda n, a, s: np.where(a[0], a[1], a[2]),
    "cast": lambda n, a, s: a[0].astype(_NP[n.attrs["to"]]),
    "constant": lambda n, a, s: np.asarray(n.attrs["value"]),
}
