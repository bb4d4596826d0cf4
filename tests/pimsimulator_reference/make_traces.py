"""Writes the HBM-PIM reference traces of this folder (run: python tests/pimsimulator_reference/make_traces.py).

Each trace is, channel by channel, the DRAM transaction sequence that Samsung's PIMSimulator
(``SAITPublic/PIMSimulator``, ``src/tests/PIMKernel.cpp``) sends for one of its PIMBench kernels
(``src/tests/PIMBenchTestCases.cpp``: GEMV 4096 x 4096, ADD 1 M, MUL 2 M, ReLU 4 M FP16 values
on 64 pseudo-channels), written in pimsim's trace grammar for ``hbm-pim`` (16 pseudo-channels,
each given the per-channel share of the 64-channel run: the reference's channels are independent).

- Single-bank mode (park-in / park-out reads of every bank, the ABMR writes that enter all-bank
  mode, the writes that leave it): ``R MEM`` / ``W MEM`` lines.
- All-bank PIM mode (HBM-PIM broadcasts to every even or odd bank; the controller times bank 0 or
  bank 1): PIM-mode single-bank commands on that bank and row. A read that triggers a MAC, ADD or
  MUL with a bank operand is ``MAC_SBK``; a read that fills a register from the bank (FILL) is
  ``COPY_BKGB``; a write from the registers to the bank (MOV) and a host write into a PIM register
  (CRF, GRF_A, the mode register: rows 0x3fff and up, which the reference activates like any row)
  are ``COPY_GBBK``.

Deterministic: no randomness.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
CHANNELS = 16  # pimsim's hbm-pim pseudo-channels
MASK = hex((1 << CHANNELS) - 1)
COLS = 32  # bursts per row (NUM_COLS 128 / BL 4): the reference's addrGenSafe wraps here
GRF = 8  # GRF_A / GRF_B registers per PIM unit
PIM_CHANS = 64  # channels of the reference's PIMBench run
BANKS, PIM_BLOCKS = 16, 8
PARK_ROW, ABMR_ROW, SB_ROW, REG_ROW = 1 << 12, 0x17FF, 0x1FFF, 0x3FFF


def _mem(kind: str, bank: int, row: int) -> list[str]:
    return [f"{kind} MEM {c} {bank} {row}" for c in range(CHANNELS)]


def _bank(bg: int, ba: int) -> int:
    return bg * 4 + ba


def park() -> list[str]:
    """parkIn / parkOut: one read of row 0x1000 in every bank (bank-major, bank group minor)."""
    return [line for ba in range(4) for bg in range(4) for line in _mem("R", _bank(bg, ba), PARK_ROW)]


def enter_ab_pim(crf_writes: int) -> list[str]:
    """SB -> HAB (ABMR writes to banks 0, 1, 8, 9), program the CRF, HAB -> HAB_PIM."""
    out = []
    for b in (0, 1, 8, 9):
        out += _mem("W", b, ABMR_ROW)
    out.append(f"AiM COPY_GBBK {crf_writes} {MASK} 1 {REG_ROW}")  # CRF: bank 1, row 0x3fff
    out.append(f"AiM COPY_GBBK 1 {MASK} 0 {REG_ROW}")  # HAB -> HAB_PIM: bank 0, row 0x3fff
    return out


def leave_ab_pim() -> list[str]:
    """HAB_PIM -> HAB (a PIM-mode register write), HAB -> SB (banks 0 and 1, row 0x1fff)."""
    return [f"AiM COPY_GBBK 1 {MASK} 0 {REG_ROW}"] + _mem("W", 0, SB_ROW) + _mem("W", 1, SB_ROW)


def _at(row: int, col: int) -> tuple[int, int]:
    return row + col // COLS, col % COLS


def eltwise(n_elems: int, relu: bool = False) -> list[str]:
    """executeEltwise: ADD / MUL (FILL, op, MOV per bank parity) or ReLU (FILL, MOV)."""
    n_tiles = n_elems // 16 // (BANKS * PIM_CHANS * GRF)
    out = park() + enter_ab_pim(1)
    for i in range(n_tiles):
        for b in (0, 1):
            r0, c = _at(0, GRF * i)
            r1, _ = _at(128, GRF * i)
            r2, _ = _at(256, GRF * i)
            assert c + GRF <= COLS
            out.append(f"AiM COPY_BKGB {GRF} {MASK} {b} {r0}")
            if not relu:
                out.append(f"AiM MAC_SBK {GRF} {MASK} {b} {r1}")
            out.append(f"AiM COPY_GBBK {GRF} {MASK} {b} {r2}")
    return out + leave_ab_pim() + park()


def gemv(out_dim: int, in_dim: int) -> list[str]:
    """executeGemv (not the adder-tree variant), batch 1."""
    n_out = -(-out_dim // (PIM_CHANS * PIM_BLOCKS) // GRF)
    n_in = in_dim // 16 // GRF
    out = park()
    out += [line for b in (0, 1, 8, 9) for line in _mem("W", b, ABMR_ROW)]
    out.append(f"AiM COPY_GBBK 1 {MASK} 1 {REG_ROW}")  # program the CRF
    for j in range(n_out):
        out.append(f"AiM COPY_GBBK 1 {MASK} 0 {REG_ROW}")  # HAB -> HAB_PIM
        for parity in (0, 1):
            for i in range(parity, n_in, 2):
                out.append(f"AiM COPY_GBBK {GRF} {MASK} 1 {REG_ROW}")  # input -> GRF_A
                col = GRF * GRF * (i // 2 + j * n_in // 2)
                for c in range(0, 64, GRF):
                    row, cc = _at(0, col + c)
                    out.append(f"AiM MAC_SBK {GRF} {MASK} {parity} {row}")
        row, _ = _at(0, n_out * n_in // 2 * GRF * GRF + j * GRF)
        out.append(f"AiM COPY_GBBK {GRF} {MASK} 1 {row}")  # GRF_B -> bank
        out.append(f"AiM COPY_GBBK 1 {MASK} 0 {REG_ROW}")  # HAB_PIM -> HAB
    out += _mem("W", 0, SB_ROW) + _mem("W", 1, SB_ROW)
    return out + park()


TRACES: dict[str, list[str]] = {
    "pimbench_gemv_4096x4096": gemv(4096, 4096),
    "pimbench_add_1m": eltwise(1 << 20),
    "pimbench_mul_2m": eltwise(2 << 20),
    "pimbench_relu_4m": eltwise(4 << 20, relu=True),
}


def main() -> None:
    for name, lines in TRACES.items():
        (HERE / f"{name}.trace").write_text("\n".join(lines + ["AiM EOC"]) + "\n")


if __name__ == "__main__":
    main()
