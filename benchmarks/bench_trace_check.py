"""``pimsim trace --check`` on a generated ~1 MB AiM trace: replay, streamed check, memory.

Generates a GEMV-like trace (global-buffer fills, MAC_ABK over many rows on all 32 channels, an
accumulator read and a SYNC per tile, as a decode step's emitted trace looks) of about
``--mb`` megabytes, then times in this process (numba kernels compiled by a first small run):

* the replay alone (``pimsim.dma.replay_trace``, channels grouped, no log);
* the replay with every command handed to the streaming checker as it goes
  (``replay_trace_logged`` + ``StreamChecker``: what ``trace --check`` does), split into the
  replay's and the checker's share;

and prints the commands checked, the violations (0 expected), the most command rows the checker
held at once and the process's peak resident memory.

With ``--old`` it also times the former way (the whole log kept, then checked at once:
``replay_trace(log=True)`` + ``check_command_log``) in a process of its own, for its peak memory.

    python benchmarks/bench_trace_check.py [--mb 1.0] [--hw aim-gddr6] [--no-refresh] [--old]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from pimsim.check import StreamChecker, check_command_log
from pimsim.config import load_config
from pimsim.dma import replay_trace, replay_trace_logged
from pimsim.trace import parse_trace

ALL = "0xffffffff"


def gemv_trace(target_bytes: int) -> str:
    """GEMV tiles until the text reaches ``target_bytes``."""
    out = ["# generated GEMV: per tile a global-buffer fill, 8 MAC rows, an accumulator read"]
    size = len(out[0]) + 1
    tile = 0
    while size < target_bytes:
        block = [f"AiM WR_GB 64 {tile % 4} {ALL}"]
        block += [f"AiM MAC_ABK 64 {ALL} {(8 * tile + r) % 16384}" for r in range(8)]
        block += [f"AiM RD_MAC {tile % 4} {ALL}", "AiM SYNC"]
        out += block
        size += sum(len(b) + 1 for b in block)
        tile += 1
    out.append("AiM EOC")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=1.0, help="trace size in megabytes (default 1)")
    ap.add_argument("--hw", default="aim-gddr6")
    ap.add_argument("--no-refresh", action="store_true")
    ap.add_argument("--old", action="store_true", help="also time the whole-log check")
    ap.add_argument("--old-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.old_child:
        return old_way(a)
    cfg = load_config(a.hw, refresh=False if a.no_refresh else None)
    warm = parse_trace(gemv_trace(2000), cfg)
    replay_trace(cfg, warm)
    replay_trace_logged(cfg, warm, lambda rows: None)

    text = gemv_trace(int(a.mb * 1e6))
    tr = parse_trace(text, cfg, name="gemv.trace")
    t0 = time.perf_counter()
    res, _ = replay_trace(cfg, tr)
    replay_s = time.perf_counter() - t0

    checker = StreamChecker(cfg, name="gemv.trace")
    feed_s = 0.0

    def feed(rows) -> None:
        nonlocal feed_s
        t = time.perf_counter()
        checker.feed(rows[:, :5], tags=rows[:, 5])
        feed_s += time.perf_counter() - t

    t0 = time.perf_counter()
    res2 = replay_trace_logged(cfg, tr, feed)
    t1 = time.perf_counter()
    violations = checker.finish()
    finish_s = time.perf_counter() - t1
    total_s = time.perf_counter() - t0
    assert res2.cycles == res.cycles
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = checker.n_rows
    print(f"trace {len(text) / 1e6:.2f} MB, {tr.n_lines:,} lines on {a.hw} "
          f"(refresh {'off' if a.no_refresh else 'on'}): {res.cycles:,} cycles")
    print(f"replay alone (channels grouped)       {replay_s:8.2f} s")
    print(f"trace --check (replay + check)        {total_s:8.2f} s: replay {total_s - feed_s - finish_s:.2f} s, "
          f"check {feed_s + finish_s:.2f} s for {n:,} commands ({n / max(feed_s + finish_s, 1e-9) / 1e6:.2f} M/s)")
    print(f"violations {violations.total}; checker held at most {checker.peak_rows:,} command rows "
          f"({checker.peak_rows * 40 / 2**20:.1f} MiB); peak resident memory {peak_mib:.0f} MiB")

    if a.old:
        argv = [sys.executable, __file__, "--old-child", "--mb", str(a.mb), "--hw", a.hw]
        r = subprocess.run(argv + (["--no-refresh"] if a.no_refresh else []),
                           capture_output=True, text=True)
        if r.returncode:
            print(f"whole-log check failed: {r.stderr[-500:]}")
        else:
            o = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"whole log kept, then checked           {o['total_s']:8.2f} s: replay "
                  f"{o['replay_s']:.2f} s, check {o['check_s']:.2f} s; violations {o['violations']}; "
                  f"peak resident memory {o['peak_mib']:.0f} MiB")


def old_way(a) -> None:
    """The former ``trace --check``: every command kept, then the whole log checked."""
    cfg = load_config(a.hw, refresh=False if a.no_refresh else None)
    warm = parse_trace(gemv_trace(2000), cfg)
    check_command_log(replay_trace(cfg, warm, log=True)[1], cfg)
    tr = parse_trace(gemv_trace(int(a.mb * 1e6)), cfg, name="gemv.trace")
    t0 = time.perf_counter()
    _, log = replay_trace(cfg, tr, log=True)
    t1 = time.perf_counter()
    v = check_command_log(log, cfg)
    t2 = time.perf_counter()
    print(json.dumps({"replay_s": t1 - t0, "check_s": t2 - t1, "total_s": t2 - t0,
                      "violations": v.total,
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
