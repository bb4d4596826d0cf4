"""Functional executor: number formats, the bank-MAC kernels and the 16-bit DRAM image."""

from __future__ import annotations

import numpy as np
import pytest

from pimsim.functional import _FORMATS, MemoryImage, decode, encode, round_array, to_bf16, to_fp16
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


def _layout(out_dim=100, in_dim=40, chunk=32, channels=2, banks=4, fill_cols=0, acc=1,
            order="pim-gpt"):
    g = Geometry(channels, banks, 64, 32, 16, 2)
    m = MatrixLayout("m", "ffn_up", out_dim, in_dim, chunk, (3,) * channels, g, fill_cols, acc,
                     order)
    rows = [3 + m.rows_used(c) for c in range(channels)]
    return m, g, rows


def _column_model(w, x, acc, read_every_cols):
    """Reference: per 16-lane column (zero-padded per 32-element row chunk), an adder tree
    over adjacent lanes, the accumulator adding column sums in input order; after every
    ``read_every_cols`` columns (chunk-aligned groups given as lists of column counts) the
    accumulator is read out in bf16 and the ASIC adds the reads in fp32."""
    wb, xb = to_bf16(w), to_bf16(x)
    out_dim, in_dim = w.shape
    cols_w, cols_x = [], []
    for lo in range(0, in_dim, 32):  # row chunks of 32 elements, 2 columns each
        ln = min(32, in_dim - lo)
        for c0 in range(0, ln, 16):
            wp = np.zeros((out_dim, 16), np.float32)
            xp = np.zeros(16, np.float32)
            n = min(16, ln - c0)
            wp[:, :n] = wb[:, lo + c0:lo + c0 + n]
            xp[:n] = xb[lo + c0:lo + c0 + n]
            cols_w.append(wp)
            cols_x.append(xp)
    want = None
    j = 0
    for group in read_every_cols:
        accv = np.zeros(out_dim, np.float32)
        for _ in range(group):
            p = cols_w[j] * cols_x[j]
            while p.shape[-1] > 1:
                p = p[..., 0::2] + p[..., 1::2]
            accv = accv + p[:, 0]
            if acc == "bf16":
                accv = to_bf16(accv)
            j += 1
        want = to_bf16(accv) if want is None else want + to_bf16(accv)
    assert j == len(cols_w)
    return want


# (fill columns, accumulators, order) -> columns summed per accumulator read, for in_dim 104
# (row chunks of 2, 2, 2, 1 columns): one chunk per fill (PIM-GPT), two chunks per fill, half a
# chunk per fill, and the reuse order (one read of everything)
ORDERS = {
    (0, 1, "pim-gpt"): [2, 2, 2, 1],
    (4, 3, "pim-gpt"): [4, 3],
    (1, 2, "pim-gpt"): [1] * 7,
    (2, 2, "reuse"): [7],
    (4, 3, "reuse"): [7],
    (1, 5, "reuse"): [7],
}


@pytest.mark.parametrize("acc", ["fp32", "bf16"])
@pytest.mark.parametrize("fill_cols,k,order", list(ORDERS))
def test_matvec_kernel_matches_a_column_by_column_model(acc, fill_cols, k, order):
    m, g, rows = _layout(in_dim=104, fill_cols=fill_cols, acc=k, order=order)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((m.out_dim, m.in_dim)).astype(np.float32)
    x = rng.standard_normal(m.in_dim).astype(np.float32)
    img = MemoryImage(g.channels, g.banks, rows, g.row_elems, "bf16")
    img.store_matrix(m, w)
    got = img.matvec(m, x, acc)
    want = _column_model(w, x, acc, ORDERS[(fill_cols, k, order)])
    assert np.array_equal(got, want)
    assert m.n_reads == len(ORDERS[(fill_cols, k, order)])


def _segment_model(m, w, X, acc, gb_div, dtype="bf16"):
    """Reference for any layout: neuron ``n`` multiplies row ``n // gb_div`` of ``X``; its
    MACs follow ``m.read_segments()`` (chunk, first column, columns, read), each 16-lane
    column summed by an adder tree over adjacent lanes, the accumulator adding column sums
    (rounded to ``acc`` after each, unless fp32), every read rounded to the data type and the
    reads added in fp32."""
    rnd = {"bf16": to_bf16, "fp16": to_fp16}[dtype]
    wb, xb = rnd(w), rnd(X)
    out = np.zeros(m.out_dim, np.float32)
    ce, L = m.chunk_elems, 16
    def read(n, a, first):
        r = rnd(np.array([a], np.float32))[0]
        out[n] = r if first else np.float32(out[n] + r)

    for n in range(m.out_dim):
        xr = xb[n // gb_div]
        a, first, pending = np.float32(0), True, False
        for k, c0, cols, rd in m.read_segments().tolist():
            lo = k * ce + c0 * L
            if lo >= m.in_dim:
                break
            for j in range(min(cols, -(-(m.in_dim - lo) // L))):
                e = lo + j * L
                n_el = min(L, m.in_dim - e)
                p = np.zeros(L, np.float32)
                p[:n_el] = wb[n, e:e + n_el] * xr[e:e + n_el]
                while p.size > 1:
                    p = p[0::2] + p[1::2]
                a = np.float32(a + p[0])
                if acc != "fp32":
                    a = {"bf16": to_bf16, "fp16": to_fp16}[acc](np.array([a], np.float32))[0]
            pending = True
            if rd:
                read(n, a, first)
                a, first, pending = np.float32(0), False, False
        if pending:
            read(n, a, first)
    return out


# wide rows (32 columns of 16 lanes): the vector kernel's eight-column groups, its remainder
# columns, rows summed to their end (a short tail) or not (a long one), several chunks, fills
# of part of a chunk, and groups of neurons cut short by a bank's last slot
WIDE = [  # (in_dim, fill columns, accumulators, order)
    (512, 0, 1, "pim-gpt"), (400, 0, 1, "pim-gpt"), (200, 0, 1, "pim-gpt"),
    (1000, 0, 1, "pim-gpt"), (1000, 12, 2, "pim-gpt"), (700, 5, 3, "reuse"), (1000, 64, 1, "pim-gpt"),
]


@pytest.mark.parametrize("dtype,acc", [("bf16", "fp32"), ("bf16", "bf16"), ("fp16", "fp32"), ("fp16", "fp16")])
@pytest.mark.parametrize("in_dim,fill_cols,k,order", WIDE)
def test_vector_kernel_matches_the_segment_model_on_wide_rows(dtype, acc, in_dim, fill_cols, k, order):
    from pimsim.functional import _FP16_TO_FP32, _mac_matrix_parallel, _mac_matrix_serial, _matrix_rows

    g = Geometry(2, 4, 200, 512, 16, 2)
    m = MatrixLayout("m", "ffn_up", 150, in_dim, 512, (3,) * 2, g, fill_cols, k, order)
    rng = np.random.default_rng(in_dim + fill_cols)
    w = rng.standard_normal((m.out_dim, m.in_dim)).astype(np.float32)
    img = MemoryImage(2, 4, [3 + m.rows_used(c) for c in range(2)], 512, dtype)
    img.bits[...] = 0x7FC0  # NaN (bf16 and fp16) in every whole column the matrix leaves: never summed in
    img.store_matrix(m, w)
    for k in range(m.n_chunks):  # a partial last column's lanes are zero, as a built image's
        ln = m.chunk(k)[1]
        for c in range(2):
            rows = [m.row_of(c, s, k) for s in range(m.slots(c))]
            img.bits[c, :, rows, ln:-(-ln // 16) * 16] = 0
    gb_div = 40  # neuron n multiplies row n // 40 (a batched or per-head global buffer)
    X = rng.standard_normal((4, m.in_dim)).astype(np.float32)
    want = _segment_model(m, w, X, acc, gb_div, dtype)
    for kern, extra in ((_mac_matrix_serial, ()), (_mac_matrix_parallel, (2,)), (_mac_matrix_parallel, (3,))):
        out = np.full(m.out_dim, np.nan, np.float32)
        kern(img.words, *_matrix_rows(m), m.chunk_elems, X, gb_div, m.out_dim, 16, _FORMATS[dtype],
             _FORMATS[acc], _FP16_TO_FP32, m.read_segments(), out, *extra)
        assert np.array_equal(out.view(np.uint32), want.view(np.uint32)), kern



@pytest.mark.parametrize("dtype,acc", [("fp16", "fp16"), ("fp16", "fp32"), ("bf16", "bf16")])
def test_vector_kernel_equals_the_scalar_kernel_on_special_values(dtype, acc):
    """Weights and inputs with signalling and quiet NaNs (payloads, both signs), infinities,
    subnormals, the largest finite values and zeros of both signs: the vector kernel's sums
    equal the previous scalar kernel's (``_mac_bank``, table widening) bit for bit, NaN
    payloads included."""
    from pimsim.functional import _FP16_TO_FP32, _bank_of, _gb_chunks, _mac_bank, _mac_scratch, _matrix_rows

    g = Geometry(2, 4, 200, 512, 16, 2)
    m = MatrixLayout("m", "ffn_up", 150, 1000, 512, (3,) * 2, g, 12, 2, "pim-gpt")
    img = MemoryImage(2, 4, [3 + m.rows_used(c) for c in range(2)], 512, dtype)
    rng = np.random.default_rng(7)
    img.bits[...] = rng.integers(0, 1 << 16, img.bits.shape, dtype=np.uint16)  # every pattern
    img.store_matrix(m, rng.standard_normal((m.out_dim, m.in_dim)).astype(np.float32) * 8)
    special = ([0x7C01, 0xFC01, 0x7D55, 0x7E00, 0xFE01, 0x7C00, 0xFC00, 0x0001, 0x8001, 0x03FF,
                0x7BFF, 0xFBFF, 0x0000, 0x8000] if dtype == "fp16" else
               [0x7F81, 0xFF81, 0x7FC1, 0x7F80, 0xFF80, 0x0001, 0x807F, 0x7F7F, 0x0000, 0x8000])
    pick = rng.random(img.bits.shape) < 0.0007  # about half the neurons meet one
    img.bits[pick] = rng.choice(np.array(special, np.uint16), int(pick.sum()))
    fmt, acc_fmt = _FORMATS[dtype], _FORMATS[acc]
    x = rng.standard_normal((4, m.in_dim)).astype(np.float32) * 8
    x[3, ::97] = decode(np.array(special, np.uint16), dtype)[np.arange(x[3, ::97].size) % len(special)]
    nans = [v for v in special if np.isnan(decode(np.array([v], np.uint16), dtype))]
    for n in range(120, 150, 3):  # a NaN weight meets a NaN input: the weight's payload wins
        c, b, s_ = (int(v) for v in m.locate(n))
        for j, e in enumerate(range(0, m.in_dim, 97)):
            img.bits[c, b, m.row_of(c, s_, e // m.chunk_elems), e % m.chunk_elems] = nans[(n + j) % len(nans)]
    base_row, slots = _matrix_rows(m)
    segs = m.read_segments()
    ge, go = _gb_chunks(x, m.chunk_elems, img.words.shape[3], fmt)
    vec = np.full(m.out_dim, 1.5, np.float32)
    ref = np.full(m.out_dim, 1.5, np.float32)
    sums, acc_s, q = _mac_scratch(img.words.shape[3])
    for cb in range(8):
        c, b = cb // 4, cb % 4
        _bank_of(img.words, base_row, slots, m.chunk_elems, x, ge, go, 40, m.out_dim, 16, fmt, acc_fmt,
                 _FP16_TO_FP32, segs, vec, cb, sums, acc_s, q)
        _mac_bank(img.words, c, b, base_row[c], slots[c], m.chunk_elems, m.in_dim, ge, go, 40, m.out_dim,
                  16, fmt, acc_fmt, _FP16_TO_FP32, segs, ref, -1, 0, 0, 0)
    assert np.isnan(ref).sum() > 10 and np.isinf(ref).any() and np.isfinite(ref).sum() > 30
    nan_bits = np.unique(ref.view(np.uint32)[np.isnan(ref)])
    assert len(nan_bits) > 2  # several payloads (and signs) to keep
    assert np.array_equal(vec.view(np.uint32), ref.view(np.uint32))


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
    from pimsim.functional import _FP16_TO_FP32, _mac_matrix_parallel, _mac_matrix_serial, _matrix_rows
    m, g, rows = _layout(out_dim=1000, in_dim=70)
    rng = np.random.default_rng(3)
    img = MemoryImage(g.channels, g.banks, rows, g.row_elems, "bf16")
    img.store_matrix(m, rng.standard_normal((m.out_dim, m.in_dim)).astype(np.float32))
    x = rng.standard_normal((1, m.in_dim)).astype(np.float32)
    outs = []
    for kern in (_mac_matrix_serial, _mac_matrix_parallel):
        out = np.empty(m.out_dim, np.float32)
        kern(img.words, *_matrix_rows(m), m.chunk_elems, x, 1 << 62, m.out_dim, 16, 1, 0,
             _FP16_TO_FP32, m.read_segments(), out)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])


def test_images_are_page_aligned_and_copies_independent():
    """A built image and its copy start on a page (the MAC kernels' rows on whole cache
    lines); a copy is independent of its original (a run writes its KV caches into its own)."""
    from pimsim.functional import MemoryImage

    for shape in ((2, 3, 5, 8), (1, 1, 1, 2)):
        img = MemoryImage(shape[0], shape[1], [shape[2]] * shape[0], shape[3])
        img.bits[...] = np.arange(img.bits.size, dtype=np.uint16).reshape(img.bits.shape)
        cp = img.copy()
        assert img.bits.ctypes.data % 4096 == 0 and cp.bits.ctypes.data % 4096 == 0
        assert np.array_equal(cp.bits, img.bits) and cp.words.shape == img.words.shape
        cp.bits[0, 0, 0, 0] += 1
        assert cp.bits[0, 0, 0, 0] != img.bits[0, 0, 0, 0]


@pytest.mark.parametrize("in_dim,whole", [(512, True), (384, True), (256, True), (250, True), (240, False),
                                          (100, False), (1000, None)])
def test_streamed_bytes_counts_the_rows_the_kernel_reads(in_dim, whole):
    """Whole 1 KiB rows where a chunk fills at least half its row, else the chunk's 32-byte
    columns; padding slots included (150 neurons on 8 banks: 19 slots of 8, 2 channels)."""
    from pimsim.functional import streamed_bytes

    g = Geometry(2, 4, 200, 512, 16, 2)
    m = MatrixLayout("m", "ffn_up", 150, in_dim, 512, (3,) * 2, g)
    slots = sum(m.slots(c) for c in range(2))
    assert slots * 4 == 152
    if whole is None:  # chunks of 512 and 488: both whole rows
        assert streamed_bytes(m) == 2 * 152 * 1024
    elif whole:
        assert streamed_bytes(m) == 152 * 1024
    else:
        assert streamed_bytes(m) == 152 * 32 * -(-in_dim // 16)
    g8 = Geometry(2, 4, 200, 512, 8, 2)  # 8-lane columns: the scalar kernel, the chunk's columns
    m8 = MatrixLayout("m", "ffn_up", 150, in_dim, 512, (3,) * 2, g8)
    assert streamed_bytes(m8) == 152 * 16 * sum(-(-m8.chunk(k)[1] // 8) for k in range(m8.n_chunks))
