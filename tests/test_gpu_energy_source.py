"""GPU energy in compare: measured power where a measured file is given, else the GPU model's
utilisation power (fitted to the shipped measurement of that GPU where there is one), never the
board's datasheet power unless asked; every row names its source."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workloads import comparison as C
from workloads.gpu import calibration as gcal
from workloads.gpu import model as gm

# compare's default position: prompt 128, 8 tokens -> the GPU at 128 - 1 + 8 // 2
POS = 131


def _compare_json(gpu: str, *extra: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "workloads.cli", "compare", "gpt2-small",
                          "--gpu", gpu, "--json", *extra], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_compare_modelled_h200_agrees_with_measured_h200_on_energy_efficiency():
    (mod,) = _compare_json("H200")
    (meas,) = _compare_json(gcal.default_measured_path())
    assert mod["gpu_power_source"] == "fitted" and meas["gpu_power_source"] == "measured"
    assert mod["pim_j"] == meas["pim_j"]
    ratio = mod["efficiency"] / meas["efficiency"]
    assert 0.8 <= ratio <= 1.25, ratio
    assert "fitted to measured board power" in mod["gpu_source"]
    # the datasheet board power only when asked: an upper bound, far above the measurement
    (board,) = _compare_json("H200", "--gpu-power", "board")
    assert board["gpu_power_source"] == "board"
    assert board["efficiency"] > 2 * meas["efficiency"]


def test_modelled_h200_energy_agrees_with_every_measured_model():
    """The PIM side is the same whichever GPU, so compare's efficiency ratio is the GPU energy
    ratio: the modelled H200 within 25 % of every measured GPT and Llama point."""
    paths = [gcal.default_measured_path()]
    try:
        paths.append(gcal.llama_measured_path())
    except FileNotFoundError:
        pass
    checked = 0
    for path in paths:
        for row in gcal.load_measured(path)["results"]:
            meas = C.gpu_point(path, row["model"], POS)
            tp = gm.min_gpus("H200", row["model"])
            mod = C.gpu_point("H200", row["model"], POS, tp=tp)
            assert meas.power_source == "measured" and mod.power_source == "fitted"
            assert 0.8 <= mod.joules / meas.joules <= 1.25, (row["model"], mod.joules, meas.joules)
            checked += 1
    assert checked >= 8


def test_power_source_follows_the_calibration():
    # H200 was measured: its power is fitted; another GPU keeps the assumed utilisation power
    h200, h100 = gcal.calibrated_preset("H200"), gcal.calibrated_preset("H100")
    assert h200.power_source(gm.shape_for("gpt2-small")) == "fitted"
    assert h200.power_source(gm.shape_for("llama2-7b")) == "fitted"
    assert h100.power_source(gm.shape_for("gpt2-small")) == "utilisation"
    assert h200.power_source(gm.shape_for("gpt2-small"), "board") == "board"
    # the Llama path draws the Llama file's power fit
    llama = gcal.calibrate(gcal.load_measured(gcal.llama_measured_path()))["gpu"]
    g = h200.for_shape(gm.shape_for("llama2-7b"))
    assert (g.idle_w, g.dyn_w) == (llama.idle_w, llama.dyn_w)
    pt = C.gpu_point("H100", "gpt2-small", POS)
    want = gm.predict(h100, "gpt2-small", POS, power="util")
    assert pt.joules == want["joules"] and pt.power_source == "utilisation"
    assert pt.joules < gm.predict(h100, "gpt2-small", POS, power="board")["joules"]
    with pytest.raises(ValueError, match="power model"):
        C.gpu_point("H100", "gpt2-small", POS, power="tdp")


def test_compare_batches_name_their_power_source():
    from workloads import session

    res = session.compare("tiny", "pim-gpt", "H200", prompt=4, tokens=2, batches=[1])
    assert res.batch_rows[0].gpu_power_source == "fitted"
    assert res.records()[0]["gpu_power_source"] == "fitted"
    assert "fitted to measured board power" in res.table()
