"""Markdown tables of the GPU model: measured against modelled (the GPT and the Llama
measurements, with the held-out check), the zoo presets modelled on one or more GPUs, and
batched decode modelled per batch size (:func:`batch_zoo_table`).

What ``python -m workloads.gpu predict`` prints. Needs only numpy and the standard library.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from workloads.gpu.calibration import (
    GATED_FIELDS,
    calibrate,
    calibrated_preset,
    cfg_from_result,
    leave_one_out,
    llama_measured_path,
    load_measured,
    transfer,
)
from workloads.gpu.model import predict
from workloads.gpu.shapes import gpu_names, shape_for
from workloads.models.shape import FP16_BYTES


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



def llama_table(measured: dict[str, Any] | str | None = None) -> str:
    """Markdown table of the Llama measurement against the model: the gated-path fit on all of
    it, the held-out prediction (:func:`leave_one_out`), the GPT-path calibration applied to the
    same shapes (what the model said before it knew the Llama path), and J/token with the GPT
    file's power fit (``power="util"``: held out, the Llama loops are not fitted)."""
    if measured is None or isinstance(measured, str):
        measured = load_measured(measured or llama_measured_path())
    doc = measured
    cal = calibrate(doc)
    loo = {(r["model"], r["pos"]): r for r in leave_one_out(doc)}
    try:
        gpt = transfer(calibrate(load_measured()), cal["gpu"].name)
    except FileNotFoundError:
        gpt = None
    pw = dataclasses.replace(gpt or cal["gpu"], **{f: getattr(cal["gpu"], f) for f in GATED_FIELDS})
    head = ["model", "pos", "measured ms", "fit ms", "fit diff %", "held-out ms", "held-out diff %",
            "GPT-path ms", "measured J", "model J", "J diff %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in doc["results"]:
        cfg = cfg_from_result(row)
        k = row["graph"].get("kernels_per_step")
        loop = row["graph"].get("power_loop") or {}
        for p, ms in row["graph"]["ms_at"].items():
            fit = predict(cal["gpu"], cfg, int(p), static_cache=True, n_kernels=k)["ms"]
            h = loo[(row["model"], int(p))]
            cells = [row["model"], p, f"{ms:.3f}", f"{fit:.3f}", f"{100 * (fit - ms) / ms:+.1f}",
                     f"{h['model_ms']:.3f}", f"{h['diff_pct']:+.1f}"]
            if gpt is not None:
                gp = predict(dataclasses.replace(gpt, gated_mem_eff=gpt.mem_eff,
                                                 gated_kernel_overhead_s=gpt.kernel_overhead_s),
                             cfg, int(p), static_cache=True, n_kernels=k)["ms"]
                cells.append(f"{gp:.3f} ({100 * (gp - ms) / ms:+.0f} %)")
            else:
                cells.append("-")
            if loop.get("position") == int(p) and loop.get("joules_per_token"):
                mj = predict(pw, cfg, int(p), static_cache=True, n_kernels=k, power="util")["joules"]
                mjm = loop["joules_per_token"]
                cells += [f"{mjm:.2f}", f"{mj:.2f}", f"{100 * (mj - mjm) / mjm:+.1f}"]
            else:
                cells += ["-", "-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"gated-path fit on {cal['gpu_measured']}: mem_eff {cal['mem_eff']:.3f}, kernel "
                 f"overhead {cal['kernel_overhead_us']:.2f} us, kernels/step "
                 f"{cal['kernels_per_layer']:.2f} x n_layer {cal['kernels_fixed']:+.1f}; fit max "
                 f"|diff| {cal['max_abs_diff_pct']:.1f} %, held-out max |diff| "
                 f"{max(abs(r['diff_pct']) for r in loo.values()):.1f} %")
    return "\n".join(lines)


def zoo_table(gpus: Sequence[str] = ("A100", "H100", "H200"), tps: Sequence[int] = (1, 2, 4, 8),
              models: Sequence[str] | None = None) -> str:
    """Markdown table: modelled ms/token and J/token (utilisation power, all boards: fitted to
    the shipped measurement on the GPU it was taken on, else the assumed idle share; the footer
    names each GPU's source) at the middle position (ideal KV read) of every zoo preset on
    ``tps`` GPUs of each of ``gpus``, with both shipped calibrations (:func:`calibrated_preset`);
    ``-`` where it does not fit."""
    names = list(models or gpu_names())
    specs = [calibrated_preset(n) for n in gpus]
    head = ["model", "params B", "GB fp16"] + [f"{g.name} x{n}" for g in specs for n in tps]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        cfg = shape_for(name)
        cells = [name, f"{cfg.n_params / 1e9:.2f}", f"{cfg.n_params * FP16_BYTES / 1e9:.0f}"]
        for g in specs:
            for n in tps:
                try:
                    r = predict(g, cfg, cfg.n_ctx // 2, tp=n, power="util")
                    cells.append(f"{r['ms']:.2f} ms {r['joules']:.1f} J")
                except ValueError:
                    cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    src = {g.name: sorted({g.power_source(shape_for(m)) for m in names}) for g in specs}
    lines.append("ms/token and J/token (utilisation power x boards; power source: "
                 + ", ".join(f"{k} {'/'.join(v)}" for k, v in src.items())
                 + ") at position n_ctx/2, batch 1, fp16; "
                 "tensor parallel over NVLink (2 ring all-reduces of d_model per layer + a logits "
                 "all-gather, latency "
                 f"{specs[0].allreduce_latency_s * 1e6:.0f} us per call [assumed]); '-': does not "
                 "fit that many GPUs' memory")
    return "\n".join(lines)



def batch_zoo_table(gpus: Sequence[str] = ("H100", "H200"),
                    models: Sequence[str] = ("llama2-7b", "llama3-8b", "llama2-13b"),
                    batches: Sequence[int] = (1, 16, 64, 256), kv_len: int = 512,
                    power: str = "util") -> str:
    """Markdown table: modelled decode tokens/s and mJ/token at each batch size (every sequence
    at KV length ``kv_len``) on one GPU of each of ``gpus``, with both shipped calibrations
    (:func:`calibrated_preset`; uncalibrated beyond batch 1), energy from ``power``; ``-`` where
    the weights and the batch's KV do not fit the GPU's memory."""
    from workloads.gpu.model import POWER_LABELS, kv_bytes_read, predict_batch

    specs = [calibrated_preset(n) for n in gpus]
    head = ["model"] + [f"{g.name} B={b}" for g in specs for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in models:
        cfg = shape_for(name)
        cells = [name]
        for g in specs:
            for b in batches:
                need = cfg.n_params * FP16_BYTES + b * kv_bytes_read(cfg, kv_len) + g.reserve_bytes
                if g.mem_bytes > 0 and need > g.mem_bytes:
                    cells.append("-")
                    continue
                r = predict_batch(g, cfg, b, kv_len, power=power)
                cells.append(f"{r['tokens_per_s']:,.0f} tok/s {r['j_per_token'] * 1e3:.1f} mJ")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"decode tokens/s of the batch and mJ per output token at KV length {kv_len}, "
                 f"fp16, one GPU; {POWER_LABELS[power]}; the batch-1 calibration's roofline "
                 "(uncalibrated beyond batch 1: python -m workloads.gpu predict --batched FILE "
                 "fits a measurement); '-': weights + the batch's KV exceed the GPU memory")
    return "\n".join(lines)
