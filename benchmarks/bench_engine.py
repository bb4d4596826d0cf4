"""Engine throughput: replay 1024 rows x `AiM MAC_ABK 64 0xffffffff <row>` on aim-gddr6.

32 channels x 1024 rows x 64 columns = 2,097,152 all-bank MAC commands (plus the ACT_AB / PREA /
refresh commands the controller inserts). Prints total cycles, wall seconds with the numba cache
warm, and DRAM commands per second. Target on a 2-core machine: at least 20 million commands/s.

    python benchmarks/bench_engine.py [--rows N] [--slow] [--repeat K]
"""

from __future__ import annotations

import argparse
import time

from pimsim.config import load_config
from pimsim.engine import simulate_streams
from pimsim.trace import parse_trace


def make_trace(rows: int) -> str:
    return "\n".join(f"AiM MAC_ABK 64 0xffffffff {r}" for r in range(rows)) + "\nAiM EOC\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--slow", action="store_true", help="command-by-command mode")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config("aim-gddr6")
    text = make_trace(args.rows)
    # warm the numba cache (compiles on the very first run only)
    simulate_streams(cfg, parse_trace(make_trace(2), cfg).streams, fast=not args.slow)
    best = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        trace = parse_trace(text, cfg, "bench")
        t1 = time.perf_counter()
        res = simulate_streams(cfg, trace.streams, fast=not args.slow)
        t2 = time.perf_counter()
        if best is None or t2 - t0 < best[0]:
            best = (t2 - t0, t1 - t0, t2 - t1, res)
    wall, parse_s, sim_s, res = best
    cmds = res.command_counts
    total = sum(cmds.values())
    print(f"mode                 {'command-by-command' if args.slow else 'fast (closed-form runs)'}")
    print(f"rows x channels      {args.rows} x {cfg.org.channels}")
    print(f"MAC_AB commands      {cmds.get('MAC_AB', 0):,}")
    print(f"all DRAM commands    {total:,}  {dict(sorted(cmds.items()))}")
    print(f"total cycles         {res.cycles:,}  ({cfg.timing.ns(res.cycles) / 1e3:,.1f} us)")
    print(f"wall seconds         {wall:.4f}  (parse {parse_s:.4f}, simulate {sim_s:.4f})")
    print(f"commands per second  {total / wall / 1e6:,.1f} million (target >= 20)")


if __name__ == "__main__":
    main()
