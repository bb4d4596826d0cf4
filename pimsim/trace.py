"""AiM instruction-trace reader: ISR text lines become a host program for the DMA replay.

Grammar (one instruction per line, ``#`` starts a comment, numbers decimal or ``0x`` hex), as used
by the public GDDR6-AiM simulator (opcodes with or without its ``ISR_`` prefix)::

    AiM MAC_ABK <opsize> <channel_mask> <row>        AiM WR_GB <opsize> <gpr> <channel_mask>
    AiM WR_BIAS <gpr> <channel_mask>                 AiM RD_MAC <gpr> <channel_mask>
    AiM WR_SBK <gpr> <channel_mask> <bank> <row>     AiM WR_ABK <gpr> <channel_mask> <row>
    AiM COPY_BKGB <opsize> <channel_mask> <bank> <row>
    AiM COPY_GBBK <opsize> <channel_mask> <bank> <row>
    AiM MAC_SBK <opsize> <channel_mask> <bank> <row> AiM RD_SBK <gpr> <channel_mask> <bank> <row>
    AiM EWMUL <opsize> <channel_mask> <row>          AiM AF <channel_mask>
    AiM RD_AF <gpr> <channel_mask>                   AiM EWADD <opsize> <gpr> <gpr>  (host only)
    AiM SYNC                                         AiM EOC
    R|W GPR <id>        R|W CFR <id> [<data>]        R|W MEM <channel> <bank> <row>

``opsize N`` means N column commands on every channel the mask selects; the mask's bit order is
the config's ``host.mask_order`` (AiM: bit i is channel 31 - i). ``W CFR 2 <f>`` selects the
activation function, i.e. the pseudo-row AF opens (``pim.af_pseudo_row``). SYNC makes every
channel drain before the next line; EOC ends the trace. :class:`Trace` holds the lines in order
(``lines``, for :func:`pimsim.dma.replay_trace`) and, for stream-based tools, one command stream
per channel (``streams``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from pimsim.config import HwConfig, channel_ids
from pimsim.errors import UserError
from pimsim.spec.commands import AF_PSEUDO_ROW, cmd_id
from pimsim.timing import ITEM_FIELDS, SYNC
from pimsim.timing.host_dma import L_EOC, L_HOST, L_ISR, L_SYNC


class TraceError(UserError):
    """A malformed trace line; the message carries the file name and line number."""


# op -> (argument names, DRAM command)
_AIM_OPS: dict[str, tuple[tuple[str, ...], str]] = {
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
_SINGLE_CHANNEL = {"WR_ABK"}  # AiM: the mask must select exactly one channel
AIM_OPS = _AIM_OPS  # public: the ISR table (pimsim.aim_emit writes what this reads)
SINGLE_CHANNEL_OPS = frozenset(_SINGLE_CHANNEL)
_HOST_AIM_OPS = {"EWADD"}
_MAX_TOKEN = 40  # characters of a token quoted in an error message
_LINE_FIELDS = 7  # kind, cmd, bank, row, count, mask id, 0


def _quote(tok: str) -> str:
    return repr(tok if len(tok) <= _MAX_TOKEN else tok[:_MAX_TOKEN] + "...")


@dataclass
class Trace:
    """A parsed trace: the host program (lines in order), the channel masks, host-op counts."""

    lines: np.ndarray  # int64 [n, 7]: kind, cmd, bank, row, count, mask id, 0
    masks: np.ndarray  # bool [n_masks, n_channels]: which config channel slots a mask selects
    channels: list[int]  # physical channel of each slot
    host_ops: dict[str, int] = field(default_factory=dict)
    n_lines: int = 0
    n_syncs: int = 0
    source_lines: np.ndarray | None = None  # int64 [n]: the text line (1-based) of each line

    @cached_property
    def streams(self) -> dict[int, np.ndarray]:
        """One command stream per physical channel (SYNC items at every SYNC), no DMA timing."""
        ln = self.lines
        isr = ln[:, 0] == L_ISR
        out = {}
        for slot, ch in enumerate(self.channels):
            keep = (isr & self.masks[ln[:, 5], slot]) | (ln[:, 0] == L_SYNC)
            part = ln[keep]
            s = np.zeros((part.shape[0], ITEM_FIELDS), np.int64)
            s[:, :4] = part[:, 1:5]
            s[part[:, 0] == L_SYNC] = (SYNC, -1, -1, 0, 0)
            out[ch] = s
        return out


# a number: decimal without leading zeros, or 0x hex; a minus sign allowed (the range checks
# name a negative value). Stricter than int(tok, 0), which also takes 6_4, 0b101, 0o7 and +5.
_NUMBER = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|0|[1-9][0-9]*)")


def _num(tok: str, what: str, where: str) -> int:
    if len(tok) > 24:
        raise TraceError(f"{where}: {what} {_quote(tok)} is too long for a number "
                         f"(at most 24 characters, decimal or 0x hex)")
    if not _NUMBER.fullmatch(tok):
        raise TraceError(f"{where}: {what} must be a number (decimal or 0x hex), "
                         f"got {_quote(tok)}")
    return int(tok, 0)


def _no_args(toks: list[str], n: int, where: str, form: str) -> None:
    """Words past the ``n`` a line of ``form`` takes are an error (not silently ignored)."""
    if len(toks) > n:
        raise TraceError(f"{where}: '{form}' takes no more words, got {_quote(' '.join(toks[n:]))}"
                         f" after it")


class _Parser:
    def __init__(self, cfg: HwConfig, name: str):
        self.cfg = cfg
        self.name = name
        self.chans = channel_ids(cfg)
        self.slot = {c: i for i, c in enumerate(self.chans)}
        self.msb = cfg.host.mask_order == "msb32"
        self.mask_ids: dict[int, int] = {}
        self.mask_rows: list[np.ndarray] = []
        self.afm = 0  # activation function selected by W CFR 2

    def mask_id(self, mask: int, where: str, single: bool = False) -> int:
        if mask in self.mask_ids:
            return self.mask_ids[mask]
        width = 32 if self.msb else max(self.chans) + 1
        if mask <= 0 or mask.bit_length() > width:
            raise TraceError(
                f"{where}: channel mask {mask:#x} must be a positive number of at most {width} "
                f"bits" + (" (bit i selects channel 31 - i)" if self.msb else
                           " (bit i selects channel i)"))
        sel = np.zeros(len(self.chans), bool)
        bits = [i for i in range(width) if mask >> i & 1]
        phys = [31 - i if self.msb else i for i in bits]
        bad = [c for c in phys if c not in self.slot]
        if bad:
            raise TraceError(
                f"{where}: channel mask {mask:#x} selects channel(s) {_ranges(bad)} that "
                f"config {self.cfg.name!r} does not have (its channels: {self.chans[0]}.."
                f"{self.chans[-1]}" + ("; bit i selects channel 31 - i)" if self.msb else ")"))
        for c in phys:
            sel[self.slot[c]] = True
        if single and sel.sum() != 1:
            raise TraceError(f"{where}: channel mask {mask:#x} must select exactly one channel")
        self.mask_ids[mask] = len(self.mask_rows)
        self.mask_rows.append(sel)
        return self.mask_ids[mask]

    def single_mask(self, ch: int) -> int:
        return self.mask_id((1 << (31 - ch)) if self.msb else (1 << ch), "")


def parse_trace(text: str, cfg: HwConfig, name: str = "<trace>") -> Trace:
    """Parse AiM trace text into a host program for ``cfg``; errors name the line."""
    P = _Parser(cfg, name)
    out: list[tuple[int, int, int, int, int, int, int]] = []
    host: dict[str, int] = {}
    org = cfg.org
    n_syncs = 0
    n_lines = 0
    pim_ok = cfg.pim.enabled
    # an ISR line (AF aside: its row depends on W CFR 2) parses to the same tuple wherever it
    # repeats: GEMV traces repeat most of theirs (RD_MAC, WR_GB, MACs of one row on all channels)
    seen: dict[str, tuple[int, int, int, int, int, int, int]] = {}
    src: list[int] = []  # the text line of each entry of ``out``
    for lineno, raw in enumerate(text.splitlines(), 1):
        if len(src) < len(out):  # the previous text line gave an entry (at most one per line)
            src.append(lineno - 1)
        hit = seen.get(raw)
        if hit is not None:
            n_lines += 1
            out.append(hit)
            continue
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
            if op.startswith("ISR_"):
                op = op[4:]
            args = toks[2:]
            if op == "EOC":
                _no_args(toks, 2, where, "AiM EOC")
                out.append((L_EOC, -1, -1, -1, 0, 0, 0))
                break
            if op == "SYNC":
                _no_args(toks, 2, where, "AiM SYNC")
                out.append((L_SYNC, -1, -1, -1, 0, 0, 0))
                n_syncs += 1
                continue
            if op in _HOST_AIM_OPS:
                if len(args) != 3:
                    raise TraceError(f"{where}: AiM {op} takes 3 arguments <opsize> <gpr> <gpr>, "
                                     f"got {len(args)}")
                for t, n in zip(args, ("opsize", "gpr", "gpr")):
                    _num(t, n, where)
                host[op] = host.get(op, 0) + 1
                out.append((L_HOST, -1, -1, -1, 0, 0, 0))
                continue
            if op not in _AIM_OPS:
                raise TraceError(
                    f"{where}: unknown AiM operation {_quote(toks[1])}; known: "
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
            if op == "AF" and cfg.pim.af_pseudo_row:
                row = AF_PSEUDO_ROW + P.afm
            m = P.mask_id(a["mask"], where, single=op in _SINGLE_CHANNEL)
            out.append((L_ISR, cmd_id(dram), bank, row, count, m, 0))
            if op != "AF":
                seen[raw] = out[-1]
        elif head in ("R", "W"):
            if len(toks) < 2:
                raise TraceError(f"{where}: host access needs a target: GPR, CFR or MEM")
            tgt = toks[1].upper()
            if tgt in ("GPR", "CFR"):
                want = (1,) if tgt == "GPR" else (1, 2)
                if len(toks) - 2 not in want:
                    raise TraceError(f"{where}: '{head} {tgt}' takes <id>"
                                     + (" [<data>]" if tgt == "CFR" else ""))
                vals = [_num(t, "operand", where) for t in toks[2:]]
                if tgt == "CFR" and head == "W" and len(vals) == 2 and vals[0] == 2:
                    if not 0 <= vals[1] < 8:
                        raise TraceError(f"{where}: activation function {vals[1]} out of range 0..7")
                    P.afm = vals[1]
                host[f"{head}_{tgt}"] = host.get(f"{head}_{tgt}", 0) + 1
                out.append((L_HOST, -1, -1, -1, 0, 0, 0))
            elif tgt == "MEM":
                if len(toks) != 5:
                    raise TraceError(f"{where}: '{head} MEM' takes <channel> <bank> <row>")
                ch, bank, row = (_num(t, n, where) for t, n in zip(toks[2:], ("channel", "bank", "row")))
                if ch not in P.slot:
                    raise TraceError(f"{where}: channel {ch} not in config {cfg.name!r} "
                                     f"(its channels: {P.chans[0]}..{P.chans[-1]})")
                if not 0 <= bank < org.banks:
                    raise TraceError(f"{where}: bank {bank} out of range 0..{org.banks - 1}")
                if not 0 <= row < org.rows:
                    raise TraceError(f"{where}: row {row} out of range 0..{org.rows - 1}")
                out.append((L_ISR, cmd_id("RD" if head == "R" else "WR"), bank, row, 1,
                            P.single_mask(ch), 0))
            else:
                raise TraceError(f"{where}: unknown host access target {_quote(toks[1])}; "
                                 f"use GPR, CFR or MEM")
        else:
            raise TraceError(f"{where}: a line must start with 'AiM', 'R' or 'W', "
                             f"got {_quote(toks[0])}")
    if not any(k not in (L_SYNC, L_EOC) for k, *_ in out):
        raise TraceError(f"{name}: the trace has no instructions (it is empty, or only comments, "
                         f"blank lines, SYNC or EOC)", "give at least one line such as 'AiM MAC_ABK "
                         "64 0x80000000 0' (the grammar is in docs/guide.md, AiM traces)")
    if len(src) < len(out):  # the last text line read (EOC, or the end) gave one
        src.append(lineno)
    lines = np.array(out, np.int64).reshape(-1, _LINE_FIELDS)
    masks = (np.array(P.mask_rows, bool).reshape(-1, len(P.chans)) if P.mask_rows
             else np.zeros((1, len(P.chans)), bool))
    return Trace(lines=lines, masks=masks, channels=list(P.chans), host_ops=host,
                 n_lines=n_lines, n_syncs=n_syncs, source_lines=np.array(src, np.int64))


def load_trace(path: str | Path, cfg: HwConfig) -> Trace:
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {str(path)!r} not found (or not a file)")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"trace file {str(path)!r} cannot be read as text: {e}") from None
    return parse_trace(text, cfg, name=p.name)


def _ranges(values) -> str:
    """Integers as runs: [8, 9, 10, 12] -> "8..10, 12"."""
    out: list[tuple[int, int]] = []
    for v in sorted(set(values)):
        if out and out[-1][1] == v - 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in out)
