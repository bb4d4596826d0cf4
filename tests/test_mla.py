"""DeepSeek-V3: multi-head latent attention and its MoE lowered op by op. A tiny random model
(yarn rope, a dense first layer, sigmoid group-limited routing with a correction bias, a shared
expert) gives the model's own greedy tokens with either KV cache: the decompressed keys and
values per head, or the shared latent with kv_b_proj absorbed (one KV head of
kv_lora_rank + qk_rope_head_dim key and kv_lora_rank value elements, per-head GEMVs)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from hf_tiny import assert_same_generation, greedy_steps, hf_greedy, tiny_deepseek_v3  # noqa: E402

from compiler.pipeline import compile_model  # noqa: E402
from pimsim.config import load_config  # noqa: E402
from pimsim.errors import UserError  # noqa: E402
from workloads.models.hf_decode import decode_step_module  # noqa: E402
from workloads.validation import functional_executor  # noqa: E402

N_TOKENS = 16
PROMPT = [3]
SEED = 5  # a model whose greedy steps have no near-tie (top-2 logit gaps >= 1% of the range)


@pytest.fixture(scope="module")
def cfg():
    return load_config("pim-gpt")


@pytest.fixture(scope="module")
def model():
    return tiny_deepseek_v3(SEED)


@pytest.fixture(scope="module")
def want(model):
    return hf_greedy(model, PROMPT, N_TOKENS)


def _greedy(c, cfg):
    return greedy_steps(functional_executor(c, cfg, exact=True), N_TOKENS, PROMPT)


@pytest.mark.parametrize("form", ["decompressed", "latent"])
def test_deepseek_v3_greedy_tokens_match_the_hf_model(form, model, want, cfg):
    c = compile_model(decode_step_module(model, form), cfg, name=f"deepseek-v3-{form}")
    prog = c.program
    # layer 0 dense (first_k_dense_replace 1), layers 1 and 2 route 2 of 8 experts
    assert [(m["layer"], m["experts"], m["k"]) for m in prog.moe] == [(1, 8, 2), (2, 8, 2)]
    kv = [(kl.n_head, kl.kv_heads, kl.d_head, vl.kv_heads, vl.d_head) for kl, vl in
          prog.kv_layouts]
    if form == "latent":  # one shared head: [c_kv, k_rope] keys, c_kv values
        assert kv == [(4, 1, 32 + 16, 1, 32)] * 3
        per_head = [s for s in prog.steps if s.layer == 0 and s.kind == "pim"
                    and s.matrix is not None and (s.matrix.out_dim, s.matrix.in_dim)
                    in ((32, 16), (16, 32))]
        assert len(per_head) == 2 * 4  # W_UK^T and W_UV of each of the 4 heads
    else:  # every head its 16 + 16 key and 16 value elements
        assert kv == [(4, 4, 16 + 16, 4, 16)] * 3
    assert c.mapping.kv_bytes() == sum(kh * dk + vh * dv for _, kh, dk, vh, dv in kv) * \
        c.mapping.spec.n_ctx * prog.geo.elem_bytes
    # every parameter placed once (kv_b_proj absorbed: its blocks are the per-head GEMVs), with
    # the routers' correction biases and the rotary frequencies (the ASIC's cos / sin)
    n_params = sum(p.numel() for p in model.parameters()) + \
        sum(b.numel() for n, b in model.named_buffers()
            if n.endswith(("e_score_correction_bias", "rotary_emb.inv_freq")))
    assert c.mapping.placed_weight_elems() == n_params
    assert_same_generation(form, _greedy(c, cfg), want)


@pytest.mark.parametrize("form,split", [
    ("latent", {"tp": 2}),  # the preset's split: by default (~3-10 s)
    pytest.param("decompressed", {"pp": 2}, marks=pytest.mark.slow),
    pytest.param("latent", {"pp": 2}, marks=pytest.mark.slow)])
def test_deepseek_v3_on_two_devices(form, split, model, want, cfg):
    c = compile_model(decode_step_module(model, form), cfg, name=f"deepseek-v3-{form}", **split)
    prog = c.program
    if "tp" in split:
        # q_a_proj and kv_a_proj_with_mqa replicated (their latents are normalised whole),
        # q_b_proj split by head, each head's W_UK / W_UV local to its device (device 0 runs
        # its 2 heads' of 4), o_proj row-parallel
        qa = next(m for m in prog.matrices if m.startswith("L0.qkv") and
                  prog.matrices[m].out_dim == 32 + 32 + 16)
        assert [len(r) for r in prog.tp_rows[qa][1]] == [80, 80]
        local = [s for s in prog.steps if s.layer == 0 and s.kind == "pim" and
                 s.matrix is not None and (s.matrix.out_dim, s.matrix.in_dim) in ((32, 16),
                                                                                   (16, 32))]
        assert len(local) == 2 + 2
        assert [(kl.n_head, kl.kv_heads) for kl, _ in prog.kv_layouts] == [(2, 1)] * 3
    else:
        assert len(c.stages) == 2
    assert_same_generation(f"{form} {split}", _greedy(c, cfg), want)


@pytest.mark.slow
def test_the_decompressed_cache_is_refused_tensor_parallel(model, cfg):
    # kv_a_proj_with_mqa's outputs are the KV latent, normalised whole (replicated), and the
    # rotary key that every head's cached key repeats: the decompressed form's tensor-parallel
    # split is refused (the latent form splits, see above; this one runs on pipeline stages)
    with pytest.raises(UserError, match=r"normalised whole.*--pp"):
        compile_model(decode_step_module(model), cfg, name="deepseek-v3", tp=2)


def test_latent_cache_is_smaller_and_scores_equal_the_decompressed_ones(model):
    import torch

    from workloads.models.mla import cache_dims

    c = model.config
    assert cache_dims(c, "decompressed") == (4, 32, 16)
    assert cache_dims(c, "latent") == (1, 48, 32)
    # the absorbed score of one head equals the decompressed one: (W_UK^T q) . c = q . (W_UK c)
    att = model.model.layers[0].self_attn
    w = att.kv_b_proj.weight.detach().view(4, 16 + 16, 32)
    g = torch.Generator().manual_seed(0)
    q, lat = torch.randn(16, generator=g), torch.randn(32, generator=g)
    assert torch.allclose((w[1, :16].t() @ q) @ lat, q @ (w[1, :16] @ lat), atol=1e-5)
    with pytest.raises(UserError, match="unknown MLA cache form"):
        decode_step_module(model, "compressed")


def test_deepseek_v2s_rotary_code_is_refused():
    import torch
    import transformers as T

    with torch.device("meta"):  # DeepSeek-V2 rotates by complex multiplication: not modelled
        m = T.AutoModelForCausalLM.from_config(T.DeepseekV2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16,
            v_head_dim=16, vocab_size=128, max_position_embeddings=64))
    with pytest.raises(UserError, match="rotates its keys"):
        decode_step_module(m.eval())


def test_the_deepseek_v3_preset_has_the_public_shapes():
    import transformers as T

    from workloads.models.zoo import HF_SHAPES, MLA_FORM

    cls, kw = HF_SHAPES["deepseek-v3"]
    cfg = getattr(T, cls)(**kw)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.q_lora_rank,
            cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
            cfg.first_k_dense_replace, cfg.intermediate_size, cfg.moe_intermediate_size,
            cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_shared_experts, cfg.n_group,
            cfg.topk_group, cfg.routed_scaling_factor, cfg.vocab_size) == \
        (61, 7168, 128, 1536, 512, 128, 64, 128, 3, 18432, 2048, 256, 8, 1, 8, 4, 2.5, 129280)
    assert MLA_FORM["deepseek-v3"] == "latent"
    # yarn's mscale (0.1 ln 40 + 1) squared scales the scores beyond qk_head_dim ** -0.5
    with __import__("torch").device("meta"):
        att = T.AutoModelForCausalLM.from_config(T.DeepseekV3Config(
            **{**kw, "num_hidden_layers": 1, "n_routed_experts": 8, "n_group": 1,
               "topk_group": 1})).model.layers[0].self_attn
    assert np.isclose(att.scaling, 192 ** -0.5 * (0.1 * np.log(40) + 1) ** 2)
