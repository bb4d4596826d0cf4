"""Calibration of the batched GPU model (:func:`workloads.gpu.model.predict_step`) against a
batched measurement: decode steps of ``B`` sequences and prefill steps of ``P`` prompt tokens, as
:mod:`workloads.gpu.batched` writes them (``python -m workloads.gpu measure batched``).

The measurement's rows: ``{model, phase: decode|prefill, batch, kv_len | prompt_len,
ms_per_step, tokens_per_s, power_w, j_per_token}`` (plus the shape's fields); a mixture-of-
experts measurement (:mod:`workloads.gpu.moe_batched`) is read as decode rows (:func:`moe_rows`). A decode row at KV
length ``L`` is a step of ``B`` sequences each decoding the token at position ``L``
(:func:`~workloads.gpu.model.predict_batch`); a prefill row is ``B`` prompts of ``P`` tokens
(:func:`~workloads.gpu.model.predict_prefill`).

The free parameters of one software path (the gated-MLP Llama path for Llama shapes, else the
GPT path) and what each is fitted to:

* ``mem_eff`` (achieved / peak bandwidth) and ``compute_eff`` (achieved / peak FLOP/s) and the
  per-kernel overhead (s): the step time ``t = max(bytes / (BW mem_eff), flops / (peak
  compute_eff)) + n_kernels x overhead``, least squares on relative error. The ``max`` makes it
  piecewise linear: each point is assigned to the bound that is larger under the current
  parameters, the three are solved linearly, and this repeats until no point changes sides
  (from a few starting points; the best fit is kept). A bound no fitted point reaches is not
  identified and keeps the preset's value (``identified`` says which).
* ``idle_w`` and ``dyn_w``: the measured board power against the utilisation of the fitted
  model, ``P = idle_w + dyn_w x u`` (u = the busier of bandwidth and compute utilisation, as
  ``power="util"`` computes it), least squares, where at least two points have power.

Held-out check: the fit uses decode steps at ``fit_batches`` (default 1, 4, 16, 64, 256) and
batch-1 prefill at ``fit_prompts`` (default 128, 512, 2048); every other row (other batch sizes,
other prompt lengths, batched prefill) is predicted with the fitted parameters and its error
reported (:func:`batched_table`).

Needs numpy and the standard library.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import numpy as np

from workloads.gpu.model import GPUSpec, _matmul_flops_per_token, gpu_preset, predict_step, weight_bytes_streamed
from workloads.models.shape import LLAMA_LAYOUT, DecoderShape

FIT_BATCHES = (1, 4, 16, 64, 256)
FIT_PROMPTS = (128, 512, 2048)
PHASES = ("decode", "prefill")


def load_batched(path: str) -> dict[str, Any]:
    """Read and check a batched measurement JSON (a mixture-of-experts one of
    :mod:`workloads.gpu.moe_batched` as its rows, :func:`moe_rows`); ValueError naming what
    is wrong."""
    with open(path) as f:
        try:
            doc = json.load(f)
        except ValueError as e:
            raise ValueError(f"not valid JSON ({e})") from None
    if isinstance(doc, dict) and "points" in doc and "results" not in doc:
        doc = moe_rows(doc)
    check_batched(doc)
    return doc


def moe_rows(doc: dict[str, Any]) -> dict[str, Any]:
    """A mixture-of-experts measurement (:mod:`workloads.gpu.moe_batched`: ``points`` of
    ``batch``, ``kv_len``, ``ms_per_step``, ``mean_power_w``, ``joules_per_token``) as a batched
    measurement's decode rows of its model (a zoo preset: the shape the step measured)."""
    try:
        gpu = doc.get("environment", {}).get("gpu")
        rows = [{"model": doc["model"], "phase": "decode", "batch": int(p["batch"]),
                 "kv_len": int(p["kv_len"]), "ms_per_step": float(p["ms_per_step"]),
                 "tokens_per_s": p.get("tokens_per_s"), "power_w": p.get("mean_power_w"),
                 "j_per_token": p.get("joules_per_token")} for p in doc["points"]]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"a MoE measurement's points need batch, kv_len and ms_per_step ({e!r})"
                         ) from None
    return {"info": {"gpu": gpu, "model": doc["model"]}, "results": rows}


def check_batched(doc: Any) -> None:
    """ValueError unless ``doc`` is a batched measurement with at least one timed row."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list) \
            or not isinstance(doc.get("info", {}), dict):
        raise ValueError("not a batched measurement (needs an info object and a results list)")
    if not doc["results"]:
        raise ValueError("the measurement has no results")
    for i, r in enumerate(doc["results"]):
        try:
            key = "kv_len" if r["phase"] == "decode" else "prompt_len"
            ok = (isinstance(r["model"], str) and r["phase"] in PHASES
                  and int(r["batch"]) >= 1 and int(r[key]) >= (0 if key == "kv_len" else 1)
                  and float(r["ms_per_step"]) > 0)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"result {i} lacks model, phase (decode or prefill), batch, "
                             "kv_len or prompt_len, or a positive ms_per_step")


def shape_of_row(row: dict[str, Any]) -> DecoderShape:
    """The shape a row measured: the named Llama-family shape of :mod:`workloads.gpu.llama_shapes`
    or a zoo preset, else a Llama-layout shape from the row's own fields (checked against its
    ``params`` where recorded)."""
    from workloads.gpu.llama_shapes import SHAPES
    from workloads.gpu.shapes import shape_for

    name = row["model"]
    if name in SHAPES:
        return SHAPES[name]
    try:
        return shape_for(name)
    except (ValueError, KeyError):
        pass
    try:
        n_ctx = max(int(row.get("kv_len", 0)) + 1, int(row.get("prompt_len", 0)))
        s = DecoderShape(name=name, n_layer=row["n_layer"], d_model=row["d_model"],
                         n_head=row["n_head"], n_kv_head=row["n_kv_head"], d_ff=row["d_ff"],
                         vocab=row["vocab"], n_ctx=n_ctx, **LLAMA_LAYOUT)
    except KeyError as e:
        raise ValueError(f"{name}: not a known shape and the row lacks {e}") from None
    if "params" in row and s.n_params != row["params"]:
        raise ValueError(f"{name}: a Llama shape of these fields has {s.n_params} parameters, "
                         f"the row says {row['params']}")
    return s


def _steps(row: dict[str, Any]) -> tuple[list[int], list[tuple[int, int]]]:
    """(decode positions, prefill chunks) of a row's step."""
    b = int(row["batch"])
    if row["phase"] == "decode":
        return [int(row["kv_len"])] * b, []
    return [], [(0, int(row["prompt_len"]))] * b


def row_length(row: dict[str, Any]) -> int:
    return int(row["kv_len"] if row["phase"] == "decode" else row["prompt_len"])


def is_fit_row(row: dict[str, Any], fit_batches: Sequence[int] = FIT_BATCHES,
               fit_prompts: Sequence[int] = FIT_PROMPTS) -> bool:
    """Whether a row is in the fit set (else held out)."""
    if row["phase"] == "decode":
        return int(row["batch"]) in fit_batches
    return int(row["batch"]) == 1 and int(row["prompt_len"]) in fit_prompts


def predict_row(g: GPUSpec, row: dict[str, Any], power: str = "util") -> dict[str, float]:
    """The model's prediction of a measured row's step."""
    dec, pre = _steps(row)
    return predict_step(g, shape_of_row(row), dec, pre, power=power)


def _features(g: GPUSpec, rows: list[dict[str, Any]]) -> np.ndarray:
    """Per row, at unit efficiencies (s): the weight phase's bytes / BW and FLOPs / peak, the
    attention phase's bytes / BW and FLOPs / peak, and the kernel count of the step."""
    unit = dataclasses.replace(g, mem_eff=1.0, compute_eff=1.0, kernel_overhead_s=0.0,
                               gated_mem_eff=1.0, gated_kernel_overhead_s=0.0)
    out = []
    for r in rows:
        p = predict_row(unit, r)
        cfg = shape_of_row(r)
        wb = weight_bytes_streamed(cfg, tokens=p["tokens"])
        wf = p["tokens"] * _matmul_flops_per_token(cfg)
        out.append((wb / g.mem_bw, wf / g.peak_flops, (p["bytes"] - wb) / g.mem_bw,
                    (p["flops"] - wf) / g.peak_flops, p["n_kernels"]))
    return np.array(out, dtype=float)


def _fit_time(x: np.ndarray, y: np.ndarray, start: tuple[float, float, float]):
    """Piecewise-linear least squares on relative error of
    ``y = max(a x_wb, c x_wf) + max(a x_kvb, c x_af) + o x_k`` (each phase at its own roofline)
    from ``start = (a, c, o)``; (a, c, o, residual, memory-bound mask of both phases)."""
    a, c, o = start
    w = 1.0 / y
    mem = None
    for _ in range(100):
        new = np.stack([a * x[:, 0] >= c * x[:, 1], a * x[:, 2] >= c * x[:, 3]], 1)
        if mem is not None and np.array_equal(new, mem):
            break
        mem = new
        cols = [x[:, 0] * mem[:, 0] + x[:, 2] * mem[:, 1],
                x[:, 1] * ~mem[:, 0] + x[:, 3] * ~mem[:, 1], x[:, 4]]
        use = [bool(np.any(col > 0)) for col in cols]
        A = np.stack([col for col, u in zip(cols, use) if u], 1) * w[:, None]
        sol = list(np.linalg.lstsq(A, y * w, rcond=None)[0])
        vals = [sol.pop(0) if u else v for u, v in zip(use, (a, c, o))]
        a, c, o = max(vals[0], 1.0), max(vals[1], 1.0), max(vals[2], 0.0)
    pred = np.maximum(a * x[:, 0], c * x[:, 1]) + np.maximum(a * x[:, 2], c * x[:, 3]) \
        + o * x[:, 4]
    return a, c, o, float(np.sum(((pred - y) * w) ** 2)), mem


def fit_power(u_bw: Sequence[float], u_c: Sequence[float], watts: Sequence[float]
              ) -> tuple[float, float, float | None]:
    """``P = idle + a u_bw + b u_c`` by least squares with ``a, b >= 0`` (the best of the
    subsets of free terms that keeps both non-negative); ``b`` None where the compute
    utilisation does not vary (then ``P = idle + a max(u_bw, u_c)`` as before)."""
    ub, uc, p = (np.asarray(v, float) for v in (u_bw, u_c, watts))
    u = {"a": ub, "b": uc}
    cands = []
    for free in (("a", "b"), ("a",), ("b",), ()):
        A = np.stack([np.ones_like(p), *(u[k] for k in free)], 1)
        sol, *_ = np.linalg.lstsq(A, p, rcond=None)
        if np.any(sol[1:] < 0):
            continue
        coef = dict(zip(free, sol[1:]))
        cands.append((float(np.sum((A @ sol - p) ** 2)), float(sol[0]),
                      float(coef.get("a", 0.0)), float(coef.get("b", 0.0))))
    _, idle, a, b = min(cands)
    return idle, a, (b if np.ptp(uc) > 0 else None)


def calibrate_batched(doc: dict[str, Any] | str, gpu: GPUSpec | str | None = None, *,
                      fit_batches: Sequence[int] = FIT_BATCHES,
                      fit_prompts: Sequence[int] = FIT_PROMPTS) -> dict[str, Any]:
    """Fit ``mem_eff``, ``compute_eff``, the per-kernel overhead and the power line to the
    fit rows of a batched measurement (see the module docstring); predict every row.

    Returns ``gpu`` (the fitted :class:`GPUSpec`; ``mem_eff`` and the overhead go to the
    ``gated_*`` fields for Llama shapes), ``path``, ``mem_eff``, ``compute_eff``,
    ``kernel_overhead_us``, ``idle_w``, ``dyn_w`` (None where no power was measured),
    ``identified`` (which parameters the fit rows determine), ``rows`` (per measured row: split
    ``fit`` or ``held-out``, measured and model ms and mJ/token, differences in %), and the
    max and mean |diff| % of ms over the fit and held-out rows (None where a split is empty).
    """
    if isinstance(doc, str):
        doc = load_batched(doc)
    check_batched(doc)
    name = gpu or doc.get("info", {}).get("gpu") or ""
    g0 = gpu if isinstance(gpu, GPUSpec) else gpu_preset(name)
    g0 = dataclasses.replace(g0, mem_bytes=0.0)  # what was measured fitted its GPU
    rows = list(doc["results"])
    gated = {bool(shape_of_row(r).gated_mlp) for r in rows}
    if len(gated) > 1:
        raise ValueError("a calibration is per software path: do not mix gated-MLP (Llama) and "
                         "GPT shapes in one fit")
    pre = "gated_" if gated.pop() else ""
    fit = [r for r in rows if is_fit_row(r, fit_batches, fit_prompts)]
    if len(fit) < 3:
        raise ValueError(f"{len(fit)} rows in the fit set (decode at batch {list(fit_batches)}, "
                         f"prefill at {list(fit_prompts)}): at least 3 are needed")
    x = _features(g0, fit)
    y = np.array([float(r["ms_per_step"]) / 1e3 for r in fit])
    a0 = 1.0 / getattr(g0, pre + "mem_eff")
    c0 = 1.0 / g0.compute_eff
    o0 = getattr(g0, pre + "kernel_overhead_s")
    best = min((_fit_time(x, y, (a0, c0 * s, o0)) for s in (0.25, 0.5, 1.0, 2.0, 4.0)),
               key=lambda f: f[3])
    a, c, o, _, mem = best
    identified = {"mem_eff": bool(np.any(mem)), "compute_eff": bool(np.any(~mem)),
                  "kernel_overhead": True}
    g = dataclasses.replace(g0, **{pre + "mem_eff": 1.0 / a, "compute_eff": 1.0 / c,
                                   pre + "kernel_overhead_s": o})

    # power on the fitted model's bandwidth and compute utilisation
    pw = [(r, float(r["power_w"])) for r in fit if r.get("power_w")]
    power_fit = None
    if len(pw) >= 2:
        gf = g.for_shape(shape_of_row(pw[0][0]))
        preds = [predict_row(g, r) for r, _ in pw]
        ub = [p["bw_util"] for p in preds]
        uc = [p["compute_util"] for p in preds]
        if np.ptp(ub) > 0 or np.ptp(uc) > 0:
            idle, dyn, dyn_c = fit_power(ub, uc, [w for _, w in pw])
            line = {"idle_w": idle, "dyn_w": dyn, "dyn_compute_w": dyn_c}
            if pre:  # a gated path's own power line overrides the base one for its shapes
                line.update(gated_idle_w=idle, gated_dyn_w=dyn, gated_dyn_compute_w=dyn_c)
            g = dataclasses.replace(g, **line)
            power_fit = {"idle_w": idle, "dyn_w": dyn, "dyn_compute_w": dyn_c,
                         "board_w": gf.board_w}
    identified["power"] = power_fit is not None

    out_rows = []
    for r in rows:
        p = predict_row(g, r)
        ms = float(r["ms_per_step"])
        out = {"model": r["model"], "phase": r["phase"], "batch": int(r["batch"]),
               "length": row_length(r),
               "split": "fit" if is_fit_row(r, fit_batches, fit_prompts) else "held-out",
               "measured_ms": ms, "model_ms": p["ms"], "diff_pct": 100.0 * (p["ms"] - ms) / ms,
               "measured_tokens_per_s": r.get("tokens_per_s"), "model_tokens_per_s": p["tokens_per_s"],
               "measured_mj_per_token": None, "model_mj_per_token": p["j_per_token"] * 1e3,
               "energy_diff_pct": None}
        if r.get("j_per_token"):
            mj = float(r["j_per_token"]) * 1e3
            out["measured_mj_per_token"] = mj
            out["energy_diff_pct"] = 100.0 * (out["model_mj_per_token"] - mj) / mj
        out_rows.append(out)

    def stats(split: str) -> tuple[float | None, float | None]:
        d = [abs(r["diff_pct"]) for r in out_rows if r["split"] == split]
        return (max(d), float(np.mean(d))) if d else (None, None)

    fit_max, fit_mean = stats("fit")
    ho_max, ho_mean = stats("held-out")
    return {"gpu": g, "gpu_measured": doc.get("info", {}).get("gpu"),
            "path": "gated" if pre else "gpt", "mem_eff": 1.0 / a, "compute_eff": 1.0 / c,
            "kernel_overhead_us": o * 1e6, "idle_w": power_fit and power_fit["idle_w"],
            "dyn_w": power_fit and power_fit["dyn_w"],
            "dyn_compute_w": power_fit and power_fit["dyn_compute_w"], "identified": identified,
            "fit_batches": list(fit_batches), "fit_prompts": list(fit_prompts),
            "rows": out_rows, "fit_max_abs_diff_pct": fit_max, "fit_mean_abs_diff_pct": fit_mean,
            "held_out_max_abs_diff_pct": ho_max, "held_out_mean_abs_diff_pct": ho_mean}


def batched_table(cal: dict[str, Any]) -> str:
    """Markdown: every measured row against the fitted model (split, ms/step, tokens/s,
    mJ/token and their differences), then the fitted parameters and the error summary."""
    head = ["model", "phase", "batch", "KV len / prompt", "split", "measured ms", "model ms",
            "diff %", "measured tok/s", "model tok/s", "measured mJ/tok", "model mJ/tok",
            "energy diff %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in cal["rows"]:
        lines.append("| " + " | ".join([
            r["model"], r["phase"], str(r["batch"]), str(r["length"]), r["split"],
            f(r["measured_ms"], ".3f"), f(r["model_ms"], ".3f"), f(r["diff_pct"], "+.1f"),
            f(r["measured_tokens_per_s"], ".0f"), f(r["model_tokens_per_s"], ".0f"),
            f(r["measured_mj_per_token"], ".2f"), f(r["model_mj_per_token"], ".2f"),
            f(r["energy_diff_pct"], "+.1f")]) + " |")
    idf = cal["identified"]

    def note(key: str) -> str:
        return "" if idf[key] else " (not identified: preset value)"

    if not idf["power"]:
        power = "utilisation power of the preset (no measured power to fit)"
    elif cal.get("dyn_compute_w") is None:
        power = f"utilisation power fitted: idle {cal['idle_w']:.0f} W + {cal['dyn_w']:.0f} W x u"
    else:
        power = (f"utilisation power fitted: idle {cal['idle_w']:.0f} W + {cal['dyn_w']:.0f} W x "
                 f"u_bandwidth + {cal['dyn_compute_w']:.0f} W x u_compute")
    lines.append("")
    lines.append(
        f"batched fit on {cal['gpu_measured']} ({cal['path']} path; fit rows: decode at batch "
        f"{cal['fit_batches']}, batch-1 prefill at {cal['fit_prompts']}): mem_eff "
        f"{cal['mem_eff']:.3f}{note('mem_eff')}, compute_eff {cal['compute_eff']:.3f}"
        f"{note('compute_eff')}, kernel overhead {cal['kernel_overhead_us']:.2f} us; {power}")
    lines.append(f"ms/step |diff|: fit max {f(cal['fit_max_abs_diff_pct'], '.1f')} % mean "
                 f"{f(cal['fit_mean_abs_diff_pct'], '.1f')} %; held-out max "
                 f"{f(cal['held_out_max_abs_diff_pct'], '.1f')} % mean "
                 f"{f(cal['held_out_mean_abs_diff_pct'], '.1f')} %")
    return "\n".join(lines)
