"""Functional model: the real numbers that flow through a decode-step Program.

Defines what every instruction computes:

* DRAM banks hold bf16 (or fp16) values (:class:`MemoryImage`: ``[channel, bank, row, element]``,
  stored as their 16-bit patterns), put exactly where the mapping placed them; the functional
  executor reads weights only from there.
* The global buffer holds a bf16 copy of the broadcast vector (zero-padded to whole columns).
* An all-bank MAC command multiplies a column's lanes bf16 x bf16 (exact in fp32), sums the
  products in a binary adder tree (fp32) and adds that to the accumulator in the configured
  accumulator precision (fp32, or bf16 with rounding after every column); RD_MAC returns the
  accumulator rounded to the data type. The bank MAC units are numba kernels that sum every
  accumulator in a fixed order (deterministic with any thread count).
* The ASIC computes in fp32 with add/multiply only, as PIM-GPT's ASIC does: exp by a Taylor
  series (with range reduction by squaring), tanh-GELU through that exp, division by a
  Newton-Raphson reciprocal, 1/sqrt(x) by the fast inverse square root plus Newton steps. Each
  approximation can be switched to exact math (:class:`AsicMath`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from pimsim import asic_kernels
from pimsim.asic_kernels import exp_series, recip_newton, rsqrt_newton
from pimsim.config import HwConfig
from pimsim.isa import MatrixLayout, Program, window_pos

# ---------------------------------------------------------------- number formats


def to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bf16 (ties to even), returned as float32."""
    x = np.ascontiguousarray(x, np.float32)
    bits = x.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    out = rounded.view(np.float32)
    return np.where(np.isnan(x), x, out)


def to_fp16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def rounder(dtype: str):
    return {"bf16": to_bf16, "fp16": to_fp16, "fp32": lambda x: np.asarray(x, np.float32)}[dtype]


# ---------------------------------------------------------------- ASIC arithmetic


def _vec(v, n: int) -> np.ndarray:
    """A layernorm's weight or bias as a contiguous fp32 vector of ``n``."""
    if isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == (n,) and v.flags.c_contiguous:
        return v
    return np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float32), (n,)))


@dataclass(frozen=True)
class AsicMath:
    """How the ASIC evaluates its non-linear functions (approximate by default, as PIM-GPT)."""

    exp_terms: int = 8
    recip_steps: int = 3
    rsqrt_steps: int = 2
    exact: bool = False

    @classmethod
    def from_config(cls, cfg: HwConfig, exact: bool = False) -> "AsicMath":
        a = cfg.asic
        return cls(a.exp_taylor_terms, a.recip_newton_steps, a.rsqrt_newton_steps, exact)

    def exp(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.exact:
            return np.exp(x)
        return exp_series(x, self.exp_terms)

    def recip(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.exact:
            return (1.0 / x).astype(np.float32)
        return recip_newton(x, self.recip_steps)

    def rsqrt(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.exact:
            return (1.0 / np.sqrt(x)).astype(np.float32)
        return rsqrt_newton(x, self.rsqrt_steps)  # the fast inverse square root, Newton steps

    def layernorm(self, x, w, b, eps: float) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if not self.exact and x.ndim == 1:  # fused, the same arithmetic (pimsim.asic_kernels)
            return asic_kernels.layernorm(np.ascontiguousarray(x), _vec(w, x.size),
                                          _vec(b, x.size), np.float32(eps), self.recip_steps,
                                          self.rsqrt_steps)
        n = np.float32(x.shape[-1])
        mean = x.sum(dtype=np.float32) * self.recip(np.array(n, np.float32))
        xc = x - mean
        var = (xc * xc).sum(dtype=np.float32) * self.recip(np.array(n, np.float32))
        return (xc * self.rsqrt(np.asarray(var + np.float32(eps), np.float32)) * w + b).astype(np.float32)

    def softmax(self, s: np.ndarray) -> np.ndarray:
        """Row-wise softmax of scores [heads, tokens]."""
        s = np.asarray(s, np.float32)
        if not self.exact and s.ndim == 2:
            return asic_kernels.softmax(np.ascontiguousarray(s), self.exp_terms, self.recip_steps)
        e = self.exp(s - s.max(axis=-1, keepdims=True))
        return (e * self.recip(e.sum(axis=-1, keepdims=True, dtype=np.float32))).astype(np.float32)

    def gelu(self, x: np.ndarray) -> np.ndarray:
        """tanh-form GELU; tanh(u) = 1 - 2 / (exp(2u) + 1)."""
        x = np.asarray(x, np.float32)
        if not self.exact:  # fused, the same arithmetic (pimsim.asic_kernels)
            return asic_kernels.gelu_tanh(np.ascontiguousarray(x), self.exp_terms, self.recip_steps)
        u = np.float32(np.sqrt(2 / np.pi)) * (x + np.float32(0.044715) * x * x * x)
        if self.exact:
            t = np.tanh(u)
        else:
            u = np.clip(u, -10, 10)  # tanh is +-1 to fp32 precision beyond this
            t = np.float32(1) - np.float32(2) * self.recip(self.exp(np.float32(2) * u) + np.float32(1))
        return (np.float32(0.5) * x * (np.float32(1) + t)).astype(np.float32)


# ---------------------------------------------------------------- DRAM contents

_FORMATS = {"fp32": 0, "bf16": 1, "fp16": 2}  # number-format codes the kernels take
_FP16_TO_FP32 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values -> the 16-bit patterns of ``dtype`` (rounded to nearest, ties to even)."""
    if dtype == "bf16":
        return (to_bf16(x).view(np.uint32) >> 16).astype(np.uint16)
    if dtype == "fp16":
        return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)
    raise ValueError(f"DRAM images hold 16-bit data, not {dtype!r}")


def decode(bits: np.ndarray, dtype: str) -> np.ndarray:
    """16-bit patterns of ``dtype`` -> float32 values (exact)."""
    bits = np.asarray(bits, np.uint16)
    if dtype == "bf16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return _FP16_TO_FP32[bits]


ALIGN_BYTES = 4096  # an image starts on a page: its rows on whole cache lines


def aligned_zeros(shape: tuple[int, ...], dtype=np.uint16, align: int = ALIGN_BYTES) -> np.ndarray:
    """A zeroed C-contiguous array starting at a multiple of ``align`` bytes. numpy's own
    allocation starts 16 bytes into a page, so a bank row (2 KiB) straddles a cache line more
    than it fills one, and the MAC kernels read (measured) half as fast."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(n + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + n].view(dtype).reshape(shape)


class MemoryImage:
    """What every bank of every channel holds, as the 16-bit patterns of the data type:
    ``bits[ch, bank, row, element]`` (``data[ch]`` is channel ``ch``'s ``[bank, row, element]``
    view); rows ``0 .. rows_used[ch]-1`` of channel ``ch`` are the used ones."""

    def __init__(self, channels: int, banks: int, rows_used: list[int], row_elems: int,
                 dtype: str = "bf16"):
        if row_elems % 2:
            raise ValueError(f"rows of {row_elems} elements: the MAC kernels need an even count")
        self.dtype = dtype
        self.rows_used = list(rows_used[:channels])
        self.bits = aligned_zeros((channels, banks, max(self.rows_used), row_elems))
        self.data = [self.bits[c] for c in range(channels)]
        self.words = self.bits.view(np.uint32)  # two elements per word, for the MAC kernels
        self.round = rounder(dtype)
        self.fmt = _FORMATS[dtype]

    @classmethod
    def from_bits(cls, bits: np.ndarray, rows_used: list[int], dtype: str = "bf16") -> "MemoryImage":
        """An image holding ``bits`` ``[ch, bank, row, element]`` (uint16, C-contiguous; kept,
        not copied: a cached image read back)."""
        C, B, R, E = bits.shape
        img = cls.__new__(cls)
        if E % 2 or bits.dtype != np.uint16 or not bits.flags.c_contiguous:
            raise ValueError(f"an image needs C-contiguous uint16 rows of an even length, not "
                             f"{bits.dtype} {bits.shape}")
        img.dtype, img.rows_used, img.bits = dtype, list(rows_used[:C]), bits
        img.data = [bits[c] for c in range(C)]
        img.words = bits.view(np.uint32)
        img.round, img.fmt = rounder(dtype), _FORMATS[dtype]
        return img

    def copy(self) -> "MemoryImage":
        """An independent image with the same contents (a functional run writes its KV caches
        into its image)."""
        bits = aligned_zeros(self.bits.shape)
        bits[...] = self.bits
        return MemoryImage.from_bits(bits, self.rows_used, self.dtype)

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    def encode(self, x: np.ndarray) -> np.ndarray:
        return encode(x, self.dtype)

    def decode(self, bits: np.ndarray) -> np.ndarray:
        return decode(bits, self.dtype)

    def store_matrix(self, m: MatrixLayout, w: np.ndarray) -> None:
        """Place a weight matrix ``[out, in]`` where its layout says."""
        g = m.geo
        C, B = g.channels, g.banks
        n_slots = m.slots(0)  # the most of any channel
        wb = np.zeros((n_slots * C * B, m.in_dim), np.uint16)  # neuron n = (slot C + ch) B + bank
        wb[:m.out_dim] = self.encode(np.asarray(w, np.float32))
        wb = wb.reshape(n_slots, C, B, m.in_dim)
        for c in range(C):
            ns = m.slots(c)
            for k in range(m.n_chunks):
                lo, ln = m.chunk(k)
                r0 = m.row_of(c, 0, k)
                self.bits[c, :, r0:r0 + ns, :ln] = wb[:ns, c, :, lo:lo + ln].transpose(1, 0, 2)

    def matvec(self, m: MatrixLayout, x: np.ndarray, acc_dtype: str = "fp32") -> np.ndarray:
        """All channels' MAC rows of one matrix, each accumulator read out (RD_MAC) in the data
        type, the chunks' partial sums added in fp32 (ASIC reduction): ``[out]``."""
        out = np.empty(m.out_dim, np.float32)
        _mac_matrix(self.words, *_matrix_rows(m), m.chunk_elems,
                    np.ascontiguousarray(x, np.float32)[None, :], 1 << 62, m.out_dim,
                    m.geo.col_elems, self.fmt, _FORMATS[acc_dtype], _FP16_TO_FP32,
                    _read_segments(m), out)
        return out


_ROWS: dict[int, tuple[MatrixLayout, tuple[np.ndarray, np.ndarray]]] = {}
_SEGS: dict[int, tuple[MatrixLayout, np.ndarray]] = {}


def _read_segments(m: MatrixLayout) -> np.ndarray:
    """``m.read_segments()`` (cached per layout)."""
    hit = _SEGS.get(id(m))
    if hit is not None and hit[0] is m:
        return hit[1]
    segs = m.read_segments()
    if segs.size and max(int(n) for n in segs[:, 2]) > m.gb_cols:
        raise ValueError(f"{m.name}: a MAC run longer than the global buffer's {m.gb_cols} columns")
    _SEGS[id(m)] = (m, segs)
    return segs


def _matrix_rows(m: MatrixLayout) -> tuple[np.ndarray, np.ndarray]:
    """(first row, slots) of ``m`` in every channel, as arrays for the kernels (cached)."""
    hit = _ROWS.get(id(m))
    if hit is not None and hit[0] is m:
        return hit[1]
    C = m.geo.channels
    arrs = (np.array([m.row_of(c, 0, 0) for c in range(C)], np.int64),
            np.array([m.slots(c) for c in range(C)], np.int64))
    _ROWS[id(m)] = (m, arrs)
    return arrs


# ---------------------------------------------------------------- bank MAC units (kernels)
#
# One MAC command multiplies the ``lanes`` elements of a column by the global buffer's and sums
# the products in an adder tree (adjacent lanes pairwise, then adjacent pair sums, ...; bf16 and
# fp16 products are exact in fp32, the tree adds in fp32); the accumulator adds the tree's sum in
# the accumulator type. The kernels read two 16-bit elements per 32-bit word (little-endian: the
# even element in the low half), so the tree's first level is one word's two products.


@njit(cache=True, inline="always")
def _round(x, fmt):
    """float32 ``x`` rounded to number format ``fmt`` (codes of ``_FORMATS``), nearest-even."""
    if fmt == 0 or x != x:
        return x
    bits = np.float32(x).view(np.uint32)
    if fmt == 1:  # bf16
        return np.uint32((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
                         & np.uint32(0xFFFF0000)).view(np.float32)
    a = abs(x)  # fp16
    if a >= np.float32(65520.0):  # half-way to the next binade above 65504 rounds to inf
        return np.float32(np.inf) if x > 0 else np.float32(-np.inf)
    if a < np.float32(2.0 ** -14):  # subnormal: a fixed step of 2^-24
        return np.float32(np.rint(x * np.float32(2.0 ** 24)) * np.float32(2.0 ** -24))
    return np.uint32((bits + np.uint32(0xFFF) + ((bits >> np.uint32(13)) & np.uint32(1)))
                     & np.uint32(0xFFFFE000)).view(np.float32)


@njit(cache=True)
def round_array(x, fmt):
    """``_round`` over an array (for tests and the ASIC side of the kernels)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out.flat[i] = _round(x.flat[i], fmt)
    return out


@njit(cache=True, inline="always")
def _lane_products(row, ge, go, nw, fmt, lut, q):
    """Level 1 of the adder tree for words ``0 .. nw-1`` of a row: even-lane product plus
    odd-lane product, into ``q``."""
    if fmt == 1:
        for m in range(nw):
            w = row[m]
            fe = np.uint32(w << np.uint32(16)).view(np.float32)
            fo = np.uint32(w & np.uint32(0xFFFF0000)).view(np.float32)
            q[m] = fe * ge[m] + fo * go[m]
    else:
        for m in range(nw):
            w = row[m]
            q[m] = lut[w & np.uint32(0xFFFF)] * ge[m] + lut[w >> np.uint32(16)] * go[m]


@njit(cache=True, inline="always")
def _accumulate(q, q0, cols, hl, acc_fmt, tree, acc0):
    """Rest of the adder tree per column (``hl`` pair sums each, from ``q[q0]``), then the
    accumulator, starting from ``acc0``: fp32, or rounded to ``acc_fmt`` after every column.
    ``tree`` is scratch of at least ``max(hl, cols)`` values."""
    acc = acc0
    if hl == 8:
        # the column sums first (no dependence between columns: vectorisable), then the
        # accumulator in column order
        for j in range(cols):
            o = q0 + j * 8
            tree[j] = (((q[o] + q[o + 1]) + (q[o + 2] + q[o + 3]))
                       + ((q[o + 4] + q[o + 5]) + (q[o + 6] + q[o + 7])))
        for j in range(cols):
            acc = _round(acc + tree[j], acc_fmt)
        return acc
    for j in range(cols):
        o = q0 + j * hl
        for i in range(hl):
            tree[i] = q[o + i]
        w = hl
        while w > 1:
            h = w // 2
            for i in range(h):
                tree[i] = tree[2 * i] + tree[2 * i + 1]
            if w % 2:
                tree[h] = tree[w - 1]
                h += 1
            w = h
        s = tree[0]
        acc = _round(acc + s, acc_fmt)
    return acc


@njit(cache=True)
def _gb_fill(x, lo, ln, fmt, ge, go):
    """Global buffer for input elements ``lo .. lo+ln-1`` of every row of ``x [rows, in]``,
    rounded to the data type and zero-padded, split into even and odd lanes ``[rows, words]``."""
    ge[:] = 0
    go[:] = 0
    for r in range(x.shape[0]):
        for e in range(ln):
            v = _round(x[r, lo + e], fmt)
            if e % 2:
                go[r, e // 2] = v
            else:
                ge[r, e // 2] = v


@intrinsic
def _prefetch(typingctx, arr, idx):
    """A hint to the host's memory system: start bringing the cache line of ``arr[idx]``
    (1-D) into the second-level cache. Changes no value; a MAC row's weights stream in while
    the row before is summed."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        builder.call(fn, [ptr, i32(0), i32(1), i32(1)])  # read, locality 1 (L2), data
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


PREFETCH_AHEAD = 2  # neuron rows hinted ahead of the one summed (measured best of 1, 2, 4)


@njit(cache=True, inline="always")
def _prefetch_rows(words, c, b, base_row, ns, s, chunk_elems, in_dim, lanes, segs):
    """Hint every cache line the MACs of neuron slot ``s`` of bank (c, b) will read."""
    W = words.shape[3]
    hl = lanes // 2
    flat = words[c, b].reshape(-1)
    for i in range(segs.shape[0]):
        k, c0 = segs[i, 0], segs[i, 1]
        have = in_dim - k * chunk_elems - c0 * lanes
        if have <= 0:
            break
        cols = min(segs[i, 2], (have + lanes - 1) // lanes)
        r0 = (base_row + k * ns + s) * W + c0 * hl
        for w in range(0, cols * hl, 16):  # 16 words: a 64-byte cache line
            _prefetch(flat, r0 + w)


@njit(cache=True, inline="always")
def _mac_bank(words, c, b, base_row, ns, chunk_elems, in_dim, ge, go, gb_div, out_dim, lanes, fmt,
              acc_fmt, lut, segs, out, nc, nb, n_base_row, n_ns):
    """Every MAC row of one bank, neuron by neuron: its MACs in the order its accumulator gets
    them (``segs`` rows ``(chunk, first column, columns, read)``, clipped to ``in_dim``); where
    ``read`` is set (and after the last MAC) RD_MAC reads the accumulator out rounded to the
    data type and the ASIC adds it to the neuron's earlier partial sums in fp32. The rows
    :data:`PREFETCH_AHEAD` neurons on (into bank ``(nc, nb)``, first row ``n_base_row``,
    ``n_ns`` slots, once this bank's run out; ``nc < 0``: none) are hinted to the host's
    caches: the host streams the weights near its memory bandwidth; no value changes."""
    C, B, _, W = words.shape
    hl = lanes // 2
    q = np.empty(W, np.float32)
    tree = np.empty(max(hl, W), np.float32)
    for s in range(ns):
        n = (s * C + c) * B + b
        if n >= out_dim:
            continue
        if s + PREFETCH_AHEAD < ns:
            _prefetch_rows(words, c, b, base_row, ns, s + PREFETCH_AHEAD, chunk_elems, in_dim,
                           lanes, segs)
        elif nc >= 0 and s + PREFETCH_AHEAD - ns < n_ns:
            _prefetch_rows(words, nc, nb, n_base_row, n_ns, s + PREFETCH_AHEAD - ns,
                           chunk_elems, in_dim, lanes, segs)
        g = n // gb_div
        acc = np.float32(0)
        pending = False
        first = True
        for i in range(segs.shape[0]):
            k, c0 = segs[i, 0], segs[i, 1]
            have = in_dim - k * chunk_elems - c0 * lanes  # input elements left from here
            if have <= 0:
                break
            cols = min(segs[i, 2], (have + lanes - 1) // lanes)
            w0 = c0 * hl
            _lane_products(words[c, b, base_row + k * ns + s, w0:], ge[k, g, w0:], go[k, g, w0:],
                           cols * hl, fmt, lut, q)
            acc = _accumulate(q, 0, cols, hl, acc_fmt, tree, acc)
            pending = True
            if segs[i, 3] == 1:
                r = _round(acc, fmt)
                out[n] = r if first else out[n] + r
                first = False
                acc = np.float32(0)
                pending = False
        if pending:
            r = _round(acc, fmt)
            out[n] = r if first else out[n] + r


# the vector MAC kernel hints the host's caches this many words (8 KiB: four 2 KiB rows) ahead
# of the words it sums; with whole rows summed it streams 14-16 GB/s of weights on one thread
# here against 8-11 without (measured on gpt2-small's head, this noisy 2-core host). A prefetch
# never faults, so hints past the image's end are harmless.
MAC_PREFETCH_WORDS = 2048


def _colsums8_intrinsic(half: bool):
    """The vector column sums for bf16 (``half`` False) or fp16 lanes: see :func:`_colsums8`."""
    def colsums8(typingctx, words, woff, ge, go, out, n8):
        return types.void(words, woff, ge, go, out, n8), _colsums8_codegen(half)

    return intrinsic(colsums8)


def _colsums8_codegen(half: bool):
    """LLVM IR of :func:`_colsums8` / :func:`_colsums8_fp16`."""
    def codegen(context, builder, signature, args):
        wv, wo, gev, gov, ov, n = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        v16f, v16i, v8f = ir.VectorType(f32, 16), ir.VectorType(i32, 16), ir.VectorType(f32, 8)
        data = [context.make_array(signature.args[i])(context, builder, a).data
                for i, a in ((0, wv), (2, gev), (3, gov), (4, ov))]
        wd, ed, od, outd = data
        shift = ir.Constant(v16i, [16] * 16)
        high = ir.Constant(v16i, [-(1 << 16)] * 16)  # 0xFFFF0000: the odd lane's bits
        even16 = ir.Constant(v16i, list(range(0, 32, 2)))
        odd16 = ir.Constant(v16i, list(range(1, 32, 2)))
        even8 = ir.Constant(ir.VectorType(i32, 8), list(range(0, 16, 2)))
        odd8 = ir.Constant(ir.VectorType(i32, 8), list(range(1, 16, 2)))

        def load(ptr, idx, vt):
            return builder.load(builder.bitcast(builder.gep(ptr, [idx]), vt.as_pointer()), align=4)

        def pair_sums(a, b, even, odd):  # [a0+a1, a2+a3, ..., b0+b1, ...]
            return builder.fadd(builder.shuffle_vector(a, b, even), builder.shuffle_vector(a, b, odd))

        i8p = ir.IntType(8).as_pointer()
        pf = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
        with cgutils.for_range(builder, n) as loop:
            base = builder.mul(loop.index, i64(64))
            for h in range(4):  # a hint for the lines MAC_PREFETCH_WORDS on (no value changes)
                a = builder.add(builder.add(wo, base), i64(MAC_PREFETCH_WORDS + 16 * h))
                builder.call(pf, [builder.bitcast(builder.gep(wd, [a]), i8p), i32(0), i32(1), i32(1)])
            q = []
            for h in range(4):  # two columns per vector: even*ge + odd*go per word
                off = builder.add(base, i64(16 * h))
                v = load(wd, builder.add(wo, off), v16i)
                if half:  # exact widening (F16C's vcvtph2ps where the host has it)
                    v16h, v16s = ir.VectorType(ir.HalfType(), 16), ir.VectorType(ir.IntType(16), 16)
                    fe = builder.fpext(builder.bitcast(builder.trunc(v, v16s), v16h), v16f)
                    fo = builder.fpext(builder.bitcast(builder.trunc(builder.lshr(v, shift), v16s),
                                                       v16h), v16f)
                else:
                    fe = builder.bitcast(builder.shl(v, shift), v16f)
                    fo = builder.bitcast(builder.and_(v, high), v16f)
                ge_ = load(ed, builder.add(wo, off), v16f)
                go_ = load(od, builder.add(wo, off), v16f)
                q.append(builder.fadd(builder.fmul(fe, ge_), builder.fmul(fo, go_)))
            pairs = pair_sums(q[0], q[1], even16, odd16), pair_sums(q[2], q[3], even16, odd16)
            quads = pair_sums(*pairs, even16, odd16)
            sums = pair_sums(quads, quads, even8, odd8)
            dst = builder.gep(outd, [builder.mul(loop.index, i64(8))])
            builder.store(sums, builder.bitcast(dst, v8f.as_pointer()), align=4)
        return context.get_dummy_value()

    return codegen


_colsums8 = _colsums8_intrinsic(False)
_colsums8.__doc__ = """``_colsums8(words, woff, ge, go, out, n8)``: adder-tree sums of ``8 n8`` MAC
columns of 16 bf16 lanes (8 words each) of the 1-D ``words`` from word ``woff``, against
global-buffer lanes ``ge``/``go`` (even/odd, from the same word), into ``out[0 : 8 n8]``. Written
as explicit vectors (eight columns at a time, lanes paired by shuffles) in the tree's exact
order: level 1 the even lane's product plus the odd lane's, then adjacent pairs, level by level;
plain IEEE fp32 multiplies and adds, no fusing, so every sum equals the scalar tree's bit for
bit. LLVM lowers the vectors to what the host has (AVX-512, AVX2 or SSE2)."""
_colsums8_fp16 = _colsums8_intrinsic(True)
_colsums8_fp16.__doc__ = """:func:`_colsums8` for fp16 lanes, widened to fp32 exactly (a
signalling NaN comes out quiet, as the product quiets it in the scalar kernel: the same sums)."""


@njit(cache=True, inline="always")
def _col_sums(row, w0, ge, go, cols, sums, q, fmt, lut):
    """Adder-tree sums of ``cols`` 16-lane columns (bf16, ``fmt`` 1, or fp16 through ``lut``)
    of ``row`` from word ``w0`` into ``sums[0:cols]``: eight at a time as vectors, the rest one
    by one."""
    n8 = cols // 8
    if n8:
        if fmt == 1:
            _colsums8(row, w0, ge, go, sums, n8)
        else:
            _colsums8_fp16(row, w0, ge, go, sums, n8)
    rest = cols - 8 * n8
    if rest:
        wr = w0 + 64 * n8
        _lane_products(row[wr:], ge[wr:], go[wr:], rest * 8, fmt, lut, q)
        for j in range(rest):
            o = j * 8
            sums[8 * n8 + j] = (((q[o] + q[o + 1]) + (q[o + 2] + q[o + 3]))
                                + ((q[o + 4] + q[o + 5]) + (q[o + 6] + q[o + 7])))


MAC_GROUP = 16  # neurons of a bank summed together: their accumulators' add chains overlap


@njit(cache=True, inline="always")
def _group_add(acc, sums, ng, c0, cols, acc_fmt):
    """Accumulator ``g`` of the group adds its column sums ``sums[g, c0 : c0 + cols]`` in
    column order; the neurons' chains are independent, so the host overlaps them (a rounded
    accumulator's, longer, column by column across the group)."""
    if acc_fmt == 0:
        for g in range(ng):
            a = acc[g]
            for j in range(c0, c0 + cols):
                a = a + sums[g, j]
            acc[g] = a
    else:
        for j in range(c0, c0 + cols):
            for g in range(ng):
                acc[g] = _round(acc[g] + sums[g, j], acc_fmt)


@njit(cache=True, inline="always")
def _read_group(acc, s0, ng, c, b, C, B, out_dim, out, first, fmt):
    """RD_MAC of the group's accumulators (rounded to the data type ``fmt``) into ``out``,
    added in fp32 to each neuron's earlier partial sums unless ``first``; the accumulators
    start again at 0."""
    for g in range(ng):
        n = ((s0 + g) * C + c) * B + b
        if n < out_dim:
            r = _round(acc[g], fmt)
            out[n] = r if first else out[n] + r
    acc[:] = 0


@njit(cache=True, inline="always")
def _summed_cols(used, row_cols):
    """Columns of a row :func:`_mac_bank_vec` sums for ``used`` columns of data: the whole row
    where the data fills at least half of it (the host's hardware prefetch then streams), else
    the data's."""
    return row_cols if 2 * (row_cols - used) <= row_cols else used


@njit(cache=True, inline="always")
def _mac_bank_vec(words, c, b, base_row, ns, chunk_elems, in_dim, ge, go, gb_div, out_dim,
                  fmt, acc_fmt, lut, segs, out, sums, acc, q):
    """``_mac_bank`` for bf16 or fp16 data in 16-lane columns, :data:`MAC_GROUP` neurons at a time:
    each neuron's column sums of a row as vectors (:func:`_col_sums`), once for every run of
    its MACs on that row (a global-buffer fill of part of a row is one run; the sums depend
    on the row and the chunk's input alone), then the group's accumulators add each run's
    (:func:`_group_add`; each accumulator's order unchanged). The sums span the whole row
    (values past the row's data never used) when that data fills at least half of it: reading
    whole rows keeps the host's hardware prefetch streaming (measured: 8 against 20 GB/s of
    weights for rows three quarters full)."""
    C, B, _, W = words.shape
    row_cols = W // 8
    for s0 in range(0, ns, MAC_GROUP):
        ng = min(MAC_GROUP, ns - s0)
        acc[:] = 0
        first = True
        pending = False
        summed = -1  # the chunk whose row's column sums ``sums`` holds
        for i in range(segs.shape[0]):
            k, c0 = segs[i, 0], segs[i, 1]
            have = in_dim - k * chunk_elems - c0 * 16  # input elements left from here
            if have <= 0:
                break
            cols = min(segs[i, 2], (have + 15) // 16)
            if k != summed:
                span = _summed_cols((min(chunk_elems, in_dim - k * chunk_elems) + 15) // 16, row_cols)
                for g in range(ng):
                    gi = min((((s0 + g) * C + c) * B + b) // gb_div, ge.shape[1] - 1)  # (padding)
                    _col_sums(words[c, b, base_row + k * ns + s0 + g], 0, ge[k, gi], go[k, gi],
                              span, sums[g], q, fmt, lut)
                summed = k
            _group_add(acc, sums, ng, c0, cols, acc_fmt)
            pending = True
            if segs[i, 3] == 1:
                _read_group(acc, s0, ng, c, b, C, B, out_dim, out, first, fmt)
                first = False
                pending = False
        if pending:
            _read_group(acc, s0, ng, c, b, C, B, out_dim, out, first, fmt)


@njit(cache=True, inline="always")
def _bank_of(words, base_row, slots, chunk_elems, x, ge, go, gb_div, out_dim, lanes, fmt,
             acc_fmt, lut, segs, out, cb, sums, acc, q):
    """The MAC rows of bank ``cb`` (channel-major): bf16 or fp16 in 16-lane columns by
    :func:`_mac_bank_vec`, other lane counts by ``_mac_bank`` (hinting bank ``cb + 1``'s first
    rows). ``sums``, ``acc`` and ``q`` are the caller's scratch (:func:`_mac_scratch`)."""
    C, B = words.shape[0], words.shape[1]
    c, nx = cb // B, cb + 1
    if (fmt == 1 or fmt == 2) and lanes == 16:
        _mac_bank_vec(words, c, cb % B, base_row[c], slots[c], chunk_elems, x.shape[1], ge, go,
                      gb_div, out_dim, fmt, acc_fmt, lut, segs, out, sums, acc, q)
        return
    nc = nx // B if nx < C * B else -1
    _mac_bank(words, c, cb % B, base_row[c], slots[c], chunk_elems, x.shape[1], ge, go, gb_div,
              out_dim, lanes, fmt, acc_fmt, lut, segs, out, nc, nx % B, base_row[max(nc, 0)],
              slots[max(nc, 0)])


@njit(cache=True, inline="always")
def _mac_scratch(W):
    """One thread's scratch for :func:`_bank_of`: a group's column sums and accumulators,
    lane products."""
    return (np.zeros((MAC_GROUP, W // 8 + 8), np.float32), np.zeros(MAC_GROUP, np.float32),
            np.empty(W, np.float32))


@njit(cache=True)
def _gb_chunks(x, chunk_elems, W, fmt):
    """Global-buffer fills of every chunk of every row of ``x``: (even, odd) ``[chunk, row, W]``."""
    in_dim = x.shape[1]
    n_chunks = (in_dim + chunk_elems - 1) // chunk_elems
    ge = np.empty((n_chunks, x.shape[0], W), np.float32)
    go = np.empty((n_chunks, x.shape[0], W), np.float32)
    for k in range(n_chunks):
        _gb_fill(x, k * chunk_elems, min(chunk_elems, in_dim - k * chunk_elems), fmt, ge[k], go[k])
    return ge, go


@njit(cache=True, parallel=True)
def _mac_matrix_parallel(words, base_row, slots, chunk_elems, x, gb_div, out_dim, lanes, fmt,
                         acc_fmt, lut, segs, out, threads=2):
    """``_mac_matrix`` with the banks spread over ``threads`` of numba's threads, in contiguous
    ranges."""
    C, B, _, W = words.shape
    ge, go = _gb_chunks(x, chunk_elems, W, fmt)
    n_banks = C * B
    parts = max(1, min(threads, n_banks))
    for t in prange(parts):
        sums, acc, q = _mac_scratch(W)
        for cb in range(t * n_banks // parts, (t + 1) * n_banks // parts):
            _bank_of(words, base_row, slots, chunk_elems, x, ge, go, gb_div, out_dim, lanes, fmt,
                     acc_fmt, lut, segs, out, cb, sums, acc, q)


@njit(cache=True)
def _mac_matrix_serial(words, base_row, slots, chunk_elems, x, gb_div, out_dim, lanes, fmt,
                       acc_fmt, lut, segs, out):
    """``_mac_matrix`` on the calling thread."""
    C, B, _, W = words.shape
    ge, go = _gb_chunks(x, chunk_elems, W, fmt)
    sums, acc, q = _mac_scratch(W)
    for cb in range(C * B):
        _bank_of(words, base_row, slots, chunk_elems, x, ge, go, gb_div, out_dim, lanes, fmt,
                 acc_fmt, lut, segs, out, cb, sums, acc, q)


def streamed_bytes(m: MatrixLayout) -> int:
    """Bytes of DRAM rows the MAC kernels read for one product of ``m``: every bank's row of
    every slot and chunk (padding slots too), the whole row where :func:`_mac_bank_vec` sums it
    (16-lane columns, the chunk's data filling at least half the row), else the chunk's
    columns. The weights alone are ``2 out_dim in_dim`` bytes; this is what streaming them in
    the hardware's row layout costs the host."""
    g = m.geo
    row_cols, lane = g.row_elems // g.col_elems, g.col_elems * g.elem_bytes
    n = 0
    for k in range(m.n_chunks):
        used = -(-m.chunk(k)[1] // g.col_elems)
        cols = int(_summed_cols(used, row_cols)) if g.col_elems == 16 else used
        n += sum(m.slots(c) for c in range(g.channels)) * g.banks * cols * lane
    return n


# matrices at least this large use all numba threads (while the host has idle cores; on a busy
# host only those of PARALLEL_MIN_ELEMS_BUSY): a parallel region costs a thread hand-off, and on
# a busy host it waits for a scheduler time slice (measured: ~8 ms a region on a loaded 2-core
# host against 0.3 ms of work for a 2304 x 768 matrix; gpt2-small functional 9.5 s for 32 tokens
# against 1.6 s serial), repaid only by matrices that take longer than that to stream on one
# thread (2^24 elements: 32 MiB, about 3.5 ms at 9.5 GB/s)
PARALLEL_MIN_ELEMS = 1 << 20
PARALLEL_MIN_ELEMS_BUSY = 1 << 24
_LOAD = [-1.0, 0.0]  # (when read, monotonic s; the host's idle cores then)


def _idle_cores() -> float:
    """Cores the host leaves idle: its core count less the one-minute load average (which
    counts this process), read at most once a second. Decides speed only, never a value."""
    now = time.monotonic()
    if now - _LOAD[0] >= 1.0:
        try:
            _LOAD[1] = (os.cpu_count() or 1) - os.getloadavg()[0]
        except OSError:  # no load average on this host: take it as idle
            _LOAD[1] = float(os.cpu_count() or 1)
        _LOAD[0] = now
    return _LOAD[1]


def _mac_matrix(words, base_row, slots, chunk_elems, x, gb_div, out_dim, lanes, fmt, acc_fmt,
                lut, segs, out):
    """MAC rows of a matrix placed like a weight matrix (chunk-major rows, neuron
    ``n = (slot C + ch) B + bank``), each neuron's accumulator read out rounded to ``fmt``
    where its loop order reads it (``segs``, see ``MatrixLayout.read_segments``) and the
    partial sums added in fp32 into ``out [out_dim]``. Neuron ``n`` multiplies row
    ``n // gb_div`` of ``x [rows, in]`` (the global-buffer fill of its channel). Every neuron
    is summed by one thread in a fixed order: deterministic, whatever the thread count.
    Multi-threaded for large matrices only: a parallel region costs a thread hand-off, which
    small matrices (and a busy machine, :func:`_idle_cores`) do not repay."""
    n = out_dim * x.shape[1]
    big = n >= PARALLEL_MIN_ELEMS and (n >= PARALLEL_MIN_ELEMS_BUSY or _idle_cores() >= 0.5)
    if big:
        _mac_matrix_parallel(words, base_row, slots, chunk_elems, x, gb_div, out_dim, lanes, fmt,
                             acc_fmt, lut, segs, out, get_num_threads())
    else:
        _mac_matrix_serial(words, base_row, slots, chunk_elems, x, gb_div, out_dim, lanes, fmt,
                           acc_fmt, lut, segs, out)


@njit(cache=True)
def _mac_keys(words, base_row, n_slots, heads_per_chunk, d_head, n_tok, q_vec, lanes, fmt,
              acc_fmt, lut, scores):
    """q.K^T: token ``t``'s key lives in channel ``t % C``, bank ``(t // C) % B``, slot
    ``t // (C B)``, a chunk of ``heads_per_chunk`` heads per row; each head's columns are one
    accumulator, read out rounded to ``fmt`` into ``scores [n_head, n_tok]``."""
    C, B, _, W = words.shape
    n_head = scores.shape[0]
    hl = lanes // 2
    nw = d_head // 2  # d_head is a whole number of columns (the mapping checks)
    ge = np.empty((n_head, nw), np.float32)
    go = np.empty((n_head, nw), np.float32)
    _gb_fill(q_vec.reshape(n_head, d_head), 0, d_head, fmt, ge, go)
    q = np.empty(W, np.float32)
    tree = np.empty(max(hl, W), np.float32)
    n_chunks = (n_head + heads_per_chunk - 1) // heads_per_chunk
    for t in range(n_tok):
        c, b, s = t % C, (t // C) % B, t // (C * B)
        for k in range(n_chunks):
            row = words[c, b, base_row + k * n_slots + s]
            h0 = k * heads_per_chunk
            h1 = min(n_head, h0 + heads_per_chunk)
            for h in range(h0, h1):
                _lane_products(row[(h - h0) * nw:], ge[h], go[h], nw, fmt, lut, q)
                scores[h, t] = _round(_accumulate(q, 0, nw // hl, hl, acc_fmt, tree,
                                                  np.float32(0)), fmt)


# ---------------------------------------------------------------- executor


class FunctionalExecutor:
    """The memory side of a Program's PIM steps on a memory image: vector-table entries and
    matrix rows read back, matrix-vector products on the bank MAC kernels. The dataflow itself
    runs in :class:`FlowExecutor` (one device) and :class:`SystemFlowExecutor` (a system)."""

    def __init__(self, prog: Program, image: MemoryImage, cfg: HwConfig, *,
                 math: AsicMath | None = None):
        self.prog, self.img, self.cfg = prog, image, cfg
        self.math = math or AsicMath.from_config(cfg)
        self.round = rounder(cfg.pim.data_type)
        self.acc_dtype = cfg.pim.accumulator_type
        self._flat = image.bits.reshape(-1)  # a view: element (ch, bank, row, e) at one index
        self._vec_index: dict[str, np.ndarray] = {}

    def _index(self, c, b, r, e=0):
        C, B, R, E = self.img.bits.shape
        return ((np.asarray(c, np.int64) * B + b) * R + r) * E + e

    # -- memory reads/writes the PIM steps perform
    def _read_vector(self, name: str) -> np.ndarray:
        idx = self._vec_index.get(name)
        if idx is None:
            vl = self.prog.vec_layout
            ln, _, _ = vl.entry(name)
            e = vl.geo.col_elems
            idx = np.zeros(ln, np.int64)
            for c, b, r, col, n, first in vl.segments(name):
                take = min(n * e, ln - first)
                idx[first:first + take] = self._index(c, b, r, col * e) + np.arange(take)
            self._vec_index[name] = idx
        return self.img.decode(self._flat[idx])

    def _read_matrix_row(self, m: MatrixLayout, neuron: int) -> np.ndarray:
        c, b, s = (int(v) for v in m.locate(neuron))
        out = np.zeros(m.in_dim, np.uint16)
        for k in range(m.n_chunks):
            lo, ln = m.chunk(k)
            out[lo:lo + ln] = self.img.bits[c, b, m.row_of(c, s, k), :ln]
        return self.img.decode(out)

    def _matvec(self, m: MatrixLayout, x: np.ndarray) -> np.ndarray:
        return self.img.matvec(m, x, self.acc_dtype)


# ---------------------------------------------------------------- graph-lowered programs


class FlowExecutor:
    """Runs a graph-lowered Program (``Program.flow``) on real numbers, token by token.

    Weights, tables and vectors are read only from the memory image; matrix-vector products and
    both attention products run on the bank MAC kernels (through :class:`FunctionalExecutor`);
    every other op is its :data:`pimsim.asic_ops.OPS` definition with this ASIC's arithmetic.
    Grouped-query attention reads each KV head's cache once per query head of its group."""

    def __init__(self, prog: Program, image: MemoryImage, cfg: HwConfig, *,
                 math: AsicMath | None = None, eps: float = 1e-5):
        from pimsim.asic_ops import OPS

        self.prog, self.img, self.cfg = prog, image, cfg
        self.math = math or AsicMath.from_config(cfg)
        self.acc_dtype = cfg.pim.accumulator_type
        self.ops = OPS
        self._base = FunctionalExecutor(prog, image, cfg, math=self.math)
        self.consts: dict[str, np.ndarray] = dict(prog.immediates)
        entries: dict[str, np.ndarray] = {}
        for name, (entry, off, shape) in prog.vector_refs.items():
            if entry not in entries:
                entries[entry] = self._base._read_vector(entry)
            size = int(np.prod(shape)) if shape else 1
            self.consts[name] = entries[entry][off:off + size].reshape(shape)
        self.env: dict[str, np.ndarray] = {}
        self.read_layouts: dict[str, MatrixLayout] = {}  # set_batch: the batched read order
        # each flow op's attributes resolved once where none depends on the position
        self._fixed_attrs = [None if _pos_dependent(f.attrs) else self._attrs(f.attrs, 0)
                             for f in prog.flow]
        self._v_rows: dict = {}  # (id of a V layout, chunk) -> (layout, channel, bank, row)

    def set_batch(self, batch: int, seq: int) -> None:
        """Compute as sequence ``seq`` of a batched decode step of ``batch`` sequences
        (:mod:`pimsim.batch`): each matrix's accumulators are read where the batched loop
        order reads them (:meth:`pimsim.isa.MatvecOrder.batch_read_layout`); batch 1 is the
        unbatched order."""
        self.read_layouts = {}
        for name, m in self.prog.matrices.items():
            r = m.strategy.batch_read_layout(m, batch, seq)
            if r is not m:
                self.read_layouts[name] = r

    def _dims(self, v, pos: int):
        if _is_pos_dim(v):
            return v[1] * pos + v[2]
        if isinstance(v, list):
            return [self._dims(x, pos) for x in v]
        return v

    def _attrs(self, at: dict, pos: int) -> dict:
        return {k: self._dims(v, pos) for k, v in at.items()}

    def _scores(self, kl, pos: int, q: np.ndarray) -> np.ndarray:
        """[n_head, pos + 1]: query head h against KV head h // group, each K row read once per
        group member."""
        G, n_kv = kl.group, kl.kv_heads
        qg = np.ascontiguousarray(q, np.float32).reshape(n_kv, G, kl.d_head)
        out = np.empty((n_kv, G, pos + 1), np.float32)
        for m in range(G):
            s = np.empty((n_kv, pos + 1), np.float32)
            _mac_keys(self.img.words, kl.base_row, kl.n_slots, kl.heads_per_chunk, kl.d_head,
                      pos + 1, np.ascontiguousarray(qg[:, m]).reshape(-1), kl.geo.col_elems,
                      self.img.fmt, _FORMATS[self.acc_dtype], _FP16_TO_FP32, s)
            out[:, m] = s
        return out.reshape(n_kv * G, pos + 1)

    def _values(self, vl, pos: int, p: np.ndarray) -> np.ndarray:
        G, n_kv = vl.group, vl.kv_heads
        vm = vl.matrix
        pg = np.ascontiguousarray(p, np.float32).reshape(n_kv, G, pos + 1)
        out = np.empty((n_kv, G, vl.d_head), np.float32)
        for m in range(G):
            o = np.empty(vm.out_dim, np.float32)
            _mac_matrix(self.img.words, *_matrix_rows(vm), vm.chunk_elems,
                        np.ascontiguousarray(pg[:, m]), vl.d_head, vm.out_dim, vm.geo.col_elems,
                        self.img.fmt, _FORMATS[self.acc_dtype], _FP16_TO_FP32,
                        _read_segments(vm), o)
            out[:, m] = o.reshape(n_kv, vl.d_head)
        return out.reshape(-1)

    def step(self, token: int, pos: int) -> np.ndarray:
        """Run the program for ``token`` at ``pos``; returns the logits (fp32)."""
        prog, M = self.prog, self.math
        env = self.env = dict(self.consts)
        env[prog.inputs["token"]] = np.array([[token]], np.int64)
        if prog.inputs.get("position"):
            env[prog.inputs["position"]] = np.array([pos], np.int64)
        self.routing: dict[int, list[list[int]]] = {}  # MoE layer -> experts per token
        for i_op, f in enumerate(prog.flow):
            op = f.op
            w = f.attrs.get("window", 0)  # a sliding window's ring: sizes stop at the window
            p = window_pos(pos, w)
            tag = f.attrs.get("expert_tag")
            if tag is not None and not self._runs(tag):
                if op == "expert_out":  # an expert not chosen adds nothing
                    env[f.outputs[0]] = np.float32(0)
                continue
            if op == "embed":
                idx = int(np.asarray(env[f.inputs[0]]).reshape(-1)[0])
                row = self._embed(f.attrs["table"], idx)
                env[f.outputs[0]] = row.reshape(self._dims(f.attrs["shape"], p))
            elif op == "matvec":
                x = np.asarray(env[f.inputs[0]], np.float32).reshape(-1)
                y = self._mv(f.attrs["matrix"], x, f.attrs["parts"][-1][1])
                for out, (lo, hi, bias, shape) in zip(f.outputs, f.attrs["parts"]):
                    v = y[lo:hi]
                    if bias:
                        v = v + env[bias].reshape(-1)
                    env[out] = v.astype(np.float32).reshape(self._dims(shape, p))
            elif op in ("k_write", "v_write"):
                new = np.asarray(env[f.inputs[0]], np.float32).reshape(-1)
                self._kv_write(f.attrs["attn"], op == "k_write", pos % w if w else pos, new)
            elif op == "attn_score":
                s = self._attn(f.attrs["attn"], True, p, np.asarray(env[f.inputs[0]]))
                env[f.outputs[0]] = s.reshape(self._dims(f.attrs["shape"], p))
            elif op == "attn_value":
                ctx = self._attn(f.attrs["attn"], False, p, np.asarray(env[f.inputs[0]]))
                env[f.outputs[0]] = ctx.reshape(self._dims(f.attrs["shape"], p))
            else:
                at = self._fixed_attrs[i_op]
                out = self.ops[op].fn(M, [env[i] for i in f.inputs],
                                      self._attrs(f.attrs, p) if at is None else at)
                env[f.outputs[0]] = np.asarray(out)
                if op == "moe_route":
                    from pimsim.moe import chosen

                    self.routing[f.attrs["moe"]] = chosen(out)
        return np.asarray(env[prog.logits], np.float32).reshape(-1)

    def _runs(self, tag: tuple[int, int]) -> bool:
        """Whether expert ``tag[1]`` of MoE layer ``tag[0]`` was chosen for this token."""
        return any(tag[1] in tok for tok in self.routing.get(tag[0], ()))

    # -- the PIM side of the flow's ops (one device; SystemFlowExecutor spreads them)
    def _embed(self, table: str, idx: int) -> np.ndarray:
        return self._base._read_matrix_row(self.prog.tables[table], idx)

    def _mv(self, matrix: str, x: np.ndarray, n_out: int) -> np.ndarray:
        return self._base._matvec(self._layout(matrix), x)

    def _layout(self, matrix: str) -> MatrixLayout:
        """The layout of ``matrix`` whose read order the products follow."""
        return self.read_layouts.get(matrix) or self.prog.matrices[matrix]

    def _kv_write(self, attn: int, is_k: bool, pos: int, new: np.ndarray) -> None:
        kl, vl = self.prog.kv_layouts[attn]
        new = unrolled_kv(new, kl.kv_heads, kl.d_head if is_k else vl.d_head)
        if is_k:
            self._write_k(kl, pos, new)
        else:
            self._write_v(vl, pos, new)

    def _attn(self, attn: int, scores: bool, pos: int, x: np.ndarray) -> np.ndarray:
        kl, vl = self.prog.kv_layouts[attn]
        return self._attn_local(kl, vl, scores, pos, x)

    def _attn_local(self, kl, vl, scores: bool, pos: int, x: np.ndarray) -> np.ndarray:
        if scores:
            return self._scores(kl, pos, np.asarray(x).reshape(-1))
        return self._values(vl, pos, np.asarray(x).reshape(kl.n_head, -1))

    def _kv_write_local(self, kl, vl, is_k: bool, pos: int, new: np.ndarray) -> None:
        if is_k:
            self._write_k(kl, pos, new)
        else:
            self._write_v(vl, pos, new)

    def _write_k(self, kl, pos: int, k_new: np.ndarray) -> None:
        c, b, s = (int(v) for v in kl.locate(pos))
        bits = self.img.encode(k_new)
        for k in range(kl.n_chunks):
            heads = kl.chunk_heads(k)
            lo, ln = heads.start * kl.d_head, len(heads) * kl.d_head
            self.img.bits[c, b, kl.row_of(s, k), :ln] = bits[lo:lo + ln]

    def _write_v(self, vl, pos: int, v_new: np.ndarray) -> None:
        vm = vl.matrix
        k = pos // vm.chunk_elems
        hit = self._v_rows.get((id(vm), k))
        if hit is None or hit[0] is not vm:  # where each V element of chunk k goes (kept)
            c, b, s = vm.locate(np.arange(vm.out_dim))
            rows = np.array([vm.row_of(int(ch), int(sl), k) for ch, sl in zip(c, s)])
            hit = self._v_rows[(id(vm), k)] = (vm, c, b, rows)
        _, c, b, rows = hit
        self.img.bits[c, b, rows, pos % vm.chunk_elems] = self.img.encode(v_new)


def _is_pos_dim(v) -> bool:
    """Whether ``v`` is a dimension ``("pos", a, b)``: ``a * pos + b``."""
    return isinstance(v, tuple) and len(v) == 3 and v[0] == "pos"


def _pos_dependent(v) -> bool:
    """Whether a flow op's attribute value holds a ``("pos", a, b)`` dimension."""
    if _is_pos_dim(v):
        return True
    if isinstance(v, dict):
        return any(_pos_dependent(x) for x in v.values())
    if isinstance(v, list):
        return any(_pos_dependent(x) for x in v)
    return False


def unrolled_kv(new: np.ndarray, n_heads: int, d_head: int) -> np.ndarray:
    """The new token's K or V for a cache of ``n_heads`` heads: as it is, or, for a cache of
    grouped-query attention unrolled per query head (``[system] gqa = "unrolled"``, CENT's),
    each KV head repeated for the query heads of its group."""
    have = new.size // d_head
    if n_heads <= have:
        return new
    return np.repeat(np.asarray(new).reshape(have, d_head), n_heads // have, axis=0).reshape(-1)


class SystemFlowExecutor(FlowExecutor):
    """A graph-lowered model on a system: ``stages[s]`` is the program of stage ``s``'s devices
    and ``images[s][r]`` the DRAM of its device ``r``, which holds only that device's rows or
    columns of each split matrix and its heads' K/V cache. The dataflow runs once, on whole
    values; every PIM op runs on each device that holds a part of it, from that device's
    memory: a column-parallel product's outputs are gathered, a row-parallel product's partial
    sums added in device order (the all-reduce), each device's query heads scored against its
    own cache. Element-wise ASIC work on whole values equals each device's on its share."""

    def __init__(self, stages: list[Program], images: list[list[MemoryImage]], cfg: HwConfig,
                 *, math: AsicMath | None = None):
        self.dev = [[FlowExecutor(p, img, cfg, math=math) for img in imgs]
                    for p, imgs in zip(stages, images)]
        super().__init__(stages[0], images[0][0], cfg, math=math)
        for row in self.dev[1:]:  # every stage's vectors (norm weights, biases, tables)
            self.consts.update(row[0].consts)
        self.stage_of_matrix = {m: s for s, p in enumerate(stages) for m in p.matrices}
        self.stage_of_attn = {kl.layer: (s, k) for s, p in enumerate(stages)
                              for k, (kl, _) in enumerate(p.kv_layouts)}

    def set_batch(self, batch: int, seq: int) -> None:
        super().set_batch(batch, seq)
        for row in self.dev:
            for d in row:
                d.set_batch(batch, seq)

    def _mv(self, matrix: str, x: np.ndarray, n_out: int) -> np.ndarray:
        s = self.stage_of_matrix[matrix]
        devs, prog = self.dev[s], self.dev[s][0].prog
        m = devs[0]._layout(matrix)
        split = prog.tp_rows.get(matrix)
        if split is None:
            return devs[0]._base._matvec(m, x)
        kind, idx = split
        if kind == "expert":  # expert parallelism: the whole expert on its device
            return devs[idx]._base._matvec(m, x)
        if kind == "col":
            y = np.zeros(n_out, np.float32)
            for d, rows in zip(devs, idx):
                y[rows] = d._base._matvec(m, x)[:len(rows)]
            return y
        y = np.zeros(m.out_dim, np.float32)
        for d, cols in zip(devs, idx):  # the all-reduce's sum, device by device
            if not len(cols):
                continue  # a device without a share (attention kept on one device)
            xs = np.zeros(m.in_dim, np.float32)
            xs[:len(cols)] = x[cols]
            y = y + d._base._matvec(m, xs)
        return y

    def _heads(self, attn: int):
        s, k = self.stage_of_attn[attn]
        prog = self.dev[s][0].prog
        q_ranks, kv_ranks = prog.tp_heads.get(attn, ([None], [None]))
        return self.dev[s], prog.kv_layouts[k], q_ranks, kv_ranks

    def _kv_write(self, attn: int, is_k: bool, pos: int, new: np.ndarray) -> None:
        devs, (kl, vl), _, kv_ranks = self._heads(attn)
        d = kl.d_head if is_k else vl.d_head
        if kv_ranks[0] is None:
            return devs[0]._kv_write_local(kl, vl, is_k, pos, unrolled_kv(new, kl.kv_heads, d))
        new = unrolled_kv(new, 1 + max(int(h.max()) for h in kv_ranks if len(h)), d)
        per_head = new.reshape(-1, d)
        for d, hs in zip(devs, kv_ranks):
            if len(hs):
                d._kv_write_local(kl, vl, is_k, pos, per_head[hs].reshape(-1))

    def _attn(self, attn: int, scores: bool, pos: int, x: np.ndarray) -> np.ndarray:
        devs, (kl, vl), q_ranks, _ = self._heads(attn)
        if q_ranks[0] is None:
            return devs[0]._attn_local(kl, vl, scores, pos, x)
        n_q = sum(len(h) for h in q_ranks)
        xh = np.asarray(x, np.float32).reshape(n_q, -1)
        parts = [(d._attn_local(kl, vl, scores, pos, xh[hs]), hs)
                 for d, hs in zip(devs, q_ranks) if len(hs)]
        return np.concatenate([p.reshape(len(hs), -1) for p, hs in parts])

    def _embed(self, table: str, idx: int) -> np.ndarray:
        return self.dev[0][0]._embed(table, idx)
