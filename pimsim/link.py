"""The ASIC <-> PIM-channel link: bytes a PIM step moves, and how long the link takes for them.

Each channel has a link of its own (``[link]`` is per channel: a GDDR6 channel is a x16
interface, 32 B per 1 GHz link cycle at 16 Gb/s/pin; the AiM and PIM-GPT configs connect every
channel to the ASIC that way). Every command in :data:`LINK_CMDS` moves one column
(``column_bytes``) across it: the input-vector broadcast into the global buffer (WR_GB), the
accumulator reads (RD_MAC, RD_AF), accumulator writes (WR_MAC), and the conventional reads and
writes of parameter fetches, embeddings and KV-cache writes (RD, WR).

The model (exact, in whole cycles): a PIM step's transfers on one channel queue on that
channel's link, which moves ``bytes_per_cyc`` per link cycle, so they occupy it for
``ceil(bytes / bytes_per_cyc)`` link cycles, converted to DRAM command cycles rounded up
(:func:`link_busy_cyc`). The link streams them while the channel works (the channel's own data
bus, nBL per column, is in its command timing), starting when the step starts or when the
channel's previous transfers are through, whichever is later; the step cannot end on that
channel before its link is done. The results then cross with ``latency_cyc``
(:func:`link_latency_cyc`), once per step. The one transfer the channel cannot work without is
its first command's own data (the leading input: a global-buffer fill, a write's column): the
channel starts the step once the link has delivered it, less the time its own data bus takes
for those columns anyway (``nBL`` each; :func:`lead_delay_cyc`). A link as fast as the DRAM
data bus therefore never binds (the bus already spaces transfers by nBL); a narrower one
delays every step's first fill and stretches transfer-heavy steps.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from pimsim.spec.commands import N_CMDS, cmd_id
from pimsim.timing.jit import cached_njit

# commands whose data crosses the ASIC-PIM link (one column of column_bytes each)
LINK_CMDS = ("WR_GB", "RD_MAC", "WR_MAC", "RD_AF", "RD", "WR")
_LINK_IDS = np.array([cmd_id(n) for n in LINK_CMDS], np.int64)
LINK_MASK = np.zeros(N_CMDS, bool)  # command id -> moves data across the link
LINK_MASK[_LINK_IDS] = True
_INPUT_MASK = np.zeros(N_CMDS, bool)  # command id -> needs input data from the host
INPUT_CMDS = ("WR_GB", "WR_MAC", "WR")  # host -> PIM data
_INPUT_IDS = frozenset(cmd_id(n) for n in INPUT_CMDS)
_INPUT_MASK[list(_INPUT_IDS)] = True


def _link_to_dram(cfg, link_cyc: int) -> int:
    """``link_cyc`` link cycles in DRAM command cycles, rounded up (exact rational arithmetic)."""
    clock = Fraction(cfg.link.clock_mhz)
    return math.ceil(Fraction(link_cyc * 10**6) / (clock * cfg.tCK_ps))


def link_latency_cyc(cfg) -> int:
    """The link's latency in DRAM command cycles (rounded up)."""
    return _link_to_dram(cfg, cfg.link.latency_cyc)


def link_busy_cyc(cfg, n_bytes: int) -> int:
    """DRAM command cycles the link is busy moving ``n_bytes`` (whole link cycles)."""
    return _link_to_dram(cfg, -(-int(n_bytes) // cfg.link.bytes_per_cyc))


def transfer_bytes(items: np.ndarray, column_bytes: int) -> int:
    """Bytes the items ``(cmd, bank, row, count, col0)`` move across the link."""
    if not len(items):
        return 0
    return int(items[LINK_MASK[items[:, 0]], 3].sum()) * column_bytes


def transfer_bytes_at(items: np.ndarray, lo: np.ndarray, n: np.ndarray,
                      column_bytes: int) -> np.ndarray:
    """:func:`transfer_bytes` of the regions ``items[lo[i]:lo[i] + n[i]]``, all at once."""
    return _columns_moved(items, lo, n, LINK_MASK) * column_bytes


@cached_njit()
def _columns_moved(items, lo, n, mask):
    out = np.zeros(lo.shape[0], np.int64)
    for i in range(lo.shape[0]):
        for p in range(lo[i], lo[i] + n[i]):
            if mask[items[p, 0]]:
                out[i] += items[p, 3]
    return out


def lead_columns(items: np.ndarray) -> int:
    """Columns of input data the first item needs before it can issue (0: none)."""
    if not len(items) or int(items[0, 0]) not in _INPUT_IDS:
        return 0
    return int(items[0, 3])


def lead_columns_at(items: np.ndarray, lo: np.ndarray, n: np.ndarray) -> np.ndarray:
    """:func:`lead_columns` of the regions ``items[lo[c]:lo[c] + n[c]]``, all at once."""
    first = items[lo]
    return np.where((n > 0) & _INPUT_MASK[first[:, 0]], first[:, 3], 0)


def lead_delay_cyc(cfg, lead_cols: int) -> int:
    """DRAM cycles a channel waits, after its step starts, for its first command's data: the
    link time of ``lead_cols`` columns less the nBL per column its data bus spends on them."""
    if not lead_cols:
        return 0
    bus = lead_cols * cfg.timing.cycles["nBL"]
    return max(0, link_busy_cyc(cfg, lead_cols * cfg.org.column_bytes) - bus)
