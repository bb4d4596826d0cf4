"""Compile time: gpt2-xl on pim-gpt from the preset, stage by stage, through the full pipeline.

The model is the preset as a weightless ``meta``-device module (shapes only, as ``pimsim compile``
and ``pimsim run`` without ``--functional`` use it). Stages:

    build      the meta-device GPT module
    export     torch.export of its decode step (compiler.frontends.decode_step_program)
    import     ExportedProgram -> IR
    <passes>   shape_inference, fuse, fold, classify (compiler.pipeline.GRAPH_PASSES)
    lower      op-by-op lowering and placement -> (Program, GraphMapping)
               (compiler.passes.lower, the production path)
    check      GraphMapping.check (every element placed once, no overlap, fits, replay)

then the total and the mapping summary. Target on the 2-core machine: under 30 s in all for
gpt2-xl.

    python benchmarks/bench_compile.py [--model NAME ...] [--hw CONFIG]
"""

from __future__ import annotations

import argparse
import time

from compiler.frontends import decode_step_program, import_exported
from compiler.passes.lower import lower_graph
from compiler.pipeline import GRAPH_PASSES, Compiled, _context
from pimsim.config import load_config
from workloads.models.resolve import resolve_model

TARGET_S = 30.0


def bench(name: str, hw: str) -> float:
    cfg = load_config(hw)
    t: dict[str, float] = {}

    def stage(label: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        t[label] = time.perf_counter() - t0
        return out

    module, display = stage("build", lambda: resolve_model(name, weights=False))
    ep = stage("export", decode_step_program, module)
    graph = stage("import", import_exported, ep)
    for p in GRAPH_PASSES:
        label = type(p).__name__
        graph = stage(label, p.run, graph)

    program, mapping = stage("lower", lambda: lower_graph(graph, cfg, name=display,
                                                           n_ctx=_context(module)))
    stage("check", mapping.check)
    total = sum(t.values())

    print(f"compile {display} on {cfg.name} (meta-device module, full pipeline)")
    width = max(len(k) for k in t)
    for k, v in t.items():
        print(f"  {k:<{width}}  {v:8.3f} s  {v / total:6.1%}")
    verdict = "OK" if total < TARGET_S else "over target"
    print(f"  {'total':<{width}}  {total:8.3f} s  (target < {TARGET_S:.0f} s: {verdict})")
    print()
    print(Compiled(mapping.model, mapping, program).summary())
    print()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append",
                    help="preset to compile (repeatable; default gpt2-xl)")
    ap.add_argument("--hw", default="pim-gpt", help="hardware config (default pim-gpt)")
    args = ap.parse_args()
    for name in args.model or ["gpt2-xl"]:
        bench(name, args.hw)


if __name__ == "__main__":
    main()
