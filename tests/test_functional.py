"""Functional executor: number formats, the bank-MAC kernels and the 16-bit DRAM image."""

from __future__ import annotations

import numpy as np
import pytest

from pimsim.functional import (_FORMATS, MemoryImage, decode, encode, round_array, to_bf16,
                               to_fp16)
from pimsim.isa import Geometry, MatrixLayout


def _floats(n: int = 200_000) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 20, n))).astype(np.float32)
    edges = [0.0, -0.0, 65504, 65519.99, 65520, -65520, 2.0 ** -14, 2.0 ** -24, 2.0 ** -25,
             3 * 2.0 ** -26, 1e-40, np.inf, -np.inf, 3.4e38]
    return np.concatenate([x, np.array(edges, np.float32)])


@pytest.mark.parametrize("dtype,ref", [("bf16", to_bf16), ("fp16", to_fp16)])
def test_kernel_rounding_equals_numpy_rounding(dtype, ref):
    x = _floats()
    with np.errstate(over="ignore"):
        want = ref(x)
    got = round_array(x, _FORMATS[dtype])
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_image_encoding_is_exact_for_rounded_values(dtype):
    x = _floats()
    x = x[np.isfinite(x) & (np.abs(x) < 6e4)]
    r = {"bf16": to_bf16, "fp16": to_fp16}[dtype](x)
    assert np.array_equal(decode(encode(x, dtype), dtype), r)


def _layout(out_dim=100, in_dim=40, chunk=32, channels=2, banks=4):
    g = Geometry(channels, banks, 64, 32, 16, 2)
    m = MatrixLayout("m", "ffn_up", out_dim, in_dim, chunk, (3,) * channels, g)
    rows = [3 + m.rows_used(c) for c in range(channels)]
    return m, g, rows


@pytest.mark.parametrize("acc", ["fp32", "bf16"])
def test_matvec_kernel_matches_a_column_by_column_model(acc):
    m, g, rows = _layout()
    rng = np.random.default_rng(1)
    w = rng.standard_normal((m.out_dim, m.in_dim)).astype(np.float32)
    x = rng.standard_normal(m.in_dim).astype(np.float32)
    img = MemoryImage(g.channels, g.banks, rows, g.row_elems, "bf16")
    img.store_matrix(m, w)
    got = img.matvec(m, x, acc)
    # model: per chunk, per 16-lane column, adder tree over adjacent lanes, then accumulate
    wb, xb = to_bf16(w), to_bf16(x)
    want = np.zeros(m.out_dim, np.float32)
    for k in range(m.n_chunks):
        lo, ln = m.chunk(k)
        cols = -(-ln // 16)
        wp = np.zeros((m.out_dim, cols * 16), np.float32)
        wp[:, :ln] = wb[:, lo:lo + ln]
        xp = np.zeros(cols * 16, np.float32)
        xp[:ln] = xb[lo:lo + ln]
        p = (wp * xp).reshape(m.out_dim, cols, 16)
        while p.shape[-1] > 1:
            p = p[..., 0::2] + p[..., 1::2]
        accv = np.zeros(m.out_dim, np.float32)
        for j in range(cols):
            accv = accv + p[:, j, 0]
            if acc == "bf16":
                accv = to_bf16(accv)
        want = want + to_bf16(accv)
    assert np.array_equal(got, want)


def test_matvec_reads_only_the_image():
    """A weight stored one place off changes exactly the neurons it feeds."""
    m, g, rows = _layout()
    w = np.random.default_rng(2).standard_normal((m.out_dim, m.in_dim)).astype(np.float32)
    x = np.ones(m.in_dim, np.float32)
    img = MemoryImage(g.channels, g.banks, rows, g.row_elems, "bf16")
    img.store_matrix(m, w)
    base = img.matvec(m, x)
    c, b, s = (int(v) for v in m.locate(37))
    img.data[c][b, m.row_of(c, s, 0), 5] ^= 0x4000  # flip an exponent bit of weight (37, 5)
    diff = np.flatnonzero(img.matvec(m, x) != base)
    assert list(diff) == [37]


def test_image_is_two_bytes_per_element():
    _, g, rows = _layout()
    img = MemoryImage(g.channels, g.banks, rows, g.row_elems, "bf16")
    assert img.nbytes == g.channels * g.banks * max(rows) * g.row_elems * 2


def test_parallel_and_serial_kernels_agree_bit_for_bit():
    from pimsim.functional import (_FP16_TO_FP32, _mac_matrix_parallel, _mac_matrix_serial,
                                   _matrix_rows)
    m, g, rows = _layout(out_dim=1000, in_dim=70)
    rng = np.random.default_rng(3)
    img = MemoryImage(g.channels, g.banks, rows, g.row_elems, "bf16")
    img.store_matrix(m, rng.standard_normal((m.out_dim, m.in_dim)).astype(np.float32))
    x = rng.standard_normal((1, m.in_dim)).astype(np.float32)
    outs = []
    for kern in (_mac_matrix_serial, _mac_matrix_parallel):
        out = np.empty(m.out_dim, np.float32)
        kern(img.words, *_matrix_rows(m), m.chunk_elems, x, 1 << 62, m.out_dim, 16, 1, 0,
             _FP16_TO_FP32, out)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
