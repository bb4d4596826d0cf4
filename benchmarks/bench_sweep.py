"""Sweep throughput: a 48-point design-space sweep on local worker processes.

Default: examples/sweep_design.toml, gpt2-small with 64 generated tokens a point over channels
x banks x ASIC clock x refresh x schedule (48 points), 2 local worker processes, a fresh store.
Prints the wall time and points per minute; the target on this 2-core machine is under 10
minutes.

    python benchmarks/bench_sweep.py [--spec FILE] [--workers 2] [--tokens 64] [--db FILE]
                                     [--cluster ADDRESS]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from workloads import sweeps as S

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "examples" / "sweep_design.toml"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64, help="tokens a point (default 64)")
    ap.add_argument("--cluster", help="Dask scheduler address instead of local processes")
    ap.add_argument("--db", help="store (default: a fresh temporary file)")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args()

    spec_path = Path(a.spec)
    import tomllib

    raw = tomllib.loads(spec_path.read_text())
    raw["tokens"] = a.tokens
    spec = S.spec_from_dict(raw, name=str(raw.get("name", spec_path.stem)), path=spec_path)
    with tempfile.TemporaryDirectory() as tmp:
        db = a.db or str(Path(tmp) / "bench.db")
        t0 = time.perf_counter()
        res = S.run_sweep(spec, db, workers=a.workers, cluster=a.cluster, progress=a.progress)
        wall = time.perf_counter() - t0
        df = res.df
    ok = df[df["status"] == "ok"]
    where = a.cluster or f"{a.workers} local worker processes"
    print(f"{len(df)} points ({spec.points[0].model}, {a.tokens} tokens each) on {where}: "
          f"{res.counts['ok']} ok, {res.counts['invalid']} invalid, {res.counts['error']} errors")
    print(f"  wall {wall:.1f} s = {wall / 60:.2f} min, {res.n_run / wall * 60:.1f} points/min "
          f"(target: under 10 min)")
    if len(ok):
        print(f"  per point: compile {ok['compile_s'].sum():.1f} s in all (cached per worker), "
              f"simulation {ok['sim_s'].mean():.2f} s mean, {ok['sim_s'].max():.2f} s max; "
              f"simulated {ok['tokens'].sum() / wall:.1f} tokens per wall second")
        best = ok.loc[ok["ms_per_token"].idxmin()]
        print(f"  fastest: #{best['idx']} {best['ms_per_token']:.4f} ms/token "
              f"({', '.join(f'{p}={best[p]}' for p in spec.swept)})")


if __name__ == "__main__":
    main()
