"""Calibration of the GPU model against measurement: the shipped measured JSONs, the fit of
bandwidth efficiency, per-kernel overhead, kernel counts and power, and carrying a fit to
another GPU.

The measurements are the JSONs that :mod:`workloads.gpu.baseline` (GPT presets) and
:mod:`workloads.gpu.llama` (Llama-family shapes) write; the shipped ones live in
``workloads/gpu/data/`` (``gpu_measured_<gpu>.json``, ``gpu_measured_<gpu>_llama.json``).
:func:`calibrate` fits one software path per file (GPT, or the gated-MLP Llama path),
:func:`transfer` carries a fit to another preset (an assumption: same software path and
per-kernel cost), :func:`calibrated_preset` applies both shipped fits, and
:func:`leave_one_out` is the held-out check. Batched measurements (``measure batched``: decode
steps of B sequences, prefill steps) have their own fit, :func:`calibrate_batched` of
:mod:`workloads.gpu.batched_calibration` (re-exported here), with a held-out split by batch size
and prompt length.

Needs only numpy and the standard library.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any

import numpy as np

from workloads.gpu.batched_calibration import calibrate_batched
from workloads.gpu.model import GPUSpec, gpu_preset, kv_bytes_read, predict, weight_bytes_streamed
from workloads.models.presets import get_config
from workloads.models.shape import LLAMA_LAYOUT, DecoderShape

__all__ = ["DATA_DIR", "GATED_FIELDS", "LLAMA_SUFFIX", "calibrate", "calibrate_batched",
           "calibrated_preset", "cfg_from_result", "default_measured_path", "leave_one_out",
           "llama_measured_path", "load_measured", "serving_preset", "transfer"]

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


LLAMA_SUFFIX = "_llama.json"
BATCHED_SUFFIX = "_batched.json"


def default_measured_path() -> str:
    """The shipped GPT measurement (``workloads/gpu/data/gpu_measured_<gpu>.json``, the first by
    name; the Llama files ``*_llama.json`` and the batched ones ``*_batched.json`` carry a suffix
    after the GPU's name and are left out: the calibration needs GPT presets)."""
    paths = [p for p in sorted(glob.glob(os.path.join(DATA_DIR, "gpu_measured_*.json")))
             if re.fullmatch(r"gpu_measured_[^_]+\.json", os.path.basename(p))]
    if not paths:
        raise FileNotFoundError(f"no gpu_measured_*.json under {DATA_DIR}")
    return paths[0]


def llama_measured_path() -> str:
    """The shipped Llama measurement (``workloads/gpu/data/gpu_measured_*_llama.json``, written by
    :mod:`workloads.gpu.llama`; same schema, so ``load_measured`` and ``pimsim compare
    --gpu FILE`` read it)."""
    paths = sorted(glob.glob(os.path.join(DATA_DIR, "gpu_measured_*" + LLAMA_SUFFIX)))
    if not paths:
        raise FileNotFoundError(f"no gpu_measured_*{LLAMA_SUFFIX} under {DATA_DIR}")
    return paths[0]


def load_measured(path: str | None = None) -> dict[str, Any]:
    """Read a JSON written by :mod:`workloads.gpu.baseline` (default: the shipped one), every
    figure checked (:func:`workloads.gpu.figures.parse_measured`, a UserError otherwise)."""
    from workloads.gpu.figures import parse_measured

    path = path or default_measured_path()
    with open(path) as f:  # an OSError where it cannot be read
        text = f.read()
    return parse_measured(text, path)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    """The fields of a GPT-layout measurement row the model needs (its own ``n_params``), for a
    measured model that is not a preset."""

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
    """A config for a result row: the workloads preset if importable, else the row's own fields.
    A Llama-family row (``workloads.gpu.llama``: it records ``n_kv_head``) becomes a
    gated-MLP, untied-head, bias-free :class:`DecoderShape`, checked against its ``params``."""
    if "n_kv_head" in row:
        s = DecoderShape(name=row["model"], n_layer=row["n_layer"], d_model=row["d_model"],
                         n_head=row["n_head"], n_kv_head=row["n_kv_head"], d_head=row["d_head"],
                         d_ff=row["d_ff"], vocab=row["vocab"], n_ctx=row["n_ctx"],
                         rope_theta=float(row.get("rope_theta", 10000.0)),
                         norm_eps=float(row.get("rms_eps", 1e-5)), **LLAMA_LAYOUT)
        if "params" in row and s.n_params != row["params"]:
            raise ValueError(f"{row['model']}: a Llama shape of these fields has {s.n_params} "
                             f"parameters, the row says {row['params']}")
        return s
    try:
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

    A measurement of gated-MLP shapes (the Llama file of :mod:`workloads.gpu.llama`) is
    another software path: its fit sets the ``gated_*`` fields (efficiency, per-kernel overhead,
    kernel counts) and leaves the GPT ones; ``path`` says which (``gpt`` or ``gated``).

    Returns ``gpu`` (the calibrated :class:`GPUSpec`), ``mem_eff``, ``kernel_overhead_us``,
    ``rows`` (per preset: measured and model ms, diff %, and power/energy where measured),
    ``max_abs_diff_pct`` and ``mean_abs_diff_pct``.
    """
    doc = load_measured(measured) if measured is None or isinstance(measured, str) else measured
    g0 = gpu_preset(gpu or doc["info"].get("gpu") or "") if not isinstance(gpu, GPUSpec) else gpu
    pts = _points(doc)
    if not pts:
        raise ValueError("no measured points to calibrate on")
    gated = {bool(getattr(cfg, "gated_mlp", False)) for _, cfg, _, _, _ in pts}
    if len(gated) > 1:
        raise ValueError("a calibration is per software path: do not mix gated-MLP (Llama) and "
                         "GPT measurements in one fit")
    pre = "gated_" if gated.pop() else ""  # which GPUSpec fields this fit sets
    # fit kernel counts per layer/fixed from the measured counts, for the formula
    kc = {(m, cfg.n_layer): k for m, cfg, _, _, k in pts if k}
    if len(kc) >= 2 and len({nl for _, nl in kc}) >= 2:
        A = np.array([[nl, 1.0] for (_, nl) in kc])
        kpl, kfix = np.linalg.lstsq(A, np.array(list(kc.values())), rcond=None)[0]
        g0 = dataclasses.replace(g0, **{pre + "kernels_per_layer": float(kpl),
                                        pre + "kernels_fixed": float(kfix)})
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
        inv_eff = 1.0 / getattr(g0, pre + "mem_eff")
        ovh = max(0.0, float(np.sum(w * w * x_k * (y - inv_eff * x_mem)) / np.sum(w * w * x_k * x_k)))
    g = dataclasses.replace(g0, **{pre + "mem_eff": float(1.0 / inv_eff),
                                   pre + "kernel_overhead_s": float(ovh)})

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
    return {"gpu": g, "gpu_measured": doc["info"].get("gpu"), "path": "gated" if pre else "gpt",
            "mem_eff": getattr(g, pre + "mem_eff"),
            "kernel_overhead_us": getattr(g, pre + "kernel_overhead_s") * 1e6,
            "kernels_per_layer": getattr(g, pre + "kernels_per_layer"),
            "kernels_fixed": getattr(g, pre + "kernels_fixed"),
            "power_fit": power_fit, "rows": rows,
            "max_abs_diff_pct": float(max(allabs)),
            "mean_abs_diff_pct": float(np.mean(np.abs([r["diff_pct"] for r in rows])))}


def transfer(calibration: dict[str, Any], name: str) -> GPUSpec:
    """Another preset with the calibrated efficiency, per-kernel overhead and kernel counts
    (an assumption: same software path; the datasheet bandwidth and power stay the preset's)."""
    g, c = gpu_preset(name), calibration["gpu"]
    return dataclasses.replace(g, mem_eff=c.mem_eff, kernel_overhead_s=c.kernel_overhead_s,
                               kernels_per_layer=c.kernels_per_layer, kernels_fixed=c.kernels_fixed,
                               **{f: getattr(c, f) for f in GATED_FIELDS})


GATED_FIELDS = ("gated_mem_eff", "gated_kernel_overhead_s", "gated_kernels_per_layer",
                 "gated_kernels_fixed")


def calibrated_preset(name: str) -> GPUSpec:
    """A preset with both shipped calibrations: the GPT path from the GPT measurement, the gated
    (Llama) path from the Llama measurement, each where its file exists (else the rounded
    defaults), carried to ``name`` as :func:`transfer` does. Each file's power fit (idle W + W x
    utilisation, fitted to its measured board power) is carried only to the GPU it was measured
    on (``idle_w`` / ``dyn_w`` from the GPT file, ``gated_idle_w`` / ``gated_dyn_w`` from the
    Llama file); another GPU keeps its assumed utilisation power
    (:meth:`~workloads.gpu.model.GPUSpec.power_source` says which)."""
    g = gpu_preset(name)
    try:
        doc = load_measured()
        cal = calibrate(doc)
        g = transfer(cal, g.name)
        if cal["power_fit"] and _measured_preset(doc) == g.name:
            g = dataclasses.replace(g, idle_w=cal["gpu"].idle_w, dyn_w=cal["gpu"].dyn_w)
    except FileNotFoundError:
        pass
    try:
        doc = load_measured(llama_measured_path())
        lcal = calibrate(doc)
        lc = lcal["gpu"]
        g = dataclasses.replace(g, **{f: getattr(lc, f) for f in GATED_FIELDS})
        if lcal["power_fit"] and _measured_preset(doc) == g.name:
            g = dataclasses.replace(g, gated_idle_w=lc.idle_w, gated_dyn_w=lc.dyn_w)
    except FileNotFoundError:
        pass
    return g


def _measured_preset(doc: dict[str, Any]) -> str | None:
    """The preset name of the GPU a measurement was taken on (None: not a preset)."""
    try:
        return gpu_preset(doc["info"].get("gpu") or "").name
    except ValueError:
        return None


def batched_measured_path(gpu: str) -> str | None:
    """The shipped batched measurement of the GPU preset ``gpu``
    (``workloads/gpu/data/gpu_measured_<gpu>_batched.json``, the GPU's name lower-case), or None."""
    path = os.path.join(DATA_DIR, f"gpu_measured_{gpu_preset(gpu).name.lower()}{BATCHED_SUFFIX}")
    return path if os.path.exists(path) else None


_SERVING: dict[str, tuple[GPUSpec, str]] = {}


def serving_preset(name: str) -> tuple[GPUSpec, str]:
    """The GPU preset for batched decode and prefill, and a note saying how it was obtained.

    ``name``: a GPU preset, or a batched measurement file (``.json``, as
    ``python -m workloads.gpu measure batched`` writes; the GPU it names in ``info.gpu``): the
    preset of that GPU fitted to that file. Where a batched measurement of this GPU is shipped
    (:func:`batched_measured_path`), its fit
    (:func:`calibrate_batched`: the gated path's bandwidth efficiency and kernel overhead, the
    compute efficiency and the utilisation-power line) is applied on top of
    :func:`calibrated_preset`, and the note gives the fit's held-out error; otherwise the note
    says the model is calibrated at batch 1 only (or not at all)."""
    measured = is_measured_file(name)
    if measured:  # a batched measurement of a GPU: its fit on that GPU's preset
        from workloads.gpu.batched_calibration import load_batched

        path = os.path.abspath(name)
        key = gpu_preset(load_batched(path).get("info", {}).get("gpu") or "").name
        cache_key = (path, os.path.getmtime(path))
    else:
        key = gpu_preset(name).name
        path, cache_key = batched_measured_path(key), key
    if cache_key not in _SERVING:
        try:
            g = calibrated_preset(key)
            note = "batch-1 calibration, uncalibrated beyond batch 1"
        except (FileNotFoundError, ValueError, KeyError):
            g, note = gpu_preset(key), "uncalibrated"
        if path is not None:
            cal = calibrate_batched(path, g)
            fitted = cal["gpu"]
            fields = ["compute_eff", *GATED_FIELDS] if cal["path"] == "gated" else ["compute_eff"]
            g = dataclasses.replace(g, **{f: getattr(fitted, f) for f in fields})
            if cal["identified"]["power"]:  # the power line of the path it was fitted on
                pre = "gated_" if cal["path"] == "gated" else ""
                g = dataclasses.replace(g, **{pre + "idle_w": cal["idle_w"],
                                              pre + "dyn_w": cal["dyn_w"]})
            ho = cal["held_out_max_abs_diff_pct"]
            note = (f"calibrated on measured batched steps of {cal['gpu_measured']} "
                    f"({os.path.basename(path)}; held-out max |error| "
                    f"{'-' if ho is None else f'{ho:.1f}'} %)")
        _SERVING[cache_key] = (g, note)
    return _SERVING[cache_key]


def is_measured_file(name: str) -> bool:
    """Whether a GPU name is a measurement file (``.json``) rather than a preset's name."""
    return str(name).lower().endswith(".json")


def leave_one_out(measured: dict[str, Any] | str | None = None) -> list[dict[str, Any]]:
    """Held-out check of a calibration: for each model of the file, fit on the others and predict
    it (the fitted kernel-count formula, not its measured count). One row per measured point:
    ``model``, ``pos``, ``measured_ms``, ``model_ms``, ``diff_pct``."""
    doc = load_measured(measured) if measured is None or isinstance(measured, str) else measured
    out = []
    for row in doc["results"]:
        rest = dict(doc, results=[r for r in doc["results"] if r["model"] != row["model"]])
        g = calibrate(rest)["gpu"]
        cfg = cfg_from_result(row)
        for p, ms in row["graph"]["ms_at"].items():
            pred = predict(g, cfg, int(p), static_cache=True)["ms"]
            out.append({"model": row["model"], "pos": int(p), "measured_ms": float(ms),
                        "model_ms": pred, "diff_pct": 100.0 * (pred - ms) / ms})
    return out

