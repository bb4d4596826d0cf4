"""Collective costs (``pimsim.system.collective``) against device count: the closed form, and the
transfer-by-transfer fabric simulation it replaced (``tests/test_collectives.py`` holds them
equal) up to the sizes where that is still practical.

    python benchmarks/bench_collectives.py [--bytes 8192]

Prints, per device count, the wall time of one all-reduce, gather and broadcast in closed form
(best of 5) and of the all-reduce transfer by transfer (one run, up to 256 devices).
"""

from __future__ import annotations

import argparse
import time

from pimsim.interconnect import Fabric, Interconnect
from pimsim.system import collective


def best_s(fn, repeat: int = 5) -> float:
    out = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bytes", type=int, default=8192, help="bytes per device (default 8192)")
    a = ap.parse_args()
    ic = Interconnect()
    print(f"{'devices':>8} {'all_reduce':>12} {'gather':>10} {'broadcast':>10} {'transfers':>12}  "
          f"(ms per collective, {a.bytes} B per device)")
    for n in (8, 64, 256, 1024, 4096):
        ms = {op: 1e3 * best_s(lambda op=op, n=n: collective(ic, op, n, a.bytes, 10.0))
              for op in ("all_reduce", "gather", "broadcast")}
        sim = "-"
        if n <= 256:
            t = time.perf_counter()
            Fabric(ic, n).all_reduce(list(range(n)), a.bytes, reduce_ns=10.0)
            sim = f"{1e3 * (time.perf_counter() - t):.1f}"
        print(f"{n:>8} {ms['all_reduce']:>12.3f} {ms['gather']:>10.3f} {ms['broadcast']:>10.3f} "
              f"{sim:>12}")


if __name__ == "__main__":
    main()
