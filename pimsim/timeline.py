"""One token's activity as a Chrome trace-event timeline (ui.perfetto.dev, chrome://tracing).

:func:`token_timeline` simulates the decode step at one position with the command-logging
executor and turns every issued command into trace events, in simulated time (cycles x tCK, in
microseconds, from the token's start):

* process "PIM steps": one slice per PIM step, from its start to its end (link latency
  included); in the ``overlap`` schedule overlapping steps go to extra lanes;
* process "ASIC": one slice per ASIC step (args: op, layer, elements);
* process "PIM channels", a thread per channel, what its command bus did:

  - ``ACT_AB`` (all-bank activate) from its issue to the next command (the first MAC: nRCDRDMAC),
    ``ACT`` (one bank) likewise but at most nRCDRD;
  - ``MAC_AB`` (and ``MAC_SB``, ``EWMUL``): a run of consecutive MACs on one row is one slice from
    the first to the last + nCCDL, ``args.count`` MACs;
  - transfers ``WR_GB``, ``RD_MAC``, ``WR_MAC``, ``RD_AF``, ``RD``, ``WR``, ``RD_CP``, ``WR_CP``,
    ``WR_AB``: consecutive commands of one kind merged, from the first to the last + nBL;
  - ``REFab`` lasting nRFC; ``PRE`` / ``PREA`` lasting nRP; ``TMOD`` nMODCH; ``AF`` nCCDL.

  Slices of one channel are made well nested or disjoint: a slice that would run into the next
  one ends where the next one starts (the command bus moved on), except a refresh, which keeps its
  nRFC and holds the channel-level commands the rules let through meanwhile.
* process "Power" (with an ``[energy]`` table): counter tracks ``power_W`` (the device's power
  per interval, :mod:`pimsim.timeline_power`) and ``open_banks``.

On a system, :func:`system_timeline` shows one device of each tensor-parallel group (one per
pipeline stage) or every device, each under its own process ids. A ``.gz`` path is written
gzip-compressed.

The DRAM state the token starts from (open rows, refresh phase, pending timing constraints) is
that of a real run: by default every earlier position is simulated first with the fast executor
(the two executors are held cycle-identical by the tests) and its state handed to the logging
one, so the timeline is the token ``pimsim run`` timed. ``warmup=N`` simulates only the N
previous positions (a fresh state before them), for long contexts.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from pimsim.config import HwConfig
from pimsim.decode import DecodeSimulator
from pimsim.isa import Program
from pimsim.spec.commands import COMMANDS, ROW_NEEDS_OPEN, ROW_NEEDS_OPEN_THEN_CLOSES, ROW_OPENS, cmd_id
from pimsim.timing.state import S_LOG_N

PID_STEPS, PID_ASIC, PID_CHANNELS, PID_POWER = 0, 1, 2, 3

_NAMES = [c.name for c in COMMANDS]
_MACS = {cmd_id(n) for n in ("MAC_AB", "MAC_SB", "EWMUL")}
_XFER = {cmd_id(n) for n in ("WR_GB", "RD_MAC", "WR_MAC", "RD_AF", "RD", "WR", "RD_CP", "WR_CP",
                             "WR_AB")}
_ACT, _ACT_AB, _REF = cmd_id("ACT"), cmd_id("ACT_AB"), cmd_id("REFab")
_PRES = {cmd_id("PRE"), cmd_id("PREA")}
_TMOD, _AF = cmd_id("TMOD"), cmd_id("AF")
_ROW_CMDS = {i for i, c in enumerate(COMMANDS) if c.row in (ROW_OPENS, ROW_NEEDS_OPEN,
                                                              ROW_NEEDS_OPEN_THEN_CLOSES)}
_CATEGORY = {**{c: "mac" for c in _MACS}, **{c: "transfer" for c in _XFER},
             _ACT: "activate", _ACT_AB: "activate", _REF: "refresh", _TMOD: "mode", _AF: "mac",
             **{c: "precharge" for c in _PRES}}


def _warm_simulator(prog: Program, cfg: HwConfig, pos: int, schedule: str,
                    warmup: int | None) -> DecodeSimulator:
    """A logging simulator whose DRAM state is that after positions before ``pos``."""
    first = 0 if warmup is None else max(0, pos - int(warmup))
    sim = DecodeSimulator(prog, cfg, schedule=schedule, fast=False, log=True)
    if first < pos:
        fast = DecodeSimulator(prog, cfg, schedule=schedule, fast=True)
        for p in range(first, pos):
            fast.run_token(p)
        src, dst = fast.states, sim.states
        for name in ("ready", "win_hist", "win_cnt", "open_row", "scal", "counts", "stats"):
            np.copyto(getattr(dst, name), getattr(src, name))  # in place: timers hold views
        dst.scal[:, S_LOG_N] = 0
        sim.now = fast.now
    return sim


def _run_logged(sim: DecodeSimulator, pos: int):
    """Run the token; returns (timing, per-channel command logs, per-channel step boundaries).

    Each channel's log is split by PIM step exactly: the executor runs every PIM step on every
    channel in program order, so the j-th segment a channel runs is the j-th PIM step."""
    marks: list[list[int]] = [[] for _ in sim.timers]
    for c, t in enumerate(sim.timers):
        orig = t.run

        def run(*a, _orig=orig, _t=t, _m=marks[c], **kw):
            out = _orig(*a, **kw)
            _m.append(int(_t.scal[S_LOG_N]))
            return out

        t.run = run
    try:
        tt = sim.run_token(pos)
    finally:
        for t in sim.timers:
            del t.run
    logs = [t.log.copy() for t in sim.timers]  # rows (cycle, cmd, bank, row)
    return tt, logs, marks


class _Builder:
    def __init__(self, cfg: HwConfig, t0: int):
        self.tck_us = cfg.tCK_ps / 1e6
        self.t0 = t0
        self.events: list[dict] = []

    def us(self, cyc: int) -> float:
        return round((cyc - self.t0) * self.tck_us, 6)

    def slice(self, pid: int, tid: int, name: str, start: int, end: int, cat: str,
              args: dict) -> None:
        self.events.append({"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": tid,
                            "ts": self.us(start), "dur": round((end - start) * self.tck_us, 6),
                            "args": args})

    def counter(self, pid: int, name: str, cyc: int, value: float) -> None:
        self.events.append({"name": name, "ph": "C", "pid": pid, "ts": self.us(cyc),
                            "args": {name: round(float(value), 6)}})

    def meta(self, pid: int, tid: int | None, what: str, **args) -> None:
        ev = {"name": what, "ph": "M", "pid": pid, "args": args}
        if tid is not None:
            ev["tid"] = tid
        self.events.append(ev)


def _channel_slices(log: np.ndarray, step_of: np.ndarray, cfg: HwConfig) -> list[list]:
    """Merged command slices of one channel: [start, end, cmd, count, row, bank, step, fixed]."""
    t = cfg.timing
    tail = np.ones(len(COMMANDS), np.int64)
    tail[_ACT_AB], tail[_ACT], tail[_REF] = 0, t.nRCDRD, t.nRFC
    tail[_TMOD], tail[_AF] = t.get("nMODCH", 1), t.nCCDL
    tail[list(_MACS)] = t.nCCDL
    tail[list(_XFER)] = t.nBL
    tail[list(_PRES)] = t.nRP
    order = np.argsort(log[:, 0], kind="stable")
    cyc, cmd, bank, row = (log[order, i] for i in range(4))
    step_of = step_of[order]
    n = len(cyc)
    if n == 0:
        return []
    # refresh windows: commands the rules let through during a refresh (channel-level ones) are
    # not merged with those outside it: their slice nests inside the refresh
    zone = np.zeros(n, np.int64)
    for i in np.flatnonzero(cmd == _REF):
        lo, hi = np.searchsorted(cyc, [cyc[i] + 1, cyc[i] + t.nRFC])
        zone[lo:hi] = i + 1
    # runs: consecutive MACs on one row, consecutive transfers of one kind (within one step)
    is_mac = np.isin(cmd, list(_MACS))
    merge = np.isin(cmd, list(_MACS | _XFER))
    same = ((cmd[1:] == cmd[:-1]) & merge[1:] & (zone[1:] == zone[:-1])
            & (step_of[1:] == step_of[:-1])
            & (~is_mac[1:] | ((row[1:] == row[:-1]) & (bank[1:] == bank[:-1]))))
    first = np.concatenate([[0], np.flatnonzero(~same) + 1])
    last = np.concatenate([first[1:], [n]]) - 1
    c = cmd[first]
    start = cyc[first]
    end = cyc[last] + tail[c]
    nxt = np.append(cyc, -1)[last + 1]  # the channel's next command (-1: none)
    act_ab = c == _ACT_AB  # lasts until the first MAC (the next command)
    end[act_ab] = np.where(nxt[act_ab] >= 0, nxt[act_ab],
                           start[act_ab] + t.get("nRCDRDMAC", t.nRCDRD))
    act = (c == _ACT) & (nxt >= 0)
    end[act] = np.minimum(end[act], nxt[act])
    out = [list(v) + [f == _REF] for v, f in zip(
        np.stack([start, end, c, last - first + 1, row[first], bank[first], step_of[first]],
                 axis=1).tolist(), c.tolist())]
    return _nest(out)


def _nest(sl: list[list]) -> list[list]:
    """Make slices (sorted by start) well nested or disjoint: a slice running into the next ends
    where the next begins, unless it is fixed (a refresh), which then holds the next one (clipped
    to its end)."""
    sl.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    stack: list[list] = []
    for s in sl:
        while stack and stack[-1][1] <= s[0]:
            stack.pop()
        while stack and s[1] > stack[-1][1]:
            top = stack[-1]
            if top[1] <= s[0]:  # ended before s (uncovered once a later slice was cut)
                stack.pop()
                continue
            if top[7]:  # fixed parent: nest inside it
                s[1] = top[1]
            else:  # the bus moved on: end the earlier slice here
                top[1] = s[0]
                stack.pop()
        stack.append(s)
    return sl


def _lanes(spans: list[tuple[int, int, int]]) -> list[int]:
    """Greedy interval partitioning: a lane per span so that no lane has overlapping spans."""
    ends: list[int] = []
    lane = []
    for st, en, _ in spans:
        for k, e in enumerate(ends):
            if e <= st:
                ends[k] = en
                lane.append(k)
                break
        else:
            ends.append(en)
            lane.append(len(ends) - 1)
    return lane


def _power_tracks(b: _Builder, prog: Program, cfg: HwConfig, sim: DecodeSimulator, tt, logs,
                  open_row0: np.ndarray, meter, bins: int) -> dict:
    """Counter tracks ``power_W`` and ``open_banks`` (process "Power"); returns the otherData
    entries (the token's energy by the engine's meter and by the series)."""
    from pimsim.timeline_power import asic_step_pj, power_series

    er = meter.end(tt)
    asic = [(int(tt.step_start[s.index]), int(tt.step_end[s.index]),
             asic_step_pj(cfg, s.op, prog.asic_elems(s, tt.pos))) for s in prog.steps
            if s.kind == "asic"]
    comm_steps = [s for s in prog.steps if s.kind == "comm"]
    bits = {s.index: sim.steps.comm[s.index].wire_bits for s in comm_steps}
    total_bits = sum(bits.values())
    comm = [(int(tt.step_start[s.index]), int(tt.step_end[s.index]),
             meter.comm_pj * bits[s.index] / total_bits) for s in comm_steps] if total_bits else []
    ps = power_series(cfg, logs, open_row0, tt.start_cyc, tt.end_cyc, asic, comm, bins)
    b.meta(PID_POWER, None, "process_name", name="Power")
    b.meta(PID_POWER, None, "process_sort_index", sort_index=3)
    edges = ps["edges_cyc"].tolist()
    for name, vals in (("power_W", ps["power_w"]), ("open_banks", ps["open_banks"])):
        vals = vals.tolist()
        for st, v in zip(edges, vals):
            b.counter(PID_POWER, name, st, v)
        b.counter(PID_POWER, name, edges[-1], vals[-1])  # the last interval's end
    return {"energy_j": er.total_j, "power_intervals": len(edges) - 1,
            "power_interval_cycles": edges[1] - edges[0],
            "power_series_energy_j": ps["energy_j"],
            "mean_power_w": er.total_j / ((tt.end_cyc - tt.start_cyc) * cfg.tCK_ps * 1e-12)}


def token_timeline(prog: Program, cfg: HwConfig, pos: int, *, schedule: str = "serial",
                   warmup: int | None = None, power_bins: int = 200) -> dict:
    """Chrome trace-event JSON object (``traceEvents``, ``displayTimeUnit``, ``otherData``) of
    the decode step at position ``pos``. ``warmup``: None simulates every earlier position first
    (the state of a real run), N only the N previous ones. With an ``[energy]`` table, counter
    tracks give the device's power (``power_W``) and open banks in ``power_bins`` intervals."""
    n_ctx = prog.dims["n_ctx"]
    if not 0 <= pos < n_ctx:
        raise ValueError(f"position {pos} is outside the model's context 0..{n_ctx - 1}")
    sim = _warm_simulator(prog, cfg, pos, schedule, warmup)
    open_row0 = sim.states.open_row.copy()
    meter = None
    if cfg.energy is not None:
        from pimsim.generate import TokenEnergy

        meter = TokenEnergy(sim)
        meter.begin()
    tt, logs, marks = _run_logged(sim, pos)
    # a refresh that fell due in idle time before the token's first command is issued at its
    # due time, which may precede the token's start: the time origin is the earlier of the two
    first = min([int(lg[:, 0].min()) for lg in logs if lg.shape[0]] + [tt.start_cyc])
    b = _Builder(cfg, min(tt.start_cyc, first))
    steps = prog.steps
    pim_steps = [s for s in steps if s.kind == "pim"]

    b.meta(PID_STEPS, None, "process_name", name="PIM steps")
    b.meta(PID_STEPS, None, "process_sort_index", sort_index=0)
    b.meta(PID_ASIC, None, "process_name", name="ASIC")
    b.meta(PID_ASIC, None, "process_sort_index", sort_index=1)
    b.meta(PID_CHANNELS, None, "process_name", name="PIM channels")
    b.meta(PID_CHANNELS, None, "process_sort_index", sort_index=2)

    spans = sorted((int(tt.step_start[s.index]), int(tt.step_end[s.index]), s.index)
                   for s in pim_steps)
    lanes = _lanes(spans)
    for k in range(max(lanes, default=0) + 1):
        b.meta(PID_STEPS, k, "thread_name", name="steps" if k == 0 else f"steps ({k + 1})")
        b.meta(PID_STEPS, k, "thread_sort_index", sort_index=k)
    for (st, en, i), lane in zip(spans, lanes):
        s = steps[i]
        b.slice(PID_STEPS, lane, s.name, st, en, "pim_step",
                {"op": s.op, "layer": s.layer, "step": s.index, "cycles": en - st})

    b.meta(PID_ASIC, 0, "thread_name", name="ASIC")
    for s in steps:
        if s.kind != "asic":
            continue
        st, en = int(tt.step_start[s.index]), int(tt.step_end[s.index])
        b.slice(PID_ASIC, 0, s.name, st, en, "asic_step",
                {"op": s.op, "layer": s.layer, "step": s.index, "cycles": en - st,
                 "elements": prog.asic_elems(s, pos)})

    if any(s.kind == "comm" for s in steps):  # collectives with the other devices
        b.meta(PID_ASIC, 1, "thread_name", name="interconnect")
        for s in steps:
            if s.kind == "comm":
                st, en = int(tt.step_start[s.index]), int(tt.step_end[s.index])
                b.slice(PID_ASIC, 1, s.name, st, en, "collective",
                        {"op": s.op, "layer": s.layer, "step": s.index, "cycles": en - st,
                         "elements": s.n_elems, "devices": prog.tp})

    n_cmds = {}
    for c, (log, mk) in enumerate(zip(logs, marks)):
        b.meta(PID_CHANNELS, c, "thread_name", name=f"channel {c}")
        b.meta(PID_CHANNELS, c, "thread_sort_index", sort_index=c)
        if len(mk) != len(pim_steps) or (mk and mk[-1] != len(log)):
            raise RuntimeError("the executor did not run one segment per PIM step and channel")
        bounds = np.array(mk, np.int64)
        step_of = np.searchsorted(bounds, np.arange(len(log)), side="right")
        for cmd, k in enumerate(np.bincount(log[:, 1], minlength=len(COMMANDS)).tolist()):
            if k:
                n_cmds[_NAMES[cmd]] = n_cmds.get(_NAMES[cmd], 0) + k
        for st, en, cmd, cnt, row, bank, k, _ in _channel_slices(log, step_of, cfg):
            sk = pim_steps[k]
            # a refresh that fell due while the channel was idle is issued then, in the past of
            # the step whose commands the channel took next
            step = sk.name if st >= tt.step_start[sk.index] else "idle"
            args = {"count": cnt, "step": step}
            if row >= 0 and cmd in _ROW_CMDS:
                args["row"] = row
            if bank >= 0:
                args["bank"] = bank
            b.slice(PID_CHANNELS, c, _NAMES[cmd], st, en, _CATEGORY.get(cmd, "other"), args)

    energy = {}
    if meter is not None:
        energy = _power_tracks(b, prog, cfg, sim, tt, logs, open_row0, meter, power_bins)

    return {
        "traceEvents": b.events,
        "displayTimeUnit": "ns",
        "otherData": {
            "model": prog.model, "hw": cfg.name, "position": pos, "schedule": schedule,
            "refresh": cfg.refresh.enabled, "tCK_ps": cfg.tCK_ps,
            "start_cycle": tt.start_cyc, "end_cycle": tt.end_cyc, "origin_cycle": b.t0,
            "token_cycles": tt.end_cyc - tt.start_cyc,
            "token_us": round((tt.end_cyc - tt.start_cyc) * b.tck_us, 6),
            "warmup_positions": pos if warmup is None else min(pos, int(warmup)),
            "commands": dict(sorted(n_cmds.items(), key=lambda kv: -kv[1])),
            **energy,
            "time_unit": "ts/dur in microseconds of simulated time from origin_cycle (the "
                         "token's start, or an earlier refresh the token issued in idle time)",
        },
    }


def save_trace(path: str | Path, trace: dict) -> Path:
    """Write a trace object as compact JSON (atomically, :func:`pimsim.outputs.atomic_write`);
    a path ending in ``.gz`` is written gzip-compressed (Perfetto opens ``.json.gz``), with no
    time stamp in the gzip header, so the same trace gives the same bytes."""
    from pimsim.outputs import atomic_write

    what = "timeline file (--timeline)"
    if str(path).endswith(".gz"):
        with atomic_write(path, what, "wb") as f, \
                gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
            gz.write(json.dumps(trace, separators=(",", ":")).encode())
    else:
        with atomic_write(path, what) as f:
            json.dump(trace, f, separators=(",", ":"))
    return Path(path)


def load_trace(path: str | Path) -> dict:
    """A trace :func:`save_trace` wrote (gzip-compressed when the path ends in ``.gz``)."""
    if str(path).endswith(".gz"):
        with gzip.open(path, "rt") as f:
            return json.load(f)
    return json.loads(Path(path).read_text())


DEVICE_CHOICES = ("group", "all")
_PIDS_PER_DEVICE = 4


def system_timeline(programs: list[Program], cfg: HwConfig, pos: int, *, devices: str = "group",
                    schedule: str = "serial", warmup: int | None = None,
                    power_bins: int = 200) -> dict:
    """The token's timeline on a system of pipeline stages (one program each) of ``tp``
    devices: ``devices="group"`` shows one device of each tensor-parallel group (the devices of
    a group run the same program), ``"all"`` every device. One device shown: the trace of
    :func:`token_timeline` as it is; more: each device's processes under its own ids, named
    "device D (stage S): ...". ``otherData.devices`` says which devices are shown."""
    if devices not in DEVICE_CHOICES:
        raise ValueError(f"devices {devices!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    tp, pp = max(programs[0].tp, 1), len(programs)
    per_stage = tp if devices == "all" else 1
    shown = [(s, d) for s in range(pp) for d in range(per_stage)]
    info = {"shown": [s * tp + d for s, d in shown], "total": tp * pp, "tp": tp, "pp": pp,
            "mode": devices,
            "note": "every device" if per_stage == tp else
            "one device of each tensor-parallel group (its devices run the same program)"}
    stages = [token_timeline(p, cfg, pos, schedule=schedule, warmup=warmup, power_bins=power_bins)
              for p in programs]
    if len(shown) == 1:
        stages[0]["otherData"]["devices"] = info
        return stages[0]
    events: list[dict] = []
    for s, d in shown:
        g = s * tp + d
        for ev in stages[s]["traceEvents"]:
            ev = dict(ev, pid=ev["pid"] + _PIDS_PER_DEVICE * g)
            if ev["name"] == "process_name":
                ev["args"] = {"name": f"device {g} (stage {s}): {ev['args']['name']}"}
            elif ev["name"] == "process_sort_index":
                ev["args"] = {"sort_index": ev["args"]["sort_index"] + _PIDS_PER_DEVICE * g}
            events.append(ev)
    other = dict(stages[0]["otherData"], devices=info)
    if pp > 1:
        other["stages"] = [st["otherData"] for st in stages]
    return {"traceEvents": events, "displayTimeUnit": stages[0]["displayTimeUnit"],
            "otherData": other}


def write_timeline(path: str | Path, prog: Program | list[Program], cfg: HwConfig, pos: int, *,
                   schedule: str = "serial", warmup: int | None = None,
                   devices: str = "group") -> dict:
    """:func:`system_timeline` of ``prog`` (one program, or one per pipeline stage) written to
    ``path`` (gzip-compressed for a ``.gz`` path); returns the trace object."""
    programs = prog if isinstance(prog, list) else [prog]
    trace = system_timeline(programs, cfg, pos, devices=devices, schedule=schedule, warmup=warmup)
    save_trace(path, trace)
    return trace
