"""PIM vs GPU: latency and energy per token, side by side, with charts.

The PIM side is simulated (``pimsim.generate``); the GPU side is either the analytic decode
model of a named GPU (``workloads.gpu_model``: T4, A100, H100, H200, with the per-kernel overhead
calibrated on the shipped measurement) or a measured baseline JSON written by
``workloads.gpu_baseline`` (its CUDA-graph numbers: the fastest GPU path, stated in the table).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compiler.pipeline import compile_model
from pimsim.config import HwConfig
from pimsim.generate import run_generation
from workloads.gpt import get_config
from workloads.models import resolve_model


@dataclass
class GpuPoint:
    ms: float
    joules: float
    source: str


@dataclass
class CompareRow:
    model: str
    hw: str
    gpu: str
    position: int
    pim_ms: float
    gpu_ms: float
    speedup: float
    pim_j: float
    gpu_j: float
    efficiency: float  # GPU J/token over PIM J/token
    pim_breakdown: dict = field(default_factory=dict)  # fractions of time
    pim_energy_by_component: dict = field(default_factory=dict)  # J/token
    row_hit_rate: float = 0.0
    gpu_source: str = ""


def gpu_point(gpu: str, model: str, pos: int) -> GpuPoint:
    """GPU latency and energy per token at ``pos``: a measured JSON file or a modelled GPU."""
    from workloads import gpu_model as gm

    if gpu.endswith(".json") or os.path.exists(gpu):
        doc = gm.load_measured(gpu)
        rows = [r for r in doc["results"] if r["model"] == model]
        if not rows:
            raise ValueError(f"{gpu}: no measurement of {model}; it has "
                             f"{', '.join(r['model'] for r in doc['results'])}")
        row = rows[0]
        g = row["graph"]
        near = min(g["ms_at"], key=lambda p: abs(int(p) - pos))
        ms = float(g["ms_at"][near])
        jt = _measured_joules(row, ms)
        name = doc["info"].get("gpu", "GPU")
        return GpuPoint(ms, jt, f"measured {name}, CUDA graph, static KV cache, position {near}")
    cfg = get_config(model)
    spec = gm.gpu_preset(gpu)
    try:
        cal = gm.calibrate(gm.load_measured())
        spec = gm.transfer(cal, spec.name)
        note = "overhead calibrated on the shipped measurement"
    except (FileNotFoundError, ValueError, KeyError):
        note = "uncalibrated"
    p = gm.predict(spec, cfg, min(pos, cfg.n_ctx - 1))
    return GpuPoint(p["ms"], p["joules"], f"modelled {spec.name} ({note})")


def _measured_joules(row: dict, ms: float) -> float:
    for holder in (row.get("graph", {}), row.get("power", {}), row):
        for key in ("joules_per_token", "j_per_token"):
            if key in holder and holder[key] is not None:
                return float(holder[key])
    for holder in (row.get("power", {}), row):
        if "mean_power_w" in holder:
            return float(holder["mean_power_w"]) * ms / 1e3
    raise ValueError(f"measurement of {row.get('model')} has no energy figure")


def compare(models: list[str], cfg: HwConfig, gpu: str, *, prompt: int = 1, tokens: int = 8,
            schedule: str = "serial") -> list[CompareRow]:
    """One row per model: PIM simulated (tokens at positions prompt-1 ..), GPU at the mean
    position."""
    rows = []
    for m in models:
        src, name = resolve_model(m, weights=False)
        c = compile_model(src, cfg, name=name)
        rep = run_generation(c.program, cfg, prompt=[0] * prompt, n_tokens=tokens,
                             schedule=schedule, skip_prompt=True)
        pos = prompt - 1 + tokens // 2
        g = gpu_point(gpu, m, pos)
        e = rep.energy
        rows.append(CompareRow(
            model=m, hw=cfg.name, gpu=gpu, position=pos, pim_ms=rep.ms_per_token,
            gpu_ms=g.ms, speedup=g.ms / rep.ms_per_token, pim_j=e["j_per_token"],
            gpu_j=g.joules, efficiency=g.joules / e["j_per_token"],
            pim_breakdown=rep.breakdown, pim_energy_by_component=e["by_component"],
            row_hit_rate=rep.row_hit_rate, gpu_source=g.source))
    return rows


def table(rows: list[CompareRow]) -> str:
    head = (f"{'model':<12} {'PIM ms/tok':>10} {'GPU ms/tok':>10} {'speedup':>8} "
            f"{'PIM mJ/tok':>10} {'GPU mJ/tok':>10} {'energy eff.':>11}")
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r.model:<12} {r.pim_ms:10.4f} {r.gpu_ms:10.4f} {r.speedup:7.1f}x "
                   f"{r.pim_j * 1e3:10.4f} {r.gpu_j * 1e3:10.3f} {r.efficiency:10.1f}x")
    if rows:
        out.append(f"PIM: {rows[0].hw}; GPU: {rows[0].gpu_source}")
    return "\n".join(out)


def plot(rows: list[CompareRow], out_dir: str | Path) -> list[Path]:
    """PNG charts: latency breakdown, energy breakdown, speedup and efficiency bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [r.model for r in rows]
    x = np.arange(len(rows))
    files = []

    def stacked(values: list[dict], scale: list[float], ylabel: str, title: str, fname: str):
        keys = [k for k in values[0] if any(v.get(k, 0) > 0 for v in values)]
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4.5))
        bottom = np.zeros(len(rows))
        for k in keys:
            h = np.array([v.get(k, 0.0) * s for v, s in zip(values, scale)])
            ax.bar(x, h, bottom=bottom, label=k)
            bottom += h
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / fname
        fig.savefig(p, dpi=120)
        plt.close(fig)
        files.append(p)

    stacked([r.pim_breakdown for r in rows], [r.pim_ms for r in rows], "ms / token",
            f"PIM latency breakdown ({rows[0].hw})", "latency_breakdown.png")
    stacked([r.pim_energy_by_component for r in rows], [1e3] * len(rows), "mJ / token",
            f"PIM energy breakdown ({rows[0].hw})", "energy_breakdown.png")
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows) + 3), 4.5))
    for ax, key, title in ((axes[0], "speedup", "speedup over GPU"),
                           (axes[1], "efficiency", "energy efficiency over GPU")):
        vals = [getattr(r, key) for r in rows]
        ax.bar(x, vals, color="tab:green" if key == "speedup" else "tab:purple")
        for xi, v in zip(x, vals):
            ax.text(xi, v, f"{v:.0f}x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title(f"{title}\n({rows[0].gpu_source})", fontsize=9)
    fig.tight_layout()
    p = out / "speedup_efficiency.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    files.append(p)
    (out / "compare.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return files
