"""DRAM and PIM commands as data: the level each acts on and what it does to bank state.

The command set follows SK hynix GDDR6-AiM (ISSCC 2022) and plain JEDEC GDDR6. A *scope* says which
part of a channel a command addresses:

* ``bank``    - one bank (ACT, PRE, RD, WR, single-bank MAC, bank<->global-buffer copies);
* ``allbank`` - every bank of the channel at once (all-bank ACT/MAC/write, PREA, REFab, EWMUL);
* ``channel`` - channel-level resources that are not banks (global buffer, accumulators, mode).

Row behaviour says what a command needs from or does to the row buffer; the timing kernel inserts
ACT/PRE (and a mode switch) to satisfy it. Adding a command means adding a row to ``COMMANDS``.
"""

from __future__ import annotations

from dataclasses import dataclass

# scopes
SCOPE_BANK = 0
SCOPE_ALLBANK = 1
SCOPE_CHANNEL = 2
SCOPE_NAMES = {"bank": SCOPE_BANK, "allbank": SCOPE_ALLBANK, "channel": SCOPE_CHANNEL}

# row behaviour
ROW_NONE = 0  # does not touch the row buffer
ROW_NEEDS_OPEN = 1  # column command: the addressed row must be open (in all banks for allbank)
ROW_OPENS = 2  # activate: the bank(s) must be precharged; opens the row
ROW_CLOSES = 3  # precharge: closes the row(s)
ROW_NEEDS_OPEN_THEN_CLOSES = 4  # column command with auto-precharge (WRA16)
ROW_NEEDS_ALL_CLOSED = 5  # refresh: every bank must be precharged

# mode a command needs (AiM switches between single-bank and all-bank PIM mode with TMOD)
MODE_ANY = -1
MODE_SB = 0
MODE_PIM = 1


@dataclass(frozen=True)
class Command:
    """One command of the DRAM/PIM command set."""

    name: str
    scope: int
    row: int
    mode: int
    pim: bool  # exists only on PIM devices
    column: bool  # moves one column (burst) of data; counted for row-hit statistics
    done: str  # timing expression: cycles from issue until its effect/data is complete
    doc: str


COMMANDS: tuple[Command, ...] = (
    Command("ACT", SCOPE_BANK, ROW_OPENS, MODE_ANY, False, False, "0", "activate one row in one bank"),
    Command("PRE", SCOPE_BANK, ROW_CLOSES, MODE_ANY, False, False, "nRP", "precharge one bank"),
    Command("PREA", SCOPE_ALLBANK, ROW_CLOSES, MODE_ANY, False, False, "nRP", "precharge all banks"),
    Command("RD", SCOPE_BANK, ROW_NEEDS_OPEN, MODE_SB, False, True, "nCL + nBL", "read one column"),
    Command("WR", SCOPE_BANK, ROW_NEEDS_OPEN, MODE_SB, False, True, "nCWL + nBL", "write one column"),
    Command("REFab", SCOPE_ALLBANK, ROW_NEEDS_ALL_CLOSED, MODE_ANY, False, False, "nRFC",
            "all-bank refresh"),
    # --- PIM commands (AiM names in brackets) ---
    Command("ACT_AB", SCOPE_ALLBANK, ROW_OPENS, MODE_PIM, True, False, "0",
            "activate the same row in all banks [ACT16]"),
    Command("MAC_AB", SCOPE_ALLBANK, ROW_NEEDS_OPEN, MODE_PIM, True, True, "nCCDL",
            "all-bank MAC: one column of every bank times the global buffer [MAC16]"),
    Command("MAC_SB", SCOPE_BANK, ROW_NEEDS_OPEN, MODE_PIM, True, True, "nCCDL",
            "single-bank MAC [MAC]"),
    Command("WR_AB", SCOPE_ALLBANK, ROW_NEEDS_OPEN_THEN_CLOSES, MODE_PIM, True, True,
            "nCWL + nBL + nWR", "write one column to all banks, auto-precharge [WRA16]"),
    Command("EWMUL", SCOPE_ALLBANK, ROW_NEEDS_OPEN, MODE_PIM, True, True, "nCCDL",
            "element-wise multiply of a column with the global buffer [EWMUL16]"),
    Command("WR_GB", SCOPE_CHANNEL, ROW_NONE, MODE_PIM, True, False, "nCWLGB + nBL",
            "write 32 B from the host into the global buffer [WRGB]"),
    Command("RD_MAC", SCOPE_CHANNEL, ROW_NONE, MODE_PIM, True, False, "nCLREG + nBL",
            "read the accumulators of all banks [RDMAC16]"),
    Command("WR_MAC", SCOPE_CHANNEL, ROW_NONE, MODE_PIM, True, False, "nCWLREG + nBL",
            "write the accumulators of all banks, e.g. a bias [WRMAC16]"),
    Command("AF", SCOPE_CHANNEL, ROW_NONE, MODE_PIM, True, False, "nCCDL",
            "activation function on the accumulators [AF16]"),
    Command("RD_AF", SCOPE_CHANNEL, ROW_NONE, MODE_PIM, True, False, "nCLREG + nBL",
            "read activation-function results [RDAF16]"),
    Command("RD_CP", SCOPE_BANK, ROW_NEEDS_OPEN, MODE_PIM, True, True, "nCLGB + nBL",
            "copy one column from a bank into the global buffer [RDCP]"),
    Command("WR_CP", SCOPE_BANK, ROW_NEEDS_OPEN, MODE_PIM, True, True, "nCWLGB + nBL",
            "copy one column from the global buffer into a bank [WRCP]"),
    Command("TMOD", SCOPE_CHANNEL, ROW_NONE, MODE_ANY, True, False, "nMODCH",
            "switch between single-bank and all-bank PIM mode [TMOD]"),
)

CMD_INDEX: dict[str, int] = {c.name: i for i, c in enumerate(COMMANDS)}
N_CMDS = len(COMMANDS)


def cmd_id(name: str) -> int:
    """Index of a command by name, with a clear error for an unknown one."""
    try:
        return CMD_INDEX[name]
    except KeyError:
        raise ValueError(
            f"unknown command {name!r}; known commands: {', '.join(CMD_INDEX)}"
        ) from None
