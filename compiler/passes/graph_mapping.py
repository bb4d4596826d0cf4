"""What the lowering produces besides the program: the model's dimensions (:class:`GraphModel`)
and where every weight, vector, table and KV cache lives on the DRAM banks (:class:`GraphMapping`),
printable as a loop nest and checkable (every weight element placed once, nothing overlapping,
everything fitting, every matrix's PIM items within the global buffer and the accumulators).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.passes.mapping import MappingError, check_vector_entries, mapping_header
from pimsim.isa import Geometry, KLayout, MatrixLayout, VectorLayout, VLayout


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
    # weights above stay whole: device r's image takes its share), or ("expert", device) of a
    # whole expert's matrix under expert parallelism; the device's TP group size
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

    def on_other_device(self, name: str) -> bool:
        """Expert parallelism: a matrix of another device's expert (this device holds its own
        expert of that slot at the same rows)."""
        split = self.tp_rows.get(name)
        return split is not None and split[0] == "expert" and split[1] != 0

    def placed_weight_elems(self) -> int:
        n = sum(m.out_dim * m.in_dim for k, m in self.matrices.items()
                if not self.on_other_device(k))
        return n + self.vectors.total_elems

    def placed_weight_bytes(self) -> int:
        return self.placed_weight_elems() * self.geo.elem_bytes

    def kv_bytes(self) -> int:
        """Bytes of K/V cache data placed (full context, every attention)."""
        return sum((k.d_attn + v.kv_heads * v.d_head) * k.n_ctx
                   for k, v in zip(self.k_cache, self.v_cache)) * self.geo.elem_bytes

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

        keys += [m.row_keys() for k, m in self.matrices.items() if not self.on_other_device(k)]
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
