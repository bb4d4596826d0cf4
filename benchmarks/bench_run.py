"""End-to-end simulation speed: simulated tokens per wall second.

Default: gpt2-xl on pim-gpt, 1 prompt token + 1024 generated tokens, timing only (the model is a
weightless meta-device module), fast executor; then functional mode vs timing mode on a smaller
model to report the slowdown ratio, with the floor this machine's memory read bandwidth puts under
functional mode (every weight is read once per token: the weights alone, and the DRAM rows the
MAC kernels stream for them).

Targets (this 2-core machine): gpt2-xl 1 + 1024 tokens under 8 s; functional at most 3x slower.

    python benchmarks/bench_run.py [--model gpt2-xl] [--tokens 1024] [--func-model gpt2-small]
                                   [--func-tokens 32]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from compiler.pipeline import compile_model
from pimsim.config import load_config
from pimsim.functional import streamed_bytes
from pimsim.generate import run_generation
from workloads.models.resolve import resolve_model
from workloads.validation import functional_executor


def read_bandwidth_gbs(n_bytes: int = 1 << 29) -> float:
    """This host's memory read bandwidth: a large float32 sum on one thread and split over
    two (numpy releases the GIL), the best of three tries of each, in GB/s."""
    a = np.ones(n_bytes // 4, np.float32)
    halves = (a[: a.size // 2], a[a.size // 2:])
    best = 0.0
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            t0 = time.perf_counter()
            a.sum()
            best = max(best, a.nbytes / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            list(pool.map(np.sum, halves))
            best = max(best, a.nbytes / (time.perf_counter() - t0))
    return best / 1e9


def weight_bytes(prog) -> tuple[int, int]:
    """Bytes of weights the PIM banks read per token (every matrix once, 16-bit data), and the
    bytes of DRAM rows the functional MAC kernels stream for them (pimsim.functional.
    streamed_bytes: whole rows where a row is at least half used)."""
    return (2 * sum(m.out_dim * m.in_dim for m in prog.matrices.values()),
            sum(streamed_bytes(m) for m in prog.matrices.values()))


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
    print(f"         compile {t_compile:.1f} s, simulate {wall:.1f} s (target < 8 s), "
          f"{steps / wall:.1f} simulated tokens per wall second")
    print(f"         {rep.ms_per_token:.4f} ms/token simulated, row hits {rep.row_hit_rate:.2%}")

    src, name = resolve_model(a.func_model, weights=True)
    c = compile_model(src, cfg, name=name)
    t0 = time.perf_counter()
    r_t = run_generation(c.program, cfg, prompt=[0], n_tokens=a.func_tokens)
    wall_t = time.perf_counter() - t0
    fx = functional_executor(c, cfg, exact=False)
    run_generation(c.program, cfg, prompt=[0], n_tokens=2, functional=fx)  # numba cache warm
    t0 = time.perf_counter()
    r_f = run_generation(c.program, cfg, prompt=[0], n_tokens=a.func_tokens, functional=fx)
    wall_f = time.perf_counter() - t0
    assert r_f.cycles == r_t.cycles, "functional mode must not change the timing"
    print(f"function {name}: {a.func_tokens} tokens timing-only {wall_t:.2f} s, functional "
          f"{wall_f:.2f} s: {wall_f / wall_t:.2f}x (target <= 3x)")
    bw = read_bandwidth_gbs()
    wb, sb = weight_bytes(c.program)
    per_tok_ms = wall_t / a.func_tokens * 1e3
    for label, nb in (("weights", wb), ("rows streamed", sb)):
        floor_ms = nb / (bw * 1e9) * 1e3
        print(f"         floor ({label}): {nb / 1e6:.0f} MB per token at {bw:.1f} GB/s read "
              f"bandwidth = {floor_ms:.1f} ms/token against {per_tok_ms:.1f} ms/token timing-only: "
              f"functional >= {(per_tok_ms + floor_ms) / per_tok_ms:.2f}x serial, "
              f"{max(per_tok_ms, floor_ms) / per_tok_ms:.2f}x with the timing wholly beside the "
              f"numbers")


if __name__ == "__main__":
    main()
