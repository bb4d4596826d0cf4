"""The GPU model of DeepSeek-V3 (multi-head latent attention + its mixture of experts): the
weights a decode step reads are the parameters the tiny transformers model has (counted by
name: one embedding row, the dense layer, MLA's projections, the shared expert, the router, the
chosen routed experts, the head), the KV bytes per token its latent cache's, the FLOPs its
products', and the preset needs more H100s than a node has."""

from __future__ import annotations

import math

import pytest

from workloads.gpu import model as gm
from workloads.gpu import shapes
from workloads.models import zoo

FP16 = 2


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("transformers")
    from hf_tiny import tiny_deepseek_v3

    model = tiny_deepseek_v3()
    cfg = model.config
    shape = shapes.config_shape("tiny-deepseek-v3", type(cfg).__name__, cfg.to_dict(),
                                cfg.max_position_embeddings)
    return model, cfg, shape


def _router_bias(model) -> dict[str, int]:
    """The routers' per-expert biases: checkpoint tensors the top-k choice reads, held by
    transformers as buffers (e_score_correction_bias), not parameters."""
    return {n: b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")}


def _read_per_step(model, cfg, tokens: int) -> float:
    """Parameters a decode step of ``tokens`` tokens reads, from the model's named parameters:
    every one once, but one row of the embedding table and, of the routed experts, the
    expected union of the tokens' choices (uniform routing): E (1 - (1 - k/E)^tokens) of E."""
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    union = E * (1 - (1 - k / E) ** tokens) / E
    n = 0.0
    for name, p in model.named_parameters():
        if name.endswith("embed_tokens.weight"):
            n += p.shape[1]
        elif ".mlp.experts." in name:
            n += p.numel() * union
        else:
            n += p.numel()
    return n + sum(_router_bias(model).values())


def test_tiny_shape_counts_every_parameter(tiny):
    model, cfg, s = tiny
    assert s.is_mla and s.n_dense_layers == 1 and s.n_moe_layers == 2 and not s.shared_gate
    assert s.d_head == 32 and s.n_kv_head == 1
    n = sum(p.numel() for p in model.parameters()) + sum(_router_bias(model).values())
    assert s.n_params == n


@pytest.mark.parametrize("tokens", [1, 2, 5, 64])
def test_weight_bytes_per_step_are_the_parameters_read(tiny, tokens):
    model, cfg, s = tiny
    want = FP16 * _read_per_step(model, cfg, tokens)
    got = gm.weight_bytes_streamed(s, tokens=tokens)
    assert abs(got - want) <= FP16  # the expected union rounded to whole parameters
    if tokens == 1:
        assert got == want  # k of E experts exactly


def test_kv_bytes_per_token_are_the_latent_cache(tiny):
    from workloads.models.mla import cache_dims

    _, cfg, s = tiny
    heads, key, _ = cache_dims(cfg, "latent")  # one KV head: [c_kv, k_rope]; values are c_kv
    assert heads == 1 and key == cfg.kv_lora_rank + cfg.qk_rope_head_dim == 48
    assert s.kv_bytes_per_token() == cfg.num_hidden_layers * key * FP16
    assert gm.kv_bytes_read(s, 9) == 10 * 3 * 48 * FP16
    # decompressed: every head's key and value
    import dataclasses

    dec = dataclasses.replace(s, mla_latent=False, n_kv_head=None)
    h, k, v = cache_dims(cfg, "decompressed")
    assert dec.n_kv_head == h and dec.kv_bytes_per_token() == 3 * h * (k + v) * FP16
    assert dec.weight_bytes_streamed() == s.weight_bytes_streamed()  # kv_b_proj read either way
    # DeepSeek-V3: 576 elements per token and layer
    ds = shapes.zoo_shape("deepseek-v3")
    assert ds.kv_elems_per_token_layer == 576 and ds.kv_bytes_per_token() == 61 * 576 * FP16


def test_decode_flops_are_the_products_read(tiny):
    model, cfg, s = tiny
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    macs = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or name.endswith("embed_tokens.weight"):
            continue  # norms; the embedding is a lookup
        macs += p.numel() * k // E if ".mlp.experts." in name else p.numel()
    assert gm.decode_flops(s, -1) == 2 * macs  # the products alone (no cached position)
    # each cached position: every head's score over [c_kv, k_rope] and value over c_kv
    per_pos = 2 * cfg.num_attention_heads * (2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    assert gm.decode_flops(s, 7) - gm.decode_flops(s, 6) == cfg.num_hidden_layers * per_pos


def test_deepseek_v3_preset():
    s = shapes.zoo_shape("deepseek-v3")
    assert "deepseek-v3" in shapes.gpu_names()
    # 671 B parameters, 37 B of them read per token (the routed experts' union grows with the
    # batch towards all 256)
    assert s.n_params == 671_026_419_200
    assert 36.5e9 < gm.weight_bytes_streamed(s) / FP16 < 37.0e9
    assert gm.weight_bytes_streamed(s, tokens=64) > 10 * gm.weight_bytes_streamed(s)
    # bf16 weights need 17 H100 80 GB; with the 163,840-token latent cache on every GPU and the
    # reserve 20; the fewest power of two (dividing its 128 heads) 32
    assert math.ceil(s.n_params * FP16 / 80e9) == 17
    assert gm.min_gpus("H100", s, range(1, 65)) == 20
    assert gm.min_gpus("H100", s) == 32
    with pytest.raises(ValueError, match="use tp=32 or more H100"):
        gm.predict("H100", s, 100, tp=16)
    # tensor parallel: each GPU its share of the weights and the whole latent cache (one KV head)
    r = gm.predict_step("H100", s, [511] * 4, tp=32)
    want = gm.weight_bytes_streamed(s, tokens=4) / 32 + 4 * gm.kv_bytes_read(s, 511)
    assert r["bytes"] == pytest.approx(want)


def test_deepseek_v3_prefill_turns_compute_bound():
    s = shapes.zoo_shape("deepseek-v3")
    g = gm.gpu_preset("H100").for_shape(s)  # the gated (Llama) path's efficiencies
    for n, compute_bound in ((2048, False), (8192, True)):
        r = gm.predict_prefill(g, s, n, tp=32)
        assert r["flops"] == gm.prefill_flops(s, 0, n)
        gemm_flops = n * (2 * gm.decode_flops(s, 0) - gm.decode_flops(s, 1))
        compute_s = gemm_flops / 32 / (g.peak_flops * g.compute_eff)
        # a prompt's tokens read every expert: 2,048 tokens give each of the 256 about 64,
        # too few to leave the weights' memory roofline; 8,192 do
        memory_s = gm.weight_bytes_streamed(s, tokens=n) / 32 / (g.mem_bw * g.mem_eff)
        assert (compute_s > memory_s) == compute_bound
        assert r["gemm_ms"] == pytest.approx(max(compute_s, memory_s) * 1e3)


def test_zoo_preset_keeps_its_shape():
    cls, kw = zoo.HF_SHAPES["deepseek-v3"]
    s = shapes.zoo_shape("deepseek-v3")
    assert (s.q_lora_rank, s.kv_lora_rank, s.qk_nope_head_dim, s.qk_rope_head_dim,
            s.v_head_dim) == (1536, 512, 128, 64, 128)
    assert (s.n_dense_layers, s.d_ff_dense, s.d_ff, s.d_ff_shared) == (3, 18432, 2048, 2048)
    assert (s.n_experts, s.experts_per_tok, s.router_bias) == (256, 8, True)
    assert s.mla_latent == (zoo.MLA_FORM["deepseek-v3"] == "latent") and s.n_ctx == 163840
