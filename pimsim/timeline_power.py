"""A device's power over one token, for the timeline's counter tracks.

The energy model is the engine's own (:mod:`pimsim.energy`, as :class:`pimsim.generate.TokenEnergy`
charges a token): every command the token issued costs its energy from the config's ``[energy]``
table in the interval it issued in (a refresh issued in idle time before the token's start counts
in the first interval); each channel's background power is active standby (IDD3N) while any of its
banks is open and precharged standby (IDD2N) otherwise, with the open spans rebuilt from the
command log; the ASIC's energy of a step is spread evenly over the step, and the device's share of
the collectives' wire energy over the collective steps. Each interval's power is its energy over
its length, so the time-weighted mean of the series is the token's energy over its time.

The open-bank count (all channels, time-averaged over each interval) comes from the same rebuilt
row-buffer state.
"""

from __future__ import annotations

import numpy as np

from pimsim.config import HwConfig
from pimsim.energy import asic_pj, command_energies
from pimsim.spec.commands import COMMANDS, ROW_CLOSES, ROW_NEEDS_OPEN_THEN_CLOSES, ROW_OPENS, SCOPE_BANK

_CHANGES = [c.row in (ROW_OPENS, ROW_CLOSES, ROW_NEEDS_OPEN_THEN_CLOSES) for c in COMMANDS]
_OPENS = [c.row == ROW_OPENS for c in COMMANDS]
_PER_BANK = [c.scope == SCOPE_BANK for c in COMMANDS]


def open_spans(log: np.ndarray, open_row0: np.ndarray, end_cyc: int) -> tuple[list, list]:
    """Spans ``[start, end)`` of one channel's open banks (one per bank opening) and of "any bank
    open", from the channel's command log (rows cycle, cmd, bank, row) and its banks' open rows
    before it; spans still open at ``end_cyc`` end there."""
    banks = len(open_row0)
    # open since (cycle; 0 for a bank open before the log) or -1
    since = [0 if r != -1 else -1 for r in open_row0.tolist()]
    n_open = sum(s != -1 for s in since)
    bank_spans: list[tuple[int, int]] = []
    any_spans: list[tuple[int, int]] = []
    any_since = 0 if n_open else -1
    sel = np.flatnonzero(np.array(_CHANGES)[log[:, 1]]) if len(log) else np.zeros(0, np.int64)
    sel = sel[np.argsort(log[sel, 0], kind="stable")]
    for t, cmd, bank in log[sel, :3].tolist():
        targets = [bank] if _PER_BANK[cmd] else range(banks)
        for b in targets:
            if _OPENS[cmd]:
                if since[b] == -1:
                    since[b] = t
                    n_open += 1
            elif since[b] != -1:
                bank_spans.append((since[b], t))
                since[b] = -1
                n_open -= 1
        if n_open and any_since == -1:
            any_since = t
        elif not n_open and any_since != -1:
            any_spans.append((any_since, t))
            any_since = -1
    bank_spans += [(s, end_cyc) for s in since if s != -1]
    if any_since != -1:
        any_spans.append((any_since, end_cyc))
    return bank_spans, any_spans


def covered(spans: list[tuple[int, int]], edges: np.ndarray) -> np.ndarray:
    """Cycles of ``spans`` (possibly overlapping: counted with multiplicity) inside each interval
    between consecutive ``edges``."""
    if not spans:
        return np.zeros(len(edges) - 1)
    a = np.sort(np.array([s[0] for s in spans], np.float64))
    b = np.sort(np.array([s[1] for s in spans], np.float64))

    def cum(x: np.ndarray) -> np.ndarray:  # covered cycles before x
        ka, kb = np.searchsorted(a, x), np.searchsorted(b, x)
        pa, pb = np.concatenate([[0.0], np.cumsum(a)]), np.concatenate([[0.0], np.cumsum(b)])
        return (ka * x - pa[ka]) - (kb * x - pb[kb])

    return np.diff(cum(edges.astype(np.float64)))


def power_series(cfg: HwConfig, logs: list[np.ndarray], open_row0: np.ndarray, start_cyc: int,
                 end_cyc: int, asic_spans: list[tuple[int, int, float]],
                 comm_spans: list[tuple[int, int, float]], bins: int = 200) -> dict:
    """Per-interval power of one device over ``[start_cyc, end_cyc)``.

    ``logs``: the token's command log per channel; ``open_row0``: open rows per channel and bank
    before the token; ``asic_spans`` / ``comm_spans``: (start, end, energy in pJ) of the ASIC and
    collective steps. Returns ``edges_cyc`` (interval bounds), ``power_w``, ``open_banks`` (mean
    open banks per interval) and ``energy_j`` (their total)."""
    span = max(end_cyc - start_cyc, 1)
    width = -(-span // max(int(bins), 1))
    edges = np.append(np.arange(start_cyc, start_cyc + span, width), start_cyc + span)
    n = len(edges) - 1
    per_cmd = command_energies(cfg)
    cmd_pj = np.array([per_cmd[c.name].total_pj if c.name in per_cmd else 0.0 for c in COMMANDS])
    e_pj = np.zeros(n)
    open_cyc = np.zeros(n)
    bank_cyc = np.zeros(n)
    for c, log in enumerate(logs):
        if len(log):
            k = np.clip(np.searchsorted(edges, log[:, 0], side="right") - 1, 0, n - 1)
            e_pj += np.bincount(k, weights=cmd_pj[log[:, 1]], minlength=n)
        # the state before the token counts as open since its start
        bank_spans, any_spans = open_spans(log, open_row0[c], end_cyc)
        clip = [(max(s, start_cyc), e) for s, e in any_spans if e > start_cyc]
        open_cyc += covered(clip, edges)
        bank_cyc += covered([(max(s, start_cyc), e) for s, e in bank_spans if e > start_cyc], edges)
    e = cfg.energy
    tck_s = cfg.tCK_ps * 1e-12
    per_cyc_pj = e.vdd_v * 1e-3 * tck_s / e.channels_per_chip * 1e12  # x mA: pJ per cycle
    length = np.diff(edges).astype(np.float64)
    e_pj += per_cyc_pj * (e.idd2n_ma * length * len(logs) + (e.idd3n_ma - e.idd2n_ma) * open_cyc)
    for st, en, pj in list(asic_spans) + list(comm_spans):
        if pj == 0:
            continue
        if en <= st:  # no duration: in the interval it falls in
            k = min(max(int(np.searchsorted(edges, st, side="right")) - 1, 0), n - 1)
            e_pj[k] += pj
        else:
            e_pj += pj * covered([(st, en)], edges) / (en - st)
    return {"edges_cyc": edges, "power_w": e_pj * 1e-12 / (length * tck_s),
            "open_banks": bank_cyc / length, "energy_j": float(e_pj.sum()) * 1e-12}


def asic_step_pj(cfg: HwConfig, op: str, elems: int) -> float:
    """ASIC energy of one step (pJ)."""
    return asic_pj(cfg, {op: elems}) if elems else 0.0
