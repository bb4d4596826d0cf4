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

# mode a command needs; TMOD toggles the channel between mode 0 (after reset) and mode 1. What the
# two modes mean is a device option (``pim.mode_switch``, see :func:`command_attrs`):
#   "register"  (GDDR6-AiM, as the public AiM simulator models it): mode 1 is the register
#               access mode, needed by the commands that move data between the host and the global
#               buffer or the MAC/AF registers (WR_GB, WR_MAC, RD_MAC, RD_AF); every other command
#               runs in mode 0, so a GEMV tile pays MAC -> TMOD -> RD_MAC -> TMOD -> next MAC;
#   "bank-mode" (the HBM-PIM-style alternative): mode 0 is single-bank DRAM mode (RD, WR), mode 1
#               the all-bank PIM mode of every PIM command;
#   "none"      no mode switch at all.
MODE_ANY = -1
MODE_SB = 0
MODE_PIM = 1
MODE_SWITCHES = ("register", "bank-mode", "none")

# stream pseudo-command: in a channel's command stream (items ``(cmd, bank, row, count, 0)``, see
# ``pimsim.timing``) an item with this command ends a segment, where the channels synchronise
SYNC = -1


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
    reg: bool = False  # accesses the global buffer / MAC registers from the host bus (AiM)


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
            "write 32 B from the host into the global buffer [WRGB]", reg=True),
    Command("RD_MAC", SCOPE_CHANNEL, ROW_NONE, MODE_PIM, True, False, "nCLREG + nBL",
            "read the accumulators of all banks [RDMAC16]", reg=True),
    Command("WR_MAC", SCOPE_CHANNEL, ROW_NONE, MODE_PIM, True, False, "nCWLREG + nBL",
            "write the accumulators of all banks, e.g. a bias [WRMAC16]", reg=True),
    Command("AF", SCOPE_CHANNEL, ROW_NONE, MODE_PIM, True, False, "nCCDL",
            "activation function on the accumulators [AF16]"),
    Command("RD_AF", SCOPE_CHANNEL, ROW_NONE, MODE_PIM, True, False, "nCLREG + nBL",
            "read activation-function results [RDAF16]", reg=True),
    Command("RD_CP", SCOPE_BANK, ROW_NEEDS_OPEN, MODE_PIM, True, True, "nCLGB + nBL",
            "copy one column from a bank into the global buffer [RDCP]"),
    Command("WR_CP", SCOPE_BANK, ROW_NEEDS_OPEN, MODE_PIM, True, True, "nCWLGB + nBL",
            "copy one column from the global buffer into a bank [WRCP]"),
    Command("TMOD", SCOPE_CHANNEL, ROW_NONE, MODE_ANY, True, False, "nMODCH",
            "switch between single-bank and all-bank PIM mode [TMOD]"),
)

# AiM's AF16 needs "all rows open" at a pseudo-row that selects the activation function: it is
# issued after PREA + ACT16 of that row (and nRCDRDAF), so the next MAC re-opens its own row.
# Rows from AF_PSEUDO_ROW on are such pseudo-rows (AF_PSEUDO_ROW + function index).
AF_PSEUDO_ROW = 1 << 29


def command_attrs(mode_switch: str = "bank-mode", af_pseudo_row: bool = False,
                  pim_enabled: bool = True) -> list[tuple[int, int, int]]:
    """(scope, row behaviour, mode) of every command for a device's options.

    ``mode_switch`` picks what TMOD switches between (see the mode constants above);
    ``af_pseudo_row`` makes AF an all-bank command that needs its pseudo-row open (AiM).
    """
    if mode_switch not in MODE_SWITCHES:
        raise ValueError(f"mode_switch {mode_switch!r}; known: {', '.join(MODE_SWITCHES)}")
    out = []
    for c in COMMANDS:
        scope, row = c.scope, c.row
        if af_pseudo_row and c.name == "AF":
            scope, row = SCOPE_ALLBANK, ROW_NEEDS_OPEN
        if not pim_enabled or mode_switch == "none":
            mode = MODE_ANY
        elif mode_switch == "register":
            mode = MODE_ANY if c.mode == MODE_ANY or c.name == "ACT_AB" else int(c.reg)
        else:
            mode = c.mode
        out.append((scope, row, mode))
    return out


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
