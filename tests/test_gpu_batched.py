"""Batched Llama GPU baseline on the CPU in fp32: the batched decode and the prefill against
batch-1 steps of the existing static-cache decoder, the memory estimate, and the import footprint
(the dry run of ``measure batched`` is in ``tests/test_gpu_cli.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workloads.gpu.batched import (
    BatchedLlamaDecoder,
    activation_bytes,
    kv_cache_bytes,
    validate_small,
)
from workloads.gpu.decoders import LlamaStaticDecoder
from workloads.gpu.llama_shapes import get_shape

REPO = Path(__file__).resolve().parents[1]
SEED, STD = 3, 0.3
ATOL, RTOL = 2e-5, 1e-5


def _pair(name: str, batch: int, cache_len: int) -> tuple[LlamaStaticDecoder, BatchedLlamaDecoder]:
    shape = get_shape(name)
    ref = LlamaStaticDecoder(shape, device="cpu", dtype=torch.float32, seed=SEED, init_std=STD)
    dec = BatchedLlamaDecoder(shape, batch=batch, cache_len=cache_len, device="cpu",
                              dtype=torch.float32, seed=SEED, init_std=STD)
    return ref, dec


def _streams(batch: int, n: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(11))


def _batch1(ref: LlamaStaticDecoder, toks: torch.Tensor) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """Per sequence: the batch-1 logits of every step from position 0, and the K cache after."""
    logits, caches = [], []
    for row in toks:
        ref.reset("zeros")
        logits.append([ref.decode(int(t), p)[0].clone() for p, t in enumerate(row)])
        caches.append(ref.k_cache.clone())
    return logits, caches


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-gqa"])
def test_weights_are_the_batch1_decoders(name: str) -> None:
    ref, dec = _pair(name, 2, 8)
    a, b = ref.hf_state_dict(), dec.hf_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s = get_shape(name)
    assert dec.k_cache.shape == (s.n_layer, 2, s.n_kv_head, 8, s.d_head)
    assert dec.kv_bytes == kv_cache_bytes(s, 2, 8, 4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-gqa"])
def test_batched_decode_steps_equal_batch1_steps(name: str) -> None:
    """B sequences with different tokens decoded together from position 0, step by step."""
    B, n = 4, 7
    ref, dec = _pair(name, B, n)
    toks = _streams(B, n, dec.shape.vocab)
    want, want_k = _batch1(ref, toks)
    for p in range(n):
        got = dec.decode(toks[:, p].tolist(), p)
        assert got.shape == (B, dec.shape.vocab)
        for b in range(B):
            torch.testing.assert_close(got[b], want[b][p], atol=ATOL, rtol=RTOL)
    for b in range(B):
        torch.testing.assert_close(dec.k_cache[:, b], want_k[b][:, :, :n], atol=ATOL, rtol=RTOL)
    assert float(want[0][-1].abs().max()) > 0.1   # the check compares non-trivial logits


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-gqa"])
def test_batched_decode_at_different_positions(name: str) -> None:
    """Each sequence at its own position over its own cache (filled from the batch-1 decoder),
    stale slots beyond the position masked: the logits and written K/V of batch-1 steps."""
    B, n = 4, 9
    ref, dec = _pair(name, B, n)
    toks = _streams(B, n, dec.shape.vocab)
    want, want_k = _batch1(ref, toks)
    ref_v = []
    for row in toks:  # V caches too
        ref.reset("zeros")
        for p, t in enumerate(row):
            ref.decode(int(t), p)
        ref_v.append(ref.v_cache.clone())
    pos = [8, 2, 5, 0]
    dec.reset("random", seed=5)             # garbage everywhere; then the real history below pos
    for b, p in enumerate(pos):
        dec.k_cache[:, b, :, :p] = want_k[b][:, :, :p]
        dec.v_cache[:, b, :, :p] = ref_v[b][:, :, :p]
    got = dec.decode([int(toks[b, p]) for b, p in enumerate(pos)], pos)
    for b, p in enumerate(pos):
        torch.testing.assert_close(got[b], want[b][p], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(dec.k_cache[:, b, :, p], want_k[b][:, :, p], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(dec.v_cache[:, b, :, p], ref_v[b][:, :, p], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-gqa"])
def test_prefill_equals_batch1_steps_and_decode_continues(name: str) -> None:
    B, P = 3, 10
    ref, dec = _pair(name, B, P + 1)
    toks = _streams(B, P + 1, dec.shape.vocab)
    want, want_k = _batch1(ref, toks)
    pre = dec.prefill(B, P)
    pre.set_prompt(toks[:, :P])
    got = pre.run()
    assert got.shape == (B, dec.shape.vocab)
    for b in range(B):
        torch.testing.assert_close(got[b], want[b][P - 1], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(dec.k_cache[:, b, :, :P], want_k[b][:, :, :P], atol=ATOL, rtol=RTOL)
    nxt = dec.decode(toks[:, P].tolist(), P)
    for b in range(B):
        torch.testing.assert_close(nxt[b], want[b][P], atol=ATOL, rtol=RTOL)


def test_prefill_of_one_prompt_into_a_larger_batch() -> None:
    ref, dec = _pair("tiny-llama-gqa", 4, 16)
    toks = _streams(1, 12, dec.shape.vocab)
    want, _ = _batch1(ref, toks)
    pre = dec.prefill(1, 12)
    pre.set_prompt(toks)
    torch.testing.assert_close(pre.run()[0], want[0][11], atol=ATOL, rtol=RTOL)
    assert not dec.k_cache[:, 1:].any() and not dec.k_cache[:, 0, :, 12:].any()


def test_resize_keeps_the_weights_and_checks_inputs() -> None:
    _, dec = _pair("tiny-llama", 2, 8)
    w = dec.wqkv[0].clone()
    dec.resize(5, 3)
    assert dec.k_cache.shape[1] == 5 and dec.k_cache.shape[3] == 3 and dec.n_ctx == 3
    assert torch.equal(dec.wqkv[0], w) and dec.cos.shape[0] == 3
    with pytest.raises(ValueError, match="need 5 tokens"):
        dec.set_inputs([1, 2], 0)
    with pytest.raises(ValueError, match="outside"):
        dec.set_inputs(1, 3)
    with pytest.raises(ValueError, match="does not fit"):
        dec.prefill(1, 4)
    with pytest.raises(ValueError, match="does not fit"):
        dec.prefill(6, 2)


def test_memory_estimate_counts_the_cache_and_scores() -> None:
    s = get_shape("llama2-7b")
    assert kv_cache_bytes(s, 1, 1) == s.kv_bytes_per_token() == 512 * 1024
    assert kv_cache_bytes(s, 256, 513) == 256 * 513 * 512 * 1024
    assert activation_bytes(s, 64, 513) > activation_bytes(s, 64, 513, scores=False) > 0
    assert activation_bytes(s, 256, 2049) < 1 << 30     # the cache dominates a decode step


@pytest.mark.parametrize("attention", ["bmm", "kq", "sdpa"])
@pytest.mark.parametrize("model", ["tiny-llama-gqa", "tiny-llama"])
def test_small_validation_on_cpu(model, attention) -> None:
    """Every decode attention formulation gives the batch-1 decoder's logits, grouped (GQA) or
    not, at mixed positions."""
    r = validate_small(model, torch.device("cpu"), torch.float32, attention=attention)
    assert r["graph"] is False and len(set(r["mixed_positions"])) == r["batch"]
    assert max(r["max_abs_diff"].values()) < 1e-5 and r["max_abs_logit"] > 0


def test_an_unknown_decode_attention_is_refused() -> None:
    from workloads.gpu.batched import decode_attention

    q, kv = torch.zeros(1, 2, 4), torch.zeros(1, 1, 3, 4)
    with pytest.raises(ValueError, match="use one of bmm, kq, sdpa"):
        decode_attention(q, kv, kv, torch.zeros(1, 1, 3), "flash")


def test_module_needs_no_simulator_or_transformers_to_import() -> None:
    code = ("import sys, workloads.gpu.batched; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'simpy', 'numba', 'pimsim', 'compiler', 'transformers'}); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
