"""The PIM-GPT instruction set: where data lives (layouts) and the decode-step program.

This is the contract between the compiler and the simulator. A :class:`Program` is the decode step
for one token, re-used for every token with the sequence position ``pos`` as its parameter. It is
an ordered list of :class:`Step` s with explicit dependencies; a step is either PIM work (per
channel instruction streams over the DRAM banks) or one ASIC operation.

Layouts (all rows are DRAM rows of ``row_elems`` data elements; a *group* is 16 neurons, one per
bank of a channel, that one all-bank MAC row computes together):

* :class:`MatrixLayout` - a weight matrix ``[out, in]``: neuron ``n`` is in group ``n // banks``
  and bank ``n % banks``; group ``g`` lives in channel ``g % channels`` at slot ``g // channels``;
  its input dimension is tiled into chunks of at most one row; chunk ``k`` of slot ``s`` is row
  ``base_row[ch] + k * slots(ch) + s``. A global-buffer fill holds several whole chunks or a
  piece of one (``global_buffer_bytes``); the loop order over fills, slots and accumulator
  reads is a :class:`MatvecOrder` (``pim.mapping``, ``accumulators_per_bank``).
* :class:`KLayout` - K cache, row-major: token ``t`` is in channel ``t % channels``, bank
  ``(t // channels) % banks``, slot ``t // (channels * banks)``; its key (all heads concatenated)
  is split into chunks of whole heads, chunk ``k`` at row ``base_row + k * n_slots + slot``.
* :class:`VLayout` - V cache, column-major: value element ``(h, j)`` is neuron ``m = h*d_head + j``
  and is placed like a matrix row whose input dimension is the token index (so s.V is a MAC
  along the row); a group of 16 neurons always belongs to one head.
* :class:`VectorLayout` - vectors the ASIC fetches (LayerNorm parameters, biases, position
  embeddings): striped column by column over channels and banks.

Instruction streams (numpy form) are ``int64 [n, 5]`` items ``(cmd, bank, row, count, col0)`` in
the DRAM/PIM command set of :mod:`pimsim.spec.commands`; the text form prints one instruction per
line. Each PIM step runs on every channel and ends at a synchronisation point.

PIM units shared by banks (``banks_per_unit`` = ``pim.banks_per_pim_unit`` > 1, Samsung HBM-PIM:
one unit per two banks): a unit reads one bank's column per MAC, so an all-bank MAC command serves
one bank of every unit - the banks ``b`` with ``b % banks_per_unit == p`` (HBM-PIM's even-bank and
odd-bank operand reads). Every all-bank MAC item of the loop orders is then issued once per ``p``
(item bank field ``p``, printed ``bank=p::u``; ``-1``, all banks, when every bank has its own
unit), the same columns of the same open row, each bank's MACs in the same order: the numbers
are the same, the schedule has ``banks_per_unit`` times the MAC commands.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from pimsim.cent_ops import cent_matvec_items, cent_vector_items
from pimsim.config import MAPPINGS
from pimsim.spec.commands import COMMANDS, SYNC, cmd_id

ITEM_FIELDS = 5
_WR_GB, _MAC_AB, _RD_MAC, _WR, _RD = (cmd_id(n) for n in ("WR_GB", "MAC_AB", "RD_MAC", "WR", "RD"))

PER_OP_KEYS = ("qkv", "attn_score", "attn_value", "out_proj", "ffn_up", "ffn_down", "lm_head",
               "layernorm", "softmax", "gelu", "residual", "reduction", "embedding", "kv_write",
               "param_fetch", "argmax", "rmsnorm", "activation", "elementwise", "transcendental",
               "all_reduce", "gather", "broadcast")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Geometry:
    """What the layouts need to know about the hardware."""

    channels: int
    banks: int
    rows: int
    row_elems: int  # data elements per DRAM row
    col_elems: int  # data elements per column access (= MAC lanes per bank)
    elem_bytes: int
    banks_per_unit: int = 1  # banks sharing one PIM unit (pim.banks_per_pim_unit)




@dataclass(frozen=True)
class MatrixLayout:
    """A weight matrix's placement and the loop order of its matrix-vector product.

    ``fill_cols`` is how many columns one global-buffer fill holds (``global_buffer_bytes /
    column_bytes``; 0: one row chunk). A fill is then several whole row chunks (a buffer of at
    least a row) or one piece of a chunk (a buffer smaller than a row). ``accumulators`` is the
    number of partial sums a bank keeps (``accumulators_per_bank``); ``order`` names the
    :class:`MatvecOrder` (``pim.mapping``)."""

    name: str
    role: str
    out_dim: int
    in_dim: int
    chunk_elems: int
    base_row: tuple[int, ...]  # per channel
    geo: Geometry
    fill_cols: int = 0
    accumulators: int = 1
    order: str = "pim-gpt"
    # CENT's lowering ([system] lowering = "cent", pimsim.cent_ops): the pack's weight matrices
    # (``cent_parts`` > 0, e.g. q/k/v) are one matrix-vector product each over their share of
    # the slots, every product writing the whole input into the global buffer again and every
    # accumulator group starting with a WR_BIAS; part ``cent_af_part`` (the one feeding an
    # activation, CENT's w1) runs AF + RD_AF per slot after its last fill. 0 / -1: off
    cent_parts: int = 0
    cent_af_part: int = -1
    # CENT's placement ([system] placement = "cent", pimsim.cent_ops.cent_part_slots): slots
    # per channel of each of the ``cent_parts`` matrices, the same on every channel (padded:
    # a channel MACs its slots whether its banks hold rows there or not). (): dense
    cent_slots: tuple[int, ...] = ()

    @property
    def n_chunks(self) -> int:
        return _cdiv(self.in_dim, self.chunk_elems)

    @property
    def n_groups(self) -> int:
        return _cdiv(self.out_dim, self.geo.banks)

    def slots(self, ch: int) -> int:
        """Row slots (groups) this matrix has in channel ``ch``."""
        if self.cent_slots:
            return sum(self.cent_slots)
        g, c = self.n_groups, self.geo.channels
        return g // c + (1 if ch < g % c else 0)

    def rows_used(self, ch: int) -> int:
        return self.slots(ch) * self.n_chunks

    @property
    def rows_reserved(self) -> int:
        """Rows reserved in every channel (the most any channel needs)."""
        return self.rows_used(0)

    def chunk(self, k: int) -> tuple[int, int]:
        """(first input element, length) of chunk ``k``."""
        lo = k * self.chunk_elems
        return lo, min(self.chunk_elems, self.in_dim - lo)

    def row_of(self, ch: int, slot, k: int):
        """Row of chunk ``k`` of slot(s) ``slot`` in channel ``ch`` (chunk-major: the rows of
        one chunk are consecutive, so a chunk's weights in a channel are one block of rows)."""
        return self.base_row[ch] + k * self.slots(ch) + slot

    def locate(self, neuron: np.ndarray | int) -> tuple:
        """(channel, bank, slot) of output neuron(s)."""
        n = np.asarray(neuron)
        g = n // self.geo.banks
        return g % self.geo.channels, n % self.geo.banks, g // self.geo.channels

    # ------------------------------------------------------------ global-buffer fills
    @property
    def chunk_cols(self) -> int:
        """Columns of a full row chunk."""
        return _cdiv(self.chunk_elems, self.geo.col_elems)

    def cols_of_chunk(self, k: int) -> int:
        return _cdiv(self.chunk(k)[1], self.geo.col_elems)

    @property
    def gb_cols(self) -> int:
        """Columns one global-buffer fill may hold."""
        return self.fill_cols or self.chunk_cols

    @cached_property
    def fills(self) -> tuple[tuple[tuple[int, int, int], ...], ...]:
        """The global-buffer fills in input order, each a tuple of pieces ``(chunk, first
        column, columns)``: ``gb_cols // chunk_cols`` whole chunks per fill when the buffer holds
        a row or more, else pieces of ``gb_cols`` columns of one chunk."""
        return _fills(self.n_chunks, self.cols_of_chunk, self.chunk_cols, self.gb_cols)

    @property
    def strategy(self) -> "MatvecOrder":
        return MATVEC_ORDERS[self.order]

    @property
    def n_reads(self) -> int:
        """Partial sums the ASIC receives (and adds) per output neuron."""
        return self.strategy.reads_per_neuron(self)

    def read_segments(self) -> np.ndarray:
        """``[n, 4]`` rows ``(chunk, first column, columns, read)`` of one neuron's MACs in
        the order its accumulator receives them; ``read`` = 1 where RD_MAC reads it out (the
        functional model's definition of the order's numerics)."""
        return self.strategy.read_segments(self)

    def row_keys(self) -> np.ndarray:
        """``(channel * banks + bank) * rows + row`` of every row its neurons occupy, chunk by
        chunk (a mapping check's overlap test)."""
        g = self.geo
        ch, bank, slot = self.locate(np.arange(self.out_dim))
        base = np.asarray(self.base_row)[ch]
        n_slots = np.array([self.slots(c) for c in range(g.channels)])[ch]
        cell = (ch * g.banks + bank) * g.rows
        return np.concatenate([cell + base + k * n_slots + slot for k in range(self.n_chunks)])

    def neuron(self, ch: int, slot: int, bank: np.ndarray | int) -> np.ndarray | int:
        return (slot * self.geo.channels + ch) * self.geo.banks + bank


class _KVHeads:
    """Grouped-query attention: ``n_kv_head`` K/V heads (0: one per query head), each shared by
    ``group`` query heads."""

    n_head: int
    n_kv_head: int

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_head // self.kv_heads


@dataclass(frozen=True)
class KLayout(_KVHeads):
    """K cache of one attention: ``n_head`` query heads share ``kv_heads`` stored heads (grouped-
    query attention: query head ``h`` reads KV head ``h // group``); each KV head is stored once."""

    layer: int
    n_head: int
    d_head: int
    n_ctx: int
    heads_per_chunk: int  # KV heads per row chunk
    base_row: int  # same in every channel
    geo: Geometry
    heads_per_fill: int = 0  # heads of q one global-buffer fill holds (0: a whole chunk)
    accumulators: int = 1  # partial sums per bank: head scores read out together
    n_kv_head: int = 0  # 0: as many KV heads as query heads
    window: int = 0  # a sliding window: n_ctx slots in a ring, token t in t % window (0: none)

    @property
    def d_attn(self) -> int:
        """Elements of one token's key (all KV heads)."""
        return self.kv_heads * self.d_head

    @property
    def n_chunks(self) -> int:
        return _cdiv(self.kv_heads, self.heads_per_chunk)

    @property
    def tokens_per_slot(self) -> int:
        return self.geo.channels * self.geo.banks

    @property
    def rows_reserved(self) -> int:
        return _cdiv(self.n_ctx, self.tokens_per_slot) * self.n_chunks

    @property
    def fill_heads(self) -> int:
        """Heads of q one global-buffer fill holds, at most a chunk's (without groups)."""
        return min(self.heads_per_fill or self.heads_per_chunk, self.heads_per_chunk)

    @property
    def fill_query_heads(self) -> int:
        """Query heads one global-buffer fill holds: a row's worth (``heads_per_fill``: the
        buffer's), at most a chunk's KV heads x group members."""
        cap = self.heads_per_fill or self.geo.row_elems // self.d_head
        return max(1, min(cap, self.heads_per_chunk * self.group))

    def chunk_heads(self, k: int) -> range:
        """KV heads of chunk ``k``."""
        return range(k * self.heads_per_chunk, min(self.kv_heads, (k + 1) * self.heads_per_chunk))

    def locate(self, t: np.ndarray | int) -> tuple:
        """(channel, bank, slot) of token(s) ``t``."""
        t = np.asarray(t)
        c, b = self.geo.channels, self.geo.banks
        return t % c, (t // c) % b, t // (c * b)

    @property
    def n_slots(self) -> int:
        return _cdiv(self.n_ctx, self.tokens_per_slot)

    def row_of(self, slot, k: int):
        """Row of key chunk ``k`` of slot(s) ``slot`` (chunk-major, like matrices)."""
        return self.base_row + k * self.n_slots + slot

    def slots_in_use(self, ch: int, n_tokens: int) -> int:
        """Row slots channel ``ch`` holds keys in when ``n_tokens`` tokens are cached."""
        c, b = self.geo.channels, self.geo.banks
        mine = (n_tokens - ch + c - 1) // c if n_tokens > ch else 0  # tokens t < n, t % c == ch
        return _cdiv(mine, b)


@dataclass(frozen=True)
class VLayout(_KVHeads):
    """V cache of one attention, ``kv_heads`` heads stored once (see :class:`KLayout`)."""

    layer: int
    n_head: int
    d_head: int
    n_ctx: int
    base_row: int
    geo: Geometry
    fill_cols: int = 0  # as MatrixLayout (the softmax weights of one head per fill)
    accumulators: int = 1
    n_kv_head: int = 0
    window: int = 0  # as KLayout

    @cached_property
    def matrix(self) -> MatrixLayout:
        """V^T as a matrix [kv_heads*d_head, n_ctx] placed like a weight matrix (PIM-GPT order:
        the product grows with the position, one head's weights fill the buffer)."""
        return MatrixLayout(f"L{self.layer}.v_cache", "v_cache", self.kv_heads * self.d_head,
                            self.n_ctx, self.geo.row_elems,
                            tuple([self.base_row] * self.geo.channels), self.geo,
                            self.fill_cols, self.accumulators, "pim-gpt")

    @property
    def rows_reserved(self) -> int:
        return self.matrix.rows_reserved


@dataclass(frozen=True)
class VectorLayout:
    """Vectors the ASIC fetches, each split evenly over all banks of all channels.

    Entry ``e`` owns ``per_bank`` consecutive columns in every bank, starting at the bank-local
    column ``offset`` (the same in every bank); bank-local column ``v`` is in row
    ``base_row + v // cols_per_row``. Column ``j`` of the entry (elements ``16 j .. 16 j + 15``)
    lives in bank-linear place ``q = j // per_bank`` (channel ``q % C``, bank ``q // C``) at
    bank-local column ``offset + j % per_bank``.
    """

    name: str
    entries: tuple[tuple[str, int, int, int], ...]  # (name, length, offset, per_bank) in columns
    base_row: int
    geo: Geometry

    @staticmethod
    def build(name: str, vectors: list[tuple[str, int]], base_row: int, geo: Geometry) -> "VectorLayout":
        entries, off = [], 0
        places = geo.channels * geo.banks
        for vname, length in vectors:
            per_bank = _cdiv(_cdiv(length, geo.col_elems), places)
            entries.append((vname, length, off, per_bank))
            off += per_bank
        return VectorLayout(name, tuple(entries), base_row, geo)

    @property
    def cols_per_row(self) -> int:
        return self.geo.row_elems // self.geo.col_elems

    @property
    def total_elems(self) -> int:
        return sum(e[1] for e in self.entries)

    @property
    def rows_reserved(self) -> int:
        cols = sum(e[3] for e in self.entries)
        return max(1, _cdiv(cols, self.cols_per_row))

    def entry(self, name: str) -> tuple[int, int, int]:
        """(length, offset, per_bank) of an entry."""
        for n, ln, off, per in self.entries:
            if n == name:
                return ln, off, per
        raise KeyError(f"no vector {name!r} in {self.name}")

    def segments(self, name: str) -> list[tuple[int, int, int, int, int, int]]:
        """Pieces of an entry: (channel, bank, row, col0, n_cols, first element)."""
        g = self.geo
        ln, off, per = self.entry(name)
        n_cols = _cdiv(ln, g.col_elems)
        out = []
        for q in range(_cdiv(n_cols, per)):
            j0, j1 = q * per, min(n_cols, (q + 1) * per)
            v = off
            while j0 < j1:  # a bank's share may cross a row boundary
                row, col = self.base_row + v // self.cols_per_row, v % self.cols_per_row
                n = min(j1 - j0, self.cols_per_row - col)
                out.append((q % g.channels, q // g.channels, row, col, n, j0 * g.col_elems))
                j0 += n
                v += n
        return out


@dataclass
class Step:
    """One node of the decode-step program."""

    index: int
    name: str
    op: str  # one of PER_OP_KEYS
    layer: int  # -1 outside the blocks
    kind: str  # "pim", "asic" or "comm" (a collective on the interconnect, pimsim.system)
    deps: tuple[int, ...]
    # pim steps: one of
    matrix: MatrixLayout | None = None  # weight matrix-vector product
    kv: tuple[KLayout, VLayout] | None = None  # kv_write / attn_score / attn_value
    vectors: tuple[str, ...] = ()  # param_fetch / embedding: vector entries read
    # asic steps
    n_elems: int = 0  # vector length (per-position ops scale with pos, see asic_elems)
    per_pos_elems: int = 0  # extra elements per cached token (softmax)
    # (MoE layer, expert) of a step that runs only when its expert is chosen (pimsim.moe);
    # under expert parallelism the expert of device 0 in that local slot, whose steps every
    # device's expert of the slot runs (pimsim.expert_parallel)
    expert: tuple[int, int] | None = None
    window: int = 0  # its layer's sliding window (per-position sizes stop growing there)
    # CENT's element-wise work in the banks ([system] lowering = "cent"): (kind, *sizes) of
    # pimsim.cent_ops.cent_vector_items, on the program's scratch rows
    cent: tuple = ()


@dataclass
class FlowOp:
    """One operation of a graph-lowered decode step's dataflow (what the functional executor
    runs, in order). ``op``: an op of :data:`pimsim.asic_ops.OPS`, or one of the PIM-side ops
    ``embed`` (a table row), ``matvec`` (a packed weight matrix; ``attrs["parts"]`` lists each
    output's ``(lo, hi, bias vector or "", shape)``), ``k_write`` / ``v_write`` (the new token's
    key / value into attention ``attrs["attn"]``'s cache), ``attn_score`` and ``attn_value``.
    Attribute dimensions that depend on the position are ``("pos", a, b)``: ``a * pos + b``.
    ``step``: the program step that performs it (-1: wiring, free)."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict
    step: int = -1


@dataclass
class Program:
    """The decode step for one token of one model on one hardware config."""

    model: str
    hw: str
    geo: Geometry
    dims: dict[str, int]
    steps: list[Step] = field(default_factory=list)
    vec_layout: VectorLayout | None = None
    matrices: dict[str, MatrixLayout] = field(default_factory=dict)
    kv_layouts: list[tuple[KLayout, VLayout]] = field(default_factory=list)
    # graph-lowered programs (compiler.passes.lower): the dataflow and where its operands live
    flow: list[FlowOp] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # "token" / "position" -> value name
    logits: str = ""  # the value holding the logits
    immediates: dict[str, np.ndarray] = field(default_factory=dict)  # constants in the program
    vector_refs: dict[str, tuple[str, int, tuple[int, ...]]] = field(default_factory=dict)
    # constant -> (vector entry, first element, shape); tables: constant -> its matrix layout
    tables: dict[str, MatrixLayout] = field(default_factory=dict)
    position_tables: tuple[str, ...] = ()  # tables read at the position (else at the token)
    # systems (compiler.passes.partition): this program is one device of a tensor-parallel
    # group of ``tp`` (all alike) in pipeline stage ``stage`` of ``n_stages``; ``tp_rows``: the
    # logical rows (column-parallel) or columns (row-parallel) of each split matrix per device;
    # ``tp_heads``: attention -> (query heads, KV heads) per device; ``send_elems``: elements of
    # the activations this stage hands to the next
    tp: int = 1
    stage: int = 0
    n_stages: int = 1
    tp_rows: dict = field(default_factory=dict)
    tp_heads: dict = field(default_factory=dict)
    send_elems: int = 0
    # mixture of experts (pimsim.moe): per MoE layer, {"layer", "experts", "k"}
    moe: list[dict] = field(default_factory=list)
    scratch_row: int = 0  # first row of the CENT vectors' rows (steps with ``cent``)
    # expert parallelism (pimsim.expert_parallel): the experts placed whole over the ``ep``
    # devices of the group (expert e on device e // (E / ep); 1: split like every product)
    ep: int = 1

    # --------------------------------------------------------------- instantiation per position
    def asic_elems(self, step: Step, pos: int) -> int:
        return step.n_elems + step.per_pos_elems * (window_pos(pos, step.window) + 1)

    def pim_items(self, step: Step, pos: int) -> list[np.ndarray]:
        """Per-channel item arrays (cmd, bank, row, count, col0) of a PIM step at ``pos``."""
        op = step.op
        if step.matrix is not None:
            return _matvec_items(step.matrix)
        if step.cent:
            return cent_vector_items(step.cent, self.geo, self.scratch_row,
                                     window_pos(pos, step.window))
        w = step.kv[0].window if step.kv is not None else 0
        if op == "kv_write":
            return _kv_write_items(*step.kv, pos % w if w else pos)
        if op == "attn_score":
            return _attn_score_items(step.kv[0], window_pos(pos, w))
        if op == "attn_value":
            return _attn_value_items(step.kv[1], window_pos(pos, w))
        if op in ("param_fetch", "embedding"):
            return self._vector_read_items(step, pos)
        raise ValueError(f"step {step.name}: no PIM instructions for op {op!r}")

    def items_key(self, step: Step, pos: int):
        """A key such that ``pim_items(step, pos)`` is the same wherever the key is the same
        (lets a caller skip rebuilding items that did not change)."""
        op = step.op
        if step.matrix is not None or op == "param_fetch":
            return ()
        if step.cent:  # only the softmax's grow with the position
            return window_pos(pos, step.window) if step.cent[0] == "softmax" else ()
        if step.kv is not None and step.kv[0].window:
            w = step.kv[0].window
            pos = pos % w if op == "kv_write" else window_pos(pos, w)
        if op == "attn_score":
            kl = step.kv[0]
            return tuple(kl.slots_in_use(ch, pos + 1) for ch in range(kl.geo.channels))
        if op == "attn_value":
            ce = step.kv[1].matrix.chunk_elems
            n = _cdiv(pos + 1, ce)
            return n, _cdiv(pos + 1 - (n - 1) * ce, self.geo.col_elems)
        return pos

    def items_key_scope(self, step: Step) -> tuple:
        """What :meth:`items_key` reads of ``step`` besides the position: two steps with
        equal scopes have equal keys at every position (keep the two in step)."""
        op = step.op
        if step.matrix is not None or op == "param_fetch":
            return ()
        w = step.kv[0].window if step.kv is not None else 0
        if op == "attn_score":
            kl = step.kv[0]
            return op, w, kl.geo.channels, kl.geo.banks
        if op == "attn_value":
            return op, w, step.kv[1].matrix.chunk_elems, self.geo.col_elems
        return op, w

    def items_shift(self, step: Step, lead: Step) -> int | None:
        """A row offset ``d`` such that ``pim_items(step, pos)`` is ``pim_items(lead, pos)``
        with every row ``>= 0`` moved by ``d`` at every position, or None: attention steps of
        one op over KV-cache layouts of one shape (:func:`_kv_shape`, every layer's), their
        items placed alike (what the shape-shared items of :func:`_latest` rely on), the
        K and V caches (both, for a KV write) moved by one offset."""
        if step.op != lead.op or step.op not in ("kv_write", "attn_score", "attn_value"):
            return None
        if step.kv is None or lead.kv is None or step.cent or lead.cent:
            return None
        if self.items_key_scope(step) != self.items_key_scope(lead):
            return None
        parts = {"kv_write": (0, 1), "attn_score": (0,), "attn_value": (1,)}[step.op]
        shifts = set()
        for j in parts:
            a, b = step.kv[j], lead.kv[j]
            shape = _kv_shape(a)
            if shape is None or shape != _kv_shape(b):
                return None
            shifts.add(a.base_row - b.base_row)
        return shifts.pop() if len(shifts) == 1 else None

    def _vector_read_items(self, step: Step, pos: int) -> list[np.ndarray]:
        g = self.geo
        per_ch: list[list[tuple]] = [[] for _ in range(g.channels)]
        for name in step.vectors:
            if name in self.tables:  # a gathered table's row: the position's, or a token's
                lay = self.tables[name]  # (data-dependent: neuron 0's place, same cost)
                ch, bank, slot = (int(v) for v in lay.locate(
                    pos if name in self.position_tables else 0))
                for k in range(lay.n_chunks):
                    _, ln = lay.chunk(k)
                    per_ch[ch].append((_RD, bank, lay.row_of(ch, slot, k), _cdiv(ln, g.col_elems), 0))
            else:
                for c, b, r, col, n, _ in self.vec_layout.segments(name):
                    per_ch[c].append((_RD, b, r, n, col))
        return [_arr(items) for items in per_ch]

    # --------------------------------------------------------------- forms
    def streams(self, pos: int, steps: list[Step] | None = None) -> dict[int, np.ndarray]:
        """Numpy form for the engine: per-channel items of every PIM step, SYNC after each."""
        sync = np.array([[SYNC, -1, -1, 0, 0]], np.int64)
        parts: list[list[np.ndarray]] = [[] for _ in range(self.geo.channels)]
        for st in steps if steps is not None else self.steps:
            if st.kind != "pim":
                continue
            for c, arr in enumerate(self.pim_items(st, pos)):
                parts[c].append(arr)
                parts[c].append(sync)
        return {c: np.concatenate(p) if p else np.empty((0, ITEM_FIELDS), np.int64)
                for c, p in enumerate(parts)}

    def to_text(self, pos: int) -> str:
        """Text form: one instruction per line, for golden tests and diffs."""
        out = [f"# program {self.model} on {self.hw}, position {pos}"]
        for st in self.steps:
            deps = ",".join(str(d) for d in st.deps)
            if st.kind in ("asic", "comm"):
                out.append(f"{st.index:4d} {st.name:<18} {st.kind} {st.op} "
                           f"n={self.asic_elems(st, pos)} deps=[{deps}]")
                continue
            out.append(f"{st.index:4d} {st.name:<18} pim {st.op} deps=[{deps}]")
            for c, arr in enumerate(self.pim_items(st, pos)):
                u = self.geo.banks_per_unit
                for cmd, bank, row, count, col0 in arr.tolist():
                    b = "*" if bank < 0 else (f"{bank}::{u}" if cmd == _MAC_AB and u > 1 else str(bank))
                    out.append(f"       ch{c} {COMMANDS[cmd].name:<6} bank={b} row={row} "
                               f"col={col0} n={count}")
        return "\n".join(out) + "\n"

    def instruction_count(self, pos: int) -> int:
        """PIM instructions (stream items) plus ASIC ops for the token at ``pos``."""
        n = 0
        for st in self.steps:
            if st.kind != "pim":
                n += 1
            else:
                n += sum(a.shape[0] for a in self.pim_items(st, pos))
        return n


def window_pos(pos: int, window: int) -> int:
    """The position an attention of a sliding ``window`` (0: none) reads up to: its ring holds
    ``min(pos + 1, window)`` tokens, as a full attention at ``min(pos, window - 1)`` does."""
    return min(pos, window - 1) if window else pos


def _arr(items: list[tuple]) -> np.ndarray:
    return np.array(items, np.int64).reshape(-1, ITEM_FIELDS)


def _per_unit_bank(arr: np.ndarray, geo: Geometry) -> np.ndarray:
    """With ``geo.banks_per_unit`` = u > 1 banks per PIM unit, every all-bank MAC item becomes u
    items, bank field ``p`` = 0 .. u-1: the MACs of the banks ``b % u == p``, one bank of each
    unit (the unit alternates between its banks). Other items, and u = 1, are unchanged."""
    u = geo.banks_per_unit
    if u == 1 or not arr.shape[0]:
        return arr
    mac = (arr[:, 0] == _MAC_AB) & (arr[:, 1] < 0)
    if not mac.any():
        return arr
    out = np.repeat(arr, np.where(mac, u, 1), axis=0)
    first = np.cumsum(np.where(mac, u, 1)) - np.where(mac, u, 1)  # each item's first copy
    for p in range(u):
        out[first[mac] + p, 1] = p
    return out


_LATEST: dict[tuple[str, int, int], tuple[object, tuple, object]] = {}


def _latest(kind: str, layout: object, key: tuple, build, per: int = -1):
    """Items of a layout (or of one channel ``per`` of it) that depend on the position only
    through ``key`` (static items: an empty key): rebuilt when ``key`` changes, one variant
    kept per layout and channel. A KV-cache layout's items are those of any layout of its
    shape (:func:`_kv_shape`: every layer's attention) with the rows moved by the difference
    of their first rows."""
    hit = _LATEST.get((kind, id(layout), per))
    if hit is not None and hit[0] is layout and hit[1] == key:
        return hit[2]
    shape = _kv_shape(layout)
    if shape is None:
        items = build()
    else:
        got = _SHAPED.get((kind, shape, per))
        if got is not None and got[0] == key:
            items = _rows_moved(got[2], layout.base_row - got[1])
        else:
            items = build()
            _SHAPED[(kind, shape, per)] = (key, layout.base_row, items)
    _LATEST[(kind, id(layout), per)] = (layout, key, items)
    return items


# (kind, KV layout shape, channel) -> (items key, first row, items) of the last layout built
_SHAPED: dict[tuple, tuple] = {}
_SHAPE_OF: dict[int, tuple[object, object]] = {}  # id(layout) -> (layout, its shape)


def _kv_shape(layout: object):
    """A KV-cache layout with its first row (and layer) set to 0: layouts of one shape place
    their items alike, rows moved by their first rows (None for other layouts)."""
    if not isinstance(layout, (KLayout, VLayout)):
        return None
    got = _SHAPE_OF.get(id(layout))
    if got is not None and got[0] is layout:
        return got[1]
    shape = dataclasses.replace(layout, base_row=0, layer=0)
    _SHAPE_OF[id(layout)] = (layout, shape)
    return shape


def _rows_moved(items, shift: int):
    """``items`` (an array, or a list of them) with every row ``>= 0`` moved by ``shift``."""
    if isinstance(items, list):
        return [_rows_moved(a, shift) for a in items]
    out = items.copy()
    if shift:
        rows = out[:, 2]
        rows[rows >= 0] += shift
    return out


def _matvec_items(m: MatrixLayout, batch: int = 1) -> list[np.ndarray]:
    if batch == 1:
        return _latest("matvec", m, (), lambda: _build_matvec_items(m))
    return _latest("matvec-batch", m, (batch,), lambda: _build_matvec_items(m, batch))


def _build_matvec_items(m: MatrixLayout, batch: int = 1) -> list[np.ndarray]:
    """Per channel, the items of ``m``'s loop order for ``batch`` sequences (static for a
    given layout and batch): for a batch, the items of its passes one after the other
    (:meth:`MatvecOrder.pass_items`), each distinct pass size built once; banks sharing a PIM
    unit take turns (:func:`_per_unit_bank`)."""
    st = m.strategy
    if batch == 1:
        return [_per_unit_bank(_arr(st.items(m, ch, batch)), m.geo) for ch in range(m.geo.channels)]
    sizes = [len(p) for p in st.batch_passes(m, batch)]
    out = []
    for ch in range(m.geo.channels):
        built = {n: _per_unit_bank(_arr(st.pass_items(m, ch, n)), m.geo) for n in set(sizes)}
        out.append(np.concatenate([built[n] for n in sizes]))
    return out


def matvec_passes(m: MatrixLayout, batch: int) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """Per channel, ``_matvec_items(m, batch)`` as (block, reps, tail): the items of its
    first pass repeated ``reps`` times, then ``tail`` (the remaining passes' items, those of a
    smaller last pass): the same items without the copies (the streams of the fast executor
    keep a batched weight product so, :class:`pimsim.decode.StreamBuilder`)."""
    return _latest("matvec-passes", m, (batch,), lambda: _build_matvec_passes(m, batch))


_PASSES: dict[tuple[int, int], tuple[MatrixLayout, list[np.ndarray]]] = {}
_PASSES_KEPT = 4096  # (layout, pass size) entries kept (all dropped when full)


def _pass_items(m: MatrixLayout, n: int) -> list[np.ndarray]:
    """Per channel, the items of one pass of ``n`` sequences of ``m`` (kept per layout and
    pass size: batches of every size share their passes)."""
    got = _PASSES.get((id(m), n))
    if got is None or got[0] is not m:
        if len(_PASSES) >= _PASSES_KEPT:
            _PASSES.clear()
        got = _PASSES[id(m), n] = (m, [_per_unit_bank(_arr(m.strategy.pass_items(m, ch, n)),
                                                      m.geo) for ch in range(m.geo.channels)])
    return got[1]


def _build_matvec_passes(m: MatrixLayout, batch: int) -> list[tuple[np.ndarray, int, np.ndarray]]:
    sizes = [len(p) for p in m.strategy.batch_passes(m, batch)]
    reps = next((i for i, n in enumerate(sizes) if n != sizes[0]), len(sizes))
    per_size = {n: _pass_items(m, n) for n in set(sizes)}
    out = []
    for ch in range(m.geo.channels):
        built = {n: per_size[n][ch] for n in per_size}
        tail = [built[n] for n in sizes[reps:]]
        out.append((built[sizes[0]], reps,
                    np.concatenate(tail) if tail else np.empty((0, ITEM_FIELDS), np.int64)))
    return out


def _fills(n_chunks: int, cols_of_chunk, chunk_cols: int, gb_cols: int) -> tuple:
    """Global-buffer fills over chunks ``0 .. n_chunks-1`` (see ``MatrixLayout.fills``)."""
    out = []
    if gb_cols >= chunk_cols:
        per = gb_cols // chunk_cols
        for k0 in range(0, n_chunks, per):
            out.append(tuple((k, 0, cols_of_chunk(k)) for k in range(k0, min(n_chunks, k0 + per))))
    else:
        for k in range(n_chunks):
            n = cols_of_chunk(k)
            out += [((k, c0, min(gb_cols, n - c0)),) for c0 in range(0, n, gb_cols)]
    return tuple(out)


def _groups(n: int, size: int) -> list[range]:
    """``0 .. n-1`` in consecutive groups of at most ``size``."""
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


class MatvecOrder:
    """A loop order for a weight matrix-vector product on one channel: which global-buffer
    fill serves which slots (output-neuron groups, one row per chunk), and when each bank's
    accumulators are read out. One interface, several strategies (selected by ``pim.mapping``):
    the items of a channel, the numerics they imply for the functional model (which MACs one
    accumulator read sums), and a printable loop nest."""

    name = ""

    def items(self, m: MatrixLayout, ch: int, batch: int = 1) -> list[tuple]:
        """Items of channel ``ch`` for ``batch`` input vectors (one per sequence) multiplied
        by the same weights; ``batch`` 1 is the single-sequence loop order."""
        raise NotImplementedError

    def batch_passes(self, m: MatrixLayout, batch: int) -> list[range]:
        """The ``batch`` sequences in passes: the sequences of a pass share the global buffer
        (each its own piece of a fill) and every row activation. A sequence's piece is at
        least one row chunk: with a buffer of ``gb_cols`` columns, ``gb_cols // chunk_cols``
        sequences share it (at least 1: a buffer smaller than a row serves one sequence per
        pass). Splitting a row-sized buffer into smaller pieces would not save activations -
        each row is opened once per buffer-full of its columns either way - and would multiply
        the accumulator reads; the remaining sequences are further passes that refill the
        buffer."""
        return _groups(batch, max(1, min(batch, m.gb_cols // m.chunk_cols)))

    def batch_read_layout(self, m: MatrixLayout, batch: int, seq: int) -> MatrixLayout:
        """A layout whose :meth:`read_segments` are sequence ``seq``'s accumulator reads in a
        batch of ``batch`` (the functional model's numerics): ``m`` where the sequence's pass
        holds it alone, else ``m`` with fills of one row chunk (:meth:`batch_fills`)."""
        for p in self.batch_passes(m, batch):
            if seq in p:
                return m if len(p) == 1 else dataclasses.replace(m, fill_cols=m.chunk_cols)
        raise ValueError(f"sequence {seq} is not in a batch of {batch}")

    @staticmethod
    def batch_fills(m: MatrixLayout, n_seq: int) -> tuple:
        """Each sequence's pieces of the fills of a pass of ``n_seq`` sequences: the layout's
        fills for one sequence; one whole row chunk per fill for several (so the sequences'
        MACs of a slot all fall on one open row, each into its own accumulator)."""
        if n_seq == 1:
            return m.fills
        return _fills(m.n_chunks, m.cols_of_chunk, m.chunk_cols, m.chunk_cols)

    def pass_items(self, m: MatrixLayout, ch: int, n_seq: int) -> list[tuple]:
        """Items of channel ``ch`` for one pass of ``n_seq`` sequences (:meth:`batch_passes`):
        :meth:`items` of a batch is its passes' items one after the other."""
        raise NotImplementedError

    def reads_per_neuron(self, m: MatrixLayout) -> int:
        raise NotImplementedError

    def read_segments(self, m: MatrixLayout) -> np.ndarray:
        raise NotImplementedError

    def loop_nest(self, m: MatrixLayout, indent: str) -> list[str]:
        raise NotImplementedError

    @staticmethod
    def _macs(m: MatrixLayout, ch: int, s: int, fill: tuple) -> list[tuple]:
        return [(_MAC_AB, -1, m.row_of(ch, s, k), n, c0) for k, c0, n in fill]


class PimGptOrder(MatvecOrder):
    """PIM-GPT's order: the input-fill loop outside, every slot inside. Each fill is written
    once and serves every slot of the channel; each slot's accumulator is read after every
    fill (the ASIC adds the partial sums). With ``k`` accumulators per bank, ``k`` slots
    accumulate side by side and their RD_MACs go out together (one register-mode switch per
    ``k`` reads instead of one per read)."""

    name = "pim-gpt"

    def items(self, m, ch, batch=1):
        out = []
        n_slots = m.slots(ch)
        if m.cent_parts and batch == 1:
            return cent_matvec_items(m, ch, self._macs)
        if not n_slots:
            return out
        if batch == 1:
            for fill in m.fills:
                out.append((_WR_GB, -1, -1, sum(n for _, _, n in fill), 0))
                for grp in _groups(n_slots, m.accumulators):
                    for s in grp:
                        out += self._macs(m, ch, s, fill)
                    out.append((_RD_MAC, -1, -1, len(grp), 0))
            return out
        for seqs in self.batch_passes(m, batch):
            out += self.pass_items(m, ch, len(seqs))
        return out

    def pass_items(self, m, ch, n_seq):
        return self._batched_pass(m, ch, n_seq) if m.slots(ch) else []

    def _batched_pass(self, m, ch, n_seq):
        """One pass of ``n_seq`` sequences: per fill (each sequence's piece written into the
        buffer), slots in groups of ``accumulators // n_seq``; each slot's row is opened once
        and MACed once per sequence (consecutive MAC_ABs on the open row), each sequence into
        its own accumulator; the accumulators are read out whenever all are in use (RD_MAC
        leaves the row open) and after every slot group. One sequence: the batch-1 items."""
        out = []
        acc = m.accumulators
        for fill in self.batch_fills(m, n_seq):
            out.append((_WR_GB, -1, -1, n_seq * sum(n for _, _, n in fill), 0))
            pending = 0
            for grp in _groups(m.slots(ch), max(1, acc // n_seq)):
                for s in grp:
                    for _ in range(n_seq):
                        out += self._macs(m, ch, s, fill)
                        pending += 1
                        if pending == acc:
                            out.append((_RD_MAC, -1, -1, pending, 0))
                            pending = 0
                if pending:
                    out.append((_RD_MAC, -1, -1, pending, 0))
                    pending = 0
        return out

    def reads_per_neuron(self, m):
        return len(m.fills)

    def read_segments(self, m):
        rows = [(k, c0, n, int(i == len(f) - 1)) for f in m.fills for i, (k, c0, n) in enumerate(f)]
        return np.array(rows, np.int64).reshape(-1, 4)

    def loop_nest(self, m, indent):
        g = m.geo
        k = m.accumulators
        return [
            f"{indent}  for fill f in 0..{len(m.fills) - 1}:        # WR_GB <- x[fill f] "
            f"(up to {m.gb_cols} columns)",
            f"{indent}    for slot group in 0..{-(-m.slots(0) // k) - 1} ({k} slot(s) each):",
            f"{indent}      for slot s in group, piece (chunk c, columns) of fill f:   "
            f"# ACT_AB row base + c*{m.slots(0)} + s",
            f"{indent}        parallel for channel ch, bank b: acc[b][s % {k}] += "
            f"W[n=(s*{g.channels}+ch)*{g.banks}+b, piece] . x[piece]   # MAC_AB",
            f"{indent}      RD_MAC x len(group)       # partial sums to the ASIC, added over fills",
        ]


class ReuseOrder(MatvecOrder):
    """CENT's reuse order: the slot loop outside, in groups of ``k`` (the accumulators per
    bank); for each group every input fill is written and serves its ``k`` output rows per
    bank, the accumulators keep the whole sum over all fills and are read once at the end
    (no partial sums for the ASIC). A single fill (the input fits the buffer) is written once
    for all groups. Fewer RD_MACs, more WR_GB when the input needs several fills."""

    name = "reuse"

    def items(self, m, ch, batch=1):
        out = []
        n_slots = m.slots(ch)
        if batch == 1:
            single = len(m.fills) == 1
            for gi, grp in enumerate(_groups(n_slots, m.accumulators)):
                for fill in m.fills:
                    if not (single and gi):
                        out.append((_WR_GB, -1, -1, sum(n for _, _, n in fill), 0))
                    for s in grp:
                        out += self._macs(m, ch, s, fill)
                out.append((_RD_MAC, -1, -1, len(grp), 0))
            return out
        for seqs in self.batch_passes(m, batch):
            out += self.pass_items(m, ch, len(seqs))
        return out

    def pass_items(self, m, ch, n_seq):
        return self._batched_pass(m, ch, n_seq, m.slots(ch))

    def batch_passes(self, m, batch):
        """As :meth:`MatvecOrder.batch_passes`, at most ``accumulators`` sequences a pass:
        each keeps its whole sums in its own accumulators."""
        return _groups(batch, max(1, min(batch, m.gb_cols // m.chunk_cols, m.accumulators)))

    def _batched_pass(self, m, ch, n_seq, n_slots):
        """One pass of ``n_seq`` sequences: slots in groups of ``accumulators // n_seq``; per
        group every fill (each sequence's piece) is written and each slot's row MACed once per
        sequence while open; every sequence's sums read out at the end of the group."""
        out = []
        fills = self.batch_fills(m, n_seq)
        single = len(fills) == 1
        for gi, grp in enumerate(_groups(n_slots, max(1, m.accumulators // n_seq))):
            for fill in fills:
                if not (single and gi):
                    out.append((_WR_GB, -1, -1, n_seq * sum(n for _, _, n in fill), 0))
                for s in grp:
                    for k, c0, n in fill:
                        out += [(_MAC_AB, -1, m.row_of(ch, s, k), n, c0)] * n_seq
            out.append((_RD_MAC, -1, -1, len(grp) * n_seq, 0))
        return out

    def reads_per_neuron(self, m):
        return 1

    def read_segments(self, m):
        rows = [(k, c0, n, 0) for f in m.fills for k, c0, n in f]
        rows[-1] = rows[-1][:3] + (1,)
        return np.array(rows, np.int64).reshape(-1, 4)

    def loop_nest(self, m, indent):
        g = m.geo
        k = m.accumulators
        return [
            f"{indent}  for slot group in 0..{-(-m.slots(0) // k) - 1} ({k} slot(s) each):",
            f"{indent}    for fill f in 0..{len(m.fills) - 1}:      # WR_GB <- x[fill f] "
            f"(up to {m.gb_cols} columns"
            + ("; written once for all groups)" if len(m.fills) == 1 else ")"),
            f"{indent}      for slot s in group, piece (chunk c, columns) of fill f:   "
            f"# ACT_AB row base + c*{m.slots(0)} + s",
            f"{indent}        parallel for channel ch, bank b: acc[b][s % {k}] += "
            f"W[n=(s*{g.channels}+ch)*{g.banks}+b, piece] . x[piece]   # MAC_AB",
            f"{indent}    RD_MAC x len(group)         # whole sums: no ASIC reduction",
        ]


MATVEC_ORDERS: dict[str, MatvecOrder] = {o.name: o for o in (PimGptOrder(), ReuseOrder())}
assert tuple(MATVEC_ORDERS) == MAPPINGS


def _v_write_items(vl: VLayout, k: int, col: int) -> list[np.ndarray]:
    """Per channel: one single-column WR (column ``col``) per value neuron, to chunk ``k`` of
    its row (cached while ``k`` and ``col`` stay: 16 consecutive tokens)."""
    return _latest("vwrite", vl, (k, col),
                   lambda: [_build_v_write_items(vl, c, k, col) for c in range(vl.geo.channels)])


def _build_v_write_items(vl: VLayout, c: int, k: int, col: int) -> np.ndarray:
    g = vl.geo
    vm = vl.matrix
    n_slots = vm.slots(c)
    s = np.repeat(np.arange(n_slots), g.banks)
    b = np.tile(np.arange(g.banks), n_slots)
    keep = vm.neuron(c, s, b) < vm.out_dim
    arr = np.empty((int(keep.sum()), ITEM_FIELDS), np.int64)
    arr[:, 0] = _WR
    arr[:, 1] = b[keep]
    arr[:, 2] = vm.row_of(c, s[keep], k)
    arr[:, 3] = 1
    arr[:, 4] = col
    return arr


def _kv_write_items(kl: KLayout, vl: VLayout, pos: int) -> list[np.ndarray]:
    """Write the new token's key (row-major: its key chunks into one bank's row slot) and value
    (column-major: one element into every value neuron's row, at column pos // 16)."""
    k, col = _v_write_place(vl, pos)
    out = list(_v_write_items(vl, k, col))
    ch, k_items = _k_write_items(kl, pos)
    out[ch] = np.concatenate([k_items, out[ch]])
    return out


def _v_write_place(vl: VLayout, pos: int) -> tuple[int, int]:
    """(row chunk, column) the value of the token at ``pos`` is written to in every neuron's row."""
    ce = vl.matrix.chunk_elems
    return pos // ce, (pos % ce) // vl.geo.col_elems


def _k_write_items(kl: KLayout, pos: int) -> tuple[int, np.ndarray]:
    """(channel, items) writing the key of the token at ``pos``: its key chunks into its bank's
    row slot (they go before the channel's value writes)."""
    ch = int(kl.locate(pos)[0])
    return ch, _latest("kwrite", kl, (pos,), lambda: _build_k_write_items(kl, pos))


def _build_k_write_items(kl: KLayout, pos: int) -> np.ndarray:
    g = kl.geo
    _, bank, slot = (int(v) for v in kl.locate(pos))
    return _arr([(_WR, bank, kl.row_of(slot, j),
                  _cdiv(len(kl.chunk_heads(j)) * kl.d_head, g.col_elems), 0)
                 for j in range(kl.n_chunks)])


def _attn_score_items(kl: KLayout, pos: int) -> list[np.ndarray]:
    return [_latest("score", kl, (ch, kl.slots_in_use(ch, pos + 1)),
                    lambda ch=ch: _build_attn_score_items(kl, ch, kl.slots_in_use(ch, pos + 1)),
                    per=ch)
            for ch in range(kl.geo.channels)]


def _attn_value_items(vl: VLayout, pos: int) -> list[np.ndarray]:
    n_tok = pos + 1
    ce = vl.matrix.chunk_elems
    key = (_cdiv(n_tok, ce), _cdiv(n_tok - (_cdiv(n_tok, ce) - 1) * ce, vl.geo.col_elems))
    return [_latest("value", vl, key, lambda ch=ch: _build_attn_value_items(vl, ch, pos), per=ch)
            for ch in range(vl.geo.channels)]


def _build_attn_score_items(kl: KLayout, ch: int, n_slots: int) -> np.ndarray:
    """q.K^T on channel ``ch`` with ``n_slots`` key rows in use: each slot row holds one token per
    bank; per KV head of a row chunk, MAC its d_head columns into an accumulator once for every
    query head of its group (grouped-query attention: K stored once per KV head); the scores
    (16 tokens each) are read out ``kl.accumulators`` at a time.

    The global buffer holds ``kl.fill_query_heads`` query heads. When a chunk's queries (its KV
    heads x group members) fit, one fill serves every key row; when they do not but one
    member's queries of the chunk do, each key row is opened once and the buffer is refilled
    with each member's queries before that member's MACs (one activation per key row); else
    the queries are split into fills that each pass over the rows."""
    g = kl.geo
    hcols = _cdiv(kl.d_head, g.col_elems)
    G = kl.group
    cap = kl.fill_query_heads
    items: list[tuple] = []
    pending = 0

    def mac(row: int, h: int) -> None:
        nonlocal pending
        items.append((_MAC_AB, -1, row, hcols, h * hcols))
        pending += 1
        if pending == kl.accumulators:
            flush()

    def flush() -> None:
        nonlocal pending
        if pending:
            items.append((_RD_MAC, -1, -1, pending, 0))
            pending = 0

    for k in range(kl.n_chunks if n_slots else 0):
        n_h = len(kl.chunk_heads(k))
        queries = [(h, j) for h in range(n_h) for j in range(G)]
        if G > 1 and len(queries) > cap >= n_h:
            for s in range(n_slots):
                row = kl.row_of(s, k)
                for _j in range(G):
                    items.append((_WR_GB, -1, -1, n_h * hcols, 0))
                    for h in range(n_h):
                        mac(row, h)
            flush()
            continue
        for q0 in range(0, len(queries), cap):
            fill = queries[q0:q0 + cap]
            items.append((_WR_GB, -1, -1, len(fill) * hcols, 0))
            for s in range(n_slots):
                row = kl.row_of(s, k)
                for h, _ in fill:
                    mac(row, h)
            flush()
    return _per_unit_bank(_arr(items), g)


def _build_attn_value_items(vl: VLayout, ch: int, pos: int) -> np.ndarray:
    """s.V on channel ``ch``: per global-buffer fill of cached tokens, per KV head, the buffer
    holds a query head's softmax weights; each slot (16 value neurons of one KV head) MACs
    along its rows; ``vl.accumulators`` results are read out together. Without groups the
    weights are written when the head changes and slots of a head accumulate side by side;
    with grouped-query attention each V row is MACed once per query head of its group while it
    is open, the buffer refilled with that head's weights in between (one activation per row)."""
    g = vl.geo
    vm = vl.matrix
    G = vl.group
    n_tok = pos + 1
    n_slots = vm.slots(ch)
    heads = np.asarray(vm.neuron(ch, np.arange(n_slots), 0)) // vl.d_head
    runs: list[range] = []  # consecutive slots of one head
    for s in range(n_slots):
        if s and heads[s] == heads[s - 1]:
            runs[-1] = range(runs[-1].start, s + 1)
        else:
            runs.append(range(s, s + 1))
    tok_cols = _cdiv(n_tok, g.col_elems)
    items = []
    for fill in vm.fills:
        pieces = []
        for k, c0, n in fill:  # clipped to the tokens cached so far
            have = tok_cols - k * vm.chunk_cols - c0
            if have > 0:
                pieces.append((k, c0, min(n, have)))
        if not pieces:
            break
        cols = sum(n for _, _, n in pieces)
        for run in runs:
            if G == 1:
                items.append((_WR_GB, -1, -1, cols, 0))
                for grp in _groups(len(run), vl.accumulators):
                    for j in grp:
                        s = run.start + j
                        items += [(_MAC_AB, -1, vm.row_of(ch, s, k), n, c0) for k, c0, n in pieces]
                    items.append((_RD_MAC, -1, -1, len(grp), 0))
                continue
            pending = 0
            for s in run:
                for _ in range(G):
                    items.append((_WR_GB, -1, -1, cols, 0))
                    items += [(_MAC_AB, -1, vm.row_of(ch, s, k), n, c0) for k, c0, n in pieces]
                    pending += 1
                    if pending == vl.accumulators:
                        items.append((_RD_MAC, -1, -1, pending, 0))
                        pending = 0
            if pending:
                items.append((_RD_MAC, -1, -1, pending, 0))
    return _per_unit_bank(_arr(items), g)
