"""DRAM and PIM standards as data: commands, levels and timing-rule tables."""

from pimsim.spec.commands import CMD_INDEX, COMMANDS, N_CMDS, Command, cmd_id
from pimsim.spec.rules import DRAM_RULES, LEVEL_NAMES, PIM_RULES, Rule

__all__ = [
    "COMMANDS", "CMD_INDEX", "N_CMDS", "Command", "cmd_id",
    "DRAM_RULES", "PIM_RULES", "LEVEL_NAMES", "Rule",
]
