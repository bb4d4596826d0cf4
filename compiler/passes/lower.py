"""Graph lowering: the decode-step graph, op by op, to a placed :class:`pimsim.isa.Program`.

No model is recognised: every node of the graph (after shape inference and fusion) is put in one
of four classes by what it computes, and the program's steps and dependencies follow the graph's
dataflow, so parallel residuals, untied heads, biases or none, extra norms, gated MLPs and
grouped-query attention need no code of their own.

    fold       what depends only on constants is evaluated now; a concat with an empty operand
               (a cache that starts empty) drops it; only what the logits need is kept
    classify   (a) matrix-vector product with a constant weight       -> PIM (packed by input)
               (b) attention over the KV cache (q.K^T, p.V)           -> PIM, K/V once per KV head
               (c) gather of a table row (token or position)          -> PIM read
               (d) everything else                                    -> ASIC op (pimsim.asic_ops)
               data movement (reshape, transpose, slice, ...) is wiring: free, kept in the flow
    layers     a layer starts at the first op of the norm feeding an attention's projections
    place      vectors (norm weights, biases, frequencies) per layer, K/V caches, tables and
               matrices on channels and banks (PIM-GPT's placement: pimsim.isa layouts)
    emit       Program steps (timing) + Program.flow (the dataflow the functional executor runs)

A MoE router (a matrix product whose weight is chosen by data), a graph whose attention cannot
be traced to the past key/value inputs, or a prefill graph (more than one new token) is refused
with a :class:`LoweringError` naming the node.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.ir import Graph, Node
from compiler.passes import partition
from compiler.passes.fold import fold_graph
from compiler.passes.mapping import (CapacityError, MappingError, buffer_limits,
                                     check_vector_entries, geometry, mapping_header)
from compiler.passes.shape_inference import _terms
from pimsim.asic_ops import OPS as ASIC_OPS
from pimsim.config import HwConfig
from pimsim.errors import UserError
from pimsim.isa import (FlowOp, Geometry, KLayout, MatrixLayout, Program, Step, VectorLayout,
                        VLayout)

WIRING = ("reshape", "transpose", "slice", "select", "unsqueeze", "squeeze", "expand", "cast",
          "concat")
_MATRIX_OPS = ("linear", "gemm", "matmul")
_FIX = ("export one decode step: token [1, 1], position [1], past_k / past_v "
        "[n_layer, n_kv_head, past_len, d_head] (workloads.hf_decode.decode_step_module wraps a "
        "Hugging Face causal LM)")


ATTENTION_SPLITS = ("split", "one-device")  # tensor parallelism: attention by heads, or whole


class LoweringError(UserError):
    """A graph op that cannot be lowered to this PIM system."""

    default_fix = _FIX


@dataclass
class GraphModel:
    """What the lowering learnt about the model (the shapes a report prints)."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    d_head: int
    d_ff: int
    vocab: int
    n_ctx: int
    n_weight_elems: int
    has_weights: bool
    eps: float = 1e-5

    @property
    def d_attn(self) -> int:
        return self.n_head * self.d_head

    def weight_bytes(self, bytes_per_elem: int = 2) -> int:
        return self.n_weight_elems * bytes_per_elem


@dataclass
class _Matvec:
    nodes: list[Node]  # packed members, same input
    input: str
    role: str = ""


@dataclass
class _Attn:
    index: int
    k_concat: Node | None = None
    v_concat: Node | None = None
    n_head: int = 0
    n_kv: int = 0
    d_head: int = 0
    write_step: int = -1
    q_ranks: list | None = None  # tensor parallelism: query heads / KV heads of each device
    kv_ranks: list | None = None


@dataclass
class GraphMapping:
    """Where everything of a graph-lowered model lives. ``pretty()`` prints it as a loop nest,
    ``check()`` proves every weight element is placed once, nothing overlaps, everything fits
    and every matrix's items obey the buffers."""

    model: GraphModel
    hw: str
    geo: Geometry
    vectors: VectorLayout | None = None
    matrices: dict[str, MatrixLayout] = field(default_factory=dict)
    k_cache: list[KLayout] = field(default_factory=list)
    v_cache: list[VLayout] = field(default_factory=list)
    rows_used: list[int] = field(default_factory=list)
    weights: dict[str, Any] = field(default_factory=dict)  # matrix name -> [out, in] array|None
    vector_values: dict[str, Any] = field(default_factory=dict)  # entry -> flat array|None
    # systems: ("col" | "row", logical rows | columns per device) of each split matrix (its
    # weights above stay whole: device r's image takes its share), the device's TP group size
    # and pipeline stage
    tp_rows: dict[str, tuple[str, list]] = field(default_factory=dict)
    tp: int = 1
    stage: int = 0
    n_stages: int = 1
    # gathered tables (token / position embeddings) -> the matrix layout holding them (a table
    # tied to the LM head lives in the head's matrix)
    tables: dict[str, str] = field(default_factory=dict)
    gb_cols: int = 0  # global-buffer columns per fill (pim.global_buffer_bytes)
    accumulators: int = 1  # pim.accumulators_per_bank
    order: str = "pim-gpt"  # pim.mapping

    @property
    def spec(self) -> GraphModel:
        return self.model

    @property
    def lm_head(self) -> MatrixLayout | None:
        """The matrix whose product gives the logits (None on a pipeline stage without it)."""
        return next((m for m in self.matrices.values() if m.role == "lm_head"), None)

    def matvec_matrices(self) -> list[MatrixLayout]:
        """The matrices of matrix-vector products (not the tables only gathered from)."""
        gathered = {t for t, m in self.tables.items() if t == m}
        return [m for n, m in self.matrices.items() if n not in gathered]

    def placed_weight_elems(self) -> int:
        n = sum(m.out_dim * m.in_dim for m in self.matrices.values())
        return n + self.vectors.total_elems

    def placed_weight_bytes(self) -> int:
        return self.placed_weight_elems() * self.geo.elem_bytes

    def kv_bytes(self) -> int:
        """Bytes of K/V cache data placed (full context, every attention)."""
        return sum(2 * k.d_attn * k.n_ctx for k in self.k_cache) * self.geo.elem_bytes

    def bytes_per_channel(self) -> list[int]:
        row_bytes = self.geo.row_elems * self.geo.elem_bytes
        return [r * row_bytes * self.geo.banks for r in self.rows_used]

    # ------------------------------------------------------------------ check
    def owned_rows(self) -> np.ndarray:
        """Keys ``(channel * banks + bank) * rows + row`` of every row any layout owns (the
        extra K/V caches of the sequences in flight on a pipeline included)."""
        g = self.geo
        keys = []
        b = np.arange(g.banks)

        def add(ch, bank, row):
            keys.append((np.asarray(ch) * g.banks + np.asarray(bank)) * g.rows + np.asarray(row))

        def block(rows):
            for c in range(g.channels):
                add(c, b[:, None], rows[None, :])

        keys += [m.row_keys() for m in self.matrices.values()]
        for kl, vl in zip(self.k_cache, self.v_cache):
            block(kl.base_row + np.arange(kl.rows_reserved))
            keys.append(vl.matrix.row_keys())
            extra = (self.n_stages - 1) * (kl.rows_reserved + vl.rows_reserved)
            if extra:
                block(vl.base_row + vl.rows_reserved + np.arange(extra))
        block(self.vectors.base_row + np.arange(self.vectors.rows_reserved))
        return np.concatenate([k.ravel() for k in keys]) if keys else np.zeros(0, np.int64)

    def check(self) -> None:
        """Every weight element placed exactly once, nothing overlaps, everything fits, and
        the items of every matrix-vector product keep within the global buffer and the
        accumulators (the loop nest ``pretty()`` prints, replayed). Raises ``MappingError``
        naming the first problem."""
        from compiler.passes.mapping import check_matrix_layouts

        g = self.geo
        if max(self.rows_used) > g.rows:
            raise MappingError(f"{max(self.rows_used)} rows used, the banks have {g.rows}")
        check_matrix_layouts(self.matrices.values(), self.matvec_matrices(), g, self.gb_cols,
                             self.accumulators)
        keys = np.sort(self.owned_rows())
        dup = np.flatnonzero(keys[1:] == keys[:-1])
        if len(dup):
            k = int(keys[dup[0]])
            cb = k // g.rows
            raise MappingError(f"overlap: channel {cb // g.banks} bank {cb % g.banks} row "
                               f"{k % g.rows} is owned by more than one placement")
        if len(keys) and (keys % g.rows >= np.asarray(self.rows_used)[keys // g.rows
                                                                      // g.banks]).any():
            raise MappingError("a placement lies beyond the rows reserved in its channel")
        check_vector_entries(self.vectors, g)
        if self.tp == 1 and self.n_stages == 1 and \
                self.placed_weight_elems() != self.model.n_weight_elems:
            raise MappingError(f"placed {self.placed_weight_elems()} weight elements, the model "
                               f"has {self.model.n_weight_elems}")

    # ------------------------------------------------------------------ printing
    def pretty(self) -> str:
        """The mapping as a loop nest: where each neuron, token and vector lives, and the
        order of each matrix-vector product's commands. Layers of the same structure are
        printed once (``for layer in a..b``, the first one's names and rows)."""
        g, s = self.geo, self.model
        lines = mapping_header(s.name, self.hw, g, self.order, self.gb_cols, self.accumulators)
        if self.tp > 1 or self.n_stages > 1:
            lines.append(f"  device 0 of a tensor-parallel group of {self.tp}, pipeline stage "
                         f"{self.stage} of {self.n_stages} (split matrices: this device's rows "
                         f"or columns)")
        lines.append(f"  vectors: {len(self.vectors.entries)} entries, "
                     f"{self.vectors.total_elems} elements striped over all banks, rows "
                     f"{self.vectors.base_row}.."
                     f"{self.vectors.base_row + self.vectors.rows_reserved - 1}")
        tied = {}
        for t, m in self.tables.items():
            if t != m:
                tied.setdefault(m, []).append(t)

        def mat(m: MatrixLayout, indent: str) -> list[str]:
            cols = [m.chunk(k)[1] for k in range(m.n_chunks)]
            head = (f"{indent}{m.name} [{m.out_dim} x {m.in_dim}] {m.n_groups} groups "
                    f"({m.slots(0)} slots in channel 0), {m.n_chunks} chunk(s) of {cols} "
                    f"elements")
            rows = (f"rows {m.base_row[0]}..{m.base_row[0] + m.rows_reserved - 1} "
                    f"(channel 0)")
            if self.tables.get(m.name) == m.name:
                return [f"{head}, gathered: table row r is neuron r, one row read per lookup, "
                        f"{rows}"]
            also = (f"; also the gathered table {', '.join(tied[m.name])}"
                    if m.name in tied else "")
            return [f"{head}, {len(m.fills)} fill(s), {m.n_reads} partial sum(s) per output, "
                    f"{rows}{also}", *m.strategy.loop_nest(m, indent)]

        def layer_of(name: str) -> int | None:
            head = name.split(".")[0]
            return int(head[1:]) if head[:1] == "L" and head[1:].isdigit() else None

        kv = {kl.layer: (kl, vl) for kl, vl in zip(self.k_cache, self.v_cache)}
        per_layer: dict[int, list[MatrixLayout]] = {}
        before, after = [], []
        for name, m in self.matrices.items():
            li = layer_of(name)
            if li is None:
                (after if per_layer else before).append(m)
            else:
                per_layer.setdefault(li, []).append(m)
        for li in kv:
            per_layer.setdefault(li, [])
        per_layer = dict(sorted(per_layer.items()))

        def signature(li: int):
            k_v = kv.get(li)
            kvs = None if k_v is None else tuple(
                dataclasses.replace(x, layer=0, base_row=0) for x in k_v)
            return kvs, tuple((m.name.split(".", 1)[1], m.out_dim, m.in_dim)
                              for m in per_layer[li])

        for m in before:
            lines += mat(m, "  ")
        layers = list(per_layer)
        i = 0
        while i < len(layers):
            j = i
            while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1 and \
                    signature(layers[j + 1]) == signature(layers[i]):
                j += 1
            li = layers[i]
            lines.append(f"  for layer in {li}..{layers[j]}:")
            if li in kv:
                kl, vl = kv[li]
                heads = (f" ({kl.kv_heads} KV heads for {kl.n_head} query heads)"
                         if kl.kv_heads != kl.n_head else "")
                lines.append(
                    f"    K cache (row-major) rows {kl.base_row}..{heads}: token t -> channel "
                    f"t % {g.channels}, bank (t // {g.channels}) % {g.banks}, slot t // "
                    f"{kl.tokens_per_slot}; {kl.n_chunks} chunk(s) of {kl.heads_per_chunk} "
                    f"heads, q written {kl.fill_heads} head(s) per fill, scores read "
                    f"{kl.accumulators} at a time")
                lines.append(
                    f"    V cache (column-major) rows {vl.base_row}..: value (h, j) is neuron "
                    f"h*{vl.d_head}+j of a [{vl.kv_heads * vl.d_head} x {vl.n_ctx}] matrix, "
                    f"token t at element t")
                if self.n_stages > 1:
                    lines.append(f"    ... and {self.n_stages - 1} more K/V cache(s) after "
                                 f"them, one per sequence in flight")
            for m in per_layer[li]:
                lines += mat(m, "    ")
            i = j + 1
        for m in after:
            lines += mat(m, "  ")
        lines.append("  rows used per channel: " + ", ".join(map(str, self.rows_used))
                     + f" of {g.rows}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def lower_graph(graph: Graph, cfg: HwConfig, *, name: str = "model",
                n_ctx: int | None = None) -> tuple[Program, GraphMapping]:
    """Lower a shape-inferred, fused decode-step graph onto ``cfg`` (one device)."""
    (prog, mp), = _Lowering(graph, cfg, name, n_ctx).run()
    return prog, mp


def lower_graph_system(graph: Graph, cfg: HwConfig, *, name: str = "model",
                       n_ctx: int | None = None, tp: int = 1, pp: int = 1,
                       attention: str = "split") -> list[tuple[Program, GraphMapping]]:
    """Lower onto a system of ``tp x pp`` devices: one (program, mapping) per pipeline stage,
    each the program of one device of the stage's tensor-parallel group
    (:mod:`compiler.passes.partition`). ``tp = pp = 1`` is exactly :func:`lower_graph`."""
    return _Lowering(graph, cfg, name, n_ctx, tp=tp, pp=pp, attention=attention).run()


class _Lowering:
    def __init__(self, graph: Graph, cfg: HwConfig, name: str, n_ctx: int | None,
                 tp: int = 1, pp: int = 1, attention: str = "split") -> None:
        if attention not in ATTENTION_SPLITS:
            raise LoweringError(f"attention = {attention!r} unknown",
                                f"use one of {', '.join(ATTENTION_SPLITS)}")
        self.attn_one = attention == "one-device"
        self.g = graph.copy()
        self.cfg = cfg
        self.name = name
        self.n_ctx = n_ctx
        self.geo = geometry(cfg)
        self.tp, self.pp = tp, pp

    # ---------------------------------------------------------------- folding
    def fold(self) -> None:
        fold_graph(self.g, self.name)  # a no-op on a graph through the Fold pass already

    # ---------------------------------------------------------------- analysis
    def inputs(self) -> None:
        g = self.g
        past = [v for v in g.inputs if v.shape is not None and len(v.shape) == 4]
        ints = [v for v in g.inputs if v.dtype.startswith("i") and v not in past]
        if len(past) != 2:
            raise LoweringError(f"{self.name}: expected two KV-cache inputs (past_k, past_v) of "
                                f"rank 4, found {[v.name for v in past]}")
        self.past_k, self.past_v = past[0].name, past[1].name
        self.syms = {d for v in past for d in v.shape if isinstance(d, str)}
        users = g.users()
        tok = [v for v in ints if any(u.op == "gather" and g.is_const(u.inputs[0])
                                      for u in self._through_wiring(v.name, users))]
        if not tok:
            raise LoweringError(f"{self.name}: no token input feeds an embedding gather")
        self.token = tok[0].name
        table = next(u.inputs[0] for u in self._through_wiring(self.token, users)
                     if u.op == "gather" and g.is_const(u.inputs[0]))
        self.d_model = int(g.const_shape(table)[-1])
        shape = tok[0].shape
        if shape is not None and any(d != 1 for d in shape):
            raise LoweringError(
                f"{self.name}: the token input {self.token} has shape {list(shape)}: this is a "
                f"prefill graph (more than one new token), which cannot be lowered at length 1")
        rest = [v.name for v in ints if v.name != self.token]
        self.position = rest[0] if rest else ""

    def _through_wiring(self, value: str, users: dict) -> list[Node]:
        out, todo, seen = [], [value], set()
        while todo:
            v = todo.pop()
            for u in users.get(v, []):
                if id(u) in seen:
                    continue
                seen.add(id(u))
                if u.op in ("reshape", "unsqueeze", "squeeze", "cast", "expand"):
                    todo.extend(u.outputs)
                else:
                    out.append(u)
        return out

    def analyse(self) -> None:
        g = self.g
        self.prod = g.producers()
        self.users = g.users()
        pos_only: set[str] = {self.position} if self.position else set()
        cache: dict[str, tuple[int, str, bool]] = {}  # value -> (attn, "k"|"v", transposed)
        self.attns: list[_Attn] = []
        k_count = v_count = 0
        self.cache_in: dict[str, str] = {self.past_k: "k", self.past_v: "v"}
        self.skip: set[int] = set()
        for n in g.nodes:
            ins = [i for i in n.inputs if not g.is_const(i)]
            if ins and all(i in pos_only for i in ins):
                pos_only.update(n.outputs)
            if n.op in ("select", "slice", "reshape", "squeeze", "unsqueeze") and ins and \
                    ins[0] in self.cache_in:
                self.cache_in[n.outputs[0]] = self.cache_in[ins[0]]
                self.skip.add(id(n))
                continue
            if n.op == "concat" and len(n.inputs) == 2 and n.inputs[0] in self.cache_in:
                which = self.cache_in[n.inputs[0]]
                idx = k_count if which == "k" else v_count
                if which == "k":
                    k_count += 1
                else:
                    v_count += 1
                while len(self.attns) <= idx:
                    self.attns.append(_Attn(len(self.attns)))
                setattr(self.attns[idx], f"{which}_concat", n)
                cache[n.outputs[0]] = (idx, which, False)
                continue
            if n.op in WIRING and ins and ins[0] in cache and n.op != "concat":
                a, which, tr = cache[ins[0]]
                if n.op == "transpose":
                    p = n.attrs["perm"]
                    if list(p[-2:]) == [len(p) - 1, len(p) - 2]:
                        tr = not tr
                cache[n.outputs[0]] = (a, which, tr)
                self.skip.add(id(n))
                continue
            if any(i in cache for i in n.inputs) and n.op != "matmul":
                raise LoweringError(f"{self.name}: node {n.name!r} ({n.op}) computes on the KV "
                                    f"cache; only q.K^T and p.V products may read it")
            for i in n.inputs:
                if i in self.cache_in:
                    raise LoweringError(f"{self.name}: node {n.name!r} ({n.op}) reads the past "
                                        f"key/value input other than by appending to it")
        self.pos_only = pos_only
        self.cache = cache
        if not self.attns:
            raise LoweringError(f"{self.name}: no attention over the KV cache found (no concat of "
                                f"the past keys with a new key)")

    def is_weight(self, n: Node) -> bool:
        g = self.g
        if n.op not in _MATRIX_OPS or len(n.inputs) < 2 or not g.is_const(n.inputs[1]):
            return False
        if len(g.const_shape(n.inputs[1])) != 2 or n.inputs[0] in self.pos_only:
            return False
        if n.op == "gemm" and (n.attrs["trans_a"] or n.attrs["alpha"] != 1 or n.attrs["beta"] != 1):
            return False
        return True

    def weight_out_in(self, n: Node) -> tuple[np.ndarray | None, tuple[int, int]]:
        g = self.g
        w = g.const_value(n.inputs[1])
        r, c = g.const_shape(n.inputs[1])
        if n.op == "linear":
            out_in = n.attrs["w_layout"] == "out_in"
        elif n.op == "gemm":
            out_in = bool(n.attrs["trans_b"])
        else:
            out_in = False
        shape = (r, c) if out_in else (c, r)
        if w is None:
            return None, shape
        return (w if out_in else np.ascontiguousarray(w.T)), shape

    # ---------------------------------------------------------------- layers
    def layer_cuts(self) -> list[int]:
        """Node index where each layer starts: the earliest op of what feeds an attention's new
        key back to the residual stream (its norm and projection); the last cut starts the
        head (what feeds the logits back to the residual stream)."""
        g = self.g
        index = {id(n): i for i, n in enumerate(g.nodes)}

        def start(value: str, limit: int) -> int:
            best, todo, seen = limit, [value], set()
            while todo:
                v = todo.pop()
                n = self.prod.get(v)
                if n is None or id(n) in seen or v in self.pos_only:
                    continue
                seen.add(id(n))
                if self.is_residual(n) or n.op == "gather" or self.is_embedding_sum(n) or (
                        n.op == "matmul" and any(i in self.cache for i in n.inputs)):
                    continue
                best = min(best, index[id(n)])
                todo.extend(i for i in n.inputs if not g.is_const(i))
            return best

        cuts = [start(a.k_concat.inputs[1], index[id(a.k_concat)]) for a in self.attns]
        cuts.append(start(g.outputs[0], len(g.nodes)))
        return cuts

    def is_embedding_sum(self, n: Node) -> bool:
        """An add of table rows (token + position embeddings): the residual stream's start."""
        if n.op != "add":
            return False
        for i in n.inputs:
            p = self.prod.get(i)
            while p is not None and p.op in WIRING and p.op != "concat":
                p = self.prod.get(p.inputs[0])
            if p is None or p.op != "gather" or not self.g.is_const(p.inputs[0]):
                return False
        return True

    def is_residual(self, n: Node) -> bool:
        g = self.g
        if n.op != "add" or len(n.inputs) != 2:
            return False
        if any(g.is_const(i) or i in self.pos_only for i in n.inputs):
            return False
        a, b = (g.shape_of(i) for i in n.inputs)
        if not a or not b or a[-1] != self.d_model or b[-1] != self.d_model:
            return False
        return all(d == 1 for d in a[:-1]) and all(d == 1 for d in b[:-1]) or a == b

    # ---------------------------------------------------------------- run
    def run(self) -> tuple[Program, GraphMapping]:
        self.fold()
        self.inputs()
        self.analyse()
        g = self.g
        for n in g.nodes:
            if n.op not in ASIC_OPS and n.op not in ("gather",) and id(n) not in self.skip:
                raise LoweringError(f"{self.name}: op {n.op!r} at node {n.name!r} has no ASIC or "
                                    f"PIM definition")
        # matvecs packed by input
        packs: dict[str, _Matvec] = {}
        self.pack_of: dict[int, _Matvec] = {}
        for n in g.nodes:
            if self.is_weight(n):
                w, _ = self.weight_out_in(n)
                key = n.inputs[0]
                p = packs.get(key)
                if p is None:
                    p = packs[key] = _Matvec([], key)
                p.nodes.append(n)
                self.pack_of[id(n)] = p
            elif n.op in _MATRIX_OPS and len(n.inputs) >= 2 and g.is_const(n.inputs[1]) and \
                    n.inputs[0] not in self.pos_only:
                raise LoweringError(f"{self.name}: matrix product at node {n.name!r} has a "
                                    f"weight of shape {g.const_shape(n.inputs[1])}")
        cuts = self.layer_cuts()
        layer_of = {}
        li = -1
        cut_set = {c: k for k, c in enumerate(cuts)}
        for i, n in enumerate(g.nodes):
            if i in cut_set:
                li = cut_set[i]
            layer_of[id(n)] = li
        # nodes after the last attention's block that feed the head: "final" (= n_layer)
        self.n_layer = len(self.attns)
        self.layer_of = layer_of
        if self.pp > max(self.n_layer, 1):
            raise LoweringError(f"{self.name}: {self.pp} pipeline stages for {self.n_layer} "
                                f"layers", f"use at most {self.n_layer} stages (--pp)")
        return self.emit(layer_of)

    # ---------------------------------------------------------------- emission
    def emit(self, layer_of: dict[int, int]) -> list[tuple[Program, GraphMapping]]:
        """The program's steps and dataflow, node by node, then placed per pipeline stage."""
        self._start_emission()
        g = self.g
        for n in g.nodes:
            if id(n) in self.skip:
                continue
            layer = layer_of[id(n)]
            L = self._lname(layer)
            if n.op == "concat" and any(n is a.k_concat or n is a.v_concat for a in self.attns):
                self._emit_cache_append(n)
            elif n.op == "matmul" and any(i in self.cache for i in n.inputs):
                self._emit_attention(n)
            elif n.op == "gather" and g.is_const(n.inputs[0]) and not g.is_const(n.inputs[1]) \
                    and len(g.const_shape(n.inputs[0])) == 2 and n.attrs["axis"] == 0:
                self._emit_gather(n, layer, L)
            elif id(n) in self.pack_of:
                self._emit_matvec(n, layer, L)
            else:
                self._emit_asic(n, layer, L)
        return self._finish_emission()

    def _start_emission(self) -> None:
        """The emission's state: the steps and flow so far and what they refer to."""
        self.steps: list[Step] = []
        self.flow: list[FlowOp] = []
        self.step_of: dict[str, set[int]] = {}  # value -> steps that produced it
        self.vec_consts: dict[int, list[str]] = {}  # layer -> vector constants in first-use order
        self.vec_layer: dict[str, int] = {}
        self.immediates: dict[str, np.ndarray] = {}
        self.param_step: dict[int, int] = {}
        self.matrices_w: dict[str, Any] = {}
        self.mat_shapes: dict[str, tuple[int, int]] = {}
        self.mat_order: list[str] = []
        self.table_of: dict[str, str] = {}  # gathered const -> table name
        self.weight_matrix: dict[str, str] = {}  # weight const -> the packed matrix holding it
        self.tables_first: list[str] = []
        self.done_packs: set[int] = set()
        self.embed_values: set[str] = set()
        self.attn_scores: set[str] = set()
        self.head_matvec = None
        self.logits = self.g.outputs[0]
        self.names: dict[str, int] = {}
        self.d_ff = 0
        self.owner: dict[str, np.ndarray] = {}  # values split across the TP devices -> owners
        self.tp_rows: dict[str, tuple[str, list]] = {}  # matrix -> ("col"|"row", per device)
        self.mat_local: dict[str, tuple[int, int]] = {}  # matrix -> its shape on one device
        self.mat_layer: dict[str, int] = {}
        self.step_layer: list[int] = []  # each step's layer (-1 embedding, n_layer final)
        # reduction step -> its matrix: sized when placed (partial sums per output: the layout's)
        self.reduce_of: dict[int, str] = {}
        self.anc: list[set[int]] = []  # each step's ancestors, as far as computed

    def _lname(self, layer: int) -> str:
        """A step-name prefix: ``embed``, ``L<i>`` or ``final``."""
        return "embed" if layer < 0 else ("final" if layer >= self.n_layer else f"L{layer}")

    def _uniq(self, stem: str) -> str:
        """A step name not used before: ``stem``, ``stem.1``, ..."""
        k = self.names.get(stem, 0)
        self.names[stem] = k + 1
        return stem if k == 0 else f"{stem}.{k}"

    def _add(self, name, op, layer, kind, deps, **kw) -> int:
        """Append a program step; returns its index."""
        self.steps.append(Step(len(self.steps), self._uniq(name), op, layer if 0 <= layer < self.n_layer
                          else -1, kind, tuple(sorted(set(deps))), **kw))
        self.step_layer.append(layer)
        return len(self.steps) - 1

    def _ancestors(self, i: int) -> set[int]:
        """Every step step ``i`` depends on, directly or not."""
        while len(self.anc) < len(self.steps):
            st = self.steps[len(self.anc)]
            self.anc.append(set(st.deps).union(*(self.anc[d] for d in st.deps)))
        return self.anc[i]

    def _deps_of(self, values) -> set[int]:
        """The steps that produced ``values``."""
        out: set[int] = set()
        for v in values:
            out |= self.step_of.get(v, set())
        return out

    def _dim_attr(self, d):
        """A dimension for the flow: an int, or ("pos", per position, constant)."""
        if isinstance(d, str):
            terms, const = _terms(d)
            if not set(terms) <= self.syms:
                raise LoweringError(f"{self.name}: dimension {d!r} depends on {sorted(terms)}, "
                                    f"not on the cache length alone")
            return ("pos", sum(terms.values()), const)
        return d

    def _attrs_of(self, n: Node) -> dict:
        """An op's attributes with its symbolic dimensions in the flow's form."""
        at = dict(n.attrs)
        for k in ("shape", "starts", "ends"):
            if k in at and at[k] is not None:
                at[k] = [self._dim_attr(d) for d in at[k]]
        return at

    def _elems(self, value: str) -> tuple[int, int]:
        """(n_elems, per_pos_elems) of a value: n(pos) = n_elems + per_pos * (pos + 1)."""
        shape = self.g.shape_of(value) or ()

        def at(p):
            tot = 1
            for d in shape:
                if isinstance(d, str):
                    terms, const = _terms(d)
                    d = const + sum(k * p for k in terms.values())
                tot *= int(d)
            return tot
        n0, n1 = at(0), at(1)  # cache lengths 0 and 1: positions 0 and 1
        per = n1 - n0
        return n0 - per, per

    def _operand(self, name: str, layer: int) -> str:
        """Make a constant operand of an ASIC op available: an immediate or a vector."""
        g = self.g
        if not g.is_const(name):
            return name
        c = g.consts[name]
        if name in self.vec_layer or name in self.immediates:
            return name
        if isinstance(c, np.ndarray) and (c.size <= 1 or c.dtype.kind != "f"):
            self.immediates[name] = np.asarray(c)
        else:
            self.vec_layer[name] = layer
            self.vec_consts.setdefault(layer, []).append(name)
        return name

    def _need_params(self, layer: int) -> set[int]:
        """The step fetching a layer's vectors (made on first need)."""
        if layer not in self.param_step:
            self.param_step[layer] = self._add(f"{self._lname(layer)}.params", "param_fetch", layer, "pim", [],
                                    vectors=(f"{self._lname(layer)}.params",))
        return {self.param_step[layer]}

    def _wired_source(self, value: str) -> Node | None:
        """The op that made ``value``, looking through wiring."""
        n = self.prod.get(value)
        while n is not None and n.op in WIRING and n.op != "concat":
            n = self.prod.get(n.inputs[0])
        return n

    def _emit_cache_append(self, n: Node) -> None:
        """A new key or value appended to an attention's cache: a write in the flow."""
        g = self.g
        a = next(a for a in self.attns if n is a.k_concat or n is a.v_concat)
        which = "k" if n is a.k_concat else "v"
        new = n.inputs[1]
        sh = g.shape_of(new)
        if len(sh) < 3 or sh[-2] != 1 or any(d != 1 for d in sh[:-3]) or \
                n.attrs["axis"] % len(sh) != len(sh) - 2:
            raise LoweringError(f"{self.name}: the new {which} at node {n.name!r} has "
                                f"shape {list(sh)}, expected [1, n_kv_head, 1, d_head] "
                                f"appended on the token axis")
        a.n_kv, a.d_head = int(sh[-3]), int(sh[-1])
        self.flow.append(FlowOp(f"{which}_write", (new,), (), {"attn": a.index}, -2))

    def _emit_attention(self, n: Node) -> None:
        """q.K^T or p.V over a cache: a PIM step (after the cache write)."""
        g, tp = self.g, self.tp
        a_in, b_in = n.inputs[:2]
        if b_in not in self.cache or a_in in self.cache:
            raise LoweringError(f"{self.name}: node {n.name!r}: the cache must be the "
                                f"right operand of the attention product")
        ai, which, tr = self.cache[b_in]
        a = self.attns[ai]
        if which == "k" and not tr or which == "v" and tr:
            raise LoweringError(f"{self.name}: node {n.name!r} multiplies by "
                                f"{'K' if which == 'k' else 'V^T'}; expected q.K^T or p.V")
        L = f"L{ai}"
        if a.write_step < 0:
            news = [x.inputs[1] for x in (a.k_concat, a.v_concat) if x is not None]
            a.write_step = self._add(f"{L}.kv_write", "kv_write", ai, "pim", self._deps_of(news),
                               kv=(ai,))
        q_elems = int(np.prod([int(d) for d in g.shape_of(a_in)[:-1]])) if which == "k" \
            else 0
        if which == "k":
            a.n_head = q_elems
            st = self._add(f"{L}.attn_score", "attn_score", ai, "pim",
                     self._deps_of([a_in]) | {a.write_step}, kv=(ai,))
        else:
            st = self._add(f"{L}.attn_value", "attn_value", ai, "pim",
                     self._deps_of([a_in]) | {a.write_step}, kv=(ai,))
        if which == "k":
            self.attn_scores.add(n.outputs[0])
        if tp > 1:
            if a_in not in self.owner:
                raise LoweringError(f"{self.name}: node {n.name!r}: the attention's "
                                    f"{'query' if which == 'k' else 'weights'} are not "
                                    f"split by head across the {tp} devices",
                                    "use --tp 1 for this model")
            self.owner[n.outputs[0]] = np.broadcast_to(
                self.owner[a_in][..., :1], self.shape0(n.outputs[0])).copy()
        self.flow.append(FlowOp(f"attn_{'score' if which == 'k' else 'value'}", (a_in,),
                           tuple(n.outputs), {"attn": ai, "shape": list(
                               self._dim_attr(d) for d in g.shape_of(n.outputs[0]))}, st))
        self.step_of[n.outputs[0]] = {st}

    def _emit_gather(self, n: Node, layer: int, L: str) -> None:
        """A row read from a constant table (token or position embedding)."""
        g = self.g
        table = n.inputs[0]
        if table not in self.table_of:
            self.table_of[table] = f"table.{len(self.table_of)}"
            self.tables_first.append(table)
        prev = self.steps[-1] if self.steps else None
        if prev is not None and prev.op == "embedding" and prev.kind == "pim" and \
                not (self._deps_of([n.inputs[1]]) - set(prev.deps)):
            prev.vectors = prev.vectors + (self.table_of[table],)  # one read of both rows
            st = prev.index
        else:
            st = self._add(f"{L}.read", "embedding", layer, "pim", self._deps_of([n.inputs[1]]),
                     vectors=(self.table_of[table],))
        self.flow.append(FlowOp("embed", (n.inputs[1],), tuple(n.outputs),
                           {"table": self.table_of[table],
                            "shape": [self._dim_attr(d) for d in g.shape_of(n.outputs[0])]}, st))
        self.step_of[n.outputs[0]] = {st}
        self.embed_values.add(n.outputs[0])

    def _emit_matvec(self, n: Node, layer: int, L: str) -> None:
        """The packed matrix-vector product of ``n`` (once per pack): the PIM step, the ASIC's
        reduction and, split over devices, the exchange."""
        g, geo, tp = self.g, self.geo, self.tp
        p = self.pack_of[id(n)]
        if id(p) in self.done_packs:
            return
        self.done_packs.add(id(p))
        role = self.matvec_role(p, self.logits, self._wired_source)
        mname = f"{L}.{role}"
        k = 1
        while mname in self.mat_shapes:
            mname, k = f"{L}.{role}{k}", k + 1
        parts, ws, lo = [], [], 0
        for m in p.nodes:
            w, (o, i) = self.weight_out_in(m)
            ws.append(w)
            bias = ""
            if len(m.inputs) > 2:
                bias = self._operand(m.inputs[2], layer)
                if bias in self.immediates:
                    raise LoweringError(f"{self.name}: bias of {m.name!r} is a scalar")
            shape = [self._dim_attr(d) for d in g.shape_of(m.outputs[0])]
            parts.append((lo, lo + o, bias, shape))
            lo += o
        in_dim = self.weight_out_in(p.nodes[0])[1][1]
        out_loc, in_loc = lo, in_dim
        if tp > 1:
            out_loc, in_loc = self.partition_matvec(mname, p, parts, lo, in_dim, self.owner)
        self.mat_local[mname] = (out_loc, in_loc)
        self.mat_layer[mname] = layer
        self.matrices_w[mname] = None if any(w is None for w in ws) else np.concatenate(ws, 0)
        self.mat_shapes[mname] = (lo, in_dim)
        self.mat_order.append(mname)
        if role == "lm_head":
            self.head_matvec = mname
        if role == "ffn_up":
            self.d_ff = max([self.d_ff] + [hi - lo_ for lo_, hi, _, _ in parts])
        pim = self._add(f"{L}.{role}", role, layer, "pim", self._deps_of([p.input]), matrix=mname)
        deps = {pim}
        if any(part[2] for part in parts):  # biases: fetched vectors
            par = self._need_params(layer)
            deps |= par - self._ancestors(pim)
        n_chunks = -(-in_loc // geo.row_elems)
        red = self._add(f"{L}.{role}.reduce", "reduction", layer, "asic", deps,
                  n_elems=out_loc * n_chunks)  # place() sets it from the layout
        self.reduce_of[red] = mname
        self.flow.append(FlowOp("matvec", (p.input,), tuple(m.outputs[0] for m in p.nodes),
                           {"matrix": mname, "parts": parts}, pim))
        done = {red}
        if tp > 1 and self.tp_rows[mname][0] == "row":  # partial sums: one exchange
            whole = all(len(c) == 0 for c in self.tp_rows[mname][1][1:])
            op = "broadcast" if whole else "all_reduce"  # device 0 had it all
            done = {self._add(f"{L}.{role}.{op}", op, layer, "comm", {red}, n_elems=lo)}
        for m in p.nodes:
            self.step_of[m.outputs[0]] = done
        for m in p.nodes:  # remember weights, for tables tied to them
            self.weight_matrix.setdefault(m.inputs[1], mname)

    def _emit_asic(self, n: Node, layer: int, L: str) -> None:
        """An ASIC op (a step, or folded into the flow when it costs nothing) or wiring."""
        g, tp = self.g, self.tp
        spec = ASIC_OPS.get(n.op)
        if spec is None:
            raise LoweringError(f"{self.name}: op {n.op!r} at node {n.name!r} has no "
                                f"definition on the ASIC")
        ins = [self._operand(i, layer) for i in n.inputs]
        deps = self._deps_of([i for i in ins if not g.is_const(i)])
        if any(i in self.vec_layer for i in ins):
            deps |= self._need_params(self.vec_layer[next(i for i in ins if i in self.vec_layer)])
        split = tp > 1 and any(i in self.owner for i in n.inputs)
        if split:
            self.propagate_owner(n, self.owner)
        if spec.cost is None:
            self.flow.append(FlowOp(n.op, tuple(ins), tuple(n.outputs), self._attrs_of(n), -1))
            for o in n.outputs:
                self.step_of[o] = deps
            return
        op = spec.cost
        src = self.prod.get(n.inputs[0])
        if n.op in ("mul", "div") and len(ins) == 2 and ins[1] in self.immediates and \
                self.immediates[ins[1]].size == 1 and src is not None and \
                src.outputs[0] in self.attn_scores and len(self.users.get(n.outputs[0], [])) == 1 \
                and self.users[n.outputs[0]][0].op == "softmax":
            # the scores' scale: applied as the softmax reads them (PIM-GPT's softmax cost)
            self.flow.append(FlowOp(n.op, tuple(ins), tuple(n.outputs), self._attrs_of(n), -1))
            self.step_of[n.outputs[0]] = self.step_of[n.inputs[0]]
            return
        if self.is_embedding_sum(n):
            op = "embedding"
        elif n.op == "add" and self.is_residual(n):
            op = "residual"
        cnt = [self._elems(v) for v in list(n.outputs) + [i for i in n.inputs if not g.is_const(i)]]
        ne, per = max(cnt, key=lambda t: (t[1], t[0]))
        if split:  # device 0's share (the device simulated)
            share = float(np.mean(self.owner[n.outputs[0]] == 0))
            ne, per = math.ceil(ne * share - 1e-9), math.ceil(per * share - 1e-9)
        st = self._add(f"{L}.{n.op}", op, layer, "asic", deps, n_elems=ne, per_pos_elems=per)
        self.flow.append(FlowOp(n.op, tuple(ins), tuple(n.outputs), self._attrs_of(n), st))
        for o in n.outputs:
            self.step_of[o] = {st}

    def _finish_emission(self) -> list[tuple[Program, GraphMapping]]:
        """The argmax after the LM head, tables tied to weights, then each stage placed."""
        g, tp = self.g, self.tp
        if self.head_matvec is None:
            raise LoweringError(f"{self.name}: the logits are not a matrix-vector product with a "
                                f"weight (no LM head found)")
        vocab = self.mat_shapes[self.head_matvec][0]
        head_deps = self._deps_of([self.logits])
        if tp > 1 and self.logits in self.owner:  # each device's share of the logits to device 0
            head_deps = {self._add("logits.gather", "gather", self.n_layer, "comm", head_deps,
                             n_elems=self.mat_local[self.head_matvec][0])}
        self._add("argmax", "argmax", self.n_layer, "asic", head_deps, n_elems=vocab)
        # tied tables: a gathered table that is also a weight lives with its matrix
        tied: dict[str, str] = {}
        for t in self.tables_first:
            mname = self.weight_matrix.get(t)
            if mname is None and g.const_value(t) is not None:
                for mn in sorted(set(self.weight_matrix.values())):
                    if self.matrices_w.get(mn) is not None and \
                            self.matrices_w[mn].shape == g.const_shape(t) and \
                            np.array_equal(self.matrices_w[mn], g.const_value(t)):
                        mname = mn
            if mname is not None and self.mat_shapes[mname] == g.const_shape(t):
                tied[self.table_of[t]] = mname
        if self.tp > 1 or self.pp > 1:
            tied = {}  # each device holds the rows it reads: the table is placed on its own
        self.stages = partition.stage_layers(self.n_layer, self.pp)
        return [self.place(self.steps, self.flow, self.immediates, self.vec_consts,
                           self.matrices_w, self.mat_shapes, self.mat_order, self.table_of,
                           self.tables_first, tied, vocab, self.d_ff, self.logits, s)
                for s in range(self.pp)]

    def stage_of(self, layer: int) -> int:
        """Pipeline stage of a layer (-1: the embedding, stage 0; n_layer: the head, last)."""
        if layer < 0:
            return 0
        for s, r in enumerate(self.stages):
            if layer in r:
                return s
        return self.pp - 1

    # ---------------------------------------------------------------- tensor parallelism
    def shape0(self, value: str) -> tuple[int, ...]:
        """A value's shape at position 0 (cache-length dimensions resolved)."""
        out = []
        for d in self.g.shape_of(value) or ():
            if isinstance(d, str):
                terms, const = _terms(d)
                d = const
            out.append(int(d))
        return tuple(out)

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
        ("k"/"v", KV heads), or None."""
        for v, u in self._block_users([value]):
            if u.op == "matmul" and any(i in self.cache for i in u.inputs):
                if u.inputs[0] == v or v not in self.cache:
                    return "q", int(np.prod(self.shape0(u.inputs[0])[:-1]))
            for a in self.attns:
                if u is a.k_concat or u is a.v_concat:
                    return ("k" if u is a.k_concat else "v"), \
                        int(self.g.shape_of(u.inputs[1])[-3])
        return None

    def _block_users(self, values):
        """(value, user) pairs reached from ``values`` through every op except weight products
        and residual adds (which end a block): what the values feed."""
        todo, seen = list(values), set()
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            for u in self.users.get(v, []):
                yield v, u
                if not (self.is_weight(u) or self.is_residual(u)):
                    todo.extend(u.outputs)

    def _probe(self, value: str, first_row: int) -> list[tuple[np.ndarray, tuple | None]]:
        """Push the row indices of a product's output through the data movement after it;
        returns (indices in the shape of each value reached, that value's target)."""
        g = self.g
        sh = self.shape0(value)
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

    def partition_matvec(self, mname: str, p: _Matvec, parts: list, n_out: int, n_in: int,
                         owner: dict) -> tuple[int, int]:
        """Column- or row-parallel split of a packed product; returns its shape on a device."""
        tp = self.tp
        try:
            if p.input in owner:
                cols = partition.cols_per_rank(owner[p.input], tp)
                self.tp_rows[mname] = ("row", cols)
                return n_out, max(len(c) for c in cols)
            ends = []
            for (lo, hi, _, _), m in zip(parts, p.nodes):
                ends += self._probe(m.outputs[0], lo)
            rows = partition.rows_per_rank(ends, [(lo, hi) for lo, hi, _, _ in parts], tp,
                                           self.attn_one)
        except ValueError as e:
            raise LoweringError(f"{self.name}: {mname} cannot be split over {tp} devices ({e})",
                                "choose --tp dividing the head counts") from None
        self.tp_rows[mname] = ("col", rows)
        own = partition.owner_of_rows(rows, n_out)
        for (lo, hi, _, _), m in zip(parts, p.nodes):
            owner[m.outputs[0]] = own[lo:hi].reshape(self.shape0(m.outputs[0]))
        return max(len(r) for r in rows), n_in

    def propagate_owner(self, n: Node, owner: dict) -> None:
        """Owners of an op's output from its split inputs (see :mod:`partition`)."""
        g = self.g
        split = [i for i in n.inputs if i in owner]
        out_shape = self.shape0(n.outputs[0])
        try:
            if self._moves(n):  # data movement: move the owners
                if any(i not in owner and not g.is_const(i) for i in n.inputs):
                    raise ValueError("it joins split and whole values")
                args = [owner[i] if i in owner else g.consts[i] for i in n.inputs]
                res = np.asarray(ASIC_OPS[n.op].fn(None, args, self._attrs0(n))).astype(np.int64)
            else:
                o = max((owner[i] for i in split), key=lambda a: a.size)
                if n.op in partition.REDUCING and partition.spans_devices(o):
                    raise ValueError(f"{n.op} combines elements of several devices")
                if n.op in partition.REDUCING or o.shape[-1:] != out_shape[-1:]:
                    o = o[..., :1]
                res = np.broadcast_to(o, out_shape).copy()
        except ValueError as e:
            raise LoweringError(f"{self.name}: op {n.op!r} at node {n.name!r} cannot run on values "
                                f"split over {self.tp} devices ({e})",
                                "use --tp 1 for this model (or pipeline stages, --pp)") from None
        for o in n.outputs:
            owner[o] = res

    def matvec_role(self, p: _Matvec, logits: str, wired_source) -> str:
        g = self.g
        outs = {m.outputs[0] for m in p.nodes}
        # feeds attention (through ASIC ops like rotary and wiring) -> qkv
        src = wired_source(p.input)
        if logits in outs or any(self._wired_to(o, logits) for o in outs):
            return "lm_head"
        if src is not None and src.op == "matmul" and any(i in self.cache for i in src.inputs):
            return "out_proj"
        for _, u in self._block_users(outs):
            if u.op == "matmul" and any(i in self.cache for i in u.inputs):
                return "qkv"
            if any(u is a.k_concat or u is a.v_concat for a in self.attns):
                return "qkv"
        if src is not None and (src.op in ("gelu", "silu", "relu", "sigmoid", "tanh") or (
                src.op == "mul" and all(not g.is_const(i) for i in src.inputs))):
            return "ffn_down"
        return "ffn_up"

    def _wired_to(self, value: str, target: str) -> bool:
        v = value
        while True:
            us = self.users.get(v, [])
            if v == target:
                return True
            if len(us) != 1 or us[0].op not in WIRING:
                return False
            v = us[0].outputs[0]

    # ---------------------------------------------------------------- placement
    def place(self, steps, flow, immediates, vec_consts, matrices_w, mat_shapes, mat_order,
              table_of, tables_first, tied, vocab, d_ff, logits, stage=0):
        g, geo, cfg = self.g, self.geo, self.cfg
        tp = self.tp
        mine = [i for i, layer in enumerate(self.step_layer) if self.stage_of(layer) == stage]
        if self.pp > 1:  # this stage's steps, renumbered; a dependency on an earlier stage is
            new = {old: k for k, old in enumerate(mine)}  # met by its activations' arrival
            steps = [dataclasses.replace(steps[i], index=new[i], deps=tuple(
                new[d] for d in steps[i].deps if d in new)) for i in mine]
            vec_consts = {k: v for k, v in vec_consts.items() if self.stage_of(k) == stage}
            mat_order = [m for m in mat_order if self.stage_of(self.mat_layer[m]) == stage]
            if stage:
                tables_first = []
        attns = [a for a in self.attns if self.stage_of(a.index) == stage]
        if cfg.pim.mac_lanes_per_bank != geo.col_elems:
            raise MappingError(f"{cfg.name}: {cfg.pim.mac_lanes_per_bank} MAC lanes per bank but "
                               f"a column holds {geo.col_elems} elements; the mapping needs them "
                               f"equal")
        n_ctx = self.n_ctx
        tabs = [g.const_shape(t)[0] for t in tables_first if self._gathered_by_position(t)]
        if n_ctx is None:
            n_ctx = tabs[0] if tabs else None
        elif tabs and n_ctx > min(tabs):
            raise LoweringError(f"{self.name}: a context of {n_ctx} tokens, but the model has "
                                f"learned positions for {min(tabs)}",
                                f"give a context of at most {min(tabs)} tokens")
        if n_ctx is None:
            raise LoweringError(f"{self.name}: the context length is unknown",
                                "give the model's n_ctx (its config's max_position_embeddings; "
                                "pimsim compile / run --context N)")
        for a in attns:
            if a.k_concat is None or a.v_concat is None or a.n_head == 0:
                raise LoweringError(f"{self.name}: attention {a.index} lacks a key, a value or a "
                                    f"q.K^T product")
            if a.n_head % a.n_kv:
                raise LoweringError(f"{self.name}: attention {a.index} has {a.n_head} query heads "
                                    f"for {a.n_kv} KV heads")
            if a.d_head % geo.banks or a.d_head % geo.col_elems or a.d_head > geo.row_elems:
                raise MappingError(f"d_head = {a.d_head}: the KV-cache mapping needs d_head to be "
                                   f"a multiple of the {geo.banks} banks per channel and of the "
                                   f"{geo.col_elems} elements of a column, at most a row")
        layers = sorted(vec_consts)

        def lname(layer):
            return "embed" if layer < 0 else ("final" if layer >= self.n_layer else f"L{layer}")

        entries, vector_refs, vector_values = [], {}, {}
        fetch: dict[str, tuple[str, ...]] = {}  # param_fetch vector -> the entries it reads
        for layer in layers:
            ename = f"{lname(layer)}.params"
            inside = 0 <= layer < self.n_layer
            groups = [vec_consts[layer]] if inside else [[c] for c in vec_consts[layer]]
            names = []
            for k, group in enumerate(groups):  # a layer's vectors are one entry (one fetch)
                en = ename if inside else f"{lname(layer)}.v{k}"
                off, parts = 0, []
                for c in group:
                    shape = g.const_shape(c)
                    vector_refs[c] = (en, off, tuple(shape))
                    v = g.const_value(c)
                    parts.append(None if v is None else np.asarray(v, np.float32).reshape(-1))
                    off += int(np.prod(shape))
                entries.append((en, off))
                names.append(en)
                vector_values[en] = None if any(p is None for p in parts) else np.concatenate(parts)
            fetch[ename] = tuple(names)
        for st in steps:
            if st.op == "param_fetch":
                st.vectors = fetch.get(st.vectors[0], ()) if st.vectors else ()
        model = GraphModel(
            name=self.name, n_layer=self.n_layer,
            d_model=int(g.const_shape(tables_first[0])[1]) if tables_first else 0,
            n_head=self.attns[0].n_head, n_kv_head=self.attns[0].n_kv,
            d_head=self.attns[0].d_head, d_ff=d_ff, vocab=vocab, n_ctx=int(n_ctx),
            n_weight_elems=sum(o * i for o, i in mat_shapes.values())
            + sum(int(np.prod(g.const_shape(t))) for t in tables_first
                  if table_of[t] not in tied)
            + sum(n for _, n in entries),
            has_weights=all(w is not None for w in matrices_w.values()))
        gb_cols, acc = buffer_limits(cfg, self.attns[0].d_head if self.attns else geo.col_elems)
        mp = GraphMapping(model=model, hw=cfg.name, geo=geo, n_stages=self.pp, gb_cols=gb_cols,
                          accumulators=acc, order=cfg.pim.mapping)
        C = geo.channels
        row = 0
        mp.vectors = VectorLayout.build("vectors", entries, row, geo)
        row += mp.vectors.rows_reserved
        for a in attns:
            n_head, n_kv = a.n_head, a.n_kv
            if tp > 1:  # this device's query heads and the KV heads they read
                try:
                    a.q_ranks = partition.head_ranks(a.n_head, tp, "query", self.attn_one)
                    a.kv_ranks = partition.head_ranks(a.n_kv, tp, "KV", self.attn_one)
                except ValueError as e:
                    raise LoweringError(f"{self.name}: attention {a.index}: {e}",
                                        "choose --tp dividing the head counts") from None
                n_head, n_kv = len(a.q_ranks[0]), len(a.kv_ranks[0])
            hpc = max(1, min(n_kv, geo.row_elems // a.d_head))
            kl = KLayout(a.index, n_head, a.d_head, int(n_ctx), hpc, row, geo,
                         heads_per_fill=gb_cols * geo.col_elems // a.d_head, accumulators=acc,
                         n_kv_head=n_kv)
            row += kl.rows_reserved
            vl = VLayout(a.index, n_head, a.d_head, int(n_ctx), row, geo, gb_cols, acc,
                         n_kv_head=n_kv)
            row += vl.rows_reserved
            # with pipeline stages, pp sequences are in flight: a cache for each of them
            row += (self.pp - 1) * (kl.rows_reserved + vl.rows_reserved)
            mp.k_cache.append(kl)
            mp.v_cache.append(vl)
        next_row = [row] * C

        def place(name, out_dim, in_dim):
            m = MatrixLayout(name, name.split(".")[-1].rstrip("0123456789"), out_dim, in_dim,
                             geo.row_elems, tuple(next_row), geo, gb_cols, acc, cfg.pim.mapping)
            for c in range(C):
                next_row[c] += m.rows_used(c)
            return m

        tables: dict[str, MatrixLayout] = {}
        for t in tables_first:  # gather-only tables first (position tables), as PIM-GPT's wpe
            tn = table_of[t]
            if tn in tied:
                continue
            r, c = g.const_shape(t)
            tables[tn] = mp.matrices[tn] = place(tn, r, c)
            mp.weights[tn] = g.const_value(t)
        for mname in mat_order:
            o, i = self.mat_local[mname]
            mp.matrices[mname] = place(mname, o, i)
            mp.weights[mname] = matrices_w[mname]
            if mname in self.tp_rows:
                mp.tp_rows[mname] = self.tp_rows[mname]
        for tn, mname in tied.items():
            tables[tn] = mp.matrices[mname]
        mp.tables = {tn: m.name for tn, m in tables.items()}
        mp.rows_used = list(next_row)
        mp.vector_values = vector_values
        need = max(next_row)
        if need > geo.rows:
            row_bytes = geo.row_elems * geo.elem_bytes
            raise CapacityError(
                f"{self.name} does not fit {cfg.name}: it needs "
                f"{need * row_bytes * geo.banks * C:,} bytes ({need} rows per bank: "
                f"{model.weight_bytes(geo.elem_bytes):,} bytes of weights plus KV cache for "
                f"{n_ctx} tokens and row padding) but {cfg.name} has "
                f"{geo.rows * row_bytes * geo.banks * C:,} bytes"
                + (f" per device ({tp} x {self.pp} devices)" if tp * self.pp > 1 else "")
                + "; use more devices (--devices N), more channels or larger banks")
        kv = list(zip(mp.k_cache, mp.v_cache))
        kv_of = {kl.layer: (kl, vl) for kl, vl in kv}
        for st in steps:
            if st.matrix is not None:
                st.matrix = mp.matrices[st.matrix]
            if st.kv is not None:
                st.kv = kv_of[st.kv[0]]
        # the ASIC adds the partial sums RD_MAC hands out: out x n_reads of the matrix's layout
        # (its fills under pim-gpt's order, 1 under the reuse order)
        renum = {old: k for k, old in enumerate(mine)} if self.pp > 1 else None
        for i, mname in self.reduce_of.items():
            k = i if renum is None else renum.get(i)
            if k is not None:
                m = mp.matrices[mname]
                steps[k].n_elems = m.out_dim * m.n_reads
        for f in flow:
            if f.op in ("k_write", "v_write"):
                f.step = self.attns[f.attrs["attn"]].write_step
        prog = Program(
            model=self.name, hw=cfg.name, geo=geo,
            dims=dict(n_layer=model.n_layer, d_model=model.d_model, n_head=model.n_head,
                      n_kv_head=model.n_kv_head, d_head=model.d_head, d_ff=model.d_ff,
                      vocab=vocab, n_ctx=int(n_ctx)),
            steps=steps, vec_layout=mp.vectors, lm_head=None,
            matrices={k: v for k, v in mp.matrices.items() if k not in tables},
            kv_layouts=kv, flow=flow,
            inputs={"token": self.token, "position": self.position}, logits=logits,
            immediates=immediates, vector_refs=vector_refs, tables=tables,
            position_tables=tuple(table_of[t] for t in tables_first
                                  if self._gathered_by_position(t)),
            tp=tp, stage=stage, n_stages=self.pp, tp_rows=dict(mp.tp_rows),
            tp_heads={a.index: (a.q_ranks, a.kv_ranks) for a in attns if a.q_ranks},
            send_elems=self.crossing_elems(stage) if stage < self.pp - 1 else 0)
        mp.tp, mp.stage = tp, stage
        return prog, mp

    def crossing_elems(self, stage: int) -> int:
        """Elements of the values a stage hands to the next (made at or before it, used
        after it): the residual stream, and whatever else crosses the cut."""
        g, seen, n = self.g, set(), 0
        made = {o: self.stage_of(self.layer_of[id(nd)]) for nd in g.nodes for o in nd.outputs}
        for nd in g.nodes:
            if self.stage_of(self.layer_of[id(nd)]) <= stage:
                continue
            for i in nd.inputs:
                if i in made and made[i] <= stage and i not in seen:
                    seen.add(i)
                    n += int(np.prod(self.shape0(i)))
        return n

    def _gathered_by_position(self, table: str) -> bool:
        for n in self.g.nodes:
            if n.op == "gather" and n.inputs[0] == table and n.inputs[1] in self.pos_only:
                return True
        return False
