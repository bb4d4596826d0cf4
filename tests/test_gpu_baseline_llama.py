"""Llama GPU baseline: the static-cache decoder against transformers' LlamaForCausalLM (CPU, fp32),
the measurement script's dry run, and the shipped H200 measurement."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workloads.gpu import calibration as gcal
from workloads.gpu import model as gm
from workloads.gpu.baseline import positions_for
from workloads.gpu.cli import main
from workloads.gpu.decoders import LlamaStaticDecoder
from workloads.gpu.llama import compare_with_hf
from workloads.gpu.llama_shapes import DEFAULT_MODELS, SHAPES, get_shape

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "workloads" / "gpu" / "data" / "gpu_measured_h200_llama.json"
H200_PEAK_BW_BYTES_PER_S = gm.gpu_preset("H200").mem_bw
TOKENS = [5, 17, 200, 3, 99, 42, 7]


# ---- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, params", [
    ("llama2-7b", 6_738_415_616),     # parameter counts of the public checkpoints
    ("llama2-13b", 13_015_864_320),
    ("llama2-70b", 68_976_648_192),
    ("llama3-8b", 8_030_261_248),
])
def test_public_shapes_have_the_public_parameter_counts(name: str, params: int) -> None:
    s = get_shape(name)
    assert s.n_params == params
    assert s.hf_config.startswith("meta-llama/")
    assert s.d_head == 128


def test_rope_theta_and_gqa_follow_the_configs() -> None:
    assert get_shape("llama2-7b").rope_theta == 10000.0 and get_shape("llama2-7b").n_kv_head == 32
    assert get_shape("llama3-8b").rope_theta == 500000.0 and get_shape("llama3-8b").n_kv_head == 8
    assert get_shape("llama3-8b").kv_bytes_per_token() * 4 == get_shape("llama2-7b").kv_bytes_per_token()


# ---- decoder against transformers ------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-gqa"])
@pytest.mark.parametrize("init_std", [0.02, 0.3])
def test_decoder_matches_transformers(name: str, init_std: float) -> None:
    pytest.importorskip("transformers")
    shape = get_shape(name)
    dec = LlamaStaticDecoder(shape, device="cpu", dtype=torch.float32, seed=3, init_std=init_std)
    r = compare_with_hf(dec, TOKENS)
    assert r["steps"] == len(TOKENS) and r["max_abs_logit"] > 0.1
    assert r["rel_diff"] < 2e-6, r
    # the static cache holds the entries written so far, zeros beyond
    n = len(TOKENS)
    assert dec.k_cache[:, :, :n].abs().amax(dim=(0, 1, 3)).min() > 0
    assert not dec.k_cache[:, :, n:].any() and not dec.v_cache[:, :, n:].any()


def test_comparison_detects_a_wrong_rope_theta() -> None:
    """The check can fail: a decoder with Llama 2's theta against a Llama 3 (theta 5e5) reference."""
    pytest.importorskip("transformers")
    shape = get_shape("tiny-llama-gqa")
    dec = LlamaStaticDecoder(dataclasses.replace(shape, rope_theta=10000.0), device="cpu",
                             dtype=torch.float32, seed=3, init_std=0.3)
    dec.shape = shape  # reference built from the true config; weights are the same (seeded by name)
    assert compare_with_hf(dec, TOKENS)["rel_diff"] > 1e-3


def test_stale_cache_slots_are_masked() -> None:
    dec = LlamaStaticDecoder(get_shape("tiny-llama-gqa"), device="cpu", dtype=torch.float32,
                             seed=1, init_std=0.3)
    clean = [dec.decode(t, p).clone() for p, t in enumerate([1, 2, 3])]
    dec.reset("random", seed=7)
    noisy = [dec.decode(t, p).clone() for p, t in enumerate([1, 2, 3])]
    for a, b in zip(clean, noisy):
        torch.testing.assert_close(a, b)


def test_weights_are_seeded_and_hf_views_share_storage() -> None:
    shape = get_shape("tiny-llama-gqa")
    a = LlamaStaticDecoder(shape, device="cpu", dtype=torch.float32, seed=0)
    b = LlamaStaticDecoder(shape, device="cpu", dtype=torch.float32, seed=0)
    c = LlamaStaticDecoder(shape, device="cpu", dtype=torch.float32, seed=1)
    sa, sb, sc = a.hf_state_dict(), b.hf_state_dict(), c.hf_state_dict()
    k = "model.layers.1.self_attn.k_proj.weight"
    assert torch.equal(sa[k], sb[k]) and not torch.equal(sa[k], sc[k])
    assert sa[k].shape == (shape.n_kv_head * shape.d_head, shape.d_model)
    assert sa[k].data_ptr() == a.wqkv[1][shape.n_head * shape.d_head:].data_ptr()
    assert a.weight_bytes == shape.n_params * 4
    assert abs(float(sa["model.norm.weight"].mean()) - 1.0) < 0.05


@pytest.mark.slow  # 9 s dry run of the GPU measurement
def test_dry_run_writes_well_formed_json(tmp_path: Path) -> None:
    out = tmp_path / "dry.json"
    assert main(["measure", "llama", "--dry-run", "--models", "tiny-llama-gqa", "--repeats", "2",
                 "--batch-seconds", "0.01", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "DRY RUN" in doc["method"] and "CUDA graph" in doc["method"]
    assert doc["settings"]["dry_run"] is True and doc["settings"]["dtype"] == "float32"
    (res,) = doc["results"]
    shape = get_shape("tiny-llama-gqa")
    assert res["model"] == "tiny-llama-gqa" and res["params"] == shape.n_params
    assert res["positions"] == positions_for(shape) == [16, 32, 63]
    assert set(res["graph"]["ms_at"]) == {"16", "32", "63"}
    assert all(v > 0 for v in res["graph"]["ms_at"].values())
    if "max_abs_diff" in res["validation"]:
        assert res["validation"]["rel_diff"] < 1e-5
        assert {v["config"] for v in doc["validation_small"]} == {"tiny-llama", "tiny-llama-gqa"}


def test_module_needs_no_simulator_or_transformers_to_import() -> None:
    code = ("import sys, workloads.gpu.llama; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'simpy', 'numba', 'pimsim', 'compiler', 'transformers'}); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_gpt_calibration_keeps_reading_the_gpt_file() -> None:
    assert not gcal.default_measured_path().endswith(gcal.LLAMA_SUFFIX)


def test_low_precision_difference_is_rounding_noise() -> None:
    """In bf16 the decoder is about as far from the fp32 reference as transformers' bf16 model is."""
    pytest.importorskip("transformers")
    dec = LlamaStaticDecoder(get_shape("tiny-llama-gqa"), device="cpu", dtype=torch.bfloat16,
                             seed=3, init_std=0.3)
    r = compare_with_hf(dec, TOKENS, fp32_reference=True)
    assert r["dtype"] == "bfloat16" and r["hf_vs_fp32_max_abs_diff"] > 0
    assert r["decoder_vs_fp32_max_abs_diff"] < 3 * r["hf_vs_fp32_max_abs_diff"], r
    assert r["max_abs_diff"] < 3 * r["hf_vs_fp32_max_abs_diff"], r


# ---- the shipped H200 measurement ------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> dict:
    return gcal.load_measured(gcal.llama_measured_path())


def test_shipped_file_is_found_and_read_by_the_compare_loader(shipped: dict) -> None:
    from workloads import comparison as C

    assert Path(gcal.llama_measured_path()) == SHIPPED
    doc = C.load_baseline(str(SHIPPED))
    assert doc == shipped
    C.check_gpu(str(SHIPPED), list(DEFAULT_MODELS))
    row = next(r for r in doc["results"] if r["model"] == "llama2-7b")
    pt = C.gpu_point(str(SHIPPED), "llama2-7b", 2000)          # nearest measured position: 2048
    assert pt.ms == row["graph"]["ms_at"]["2048"]
    assert pt.joules == row["graph"]["power_loop"]["joules_per_token"]
    assert "H200" in pt.source and "2048" in pt.source


def test_shipped_file_is_a_real_fp16_h200_run(shipped: dict) -> None:
    info, settings = shipped["info"], shipped["settings"]
    assert "H200" in info["gpu"] and info["power_source"] == "nvml" and info["transformers"]
    assert settings["dry_run"] is False and settings["dtype"] == "float16"
    assert "ONE CUDA graph" in shipped["method"]
    got = {r["model"] for r in shipped["results"]}
    assert set(DEFAULT_MODELS) <= got
    small = {v["config"]: v for v in shipped["validation_small"]}
    assert small["small-llama-gqa"]["n_kv_head"] < small["small-llama-gqa"]["n_head"]
    for v in small.values():
        assert v["graph"] is True and v["rel_diff"] < 1e-2
        assert v["decoder_vs_fp32_max_abs_diff"] < 3 * v["hf_vs_fp32_max_abs_diff"]


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_shipped_rows_are_consistent_and_physical(shipped: dict, name: str) -> None:
    r = next(x for x in shipped["results"] if x["model"] == name)
    s = SHAPES[name]
    assert (r["params"], r["n_kv_head"], r["d_ff"], r["vocab"], r["n_ctx"], r["rope_theta"]) == \
        (s.n_params, s.n_kv_head, s.d_ff, s.vocab, s.n_ctx, s.rope_theta)
    assert r["weight_bytes"] == 2 * s.n_params
    assert r["static_kv_bytes"] == s.kv_bytes_per_token() * s.n_ctx
    assert r["positions"] == positions_for(s) == [128, s.n_ctx // 2, s.n_ctx - 1]
    v = r["validation"]
    assert v["graph"] is True and v["steps"] >= 4 and v["rel_diff"] < 2e-2
    # every step streams all weights: no time below weights / peak HBM bandwidth
    floor_ms = r["weight_bytes"] / H200_PEAK_BW_BYTES_PER_S * 1e3
    for p in r["positions"]:
        ms = r["graph"]["ms_at"][str(p)]
        assert floor_ms < ms < 4 * floor_ms
        assert r["graph"]["tokens_per_s_at"][str(p)] == pytest.approx(1e3 / ms)
    loop = r["graph"]["power_loop"]
    assert loop["position"] == s.n_ctx // 2
    assert r["idle_power_w"] < loop["mean_power_w"] < 700            # H200 board limit
    assert loop["joules_per_token"] == pytest.approx(loop["mean_power_w"] * loop["ms_per_token"] / 1e3)
    assert loop["joules_per_token_energy_counter"] == pytest.approx(loop["joules_per_token"], rel=0.1)
    assert r["joules_per_token"] == loop["joules_per_token"]
    assert r["graph"]["kernels_per_step"] < 25 * s.n_layer
