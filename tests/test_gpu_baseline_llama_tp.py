"""Tensor-parallel Llama GPU baseline on the CPU: the split, and the TP decoder computing the same
function as the single-device LlamaStaticDecoder (threads, and real gloo processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workloads.gpu.cli import main
from workloads.gpu.decoders import LlamaStaticDecoder
from workloads.gpu.llama_shapes import get_shape
from workloads.gpu.llama_tp import (
    LlamaTPDecoder,
    ThreadGroup,
    add_predictions,
    check_tp,
    gloo_logits,
    shard_plan,
    summary_table,
    thread_logits,
    valid_tp,
)

REPO = Path(__file__).resolve().parents[1]
TOKENS = [5, 17, 200, 3, 99, 42]          # 6 steps


def single_logits(name: str, seed: int = 3, init_std: float = 0.3) -> list[torch.Tensor]:
    dec = LlamaStaticDecoder(get_shape(name), device="cpu", dtype=torch.float32, seed=seed,
                             init_std=init_std)
    return [dec.decode(t, pos).clone() for pos, t in enumerate(TOKENS)]


def assert_same(got: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(got) == len(ref) == len(TOKENS)
    for g, r in zip(got, ref):
        assert g.shape == r.shape == (1, r.shape[-1])
        assert float(r.abs().max()) > 0.1
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    assert [int(g.argmax()) for g in got] == [int(r.argmax()) for r in ref]


# ---- the split -------------------------------------------------------------------------------


def test_shard_plan_splits_heads_contiguously_and_repeats_shared_kv_heads() -> None:
    s70 = get_shape("llama2-70b")                        # 64 q heads, 8 KV heads
    p = [shard_plan(s70, 2, r) for r in range(2)]
    assert [x.q_heads for x in p] == [(0, 32), (32, 64)] and [x.kv_heads for x in p] == [(0, 4), (4, 8)]
    assert [x.ff for x in p] == [(0, 14336), (14336, 28672)] and p[1].vocab == (16000, 32000)
    gqa = get_shape("tiny-llama-gqa")                   # 8 q heads, 2 KV heads
    p4 = [shard_plan(gqa, 4, r) for r in range(4)]
    assert [x.q_heads for x in p4] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert [x.kv_heads for x in p4] == [(0, 1), (0, 1), (1, 2), (1, 2)]   # each on 2 ranks
    assert [x.kv_heads for x in (shard_plan(gqa, 8, r) for r in range(8))] == \
        [(0, 1)] * 4 + [(1, 2)] * 4


def test_bad_tp_says_which_sizes_work() -> None:
    with pytest.raises(ValueError, match=r"tp=3 does not divide n_head 64.*use tp in \[1, 2, 4, 8"):
        check_tp(get_shape("llama2-70b"), 3)
    assert valid_tp(get_shape("llama2-13b")) == [1, 2, 4, 8]      # 40 heads, 13824 = 2^9 x 27
    assert valid_tp(get_shape("tiny-llama")) == [1, 2, 4]


def test_shard_weights_are_slices_of_the_single_decoder_weights() -> None:
    shape = get_shape("tiny-llama-gqa")
    full = LlamaStaticDecoder(shape, device="cpu", dtype=torch.float32, seed=1)
    group = ThreadGroup(4)
    d = shape.d_head
    sh = LlamaTPDecoder(shape, comm=group.comm(2), device="cpu", dtype=torch.float32, seed=1)
    q = shape.n_head * d
    kv = shape.n_kv_head * d
    w = full.wqkv[1]
    want = torch.cat([w[4 * d:6 * d], w[q + d:q + 2 * d], w[q + kv + d:q + kv + 2 * d]])
    assert torch.equal(sh.wqkv[1], want)
    assert torch.equal(sh.wo[1], full.wo[1][:, 4 * d:6 * d])
    f, f4 = shape.d_ff, shape.d_ff // 4
    assert torch.equal(sh.wgu[0], torch.cat([full.wgu[0][2 * f4:3 * f4], full.wgu[0][f + 2 * f4:f + 3 * f4]]))
    assert torch.equal(sh.wdown[0], full.wdown[0][:, 2 * f4:3 * f4])
    assert torch.equal(sh.lm_head, full.lm_head[128:192]) and torch.equal(sh.embed, full.embed)
    assert sh.k_cache.shape == (shape.n_layer, 1, shape.n_ctx, d)


# ---- same function as the single-device decoder ----------------------------------------------


@pytest.mark.parametrize("name, n", [("tiny-llama", 2), ("tiny-llama", 4), ("tiny-llama-gqa", 2),
                                     ("tiny-llama-gqa", 4), ("tiny-llama-gqa", 8)])
def test_thread_tp_matches_single_decoder(name: str, n: int) -> None:
    assert_same(thread_logits(get_shape(name), n, TOKENS, seed=3, init_std=0.3), single_logits(name))


def test_gloo_tp2_matches_single_decoder(tmp_path: Path) -> None:
    """Real torch.distributed (gloo), two processes."""
    assert_same(gloo_logits("tiny-llama", 2, TOKENS, str(tmp_path / "l.pt"), seed=3, init_std=0.3),
                single_logits("tiny-llama"))


@pytest.mark.slow
def test_gloo_tp4_repeats_kv_heads(tmp_path: Path) -> None:
    assert_same(gloo_logits("tiny-llama-gqa", 4, TOKENS, str(tmp_path / "l.pt"), seed=3, init_std=0.3),
                single_logits("tiny-llama-gqa"))


def test_split_is_checked_against_a_wrong_split() -> None:
    """The comparison can fail: a rank holding the wrong KV head gives different logits."""
    shape = get_shape("tiny-llama-gqa")
    import workloads.gpu.llama_tp as tp

    orig = tp.shard_plan

    def swapped(s, n, r):  # noqa: ANN001, ANN202
        p = orig(s, n, r)
        k = 1 - p.kv_heads[0]
        return tp.ShardPlan(rank=r, world_size=n, q_heads=p.q_heads, kv_heads=(k, k + 1), ff=p.ff,
                            vocab=p.vocab)

    tp.shard_plan = swapped
    try:
        got = thread_logits(shape, 4, TOKENS, seed=3, init_std=0.3)
    finally:
        tp.shard_plan = orig
    ref = single_logits("tiny-llama-gqa")
    assert max(float((g - r).abs().max()) for g, r in zip(got, ref)) > 1e-2


# ---- CLI -------------------------------------------------------------------------------------


def test_too_few_gpus_is_one_line_naming_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available() and torch.cuda.device_count() >= 64:
        pytest.skip("this machine has the GPUs")
    assert main(["measure", "llama-tp", "--tp", "64", "--models", "llama2-7b",
                 "-o", "/tmp/never.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--tp 64 needs 64 CUDA GPUs" in err and "lower --tp" in err


def test_indivisible_tp_is_refused_before_spawning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", "llama-tp", "--dry-run", "--tp", "3", "-o", "/tmp/never.json"]) == 2
    assert "does not divide" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_writes_a_document_with_predictions(tmp_path: Path) -> None:
    out = tmp_path / "tp.json"
    r = subprocess.run([sys.executable, "-m", "workloads.gpu", "measure", "llama-tp", "--dry-run",
                        "--tp", "2", "--repeats", "2", "--batch-seconds", "0.02", "-o", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["tp"] == 2 and doc["settings"]["dry_run"]
    assert {v["config"] for v in doc["validation_small"]} == {"tiny-llama", "tiny-llama-gqa"}
    assert all(v["max_abs_diff"] < 1e-4 and v["greedy_tokens_equal"] for v in doc["validation_small"])
    for row in doc["results"]:
        assert row["validation"]["max_abs_diff"] < 1e-4
        assert set(row["prediction"]["ms_at"]) == {str(p) for p in row["positions"]}
    assert "tiny-llama" in summary_table(doc) and "model ms" in r.stdout


def test_predictions_use_the_tp_model() -> None:
    from workloads.gpu import calibration as gcal
    from workloads.gpu import model as gm

    row = {"model": "llama2-70b", "n_layer": 80, "d_model": 8192, "n_head": 64, "n_kv_head": 8,
           "d_head": 128, "d_ff": 28672, "vocab": 32000, "n_ctx": 4096,
           "params": get_shape("llama2-70b").n_params, "positions": [2048], "graph_captured": True,
           "graph": {"ms_at": {"2048": 22.0}, "kernels_per_step": None,
                     "power_loop": {"position": 2048, "mean_power_w": 1100.0, "joules_per_token": 0.0242}}}
    doc = {"tp": 2, "info": {"gpu": "NVIDIA H200"}, "settings": {"dry_run": True}, "results": [row],
           "not_measured": []}
    add_predictions(doc)
    p = row["prediction"]
    want = gm.predict(gcal.calibrated_preset("H200"), "llama2-70b", 2048, static_cache=True, tp=2)
    assert p["ms_at"]["2048"] == pytest.approx(want["ms"])
    assert p["err_pct_at"]["2048"] == pytest.approx(100 * (want["ms"] - 22.0) / 22.0)
    assert p["comm_ms"] == pytest.approx(want["comm_ms"]) and p["comm_ms"] > 0.9   # 160 x 6 us
    assert "| llama2-70b | 2 | 2048 | 22.000 |" in summary_table(doc)
