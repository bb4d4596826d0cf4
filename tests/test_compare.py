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


def test_compare_batches_pim_batched_by_default():
    from workloads import session
    from workloads.compare_batched import PIM_BATCHED_LABEL
    from workloads.serving.costs import PimBatchedCost

    kw = dict(prompt=4, tokens=2, batches="1,4,16")
    bat = session.compare("tiny", "pim-gpt", "T4", **kw).batch_rows
    ser = session.compare("tiny", "pim-gpt", "T4", pim_cost="serial", **kw).batch_rows
    assert bat[0].pim_method == PIM_BATCHED_LABEL
    assert (bat[0].pim_ms, bat[0].pim_j) == (ser[0].pim_ms, ser[0].pim_j)  # batch 1: the same
    for b, s in zip(bat[1:], ser[1:]):
        assert b.pim_ms <= s.pim_ms and b.pim_tokens_per_s >= s.pim_tokens_per_s
        assert b.gpu_ms == s.gpu_ms
    # the row is the batched simulation of the batch at the row's position
    cfg = session.hw_config("pim-gpt")
    cost = PimBatchedCost(session.compile_model("tiny", cfg), cfg)
    cyc, step_s, j = cost.batch_step([bat[1].position] * 4)
    assert bat[1].pim_ms == step_s * 1e3 and bat[1].pim_j == j / 4
    with pytest.raises(Exception, match="PIM cost 'x'"):
        session.compare("tiny", "pim-gpt", "T4", pim_cost="x", **kw)


def test_compare_batches_pim_serial_and_gpu_batched(tmp_path):
    from workloads import session
    from workloads.compare_batched import PIM_SERIAL_LABEL
    from workloads.gpu import model as gm
    from workloads.plots import plot_compare_batches

    res = session.compare("tiny", "pim-gpt", "T4", prompt=4, tokens=2, batches="4,1,16",
                          pim_cost="serial")
    rows = res.batch_rows
    assert [r.batch for r in rows] == [1, 4, 16] and res.rows == []
    one = rows[0]
    for r in rows:
        assert r.pim_method == PIM_SERIAL_LABEL and r.gpu_power == "util"
        # sequences one after another: a step of B is B batch-1 steps, J/token unchanged
        assert r.pim_ms == pytest.approx(r.batch * one.pim_ms, rel=1e-12)
        assert r.pim_j == pytest.approx(one.pim_j, rel=1e-12)
        assert r.pim_tokens_per_s == pytest.approx(r.batch / (r.pim_ms / 1e3))
        assert r.gpu_tokens_per_s == pytest.approx(r.batch / (r.gpu_ms / 1e3))
        assert r.speedup == pytest.approx(r.gpu_ms / r.pim_ms)
        assert r.efficiency == pytest.approx(r.gpu_j / r.pim_j)
    # the GPU's batch 1 is the batch-1 model with the same power model
    spec = gcal.calibrated_preset("T4")
    ref = gm.predict(spec, "tiny", one.position, power="util")
    assert one.gpu_ms == pytest.approx(ref["ms"], rel=1e-12)
    assert one.gpu_j == pytest.approx(ref["joules"], rel=1e-12)
    assert rows[2].gpu_ms < 16 * one.gpu_ms  # the weights are read once per step
    cross = res.crossover()["tiny"]
    faster = [r.batch for r in rows if r.gpu_tokens_per_s > r.pim_tokens_per_s]
    assert cross == (faster[0] if faster else None)
    text = res.table()
    assert PIM_SERIAL_LABEL in text and "utilisation power" in text and "crossover tiny" in text
    d = res.to_dict()
    assert [r["batch"] for r in d["batch_rows"]] == [1, 4, 16] and d["crossover"] == {"tiny": cross}
    board = session.compare("tiny", "pim-gpt", "T4", prompt=4, tokens=2, batches=[1],
                            gpu_power="board").batch_rows[0]
    assert board.gpu_j > one.gpu_j and "board power" in board.gpu_source
    files = plot_compare_batches(rows, tmp_path)
    assert [f.name for f in files] == ["compare_batches.png"] and files[0].stat().st_size > 5000
    assert (tmp_path / "compare_batches.json").exists()


def test_compare_batch_cli_json_and_errors(tmp_path):
    cmd = [sys.executable, "-m", "workloads.cli", "compare", "tiny", "--gpu", "H100", "--prompt",
           "4", "--tokens", "2"]
    out = subprocess.run(cmd + ["--batch", "1,8", "--json"], capture_output=True, text=True,
                         check=True)
    rows = json.loads(out.stdout)
    assert [(r["model"], r["batch"]) for r in rows] == [("tiny", 1), ("tiny", 8)]
    assert {"pim_ms", "gpu_ms", "pim_j", "gpu_j", "pim_tokens_per_s", "gpu_tokens_per_s",
            "pim_method"} <= set(rows[0])
    for bad, msg in (("1,x", "comma-separated"), ("0,4", ">= 1")):
        r = subprocess.run(cmd + ["--batch", bad], capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr
    meas = gcal.default_measured_path()
    r = subprocess.run([sys.executable, "-m", "workloads.cli", "compare", "gpt2-small", "--gpu",
                        meas, "--batch", "1,4"], capture_output=True, text=True)
    assert r.returncode == 2 and "modelled GPU" in r.stderr


def test_compare_batch_refuses_pipeline_stages():
    from pimsim.errors import UserError
    from workloads import session

    with pytest.raises(UserError, match="pipeline stages"):
        session.compare("tiny", "pim-gpt", "H100", prompt=4, tokens=2, batches=[1, 4],
                        devices=2, pp=2)
