"""One token's timeline in the Chrome trace-event format (pimsim.timeline, pimsim run --timeline)."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from compiler.pipeline import compile_model
from pimsim.config import load_config
from pimsim.decode import DecodeSimulator
from pimsim.spec.commands import cmd_id
from pimsim.timeline import (
    PID_ASIC,
    PID_CHANNELS,
    PID_POWER,
    PID_STEPS,
    load_trace,
    save_trace,
    token_timeline,
    write_timeline,
)
from workloads.models.resolve import resolve_model

CFG = load_config("pim-gpt")


@pytest.fixture(scope="module")
def programs():
    out = {}
    for m in ("tiny", "gpt2-small"):
        src, name = resolve_model(m, weights=False)
        out[m] = compile_model(src, CFG, name=name).program
    return out


def check_trace(tr: dict) -> dict:
    """Valid trace-event JSON; returns the complete events grouped by (pid, tid)."""
    tr = json.loads(json.dumps(tr))  # JSON round trip: only JSON types
    assert set(tr) >= {"traceEvents", "displayTimeUnit"}
    assert tr["displayTimeUnit"] in ("ms", "ns")
    names: dict[tuple, str] = {}
    tracks = defaultdict(list)
    for ev in tr["traceEvents"]:
        assert ev["ph"] in ("X", "M", "C"), ev
        assert isinstance(ev["name"], str) and ev["name"]
        assert isinstance(ev["pid"], int)
        if ev["ph"] == "C":  # a counter sample: one numeric series named like the event
            assert set(ev["args"]) == {ev["name"]} and ev["ts"] >= 0
            assert isinstance(ev["args"][ev["name"]], (int, float))
            continue
        if ev["ph"] == "M":
            assert ev["name"] in ("process_name", "thread_name", "process_sort_index",
                                  "thread_sort_index")
            if ev["name"] == "process_name":
                names[(ev["pid"],)] = ev["args"]["name"]
            elif ev["name"] == "thread_name":
                names[(ev["pid"], ev["tid"])] = ev["args"]["name"]
            continue
        assert isinstance(ev["tid"], int)
        for k in ("ts", "dur"):
            assert isinstance(ev[k], (int, float)) and ev[k] >= 0, ev
        assert isinstance(ev.get("args", {}), dict)
        tracks[(ev["pid"], ev["tid"])].append(ev)
    assert names[(PID_CHANNELS,)] == "PIM channels"
    assert names[(PID_ASIC,)] == "ASIC"
    assert names[(PID_STEPS,)] == "PIM steps"
    for key in tracks:  # every track is named
        assert key in names
    return tracks


def assert_nested_or_disjoint(events: list[dict], eps: float = 1e-9) -> None:
    """Sorted by start, each event starts at or after the previous one's end or lies inside an
    enclosing one: no partial overlap."""
    stack: list[float] = []  # ends of the open enclosing events
    for ev in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        st, en = ev["ts"], ev["ts"] + ev["dur"]
        while stack and stack[-1] <= st + eps:
            stack.pop()
        assert not stack or en <= stack[-1] + eps, f"partial overlap at {ev}"
        stack.append(en)


def reference_log(prog, pos: int, schedule: str = "serial"):
    """Every position up to ``pos`` with the logging executor: the token's commands and span."""
    sim = DecodeSimulator(prog, CFG, schedule=schedule, fast=False, log=True)
    for p in range(pos):
        sim.run_token(p)
    before = [t.log.shape[0] for t in sim.timers]
    tt = sim.run_token(pos)
    # the commands this token issued (a refresh due in the idle time before its start issues
    # at its due time, before the token's start cycle)
    rows = []
    for c, (t, n) in enumerate(zip(sim.timers, before)):
        lg = t.log[n:]
        rows.append(np.column_stack([lg[:, 0], np.full(len(lg), c), lg[:, 2], lg[:, 3],
                                     lg[:, 1]]))
    log = np.concatenate(rows)
    return tt, log[np.lexsort((log[:, 1], log[:, 0]))]


@pytest.mark.parametrize("model,pos", [("tiny", 5), ("gpt2-small", 2)])
def test_token_timeline(programs, model, pos):
    prog = programs[model]
    tr = token_timeline(prog, CFG, pos)
    tracks = check_trace(tr)
    tck_us = CFG.tCK_ps / 1e6
    t = CFG.timing

    # the token is the one a real run times (state warmed by every earlier position)
    tt, log = reference_log(prog, pos)
    od = tr["otherData"]
    assert (od["start_cycle"], od["end_cycle"]) == (tt.start_cyc, tt.end_cyc)
    assert od["position"] == pos

    n_ch = prog.geo.channels
    chan = {tid: evs for (pid, tid), evs in tracks.items() if pid == PID_CHANNELS}
    assert sorted(chan) == list(range(n_ch))
    for _tid, evs in tracks.items():
        assert_nested_or_disjoint(evs)

    # MAC runs cover exactly the token's MAC_AB commands, per channel and in all
    mac = cmd_id("MAC_AB")
    for c in range(n_ch):
        n_log = int(((log[:, 1] == c) & (log[:, 4] == mac)).sum())
        assert sum(e["args"]["count"] for e in chan[c] if e["name"] == "MAC_AB") == n_log
    n_mac = int((log[:, 4] == mac).sum())
    assert n_mac > 0 and od["commands"]["MAC_AB"] == n_mac
    # every command is covered by one event's count
    assert sum(e["args"]["count"] for evs in chan.values() for e in evs) == len(log)

    # a MAC run lasts at least its MACs' issue slots
    for evs in chan.values():
        for e in evs:
            if e["name"] == "MAC_AB":
                assert e["dur"] >= e["args"]["count"] * t.nCCDL * tck_us - 1e-9

    # refresh lasts nRFC
    refs = [e for evs in chan.values() for e in evs if e["name"] == "REFab"]
    assert len(refs) == int((log[:, 4] == cmd_id("REFab")).sum())
    for e in refs:
        assert e["dur"] == pytest.approx(t.nRFC * tck_us)

    # steps: every PIM step once on the steps track, every ASIC step on the ASIC track
    steps_ev = [e for (pid, _), evs in tracks.items() if pid == PID_STEPS for e in evs]
    asic_ev = tracks[(PID_ASIC, 0)]
    assert sorted(e["args"]["step"] for e in steps_ev) == [s.index for s in prog.steps
                                                            if s.kind == "pim"]
    assert sorted(e["args"]["step"] for e in asic_ev) == [s.index for s in prog.steps
                                                           if s.kind == "asic"]
    for e in asic_ev:
        s = prog.steps[e["args"]["step"]]
        assert e["name"] == s.name and e["args"]["op"] == s.op and e["args"]["layer"] == s.layer
    # serial schedule: each channel event starts within the span of the step it is labelled with
    span = {e["name"]: (e["ts"], e["ts"] + e["dur"]) for e in steps_ev}
    for evs in chan.values():
        for e in evs:
            if e["args"]["step"] == "idle":  # a refresh issued while the channel idled
                assert e["name"] in ("PREA", "REFab")
                continue
            lo, hi = span[e["args"]["step"]]
            assert lo - 1e-9 <= e["ts"] <= hi + 1e-9, e
    # the whole token spans the trace
    end = max(e["ts"] + e["dur"] for evs in tracks.values() for e in evs)
    assert od["origin_cycle"] <= od["start_cycle"]
    assert end <= od["token_us"] + (od["start_cycle"] - od["origin_cycle"]) * tck_us + 1e-6


def test_overlap_schedule_and_warmup(programs, tmp_path):
    prog = programs["tiny"]
    tr = token_timeline(prog, CFG, 4, schedule="overlap")
    tt, log = reference_log(prog, 4, "overlap")
    assert tr["otherData"]["token_cycles"] == tt.end_cyc - tt.start_cyc
    for evs in check_trace(tr).values():
        assert_nested_or_disjoint(evs)
    # warm only one previous position: a fresh state two tokens back
    short = write_timeline(tmp_path / "t.json", prog, CFG, 4, warmup=1)
    assert short["otherData"]["warmup_positions"] == 1
    loaded = json.loads((tmp_path / "t.json").read_text())
    check_trace(loaded)
    assert loaded["otherData"]["start_cycle"] < tr["otherData"]["start_cycle"]
    no_ref = token_timeline(prog, CFG.with_refresh(False), 0)
    assert not any(e["name"] == "REFab" for e in no_ref["traceEvents"])
    with pytest.raises(ValueError, match="outside"):
        token_timeline(prog, CFG, prog.dims["n_ctx"])


def test_cli_timeline(tmp_path, capsys):
    from workloads.cli import main

    out = tmp_path / "tl.json"
    assert main(["run", "tiny", "--tokens", "3", "--prompt", "2", "--no-progress", "--json",
                 "--timeline", str(out)]) == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)  # stdout stays one JSON object
    tr = json.loads(out.read_text())
    check_trace(tr)
    assert tr["otherData"]["position"] == 3  # the last generated token: prompt + tokens - 2
    assert tr["otherData"]["end_cycle"] == rep["cycles"]
    assert tr["otherData"]["token_cycles"] * rep["tCK_ps"] / 1e9 == pytest.approx(
        rep["per_token_ms"][-1])
    assert "timeline" in cap.err
    # the power track's mean is the token energy the run reported, over the token's time
    ts, watts = counter_series(tr, "power_W")
    assert weighted_mean(ts, watts) * tr["otherData"]["token_us"] * 1e-6 == pytest.approx(
        rep["energy"]["per_token_j"][-1], rel=0.01)
    out2 = tmp_path / "tl0.json"
    assert main(["run", "tiny", "--tokens", "2", "--no-progress", "--timeline", str(out2),
                 "--timeline-pos", "0"]) == 0
    assert json.loads(out2.read_text())["otherData"]["position"] == 0
    assert main(["run", "tiny", "--tokens", "1", "--no-progress", "--timeline", str(out2),
                 "--timeline-pos", "100000"]) == 2


def counter_series(tr: dict, name: str) -> tuple[list[float], list[float]]:
    ev = [e for e in tr["traceEvents"] if e["ph"] == "C" and e["name"] == name]
    assert ev and all(e["pid"] == PID_POWER for e in ev)
    return [e["ts"] for e in ev], [e["args"][name] for e in ev]


def weighted_mean(ts: list[float], vals: list[float]) -> float:
    """Time-weighted mean of a counter (each sample holds until the next)."""
    assert all(b > a for a, b in zip(ts, ts[1:]))
    return sum(v * (b - a) for a, b, v in zip(ts, ts[1:], vals)) / (ts[-1] - ts[0])


@pytest.mark.parametrize("pos", [0, 5])
def test_power_counter(programs, pos):
    """The power track's time-weighted mean is the token's energy (the engine's meter) over its
    time; the open-bank track stays within the banks there are."""
    prog = programs["tiny"]
    tr = token_timeline(prog, CFG, pos, power_bins=50)
    check_trace(tr)
    od = tr["otherData"]
    ts, watts = counter_series(tr, "power_W")
    assert od["power_intervals"] == len(ts) - 1 and 1 < len(ts) - 1 <= 50
    tck_us = CFG.tCK_ps / 1e6
    # the series spans the token, from its start to its end
    assert ts[0] == pytest.approx((od["start_cycle"] - od["origin_cycle"]) * tck_us)
    assert ts[-1] - ts[0] == pytest.approx(od["token_us"])
    assert min(watts) > 0 and max(watts) > min(watts)  # background at least, and it varies
    mean_w = weighted_mean(ts, watts)
    assert mean_w == pytest.approx(od["energy_j"] / (od["token_us"] * 1e-6), rel=0.01)
    assert od["power_series_energy_j"] == pytest.approx(od["energy_j"], rel=0.01)
    _, banks = counter_series(tr, "open_banks")
    n_banks = prog.geo.channels * CFG.org.banks
    assert len(banks) == len(watts) and 0 <= min(banks) and max(banks) <= n_banks + 1e-9
    assert max(banks) > 0


def test_gzip_timeline(programs, tmp_path):
    """A .gz path is written gzip-compressed, smaller, with the same trace inside, and the same
    bytes each time."""
    import gzip

    tr = token_timeline(programs["tiny"], CFG, 1)
    save_trace(tmp_path / "t.json", tr)
    save_trace(tmp_path / "t.json.gz", tr)
    raw, gz = (tmp_path / "t.json").read_bytes(), (tmp_path / "t.json.gz").read_bytes()
    assert gz[:2] == b"\x1f\x8b" and len(gz) < len(raw) / 3
    assert gzip.decompress(gz) == raw
    assert load_trace(tmp_path / "t.json.gz") == load_trace(tmp_path / "t.json")
    save_trace(tmp_path / "t.json.gz", tr)
    assert (tmp_path / "t.json.gz").read_bytes() == gz
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file


def test_system_timeline_devices(tmp_path, capsys):
    """On tp 2 x pp 2, one device of each group by default (one per stage), every device with
    --timeline-devices all; the metadata and the message say which."""
    from workloads.cli import main

    base = ["run", "tiny", "--devices", "4", "--tp", "2", "--pp", "2", "--tokens", "1",
            "--no-progress", "--timeline"]
    assert main(base + [str(tmp_path / "g.json.gz")]) == 0
    err = capsys.readouterr().err
    assert "on 2 of 4 devices" in err and "--timeline-devices all" in err
    g = load_trace(tmp_path / "g.json.gz")
    assert main(base + [str(tmp_path / "a.json"), "--timeline-devices", "all"]) == 0
    assert "on all 4 devices" in capsys.readouterr().err
    a = load_trace(tmp_path / "a.json")
    for tr, shown in ((g, [0, 2]), (a, [0, 1, 2, 3])):
        dv = tr["otherData"]["devices"]
        assert (dv["shown"], dv["total"], dv["tp"], dv["pp"]) == (shown, 4, 2, 2)
        names = sorted(e["args"]["name"] for e in tr["traceEvents"] if e["name"] == "process_name")
        assert names == sorted(f"device {d} (stage {d // 2}): {p}" for d in shown
                               for p in ("PIM steps", "ASIC", "PIM channels", "Power"))
        assert len({e["pid"] for e in tr["traceEvents"]}) == 4 * len(shown)
        assert [st["position"] for st in tr["otherData"]["stages"]] == [0, 0]
    # a group's devices run the same program: device 1 repeats device 0's events
    def events(tr, dev):
        return [(e["name"], e["ph"], e.get("ts"), e.get("dur")) for e in tr["traceEvents"]
                if e["pid"] // 4 == dev and e["ph"] != "M"]
    assert events(a, 1) == events(a, 0) == events(g, 0) and events(a, 2) == events(g, 2)
    assert events(a, 2) != events(a, 0)  # the other stage's program
    assert len(a["traceEvents"]) > len(g["traceEvents"])
