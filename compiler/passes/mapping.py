"""Placement pass: the PIM-GPT mapping of a decoder's weights and KV cache onto DRAM banks.

The mapping is a first-class object (:class:`Mapping`): it says where every weight element lives
(channel, bank, row, column), how each matrix-vector product is split (16 output neurons per
all-bank MAC row, groups dealt round-robin over channels, so every bank of every channel holds a
share of every matrix), which inputs are tiled (input dimension larger than one DRAM row: the ASIC
reduces the partial sums), and where the K cache (row-major) and V cache (column-major) are
reserved for the full context. ``pretty()`` prints it as a loop nest, ``check()`` proves every
weight element is placed once, nothing overlaps and everything fits.

:class:`Mapping` and :func:`map_decoder` are PIM-GPT's path (``lowering="pim-gpt"``); the
default graph lowering places with the same layouts (:class:`compiler.passes.lower.GraphMapping`)
and shares :func:`geometry`, :func:`buffer_limits`, :func:`check_matvec_items` and the errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from compiler.model import DecoderSpec
from pimsim.config import HwConfig
from pimsim.isa import Geometry, KLayout, MatrixLayout, VectorLayout, VLayout, layer_vector_sizes

_DTYPE_BYTES = {"bf16": 2, "fp16": 2}


class CapacityError(ValueError):
    """The model does not fit the configured memory."""


def mapping_header(name: str, hw: str, g: Geometry, order: str, gb_cols: int,
                   accumulators: int) -> list[str]:
    """The first lines of a printed mapping: the geometry and where a neuron lives."""
    return [
        f"mapping {name} -> {hw}: {g.channels} channels x {g.banks} banks x "
        f"{g.rows} rows of {g.row_elems} elements ({g.elem_bytes} B each)",
        f"  neuron n of a matrix: group g = n // {g.banks}, bank = n % {g.banks}, "
        f"channel = g % {g.channels}, slot = g // {g.channels}",
        f"  matrix-vector order {order!r}: global buffer {gb_cols} columns "
        f"({gb_cols * g.col_elems} elements) per fill, {accumulators} accumulator(s) per bank",
    ]


def check_matrix_layouts(placed, products, g: Geometry, gb_cols: int | None,
                         accumulators: int) -> None:
    """Every placed matrix's input chunks tile its input in rows and its neuron places match
    its outputs; the items of every product (``products``) keep within the global buffer
    (``gb_cols`` columns, None: the layout's own) and the accumulators, replayed once per
    distinct shape (the items' structure depends on a matrix's shape, not on its rows).
    Raises ``MappingError`` naming the matrix."""
    for m in placed:
        chunks = [m.chunk(k) for k in range(m.n_chunks)]
        if sum(ln for _, ln in chunks) != m.in_dim or any(ln > g.row_elems for _, ln in chunks):
            raise MappingError(f"{m.name}: input chunks do not tile the input dimension "
                               f"{m.in_dim} in rows of {g.row_elems}")
        per = sum(m.slots(c) for c in range(g.channels)) * g.banks
        if per < m.out_dim or per - m.out_dim >= g.banks * g.channels:
            raise MappingError(f"{m.name}: {per} neuron places for {m.out_dim} neurons")
    shapes = set()
    for m in products:
        plain = dataclasses.replace(m, name="matrix", role="", base_row=(0,) * g.channels)
        if plain not in shapes:
            shapes.add(plain)
            try:
                check_matvec_items(plain, gb_cols or plain.gb_cols, accumulators)
            except MappingError as e:
                raise MappingError(f"{m.name}: {e}") from None


class MappingError(ValueError):
    """The model cannot be mapped onto this hardware (shape constraints)."""


def check_vector_entries(vectors: VectorLayout, g: Geometry) -> None:
    """The vector table's entries (name, length, column offset, columns per bank) in order,
    none overlapping the previous one, each fitting its columns on every bank of ``g``."""
    end = 0
    for name, ln, off, per in vectors.entries:
        if off < end or per * g.col_elems * g.banks * g.channels < ln:
            raise MappingError(f"vector {name}: overlaps the previous entry or does not fit "
                               f"its {per} columns per bank")
        end = off + per


def geometry(cfg: HwConfig) -> Geometry:
    if not cfg.pim.enabled:
        raise MappingError(
            f"hardware config {cfg.name!r} has no PIM units (pim.enabled = false); "
            f"choose a PIM config such as pim-gpt"
        )
    eb = _DTYPE_BYTES[cfg.pim.data_type]
    o = cfg.org
    return Geometry(channels=o.channels, banks=o.banks, rows=o.rows,
                    row_elems=o.row_bytes // eb, col_elems=o.column_bytes // eb, elem_bytes=eb)


def check_matvec_items(m: MatrixLayout, gb_cols: int, accumulators: int) -> None:
    """Replay ``m``'s items on every channel against the buffers they may use: every fill
    fits the global buffer, no MAC reads past the columns of the last fill, at most
    ``accumulators`` slots hold a partial sum at once and each RD_MAC batch reads exactly
    those, every weight column of every slot is MAC'd exactly once, and every slot is read
    out ``m.n_reads`` times. Raises MappingError naming the first violation."""
    from pimsim.isa import _build_matvec_items
    from pimsim.spec.commands import cmd_id

    wr_gb, mac, rd_mac = cmd_id("WR_GB"), cmd_id("MAC_AB"), cmd_id("RD_MAC")
    for ch, arr in enumerate(_build_matvec_items(m)):
        n_slots = m.slots(ch)
        filled = 0
        used: dict[int, int] = {}
        live: list[int] = []
        reads = [0] * n_slots
        seen = np.zeros((max(n_slots, 1), m.n_chunks, m.chunk_cols), np.int64)

        def bad(what: str) -> None:
            raise MappingError(f"{m.name} channel {ch} ({m.order} order): {what}")

        for cmd, _bank, row, count, col0 in arr.tolist():
            if cmd == wr_gb:
                if count > gb_cols:
                    bad(f"a fill of {count} columns, the global buffer holds {gb_cols}")
                filled, used = count, {}
                continue
            if cmd == mac:
                k, s = divmod(row - m.base_row[ch], n_slots)
                if not 0 <= k < m.n_chunks or col0 + count > m.cols_of_chunk(k):
                    bad(f"MAC on row {row} columns {col0}..{col0 + count - 1} outside the matrix")
                if s not in live:
                    live.append(s)
                    if len(live) > accumulators:
                        bad(f"{len(live)} slots accumulate at once, a bank has {accumulators} "
                            f"accumulator(s)")
                seen[s, k, col0:col0 + count] += 1
                used[s] = used.get(s, 0) + count
                if used[s] > filled:
                    bad(f"slot {s} MACs {used[s]} columns after a fill of {filled}")
                continue
            if cmd == rd_mac:
                if count != len(live):
                    bad(f"RD_MAC of {count} accumulator(s) while {len(live)} hold sums")
                for s in live:
                    reads[s] += 1
                live = []
        full = np.zeros_like(seen)
        for k in range(m.n_chunks):
            full[:, k, :m.cols_of_chunk(k)] = 1
        if n_slots and not np.array_equal(seen[:n_slots], full[:n_slots]):
            bad("some weight columns are MAC'd more or less than once")
        if live or any(r != m.n_reads for r in reads):
            bad(f"slots read out {sorted(set(reads))} time(s), expected {m.n_reads}")


def buffer_limits(cfg: HwConfig, d_head: int) -> tuple[int, int]:
    """(global-buffer columns, accumulators per bank) the mapping may use; raises
    MappingError when the buffer cannot hold one attention head of q (the smallest fill the
    mapping makes) or a bank has no accumulator."""
    p, o = cfg.pim, cfg.org
    gb_cols = p.global_buffer_bytes // o.column_bytes
    head_bytes = d_head * _DTYPE_BYTES[p.data_type]
    if p.global_buffer_bytes < head_bytes:
        raise MappingError(
            f"{cfg.name}: pim.global_buffer_bytes = {p.global_buffer_bytes} is smaller than one "
            f"attention head of the query ({d_head} elements = {head_bytes} bytes), the "
            f"smallest global-buffer fill the mapping makes; set global_buffer_bytes to at "
            f"least {head_bytes}")
    if p.accumulators_per_bank < 1:
        raise MappingError(f"{cfg.name}: pim.accumulators_per_bank = {p.accumulators_per_bank}; "
                           f"the mapping needs at least one accumulator per bank")
    return gb_cols, p.accumulators_per_bank


def vector_entries(spec: DecoderSpec) -> list[tuple[str, int]]:
    """(name, length) of every vector the ASIC fetches, in region order."""
    n = sum(layer_vector_sizes(spec.d_model, spec.d_attn, spec.d_ff).values())
    out = [(f"L{i}.params", n) for i in range(spec.n_layer)]
    out += [("lnf_w", spec.d_model), ("lnf_b", spec.d_model)]
    return out


@dataclass
class Mapping:
    """Where everything lives. Build with :func:`map_decoder`."""

    spec: DecoderSpec
    hw: str
    geo: Geometry
    matrices: dict[str, MatrixLayout] = field(default_factory=dict)
    k_cache: list[KLayout] = field(default_factory=list)
    v_cache: list[VLayout] = field(default_factory=list)
    vectors: VectorLayout | None = None
    wpe: MatrixLayout | None = None
    rows_used: list[int] = field(default_factory=list)  # per channel
    gb_cols: int = 0  # global-buffer columns per fill (pim.global_buffer_bytes)
    accumulators: int = 1  # pim.accumulators_per_bank
    order: str = "pim-gpt"  # pim.mapping

    # ------------------------------------------------------------------ facts
    @property
    def lm_head(self) -> MatrixLayout:
        return self.matrices["lm_head"]

    def placed_weight_elems(self) -> int:
        """Weight elements placed (matrices incl. the tied wte once, vectors, wpe); no padding."""
        n = sum(m.out_dim * m.in_dim for m in self.matrices.values())
        n += self.vectors.total_elems + self.wpe.out_dim * self.wpe.in_dim
        return n

    def placed_weight_bytes(self) -> int:
        return self.placed_weight_elems() * self.geo.elem_bytes

    def bytes_per_channel(self) -> list[int]:
        """Bytes of DRAM rows used (reserved) in each channel, padding included."""
        row_bytes = self.geo.row_elems * self.geo.elem_bytes
        return [r * row_bytes * self.geo.banks for r in self.rows_used]

    # ------------------------------------------------------------------ check
    def owned_rows(self) -> np.ndarray:
        """Keys ``(channel * banks + bank) * rows + row`` of every row any layout owns."""
        g = self.geo
        keys = []

        def add(ch, bank, row):
            keys.append((np.asarray(ch) * g.banks + np.asarray(bank)) * g.rows + np.asarray(row))

        keys += [m.row_keys() for m in list(self.matrices.values()) + [self.wpe]]
        b = np.arange(g.banks)
        for kl in self.k_cache:
            rows = kl.base_row + np.arange(kl.rows_reserved)
            for c in range(g.channels):
                add(c, b[:, None], rows[None, :])
        keys += [vl.matrix.row_keys() for vl in self.v_cache]
        vrows = self.vectors.base_row + np.arange(self.vectors.rows_reserved)
        for c in range(g.channels):
            add(c, b[:, None], vrows[None, :])
        return np.concatenate([k.ravel() for k in keys])

    def check(self) -> None:
        """Every weight element placed exactly once, nothing overlaps, everything fits.

        Raises ``MappingError`` naming the first problem."""
        g, spec = self.geo, self.spec
        check_matrix_layouts(list(self.matrices.values()) + [self.wpe], self.matrices.values(),
                             g, self.gb_cols, self.accumulators)
        keys = self.owned_rows()
        uniq, counts = np.unique(keys, return_counts=True)
        if (counts > 1).any():
            k = int(uniq[np.argmax(counts > 1)])
            row = k % g.rows
            cb = k // g.rows
            raise MappingError(f"overlap: channel {cb // g.banks} bank {cb % g.banks} row {row} "
                               f"is owned by {int(counts.max())} placements")
        if (uniq % g.rows >= np.repeat(self.rows_used, 1)[uniq // g.rows // g.banks]).any():
            raise MappingError("a placement lies beyond the rows reserved in its channel")
        if max(self.rows_used) > g.rows:
            raise MappingError(f"{max(self.rows_used)} rows used, the banks have {g.rows}")
        check_vector_entries(self.vectors, g)
        if self.placed_weight_elems() != spec.n_params:
            raise MappingError(f"placed {self.placed_weight_elems()} weight elements, the model "
                               f"has {spec.n_params}")

    # ------------------------------------------------------------------ printing
    def pretty(self) -> str:
        g, s = self.geo, self.spec
        lines = mapping_header(s.name, self.hw, g, self.order, self.gb_cols, self.accumulators)

        def mat(m: MatrixLayout, indent: str) -> list[str]:
            cols = [m.chunk(k)[1] for k in range(m.n_chunks)]
            return [
                f"{indent}{m.name} [{m.out_dim} x {m.in_dim}] {m.n_groups} groups "
                f"({m.slots(0)} slots in channel 0), {m.n_chunks} chunk(s) of {cols} elements, "
                f"{len(m.fills)} fill(s), {m.n_reads} partial sum(s) per output, rows "
                f"{m.base_row[0]}..{m.base_row[0] + m.rows_reserved - 1} (channel 0)",
                *m.strategy.loop_nest(m, indent),
            ]

        lines.append(f"  vectors: {len(self.vectors.entries)} entries, "
                     f"{self.vectors.total_elems} elements striped over all banks, rows "
                     f"{self.vectors.base_row}..{self.vectors.base_row + self.vectors.rows_reserved - 1}")
        lines += mat(self.wpe, "  ")
        lines.append(f"  for layer in 0..{s.n_layer - 1}:")
        kl, vl = self.k_cache[0], self.v_cache[0]
        lines.append(f"    K cache (row-major) rows {kl.base_row}..: token t -> channel t % "
                     f"{g.channels}, bank (t // {g.channels}) % {g.banks}, slot t // "
                     f"{kl.tokens_per_slot}; {kl.n_chunks} chunk(s) of {kl.heads_per_chunk} heads, "
                     f"q written {kl.fill_heads} head(s) per fill, scores read "
                     f"{kl.accumulators} at a time")
        lines.append(f"    V cache (column-major) rows {vl.base_row}..: value (h, j) is neuron "
                     f"h*{s.d_head}+j of a [{s.d_attn} x {s.n_ctx}] matrix, token t at element t")
        for name in ("qkv", "out_proj", "ffn_up", "ffn_down"):
            lines += mat(self.matrices[f"L0.{name}"], "    ")
        lines += mat(self.lm_head, "  ")
        lines.append("  rows used per channel: " + ", ".join(str(r) for r in self.rows_used)
                     + f" of {g.rows}")
        return "\n".join(lines)


def map_decoder(spec: DecoderSpec, cfg: HwConfig) -> Mapping:
    """Place a decoder on a hardware config; raises CapacityError if it does not fit."""
    g = geometry(cfg)
    if cfg.pim.mac_lanes_per_bank != g.col_elems:
        raise MappingError(f"{cfg.name}: {cfg.pim.mac_lanes_per_bank} MAC lanes per bank but a "
                           f"column holds {g.col_elems} elements; the mapping needs them equal")
    # V cache: a group of `banks` value neurons must lie within one head (one global-buffer fill
    # of that head's softmax weights); K cache: each head's key must start at a column boundary
    if spec.d_head % g.banks or spec.d_head % g.col_elems:
        raise MappingError(f"d_head = {spec.d_head}: the KV-cache mapping needs d_head to be a "
                           f"multiple of the {g.banks} banks per channel and of the "
                           f"{g.col_elems} elements of a column")
    if spec.d_head > g.row_elems:
        raise MappingError(f"d_head = {spec.d_head} is larger than a DRAM row ({g.row_elems})")
    gb_cols, acc = buffer_limits(cfg, spec.d_head)
    C = g.channels
    mp = Mapping(spec=spec, hw=cfg.name, geo=g, gb_cols=gb_cols, accumulators=acc,
                 order=cfg.pim.mapping)
    row = 0  # rows shared by all channels first: vectors, K and V caches
    mp.vectors = VectorLayout.build("vectors", vector_entries(spec), row, g)
    row += mp.vectors.rows_reserved
    heads_per_chunk = min(spec.n_head, g.row_elems // spec.d_head)
    heads_per_fill = gb_cols * g.col_elems // spec.d_head
    for i in range(spec.n_layer):
        kl = KLayout(i, spec.n_head, spec.d_head, spec.n_ctx, heads_per_chunk, row, g,
                     heads_per_fill, acc)
        row += kl.rows_reserved
        vl = VLayout(i, spec.n_head, spec.d_head, spec.n_ctx, row, g, gb_cols, acc)
        row += vl.rows_reserved
        mp.k_cache.append(kl)
        mp.v_cache.append(vl)
    next_row = [row] * C

    def place(name: str, role: str, out_dim: int, in_dim: int) -> MatrixLayout:
        m = MatrixLayout(name, role, out_dim, in_dim, g.row_elems, tuple(next_row), g,
                         gb_cols, acc, cfg.pim.mapping)
        for c in range(C):
            next_row[c] += m.rows_used(c)
        return m

    mp.wpe = place("wpe", "wpe", spec.n_ctx, spec.d_model)
    d, a, f = spec.d_model, spec.d_attn, spec.d_ff
    for i in range(spec.n_layer):
        # Q, K and V share their input: one matrix of 3a rows, one global-buffer fill
        mp.matrices[f"L{i}.qkv"] = place(f"L{i}.qkv", "qkv", 3 * a, d)
        mp.matrices[f"L{i}.out_proj"] = place(f"L{i}.out_proj", "out_proj", d, a)
        mp.matrices[f"L{i}.ffn_up"] = place(f"L{i}.ffn_up", "ffn_up", f, d)
        mp.matrices[f"L{i}.ffn_down"] = place(f"L{i}.ffn_down", "ffn_down", d, f)
    mp.matrices["lm_head"] = place("lm_head", "lm_head", spec.vocab, d)
    mp.rows_used = list(next_row)
    need = max(next_row)
    if need > g.rows:
        row_bytes = g.row_elems * g.elem_bytes
        need_b = need * row_bytes * g.banks * C
        have_b = g.rows * row_bytes * g.banks * C
        raise CapacityError(
            f"{spec.name} does not fit {cfg.name}: it needs {need_b:,} bytes ({need} rows per "
            f"bank: {spec.weight_bytes(g.elem_bytes):,} bytes of weights plus KV cache for "
            f"{spec.n_ctx} tokens and row padding) but {cfg.name} has {have_b:,} bytes "
            f"({g.rows} rows per bank x {g.banks} banks x {C} channels); use more channels "
            f"or larger banks"
        )
    return mp
