"""Report labels: one compare footer per model, a device count that cannot be misread, per-sequence
and system tokens/s named, plot titles inside their figures, sweep legends always."""

from __future__ import annotations

import pandas as pd
import pytest

from pimsim.report import system_label
from workloads import plots
from workloads.comparison import CompareRow, table


def _row(model: str, tok_s: float, watts: float, **kw) -> CompareRow:
    base = dict(model=model, hw="aim-cxl-8", gpu="H200", position=131, pim_ms=1.0, gpu_ms=2.0,
                speedup=2.0, pim_j=1e-3, gpu_j=2e-3, efficiency=2.0,
                pim_breakdown={"pim_mac": 0.6, "other": 0.4},
                pim_energy_by_component={"dram": 8e-4, "asic": 2e-4},
                gpu_source=f"modelled H200 (source of {model}), power: utilisation power fitted",
                gpu_power_source="fitted", pim_devices=8, pim_tp=8, pim_pp=1,
                pim_tokens_per_s=tok_s, pim_power_w=watts)
    base.update(kw)
    return CompareRow(**base)


def test_system_label_says_how_many_devices():
    assert system_label("aim-cxl-8", 8, 8, 1) == "aim-cxl-8 (8 devices: tp 8 x pp 1)"
    assert system_label("pim-gpt") == "pim-gpt"


def test_compare_table_prints_one_footer_per_model():
    rows = [_row("gpt2-small", 1234.0, 11.0), _row("gpt2-xl", 321.0, 47.0)]
    foot = table(rows).splitlines()[-2:]
    assert foot[0].startswith("gpt2-small: PIM: aim-cxl-8 (8 devices: tp 8 x pp 1), 1,234 system")
    assert "11 W" in foot[0] and "source of gpt2-small" in foot[0]
    assert foot[1].startswith("gpt2-xl: PIM: aim-cxl-8 (8 devices") and "321 system" in foot[1]
    assert "47 W" in foot[1] and "source of gpt2-xl" in foot[1]
    assert "8 x aim-cxl-8" not in table(rows)
    # one model: the footer as before, without the model's name in front
    (one,) = table(rows[:1]).splitlines()[-1:]
    assert one.startswith("PIM: aim-cxl-8 (8 devices")


def test_run_summary_names_devices_and_both_tokens_per_s():
    from workloads import session

    s = session.simulate("tiny", "aim-cxl-8", tokens=2).summary()
    assert "tiny on aim-cxl-8 (8 devices: tp 8 x pp 1)" in s and "8 x aim-cxl-8" not in s
    pp = session.simulate("tiny", "pim-gpt", tokens=3, devices=2, pp=2).summary().splitlines()
    per_seq = next(x for x in pp if "per sequence:" in x)
    system = next(x for x in pp if x.strip().startswith("system ("))
    assert "tokens/s" in per_seq and "tokens/s of all sequences (2 sequences in flight)" in system


def _spy_figures(monkeypatch) -> list:
    figs = []
    real = plots._save

    def save(fig, path, dpi=110):
        figs.append(fig)
        return real(fig, path, dpi)

    monkeypatch.setattr(plots, "_save", save)
    return figs


def _inside(fig, artist) -> bool:
    fig.canvas.draw()
    bb, fb = artist.get_window_extent(), fig.bbox
    return bb.x0 >= fb.x0 - 1 and bb.x1 <= fb.x1 + 1 and bb.y0 >= fb.y0 - 1 and bb.y1 <= fb.y1 + 1


def test_compare_plot_titles_name_the_system_and_stay_inside(tmp_path, monkeypatch):
    figs = _spy_figures(monkeypatch)
    rows = [_row("gpt2-small", 1234.0, 11.0), _row("gpt2-xl", 321.0, 47.0)]
    plots.plot_compare(rows, tmp_path)
    assert len(figs) == 3
    for fig in figs:
        title = fig._suptitle if fig._suptitle is not None else fig.axes[0].title
        text = title.get_text().replace("\n", " ")
        assert "8 devices: tp 8 x pp 1" in text and "batch 1" in text, text
        assert _inside(fig, title), text
        assert type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
    sup = figs[-1]._suptitle.get_text()
    assert "source of gpt2-small" in sup and "source of gpt2-xl" in sup  # each model's GPU source


def _sweep_df(n_a: int, n_b: int) -> pd.DataFrame:
    recs, i = [], 0
    for a in range(n_a):
        for b in range(n_b):
            for ch in (2, 4, 8):
                recs.append({"idx": i, "status": "ok", "model": "tiny", "prompt": 1, "tokens": 2,
                             "channels": ch, "banks": 4 * (a + 1), "rows": 64 * (b + 1),
                             "refresh": True, "ms_per_token": 1.0 / ch + a + 0.1 * b,
                             "mj_per_token": 0.5 + a + 0.01 * b * ch})
                i += 1
    return pd.DataFrame(recs)


@pytest.mark.parametrize("n_a,n_b,outside", [(1, 1, False), (4, 6, True)])
def test_sweep_plots_always_have_a_legend(tmp_path, monkeypatch, n_a, n_b, outside):
    figs = _spy_figures(monkeypatch)
    df = _sweep_df(n_a, n_b)
    # "refresh" is swept but never varies: it makes no series of its own
    plots.plot_sweep(df, tmp_path, swept=["channels", "banks", "rows", "refresh"])
    fig = figs[0]  # vs channels: one series per (banks, rows)
    n_series = n_a * n_b
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 1
    (leg,) = legends
    labels = [t.get_text() for t in leg.get_texts()]
    assert len(labels) == n_series
    assert not any("refresh" in t for t in labels)
    assert (leg in fig.legends) == outside
    assert _inside(fig, leg)
