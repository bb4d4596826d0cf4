"""Presets of modern decoder shapes (from the models' public configurations), for timing runs.

They are built without weights (``meta`` tensors): Hugging Face families through their
``transformers`` config class (exported as a decode step,
:mod:`workloads.models.hf_decode`), the larger GPT-3 models as our own
:class:`~workloads.models.gpt.GPT`. A model larger than a hardware config's
memory fails to compile with the capacity error. Imports neither torch nor transformers until a
model is built.
"""

from __future__ import annotations

from typing import Any

from workloads.models.shape import DecoderShape

# name -> (transformers config class, its arguments); shapes of the public configs
HF_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama2-7b": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=11008,
                                      num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=32, vocab_size=32000,
                                      max_position_embeddings=4096)),
    "llama2-13b": ("LlamaConfig", dict(hidden_size=5120, intermediate_size=13824,
                                       num_hidden_layers=40, num_attention_heads=40,
                                       num_key_value_heads=40, vocab_size=32000,
                                       max_position_embeddings=4096)),
    "llama2-70b": ("LlamaConfig", dict(hidden_size=8192, intermediate_size=28672,
                                       num_hidden_layers=80, num_attention_heads=64,
                                       num_key_value_heads=8, vocab_size=32000,
                                       max_position_embeddings=4096)),
    "llama3-8b": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=14336,
                                      num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=8, vocab_size=128256,
                                      max_position_embeddings=8192, rope_theta=500000.0)),
    "mistral-7b": ("MistralConfig", dict(hidden_size=4096, intermediate_size=14336,
                                         num_hidden_layers=32, num_attention_heads=32,
                                         num_key_value_heads=8, vocab_size=32000,
                                         max_position_embeddings=32768, sliding_window=None)),
    "qwen2-7b": ("Qwen2Config", dict(hidden_size=3584, intermediate_size=18944,
                                     num_hidden_layers=28, num_attention_heads=28,
                                     num_key_value_heads=4, vocab_size=152064,
                                     max_position_embeddings=32768)),
    "opt-6.7b": ("OPTConfig", dict(hidden_size=4096, ffn_dim=16384, num_hidden_layers=32,
                                   num_attention_heads=32, vocab_size=50272,
                                   max_position_embeddings=2048, word_embed_proj_dim=4096)),
    "pythia-6.9b": ("GPTNeoXConfig", dict(hidden_size=4096, intermediate_size=16384,
                                          num_hidden_layers=32, num_attention_heads=32,
                                          vocab_size=50432, max_position_embeddings=2048,
                                          rotary_pct=0.25, use_parallel_residual=True)),
    "gpt-j-6b": ("GPTJConfig", dict(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64,
                                    vocab_size=50400, n_positions=2048)),
    # mistralai/Mistral-7B-v0.1 config.json: a sliding window of 4096 tokens on every layer
    # (its KV caches are rings of 4096 slots, pimsim.isa)
    "mistral-7b-v0.1": ("MistralConfig", dict(hidden_size=4096, intermediate_size=14336,
                                              num_hidden_layers=32, num_attention_heads=32,
                                              num_key_value_heads=8, vocab_size=32000,
                                              max_position_embeddings=32768,
                                              sliding_window=4096)),
    # mixtures of experts (pimsim.moe): mistralai/Mixtral-8x7B-v0.1 config.json
    "mixtral-8x7b": ("MixtralConfig", dict(hidden_size=4096, intermediate_size=14336,
                                           num_hidden_layers=32, num_attention_heads=32,
                                           num_key_value_heads=8, vocab_size=32000,
                                           max_position_embeddings=32768, num_local_experts=8,
                                           num_experts_per_tok=2, rope_theta=1e6,
                                           sliding_window=None)),
    # Qwen/Qwen3-30B-A3B config.json
    "qwen3-30b-a3b": ("Qwen3MoeConfig", dict(hidden_size=2048, intermediate_size=6144,
                                             moe_intermediate_size=768, num_hidden_layers=48,
                                             num_attention_heads=32, num_key_value_heads=4,
                                             head_dim=128, num_experts=128, num_experts_per_tok=8,
                                             norm_topk_prob=True, vocab_size=151936,
                                             max_position_embeddings=40960, rope_theta=1e6,
                                             tie_word_embeddings=False)),
    # allenai/OLMoE-1B-7B-0924 config.json
    "olmoe-1b-7b": ("OlmoeConfig", dict(hidden_size=2048, intermediate_size=1024,
                                        num_hidden_layers=16, num_attention_heads=16,
                                        num_key_value_heads=16, num_experts=64,
                                        num_experts_per_tok=8, norm_topk_prob=False,
                                        vocab_size=50304, max_position_embeddings=4096,
                                        eos_token_id=None)),
    # openai/gpt-oss-20b config.json (transformers' GptOssConfig defaults are gpt-oss-120b's:
    # the same but 36 layers and 128 experts): layers alternate a sliding window of 128 tokens
    # (a KV ring) and full attention, attention sinks, q/k/v/o biases, experts with biases and
    # a clamped SwiGLU (limit 7.0), YaRN rotary (factor 32 over 4096 positions)
    "gpt-oss-20b": ("GptOssConfig", dict(
        hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4,
        sliding_window=128, vocab_size=201088, max_position_embeddings=131072,
        attention_bias=True, swiglu_limit=7.0, tie_word_embeddings=False)),
    # openai/gpt-oss-120b config.json
    "gpt-oss-120b": ("GptOssConfig", dict(
        hidden_size=2880, intermediate_size=2880, num_hidden_layers=36, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, num_local_experts=128, num_experts_per_tok=4,
        sliding_window=128, vocab_size=201088, max_position_embeddings=131072,
        attention_bias=True, swiglu_limit=7.0, tie_word_embeddings=False)),
    # deepseek-ai/DeepSeek-V3 config.json: multi-head latent attention (q_lora_rank 1536,
    # kv_lora_rank 512, 128 heads of a 128 + 64 element no-rope + rotary key and a 128-element
    # value), the first 3 layers dense (intermediate 18432), then 256 routed experts of 2048
    # (8 per token: sigmoid scores, 4 of 8 groups, scaled by 2.5) + 1 shared; yarn rope
    # (factor 40 over 4096 positions, its mscale scales the scores) to 163840 positions; its
    # multi-token-prediction layer (num_nextn_predict_layers 1) is not part of a decode step.
    # Every shape field equals DeepseekV3Config's defaults (transformers 5.x); the context and
    # the yarn rope are the config.json's. Its decode step caches the shared latent
    # (workloads.models.mla, MLA_FORM).
    "deepseek-v3": ("DeepseekV3Config", dict(
        hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, first_k_dense_replace=3, n_routed_experts=256, num_experts_per_tok=8,
        n_shared_experts=1, n_group=8, topk_group=4, routed_scaling_factor=2.5,
        norm_topk_prob=True, vocab_size=129280, max_position_embeddings=163840,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                         "original_max_position_embeddings": 4096, "beta_fast": 32.0,
                         "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
        rms_norm_eps=1e-6, tie_word_embeddings=False)),
}

# the KV cache of a preset with multi-head latent attention (workloads.models.mla.FORMS):
# the shared latent, kv_b_proj absorbed, as DeepSeek serves it
MLA_FORM: dict[str, str] = {"deepseek-v3": "latent"}

GPT_SHAPES: dict[str, DecoderShape] = {
    c.name: c for c in (
        DecoderShape(name="gpt3-6.7b", n_layer=32, d_model=4096, n_head=32, d_head=128,
                  vocab=50257, n_ctx=2048),
        DecoderShape(name="gpt3-13b", n_layer=40, d_model=5140, n_head=40, d_head=128,
                  vocab=50257, n_ctx=2048),  # the paper's d_model 5140 (n_head*d_head 5120)
        DecoderShape(name="gpt3-175b", n_layer=96, d_model=12288, n_head=96, d_head=128,
                  vocab=50257, n_ctx=2048),
    )
}

NAMES = tuple(HF_SHAPES) + tuple(GPT_SHAPES)


def n_ctx(name: str) -> int:
    if name in GPT_SHAPES:
        return GPT_SHAPES[name].n_ctx
    kw = HF_SHAPES[name][1]
    return int(kw.get("max_position_embeddings", kw.get("n_positions", 0)))


def build(name: str) -> Any:
    """The weightless (``meta``) model of a zoo preset, ready for the compiler."""
    import torch

    if name in GPT_SHAPES:
        from workloads.models.gpt import GPT

        return GPT(GPT_SHAPES[name], device="meta").eval()
    import transformers

    from workloads.models.hf_decode import decode_step_module
    from workloads.models.hf_quiet import quiet_hf

    cls, kw = HF_SHAPES[name]
    with quiet_hf(), torch.device("meta"):
        cfg = getattr(transformers, cls)(**kw)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    return decode_step_module(model.eval(), mla=MLA_FORM.get(name, "decompressed"))
