"""GPU baseline: the measurement script (CPU dry run), the static-cache decoder, the analytic
model and its calibration against the shipped measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workloads.gpu import calibration as gcal
from workloads.gpu import model as gm
from workloads.gpu import tables as gtab
from workloads.gpu.baseline import ALL_MODELS, compare_with_decode_step, gpu_slug, positions_for
from workloads.gpu.cli import main
from workloads.gpu.decoders import StaticCacheDecoder, build_model
from workloads.models.gpt import GPT, PRESETS, get_config

REPO = Path(__file__).resolve().parents[1]
CALIBRATION_TOLERANCE_PCT = 25.0


@pytest.fixture(scope="module")
def measured() -> dict:
    return gcal.load_measured()


@pytest.fixture(scope="module")
def calibration(measured: dict) -> dict:
    return gcal.calibrate(measured)


# ---- measurement script ----------------------------------------------------------------------


def test_dry_run_writes_well_formed_json(tmp_path: Path) -> None:
    out = tmp_path / "dry_{gpu}.json"
    assert main(["measure", "gpt", "--dry-run", "--repeats", "2", "--batch-seconds", "0.02", "-o", str(out)]) == 0
    doc = json.loads((tmp_path / "dry_cpu.json").read_text())
    assert "DRY RUN" in doc["method"] and "CUDA graph" in doc["method"]
    for key in ("torch", "date", "python", "gpu", "driver", "cuda"):
        assert key in doc["info"]
    assert doc["settings"]["dry_run"] is True
    (res,) = doc["results"]
    cfg = get_config("tiny")
    assert res["model"] == "tiny" and res["params"] == cfg.n_params
    assert res["positions"] == positions_for(cfg) == [16, 32, 63]
    for path in ("eager", "graph"):
        times = res[path]["ms_at"]
        assert set(times) == {str(p) for p in res["positions"]}
        assert all(t > 0 for t in times.values())
    assert res["validation"]["max_abs_diff"] < 1e-4
    assert res["graph_ms_per_token"] > 0 and res["eager_ms_per_token"] > 0


@pytest.mark.parametrize("name", ["tiny", "tiny-wide"])
def test_static_cache_decode_matches_decode_step(name: str) -> None:
    model = GPT.from_seed(get_config(name), seed=3)
    dec = StaticCacheDecoder(model)
    tokens = [5, 17, 200, 3, 99]
    past_k, past_v = model.empty_kv()
    for pos, tok in enumerate(tokens):
        ref, past_k, past_v = model.decode_step(torch.tensor([[tok]]), pos, past_k, past_v)
        got = dec.decode(tok, pos)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # the static cache holds exactly the growing cache's entries, zeros beyond
    n = len(tokens)
    torch.testing.assert_close(dec.k_cache[:, :, :n], past_k, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dec.v_cache[:, :, :n], past_v, rtol=1e-6, atol=1e-6)
    assert not dec.k_cache[:, :, n:].any()
    # the helper used by the GPU run agrees
    assert compare_with_decode_step(model, dec, tokens)["max_abs_diff"] < 1e-5


def test_static_cache_masks_stale_slots() -> None:
    """Garbage beyond the current position must not change the logits."""
    model = GPT.from_seed(get_config("tiny"), seed=1)
    dec = StaticCacheDecoder(model)
    clean = [dec.decode(t, p).clone() for p, t in enumerate([1, 2, 3])]
    dec.reset("random", seed=7)
    noisy = [dec.decode(t, p).clone() for p, t in enumerate([1, 2, 3])]
    for a, b in zip(clean, noisy):
        torch.testing.assert_close(a, b)


def test_build_model_is_seeded_and_shaped() -> None:
    cfg = get_config("tiny")
    a = build_model(cfg, device="cpu", dtype=torch.float32, seed=0)
    b = build_model(cfg, device="cpu", dtype=torch.float32, seed=0)
    c = build_model(cfg, device="cpu", dtype=torch.float32, seed=1)
    assert sum(p.numel() for p in a.parameters()) == cfg.n_params
    assert torch.equal(a.h[0].attn.q.weight, b.h[0].attn.q.weight)
    assert not torch.equal(a.h[0].attn.q.weight, c.h[0].attn.q.weight)
    assert abs(float(a.ln_f.weight.mean()) - 1.0) < 0.05


def test_gpu_slug() -> None:
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_slug("NVIDIA H200") == "h200"
    assert gpu_slug("Tesla T4") == "t4"
    assert gpu_slug("NVIDIA A100-SXM4-80GB") == "a100"
    assert gpu_slug(None) == "cpu"


def test_modules_need_only_torch_and_numpy() -> None:
    code = ("import sys, workloads.gpu.baseline, workloads.gpu.decoders, workloads.gpu.model, "
            "workloads.gpu.calibration, workloads.gpu.tables, workloads.gpu.llama_shapes; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'numba', 'pimsim', 'compiler'}); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- analytic model --------------------------------------------------------------------------


def test_gpu_presets_follow_hardware_reference() -> None:
    assert gm.gpu_preset("T4").mem_bw == 320e9 and gm.gpu_preset("T4").board_w == 70
    assert gm.gpu_preset("a100").mem_bw == 2.04e12 and gm.gpu_preset("A100").peak_flops == 312e12
    assert gm.gpu_preset("H100").mem_bw == 3.35e12 and gm.gpu_preset("H100").board_w == 700
    assert gm.gpu_preset("NVIDIA H200").mem_bw == 4.8e12
    assert gm.gpu_preset("NVIDIA H100 80GB HBM3").name == "H100"
    with pytest.raises(ValueError):
        gm.gpu_preset("V100")


def test_model_scales_with_weight_bytes_and_kv_length() -> None:
    g = gm.gpu_preset("H100")
    small, xl = get_config("gpt2-small"), get_config("gpt2-xl")
    a, b = gm.predict(g, small, 100), gm.predict(g, xl, 100)
    assert b["ms"] > a["ms"] and b["bytes"] > a["bytes"]
    # the memory term is proportional to bytes
    assert b["mem_ms"] / a["mem_ms"] == pytest.approx(b["bytes"] / a["bytes"])
    # KV: more positions, more bytes and time; a static cache reads n_ctx whatever the position
    lo, hi = gm.predict(g, xl, 0), gm.predict(g, xl, xl.n_ctx - 1)
    assert hi["bytes"] - lo["bytes"] == pytest.approx(xl.kv_bytes_per_token() * (xl.n_ctx - 1))
    assert hi["ms"] > lo["ms"]
    s0, s1 = (gm.predict(g, xl, p, static_cache=True) for p in (0, xl.n_ctx - 1))
    assert s0["ms"] == s1["ms"] == pytest.approx(hi["ms"])
    # faster memory -> faster; energy = power x time; util power below board power
    assert gm.predict("H200", xl, 100)["ms"] < gm.predict("H100", xl, 100)["ms"] < gm.predict("T4", xl, 100)["ms"]
    assert b["joules"] == pytest.approx(b["watts"] * b["ms"] / 1e3)
    assert b["watts"] == g.board_w
    u = gm.predict(g, xl, 100, power="util")
    assert g.idle_w < u["watts"] < g.board_w and u["ms"] == b["ms"]
    # launch overhead: more kernels, more time
    assert gm.predict(g, small, 0, n_kernels=1000)["ms"] > gm.predict(g, small, 0, n_kernels=10)["ms"]
    with pytest.raises(ValueError):
        gm.predict(g, small, small.n_ctx)


# ---- shipped measurement and calibration -----------------------------------------------------


def test_shipped_json_records_gpu_versions_and_method(measured: dict) -> None:
    info = measured["info"]
    assert info["gpu"] and "NVIDIA" in info["gpu"]
    for key in ("driver", "torch", "cuda", "date"):
        assert info[key], key
    for phrase in ("CUDA graph", "static KV cache", "CUDA events", "power"):
        assert phrase in measured["method"]
    assert measured["settings"]["dry_run"] is False
    assert [r["model"] for r in measured["results"]] == list(ALL_MODELS)
    for r in measured["results"]:
        cfg = PRESETS[r["model"]]
        assert r["params"] == cfg.n_params and r["weight_bytes"] == 2 * cfg.n_params
        assert all(t > 0 for t in r["graph"]["ms_at"].values())
        assert all(t > 0 for t in r["eager"]["ms_at"].values())
        assert r["graph_ms_per_token"] < r["eager_ms_per_token"]
        assert r["validation"]["rel_diff"] < 1e-2
        assert r["mean_power_w"] > r["idle_power_w"] > 0
        loop_ms = r["graph"]["power_loop"]["ms_per_token"]
        assert r["joules_per_token"] == pytest.approx(r["mean_power_w"] * loop_ms / 1e3)


def test_calibration_fits_every_preset(calibration: dict) -> None:
    assert calibration["kernel_overhead_us"] > 0
    assert 0 < calibration["mem_eff"] <= 1
    assert len(calibration["rows"]) == len(ALL_MODELS)
    for row in calibration["rows"]:
        assert row["max_abs_diff_pct"] < CALIBRATION_TOLERANCE_PCT, row
        assert abs(row["energy_diff_pct"]) < CALIBRATION_TOLERANCE_PCT, row
    assert calibration["max_abs_diff_pct"] < CALIBRATION_TOLERANCE_PCT
    assert calibration["power_fit"]["idle_w"] > 0


def test_calibration_with_fixed_efficiency_and_table(measured: dict, calibration: dict) -> None:
    fixed = gcal.calibrate(measured, fit_efficiency=False)
    assert fixed["mem_eff"] == gm.gpu_preset("H200").mem_eff and fixed["kernel_overhead_us"] > 0
    table = gtab.compare_table(measured, calibration)
    assert table.count("\n| gpt") == len(ALL_MODELS)
    assert "calibrated on" in table
    a100 = gcal.transfer(calibration, "A100")
    assert a100.mem_bw == 2.04e12 and a100.kernel_overhead_s == calibration["gpu"].kernel_overhead_s
