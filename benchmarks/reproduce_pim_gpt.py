"""The PIM-GPT paper's study, on this simulator: writes a markdown report with plots.

    python benchmarks/reproduce_pim_gpt.py [--out out/reproduce] [--tokens 8] [--prompt 128]

1. The eight GPT models on ``pim-gpt`` versus an NVIDIA T4 (analytic model, calibrated on the
   shipped GPU measurement): speedup and energy-efficiency ranges beside the paper's 41-137x
   and 123-383x.
2. Channel sweep 4/8/16/32 (gpt2-medium: the largest GPT-2 that fits four channels).
3. ASIC clock 1 GHz vs 100 MHz (the paper: at most about 20 % slower).
4. Row-buffer hit rate (the paper: about 98 %).
5. Non-VMM (ASIC) share of gpt3-xl latency (the paper: 1.16 %).
6. The same eight models against the measured GPU in ``workloads/gpu/data``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from compiler.pipeline import compile_model
from pimsim.config import load_config
from pimsim.generate import run_generation
from workloads import comparison as C
from workloads.gpu.calibration import default_measured_path
from workloads.models.resolve import resolve_model
from workloads.plots import plot_compare

MODELS = ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-small", "gpt3-medium",
          "gpt3-large", "gpt3-xl"]
ASIC_OPS = ("layernorm", "softmax", "gelu", "residual", "reduction", "embedding", "argmax")


def with_channels(cfg, n):
    return cfg.replace(org=dataclasses.replace(cfg.org, channels=n, channel_mask=0))


def with_asic_clock(cfg, mhz):
    return cfg.replace(asic=dataclasses.replace(cfg.asic, clock_mhz=mhz),
                       link=dataclasses.replace(cfg.link, clock_mhz=mhz))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/reproduce")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=128)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    base = load_config("pim-gpt")
    progs = {}
    for m in MODELS:
        src, name = resolve_model(m, weights=False)
        progs[m] = compile_model(src, base, name=name).program
        print(f"compiled {m}", flush=True)

    def run(m, cfg, prog=None):
        return run_generation(prog or progs[m], cfg, prompt=[0] * a.prompt, n_tokens=a.tokens,
                              skip_prompt=True)

    reps = {m: run(m, base) for m in MODELS}
    pos = a.prompt - 1 + a.tokens // 2
    md = ["# PIM-GPT on pimsim\n",
          f"pim-gpt config, serial schedule (as the paper), refresh on, {a.tokens} generated "
          f"tokens after a {a.prompt}-token context (positions {a.prompt - 1}..{a.prompt - 2 + a.tokens}).\n"]

    # 1 and 6: GPU comparisons
    sections = [("T4", "T4 (analytic model, per-kernel overhead calibrated on the measured GPU)")]
    try:
        meas = default_measured_path()
        sections.append((meas, "the measured GPU (CUDA graph, static KV cache)"))
    except FileNotFoundError:
        meas = None
    for gpu, label in sections:
        rows = []
        for m in MODELS:
            g = C.gpu_point(gpu, m, pos)
            r = reps[m]
            rows.append(C.CompareRow(
                model=m, hw=base.name, gpu=gpu, position=pos, pim_ms=r.ms_per_token, gpu_ms=g.ms,
                speedup=g.ms / r.ms_per_token, pim_j=r.energy["j_per_token"], gpu_j=g.joules,
                efficiency=g.joules / r.energy["j_per_token"], pim_breakdown=r.breakdown,
                pim_energy_by_component=r.energy["by_component"], row_hit_rate=r.row_hit_rate,
                gpu_source=g.source, gpu_power_source=g.power_source))
        sp = [r.speedup for r in rows]
        ef = [r.efficiency for r in rows]
        md.append(f"## PIM-GPT vs {label}\n")
        md.append("| model | PIM ms/token | GPU ms/token | speedup | PIM mJ/token | GPU mJ/token "
                  "| energy efficiency | row hits |")
        md.append("|---|---|---|---|---|---|---|---|")
        for r in rows:
            md.append(f"| {r.model} | {r.pim_ms:.4f} | {r.gpu_ms:.4f} | {r.speedup:.1f}x | "
                      f"{r.pim_j * 1e3:.3f} | {r.gpu_j * 1e3:.2f} | {r.efficiency:.1f}x | "
                      f"{r.row_hit_rate:.1%} |")
        md.append(f"\nSpeedup {min(sp):.1f}-{max(sp):.1f}x, energy efficiency "
                  f"{min(ef):.0f}-{max(ef):.0f}x" + (" (paper vs T4: 41-137x and 123-383x)."
                                                      if gpu == "T4" else ".") + "\n")
        md.append(f"GPU: {rows[0].gpu_source}.\n")
        tag = "t4" if gpu == "T4" else "measured"
        d = out / tag
        plot_compare(rows, d)
        md.append(f"![latency]({tag}/latency_breakdown.png) ![energy]({tag}/energy_breakdown.png) "
                  f"![speedup]({tag}/speedup_efficiency.png)\n")

    # 2: channel sweep
    md.append("## Channel sweep (gpt2-medium)\n")
    md.append("| channels | ms/token | speedup over 4 channels |")
    md.append("|---|---|---|")
    t4 = None
    for ch in (4, 8, 16, 32):
        cfg = with_channels(base, ch)
        src, name = resolve_model("gpt2-medium", weights=False)
        prog = compile_model(src, cfg, name=name).program
        ms = run("gpt2-medium", cfg, prog).ms_per_token
        t4 = t4 or ms
        md.append(f"| {ch} | {ms:.4f} | {t4 / ms:.2f}x |")
    md.append("")

    # 3: ASIC clock
    md.append("## ASIC clock 1 GHz vs 100 MHz\n")
    md.append("| model | 1 GHz ms/token | 100 MHz ms/token | slowdown |")
    md.append("|---|---|---|---|")
    slow_cfg = with_asic_clock(base, 100.0)
    worst = 0.0
    for m in MODELS:
        s = run(m, slow_cfg).ms_per_token
        f = reps[m].ms_per_token
        worst = max(worst, s / f - 1)
        md.append(f"| {m} | {f:.4f} | {s:.4f} | {s / f - 1:+.1%} |")
    md.append(f"\nWorst slowdown {worst:.1%} (paper: at most about 20 %).\n")

    # 4/5: row hits and non-VMM share
    x = reps["gpt3-xl"]
    asic_ms = sum(x.per_op.get(k, 0.0) for k in ASIC_OPS)
    md.append("## Row-buffer hits and non-VMM share\n")
    md.append(f"Row-buffer hit rate {min(r.row_hit_rate for r in reps.values()):.1%}-"
              f"{max(r.row_hit_rate for r in reps.values()):.1%} over the eight models (paper: "
              f"about 98 %). Non-VMM (ASIC) work is {asic_ms / x.ms_per_token:.2%} of gpt3-xl "
              f"latency (paper: 1.16 %); KV-cache writes take a further "
              f"{x.per_op['kv_write'] / x.ms_per_token:.1%} and the LayerNorm/bias parameter "
              f"fetches {x.per_op['param_fetch'] / x.ms_per_token:.1%}.\n")
    md.append(f"Generated in {time.perf_counter() - t_start:.0f} s.\n")
    (out / "report.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"report written to {out / 'report.md'}")


if __name__ == "__main__":
    main()
