"""PIM vs GPU: latency and energy per token, side by side, with charts.

The PIM side is simulated (``pimsim.generate``); the GPU side is either the analytic decode
model of a named GPU (``workloads.gpu.model``: T4, A100, H100, H200, with the per-kernel overhead
calibrated on the shipped measurement) or a measured baseline JSON written by
``workloads.gpu.baseline`` (its CUDA-graph numbers: the fastest GPU path, stated in the table).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pimsim.config import HwConfig
from pimsim.errors import UserError, read_text
from pimsim.pipeline import run_system
from pimsim.report import system_label
from workloads.compiling import compile_model, system_programs
from workloads.models.presets import get_config


@dataclass
class GpuPoint:
    ms: float
    joules: float
    source: str
    power_source: str = ""  # "measured", "fitted", "utilisation" or "board" (see gpu_point)


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
    gpu_power_source: str = ""  # where the GPU's energy comes from (GpuPoint.power_source)
    # the PIM system: devices (tp x pp), tokens/s of all sequences in flight, average power
    pim_devices: int = 1
    pim_tp: int = 1
    pim_pp: int = 1
    pim_tokens_per_s: float = 0.0
    pim_power_w: float = 0.0


def _is_file_arg(gpu: str) -> bool:
    return gpu.lower().endswith(".json") or os.path.sep in gpu or os.path.exists(gpu)


def load_baseline(path: str) -> dict:
    """A measured GPU baseline (``workloads.gpu.baseline`` JSON), every figure checked
    (:func:`workloads.gpu.figures.parse_measured`); UserError if not."""
    from workloads.gpu.figures import parse_measured

    return parse_measured(read_text(path, "GPU baseline file"), path)


MAX_GPU_TP = 64  # --gpu-tp: GPUs of a modelled preset in tensor parallelism


def check_gpu_tp(gpu: str, tp: Any) -> None:
    """``tp`` (``--gpu-tp``): 1..MAX_GPU_TP GPUs of a modelled preset; a measured file is one
    GPU's measurement, so 1 only."""
    if isinstance(tp, bool) or not isinstance(tp, int) or not 1 <= tp <= MAX_GPU_TP:
        raise UserError(f"--gpu-tp {tp!r} is not a GPU count",
                        f"give an integer in 1..{MAX_GPU_TP} (GPUs in tensor parallelism)")
    if tp != 1 and _is_file_arg(gpu):
        raise UserError(f"--gpu-tp {tp}: the measured file {gpu!r} holds one GPU's measurement "
                        f"(tp 1), no measurement at tp {tp}",
                        "drop --gpu-tp, or give a GPU name (A100, H100, H200) to model "
                        "tensor parallelism")


def check_gpu(gpu: str, models: list[str], tp: Any = 1) -> None:
    """Fail now (before simulating) for an unknown GPU, a baseline without these models, or a
    ``tp`` the GPU cannot have (:func:`check_gpu_tp`)."""
    from workloads.gpu import model as gm

    if not isinstance(gpu, str) or not gpu.strip():
        raise UserError(f"--gpu {gpu!r} is empty", f"use one of {', '.join(gm.GPU_PRESETS)} or "
                        f"a measured baseline JSON")
    check_gpu_tp(gpu, tp)
    if _is_file_arg(gpu):
        doc = load_baseline(gpu)
        have = [r["model"] for r in doc["results"]]
        missing = [m for m in models if m not in have]
        if missing:
            raise UserError(f"GPU baseline file {gpu!r} has no measurement of "
                            f"{', '.join(missing)}", f"it has {', '.join(have) or 'none'}; "
                            f"compare those or measure the others")
        return
    try:
        gm.gpu_preset(gpu)
    except ValueError:
        raise UserError(f"unknown GPU {gpu!r}", f"use one of {', '.join(gm.GPU_PRESETS)} or a "
                        f"measured baseline JSON") from None


def gpu_shape(spec) -> object:
    """The shape the GPU model reads, from what the compiler learnt about a model that is not a
    preset (K/V bytes at its KV heads; the weights streamed once per token)."""
    from types import SimpleNamespace

    n_kv = getattr(spec, "n_kv_head", spec.n_head)
    n_params = getattr(spec, "n_weight_elems", None) or spec.n_params
    return SimpleNamespace(name=spec.name, n_layer=spec.n_layer, d_model=spec.d_model,
                           n_head=n_kv, d_head=spec.d_head, d_ff=spec.d_ff, vocab=spec.vocab,
                           n_ctx=spec.n_ctx, n_params=n_params + spec.n_ctx * spec.d_model)


def gpu_point(gpu: str, model: str, pos: int, shape: object | None = None, *,
              tp: int = 1, power: str = "util") -> GpuPoint:
    """GPU latency and energy per token at ``pos``: a measured JSON file or a modelled GPU
    (``shape``: the model's shape where it is not a preset; a zoo preset's shape comes from
    :func:`workloads.gpu.shapes.zoo_shape`). ``tp``: a modelled GPU's tensor parallelism (GPUs over
    NVLink; energy of all boards).

    Energy (``power_source`` of the point): a measured file's measured board power
    (``"measured"``); a modelled GPU's utilisation power (``power="util"``, the default), fitted
    to the shipped measurement of that GPU where there is one (``"fitted"``: the H200) or with
    the assumed idle share (``"utilisation"``); the datasheet board power throughout only when
    asked (``power="board"``, ``"board"``: an upper bound)."""
    from workloads.gpu import model as gm
    from workloads.gpu.calibration import calibrated_preset
    from workloads.gpu.shapes import zoo_shape
    from workloads.models import zoo
    from workloads.models.presets import PRESETS

    if _is_file_arg(gpu):
        if tp != 1:
            raise UserError(f"tp={tp} applies to a modelled GPU, not a measured file",
                            "give a GPU name (A100, H100, H200) for tensor parallelism")
        check_gpu(gpu, [model])
        doc = load_baseline(gpu)
        row = next(r for r in doc["results"] if r["model"] == model)
        g = row["graph"]
        near = min(g["ms_at"], key=lambda p: abs(int(p) - pos))
        ms = float(g["ms_at"][near])
        jt = _measured_joules(row, ms)
        name = doc["info"].get("gpu", "GPU")
        return GpuPoint(ms, jt, f"measured {name}, CUDA graph, static KV cache, position {near}, "
                                f"power: {gm.POWER_SOURCE_LABELS['measured']}", "measured")
    if power not in gm.POWER_MODELS:
        raise UserError(f"GPU power model {power!r} is not known", "use util or board")
    if shape is not None:
        cfg = shape
    elif model in zoo.NAMES and model not in PRESETS:
        cfg = zoo_shape(model)
    else:
        cfg = get_config(model)
    check_gpu(gpu, [model])
    spec = gm.gpu_preset(gpu)
    try:
        spec = calibrated_preset(spec.name)
        note = "overhead calibrated on the shipped measurement"
        if getattr(cfg, "gated_mlp", False):
            note = "gated (Llama) path calibrated on the shipped Llama measurement"
    except (FileNotFoundError, ValueError, KeyError):
        note = "uncalibrated"
    try:
        p = gm.predict(spec, cfg, min(pos, cfg.n_ctx - 1), tp=tp, power=power)
    except ValueError as e:
        raise UserError(f"GPU model: {e}", _more_gpus_fix(spec, cfg)) from None
    where = f"{tp} x {spec.name}" if tp > 1 else spec.name
    psrc = spec.power_source(cfg, power)
    return GpuPoint(p["ms"], p["joules"], f"modelled {where} ({note}), "
                                          f"power: {gm.POWER_SOURCE_LABELS[psrc]}", psrc)


def _check_gpu_memory(gpu: str, models: list[str], tp: int) -> None:
    """UserError now when a preset (GPT or zoo) does not fit ``tp`` modelled GPUs' memory."""
    from workloads.gpu import model as gm
    from workloads.gpu.shapes import shape_for
    from workloads.models import zoo
    from workloads.models.presets import PRESETS

    if _is_file_arg(gpu):
        return
    spec = gm.gpu_preset(gpu)
    for m in models:
        if m in PRESETS or m in zoo.NAMES:
            shape = shape_for(m)
            try:
                gm.check_fits(spec, shape, tp)
            except ValueError as e:
                raise UserError(f"GPU model: {e}", _more_gpus_fix(spec, shape)) from None


def _more_gpus_fix(spec, cfg) -> str:
    from workloads.gpu import model as gm

    n = gm.min_gpus(spec, cfg)
    if n is None or spec.nvlink_bw <= 0:
        return "compare on a GPU with more memory (H200: 141 GB) or on several (tp)"
    return f"model {n} or more {spec.name} GPUs in tensor parallelism (compare(..., tp={n}))"


def _measured_joules(row: dict, ms: float) -> float:
    for holder in (row.get("graph", {}), row.get("power", {}), row):
        for key in ("joules_per_token", "j_per_token"):
            if key in holder and holder[key] is not None:
                return float(holder[key])
    for holder in (row.get("power", {}), row):
        if "mean_power_w" in holder:
            return float(holder["mean_power_w"]) * ms / 1e3
    raise UserError(f"the GPU measurement of {row.get('model')} has no energy figure",
                    "measure it again with power sampling (python -m workloads.gpu measure gpt)")


def compare_rows(models: list[str], cfg: HwConfig, gpu: str, *, prompt: int = 1,
                 tokens: int = 8, schedule: str = "serial", cache: bool = False,
                 show: bool = False, tp: int = 1, power: str = "util") -> list[CompareRow]:
    """One row per model: PIM simulated (tokens at positions prompt-1 ..), GPU at the mean
    position (the library entry point with its input checks is :func:`workloads.session.compare`).
    ``cache``: use the compiled-program cache (:mod:`workloads.compile_cache`). ``tp``: GPUs of
    a modelled preset in tensor parallelism, ``power`` its power model (:func:`gpu_point`)."""
    check_gpu(gpu, models, tp)
    _check_gpu_memory(gpu, models, tp)  # a preset that cannot fit fails before simulating
    rows = []
    for m in models:
        c = compile_model(m, cfg, cache=cache, show_progress=show)
        rep = run_system(system_programs(c, cfg), cfg, prompt=[0] * prompt, n_tokens=tokens,
                         schedule=schedule, skip_prompt=True)
        pos = prompt - 1 + tokens // 2
        from workloads.models import zoo
        from workloads.models.presets import PRESETS

        known = m in PRESETS or m in zoo.NAMES  # shapes the GPU model reads from the preset
        g = gpu_point(gpu, m, pos, None if known else gpu_shape(c.spec), tp=tp, power=power)
        e = rep.energy
        rows.append(CompareRow(
            model=m, hw=cfg.name, gpu=gpu, position=pos, pim_ms=rep.ms_per_token,
            gpu_ms=g.ms, speedup=g.ms / rep.ms_per_token, pim_j=e["j_per_token"],
            gpu_j=g.joules, efficiency=g.joules / e["j_per_token"],
            pim_breakdown=rep.breakdown, pim_energy_by_component=e["by_component"],
            row_hit_rate=rep.row_hit_rate, gpu_source=g.source, gpu_power_source=g.power_source,
            pim_devices=cfg.system.devices, pim_tp=cfg.system.tp, pim_pp=cfg.system.pp,
            pim_tokens_per_s=rep.throughput_tokens_per_s,
            pim_power_w=e.get("avg_power_w", 0.0)))
    return rows


def table(rows: list[CompareRow]) -> str:
    head = (f"{'model':<12} {'PIM ms/tok':>10} {'GPU ms/tok':>10} {'speedup':>8} "
            f"{'PIM mJ/tok':>10} {'GPU mJ/tok':>10} {'energy eff.':>11}")
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r.model:<12} {r.pim_ms:10.4f} {r.gpu_ms:10.4f} {r.speedup:7.1f}x "
                   f"{r.pim_j * 1e3:10.4f} {r.gpu_j * 1e3:10.3f} {r.efficiency:10.1f}x")
    for r in rows:  # one footer per model: its own system tokens/s, power and GPU source
        who = f"{r.model}: " if len(rows) > 1 else ""
        sysm = (f", {r.pim_tokens_per_s:,.0f} system tokens/s (all sequences in flight), "
                f"{r.pim_power_w:.0f} W" if r.pim_devices > 1 else "")
        out.append(f"{who}PIM: {system_label(r.hw, r.pim_devices, r.pim_tp, r.pim_pp)}{sysm}; "
                   f"GPU: {r.gpu_source}")
    return "\n".join(out)
