"""End-to-end simulation speed: simulated tokens per wall second.

Default: gpt2-xl on pim-gpt, 1 prompt token + 1024 generated tokens, timing only (the model is a
weightless meta-device module), fast executor; then functional mode vs timing mode on a smaller
model (gpt2-xl's functional images need about 9 GB of float32 plus the weights, more than this
machine's other work allows) to report the slowdown ratio.

Targets (this 2-core machine): gpt2-xl 1 + 1024 tokens under 60 s; functional at most 2x slower.

    python benchmarks/bench_run.py [--model gpt2-xl] [--tokens 1024] [--func-model gpt2-small]
                                   [--func-tokens 32]
"""

from __future__ import annotations

import argparse
import time

from compiler.pipeline import compile_model
from pimsim.config import load_config
from pimsim.generate import run_generation
from workloads.cli import _functional
from workloads.models import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-xl")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--hw", default="pim-gpt")
    ap.add_argument("--func-model", default="gpt2-small")
    ap.add_argument("--func-tokens", type=int, default=32)
    ap.add_argument("--schedule", default="serial", choices=["serial", "overlap"])
    a = ap.parse_args()
    cfg = load_config(a.hw)

    t0 = time.perf_counter()
    src, name = resolve_model(a.model, weights=False)
    c = compile_model(src, cfg, name=name)
    t_compile = time.perf_counter() - t0
    run_generation(c.program, cfg, prompt=[0], n_tokens=2)  # numba cache warm
    t0 = time.perf_counter()
    rep = run_generation(c.program, cfg, prompt=[0], n_tokens=a.tokens, schedule=a.schedule)
    wall = time.perf_counter() - t0
    steps = rep.prompt_tokens + rep.generated_tokens - 1
    print(f"timing   {name} on {cfg.name}: 1 prompt + {a.tokens} generated tokens "
          f"({a.schedule})")
    print(f"         compile {t_compile:.1f} s, simulate {wall:.1f} s (target < 60 s), "
          f"{steps / wall:.1f} simulated tokens per wall second")
    print(f"         {rep.ms_per_token:.4f} ms/token simulated, row hits {rep.row_hit_rate:.2%}")

    src, name = resolve_model(a.func_model, weights=True)
    c = compile_model(src, cfg, name=name)
    t0 = time.perf_counter()
    r_t = run_generation(c.program, cfg, prompt=[0], n_tokens=a.func_tokens)
    wall_t = time.perf_counter() - t0
    fx = _functional(c, cfg, exact=False)
    t0 = time.perf_counter()
    r_f = run_generation(c.program, cfg, prompt=[0], n_tokens=a.func_tokens, functional=fx)
    wall_f = time.perf_counter() - t0
    assert r_f.cycles == r_t.cycles, "functional mode must not change the timing"
    print(f"function {name}: {a.func_tokens} tokens timing-only {wall_t:.2f} s, functional "
          f"{wall_f:.2f} s: {wall_f / wall_t:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
