"""Where a token's cycles went: every cycle of a decode step attributed to one named share.

The shares (:data:`TIME_SHARES`) come from the engine's own accounting, not from a fit:

* the token's time is cut along its **critical path**: from the step that ends last back to the
  token's start, each step's binding predecessor is the one of its candidates (its
  dependencies; the step before it in the ``serial`` schedule; the previous step on the same
  resource, since the ASIC, the collective fabric and the channels take their steps in program
  order) that ended last. A step owns the interval from that predecessor's end (or its own
  start, if later) to its own end; the intervals tile the token exactly. In the ``serial``
  schedule every step is on the path with its whole duration; under ``overlap`` only the steps
  the token waited for are, so the shares (and the per-op times) sum to the token's time,
  never to the busy time of overlapping steps;
* an ASIC step's interval is ``asic``, a collective's ``interconnect``;
* a PIM step's interval, on its critical (last-finishing) channel: ``link`` gets the cycles its
  link went on after the channel's commands completed, the link latency at the step's end and
  the lead (the channel waiting for its first command's data); the rest goes to the commands
  the channel issued, each counted with its service cycles from the config's timing table
  (:data:`SHARE_OF_CMD`): ``pim_mac`` (MAC_AB, MAC_SB, EWMUL, AF x nCCDL), ``activate`` (ACT x
  nRCDRD, ACT_AB x nRCDRDMAC), ``precharge`` (PRE, PREA x nRP), ``mode_switch`` (TMOD x nMODCH),
  ``transfer`` (data bursts on the DRAM bus: global buffer, MAC/AF registers and bank reads
  and writes x nBL) and ``refresh`` (REFab x nRFC). Where these exceed the interval (commands
  of different banks overlap: an ACT in one bank while another bank bursts) they are scaled
  down together to fill it; where they fall short, the rest is ``stall``: the channel waiting
  on timing rules beyond its commands' own service (nRAS, nFAW, write recovery, bus
  turnarounds) or on the previous step's commands still in its queue;
* ``queueing``: a token waiting for a pipeline stage busy with another sequence's job
  (:mod:`pimsim.pipeline`), or an ASIC step waiting for a device's ASIC that another stage on
  the device holds (per op: ``asic_wait``): the cycles of the token no step covers.
"""

from __future__ import annotations

import numpy as np

from pimsim.spec.commands import COMMANDS, N_CMDS, cmd_id
from pimsim.timing.jit import cached_njit

TIME_SHARES = ("pim_mac", "activate", "precharge", "mode_switch", "transfer", "refresh", "stall",
               "link", "asic", "interconnect", "queueing")
_CMD_SHARES = TIME_SHARES[:6]  # the shares a PIM step's commands claim
_STALL, _LINK, _ASIC, _COMM, _QUEUE = (TIME_SHARES.index(k) for k in
                                       ("stall", "link", "asic", "interconnect", "queueing"))

# command -> (share, timing value giving its service cycles, fallback timing value)
SHARE_OF_CMD = {
    "MAC_AB": ("pim_mac", "nCCDL"), "MAC_SB": ("pim_mac", "nCCDL"), "EWMUL": ("pim_mac", "nCCDL"),
    "AF": ("pim_mac", "nCCDL"),
    "ACT": ("activate", "nRCDRD"), "ACT_AB": ("activate", "nRCDRDMAC"),
    "PRE": ("precharge", "nRP"), "PREA": ("precharge", "nRP"),
    "TMOD": ("mode_switch", "nMODCH"),
    "RD": ("transfer", "nBL"), "WR": ("transfer", "nBL"), "WR_AB": ("transfer", "nBL"),
    "WR_GB": ("transfer", "nBL"), "RD_MAC": ("transfer", "nBL"), "WR_MAC": ("transfer", "nBL"),
    "RD_AF": ("transfer", "nBL"), "RD_CP": ("transfer", "nBL"), "WR_CP": ("transfer", "nBL"),
    "REFab": ("refresh", "nRFC"),
}
_FALLBACK = {"nRCDRDMAC": "nRCDRD", "nMODCH": "nBL"}  # a config without the PIM timing values


def command_share_cycles(timing) -> np.ndarray:
    """``[N_CMDS, len(_CMD_SHARES)]``: the cycles one command of each id claims in each share."""
    m = np.zeros((N_CMDS, len(_CMD_SHARES)), np.float64)
    for name, (share, tname) in SHARE_OF_CMD.items():
        cyc = timing.get(tname, None)
        if cyc is None:
            cyc = timing.get(_FALLBACK.get(tname, "nBL"), 1)
        m[cmd_id(name), _CMD_SHARES.index(share)] = cyc
    return m


assert set(SHARE_OF_CMD) == {c.name for c in COMMANDS}, "every command has a time share"


class TimeAccount:
    """A program's arrays for splitting its tokens' cycles into :data:`TIME_SHARES` and ops.

    ``sim`` is a :class:`pimsim.decode.DecodeSimulator` (its program, schedule, link latency
    and timing table)."""

    def __init__(self, sim):
        steps = sim.prog.steps
        n = len(steps)
        self.kind = np.asarray(sim.steps.kind, np.int64)  # 0 ASIC, 1 PIM, 2 collective
        self.ops = sorted({st.op for st in steps})
        self.op_idx = np.array([self.ops.index(st.op) for st in steps], np.int64)
        self.link_lat = int(sim.link_lat)
        self.share_cyc = command_share_cycles(sim.cfg.timing)
        serial = sim.schedule == "serial"
        last_of_kind: dict[int, int] = {}
        cands: list[tuple[int, ...]] = []
        for i, st in enumerate(steps):
            c = set(st.deps)
            if serial and i > 0:
                c.add(i - 1)
            k = int(self.kind[i])
            if k in last_of_kind:
                c.add(last_of_kind[k])
            last_of_kind[k] = i
            cands.append(tuple(sorted(c)))
        self.n = n
        # the candidates as CSR arrays for the kernel: step i's are
        # cand_idx[cand_start[i]:cand_start[i + 1]]
        self.cand_start = np.zeros(n + 1, np.int64)
        self.cand_start[1:] = np.cumsum([len(c) for c in cands])
        self.cand_idx = np.array([j for c in cands for j in c], np.int64)

    def critical_path(self, tt) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The steps on the token's critical path (latest first), the start and end of the
        interval each owns, and the cycles before and between them (0 unless a step started
        later than every candidate predecessor ended: an ASIC step that waited for a device's
        ASIC shared with other pipeline stages, :class:`pimsim.pipeline.DeviceAsics`)."""
        if self.n == 0 or tt.end_cyc <= tt.start_cyc:
            return (np.zeros(0, np.int64),) * 3 + (int(tt.end_cyc - tt.start_cyc),)
        idx, lo, hi, gap = _critical_path(np.asarray(tt.step_start, np.int64),
                                          np.asarray(tt.step_end, np.int64),
                                          int(tt.start_cyc), int(tt.end_cyc),
                                          self.cand_start, self.cand_idx)
        return idx, lo, hi, int(gap)

    def split(self, tt) -> tuple[np.ndarray, dict[str, float]]:
        """Cycles of one token (``tt``: a :class:`pimsim.decode.TokenTiming`) by share, in
        :data:`TIME_SHARES` order, and by op (critical-path time); both sum to its cycles."""
        idx, lo, hi, gap = self.critical_path(tt)
        out = np.zeros(len(TIME_SHARES), np.float64)
        out[_QUEUE] = gap
        length = (hi - lo).astype(np.float64)
        kind = self.kind[idx]
        out[_ASIC] = length[kind == 0].sum()
        out[_COMM] = length[kind == 2].sum()
        pim = kind == 1
        if pim.any():
            p = idx[pim]
            L = length[pim]
            wait = tt.step_wait[p] if tt.step_wait is not None else np.zeros((len(p), 2), np.int64)
            fixed = np.minimum(L, self.link_lat + wait[:, 1])  # latency + the link's tail
            rest = L - fixed
            whole = lo[pim] == tt.step_start[p]  # the step's own start is on the path: its lead
            claims = np.concatenate([tt.step_counts[p] @ self.share_cyc,
                                     np.where(whole, wait[:, 0], 0)[:, None]], axis=1)
            tot = claims.sum(1)
            scale = np.where(tot > rest, rest / np.where(tot > 0, tot, 1.0), 1.0)
            claims *= scale[:, None]
            out[:len(_CMD_SHARES)] = claims[:, :-1].sum(0)
            out[_LINK] = fixed.sum() + claims[:, -1].sum()
            out[_STALL] = np.where(tot > rest, 0.0, rest - tot).sum()
        per_op = np.bincount(self.op_idx[idx], weights=length, minlength=len(self.ops))
        ops = {op: float(v) for op, v in zip(self.ops, per_op) if v}
        if gap:  # the path's waits (for a shared ASIC), as queueing above
            ops["asic_wait"] = float(gap)
        return out, ops


@cached_njit()
def _critical_path(st, en, t0, end_cyc, cand_start, cand_idx):
    """:meth:`TimeAccount.critical_path` over the step arrays: from the step that ends last
    (the later step of equal ends) back along each step's candidate that ended last (at or
    before its end; the later candidate of equal ends) to the token's start."""
    n = st.shape[0]
    cur = 0
    for i in range(n):
        if en[i] >= en[cur]:
            cur = i
    idx = np.empty(n, np.int64)
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    m = 0
    gap = np.zeros(1, np.int64)  # cycles no step on the path covers
    gap[0] = end_cyc - en[cur]
    while True:
        best = -1
        be = np.int64(0)
        for q in range(cand_start[cur], cand_start[cur + 1]):
            j = cand_idx[q]
            e = en[j]
            if e <= en[cur] and (best < 0 or e >= be):
                best = j
                be = e
        a = st[cur]
        if best >= 0 and be > a:
            a = be
        idx[m] = cur
        lo[m] = a
        hi[m] = en[cur]
        m += 1
        if best < 0 or be <= t0 or m == n:
            gap[0] += a - t0
            break
        gap[0] += a - be
        cur = best
    return idx[:m], lo[:m], hi[:m], gap[0]
