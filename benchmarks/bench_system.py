"""Simulation speed on multi-device systems (timing only), whole process per case.

    python benchmarks/bench_system.py                 # both cases below
    python benchmarks/bench_system.py --case 7b       # llama2-7b on 8 devices, 4096 tokens
    python benchmarks/bench_system.py --case 70b      # llama2-70b on 32 devices, 512 + 3584
    python benchmarks/bench_system.py --scan          # wall per token vs size, devices, position

Targets (2-core machine, whole process, warm caches): llama2-70b on 32 GDDR6-AiM devices
(``--devices 32 --tp 32``), 512 prompt + 3584 generated tokens, under 60 s; llama2-7b on 8
devices, 4096 tokens, under 20 s. Each case runs in a fresh process (imports, first-run kernel
loading and the whole run included) after a process that fills the compiled-program cache
(``--cold``: without the cache, compilation timed too) and prints the wall time, the
simulated ms/token and the wall time per simulated token in windows of positions, so the
growth of the cost with the context is visible. ``--scan`` times a few generated tokens of
several models and device counts from positions 512 and 3584 (or the context's end), the
last 32 of 48 tokens (the memo of units simulated before warm, as in a long run) (one process,
kernels compiled first), in wall milliseconds per simulated token, against parameters, channels
and position.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = {
    "7b": dict(model="llama2-7b", devices=8, prompt=1, tokens=4096, target_s=20),
    "70b": dict(model="llama2-70b", devices=32, prompt=512, tokens=3584, target_s=60),
}

_PROBE = r"""
import json, sys, time
from pimsim.pipeline import run_system
from workloads.compiling import compile_model
from workloads.session import hw_config
a = json.loads(sys.argv[1])
t0 = time.perf_counter()
cfg = hw_config("aim-gddr6", devices=a["devices"])
c = compile_model(a["model"], cfg, cache=a["cache"])
t_compile = time.perf_counter() - t0
if a.get("compile_only"):
    raise SystemExit(0)
marks = []
def progress(pos):
    if pos % 512 == 511 or pos == a["prompt"] + a["tokens"] - 2:
        marks.append((pos, time.perf_counter()))
rep = run_system(c.programs, cfg, prompt=[0] * a["prompt"], n_tokens=a["tokens"],
                 progress=progress)
print(json.dumps({"compile_s": t_compile, "run_s": rep.wall_s, "ms_per_token": rep.ms_per_token,
                  "marks": marks, "weights_bytes": c.spec.weight_bytes(2),
                  "channels": cfg.org.channels * cfg.system.devices,
                  "first_ms": rep.per_token_ms[0], "last_ms": rep.per_token_ms[-1],
                  "mj_per_token": rep.energy.get("mj_per_token"),
                  "power_w": rep.energy.get("avg_power_w"),
                  "tokens_per_s": rep.throughput_tokens_per_s}))
"""


def _probe(a: dict) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(a)], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__))))
    return out, time.perf_counter() - t0


def run_case(name: str, cold: bool = False) -> dict:
    a = dict(CASES[name], cache=not cold)
    if not cold:  # a process that fills the compiled-program cache first (warm caches)
        out, _ = _probe(dict(a, compile_only=True))
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
    out, wall = _probe(a)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["wall_s"] = wall
    return r


SCAN = (("gpt2-xl", 1), ("llama2-7b", 1), ("llama2-7b", 8), ("llama2-13b", 8),
        ("llama2-70b", 32))


def scan(tokens: int = 48, timed: int = 32) -> None:
    import dataclasses

    from compiler.pipeline import compile_model
    from pimsim.config import load_config
    from pimsim.pipeline import run_system
    from pimsim.system import resolve
    from workloads.models.resolve import resolve_model

    base = load_config("aim-gddr6")
    print(f"{'model':<11} {'params':>7} {'devices':>7} {'channels':>8} "
          f"{'wall ms/token @512':>19} {'@late':>6} {'late pos':>8} {'sim ms/token late':>18}")
    for model, n in SCAN:
        cfg = dataclasses.replace(base, system=resolve(n, None, None))
        src, name = resolve_model(model, weights=False)
        c = compile_model(src, cfg, name=name)
        row = []
        late = min(3584, c.spec.n_ctx - tokens + 1)
        for pos in (512, late):
            stamps: list[float] = []
            rep = run_system(c.programs, cfg, prompt=[0] * pos, n_tokens=tokens,
                             skip_prompt=True,
                             progress=lambda _p, s=stamps: s.append(time.perf_counter()))
            # the last tokens: the simulator's memo is warm, as in a long run
            row.append(((stamps[-1] - stamps[-1 - timed]) / timed * 1e3, rep.ms_per_token))
        print(f"{model:<11} {c.spec.weight_bytes(1) / 1e9:6.1f}B {n:7d} "
              f"{n * cfg.org.channels:8d} {row[0][0]:19.1f} {row[1][0]:6.1f} {late:8d} "
              f"{row[1][1]:18.4f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=sorted(CASES) + ["all"], default="all")
    p.add_argument("--scan", action="store_true", help="wall per token vs model, devices, "
                                                       "position (instead of the cases)")
    p.add_argument("--cold", action="store_true", help="without the compiled-program cache "
                                                       "(compilation timed too)")
    args = p.parse_args(argv)
    if args.scan:
        scan()
        return 0
    for name in (sorted(CASES) if args.case == "all" else [args.case]):
        a = CASES[name]
        r = run_case(name, cold=args.cold)
        n = a["prompt"] + a["tokens"] - 1
        print(f"{a['model']} on {a['devices']} x aim-gddr6 (tp {a['devices']}), "
              f"{a['prompt']} prompt + {a['tokens']} tokens = {n} decode steps")
        print(f"  model {r['weights_bytes'] / 1e9:.1f} GB over {r['channels']} channels; "
              f"simulated {r['ms_per_token']:.4f} ms/token (first {r['first_ms']:.4f}, last "
              f"{r['last_ms']:.4f}), {r['tokens_per_s']:,.0f} tokens/s, "
              f"{r['mj_per_token']:.2f} mJ/token, {r['power_w']:.0f} W")
        how = "compile" if args.cold else "the cached program loaded in"
        print(f"  wall {r['wall_s']:.1f} s whole process ({how} {r['compile_s']:.1f} s, run "
              f"{r['run_s']:.1f} s); target {a['target_s']} s: "
              f"{'met' if r['wall_s'] < a['target_s'] else 'NOT met'}")
        prev_pos, prev_t = -1, None
        for pos, t in r["marks"]:
            if prev_t is not None:
                print(f"    positions {prev_pos + 1:5d}..{pos:5d}: "
                      f"{(t - prev_t) / (pos - prev_pos) * 1e3:7.1f} ms wall per simulated token")
            prev_pos, prev_t = pos, t
    return 0


if __name__ == "__main__":
    sys.exit(main())
