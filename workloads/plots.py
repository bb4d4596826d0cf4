"""Charts of results, drawn on Agg figures written to PNG files (no global matplotlib backend
switch): a sweep's latency and energy against each swept parameter and its Pareto front
(:func:`plot_sweep`), and PIM against a GPU (:func:`plot_compare`; at several batch sizes,
:func:`plot_compare_batches`)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pimsim.errors import UserError
from pimsim.outputs import atomic_write
from pimsim.report import system_label
from workloads.sweeps.analysis import _fmt, _labels, _numeric, _workload, pareto_fronts

if TYPE_CHECKING:
    from workloads.compare_batched import BatchRow
    from workloads.comparison import CompareRow


def plot_dir(out_dir: str | Path) -> Path:
    """``out_dir``, created if needed; a UserError naming the fix where it cannot be."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"plot directory {str(out)!r} cannot be created ({e.strerror or e})",
                        "choose a writable --plot directory") from None
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")


def _figure(w: float, h: float, ncols: int = 1):
    """A matplotlib Figure drawn by the Agg canvas: written to files, never shown, and no global
    backend switch (``matplotlib.use``) that would change an interactive session's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")  # titles and legends kept inside
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig, path: Path, dpi: int = 110) -> Path:
    """``fig`` as a PNG at ``path``, written atomically (:func:`pimsim.outputs.atomic_write`)."""
    with atomic_write(path, "plot file", "wb") as f:
        fig.savefig(f, dpi=dpi, format="png")
    return path


def _save_json(doc, path: Path) -> Path:
    with atomic_write(path, "plot data file") as f:
        f.write(json.dumps(doc, indent=1))
    return path


def _wrap(text: str, width: int = 110) -> str:
    """A title on as many lines as it needs (a long GPU source would run off the figure)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _models_title(df) -> str:
    models = list(dict.fromkeys(str(m) for m in df["model"].tolist())) if "model" in df else []
    if not models:
        return ""
    return models[0] if len(models) == 1 else f"{models[0]} and {len(models) - 1} more"


LEGEND_INSIDE_MAX = 6  # more series than this: the legend goes outside the axes


def _sweep_legend(fig, axes, n_series: int, param: str) -> None:
    """A legend always: inside the energy axes for a few series, outside the axes (right of
    them, in columns) for many; a single series is named by the swept parameter."""
    handles, labels = axes[1].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[0].get_legend_handles_labels()
    if not handles:  # one unlabelled series
        lines = axes[1].get_lines() or axes[0].get_lines()
        handles, labels = lines[:1], [f"vs {param}"]
    if not handles:
        return
    if n_series <= LEGEND_INSIDE_MAX:
        axes[1].legend(handles, labels, fontsize=7, loc="best")
    else:
        fig.legend(handles, labels, fontsize=6, loc="outside right upper",
                   ncols=1 + (len(handles) - 1) // 24, title="series", title_fontsize=7)


def plot_sweep(res_or_df, out_dir: str | Path, swept: list[str] | None = None) -> list[Path]:
    """PNG charts: latency and energy per token against each swept parameter (one line per
    combination of the other parameters that vary, every point labelled with its value where
    few; a legend always, outside the axes when there are many lines), and the
    latency-energy Pareto front (front points labelled with their parameter values). Titles
    name the model, the hardware and the workload; latency and energy axes start at zero."""
    from workloads.sweeps.analysis import SweepResult

    if isinstance(res_or_df, SweepResult):
        df, swept = res_or_df.df, res_or_df.spec.swept
        hw = res_or_df.spec.hw
    else:
        df = res_or_df
        swept = swept if swept is not None else list(df.attrs.get("params", []))
        hw = ""
    out = plot_dir(out_dir)
    files: list[Path] = []
    ok = df[df["status"] == "ok"] if len(df) else df
    if not len(ok):
        return files
    model = _models_title(ok)
    where = f"{model} on {hw}" if hw else model
    wls = list(dict.fromkeys(ok.apply(_workload, axis=1))) if len(ok) else []
    wl_note = wls[0] if len(wls) == 1 else f"{len(wls)} workloads"
    for p in swept:
        if p not in ok:
            continue
        vals = []
        for v in ok[p].tolist():
            if v is not None and v == v and v not in vals:
                vals.append(v)
        if not vals:
            continue
        numeric = _numeric(vals)
        if numeric:
            vals.sort()
        pos = {str(v): i for i, v in enumerate(vals)}
        # the other parameters that vary among these points: one series per combination
        others = [q for q in swept if q != p and q in ok and ok[q].nunique(dropna=False) > 1]
        fig, axes = _figure(11, 4.6, 2)
        groups = list(ok.groupby(_labels(ok, others))) if others else [("", ok)]
        for _gname, g in groups:
            g = g[g[p].notna()]
            if g.empty:  # points that do not set this parameter
                continue
            g = g.sort_values(p) if numeric else g.iloc[
                sorted(range(len(g)), key=lambda i: pos[str(g[p].iloc[i])])]
            x = g[p].tolist() if numeric else [pos[str(v)] for v in g[p]]
            label = ", ".join(f"{q}={_fmt(v)}" for q, v in zip(others, g.iloc[0][others])) \
                if others else None
            for ax, col in zip(axes, ("ms_per_token", "mj_per_token")):
                if not g[col].notna().any():
                    continue
                ax.plot(x, g[col], "o-", label=label, lw=1.2, ms=4)
                if len(groups) <= 4:  # label every point with its value (readable when few)
                    for xi, yi, v in zip(x, g[col], g[p]):
                        if yi == yi:
                            ax.annotate(f"{p}={_fmt(v)}", (xi, yi), fontsize=6,
                                        xytext=(3, 4), textcoords="offset points")
        for ax, ylab in zip(axes, ("latency (ms / token)", "energy (mJ / token)")):
            ax.set_xlabel(p)
            ax.set_ylabel(ylab)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if numeric and min(vals) > 0 and max(vals) / min(vals) >= 4:
                ax.set_xscale("log", base=2)
                ax.set_xticks(vals, [_fmt(v) for v in vals])
            elif not numeric:
                ax.set_xticks(range(len(vals)), [str(v) for v in vals])
        _sweep_legend(fig, axes, len(groups), p)
        fig.suptitle(f"{where}: latency and energy per token vs {p} ({wl_note})", fontsize=10)
        files.append(_save(fig, out / f"vs_{_slug(p)}.png"))
    # Pareto front
    e = ok[ok["mj_per_token"].notna()]
    if len(e):
        fig, ax = _figure(7.5, 5.2)
        fronts = pareto_fronts(ok)
        wls_e = e.apply(_workload, axis=1)
        for wl, g in e.groupby(wls_e):
            sc = ax.scatter(g["ms_per_token"], g["mj_per_token"], s=18, alpha=0.6, label=wl)
            front = g.set_index("idx").loc[fronts.get(wl, [])]
            ax.step(front["ms_per_token"], front["mj_per_token"], where="post",
                    color=sc.get_facecolor()[0], lw=1.5)
            ax.scatter(front["ms_per_token"], front["mj_per_token"], s=40,
                       facecolors="none", edgecolors="k", lw=1.0)
            for i, r in front.iterrows():
                params = ", ".join(f"{q}={_fmt(r[q])}" for q in swept if q in r and q != "model")
                ax.annotate(f"#{i} {params}".strip(), (r["ms_per_token"], r["mj_per_token"]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("latency (ms / token)")
        ax.set_ylabel("energy (mJ / token)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{where}: latency-energy Pareto front\n(circled, labelled with their "
                     f"parameters; lower-left is better)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        files.append(_save(fig, out / "pareto.png"))
    return files


def plot_compare(rows: list[CompareRow], out_dir: str | Path) -> list[Path]:
    """PNG charts: latency breakdown, energy breakdown, speedup and efficiency bars (value on
    every bar, axes from zero); titles name the models, the PIM config and the GPU. Drawn on
    Agg figures (no global matplotlib backend switch)."""
    import numpy as np

    out = plot_dir(out_dir)
    if not rows:
        return []
    names = [r.model for r in rows]
    x = np.arange(len(rows))
    files = []
    who = (", ".join(names) if len(names) <= 3
           else f"{names[0]} .. {names[-1]} ({len(names)} models)")
    pos_note = f"position {rows[0].position}" if len({r.position for r in rows}) == 1 else ""
    r0 = rows[0]
    pim = f"{system_label(r0.hw, r0.pim_devices, r0.pim_tp, r0.pim_pp)}, batch 1"

    def stacked(values: list[dict], scale: list[float], ylabel: str, title: str, fname: str):
        keys = [k for k in values[0] if any(v.get(k, 0) > 0 for v in values)]
        w = max(6, 1.1 * len(rows) + 2)
        fig, ax = _figure(w, 4.8)
        bottom = np.zeros(len(rows))
        for k in keys:
            h = np.array([v.get(k, 0.0) * s for v, s in zip(values, scale)])
            ax.bar(x, h, bottom=bottom, label=k)
            bottom += h
        for xi, total in zip(x, bottom):
            ax.text(xi, total, f"{total:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.set_title(_wrap(title, int(w * 10)), fontsize=10)  # ~10 characters an inch
        ax.legend(fontsize=8)
        files.append(_save(fig, out / fname, dpi=120))

    stacked([r.pim_breakdown for r in rows], [r.pim_ms for r in rows], "ms / token",
            f"{who} on {pim}: PIM latency per token by part {pos_note}",
            "latency_breakdown.png")
    stacked([r.pim_energy_by_component for r in rows], [1e3] * len(rows), "mJ / token",
            f"{who} on {pim}: PIM energy per token by component {pos_note}",
            "energy_breakdown.png")
    fig, axes = _figure(max(8, 1.6 * len(rows) + 3), 4.8, 2)
    for ax, key, title in ((axes[0], "speedup", "speedup over the GPU (GPU / PIM ms per token)"),
                           (axes[1], "efficiency", "energy efficiency over the GPU "
                                                   "(GPU / PIM J per token)")):
        vals = [getattr(r, key) for r in rows]
        ax.bar(x, vals, color="tab:green" if key == "speedup" else "tab:purple")
        for xi, v in zip(x, vals):
            ax.text(xi, v, f"{v:.3g}x", ha="center", va="bottom", fontsize=8)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")  # parity
        ax.set_ylim(bottom=0)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("ratio (1 = parity)")
        ax.set_title(title, fontsize=9)
    gpus = list(dict.fromkeys(r.gpu_source for r in rows))
    fig.suptitle(_wrap(f"{who}: PIM ({pim}) vs GPU {pos_note}") + "\n"
                 + "\n".join(_wrap(f"GPU: {g}") for g in gpus), fontsize=9)
    files.append(_save(fig, out / "speedup_efficiency.png", dpi=120))
    _save_json([asdict(r) for r in rows], out / "compare.json")
    return files


def plot_compare_batches(rows: list[BatchRow], out_dir: str | Path) -> list[Path]:
    """PNG chart of ``pimsim compare --batch``: tokens/s and mJ/token against the batch size
    (log x; log y), PIM and GPU lines per model with a legend; the title names the PIM config
    and method, the GPU and its power model. Writes ``compare_batches.json`` beside it."""
    out = plot_dir(out_dir)
    if not rows:
        return []
    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = _figure(11, 4.6, 2)
    for m in models:
        rs = sorted((r for r in rows if r.model == m), key=lambda r: r.batch)
        b = [r.batch for r in rs]
        tag = f"{m} " if len(models) > 1 else ""
        axes[0].plot(b, [r.pim_tokens_per_s for r in rs], "o-", label=f"{tag}PIM ({rs[0].hw})")
        axes[0].plot(b, [r.gpu_tokens_per_s for r in rs], "s--", label=f"{tag}GPU ({rs[0].gpu})")
        axes[1].plot(b, [r.pim_j * 1e3 for r in rs], "o-", label=f"{tag}PIM ({rs[0].hw})")
        axes[1].plot(b, [r.gpu_j * 1e3 for r in rs], "s--", label=f"{tag}GPU ({rs[0].gpu})")
    ticks = sorted({r.batch for r in rows})
    for ax, ylabel in ((axes[0], "tokens / s (whole batch)"), (axes[1], "mJ / output token")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_yscale("log")
        ax.set_xlabel("batch size (sequences per decode step)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("throughput", fontsize=9)
    axes[1].set_title("energy per token", fontsize=9)
    r = rows[0]
    batches = ", ".join(str(b) for b in sorted({x.batch for x in rows}))
    gpus = list(dict.fromkeys(x.gpu_source for x in rows))
    pim = system_label(r.hw, r.pim_devices, r.pim_tp, r.pim_pp)
    fig.suptitle(_wrap(f"{', '.join(models)} at position {r.position}, batch {batches}: PIM {pim} "
                       f"({r.pim_method}) vs GPU", 150) + "\n"
                 + "\n".join(_wrap(f"GPU: {g}", 150) for g in gpus), fontsize=8)
    files = [_save(fig, out / "compare_batches.png", dpi=120)]
    _save_json([asdict(x) for x in rows], out / "compare_batches.json")
    return files
