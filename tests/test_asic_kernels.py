"""The ASIC's fused numba kernels equal their definitions composed op by op in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from pimsim import asic_kernels as K
from pimsim.functional import AsicMath

F32 = np.float32
M = AsicMath(exp_terms=8, recip_steps=3, rsqrt_steps=2)


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def test_lane_sum_is_numpys_float32_sum():
    rng = np.random.default_rng(0)
    sizes = list(range(0, 300)) + list(rng.integers(300, 20000, 300)) + [65536, 100_003]
    for n in sizes:
        x = (rng.standard_normal(n) * np.exp2(rng.integers(-12, 12, n))).astype(np.float32)
        assert _bits(K.asic_sum(x)) == _bits(x.sum(dtype=np.float32)), n
    assert _bits(K.asic_sum(np.array([-0.0], np.float32))) == _bits(F32(0))


def _layernorm_ops(x, w, b, eps):
    n = F32(x.shape[-1])
    mean = x.sum(dtype=np.float32) * M.recip(np.array(n, np.float32))
    xc = x - mean
    var = (xc * xc).sum(dtype=np.float32) * M.recip(np.array(n, np.float32))
    return (xc * M.rsqrt(np.asarray(var + F32(eps), np.float32)) * w + b).astype(np.float32)


def _softmax_ops(s):
    e = M.exp(s - s.max(axis=-1, keepdims=True))
    return (e * M.recip(e.sum(axis=-1, keepdims=True, dtype=np.float32))).astype(np.float32)


def _gelu_ops(x):
    u = F32(np.sqrt(2 / np.pi)) * (x + F32(0.044715) * x * x * x)
    u = np.clip(u, -10, 10)
    t = F32(1) - F32(2) * M.recip(M.exp(F32(2) * u) + F32(1))
    return (F32(0.5) * x * (F32(1) + t)).astype(np.float32)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 127, 128, 129, 768, 1600, 4096, 5120])
def test_fused_layernorm_and_softmax_equal_their_ops(n):
    rng = np.random.default_rng(n)
    for scale in (1e-3, 1.0, 300.0):
        x = (rng.standard_normal(n) * scale + 0.3).astype(np.float32)
        w, b = rng.standard_normal((2, n)).astype(np.float32)
        assert np.array_equal(_bits(M.layernorm(x, w, b, 1e-5)), _bits(_layernorm_ops(x, w, b, 1e-5)))
        s = (rng.standard_normal((3, n)) * scale).astype(np.float32)
        assert np.array_equal(_bits(M.softmax(s)), _bits(_softmax_ops(s)))


def test_fused_gelu_equals_its_ops_on_every_range():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(49_992) * np.exp2(rng.integers(-30, 8, 49_992))).astype(np.float32)
    x = np.concatenate([x, np.array([0, -0.0, 5.0, -5.0, 40.0, -40.0, np.inf, -np.inf, np.nan],
                                    np.float32)]).reshape(-1, 7)
    with np.errstate(invalid="ignore", over="ignore"):
        want = _gelu_ops(x)
    got = M.gelu(x)
    assert got.shape == x.shape
    assert np.array_equal(_bits(got), _bits(want))


def test_softmax_with_a_nan_is_all_nan_as_its_ops():
    s = np.array([[1.0, np.nan, 2.0], [0.5, 0.25, -1.0]], np.float32)
    got = M.softmax(s)
    assert np.isnan(got[0]).all() and np.array_equal(_bits(got[1]), _bits(_softmax_ops(s[1:]))[0])
