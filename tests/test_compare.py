"""pimsim compare: PIM vs modelled and measured GPUs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pimsim.config import load_config
from workloads import comparison as C
from workloads.gpu import calibration as gcal
from workloads.plots import plot_compare


def test_compare_against_modelled_t4_and_measured_gpu(tmp_path):
    cfg = load_config("pim-gpt")
    rows = C.compare_rows(["gpt2-small"], cfg, "T4", prompt=16, tokens=2)
    (r,) = rows
    assert r.speedup == pytest.approx(r.gpu_ms / r.pim_ms)
    assert r.efficiency == pytest.approx(r.gpu_j / r.pim_j)
    assert "T4" in r.gpu_source
    meas = gcal.default_measured_path()
    (m,) = C.compare_rows(["gpt2-small"], cfg, meas, prompt=16, tokens=2)
    doc = gcal.load_measured(meas)
    row = next(x for x in doc["results"] if x["model"] == "gpt2-small")
    assert m.gpu_ms in [float(v) for v in row["graph"]["ms_at"].values()]
    assert "measured" in m.gpu_source
    files = plot_compare(rows, tmp_path)
    assert {f.name for f in files} == {"latency_breakdown.png", "energy_breakdown.png",
                                       "speedup_efficiency.png"}
    assert all(f.stat().st_size > 5000 for f in files)
    assert "gpt2-small" in C.table(rows)


def test_compare_cli_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "workloads.cli", "compare", "gpt2-small",
                          "--gpu", "H100", "--prompt", "8", "--tokens", "2", "--json",
                          "--plot", str(tmp_path)], capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    assert rows[0]["model"] == "gpt2-small" and rows[0]["speedup"] > 0
    assert (tmp_path / "compare.json").exists()


def test_unknown_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown GPU"):
        C.gpu_point("V100", "gpt2-small", 10)
