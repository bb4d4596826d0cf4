"""Tensor and pipeline parallelism: which device of a system holds which part of each value.

Tensor parallelism over ``tp`` devices (Megatron-style, derived from the graph's dataflow, no
model is recognised):

* a matrix-vector product whose input every device holds (replicated) is **column-parallel**:
  each device computes some of its output rows; one whose input is split across the devices is
  **row-parallel**: each device multiplies its share of the input by the matching columns and the
  partial sums are added by an all-reduce (one exchange per column/row pair);
* which output rows a device computes follows the attention heads: rows that reach the query of
  an attention are dealt out by query head, rows that reach the K or V cache by KV head (a KV
  head is repeated on the ``tp / n_kv`` devices whose query heads share it when there are fewer
  KV heads than devices), any other rows (MLP, LM head) in contiguous blocks;
* which rows reach which head is found by pushing an index array through the data movement
  (reshape, transpose, slice, ...) that follows the product, so packed (GPT-2 ``c_attn``),
  interleaved (GPT-NeoX) and separate projections need no code of their own;
* every split value carries an *owner* array (the device holding each element, in the value's
  shape); elementwise ops keep it, attention products take it from their query, data movement
  moves it; a row-parallel product's input columns per device are read from it. A normalisation
  or reduction over elements of several devices is refused (it would need the whole vector);
* a product whose output is normalised whole before it reaches an attention or another product
  (multi-head latent attention's query and KV latents, ``q_a_proj`` before ``q_a_layernorm``)
  is **replicated**: every device computes all of it (as DeepSeek's tensor parallelism does), its
  output is whole on every device;
* a product whose input one device holds whole (a head's own product: MLA's absorbed
  ``W_UK[h]`` and ``W_UV[h]``) is **local** to that device: only it holds the weights and
  computes, its output stays there; the simulated device 0 runs the local products of its own
  heads (each device reserves the rows of every head's local matrices, as one placement serves
  the group).

With ``attention = "master"`` (CENT's mapping, Chen et al., ASPLOS'25) every product, the
attention's projections and the head included, is column-parallel in contiguous blocks of output
rows; its input is broadcast from the group's first device (the master) and its output rows
gathered there, so no value stays split: the master holds the residual stream, the norms and the
whole attention (K/V caches, q.K^T, softmax, p.V); the other devices only multiply.

With ``attention = "one-device"`` the attention (its projections, the K/V caches, q.K^T and p.V)
stays whole on the group's first device, which then broadcasts the output projection's result;
only the MLP and the head are split.

Pipeline parallelism over ``pp`` stages: contiguous blocks of layers per stage (the embedding
with the first, the final norm and head with the last), as equal in count as possible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.ir import Node
from compiler.passes.decode_step import WIRING, block_users, shape0
from compiler.passes.lowering_error import LoweringError
from compiler.passes.lowering_state import Matvec
from compiler.passes.shape_inference import _terms
from pimsim.asic_ops import OPS as ASIC_OPS

# ops that combine the elements along their last axis (they need the whole axis on one device)
REDUCING = ("layernorm", "rmsnorm", "softmax", "reduce_mean", "reduce_sum", "reduce_max")


class _MixedSplit(ValueError):
    """One output of a product both replicated and split by head."""


def stage_layers(n_layer: int, pp: int) -> list[range]:
    """Layers of each pipeline stage: contiguous, sizes differing by at most one (earlier
    stages take the extra layers)."""
    base, extra = divmod(n_layer, pp)
    out, lo = [], 0
    for s in range(pp):
        hi = lo + base + (1 if s < extra else 0)
        out.append(range(lo, hi))
        lo = hi
    return out


def head_ranks(n_heads: int, tp: int, what: str, one_device: bool = False) -> list[np.ndarray]:
    """Heads each device holds: contiguous blocks, or one head repeated on ``tp / n_heads``
    devices when there are fewer heads than devices. ``ValueError`` when neither divides.
    ``one_device``: attention kept on device 0 (every head there, none elsewhere)."""
    if one_device:
        return [np.arange(n_heads)] + [np.zeros(0, np.int64) for _ in range(tp - 1)]
    if n_heads % tp == 0:
        k = n_heads // tp
        return [np.arange(r * k, (r + 1) * k) for r in range(tp)]
    if tp % n_heads == 0:
        return [np.array([r * n_heads // tp]) for r in range(tp)]
    raise ValueError(f"{n_heads} {what} heads cannot be shared by {tp} devices (neither divides "
                     f"the other)")


def block_ranks(n: int, tp: int) -> list[np.ndarray]:
    """Contiguous blocks of ``ceil(n / tp)`` (the last ones shorter, possibly empty)."""
    b = -(-n // tp)
    return [np.arange(r * b, min((r + 1) * b, n)) for r in range(tp)]


def rows_per_rank(endpoints: list[tuple[np.ndarray, tuple | None]], parts: list[tuple[int, int]],
                  tp: int, attention_one_device: bool = False) -> list[np.ndarray]:
    """Logical output rows each device computes, from where the rows go.

    ``endpoints``: (index array in the shape of a value the rows reach through data movement,
    target) with target ``("q" | "k" | "v", n_heads)`` for an attention's query or cache, or
    None; a row is dealt out by the first (largest) endpoint that reaches an attention. The
    other rows of each part ``[lo, hi)`` (MLP, LM head) go in contiguous blocks, part by part,
    so elementwise partners (gate and up) stay on one device."""
    per: list[list[np.ndarray]] = [[] for _ in range(tp)]
    n_rows = max((hi for _, hi in parts), default=0)
    covered = np.zeros(n_rows, bool)
    for idx, target in sorted(endpoints, key=lambda e: -np.asarray(e[0]).size):
        flat = np.asarray(idx).reshape(-1)
        if target is None or covered[flat].all():
            continue
        if covered[flat].any():
            raise ValueError("rows reach attention heads in two different ways")
        which, n_heads = target
        if which == "all":  # normalised whole: every device computes them
            for r in range(tp):
                per[r].append(flat)
            covered[flat] = True
            continue
        if flat.size % n_heads:
            raise ValueError(f"{flat.size} elements do not split into {n_heads} heads")
        heads = flat.reshape(n_heads, -1)  # head-major, as the attention reads them
        for r, hs in enumerate(head_ranks(n_heads, tp, "query" if which == "q" else "KV",
                                          attention_one_device)):
            per[r].append(heads[hs].reshape(-1))
        covered[flat] = True
    for lo, hi in parts:
        rest = lo + np.flatnonzero(~covered[lo:hi])
        for r, blk in enumerate(block_ranks(len(rest), tp)):
            per[r].append(rest[blk])
    return [np.concatenate(p).astype(np.int64) if p else np.zeros(0, np.int64) for p in per]


def owner_of_rows(rows: list[np.ndarray], n_rows: int) -> np.ndarray:
    """Owner array of a column-parallel product's output (the first device holding a row)."""
    own = np.full(n_rows, -1, np.int64)
    for r in reversed(range(len(rows))):
        own[rows[r]] = r
    return own


def cols_per_rank(owner: np.ndarray, tp: int) -> list[np.ndarray]:
    """Input columns each device of a row-parallel product holds (from its input's owners)."""
    flat = np.asarray(owner).reshape(-1)
    if (flat < 0).any():
        raise ValueError("the input of a row-parallel product has elements no device owns")
    return [np.flatnonzero(flat == r) for r in range(tp)]


def spans_devices(owner: np.ndarray) -> bool:
    """Does a reduction over the last axis of a value with these owners combine devices?"""
    o = np.asarray(owner)
    if o.ndim == 0 or o.shape[-1] <= 1:
        return False
    return bool((o != o[..., :1]).any())


class TensorParallel:
    """The partition half of the lowering (mixed into :class:`compiler.passes.lower._Lowering`):
    the pipeline stage of each layer, the split of each packed product over the tensor-parallel
    group and the owners of every split value."""

    def stage_of(self, layer: int) -> int:
        """Pipeline stage of a layer (-1: the embedding, stage 0; n_layer: the head, last)."""
        if layer < 0:
            return 0
        for s, r in enumerate(self.stages):
            if layer in r:
                return s
        return self.pp - 1

    # ---------------------------------------------------------------- tensor parallelism
    def _attrs0(self, n: Node) -> dict:
        def res(d):
            if isinstance(d, str):
                return _terms(d)[1]
            return d
        at = dict(n.attrs)
        for k in ("shape", "starts", "ends"):
            if k in at and at[k] is not None:
                at[k] = [res(d) for d in at[k]]
        return at

    def _moves(self, n: Node) -> bool:
        """Pure data movement: wiring, or a gather at constant indices (a head select)."""
        if n.op == "gather":
            return not self.g.is_const(n.inputs[0]) and all(self.g.is_const(i)
                                                            for i in n.inputs[1:])
        return n.op in WIRING

    def _target(self, value: str) -> tuple[str, int] | None:
        """Where a value's elements go: an attention's query ("q", query heads) or cache
        ("k"/"v", KV heads); ("all", 0) when, reaching neither, they are normalised whole first
        (a replicated product's); or None."""
        normalised = False
        for v, u in self._block_users([value]):
            if u.op == "matmul" and any(i in self.cache for i in u.inputs):
                if u.inputs[0] == v or v not in self.cache:
                    return "q", int(np.prod(shape0(self.g, u.inputs[0])[:-1]))
            for a in self.attns:
                if u is a.k_concat or u is a.v_concat:
                    return ("k" if u is a.k_concat else "v"), \
                        int(self.g.shape_of(u.inputs[1])[-3])
            normalised |= u.op in REDUCING and u.op != "softmax"
        return ("all", 0) if normalised else None

    def _block_users(self, values):
        return block_users(self.users, values,
                           lambda u: u.cls.what == "matvec" or u.cls.role == "residual")

    def _probe(self, value: str, first_row: int) -> list[tuple[np.ndarray, tuple | None]]:
        """Push the row indices of a product's output through the data movement after it;
        returns (indices in the shape of each value reached, that value's target)."""
        g = self.g
        sh = shape0(self.g, value)
        out, todo = [], [(value, first_row + np.arange(int(np.prod(sh))).reshape(sh))]
        while todo:
            v, idx = todo.pop()
            end = False
            for u in self.users.get(v, []):
                others = [i for i in u.inputs if i != v and not g.is_const(i)]
                if self._moves(u) and u.inputs[0] == v and not others and len(u.outputs) == 1:
                    args = [idx if i == v else g.consts[i] for i in u.inputs]
                    res = np.asarray(ASIC_OPS[u.op].fn(None, args, self._attrs0(u)))
                    todo.append((u.outputs[0], res.astype(np.int64)))
                else:
                    end = True
            if end or not self.users.get(v):
                out.append((idx, self._target(v)))
        return out

    def partition_matvec(self, mname: str, p: Matvec, parts: list, n_out: int, n_in: int,
                         owner: dict) -> tuple[int, int]:
        """Column- or row-parallel split of a packed product; returns its shape on a device."""
        tp = self.tp
        if self.attn_master:  # CENT: rows in contiguous blocks, gathered on the master
            rows = block_ranks(n_out, tp)
            self.tp_rows[mname] = ("col", rows)
            return max(len(r) for r in rows), n_in
        try:
            if p.input in owner:
                src = np.asarray(owner[p.input]).reshape(-1)
                if not self.attn_one and src.size > 1 and (src == src[0]).all():
                    # a head's own product: local to the device holding its input
                    r = int(src[0])
                    self.tp_rows[mname] = ("col", [np.arange(n_out) if d == r else
                                                   np.zeros(0, np.int64) for d in range(tp)])
                    for m in p.nodes:
                        owner[m.outputs[0]] = np.full(shape0(self.g, m.outputs[0]), r)
                    return n_out, n_in
                cols = cols_per_rank(owner[p.input], tp)
                self.tp_rows[mname] = ("row", cols)
                return n_out, max(len(c) for c in cols)
            ends = []
            for (lo, _, _, _), m in zip(parts, p.nodes):
                ends += self._probe(m.outputs[0], lo)
            rows = rows_per_rank(ends, [(lo, hi) for lo, hi, _, _ in parts], tp,
                                           self.attn_one)
            whole = np.zeros(n_out, bool)  # rows every device computes (replicated)
            for idx, target in ends:
                if target is not None and target[0] == "all":
                    whole[np.asarray(idx).reshape(-1)] = True
            for lo, hi, _, _ in parts:
                if whole[lo:hi].any() and not whole[lo:hi].all():
                    raise _MixedSplit("some of a product's outputs are normalised whole, "
                                      "others split by head")
        except ValueError as e:
            fix = "use pipeline stages (--pp) for this model" if isinstance(e, _MixedSplit) \
                else "choose --tp dividing the head counts"
            raise LoweringError(f"{self.name}: {mname} cannot be split over {tp} devices ({e})",
                                fix) from None
        self.tp_rows[mname] = ("col", rows)
        own = owner_of_rows(rows, n_out)
        for (lo, hi, _, _), m in zip(parts, p.nodes):
            if not whole[lo:hi].any():  # a replicated output is whole on every device
                owner[m.outputs[0]] = own[lo:hi].reshape(shape0(self.g, m.outputs[0]))
        return max(len(r) for r in rows), n_in

    def propagate_owner(self, n: Node, owner: dict) -> None:
        """Owners of an op's output from its split inputs (see :mod:`partition`)."""
        g = self.g
        split = [i for i in n.inputs if i in owner]
        out_shape = shape0(self.g, n.outputs[0])
        try:
            if self._moves(n):  # data movement: move the owners
                if any(i not in owner and not g.is_const(i) for i in n.inputs):
                    raise ValueError("it joins split and whole values")
                args = [owner[i] if i in owner else g.consts[i] for i in n.inputs]
                res = np.asarray(ASIC_OPS[n.op].fn(None, args, self._attrs0(n))).astype(np.int64)
            else:
                o = max((owner[i] for i in split), key=lambda a: a.size)
                if n.op in REDUCING and spans_devices(o):
                    raise ValueError(f"{n.op} combines elements of several devices")
                if n.op in REDUCING or o.shape[-1:] != out_shape[-1:]:
                    o = o[..., :1]
                res = np.broadcast_to(o, out_shape).copy()
        except ValueError as e:
            raise LoweringError(f"{self.name}: op {n.op!r} at node {n.name!r} cannot run on values "
                                f"split over {self.tp} devices ({e})",
                                "use --tp 1 for this model (or pipeline stages, --pp)") from None
        for o in n.outputs:
            owner[o] = res


@dataclass(frozen=True)
class Partition:
    """The lowering's partition: the node classes read (attentions, packs, layers) and the
    pipeline stage of every layer; the tensor-parallel split of each product is made as the
    emission reaches it (:meth:`TensorParallel.partition_matvec`)."""

    name: str = "partition"

    def run(self, low):
        low.read_classes()
        if low.pp > max(low.n_layer, 1):
            raise LoweringError(f"{low.name}: {low.pp} pipeline stages for {low.n_layer} "
                                f"layers", f"use at most {low.n_layer} stages (--pp)")
        low.stages = stage_layers(low.n_layer, low.pp)
        return low
