"""Start-up cost of the command line, whole process: cold kernels, warm runs, trace replay.

Measures, each in a fresh Python process:

1. first run after a fresh install: ``pimsim run gpt2-small --tokens 32`` with an empty numba
   cache and an empty program cache; the seconds spent compiling numba kernels are summed from
   numba's compile events (top-level compiles only, nested ones are inside them);
2. the same command warm (numba cache and program cache filled): whole-process wall seconds;
3. ``pimsim trace`` of the 1024-row ``MAC_ABK 64`` all-channel trace (2.1 M commands), warm.

Targets (this 2-core machine): first-run kernel compilation at most 30 s; warm ``run`` at most
3 s; warm ``trace`` at most 1 s.

    python benchmarks/bench_startup.py [--tokens 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# runs the CLI in-process and reports the seconds numba spent compiling (outermost compiles)
_PROBE = r"""
import json, sys, time
from numba.core import event
rec = event.RecordingListener()
event.register("numba:compile", rec)
from workloads.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as e:
    status = e.code
depth, start, total = 0, 0.0, 0.0
for ts, ev in rec.buffer:
    if ev.is_start:
        if depth == 0:
            start = ts
        depth += 1
    else:
        depth -= 1
        if depth == 0:
            total += ts - start
print(json.dumps({"compile_s": total, "status": status}), file=sys.stderr)
"""


def _run(args: list[str], env: dict[str, str], probe: bool = False) -> tuple[float, dict]:
    cmd = [sys.executable, "-c", _PROBE, *args] if probe else [sys.executable, "-m", "workloads.cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_startup: {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    info = json.loads(proc.stderr.strip().splitlines()[-1]) if probe else {}
    return wall, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="warm runs; the best is printed")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    run_args = ["run", "gpt2-small", "--hw", "pim-gpt", "--tokens", str(args.tokens), "--no-progress"]
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "macab.trace"
        trace.write_text("\n".join(f"AiM MAC_ABK 64 0xffffffff {r}" for r in range(1024))
                         + "\nAiM EOC\n")
        env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(tmp) / "numba"),
                   PIMSIM_CACHE_DIR=str(Path(tmp) / "programs"),
                   PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        cold_wall, cold = _run(run_args, env, probe=True)
        print(f"first run (cold caches)   {cold_wall:6.1f} s whole process, "
              f"{cold['compile_s']:.1f} s compiling numba kernels (target <= 30 s)")
        warm = min(_run(run_args, env)[0] for _ in range(args.repeat))
        print(f"warm run --tokens {args.tokens:<5}   {warm:6.2f} s whole process (target <= 3 s)")
        trace_args = ["trace", str(trace), "--hw", "aim-gddr6"]
        t_cold, t_info = _run(trace_args, env, probe=True)
        print(f"first trace (run warm)    {t_cold:6.2f} s whole process, "
              f"{t_info['compile_s']:.1f} s compiling the replay kernels")
        t_warm = min(_run(trace_args, env)[0] for _ in range(args.repeat))
        print(f"warm trace (2.1 M cmds)   {t_warm:6.2f} s whole process (target <= 1 s)")


if __name__ == "__main__":
    main()
