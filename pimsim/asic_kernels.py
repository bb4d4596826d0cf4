"""The ASIC's arithmetic as numba kernels: what its vector units compute, element by element.

fp32 IEEE arithmetic in the written order (no fast-math, no fused multiply-adds):

* sums in eight lanes: blocks of up to 128 elements are summed by eight accumulators over
  adjacent elements (lane ``j`` takes elements ``j, j + 8, ...``), the lanes added as a binary
  tree, a block's tail of under eight added in order; a longer vector is split in two at a
  multiple of eight below its middle and the halves' sums added (the pairwise order numpy's
  float32 sums follow, so the two agree bit for bit);
* exp by a Taylor series after range reduction by squaring, 1/x by Newton-Raphson steps from
  a linear guess of the mantissa's reciprocal, 1/sqrt(x) by the fast inverse square root and
  Newton steps;
* layernorm, softmax and tanh-GELU fused from those, one pass per element.

:class:`pimsim.functional.AsicMath` calls these for its approximate (PIM-GPT) arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

F32 = np.float32


@njit(cache=True, inline="always")
def _block_sum(a, lo, n):
    """Sum of a block ``a[lo : lo + n]``, ``n <= 128``, in eight lanes."""
    if n < 8:
        res = F32(-0.0)
        for i in range(n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    whole = n - n % 8
    while i < whole:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(cache=True)
def _lane_sum(a, lo, n):
    """Sum of ``a[lo : lo + n]`` in the ASIC's order (see the module docstring): halves split
    at a multiple of eight until blocks of at most 128, evaluated depth first with an explicit
    stack (a split's left sum plus its right)."""
    if n <= 128:
        return _block_sum(a, lo, n)
    st_lo = np.empty(130, np.int64)
    st_n = np.empty(130, np.int64)
    st_stage = np.zeros(130, np.int64)  # 0: left to do, 1: right to do, 2: both done
    st_left = np.empty(130, np.float32)
    sp = 0
    st_lo[0], st_n[0] = lo, n
    ret = F32(0)
    while sp >= 0:
        m = st_n[sp]
        if m <= 128:
            ret = _block_sum(a, st_lo[sp], m)
            sp -= 1
            continue
        half = m // 2
        half -= half % 8
        if st_stage[sp] == 0:
            st_stage[sp] = 1
            sp += 1
            st_lo[sp], st_n[sp], st_stage[sp] = st_lo[sp - 1], half, 0
        elif st_stage[sp] == 1:
            st_left[sp] = ret
            st_stage[sp] = 2
            sp += 1
            st_lo[sp], st_n[sp], st_stage[sp] = st_lo[sp - 1] + half, m - half, 0
        else:
            ret = st_left[sp] + ret
            sp -= 1
    return ret


@njit(cache=True)
def asic_sum(a):
    """The ASIC's sum of a 1-D float32 vector (0 for an empty one)."""
    return F32(0) + _lane_sum(a, 0, a.size)


@njit(cache=True, inline="always")
def recip1(v, steps):
    """1/v: v = m 2^e with m in [0.5, 1) (exponent handling is wiring), a linear guess of 1/m,
    Newton-Raphson steps, the exponent put back."""
    bits = F32(v).view(np.uint32)
    eb = np.int64((bits >> np.uint32(23)) & np.uint32(0xFF))
    if 0 < eb < 255:  # normal: split the exponent field off
        e = eb - 126
        m = np.uint32((bits & np.uint32(0x007FFFFF)) | np.uint32(0x3F000000)).view(np.float32)
    else:
        m64, e = math.frexp(abs(np.float64(v)))
        m = F32(m64)  # exact
    y = F32(48 / 17) - F32(32 / 17) * m
    for _ in range(steps):
        y = y * (F32(2) - m * y)
    if -126 <= -e <= 127:  # 2^-e is a normal fp32: the product is ldexp, rounded once
        r = y * np.uint32((127 - e) << 23).view(np.float32)
    else:
        r = F32(math.ldexp(np.float64(y), -e))  # exact in fp64, then one rounding
    sign = F32(1) if v > 0 else (F32(-1) if v < 0 else (F32(0) if v == 0 else v))
    return sign * r


@njit(cache=True, inline="always")
def rsqrt1(v, steps):
    """1/sqrt(v): the fast inverse square root's guess (integer arithmetic on the bits, modulo
    2^32), then Newton steps."""
    i = np.int64(F32(v).view(np.int32))
    y = np.uint32((np.int64(0x5F3759DF) - (i >> 1)) & 0xFFFFFFFF).view(np.float32)
    for _ in range(steps):
        y = y * (F32(1.5) - F32(0.5) * v * y * y)
    return y


@njit(cache=True)
def _exp_passes(xs, terms):
    """exp of every element of the 1-D ``xs``: v / 2^k with k = ceil(log2(2 |v|)) in 0 .. 30
    (log2 rounded to fp32; the scaling exact), a Taylor series of ``terms`` terms, squared k
    times. Computed in passes over the vector (range reduction, each term, each squaring) so
    that the host vectorises them; each element's operations and their order are its own."""
    n = xs.size
    k = np.zeros(n, np.int64)
    r = np.empty(n, np.float32)
    for i in range(n):
        v = xs[i]
        if np.isfinite(v):
            a = max(abs(v), F32(1e-30)) * F32(2)
            k[i] = min(max(0, int(math.ceil(F32(math.log2(np.float64(a)))))), 30)
            r[i] = v * np.uint32((127 - k[i]) << 23).view(np.float32)  # times 2^-k: exact
        else:
            r[i] = v * F32(np.inf)
    term = np.ones(n, np.float32)
    acc = np.ones(n, np.float32)
    for t in range(1, terms):
        d = F32(t)
        for i in range(n):
            term[i] = term[i] * r[i] / d
            acc[i] = acc[i] + term[i]
    for j in range(k.max() if n else 0):
        for i in range(n):
            if k[i] > j:
                acc[i] = acc[i] * acc[i]
    return acc


@njit(cache=True)
def exp_series(x, terms):
    """exp of every element of ``x`` (any shape), as :func:`_exp_passes`."""
    return _exp_passes(x.ravel(), terms).reshape(x.shape)


@njit(cache=True)
def _newton_each(x, steps, rsqrt):
    """:func:`rsqrt1` (``rsqrt``) or :func:`recip1` of every element of ``x`` (any shape)."""
    xs = x.ravel()
    out = np.empty(xs.size, np.float32)
    for i in range(xs.size):
        out[i] = rsqrt1(xs[i], steps) if rsqrt else recip1(xs[i], steps)
    return out.reshape(x.shape)


def recip_newton(x, steps):
    """:func:`recip1` of every element of ``x`` (any shape)."""
    return _newton_each(x, steps, False)


def rsqrt_newton(x, steps):
    """:func:`rsqrt1` of every element of ``x`` (any shape)."""
    return _newton_each(x, steps, True)


@njit(cache=True)
def layernorm(x, w, b, eps, recip_steps, rsqrt_steps):
    """(x - mean) / sqrt(var + eps) * w + b of a 1-D vector: mean and variance as sums times
    the reciprocal of n, the scale by :func:`rsqrt1`."""
    n = x.size
    rn = recip1(F32(n), recip_steps)
    mean = asic_sum(x) * rn
    xc = np.empty(n, np.float32)
    sq = np.empty(n, np.float32)
    for i in range(n):
        xc[i] = x[i] - mean
        sq[i] = xc[i] * xc[i]
    scale = rsqrt1(asic_sum(sq) * rn + eps, rsqrt_steps)
    for i in range(n):
        xc[i] = xc[i] * scale * w[i] + b[i]
    return xc


@njit(cache=True)
def softmax(s, exp_terms, recip_steps):
    """Row-wise softmax of ``s [rows, n]``: exp of each element less its row's max, times the
    reciprocal of the row's sum."""
    rows, n = s.shape
    out = np.empty((rows, n), np.float32)
    for r in range(rows):
        m = s[r, 0] if n else F32(0)
        for i in range(1, n):
            v = s[r, i]
            if v > m or v != v:
                m = v
            if m != m:
                break
        d = np.empty(n, np.float32)
        for i in range(n):
            d[i] = s[r, i] - m
        e = _exp_passes(d, exp_terms)
        inv = recip1(asic_sum(e), recip_steps)
        for i in range(n):
            out[r, i] = e[i] * inv
    return out


@njit(cache=True)
def gelu_tanh(x, exp_terms, recip_steps):
    """0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3) clipped to +-10 (tanh is +-1 to
    fp32 precision beyond), tanh(u) = 1 - 2 / (exp(2u) + 1)."""
    xs = x.ravel()
    n = xs.size
    u2 = np.empty(n, np.float32)
    c = F32(np.sqrt(2 / np.pi))
    for i in range(n):
        v = xs[i]
        u = c * (v + F32(0.044715) * v * v * v)
        if u < -10:
            u = F32(-10)
        elif u > 10:
            u = F32(10)
        u2[i] = F32(2) * u
    e = _exp_passes(u2, exp_terms)
    out = np.empty(n, np.float32)
    for i in range(n):
        t = F32(1) - F32(2) * recip1(e[i] + F32(1), recip_steps)
        out[i] = F32(0.5) * xs[i] * (F32(1) + t)
    return out.reshape(x.shape)
