"""The PIM-GPT instruction set: where data lives (layouts) and the decode-step program.

This is the contract between the compiler and the simulator. A :class:`Program` is the decode step
for one token, re-used for every token with the sequence position ``pos`` as its parameter. It is
an ordered list of :class:`Step` s with explicit dependencies; a step is either PIM work (per
channel instruction streams over the DRAM banks) or one ASIC operation.

Layouts (all rows are DRAM rows of ``row_elems`` data elements; a *group* is 16 neurons, one per
bank of a channel, that one all-bank MAC row computes together):

* :class:`MatrixLayout` - a weight matrix ``[out, in]``: neuron ``n`` is in group ``n // banks``
  and bank ``n % banks``; group ``g`` lives in channel ``g % channels`` at slot ``g // channels``;
  its input dimension is tiled into chunks of at most one row (the global buffer holds one chunk);
  chunk ``k`` of slot ``s`` is row ``base_row[ch] + k * slots(ch) + s``.
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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from pimsim.spec.commands import cmd_id

ITEM_FIELDS = 5
_WR_GB, _MAC_AB, _RD_MAC, _WR, _RD = (cmd_id(n) for n in ("WR_GB", "MAC_AB", "RD_MAC", "WR", "RD"))

PER_OP_KEYS = ("qkv", "attn_score", "attn_value", "out_proj", "ffn_up", "ffn_down", "lm_head",
               "layernorm", "softmax", "gelu", "residual", "reduction", "embedding", "kv_write",
               "param_fetch", "argmax", "rmsnorm", "activation", "elementwise", "transcendental")


# the per-layer vector parameters, fetched together as one vector "L{i}.params"
LAYER_VECTORS = ("ln1_w", "ln1_b", "qkv_b", "out_proj_b", "ln2_w", "ln2_b", "ffn_up_b",
                 "ffn_down_b")


def layer_vector_sizes(d_model: int, d_attn: int, d_ff: int) -> dict[str, int]:
    d = d_model
    return {"ln1_w": d, "ln1_b": d, "qkv_b": 3 * d_attn, "out_proj_b": d, "ln2_w": d,
            "ln2_b": d, "ffn_up_b": d_ff, "ffn_down_b": d}


def split_layer_vectors(vec: np.ndarray, d_model: int, d_attn: int, d_ff: int) -> dict:
    """The named parts of a layer's "L{i}.params" vector (views)."""
    out, lo = {}, 0
    for name, n in layer_vector_sizes(d_model, d_attn, d_ff).items():
        out[name] = vec[lo:lo + n]
        lo += n
    return out


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


@dataclass(frozen=True)
class MatrixLayout:
    name: str
    role: str
    out_dim: int
    in_dim: int
    chunk_elems: int
    base_row: tuple[int, ...]  # per channel
    geo: Geometry

    @property
    def n_chunks(self) -> int:
        return _cdiv(self.in_dim, self.chunk_elems)

    @property
    def n_groups(self) -> int:
        return _cdiv(self.out_dim, self.geo.banks)

    def slots(self, ch: int) -> int:
        """Row slots (groups) this matrix has in channel ``ch``."""
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

    def neuron(self, ch: int, slot: int, bank: np.ndarray | int) -> np.ndarray | int:
        return (slot * self.geo.channels + ch) * self.geo.banks + bank


@dataclass(frozen=True)
class KLayout:
    """K cache of one attention: ``n_head`` query heads share ``kv_heads`` stored heads (grouped-
    query attention: query head ``h`` reads KV head ``h // group``); each KV head is stored once."""

    layer: int
    n_head: int
    d_head: int
    n_ctx: int
    heads_per_chunk: int  # KV heads per row chunk
    base_row: int  # same in every channel
    geo: Geometry
    n_kv_head: int = 0  # 0: as many KV heads as query heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_head // self.kv_heads

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
class VLayout:
    """V cache of one attention, ``kv_heads`` heads stored once (see :class:`KLayout`)."""

    layer: int
    n_head: int
    d_head: int
    n_ctx: int
    base_row: int
    geo: Geometry
    n_kv_head: int = 0

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def group(self) -> int:
        return self.n_head // self.kv_heads

    @cached_property
    def matrix(self) -> MatrixLayout:
        """V^T as a matrix [kv_heads*d_head, n_ctx] placed like a weight matrix."""
        return MatrixLayout(f"L{self.layer}.v_cache", "v_cache", self.kv_heads * self.d_head,
                            self.n_ctx, self.geo.row_elems,
                            tuple([self.base_row] * self.geo.channels), self.geo)

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
    kind: str  # "pim" or "asic"
    deps: tuple[int, ...]
    # pim steps: one of
    matrix: MatrixLayout | None = None  # weight matrix-vector product
    kv: tuple[KLayout, VLayout] | None = None  # kv_write / attn_score / attn_value
    vectors: tuple[str, ...] = ()  # param_fetch / embedding: vector entries read
    # asic steps
    n_elems: int = 0  # vector length (per-position ops scale with pos, see asic_elems)
    per_pos_elems: int = 0  # extra elements per cached token (softmax)


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
    wpe_layout: MatrixLayout | None = None
    lm_head: MatrixLayout | None = None
    matrices: dict[str, MatrixLayout] = field(default_factory=dict)
    kv_layouts: list[tuple[KLayout, VLayout]] = field(default_factory=list)
    eps: float = 1e-5
    # graph-lowered programs (compiler.passes.lower): the dataflow and where its operands live
    flow: list[FlowOp] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # "token" / "position" -> value name
    logits: str = ""  # the value holding the logits
    immediates: dict[str, np.ndarray] = field(default_factory=dict)  # constants in the program
    vector_refs: dict[str, tuple[str, int, tuple[int, ...]]] = field(default_factory=dict)
    # constant -> (vector entry, first element, shape); tables: constant -> its matrix layout
    tables: dict[str, MatrixLayout] = field(default_factory=dict)
    position_tables: tuple[str, ...] = ()  # tables read at the position (else at the token)

    # --------------------------------------------------------------- instantiation per position
    def asic_elems(self, step: Step, pos: int) -> int:
        return step.n_elems + step.per_pos_elems * (pos + 1)

    def pim_items(self, step: Step, pos: int) -> list[np.ndarray]:
        """Per-channel item arrays (cmd, bank, row, count, col0) of a PIM step at ``pos``."""
        op = step.op
        if step.matrix is not None:
            return _matvec_items(step.matrix)
        if op == "kv_write":
            return _kv_write_items(*step.kv, pos)
        if op == "attn_score":
            return _attn_score_items(step.kv[0], pos)
        if op == "attn_value":
            return _attn_value_items(step.kv[1], pos)
        if op in ("param_fetch", "embedding"):
            return self._vector_read_items(step, pos)
        raise ValueError(f"step {step.name}: no PIM instructions for op {op!r}")

    def items_key(self, step: Step, pos: int):
        """A key such that ``pim_items(step, pos)`` is the same wherever the key is the same
        (lets a caller skip rebuilding items that did not change)."""
        op = step.op
        if step.matrix is not None or op == "param_fetch":
            return ()
        if op == "attn_score":
            kl = step.kv[0]
            return tuple(kl.slots_in_use(ch, pos + 1) for ch in range(kl.geo.channels))
        if op == "attn_value":
            ce = step.kv[1].matrix.chunk_elems
            n = _cdiv(pos + 1, ce)
            return n, _cdiv(pos + 1 - (n - 1) * ce, self.geo.col_elems)
        return pos

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
            elif name == "wte":
                tok_layout = self.lm_head
                # the token's embedding row = its LM-head neuron; read every chunk (token id is
                # data-dependent: timing uses neuron 0's place, the cost is the same everywhere)
                ch, bank, slot = (int(v) for v in tok_layout.locate(0))
                for k in range(tok_layout.n_chunks):
                    _, ln = tok_layout.chunk(k)
                    per_ch[ch].append((_RD, bank, tok_layout.row_of(ch, slot, k), _cdiv(ln, g.col_elems), 0))
            elif name == "wpe":
                lay = self.wpe_layout
                ch, bank, slot = (int(v) for v in lay.locate(pos))
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
        from pimsim.timing import SYNC

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
        from pimsim.spec.commands import COMMANDS

        out = [f"# program {self.model} on {self.hw}, position {pos}"]
        for st in self.steps:
            deps = ",".join(str(d) for d in st.deps)
            if st.kind == "asic":
                out.append(f"{st.index:4d} {st.name:<18} asic {st.op} n={self.asic_elems(st, pos)}"
                           f" deps=[{deps}]")
                continue
            out.append(f"{st.index:4d} {st.name:<18} pim {st.op} deps=[{deps}]")
            for c, arr in enumerate(self.pim_items(st, pos)):
                for cmd, bank, row, count, col0 in arr.tolist():
                    b = "*" if bank < 0 else str(bank)
                    out.append(f"       ch{c} {COMMANDS[cmd].name:<6} bank={b} row={row} "
                               f"col={col0} n={count}")
        return "\n".join(out) + "\n"

    def instruction_count(self, pos: int) -> int:
        """PIM instructions (stream items) plus ASIC ops for the token at ``pos``."""
        n = 0
        for st in self.steps:
            if st.kind == "asic":
                n += 1
            else:
                n += sum(a.shape[0] for a in self.pim_items(st, pos))
        return n


def _arr(items: list[tuple]) -> np.ndarray:
    return np.array(items, np.int64).reshape(-1, ITEM_FIELDS)


_LATEST: dict[tuple[str, int, int], tuple[object, tuple, object]] = {}


def _latest(kind: str, layout: object, key: tuple, build, per: int = -1):
    """Items of a layout (or of one channel ``per`` of it) that depend on the position only
    through ``key`` (static items: an empty key): rebuilt when ``key`` changes, one variant
    kept per layout and channel."""
    hit = _LATEST.get((kind, id(layout), per))
    if hit is not None and hit[0] is layout and hit[1] == key:
        return hit[2]
    items = build()
    _LATEST[(kind, id(layout), per)] = (layout, key, items)
    return items


def _matvec_items(m: MatrixLayout) -> list[np.ndarray]:
    return _latest("matvec", m, (), lambda: _build_matvec_items(m))


def _build_matvec_items(m: MatrixLayout) -> list[np.ndarray]:
    """Per channel: for each input chunk, fill the global buffer, then MAC every slot's row and
    read the 16 accumulators. Static for a given layout."""
    g = m.geo
    out = []
    for ch in range(g.channels):
        items = []
        n_slots = m.slots(ch)
        if n_slots:
            for k in range(m.n_chunks):
                _, ln = m.chunk(k)
                cols = _cdiv(ln, g.col_elems)
                items.append((_WR_GB, -1, -1, cols, 0))
                for s in range(n_slots):
                    items.append((_MAC_AB, -1, m.row_of(ch, s, k), cols, 0))
                    items.append((_RD_MAC, -1, -1, 1, 0))
        out.append(_arr(items))
    return out


def _v_write_items(vl: VLayout, c: int, k: int, col: int) -> np.ndarray:
    """Channel ``c``: one single-column WR (column ``col``) per value neuron, to chunk ``k`` of
    its row (cached while ``k`` and ``col`` stay: 16 consecutive tokens)."""
    return _latest("vwrite", vl, (k, col), lambda: _build_v_write_items(vl, c, k, col), per=c)


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
    g = kl.geo
    ch, bank, slot = (int(v) for v in kl.locate(pos))
    vm = vl.matrix
    k = pos // vm.chunk_elems
    col = (pos % vm.chunk_elems) // g.col_elems
    out = [_v_write_items(vl, c, k, col) for c in range(g.channels)]
    k_items = _arr([(_WR, bank, kl.row_of(slot, j),
                     _cdiv(len(kl.chunk_heads(j)) * kl.d_head, g.col_elems), 0)
                    for j in range(kl.n_chunks)])
    out[ch] = np.concatenate([k_items, out[ch]])
    return out


def _attn_score_items(kl: KLayout, pos: int) -> list[np.ndarray]:
    return [_latest("score", kl, (ch, kl.slots_in_use(ch, pos + 1)),
                    lambda: _build_attn_score_items(kl, ch, kl.slots_in_use(ch, pos + 1)),
                    per=ch)
            for ch in range(kl.geo.channels)]


def _attn_value_items(vl: VLayout, pos: int) -> list[np.ndarray]:
    n_tok = pos + 1
    ce = vl.matrix.chunk_elems
    key = (_cdiv(n_tok, ce), _cdiv(n_tok - (_cdiv(n_tok, ce) - 1) * ce, vl.geo.col_elems))
    return [_latest("value", vl, key, lambda: _build_attn_value_items(vl, ch, pos), per=ch)
            for ch in range(vl.geo.channels)]


def _build_attn_score_items(kl: KLayout, ch: int, n_slots: int) -> np.ndarray:
    """q.K^T on channel ``ch`` with ``n_slots`` key rows in use: each slot row holds one token per
    bank; per KV head, MAC its d_head columns and read the 16 scores (one token per bank), once
    for every query head of its group while the row is open (one activation per key row).

    The global buffer holds the queries of a chunk's KV heads, every group member's at its own
    offset, filled once per chunk; when they do not fit one buffer (groups of many query heads),
    it is refilled with one member's queries before that member's MACs on each row."""
    g = kl.geo
    hcols = _cdiv(kl.d_head, g.col_elems)
    G = kl.group
    parts = []
    for k in range(kl.n_chunks if n_slots else 0):
        n_h = len(kl.chunk_heads(k))
        rows = kl.row_of(np.arange(n_slots), k)
        if n_h * G * kl.d_head <= g.row_elems:
            parts.append(np.array([[_WR_GB, -1, -1, _cdiv(n_h * G * kl.d_head, g.col_elems), 0]]))
            pairs = np.empty((n_slots, n_h, G, 2, ITEM_FIELDS), np.int64)
            pairs[..., 0, 0] = _MAC_AB
            pairs[..., 0, 1] = -1
            pairs[..., 0, 2] = rows[:, None, None]
            pairs[..., 0, 3] = hcols
            pairs[..., 0, 4] = (np.arange(n_h) * hcols)[None, :, None]
            pairs[..., 1, :] = (_RD_MAC, -1, -1, 1, 0)
            parts.append(pairs.reshape(-1, ITEM_FIELDS))
        else:
            per = np.empty((n_slots, G, 1 + 2 * n_h, ITEM_FIELDS), np.int64)
            per[:, :, 0] = (_WR_GB, -1, -1, _cdiv(n_h * kl.d_head, g.col_elems), 0)
            mac = per[:, :, 1::2]
            mac[..., 0] = _MAC_AB
            mac[..., 1] = -1
            mac[..., 2] = rows[:, None, None]
            mac[..., 3] = hcols
            mac[..., 4] = (np.arange(n_h) * hcols)[None, None, :]
            per[:, :, 2::2] = (_RD_MAC, -1, -1, 1, 0)
            parts.append(per.reshape(-1, ITEM_FIELDS))
    return np.concatenate(parts) if parts else np.empty((0, ITEM_FIELDS), np.int64)


def _build_attn_value_items(vl: VLayout, ch: int, pos: int) -> np.ndarray:
    """s.V on channel ``ch``: per group of 16 value neurons (one KV head), the global buffer holds
    that head's softmax weights over the cached tokens (one chunk of tokens); MAC along the
    row. With grouped-query attention the row is MACed once per query head of the group,
    the buffer refilled with that head's weights in between: each V row is activated once."""
    g = vl.geo
    vm = vl.matrix
    G = vl.group
    n_tok = pos + 1
    n_slots = vm.slots(ch)
    heads = np.asarray(vm.neuron(ch, np.arange(n_slots), 0)) // vl.d_head
    new_head = np.ones(n_slots, bool)
    new_head[1:] = heads[1:] != heads[:-1]
    parts = []
    for k in range(_cdiv(n_tok, vm.chunk_elems)):
        lo = k * vm.chunk_elems
        cols = _cdiv(min(n_tok - lo, vm.chunk_elems), g.col_elems)
        per_slot = np.zeros((n_slots, G, 3, ITEM_FIELDS), np.int64)
        per_slot[:, :, 0] = (_WR_GB, -1, -1, cols, 0)
        per_slot[:, :, 1, 0] = _MAC_AB
        per_slot[:, :, 1, 1] = -1
        per_slot[:, :, 1, 2] = vm.row_of(ch, np.arange(n_slots), k)[:, None]
        per_slot[:, :, 1, 3] = cols
        per_slot[:, :, 2] = (_RD_MAC, -1, -1, 1, 0)
        keep = np.ones((n_slots, G, 3), bool)
        if G == 1:
            keep[:, 0, 0] = new_head
        parts.append(per_slot[keep])
    return np.concatenate(parts) if parts else np.empty((0, ITEM_FIELDS), np.int64)
