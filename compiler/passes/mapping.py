"""Placement rules shared by the graph lowering: the DRAM geometry, the PIM buffers, the checks.

PIM-GPT's scheme places every matrix of a matrix-vector product on all banks at once (16 output
neurons per all-bank MAC row, groups dealt round-robin over channels, so every bank of every
channel holds a share of every matrix), tiles inputs larger than one DRAM row (the ASIC reduces
the partial sums) and reserves the K cache (row-major) and V cache (column-major) for the full
context; the layouts themselves are :mod:`pimsim.isa`'s (:class:`~pimsim.isa.MatrixLayout` and
its loop order, :class:`~pimsim.isa.MatvecOrder`). The graph lowering's mapping
(:class:`compiler.passes.graph_mapping.GraphMapping`) is built with :func:`geometry` and
:func:`buffer_limits` and proved with :func:`check_matrix_layouts`,
:func:`check_vector_entries` and :func:`check_matvec_items`; a model too large or of a shape
the layouts cannot take raises :class:`CapacityError` / :class:`MappingError`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pimsim.config import HwConfig
from pimsim.errors import HardwareFitError
from pimsim.isa import Geometry, MatrixLayout, VectorLayout

_DTYPE_BYTES = {"bf16": 2, "fp16": 2}


class CapacityError(HardwareFitError):
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
        # CENT's placement pads each of a pack's matrices to whole slots on every channel
        pad = g.banks * g.channels * max(1, len(m.cent_slots))
        if per < m.out_dim or per - m.out_dim >= pad:
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


class MappingError(HardwareFitError):
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
                    row_elems=o.row_bytes // eb, col_elems=o.column_bytes // eb, elem_bytes=eb,
                    banks_per_unit=cfg.pim.banks_per_pim_unit)


def check_matvec_items(m: MatrixLayout, gb_cols: int, accumulators: int) -> None:
    """Replay ``m``'s items on every channel against the buffers they may use: every fill
    fits the global buffer, no MAC reads past the columns of the last fill, at most
    ``accumulators`` slots hold a partial sum at once and each RD_MAC batch reads exactly
    those, every weight column of every slot is MAC'd exactly once in every bank (with
    ``banks_per_unit`` u > 1 banks per PIM unit, once per bank set ``b % u == p``, the item's
    bank field ``p``), and every slot is read out ``m.n_reads`` times. Raises MappingError
    naming the first violation."""
    from pimsim.isa import _build_matvec_items
    from pimsim.spec.commands import cmd_id

    wr_gb, mac, rd_mac = cmd_id("WR_GB"), cmd_id("MAC_AB"), cmd_id("RD_MAC")
    for ch, arr in enumerate(_build_matvec_items(m)):
        n_slots = m.slots(ch)
        filled = 0
        used: dict[tuple[int, int], int] = {}
        live: list[int] = []
        reads = [0] * n_slots
        u = m.geo.banks_per_unit
        seen = np.zeros((u, max(n_slots, 1), m.n_chunks, m.chunk_cols), np.int64)

        def bad(what: str, ch: int = ch) -> None:
            raise MappingError(f"{m.name} channel {ch} ({m.order} order): {what}")

        for cmd, bank, row, count, col0 in arr.tolist():
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
                if (bank < 0) != (u == 1) or bank >= u:
                    bad(f"MAC on bank field {bank} with {u} bank(s) per PIM unit")
                p = max(bank, 0)
                seen[p, s, k, col0:col0 + count] += 1
                used[s, p] = used.get((s, p), 0) + count
                if used[s, p] > filled:
                    bad(f"slot {s} MACs {used[s, p]} columns after a fill of {filled}")
                continue
            if cmd == rd_mac:
                if count != len(live):
                    bad(f"RD_MAC of {count} accumulator(s) while {len(live)} hold sums")
                for s in live:
                    reads[s] += 1
                live = []
        full = np.zeros_like(seen)
        for k in range(m.n_chunks):
            full[:, :, k, :m.cols_of_chunk(k)] = 1
        if n_slots and not np.array_equal(seen[:, :n_slots], full[:, :n_slots]):
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
