"""Analytic batch-1 GPT decode model for GPUs, calibrated against measurement.

Per decoded token (batch 1, fp16 weights)::

    bytes   = weight bytes streamed + KV bytes read
    time    = max(bytes / (BW * mem_eff), flops / (peak * compute_eff)) + n_kernels * kernel_overhead
    energy  = power * time,   power = board power            (``power="board"``, the default)
                              or idle + dyn * u              (``power="util"``, u = bytes / (time * BW))

* weight bytes streamed: every parameter once in fp16 except the position table, of which one row
  is read (the tied LM head streams ``wte`` in full);
* KV bytes read: ``2 * n_layer * n_head * d_head * 2 B`` per cached position, over ``pos + 1``
  positions (an ideal kernel), or over all ``n_ctx`` slots with ``static_cache=True``, which is what
  the measured CUDA-graph path (:mod:`workloads.gpu_baseline`) does: it attends over its whole
  preallocated buffer with the tail masked;
* ``n_kernels``: kernels per decode step, ``kernels_per_layer * n_layer + kernels_fixed`` (the
  counts that torch.profiler saw for the graph path, 15-18 per layer; the measured count is used
  where it is known).

GPU presets (memory bandwidth, dense FP16 rate, board power) are from
the project hardware reference (public vendor specifications), section 5 ("GPU baselines"): T4 320 GB/s, 65 TFLOPS,
70 W; A100 SXM 80GB 2.04 TB/s, 312 TFLOPS, 400 W; H100 SXM 3.35 TB/s, 989 TFLOPS, 700 W; H200
4.8 TB/s, 989 TFLOPS, 700 W. Idle power (15 % of board power) is an assumption; the default
bandwidth efficiency (0.70), per-kernel overhead (3.4 us) and kernel counts are the rounded H200
calibration; :func:`calibrate` fits them to a measured JSON from :mod:`workloads.gpu_baseline`
(``workloads/data/gpu_measured_<gpu>.json``). Carrying a calibration to another GPU
(:func:`transfer`) assumes the same software path and per-kernel cost: a lead, not a measurement.

Needs only numpy and the standard library (it takes any object with GPTConfig's fields).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

FP16_BYTES = 2
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HARDWARE_REF = "public vendor specifications (project hardware reference, GPU baselines)"


@dataclasses.dataclass(frozen=True)
class GPUSpec:
    """A GPU for the analytic model. Rates in SI units (bytes/s, FLOP/s, W, s)."""

    name: str
    mem_bw: float                  # peak memory bandwidth, bytes/s
    peak_flops: float              # dense FP16 FLOP/s
    board_w: float                 # board power, W
    idle_w: float                  # idle board power, W (assumed 15 % of board power)
    dyn_w: float | None = None     # W per unit bandwidth utilisation (None: board_w - idle_w)
    # defaults: the H200 calibration of workloads/data/gpu_measured_h200.json, rounded
    mem_eff: float = 0.70          # achieved / peak bandwidth when streaming weights
    compute_eff: float = 0.5       # achieved / peak FLOP/s (irrelevant at batch 1)
    kernel_overhead_s: float = 3.4e-6  # per kernel in a CUDA graph: launch gap + small-kernel floor
    kernels_per_layer: float = 16.3
    kernels_fixed: float = 6.0
    source: str = HARDWARE_REF

    def n_kernels(self, cfg: Any) -> float:
        return self.kernels_per_layer * cfg.n_layer + self.kernels_fixed


def _preset(name: str, bw: float, flops: float, watts: float) -> GPUSpec:
    return GPUSpec(name=name, mem_bw=bw, peak_flops=flops, board_w=watts, idle_w=0.15 * watts)


GPU_PRESETS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        _preset("T4", 320e9, 65e12, 70.0),
        _preset("A100", 2.04e12, 312e12, 400.0),
        _preset("H100", 3.35e12, 989e12, 700.0),
        _preset("H200", 4.8e12, 989e12, 700.0),
    )
}


def gpu_preset(name: str) -> GPUSpec:
    """``T4``, ``A100``, ``H100`` or ``H200`` (case-insensitive; a full device name such as
    'NVIDIA H100 80GB HBM3' works too)."""
    key = name.upper()
    if key in GPU_PRESETS:
        return GPU_PRESETS[key]
    for k in sorted(GPU_PRESETS, key=len, reverse=True):
        if k in key.split() or k in key.replace("-", " ").split() or k in key:
            return GPU_PRESETS[k]
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPU_PRESETS)}")


# --------------------------------------------------------------------------------------------
# Bytes, FLOPs, prediction
# --------------------------------------------------------------------------------------------


def weight_bytes_streamed(cfg: Any, bytes_per_param: int = FP16_BYTES) -> int:
    """Weight bytes read per token: every parameter once, but only one row of ``wpe``."""
    return (cfg.n_params - cfg.n_ctx * cfg.d_model + cfg.d_model) * bytes_per_param


def kv_bytes_read(cfg: Any, pos: int, *, static_cache: bool = False, bytes_per_el: int = FP16_BYTES) -> int:
    """K and V bytes read by the attention of the token at ``pos`` (``pos + 1`` positions,
    or all ``n_ctx`` slots for a static cache)."""
    n = cfg.n_ctx if static_cache else pos + 1
    return 2 * cfg.n_layer * cfg.n_head * cfg.d_head * n * bytes_per_el


def decode_flops(cfg: Any, pos: int) -> int:
    """Multiply-adds x 2 of one decode step (matrix-vector products and attention)."""
    d, a, f = cfg.d_model, cfg.n_head * cfg.d_head, cfg.d_ff
    per_layer = 2 * (3 * d * a + a * d + 2 * d * f) + 2 * 2 * a * (pos + 1)
    return cfg.n_layer * per_layer + 2 * cfg.vocab * d


def predict(gpu: GPUSpec | str, model_cfg: Any, pos: int, *, static_cache: bool = False,
            n_kernels: float | None = None, power: str = "board") -> dict[str, float]:
    """Time and energy of one decode step at position ``pos``.

    Returns ``ms``, ``joules``, ``watts`` and the parts (``bytes``, ``mem_ms``, ``compute_ms``,
    ``overhead_ms``, ``n_kernels``, ``bw_util``). ``power``: ``board`` (board power throughout)
    or ``util`` (``idle_w + dyn_w x u``, u = achieved/peak bandwidth, at most board power;
    ``dyn_w`` defaults to board - idle, :func:`calibrate` fits it).
    """
    g = gpu_preset(gpu) if isinstance(gpu, str) else gpu
    if not 0 <= pos < model_cfg.n_ctx:
        raise ValueError(f"position {pos} outside [0, {model_cfg.n_ctx})")
    nbytes = weight_bytes_streamed(model_cfg) + kv_bytes_read(model_cfg, pos, static_cache=static_cache)
    mem_s = nbytes / (g.mem_bw * g.mem_eff)
    comp_s = decode_flops(model_cfg, pos) / (g.peak_flops * g.compute_eff)
    nk = g.n_kernels(model_cfg) if n_kernels is None else n_kernels
    over_s = nk * g.kernel_overhead_s
    t = max(mem_s, comp_s) + over_s
    util = nbytes / (t * g.mem_bw)
    if power == "board":
        watts = g.board_w
    elif power == "util":
        dyn = g.board_w - g.idle_w if g.dyn_w is None else g.dyn_w
        watts = min(g.board_w, g.idle_w + dyn * min(1.0, util))
    else:
        raise ValueError(f"power must be 'board' or 'util', got {power!r}")
    return {"ms": t * 1e3, "joules": watts * t, "watts": watts, "bytes": float(nbytes),
            "mem_ms": mem_s * 1e3, "compute_ms": comp_s * 1e3, "overhead_ms": over_s * 1e3,
            "n_kernels": float(nk), "bw_util": util}


# --------------------------------------------------------------------------------------------
# Measurements and calibration
# --------------------------------------------------------------------------------------------


LLAMA_SUFFIX = "_llama.json"


def default_measured_path() -> str:
    """The shipped GPT measurement (``workloads/data/gpu_measured_*.json``, the first by name,
    leaving out the Llama files ``*_llama.json``: the calibration needs GPT presets)."""
    paths = [p for p in sorted(glob.glob(os.path.join(DATA_DIR, "gpu_measured_*.json")))
             if not p.endswith(LLAMA_SUFFIX)]
    if not paths:
        raise FileNotFoundError(f"no gpu_measured_*.json under {DATA_DIR}")
    return paths[0]


def llama_measured_path() -> str:
    """The shipped Llama measurement (``workloads/data/gpu_measured_*_llama.json``, written by
    :mod:`workloads.gpu_baseline_llama`; same schema, so ``load_measured`` and ``pimsim compare
    --gpu FILE`` read it)."""
    paths = sorted(glob.glob(os.path.join(DATA_DIR, "gpu_measured_*" + LLAMA_SUFFIX)))
    if not paths:
        raise FileNotFoundError(f"no gpu_measured_*{LLAMA_SUFFIX} under {DATA_DIR}")
    return paths[0]


def load_measured(path: str | None = None) -> dict[str, Any]:
    """Read a JSON written by :mod:`workloads.gpu_baseline` (default: the shipped one)."""
    with open(path or default_measured_path()) as f:
        doc = json.load(f)
    for key in ("method", "info", "results"):
        if key not in doc:
            raise ValueError(f"{path}: not a gpu_baseline measurement (no {key!r})")
    return doc


@dataclasses.dataclass(frozen=True)
class _Cfg:
    """The GPTConfig fields the model needs, rebuilt from a measured result row."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    d_head: int
    vocab: int
    n_ctx: int
    n_params: int

    @property
    def d_ff(self) -> int:
        return 4 * self.d_model


def cfg_from_result(row: dict[str, Any]) -> Any:
    """A config for a result row: the workloads preset if importable, else the row's own fields."""
    try:
        from workloads.gpt import get_config

        return get_config(row["model"])
    except Exception:
        return _Cfg(row["model"], row["n_layer"], row["d_model"], row["n_head"], row["d_head"],
                    row["vocab"], row["n_ctx"], row["params"])


def _points(doc: dict[str, Any]) -> list[tuple[str, Any, int, float, float | None]]:
    """(model, cfg, pos, measured graph ms, measured kernels per step) for every timed point."""
    pts = []
    for row in doc["results"]:
        cfg = cfg_from_result(row)
        k = row.get("graph", {}).get("kernels_per_step")
        for p, ms in row["graph"]["ms_at"].items():
            pts.append((row["model"], cfg, int(p), float(ms), float(k) if k else None))
    return pts


def calibrate(measured: dict[str, Any] | str | None = None, gpu: GPUSpec | str | None = None, *,
              fit_efficiency: bool = True) -> dict[str, Any]:
    """Fit per-kernel overhead (and bandwidth efficiency) to the measured CUDA-graph times.

    Model for each measured point: ``t = bytes / BW * (1 / mem_eff) + n_kernels * overhead``
    with the static-cache KV bytes (the measured path reads its whole buffer) and the measured
    kernel count per step where recorded (else the preset's formula). Least squares on relative
    error; ``mem_eff`` is kept in (0, 1] and the overhead >= 0. Where power was measured, the
    mean board power of the graph loops is fitted as ``idle_w + dyn_w * bw_util`` (used by
    ``predict(..., power="util")``; ``power="board"`` keeps the datasheet board power). Kernel
    counts per step are fitted as ``kernels_per_layer * n_layer + kernels_fixed``.

    Returns ``gpu`` (the calibrated :class:`GPUSpec`), ``mem_eff``, ``kernel_overhead_us``,
    ``rows`` (per preset: measured and model ms, diff %, and power/energy where measured),
    ``max_abs_diff_pct`` and ``mean_abs_diff_pct``.
    """
    doc = load_measured(measured) if measured is None or isinstance(measured, str) else measured
    g0 = gpu_preset(gpu or doc["info"].get("gpu") or "") if not isinstance(gpu, GPUSpec) else gpu
    pts = _points(doc)
    # fit kernel counts per layer/fixed from the measured counts, for the formula
    kc = {(m, cfg.n_layer): k for m, cfg, _, _, k in pts if k}
    if len(kc) >= 2 and len({nl for _, nl in kc}) >= 2:
        A = np.array([[nl, 1.0] for (_, nl) in kc])
        kpl, kfix = np.linalg.lstsq(A, np.array(list(kc.values())), rcond=None)[0]
        g0 = dataclasses.replace(g0, kernels_per_layer=float(kpl), kernels_fixed=float(kfix))
    x_mem = np.array([(weight_bytes_streamed(cfg) + kv_bytes_read(cfg, p, static_cache=True)) / g0.mem_bw
                      for _, cfg, p, _, _ in pts])
    x_k = np.array([k if k else g0.n_kernels(cfg) for _, cfg, _, _, k in pts])
    y = np.array([ms / 1e3 for _, _, _, ms, _ in pts])
    w = 1.0 / y
    if fit_efficiency:
        A = np.stack([x_mem, x_k], 1) * w[:, None]
        inv_eff, ovh = np.linalg.lstsq(A, y * w, rcond=None)[0]
        if inv_eff < 1.0 or ovh < 0:  # outside the physical range: pin the offending term
            inv_eff = max(inv_eff, 1.0)
            ovh = max(0.0, float(np.sum(w * w * x_k * (y - inv_eff * x_mem)) / np.sum(w * w * x_k * x_k)))
    else:
        inv_eff = 1.0 / g0.mem_eff
        ovh = max(0.0, float(np.sum(w * w * x_k * (y - inv_eff * x_mem)) / np.sum(w * w * x_k * x_k)))
    g = dataclasses.replace(g0, mem_eff=float(1.0 / inv_eff), kernel_overhead_s=float(ovh))

    # power: P = idle + slope * util, from the graph power loops
    pw = []
    for row in doc["results"]:
        loop = row.get("graph", {}).get("power_loop") or {}
        if loop.get("mean_power_w") and loop.get("ms_per_token"):
            cfg = cfg_from_result(row)
            nbytes = weight_bytes_streamed(cfg) + kv_bytes_read(cfg, loop.get("position", 0), static_cache=True)
            pw.append((nbytes / (loop["ms_per_token"] / 1e3 * g.mem_bw), loop["mean_power_w"]))
    power_fit = None
    if len(pw) >= 2:
        u, pwr = np.array(pw).T
        slope, p0 = np.polyfit(u, pwr, 1)
        power_fit = {"idle_w": float(p0), "w_per_unit_bw_util": float(slope),
                     "w_at_full_bw": float(p0 + slope)}
        g = dataclasses.replace(g, idle_w=float(p0), dyn_w=float(max(slope, 0.0)))

    rows = []
    for row in doc["results"]:
        cfg = cfg_from_result(row)
        k = row.get("graph", {}).get("kernels_per_step")
        diffs, meas, mod = [], {}, {}
        for p, ms in row["graph"]["ms_at"].items():
            pred = predict(g, cfg, int(p), static_cache=True, n_kernels=k)["ms"]
            meas[p], mod[p] = float(ms), pred
            diffs.append(100.0 * (pred - ms) / ms)
        out = {"model": row["model"], "measured_ms": meas, "model_ms": mod,
               "diff_pct": float(np.mean(diffs)), "max_abs_diff_pct": float(np.max(np.abs(diffs)))}
        loop = row.get("graph", {}).get("power_loop") or {}
        if loop.get("mean_power_w"):
            pu = predict(g, cfg, loop.get("position", 0), static_cache=True, n_kernels=k, power="util")
            out.update(measured_w=loop["mean_power_w"], model_w=pu["watts"],
                       measured_j=loop.get("joules_per_token"), model_j=pu["joules"],
                       energy_diff_pct=100.0 * (pu["joules"] - loop["joules_per_token"]) / loop["joules_per_token"])
        rows.append(out)
    allabs = [r["max_abs_diff_pct"] for r in rows]
    return {"gpu": g, "gpu_measured": doc["info"].get("gpu"), "mem_eff": g.mem_eff,
            "kernel_overhead_us": g.kernel_overhead_s * 1e6,
            "kernels_per_layer": g.kernels_per_layer, "kernels_fixed": g.kernels_fixed,
            "power_fit": power_fit, "rows": rows,
            "max_abs_diff_pct": float(max(allabs)), "mean_abs_diff_pct": float(np.mean(np.abs([r["diff_pct"] for r in rows])))}


def transfer(calibration: dict[str, Any], name: str) -> GPUSpec:
    """Another preset with the calibrated efficiency, per-kernel overhead and kernel counts
    (an assumption: same software path; the datasheet bandwidth and power stay the preset's)."""
    g, c = gpu_preset(name), calibration["gpu"]
    return dataclasses.replace(g, mem_eff=c.mem_eff, kernel_overhead_s=c.kernel_overhead_s,
                               kernels_per_layer=c.kernels_per_layer, kernels_fixed=c.kernels_fixed)


def compare_table(measured: dict[str, Any] | str | None = None, calibration: dict[str, Any] | None = None,
                  gpus: Sequence[str] = ("T4", "A100", "H100", "H200")) -> str:
    """Markdown table: per preset measured graph ms (middle position) and J/token, the calibrated
    model and its difference, eager ms, then model ms/token at the middle position (ideal KV
    read, ``pos + 1`` positions) on each GPU in ``gpus`` with the calibrated overheads."""
    doc = load_measured(measured) if measured is None or isinstance(measured, str) else measured
    cal = calibration or calibrate(doc)
    specs = [transfer(cal, n) for n in gpus]
    head = ["model", "measured ms", "model ms", "diff %", "eager ms", "W", "J/token", "model J"]
    head += [f"{n} ms" for n in gpus]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_model = {r["model"]: r for r in cal["rows"]}
    for row in doc["results"]:
        cfg = cfg_from_result(row)
        pmid = str(row["positions"][len(row["positions"]) // 2])
        r = by_model[row["model"]]
        m, p = r["measured_ms"][pmid], r["model_ms"][pmid]
        eager = row.get("eager", {}).get("ms_at", {}).get(pmid)
        cells = [row["model"], f"{m:.3f}", f"{p:.3f}", f"{100 * (p - m) / m:+.1f}",
                 f"{eager:.2f}" if eager else "-",
                 f"{r['measured_w']:.0f}" if r.get("measured_w") else "-",
                 f"{r['measured_j']:.3f}" if r.get("measured_j") else "-",
                 f"{r['model_j']:.3f}" if r.get("model_j") else "-"]
        cells += [f"{predict(s, cfg, int(pmid))['ms']:.3f}" for s in specs]
        lines.append("| " + " | ".join(cells) + " |")
    g = cal["gpu"]
    lines.append("")
    lines.append(f"calibrated on {cal['gpu_measured']}: mem_eff {g.mem_eff:.3f}, "
                 f"kernel overhead {g.kernel_overhead_s * 1e6:.2f} us, kernels/step "
                 f"{g.kernels_per_layer:.2f} x n_layer + {g.kernels_fixed:.1f}; max |diff| "
                 f"{cal['max_abs_diff_pct']:.1f} %")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m workloads.gpu_model")
    ap.add_argument("measured", nargs="?", default=None, help="gpu_baseline JSON (default: shipped)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    print(compare_table(args.measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
