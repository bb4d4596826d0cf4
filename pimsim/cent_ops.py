"""CENT's lowering of a transformer block's vector work and products (``[system] lowering =
"cent"``): the DRAM/PIM commands CENT's trace generator issues that pimsim's own lowering does
not (Chen et al., ASPLOS'25; Yufeng98/CENT@9b4165f ``cent_simulation/``, cited as file:line).

CENT runs a block's element-wise work in the banks of the AiM channels, its CXL port (the
host side, pimsim's ASIC) doing only the reductions and scalar math, and multiplies each weight
matrix on its own. Per block (``Llama.py`` ``trace_only``, 597-889):

* **RMSNorm** (613-647, 793-822): the vector written twice into neighbouring banks and squared
  there (WR_BIAS, MAC_ABK, RD_MAC), the norm scalar and the vector written into bank groups 0
  and 1, EWMUL, bank group 2 copied to bank group 1 through the global buffer (COPY_BKGB /
  COPY_GBBK, 4 banks), EWMUL with the norm weights, the result read back (bank group 2);
* **rotary embedding** (655-668): query and key written into bank group 1 (twice their length:
  the sin/cos halves), one EWMUL over ``dim / 16`` columns for the query and ``dim / n_repeat /
  16`` for the key, the results written into bank group 2;
* **softmax** (742-781): the scores and the scale written per head into bank groups 0 and 1,
  EWMUL per row of scores, read back (bank group 2), then the same for exp and the reciprocal
  of its sum; a SYNC after each;
* **SiLU and the gate** (832-887): x1 and its sigmoid written into bank groups 0 / 1, EWMUL,
  copy through the global buffer, x3 written, EWMUL, the product read back; the sigmoid is the
  AF unit's, AF + RD_AF per accumulator after w1's last fill
  (``TransformerBlock.py`` 736-780);
* **products** (``TransformerBlock.py`` ``Vector_Matrix_Mul_weight_pim_only_trace``, 696-734,
  ``--GEMV reuse-GB --reuse-size 32``): one product per weight matrix, so the input is written
  into the global buffer once per matrix (q, k and v: 3 times; w1 and w3: twice) where pimsim's
  packed product writes it once; per fill, groups of up to 32 accumulators (16 for w1)
  each WR_BIAS, MAC_ABK, RD_MAC.

The residual adds are the CXL port's (``EWADD``, host only). Vectors live on the banks by
CENT's ``bank_index`` (``TransformerBlock.py`` 102-107): global bank ``b`` of the stage is
channel ``b // banks``, bank ``b % banks``; a vector of ``n`` elements in bank group ``g`` uses
banks ``4 i + g`` with ``ceil(n / (total_banks / 4))`` elements each
(``store_for_EWMUL_input_only_trace``, 1158-1164), one WR or RD per 16 elements (a burst).
EWMUL, COPY and the MACs go to every channel of the stage; with ``[system] placement =
"cent"`` (:func:`cent_part_slots`) so do a product's MAC rows, each matrix of a pack padded to
CENT's ``ceil(rows / all banks)`` rows per bank. An element-wise op CENT writes with
an operand size over a row's columns (the rotary EWMUL: 256) is issued as row-sized commands on
the same row, as its traces are replayed (tests/data/cent/README.md)."""

from __future__ import annotations

import numpy as np

from pimsim.spec.commands import AF_PSEUDO_ROW, cmd_id

_WR_GB, _MAC_AB, _RD_MAC, _WR_MAC, _WR, _RD = (cmd_id(n) for n in (
    "WR_GB", "MAC_AB", "RD_MAC", "WR_MAC", "WR", "RD"))
_EWMUL, _RD_CP, _WR_CP, _AF, _RD_AF = (cmd_id(n) for n in ("EWMUL", "RD_CP", "WR_CP", "AF", "RD_AF"))
ITEM_FIELDS = 5

# CENT's run: --reuse-size 32 (tests/data/cent/README.md); w1 (with AF) uses half
# (TransformerBlock.py 715, 757)
REUSE_SIZE = 32
BURST_ELEMS = 16  # CENT's burst_length: 16 BF16 elements (32 B) per column access

# scratch rows of the CENT vectors, from Program.scratch_row (CENT's x, x_copy, SANorm/FFNNorm,
# xq, xk, x1_sigmoid and scores rows, Llama.py memory_mapping 1106-1155)
ROW_X, ROW_X_COPY, ROW_NORM, ROW_XQ, ROW_XK, ROW_X1, ROW_SCORES = range(7)
KINDS = ("norm", "rope", "softmax", "silu")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def scratch_rows(n_head: int, n_ctx: int, channels: int, row_elems: int) -> int:
    """Rows per bank CENT's vectors need: the fixed ones and the scores' rows (one set per head
    a bank holds, ``rows_per_score`` each for the longest context)."""
    return ROW_SCORES + _cdiv(n_ctx, row_elems) * _cdiv(n_head, channels * 4)


def cent_part_slots(part_rows, devices: int, channels: int, banks: int) -> tuple[int, ...]:
    """CENT's placement of a pack's weight matrices (``[system] placement = "cent"``): slots
    (a row of all-bank MACs over a channel's banks, each bank one output row) per channel of
    each matrix of ``part_rows`` output rows, split over ``devices`` x ``channels`` x
    ``banks`` banks. CENT gives every bank ``ceil(rows / FC_total_banks)`` rows of each matrix
    (``Llama.py`` ``memory_mapping`` 1012-1068: ``dic_row["wq"] = ((rows - 1) //
    FC_total_banks + 1) * ...``; ``TransformerBlock.py`` 697: ``matrix_col_per_bank``) and
    issues that many MAC rows per input row on every channel of the stage, whether a bank
    holds one of the rows or not (701-702: ``channel_lst``, all channels once the matrix
    spans more than a device's; a stage's channels otherwise). pimsim's dense placement gives
    a channel only the slots its rows fill, a pack's matrices sharing them. Which neuron
    sits in which padded slot stays pimsim's deal (:class:`pimsim.isa.MatrixLayout`); the
    counts are CENT's."""
    per = devices * channels * banks
    return tuple(_cdiv(int(r), per) for r in part_rows)


def cent_matvec_items(m, ch: int, macs) -> list[tuple]:
    """Channel ``ch``'s items of a packed product lowered as CENT does: its slots dealt to the
    pack's ``m.cent_parts`` matrices (contiguous shares), each a product of its own
    (``TransformerBlock.py`` 714-734): per fill a WR_GB of the whole fill (on every channel,
    one holding none of the part's slots too), then per group of up
    to ``REUSE_SIZE`` slots (CENT's balanced groups, 715-716) a WR_BIAS per slot, the slots'
    MAC_ABKs, a RD_MAC per slot; the part feeding an activation (``m.cent_af_part``, 756-780:
    groups of ``REUSE_SIZE // 2``) runs AF and RD_AF per slot after its last fill's MACs. A
    group is also at most the config's accumulators per bank (CENT's AiM has ``reuse_size`` =
    32 latches a bank, aim_sim.py:10, run_sim.py:16; aim-gddr6 has one and issues its groups
    one slot at a time; examples/cent/ give the device CENT's 32). Every neuron's accumulator
    is read after every fill, as pim-gpt's order (the same numerics: ``read_segments``)."""
    out: list[tuple] = []
    n_slots = m.slots(ch)
    parts = m.cent_parts
    if m.cent_slots:  # CENT's placement: each part its own padded slots (cent_part_slots)
        bounds = [sum(m.cent_slots[:i]) for i in range(parts + 1)]
    else:
        bounds = [-(-n_slots * i // parts) for i in range(parts + 1)]  # earlier parts the extra
    for p in range(parts):  # CENT writes every fill on every channel of the stage (700-702)
        slots = range(bounds[p], bounds[p + 1])
        af = p == m.cent_af_part
        # CENT's balanced groups (715-716): ceil(n / limit) groups of ceil(n / groups) slots
        limit = min(REUSE_SIZE // 2 if af else REUSE_SIZE, m.accumulators)
        size = _cdiv(len(slots), _cdiv(len(slots), limit)) if len(slots) else 1
        groups = [slots[i:i + size] for i in range(0, len(slots), size)]
        for fi, fill in enumerate(m.fills):
            out.append((_WR_GB, -1, -1, sum(n for _, _, n in fill), 0))
            for grp in groups:
                out.append((_WR_MAC, -1, -1, len(grp), 0))
                for s in grp:
                    out += macs(m, ch, s, fill)
                if af and fi == len(m.fills) - 1:
                    for _ in grp:
                        out.append((_AF, -1, AF_PSEUDO_ROW, 1, 0))
                        out.append((_RD_AF, -1, -1, 1, 0))
                out.append((_RD_MAC, -1, -1, len(grp), 0))
    return out


class _Channels:
    """Per-channel item lists of one step, with CENT's vector placement."""

    def __init__(self, geo, base_row: int):
        self.geo = geo
        self.base = base_row
        self.out: list[list[tuple]] = [[] for _ in range(geo.channels)]
        self.total_banks = geo.channels * geo.banks

    def all(self, cmd: int, row: int, cols: int, bank: int = -1) -> None:
        """A command on every channel (``row`` -1: a register command, ``cols`` of them as
        one item); operand sizes over a row's columns as row-sized commands on the same
        row."""
        if row < 0:
            for c in self.out:
                c.append((cmd, -1, -1, cols, 0))
            return
        per = self.geo.row_elems // self.geo.col_elems
        for c in self.out:
            left = cols
            while left > 0:
                c.append((cmd, bank, self.base + row, min(per, left), 0))
                left -= per

    def bank_group(self, cmd: int, n: int, group: int, row: int, size: int = 0) -> None:
        """A vector of ``n`` elements in bank group ``group`` (banks ``4 i + group``,
        ``ceil(n / (total_banks / 4))`` elements each, or ``size`` where CENT writes another
        length to the same banks), burst by burst over the banks
        (``store_for_EWMUL_input_only_trace``, 1158-1164)."""
        length = _cdiv(n, self.total_banks // 4)
        used = _cdiv(n, length)
        self._banks(cmd, [4 * i + group for i in range(used)],
                    _cdiv(size or length, BURST_ELEMS), row)

    def neighbour(self, n: int, group: int, row: int) -> None:
        """``n`` elements written into neighbouring bank ``group`` of each pair (banks
        ``2 i + group``; ``store_for_neighbor_bank_input_only_trace``, 1141-1147)."""
        length = _cdiv(n, self.total_banks // 2)
        used = _cdiv(n, length)
        self._banks(_WR, [2 * i + group for i in range(used)], _cdiv(length, BURST_ELEMS), row)

    def _banks(self, cmd: int, banks: list[int], bursts: int, row: int) -> None:
        b = self.geo.banks
        for i in range(bursts):
            for g in banks:
                self.out[g // b].append((cmd, g % b, self.base + row, 1, i))

    def scores(self, cmd: int, n_head: int, seqlen: int, group: int) -> None:
        """The scores (one head per bank of group ``group``, ``n_head / (channels x 4)`` heads
        a bank, a row per 1024 tokens) burst by burst (``store_for_EWMUL_score_only_trace``,
        1183-1204)."""
        g, rpe = self.geo, self.geo.row_elems
        rows = _cdiv(seqlen, rpe)
        per_bank = _cdiv(n_head, g.channels * 4)
        for k in range(rows):
            size = rpe if k < rows - 1 else seqlen - rpe * (rows - 1)
            for j in range(per_bank):
                for i in range(_cdiv(size, BURST_ELEMS)):
                    for bank in range(group, self.total_banks, 4):
                        if (bank // 4) * per_bank + j > n_head - 1:
                            break
                        self.out[bank // g.banks].append(
                            (cmd, bank % g.banks, self.base + ROW_SCORES + j * rows + k, 1, i))

    def arrays(self) -> list[np.ndarray]:
        return [np.array(c, np.int64).reshape(-1, ITEM_FIELDS) for c in self.out]


def _norm(c: _Channels, d: int) -> None:
    """RMSNorm (Llama.py 613-647)."""
    tb = c.total_banks
    c.neighbour(d, 0, ROW_X)
    c.neighbour(d, 1, ROW_X)
    c.all(_WR_MAC, -1, 1)
    c.all(_MAC_AB, ROW_X, _cdiv(_cdiv(d, tb // 2), BURST_ELEMS))
    c.all(_RD_MAC, -1, 1)
    ew = _cdiv(_cdiv(d, tb // 4), BURST_ELEMS)
    _mul_and_copy(c, d, ROW_X_COPY, ROW_NORM, ew)
    c.all(_EWMUL, ROW_NORM, ew)
    c.bank_group(_RD, d, 2, ROW_NORM)


def _mul_and_copy(c: _Channels, n: int, row: int, dst_row: int, ew: int) -> None:
    """CENT's element-wise product of two ``n``-element vectors: written to bank groups 0 and
    1 at ``row``, multiplied there (EWMUL), the products copied from every fourth bank's
    ``row`` down to the bank before it at ``dst_row`` (Llama.py's RD_CP / WR_CP pairs)."""
    c.bank_group(_WR, n, 0, row)
    c.bank_group(_WR, n, 1, row)
    c.all(_EWMUL, row, ew)
    for bank in range(2, c.geo.banks, 4):
        c.all(_RD_CP, row, ew, bank)
        c.all(_WR_CP, dst_row, ew, bank - 1)


def _rope(c: _Channels, d: int, n_repeat: int) -> None:
    """The rotary embedding of the query (``d`` elements) and the key (Llama.py 655-668)."""
    length = _cdiv(d, c.total_banks // 4)
    sizes = ((length * 2, ROW_XQ), (length // n_repeat * 2, ROW_XK))
    for size, row in sizes:
        if size:
            c.bank_group(_WR, d, 1, row, size)
    c.all(_EWMUL, ROW_XQ, d // BURST_ELEMS)
    c.all(_EWMUL, ROW_XK, d // n_repeat // BURST_ELEMS)
    for size, row in sizes:  # "Load rotary embedding results": CENT writes them (666-668)
        if size:
            c.bank_group(_WR, d, 2, row, size)


def _softmax(c: _Channels, n_head: int, seqlen: int) -> None:
    """One half of the softmax (Llama.py 742-760: the scores and the scale; 761-781: exp and
    the reciprocal of its sum; each half a step of its own, ending at CENT's SYNC)."""
    rows = _cdiv(seqlen, c.geo.row_elems)
    per_bank = _cdiv(n_head, c.geo.channels * 4)
    c.scores(_WR, n_head, seqlen, 0)
    c.scores(_WR, n_head, seqlen, 1)
    for j in range(per_bank):
        for r in range(rows):
            off = c.geo.row_elems if r < rows - 1 else seqlen - r * c.geo.row_elems
            c.all(_EWMUL, ROW_SCORES + j * rows + r, _cdiv(off, BURST_ELEMS))
    c.scores(_RD, n_head, seqlen, 2)


def _silu(c: _Channels, d_ff: int) -> None:
    """x1 . sigmoid(x1) . x3 (Llama.py 869-887, the path without iterations)."""
    tb = c.total_banks
    ew = _cdiv(_cdiv(d_ff, tb // 4), BURST_ELEMS)
    _mul_and_copy(c, d_ff, ROW_X1, ROW_X1, ew)
    c.bank_group(_WR, d_ff, 0, ROW_X1)
    c.all(_EWMUL, ROW_X1, ew)
    c.bank_group(_RD, d_ff, 2, ROW_X1)


def host_lines(per_channel: list[np.ndarray]) -> tuple[int, int]:
    """Trace lines CENT's host writes for one step's items, as (all-channel lines, single-bank
    lines): one per all-channel command (its channel mask selects them all) and one per
    single-bank WR / RD of each channel (``W MEM`` / ``R MEM``, aim_sim.py 252-258). The
    device's DMA decodes them one after another (``[host] line_cyc`` each, as pimsim's trace
    replay: pimsim.timing.host_dma); the executor keeps every channel of the step busy until
    they are through (pimsim.decode). CENT's pipeline trace writes the single-bank lines once
    for every block on the device (``[system] host_lines = "device"``)."""
    if not per_channel:
        return 0, 0
    single = np.isin(per_channel[0][:, 0], (_WR, _RD)) if len(per_channel[0]) else []
    shared = int(len(per_channel[0]) - np.count_nonzero(single))
    return shared, sum(int(np.count_nonzero(np.isin(a[:, 0], (_WR, _RD)))) for a in per_channel)


def needs_iterations(d_ff: int, geo) -> bool:
    """CENT splits x1 in two when it exceeds its bank group 0's rows (Llama.py 834): a path
    not modelled here."""
    return d_ff > geo.channels * (geo.banks // 4) * geo.row_elems


def cent_vector_items(spec: tuple, geo, base_row: int, pos: int) -> list[np.ndarray]:
    """Per-channel items of one CENT vector step ``spec`` (``(kind, *sizes)``, kind one of
    :data:`KINDS`) for the token at ``pos``; rows from ``base_row`` (the scratch rows)."""
    c = _Channels(geo, base_row)
    kind = spec[0]
    if kind == "norm":
        _norm(c, spec[1])
    elif kind == "rope":
        _rope(c, spec[1], spec[2])
    elif kind == "softmax":
        _softmax(c, spec[1], pos + 1)
    elif kind == "silu":
        _silu(c, spec[1])
    else:
        raise ValueError(f"CENT vector step {kind!r}; known: {', '.join(KINDS)}")
    return c.arrays()
