"""Attention-latency tables (pimsim.attention, pimsim export attention-table): one layer's
decode attention simulated at command level over context lengths, and its line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pimsim.attention import (
    ATTENTION_OPS,
    attention_cycles,
    attention_program,
    attention_table,
    fit_line,
)
from pimsim.config import load_config
from workloads import session
from workloads.cli import main


@pytest.fixture(scope="module")
def tiny():
    cfg = session.hw_config("pim-gpt")
    return session.compile_model("tiny", cfg), cfg


def test_attention_program_is_the_layers_attention_steps(tiny):
    c, _ = tiny
    a = attention_program(c.program, layer=1)
    assert [s.op for s in a.steps] == list(ATTENTION_OPS)
    assert all(s.layer == 1 for s in a.steps)
    assert [s.index for s in a.steps] == list(range(4))
    # kv_write first (no deps left), score after the write, softmax after the score,
    # value after the write and the softmax
    assert [s.deps for s in a.steps] == [(), (0,), (1,), (0, 2)]


@pytest.mark.parametrize("hw", ["pim-gpt", "hbm-pim"])
def test_fast_path_equals_the_command_by_command_oracle(hw):
    cfg = load_config(hw)
    a = attention_program(session.compile_model("tiny", cfg).program)
    for L in (0, 17, 63):
        assert attention_cycles(a, cfg, L) == attention_cycles(a, cfg, L, fast=False)


def test_table_points_are_the_simulated_cycles_and_the_line_their_least_squares(tiny):
    c, cfg = tiny
    t = attention_table(c.program, cfg, [63, 8, 32])
    assert t.lengths == [8, 32, 63]
    a = attention_program(c.program)
    assert t.cycles == [attention_cycles(a, cfg, L) for L in t.lengths]
    assert t.ns == [cfg.timing.ns(x) for x in t.cycles]
    slope, icpt = np.polyfit(t.lengths, t.ns, 1)
    assert (t.slope_ns, t.intercept_ns) == pytest.approx((slope, icpt), rel=1e-12)
    # two points: the line passes through both exactly
    s2, i2 = fit_line([8, 63], [t.ns[0], t.ns[2]])
    assert s2 * 8 + i2 == pytest.approx(t.ns[0], abs=1e-9)
    assert s2 * 63 + i2 == pytest.approx(t.ns[2], abs=1e-9)
    # K and V of one token of one layer: 4 heads x 16 x 2 bytes x 2
    assert t.kv_bytes_per_token == 256
    assert t.effective_gb_s == pytest.approx(256 / t.slope_ns)
    entry = t.pim_model()
    assert f'"slope": {t.slope_ns:.4f}' in entry and f'"intercept": {t.intercept_ns:.4f}' in entry


def test_attention_grows_with_the_context():
    cfg = load_config("pim-gpt")
    t = attention_table(session.compile_model("gpt2-small", cfg).program, cfg,
                        [64, 128, 256, 512, 1023])
    assert t.cycles == sorted(t.cycles) and t.cycles[0] < t.cycles[-1]
    assert t.slope_ns > 0
    # close to a line: every point within 5 % of the longest context's time of it
    assert t.max_fit_error_ns < 0.05 * max(t.ns)


def test_cli_export_json_and_pim_model_file(tmp_path, capsys):
    out = tmp_path / "pim_model_entry.py"
    assert main(["export", "attention-table", "tiny", "--hw", "pim-gpt", "--lengths", "4,40",
                 "--json", "-o", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["lengths"] == [4, 40] and d["hw"] == "pim-gpt" and d["n_kv_head"] == 4
    assert d["slope_ns"] * 40 + d["intercept_ns"] == pytest.approx(d["ns"][1], abs=1e-6)
    assert '"pim-gpt": {' in out.read_text()


@pytest.mark.parametrize("argv, words", [
    (["--lengths", "64"], "outside the model's context of 64"),
    (["--layer", "2"], "layers 0..1"),
    (["--lengths", "a,b"], "not a list of whole numbers"),
])
def test_cli_bad_input_exits_2(argv, words, capsys):
    try:
        rc = main(["export", "attention-table", "tiny", "--hw", "pim-gpt", *argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == 2
    assert words in capsys.readouterr().err


def test_tensor_parallel_table_reports_the_systems_bandwidth():
    from workloads.xpu.tables import export_attention_table

    t = export_attention_table("tiny", "pim-gpt", [8, 40], devices=2, tp=2)
    assert t.devices == 2 and t.kv_bytes_per_token == 128  # 2 of 4 heads on a device
    assert t.system_gb_s == pytest.approx(2 * t.effective_gb_s)
    assert "for the 2 devices" in t.table()
