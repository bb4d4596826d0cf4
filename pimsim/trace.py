"""AiM instruction-trace reader: ISR text lines unrolled into per-channel DRAM/PIM command streams.

Grammar (one instruction per line, ``#`` starts a comment, numbers decimal or ``0x`` hex), as used
by the public GDDR6-AiM simulator::

    AiM MAC_ABK <opsize> <channel_mask> <row>        AiM WR_GB <opsize> <gpr> <channel_mask>
    AiM WR_BIAS <gpr> <channel_mask>                 AiM RD_MAC <gpr> <channel_mask>
    AiM WR_SBK <gpr> <channel_mask> <bank> <row>     AiM WR_ABK <gpr> <channel_mask> <row>
    AiM COPY_BKGB <opsize> <channel_mask> <bank> <row>
    AiM COPY_GBBK <opsize> <channel_mask> <bank> <row>
    AiM MAC_SBK <opsize> <channel_mask> <bank> <row> AiM RD_SBK <gpr> <channel_mask> <bank> <row>
    AiM EWMUL <opsize> <channel_mask> <row>          AiM AF <channel_mask>
    AiM RD_AF <gpr> <channel_mask>                   AiM EWADD ...   (host-side, no DRAM command)
    AiM SYNC                                         AiM EOC
    R|W GPR <id>        R|W CFR <id> [<data>]        R|W MEM <channel> <bank> <row>

``opsize N`` means N column commands on every channel the mask selects. SYNC makes every channel
wait until all have finished; EOC ends the trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pimsim.config import HwConfig, channel_ids
from pimsim.spec.commands import cmd_id
from pimsim.timing import ITEM_FIELDS, SYNC


class TraceError(__import__("pimsim.errors").errors.UserError):
    """A malformed trace line; the message carries the file name and line number."""


# op -> (argument names, DRAM command, how the count is taken)
_AIM_OPS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "MAC_ABK": (("opsize", "mask", "row"), "MAC_AB"),
    "MAC_SBK": (("opsize", "mask", "bank", "row"), "MAC_SB"),
    "WR_GB": (("opsize", "gpr", "mask"), "WR_GB"),
    "WR_BIAS": (("gpr", "mask"), "WR_MAC"),
    "RD_MAC": (("gpr", "mask"), "RD_MAC"),
    "WR_SBK": (("gpr", "mask", "bank", "row"), "WR"),
    "RD_SBK": (("gpr", "mask", "bank", "row"), "RD"),
    "WR_ABK": (("gpr", "mask", "row"), "WR_AB"),
    "COPY_BKGB": (("opsize", "mask", "bank", "row"), "RD_CP"),
    "COPY_GBBK": (("opsize", "mask", "bank", "row"), "WR_CP"),
    "EWMUL": (("opsize", "mask", "row"), "EWMUL"),
    "AF": (("mask",), "AF"),
    "RD_AF": (("gpr", "mask"), "RD_AF"),
}
_HOST_AIM_OPS = {"EWADD"}


@dataclass
class Trace:
    """A parsed trace: one command stream per channel of the config, plus host-op counts."""

    streams: dict[int, np.ndarray]  # physical channel -> int64 [n, 5] stream
    host_ops: dict[str, int] = field(default_factory=dict)
    n_lines: int = 0
    n_syncs: int = 0


def _num(tok: str, what: str, where: str) -> int:
    try:
        return int(tok, 0)
    except ValueError:
        raise TraceError(f"{where}: {what} must be a number (decimal or 0x hex), got {tok!r}") from None


def parse_trace(text: str, cfg: HwConfig, name: str = "<trace>") -> Trace:
    """Parse AiM trace text into per-channel streams for ``cfg``; errors name the line."""
    chans = channel_ids(cfg)
    chan_set = set(chans)
    items: dict[int, list[tuple[int, int, int, int, int]]] = {c: [] for c in chans}
    host: dict[str, int] = {}
    org = cfg.org
    n_syncs = 0
    n_lines = 0
    pim_ok = cfg.pim.enabled
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        n_lines += 1
        where = f"{name}:{lineno}"
        toks = line.split()
        head = toks[0].upper()
        if head == "AIM":
            if len(toks) < 2:
                raise TraceError(f"{where}: 'AiM' needs an operation, e.g. 'AiM MAC_ABK 64 0x1 0'")
            op = toks[1].upper()
            args = toks[2:]
            if op == "EOC":
                break
            if op == "SYNC":
                for c in chans:
                    items[c].append((SYNC, -1, -1, 0, 0))
                n_syncs += 1
                continue
            if op in _HOST_AIM_OPS:
                host[op] = host.get(op, 0) + 1
                continue
            if op not in _AIM_OPS:
                raise TraceError(
                    f"{where}: unknown AiM operation {toks[1]!r}; known: "
                    f"{', '.join(sorted(set(_AIM_OPS) | _HOST_AIM_OPS | {'SYNC', 'EOC'}))}"
                )
            names, dram = _AIM_OPS[op]
            if len(args) != len(names):
                raise TraceError(
                    f"{where}: AiM {op} takes {len(names)} argument(s) "
                    f"<{'> <'.join(names)}>, got {len(args)}"
                )
            if not pim_ok:
                raise TraceError(
                    f"{where}: AiM {op} needs a PIM device but config {cfg.name!r} has "
                    f"pim.enabled = false; use a PIM config such as aim-gddr6"
                )
            a = {n: _num(t, n, where) for n, t in zip(names, args)}
            count = a.get("opsize", 1)
            if count < 1 or count > org.columns:
                raise TraceError(
                    f"{where}: opsize {count} must be between 1 and the {org.columns} columns "
                    f"of a row"
                )
            bank = a.get("bank", -1)
            if "bank" in a and not 0 <= bank < org.banks:
                raise TraceError(f"{where}: bank {bank} out of range 0..{org.banks - 1}")
            row = a.get("row", -1)
            if "row" in a and not 0 <= row < org.rows:
                raise TraceError(f"{where}: row {row} out of range 0..{org.rows - 1}")
            mask = a["mask"]
            sel = [i for i in range(max(mask.bit_length(), 1)) if mask >> i & 1]
            bad = [i for i in sel if i not in chan_set]
            if bad or not sel:
                raise TraceError(
                    f"{where}: channel mask {mask:#x} selects channel(s) {bad or 'none'} that "
                    f"config {cfg.name!r} does not have (its channels: {chans[0]}..{chans[-1]})"
                )
            item = (cmd_id(dram), bank, row, count, 0)
            for c in sel:
                items[c].append(item)
        elif head in ("R", "W"):
            if len(toks) < 2:
                raise TraceError(f"{where}: host access needs a target: GPR, CFR or MEM")
            tgt = toks[1].upper()
            if tgt in ("GPR", "CFR"):
                want = (1,) if tgt == "GPR" else (1, 2)
                if len(toks) - 2 not in want:
                    raise TraceError(f"{where}: '{head} {tgt}' takes <id>"
                                     + (" [<data>]" if tgt == "CFR" else ""))
                for t in toks[2:]:
                    _num(t, "operand", where)
                host[f"{head}_{tgt}"] = host.get(f"{head}_{tgt}", 0) + 1
            elif tgt == "MEM":
                if len(toks) != 5:
                    raise TraceError(f"{where}: '{head} MEM' takes <channel> <bank> <row>")
                ch, bank, row = (_num(t, n, where) for t, n in zip(toks[2:], ("channel", "bank", "row")))
                if ch not in chan_set:
                    raise TraceError(f"{where}: channel {ch} not in config {cfg.name!r}")
                if not 0 <= bank < org.banks:
                    raise TraceError(f"{where}: bank {bank} out of range 0..{org.banks - 1}")
                if not 0 <= row < org.rows:
                    raise TraceError(f"{where}: row {row} out of range 0..{org.rows - 1}")
                items[ch].append((cmd_id("RD" if head == "R" else "WR"), bank, row, 1, 0))
            else:
                raise TraceError(f"{where}: unknown host access target {toks[1]!r}; "
                                 f"use GPR, CFR or MEM")
        else:
            raise TraceError(f"{where}: a line must start with 'AiM', 'R' or 'W', got {toks[0]!r}")
    streams = {c: np.array(v, np.int64).reshape(-1, ITEM_FIELDS) for c, v in items.items()}
    return Trace(streams=streams, host_ops=host, n_lines=n_lines, n_syncs=n_syncs)


def load_trace(path: str | Path, cfg: HwConfig) -> Trace:
    p = Path(path)
    if not p.exists():
        raise TraceError(f"trace file {str(path)!r} not found")
    return parse_trace(p.read_text(), cfg, name=p.name)
