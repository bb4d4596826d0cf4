"""Decode-step trace replay: pimsim's `trace` vs the public AiM simulator, CPU time.

Emits one decode step of a model as an AiM trace (``pimsim compile --aim-trace``; default gpt2-xl
at its last position 1023 on aim-gddr6, the largest step of the presets), counts its DRAM
commands, and times

* pimsim: parsing the trace and replaying it through the host DMA (``pimsim trace``'s work,
  in-process, numba cache warm; best of ``--repeat``), and the whole ``pimsim trace`` command in
  a process of its own (interpreter start-up and imports included);
* the AiM simulator (arkhadem/aim_simulator) on the same file, when its binary is given
  (``--aim BIN`` or ``$AIM_SIM``; ``--aim-config`` or ``$AIM_CONFIG`` names its YAML, default
  ``test/example.yaml`` beside the binary's build directory): its CPU time as a child process.

Prints both, their cycles and the ratio; the target is pimsim at least 50x faster. Refresh is off
on both sides (the AiM simulator never refreshes GDDR6).

    python benchmarks/bench_aim_trace.py [--model gpt2-xl] [--pos 1023] [--aim BIN] [--keep FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compiler.pipeline import compile_model
from pimsim.aim_emit import decode_pim_cycles, write_aim_trace
from pimsim.config import load_config
from pimsim.dma import replay_trace
from pimsim.trace import load_trace
from workloads.models.resolve import resolve_model


def _child_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_aim(binary: Path, config: Path, trace: Path) -> tuple[int, float]:
    """(memory_system_cycles, CPU seconds) of one AiM simulator run."""
    before = _child_cpu_s()
    r = subprocess.run([str(binary), "-f", str(config), "-t", str(trace)], capture_output=True,
                       text=True, cwd=config.parent)
    cpu = _child_cpu_s() - before
    m = re.search(r"memory_system_cycles:\s*(\d+)", r.stdout + r.stderr)
    if r.returncode != 0 or m is None:
        sys.exit(f"AiM simulator failed (exit {r.returncode}): {(r.stdout + r.stderr)[-800:]}")
    return int(m.group(1)), cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-xl")
    ap.add_argument("--hw", default="aim-gddr6")
    ap.add_argument("--pos", type=int, default=None, help="decode position (default: the last)")
    ap.add_argument("--aim", default=os.environ.get("AIM_SIM"),
                    help="AiM simulator binary (ramulator2); default $AIM_SIM")
    ap.add_argument("--aim-config", default=os.environ.get("AIM_CONFIG"),
                    help="its YAML config; default $AIM_CONFIG or test/example.yaml of its tree")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", metavar="FILE", help="write the trace here (default: a temp file)")
    args = ap.parse_args()

    cfg = load_config(args.hw, refresh=False)
    src, name = resolve_model(args.model, weights=False)
    prog = compile_model(src, cfg, name=name).program
    pos = prog.dims["n_ctx"] - 1 if args.pos is None else args.pos
    tmp = None
    if args.keep:
        path = Path(args.keep)
    else:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / f"{args.model}_pos{pos}.trace"
    t0 = time.process_time()
    n_lines = write_aim_trace(path, prog, cfg, pos)
    emit_s = time.process_time() - t0

    replay_trace(cfg, load_trace(path, cfg))  # warm the numba cache
    best = None
    for _ in range(args.repeat):
        t0 = time.process_time()
        trace = load_trace(path, cfg)
        t1 = time.process_time()
        res, _ = replay_trace(cfg, trace)
        t2 = time.process_time()
        if best is None or t2 - t0 < best[0]:
            best = (t2 - t0, t1 - t0, t2 - t1, res)
    cpu, parse_s, replay_s, res = best
    n_cmds = sum(res.command_counts.values())
    before = _child_cpu_s()
    subprocess.run([sys.executable, "-m", "pimsim.cli", "trace", str(path), "--hw", args.hw,
                    "--no-refresh", "--json"], check=True, capture_output=True)
    proc_cpu = _child_cpu_s() - before

    print(f"trace                {args.model} on {cfg.name}, decode step at position {pos}: "
          f"{n_lines:,} lines, written in {emit_s:.1f} s CPU")
    print(f"DRAM commands        {n_cmds:,}  {dict(sorted(res.command_counts.items()))}")
    print(f"pimsim cycles        {res.cycles:,} (decode simulation's PIM time "
          f"{decode_pim_cycles(prog, cfg, pos):,})")
    print(f"pimsim CPU s         {cpu:.3f} (parse {parse_s:.3f}, replay {replay_s:.3f}); whole "
          f"`pimsim trace` process {proc_cpu:.2f}")
    if args.aim:
        binary = Path(args.aim).resolve()
        conf = (Path(args.aim_config) if args.aim_config
                else binary.parent.parent / "test" / "example.yaml").resolve()
        aim_cyc, aim_cpu = run_aim(binary, conf, path.resolve())
        print(f"AiM cycles           {aim_cyc:,} (pimsim {100 * (res.cycles - aim_cyc) / aim_cyc:+.2f} %)")
        print(f"AiM CPU s            {aim_cpu:.2f}")
        print(f"speed-up             {aim_cpu / cpu:.1f}x in-process, {aim_cpu / proc_cpu:.1f}x "
              f"whole process (target >= 50x)")
    else:
        print("AiM simulator        not run (give --aim BIN or $AIM_SIM)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
