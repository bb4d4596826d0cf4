"""The ASIC's op table: what every vector op computes and which cost row it is charged to.

One table serves the functional executor (``OPS[op].fn``), the ASIC cycle model and the energy
model (``OPS[op].cost``: the row of ``[asic.op_latency_cyc]`` / ``[asic.op_passes]`` that an
op's program step is named after, see :data:`STEP_OPS`). Ops follow the compiler's IR
vocabulary (numpy / ONNX semantics). Each function takes the ASIC arithmetic (an
:class:`~pimsim.functional.AsicMath`, whose approximations are used where the ASIC has them:
exp, reciprocal, 1/sqrt, tanh-GELU), the argument arrays and the op's attributes, with symbolic
dimensions already resolved for the position.

Data movement (reshape, transpose, slice, concat, ...) is in the table too, with cost ``None``:
it is wiring or addressing on the ASIC, not a pass over the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# program step ops (report keys) an ASIC op is charged to, beyond those of the GPT-2 program
STEP_OPS = ("rmsnorm", "activation", "elementwise", "transcendental")

_NP = {"f32": np.float32, "f16": np.float32, "bf16": np.float32, "f64": np.float32,
       "i64": np.int64, "i32": np.int64, "i16": np.int64, "i8": np.int64, "u8": np.int64,
       "bool": np.bool_}  # the ASIC computes floats in fp32
_erf = np.vectorize(math.erf, otypes=[np.float64])


@dataclass(frozen=True)
class AsicOp:
    """``fn(math, args, attrs) -> array``; ``cost``: the step op (cost row), None for wiring."""

    fn: Callable[[Any, list, dict], np.ndarray]
    cost: str | None


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, np.float32)


def _div(M, a, at):
    x, y = a
    if np.asarray(x).dtype.kind in "iub" and np.asarray(y).dtype.kind in "iub":
        return np.asarray(x) // np.asarray(y)
    y = np.broadcast_to(y, np.broadcast_shapes(np.shape(x), np.shape(y)))
    return (_f32(x) * M.recip(_f32(y))).astype(np.float32)


def _sqrt(M, a, at):
    x = _f32(a[0])
    return np.sqrt(x) if M.exact else (x * M.rsqrt(x)).astype(np.float32)


def _tanh(M, a, at):
    x = _f32(a[0])
    if M.exact:
        return np.tanh(x)
    u = np.clip(x, -10, 10)
    return (np.float32(1) - np.float32(2) * M.recip(M.exp(np.float32(2) * u) + np.float32(1))
            ).astype(np.float32)


def _sigmoid(M, a, at):
    x = _f32(a[0])
    if M.exact:
        return (1 / (1 + np.exp(-x))).astype(np.float32)
    return M.recip(np.float32(1) + M.exp(np.clip(-x, -80, 80))).astype(np.float32)


def _silu(M, a, at):
    return (_f32(a[0]) * _sigmoid(M, a, at)).astype(np.float32)


def _gelu(M, a, at):
    x = _f32(a[0])
    if at["approximate"] == "tanh":
        return M.gelu(x)
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(np.float32)


def _pow(M, a, at):
    x, e = _f32(a[0]), np.asarray(a[1])
    if e.size == 1 and float(e) == 2.0:
        return (x * x).astype(np.float32)
    return np.power(x, _f32(e)).astype(np.float32)


def _norm_axes(x: np.ndarray, axis: int) -> tuple[int, ...]:
    return tuple(range(axis % x.ndim, x.ndim))


def _layernorm(M, a, at):
    x = _f32(a[0])
    shape = x.shape
    flat = x.reshape(-1, int(np.prod(shape[at["axis"] % x.ndim:])))
    w = _f32(a[1]).reshape(-1) if len(a) > 1 else np.ones(flat.shape[1], np.float32)
    b = _f32(a[2]).reshape(-1) if len(a) > 2 else np.zeros(flat.shape[1], np.float32)
    if len(flat) == 1:  # a decode step's one token
        return M.layernorm(flat[0], w, b, at["eps"]).reshape(shape)
    out = np.stack([M.layernorm(r, w, b, at["eps"]) for r in flat])
    return out.reshape(shape)


def _rmsnorm(M, a, at):
    """x * rsqrt(mean(x^2) + eps) * w over the last axis (mean by the reciprocal of n)."""
    x = _f32(a[0])
    n = np.float32(x.shape[-1])
    ms = (x * x).sum(axis=-1, keepdims=True, dtype=np.float32) * M.recip(np.array(n, np.float32))
    y = x * M.rsqrt((ms + np.float32(at["eps"])).astype(np.float32))
    return (y * _f32(a[1]) if len(a) > 1 else y).astype(np.float32)


def _softmax(M, a, at):
    """Softmax along ``axis``; with a second argument, a sink (gpt-oss's attention sinks): one
    more logit per row that joins the max and the denominator and is then dropped."""
    x = np.moveaxis(_f32(a[0]), at["axis"], -1)
    s = x.reshape(-1, x.shape[-1])
    if len(a) > 1:
        ax = at["axis"] % x.ndim
        shape = list(np.shape(a[0]))
        shape[ax] = 1
        sink = np.moveaxis(np.broadcast_to(_f32(a[1]), shape), ax, -1).reshape(-1, 1)
        p = M.softmax(np.concatenate([s, sink], axis=-1))[:, :-1]
        return np.moveaxis(p.reshape(x.shape), -1, ax)
    return np.moveaxis(M.softmax(s).reshape(x.shape), -1, at["axis"])


def _clamp(M, a, at):
    lo, hi = at["min"], at["max"]
    return np.clip(_f32(a[0]), None if lo is None else np.float32(lo),
                   None if hi is None else np.float32(hi)).astype(np.float32)


def _axes(x: np.ndarray, axes) -> tuple[int, ...] | None:
    return None if not axes else tuple(int(ax) % x.ndim for ax in axes)


def _reduce(f):
    def fn(M, a, at):
        x = np.asarray(a[0])
        if f == "mean":
            ax = _axes(x, at["axes"])
            n = x.size if ax is None else int(np.prod([x.shape[i] for i in ax]))
            s = _f32(x).sum(axis=ax, keepdims=at["keepdim"], dtype=np.float32)
            return (s * M.recip(np.array(n, np.float32))).astype(np.float32)
        return getattr(x, f)(axis=_axes(x, at["axes"]), keepdims=at["keepdim"])
    return fn


def _slice(M, a, at):
    x = np.asarray(a[0])
    idx = [slice(None)] * x.ndim
    for ax, st, en, sp in zip(at["axes"], at["starts"], at["ends"], at["steps"]):
        idx[ax % x.ndim] = slice(st, en, sp)
    return x[tuple(idx)]


def _unsqueeze(M, a, at):
    x = np.asarray(a[0])
    rank = x.ndim + len(at["axes"])
    for ax in sorted(ax % rank for ax in at["axes"]):
        x = np.expand_dims(x, ax)
    return x


def _expand(M, a, at):
    x = np.asarray(a[0])
    target = list(at["shape"])
    pad = [1] * (len(target) - x.ndim) + list(x.shape)
    target = [p if t == -1 else t for p, t in zip(pad, target)]
    return np.broadcast_to(x.reshape(pad), np.broadcast_shapes(tuple(pad), tuple(target)))


def _cast(M, a, at):
    return np.asarray(a[0]).astype(_NP[at["to"]])


def _linear(M, a, at):
    W = _f32(a[1]).T if at["w_layout"] == "out_in" else _f32(a[1])
    y = _f32(a[0]) @ W
    return y + _f32(a[2]) if len(a) > 2 else y


def _gemm(M, a, at):
    A = _f32(a[0]).T if at["trans_a"] else _f32(a[0])
    B = _f32(a[1]).T if at["trans_b"] else _f32(a[1])
    y = np.float32(at["alpha"]) * (A @ B)
    return y + np.float32(at["beta"]) * _f32(a[2]) if len(a) > 2 else y


def _binary(f):
    def fn(M, a, at):
        x, y = np.asarray(a[0]), np.asarray(a[1])
        if x.dtype.kind == "f" or y.dtype.kind == "f":
            x, y = _f32(x), _f32(y)
        return f(x, y)
    return fn


OPS: dict[str, AsicOp] = {
    "add": AsicOp(_binary(np.add), "elementwise"),
    "sub": AsicOp(_binary(np.subtract), "elementwise"),
    "mul": AsicOp(_binary(np.multiply), "elementwise"),
    "div": AsicOp(_div, "elementwise"),
    "pow": AsicOp(_pow, "elementwise"),
    "neg": AsicOp(lambda M, a, at: -np.asarray(a[0]), "elementwise"),
    "where": AsicOp(lambda M, a, at: np.where(a[0], a[1], a[2]), "elementwise"),
    "sqrt": AsicOp(_sqrt, "transcendental"),
    "rsqrt": AsicOp(lambda M, a, at: M.rsqrt(_f32(a[0])), "transcendental"),
    "exp": AsicOp(lambda M, a, at: M.exp(_f32(a[0])), "transcendental"),
    "tanh": AsicOp(_tanh, "transcendental"),
    "erf": AsicOp(lambda M, a, at: _erf(_f32(a[0])).astype(np.float32), "transcendental"),
    "cos": AsicOp(lambda M, a, at: np.cos(_f32(a[0])), "transcendental"),
    "sin": AsicOp(lambda M, a, at: np.sin(_f32(a[0])), "transcendental"),
    "sigmoid": AsicOp(_sigmoid, "activation"),
    "silu": AsicOp(_silu, "activation"),
    "relu": AsicOp(lambda M, a, at: np.maximum(_f32(a[0]), np.float32(0)), "activation"),
    "clamp": AsicOp(_clamp, "elementwise"),  # [assumed] one pass: a compare with each bound
    "gelu": AsicOp(_gelu, "gelu"),
    "layernorm": AsicOp(_layernorm, "layernorm"),
    "rmsnorm": AsicOp(_rmsnorm, "rmsnorm"),
    "softmax": AsicOp(_softmax, "softmax"),
    "reduce_mean": AsicOp(_reduce("mean"), "elementwise"),
    "reduce_sum": AsicOp(_reduce("sum"), "elementwise"),
    "reduce_max": AsicOp(_reduce("max"), "elementwise"),
    # products of two activations or of a position vector (rotary frequencies) on the ASIC
    "matmul": AsicOp(lambda M, a, at: np.matmul(_f32(a[0]), _f32(a[1])), "elementwise"),
    "linear": AsicOp(_linear, "elementwise"),
    "gemm": AsicOp(_gemm, "elementwise"),
    "gather": AsicOp(lambda M, a, at: np.take(a[0], np.asarray(a[1]).astype(np.int64),
                                              axis=at["axis"]), "elementwise"),
    # wiring
    "cast": AsicOp(_cast, None),
    "reshape": AsicOp(lambda M, a, at: np.asarray(a[0]).reshape(at["shape"]), None),
    "transpose": AsicOp(lambda M, a, at: np.transpose(a[0], at["perm"]), None),
    "concat": AsicOp(lambda M, a, at: np.concatenate(a, axis=at["axis"]), None),
    "slice": AsicOp(_slice, None),
    "select": AsicOp(lambda M, a, at: np.take(a[0], at["index"], axis=at["axis"]), None),
    "unsqueeze": AsicOp(_unsqueeze, None),
    "squeeze": AsicOp(lambda M, a, at: np.squeeze(a[0], axis=_axes(np.asarray(a[0]), at["axes"])),
                      None),
    "expand": AsicOp(_expand, None),
    "constant": AsicOp(lambda M, a, at: np.asarray(at["value"]), None),
    # mixture of experts (pimsim.moe): the router's scores, top-k and normalisation over the
    # E gate outputs, charged as a softmax of E elements [assumed: one exp pass and the
    # top-k's compares within the softmax's max and sum passes]; an expert's input (wiring)
    # and its output times its routing weight
    "moe_route": AsicOp(lambda M, a, at: _moe_route(M, a, at), "softmax"),
    "expert_in": AsicOp(lambda M, a, at: np.asarray(a[0]), None),
    # a sliding-window attention's query (wiring: the window is the KV ring's, pimsim.isa)
    "attn_window": AsicOp(lambda M, a, at: np.asarray(a[0]), None),
    "expert_out": AsicOp(lambda M, a, at: (_f32(a[0]) * _f32(a[1])[..., at["expert"]:at["expert"] + 1]
                                           ).astype(np.float32), "elementwise"),
}


def _moe_route(M, a, at):
    from pimsim.moe import route

    return route(M, a[0], a[1] if len(a) > 1 else None, at)
