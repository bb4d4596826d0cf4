"""Compile time of the graph lowering: a modern-shape preset (default llama2-7b) shapes-only.

Stages: build (the weightless ``meta`` model, transformers imported), import (torch.export of
its decode step -> IR), passes (shape inference, fusion, classification), lower (op-by-op
lowering, placement, program). The hardware is a config large enough to hold the model: the
given one with its channels and rows scaled up (``--channels``, ``--rows``). Target on the
2-core machine: under 20 s for llama2-7b, build excluded.

    python benchmarks/bench_compile_graph.py [--model NAME] [--hw CONFIG]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import tomllib

from compiler.frontends import import_graph
from compiler.passes.lower import lower_graph
from compiler.pipeline import GRAPH_PASSES
from pimsim.config import config_from_dict
from workloads.models import zoo


def big_config(hw: str, channels: int, rows: int):
    path = Path(hw) if hw.endswith(".toml") else \
        Path(__file__).resolve().parents[1] / "hwconfigs" / f"{hw}.toml"
    d = tomllib.loads(path.read_text())
    d["name"] = f"{d.get('name', hw)}-{channels}ch-{rows}rows"
    d["organization"]["channels"] = channels
    d["organization"]["channel_mask"] = (1 << channels) - 1
    d["organization"]["rows"] = rows
    return config_from_dict(d, str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama2-7b", choices=zoo.NAMES)
    ap.add_argument("--hw", default="pim-gpt")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--rows", type=int, default=65536)
    a = ap.parse_args()
    cfg = big_config(a.hw, a.channels, a.rows)
    t = {}
    t0 = time.perf_counter()
    src = zoo.build(a.model)
    t["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = import_graph(src)
    t["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in GRAPH_PASSES:
        g = p.run(g)
    t["passes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prog, mp = lower_graph(g, cfg, name=a.model, n_ctx=zoo.n_ctx(a.model))
    mp.check()
    t["lower"] = time.perf_counter() - t0
    total = t["import"] + t["passes"] + t["lower"]
    print(f"{a.model} on {cfg.name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
          + f"; compile {total:.2f} s (target < 20 s), {len(prog.steps)} steps, "
          f"{mp.model.weight_bytes():,} weight bytes")


if __name__ == "__main__":
    main()
