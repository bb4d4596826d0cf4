"""Charts of a serving simulation, written as PNG files on Agg figures (no global backend
switch): the latency distributions (TTFT, TPOT and end-to-end latency as CDFs, ms) and the
throughput over time (output tokens per second in time bins, s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workloads.plots import _figure, _save
from workloads.serving.metrics import ServeResult

N_BINS = 50  # time bins of the throughput chart


def _cdf(ax, vals: list[float], title: str) -> None:
    a = np.sort(np.asarray([v for v in vals if v is not None], np.float64))
    if len(a):
        ax.step(a, np.arange(1, len(a) + 1) / len(a), where="post", label=f"{len(a)} requests")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0.0, 1.02)
    ax.locator_params(axis="x", nbins=5)
    ax.set_xlabel(f"{title} (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def plot_serve(res: ServeResult, out_dir: str | Path) -> list[Path]:
    """``latency_cdf.png`` and ``throughput.png`` in ``out_dir`` (created); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c, recs = res.config, res.requests
    title = f"{c['model']} on {c['system']}: {c['cost_label']}"
    fig, axes = _figure(13, 4, 3)
    for ax, (k, name) in zip(axes, (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"),
                                    ("e2el_ms", "E2E latency"))):
        _cdf(ax, [getattr(r, k) for r in recs], name)
    fig.suptitle(title, fontsize=9)
    paths = [_save(fig, out / "latency_cdf.png")]

    fig, ax = _figure(8, 4)
    t = np.asarray([s.start_s + s.time_s for s in res.steps for _ in range(s.output_tokens)])
    dur = res.metrics.get("duration") or 0.0
    if len(t) and dur > 0:
        edges = np.linspace(0.0, dur, N_BINS + 1)
        counts, _ = np.histogram(t, edges)
        width = edges[1] - edges[0]
        ax.step(edges[:-1], counts / width, where="post", label="output tokens/s")
        ax.axhline(res.metrics["output_throughput"], color="gray", ls="--",
                   label=f"mean {res.metrics['output_throughput']:.3g} tokens/s")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no tokens", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("time since the start of the stream (s)")
    ax.set_ylabel("output throughput (tokens/s)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "throughput.png"))
    return paths
