"""Functional model: the real numbers that flow through a decode-step Program.

Defines what every instruction computes:

* DRAM banks hold bf16 values (:class:`MemoryImage`: per channel ``[bank, row, element]``), put
  exactly where the mapping placed them; the functional executor reads weights only from there.
* The global buffer holds a bf16 copy of the broadcast vector (zero-padded to whole columns).
* An all-bank MAC row multiplies bf16 x bf16 and accumulates in the configured accumulator
  precision (fp32, or bf16 with rounding after every column); RD_MAC returns the accumulator
  rounded to the data type.
* The ASIC computes in fp32 with add/multiply only, as PIM-GPT's ASIC does: exp by a Taylor
  series (with range reduction by squaring), tanh-GELU through that exp, division by a
  Newton-Raphson reciprocal, 1/sqrt(x) by the fast inverse square root plus Newton steps. Each
  approximation can be switched to exact math (:class:`AsicMath`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pimsim.config import HwConfig
from pimsim.isa import MatrixLayout, Program, split_layer_vectors

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
        # range reduction by squaring: exp(x) = exp(x / 2^k)^(2^k) with |x / 2^k| <= 1/2
        k = np.maximum(0, np.ceil(np.log2(np.maximum(np.abs(x), 1e-30) * 2))).astype(np.int32)
        k = np.minimum(k, 30)
        r = x * np.exp2(-k.astype(np.float32))
        term = np.ones_like(r)
        acc = np.ones_like(r)
        for i in range(1, self.exp_terms):
            term = term * r / np.float32(i)
            acc = acc + term
        for i in range(int(k.max()) if k.size else 0):
            acc = np.where(k > i, acc * acc, acc)
        return acc.astype(np.float32)

    def recip(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.exact:
            return (1.0 / x).astype(np.float32)
        m, e = np.frexp(np.abs(x))  # x = m * 2^e, m in [0.5, 1): exponent handling is wiring
        y = (np.float32(48 / 17) - np.float32(32 / 17) * m).astype(np.float32)  # 1/m guess
        for _ in range(self.recip_steps):
            y = y * (np.float32(2) - m * y)
        return (np.sign(x) * np.ldexp(y, -e)).astype(np.float32)

    def rsqrt(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.exact:
            return (1.0 / np.sqrt(x)).astype(np.float32)
        i = x.view(np.int32)
        y = (np.int32(0x5F3759DF) - (i >> 1)).view(np.float32)  # fast inverse square root
        for _ in range(self.rsqrt_steps):
            y = y * (np.float32(1.5) - np.float32(0.5) * x * y * y)
        return y.astype(np.float32)

    def layernorm(self, x, w, b, eps: float) -> np.ndarray:
        x = np.asarray(x, np.float32)
        n = np.float32(x.shape[-1])
        mean = x.sum(dtype=np.float32) * self.recip(np.array(n, np.float32))
        xc = x - mean
        var = (xc * xc).sum(dtype=np.float32) * self.recip(np.array(n, np.float32))
        return (xc * self.rsqrt(np.asarray(var + np.float32(eps), np.float32)) * w + b).astype(np.float32)

    def softmax(self, s: np.ndarray) -> np.ndarray:
        """Row-wise softmax of scores [heads, tokens]."""
        s = np.asarray(s, np.float32)
        e = self.exp(s - s.max(axis=-1, keepdims=True))
        return (e * self.recip(e.sum(axis=-1, keepdims=True, dtype=np.float32))).astype(np.float32)

    def gelu(self, x: np.ndarray) -> np.ndarray:
        """tanh-form GELU; tanh(u) = 1 - 2 / (exp(2u) + 1)."""
        x = np.asarray(x, np.float32)
        u = np.float32(np.sqrt(2 / np.pi)) * (x + np.float32(0.044715) * x * x * x)
        if self.exact:
            t = np.tanh(u)
        else:
            u = np.clip(u, -10, 10)  # tanh is +-1 to fp32 precision beyond this
            t = np.float32(1) - np.float32(2) * self.recip(self.exp(np.float32(2) * u) + np.float32(1))
        return (np.float32(0.5) * x * (np.float32(1) + t)).astype(np.float32)


# ---------------------------------------------------------------- DRAM contents


class MemoryImage:
    """What every bank of every channel holds: ``data[ch][bank, row, element]`` (bf16 values
    stored as float32), rows ``0 .. rows_used[ch]-1``."""

    def __init__(self, channels: int, banks: int, rows_used: list[int], row_elems: int,
                 dtype: str = "bf16"):
        self.data = [np.zeros((banks, r, row_elems), np.float32) for r in rows_used[:channels]]
        self.round = rounder(dtype)

    @property
    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.data)

    def store_matrix(self, m: MatrixLayout, w: np.ndarray) -> None:
        """Place a weight matrix ``[out, in]`` where its layout says."""
        g = m.geo
        w = self.round(w)
        for c in range(g.channels):
            n_slots = m.slots(c)
            if not n_slots:
                continue
            s = np.arange(n_slots)[:, None]
            b = np.arange(g.banks)[None, :]
            n = m.neuron(c, s, b)  # [slots, banks]
            valid = n < m.out_dim
            for k in range(m.n_chunks):
                lo, ln = m.chunk(k)
                r0 = m.row_of(c, 0, k)
                block = self.data[c][:, r0:r0 + n_slots, :ln]  # [bank, slot, elem]
                vals = np.zeros((n_slots, g.banks, ln), np.float32)
                vals[valid] = w[n[valid], lo:lo + ln]
                block[...] = vals.transpose(1, 0, 2)

    def matvec(self, m: MatrixLayout, x: np.ndarray, acc_round, out_round) -> np.ndarray:
        """All channels' MAC rows of one matrix: per chunk, the partial sums [n_chunks, out]."""
        g = m.geo
        parts = np.zeros((m.n_chunks, m.n_groups * g.banks), np.float32)
        for k in range(m.n_chunks):
            lo, ln = m.chunk(k)
            cols = -(-ln // g.col_elems)
            gb = np.zeros(cols * g.col_elems, np.float32)
            gb[:ln] = self.round(x[lo:lo + ln])
            for c in range(g.channels):
                n_slots = m.slots(c)
                if not n_slots:
                    continue
                r0 = m.row_of(c, 0, k)
                block = self.data[c][:, r0:r0 + n_slots, :cols * g.col_elems]
                acc = mac_rows(block, gb, acc_round, g.col_elems)  # [bank, slot]
                parts[k, _neurons(m, c)] = acc.ravel()
        # RD_MAC reads every accumulator out in the data type (rounded once, all channels)
        return out_round(parts[:, :m.out_dim])


_NEURONS: dict[tuple[int, int], tuple[MatrixLayout, np.ndarray]] = {}


def _neurons(m: MatrixLayout, c: int) -> np.ndarray:
    """Output neuron of every (bank, slot) accumulator of channel ``c``, flattened (cached)."""
    hit = _NEURONS.get((id(m), c))
    if hit is not None and hit[0] is m:
        return hit[1]
    n = m.neuron(c, np.arange(m.slots(c))[None, :], np.arange(m.geo.banks)[:, None]).ravel()
    _NEURONS[(id(m), c)] = (m, n)
    return n


def mac_rows(block: np.ndarray, gb: np.ndarray, acc_round, lanes: int) -> np.ndarray:
    """MAC every row of ``block [..., elems]`` with the global buffer ``gb [elems]``.

    fp32 accumulation is one float32 dot product per row; a narrower accumulator is rounded
    after every column (one MAC command adds ``lanes`` products)."""
    if acc_round is None:
        return np.matmul(block, gb).astype(np.float32)
    cols = block.shape[-1] // lanes
    prods = (block * gb).reshape(block.shape[:-1] + (cols, lanes)).sum(-1, dtype=np.float32)
    acc = np.zeros(block.shape[:-1], np.float32)
    for j in range(cols):
        acc = acc_round(acc + prods[..., j])
    return acc


# ---------------------------------------------------------------- executor


class FunctionalExecutor:
    """Runs a Program's steps on real numbers, token by token (greedy decoding)."""

    def __init__(self, prog: Program, image: MemoryImage, cfg: HwConfig, *,
                 math: AsicMath | None = None, eps: float = 1e-5):
        self.prog, self.img, self.cfg = prog, image, cfg
        self.math = math or AsicMath.from_config(cfg)
        self.eps = eps
        self.round = rounder(cfg.pim.data_type)
        acc = cfg.pim.accumulator_type
        self.acc_round = None if acc == "fp32" else rounder(acc)
        d = prog.dims
        self.n_head, self.d_head = d["n_head"], d["d_head"]

    # -- memory reads/writes the PIM steps perform
    def _read_vector(self, name: str) -> np.ndarray:
        vl = self.prog.vec_layout
        ln, _, _ = vl.entry(name)
        out = np.zeros(-(-ln // vl.geo.col_elems) * vl.geo.col_elems, np.float32)
        e = vl.geo.col_elems
        for c, b, r, col, n, first in vl.segments(name):
            out[first:first + n * e] = self.img.data[c][b, r, col * e:(col + n) * e]
        return out[:ln]

    def _read_matrix_row(self, m: MatrixLayout, neuron: int) -> np.ndarray:
        c, b, s = (int(v) for v in m.locate(neuron))
        out = np.zeros(m.in_dim, np.float32)
        for k in range(m.n_chunks):
            lo, ln = m.chunk(k)
            out[lo:lo + ln] = self.img.data[c][b, m.row_of(c, s, k), :ln]
        return out

    def _matvec(self, m: MatrixLayout, x: np.ndarray) -> np.ndarray:
        parts = self.img.matvec(m, x, self.acc_round, self.round)
        return parts.sum(axis=0, dtype=np.float32)  # ASIC partial-sum reduction

    def _write_kv(self, layer: int, pos: int, k_new: np.ndarray, v_new: np.ndarray) -> None:
        kl, vl = self.prog.kv_layouts[layer]
        g = kl.geo
        c, b, s = (int(v) for v in kl.locate(pos))
        k_new = self.round(k_new)
        for k in range(kl.n_chunks):
            heads = kl.chunk_heads(k)
            lo = heads.start * kl.d_head
            ln = len(heads) * kl.d_head
            self.img.data[c][b, kl.row_of(s, k), :ln] = k_new[lo:lo + ln]
        vm = vl.matrix
        k = pos // vm.chunk_elems
        e = pos % vm.chunk_elems
        v_new = self.round(v_new)
        for ch in range(g.channels):
            n_slots = vm.slots(ch)
            if not n_slots:
                continue
            n = vm.neuron(ch, np.arange(n_slots)[None, :], np.arange(g.banks)[:, None])
            valid = n < vm.out_dim
            r0 = vm.row_of(ch, 0, k)
            col = self.img.data[ch][:, r0:r0 + n_slots, e]
            col[valid] = v_new[n[valid]]

    def _attn_scores(self, layer: int, pos: int, q: np.ndarray) -> np.ndarray:
        """q.K^T per head over the cached tokens: scores [n_head, pos + 1]."""
        kl, _ = self.prog.kv_layouts[layer]
        g = kl.geo
        n_tok = pos + 1
        scores = np.zeros((kl.n_head, n_tok), np.float32)
        q = self.round(q)
        for k in range(kl.n_chunks):
            heads = kl.chunk_heads(k)
            lo = heads.start * kl.d_head
            ln = len(heads) * kl.d_head
            qh = q[lo:lo + ln].reshape(len(heads), kl.d_head)
            for c in range(g.channels):
                n_slots = kl.slots_in_use(c, n_tok)
                if not n_slots:
                    continue
                r0 = kl.row_of(0, k)
                block = self.img.data[c][:, r0:r0 + n_slots, :ln]  # [bank, slot, elems]
                block = block.reshape(g.banks, n_slots, len(heads), kl.d_head)
                if self.acc_round is None:  # fp32 accumulation: one dot product per MAC row
                    acc = np.einsum("bshd,hd->bsh", block, qh, dtype=np.float32)
                else:
                    acc = np.stack([mac_rows(block[:, :, i], qh[i], self.acc_round, g.col_elems)
                                    for i in range(len(heads))], axis=-1)  # [bank, slot, head]
                t = c + g.channels * (np.arange(g.banks)[:, None] + g.banks * np.arange(n_slots)[None, :])
                ok = t < n_tok
                scores[heads.start:heads.stop][:, t[ok]] = self.round(acc[ok]).T
        return scores

    def _attn_values(self, layer: int, pos: int, p: np.ndarray) -> np.ndarray:
        """s.V: value neuron (h, j) = sum_t p[h, t] V[t, h, j], read along V's rows."""
        _, vl = self.prog.kv_layouts[layer]
        vm = vl.matrix
        g = vl.geo
        n_tok = pos + 1
        out = np.zeros(vm.out_dim, np.float32)
        for k in range(-(-n_tok // vm.chunk_elems)):
            lo = k * vm.chunk_elems
            ln = min(n_tok - lo, vm.chunk_elems)
            cols = -(-ln // g.col_elems)
            for c in range(g.channels):
                n_slots = vm.slots(c)
                if not n_slots:
                    continue
                n = vm.neuron(c, np.arange(n_slots)[None, :], np.arange(g.banks)[:, None])
                heads = n[0] // vl.d_head  # one head per slot (a group is within one head)
                gb = np.zeros((n_slots, cols * g.col_elems), np.float32)
                gb[:, :ln] = self.round(p[heads, lo:lo + ln])
                r0 = vm.row_of(c, 0, k)
                block = self.img.data[c][:, r0:r0 + n_slots, :cols * g.col_elems]
                if self.acc_round is None:
                    acc = np.einsum("bse,se->bs", block, gb, dtype=np.float32)
                else:
                    acc = np.stack([mac_rows(block[:, s], gb[s], self.acc_round, g.col_elems)
                                    for s in range(n_slots)], axis=1)  # [bank, slot]
                valid = n < vm.out_dim
                out[n[valid]] += self.round(acc[valid])
        return out

    # -- one decode step
    def step(self, token: int, pos: int) -> np.ndarray:
        """Run the program for ``token`` at ``pos``; returns the logits (fp32)."""
        prog, M = self.prog, self.math
        d = prog.dims
        a = d["n_head"] * d["d_head"]
        x = (self._read_matrix_row(prog.lm_head, token)
             + self._read_matrix_row(prog.wpe_layout, pos)).astype(np.float32)
        for i in range(d["n_layer"]):
            L = f"L{i}"
            v = split_layer_vectors(self._read_vector(f"{L}.params"), d["d_model"], a, d["d_ff"])
            h = M.layernorm(x, v["ln1_w"], v["ln1_b"], self.eps)
            qkv = self._matvec(prog.matrices[f"{L}.qkv"], h) + v["qkv_b"]
            q, k_new, v_new = qkv[:a], qkv[a:2 * a], qkv[2 * a:]
            self._write_kv(i, pos, k_new, v_new)
            s = self._attn_scores(i, pos, q)
            p = M.softmax(s * np.float32(1.0 / np.sqrt(self.d_head)))
            ctx = self._attn_values(i, pos, p)
            x = x + self._matvec(prog.matrices[f"{L}.out_proj"], ctx) + v["out_proj_b"]
            h = M.layernorm(x, v["ln2_w"], v["ln2_b"], self.eps)
            u = M.gelu(self._matvec(prog.matrices[f"{L}.ffn_up"], h) + v["ffn_up_b"])
            x = x + self._matvec(prog.matrices[f"{L}.ffn_down"], u) + v["ffn_down_b"]
        h = M.layernorm(x, self._read_vector("lnf_w"), self._read_vector("lnf_b"), self.eps)
        return self._matvec(prog.lm_head, h)
