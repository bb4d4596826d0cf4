"""Decoder shapes for the GPU model: a zoo preset's :class:`~workloads.models.shape.DecoderShape`.

The GPU model counts a decoder's bytes and FLOPs from its
:class:`~workloads.models.shape.DecoderShape` (GPT, Llama-family, OPT, GPT-NeoX (Pythia) or GPT-J:
grouped-query attention, SwiGLU, tied or untied head, biases, norms; mixtures of experts; and
DeepSeek-V3's multi-head latent attention with its dense first layers, shared expert and router
bias). :func:`zoo_shape` reads one
from a zoo preset's config arguments (:mod:`workloads.models.zoo`; nothing is built, no torch or
transformers); :func:`shape_for` turns a preset name (GPT or zoo) into what
:func:`workloads.gpu.model.predict` takes. The models side does not import this package; this
module imports the presets.

Needs only the standard library.
"""

from __future__ import annotations

from typing import Any

from workloads.models import zoo
from workloads.models.presets import PRESETS
from workloads.models.shape import LLAMA_LAYOUT, DecoderShape

# per transformers config class: how its decoder is built (what the parameter count needs);
# ``rope`` names the config argument of the rotary base (None: learned positions), ``eps`` that of
# the norm epsilon, each with the transformers default
NO_BIAS = dict(qkv_bias=False, out_bias=False, mlp_bias=False, head_bias=False)
FAMILY_FIELDS: dict[str, dict[str, Any]] = {
    # Llama, Mistral, Qwen2: SwiGLU, RMSNorm, rotary, untied head (tie_word_embeddings False);
    # Qwen2 has biases on q/k/v only
    "LlamaConfig": dict(LLAMA_LAYOUT),
    "MistralConfig": dict(LLAMA_LAYOUT),
    "Qwen2Config": dict(LLAMA_LAYOUT, qkv_bias=True),
    # OPT: learned positions with an offset of 2 rows, biases everywhere, LayerNorm, tied head
    "OPTConfig": dict(NO_BIAS, tied_head=True, qkv_bias=True, out_bias=True, mlp_bias=True),
    # GPT-NeoX (Pythia): rotary, biases everywhere, LayerNorm, untied head
    "GPTNeoXConfig": dict(NO_BIAS, tied_head=False, qkv_bias=True, out_bias=True, mlp_bias=True),
    # GPT-J: one LayerNorm per layer (parallel attention and MLP), no attention biases, MLP and
    # LM-head biases, untied head
    "GPTJConfig": dict(NO_BIAS, tied_head=False, mlp_bias=True, head_bias=True, norms_per_layer=1),
    # mixtures of experts: Llama layouts with routed SwiGLU experts (Qwen3-MoE and OLMoE add
    # q/k norms, MOE_QK_NORM)
    "MixtralConfig": dict(LLAMA_LAYOUT),
    "Qwen3MoeConfig": dict(LLAMA_LAYOUT),
    "Qwen2MoeConfig": dict(LLAMA_LAYOUT, qkv_bias=True),
    "OlmoeConfig": dict(LLAMA_LAYOUT),
    # gpt-oss: biases on q/k/v/o and on every expert's products
    "GptOssConfig": dict(LLAMA_LAYOUT, qkv_bias=True, out_bias=True, mlp_bias=True),
    # DeepSeek-V3: multi-head latent attention (MLA_CONFIGS), the first first_k_dense_replace
    # layers dense, routed experts + n_shared_experts ungated shared experts, a router bias
    "DeepseekV3Config": dict(LLAMA_LAYOUT, shared_gate=False, router_bias=True),
}
# MoE config arguments: (experts, experts per token, expert width, shared expert width or None)
MOE_CONFIG_ARGS: dict[str, tuple[str, str, str, str | None]] = {
    "MixtralConfig": ("num_local_experts", "num_experts_per_tok", "intermediate_size", None),
    "Qwen3MoeConfig": ("num_experts", "num_experts_per_tok", "moe_intermediate_size", None),
    "Qwen2MoeConfig": ("num_experts", "num_experts_per_tok", "moe_intermediate_size",
                       "shared_expert_intermediate_size"),
    "OlmoeConfig": ("num_experts", "num_experts_per_tok", "intermediate_size", None),
    "GptOssConfig": ("num_local_experts", "num_experts_per_tok", "intermediate_size", None),
    # the shared experts' width is n_shared_experts x moe_intermediate_size (zoo_shape)
    "DeepseekV3Config": ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
                         None),
}
# configs of multi-head latent attention (DecoderShape's MLA fields; transformers' defaults of
# DeepseekV3Config where a preset leaves an argument out: q_lora_rank 1536, attention_bias False,
# first_k_dense_replace 3, n_shared_experts 1)
MLA_CONFIGS: dict[str, dict[str, Any]] = {
    "DeepseekV3Config": dict(q_lora_rank=1536, attention_bias=False, first_k_dense_replace=3,
                             n_shared_experts=1),
}
# (rotary base argument or None for learned positions, its default; norm epsilon argument, its default)
FAMILY_CONFIG_ARGS: dict[str, tuple[str | None, float, str, float]] = {
    "LlamaConfig": ("rope_theta", 10000.0, "rms_norm_eps", 1e-6),
    "MistralConfig": ("rope_theta", 10000.0, "rms_norm_eps", 1e-6),
    "Qwen2Config": ("rope_theta", 10000.0, "rms_norm_eps", 1e-6),
    "OPTConfig": (None, 0.0, "layer_norm_eps", 1e-5),
    "GPTNeoXConfig": ("rotary_emb_base", 10000.0, "layer_norm_eps", 1e-5),
    "GPTJConfig": ("rope_theta", 10000.0, "layer_norm_epsilon", 1e-5),
    "MixtralConfig": ("rope_theta", 1e6, "rms_norm_eps", 1e-5),
    "Qwen3MoeConfig": ("rope_theta", 10000.0, "rms_norm_eps", 1e-6),
    "Qwen2MoeConfig": ("rope_theta", 10000.0, "rms_norm_eps", 1e-6),
    "OlmoeConfig": ("rope_theta", 10000.0, "rms_norm_eps", 1e-5),
    "GptOssConfig": ("rope_theta", 150000.0, "rms_norm_eps", 1e-5),
    "DeepseekV3Config": ("rope_theta", 10000.0, "rms_norm_eps", 1e-6),
}


# the q/k RMSNorm weights per layer: Qwen3 per head (2 x d_head), OLMoE over all heads
MOE_QK_NORM = {"Qwen3MoeConfig": lambda d_attn, d_kv, d_head: 2 * d_head,
               "OlmoeConfig": lambda d_attn, d_kv, d_head: d_attn + d_kv}
# other vectors per layer: gpt-oss's attention sinks (one per query head) and router bias
EXTRA_LAYER_PARAMS = {"GptOssConfig": lambda n_head, n_experts: n_head + n_experts}


def gpu_modelled(name: str) -> bool:
    """Whether the GPU model has a shape for zoo preset ``name``."""
    return name in zoo.GPT_SHAPES or (name in zoo.HF_SHAPES
                                      and zoo.HF_SHAPES[name][0] in FAMILY_FIELDS)


def gpu_names() -> list[str]:
    """The zoo presets the GPU model covers."""
    return [n for n in zoo.NAMES if gpu_modelled(n)]


def zoo_shape(name: str) -> DecoderShape:
    """The :class:`DecoderShape` of a zoo preset, read from its config arguments (nothing is
    built; no torch or transformers)."""
    if name in zoo.GPT_SHAPES:
        return zoo.GPT_SHAPES[name]
    if name not in zoo.HF_SHAPES:
        raise ValueError(f"unknown zoo preset {name!r}; known: {', '.join(zoo.NAMES)}")
    cls, kw = zoo.HF_SHAPES[name]
    if cls not in FAMILY_FIELDS:
        from pimsim.errors import UserError

        raise UserError(f"zoo preset {name!r} ({cls}) has no GPU model",
                        f"compare a preset the GPU model covers: {', '.join(gpu_names())}")
    return config_shape(name, cls, kw, zoo.n_ctx(name),
                        mla_latent=zoo.MLA_FORM.get(name, "latent") == "latent")


def config_shape(name: str, cls: str, kw: dict[str, Any], n_ctx: int, *,
                 mla_latent: bool = True) -> DecoderShape:
    """The :class:`DecoderShape` of transformers config class ``cls`` with arguments ``kw``
    (a preset's, or a config's ``to_dict()``) and a context of ``n_ctx``; ``mla_latent``: a
    multi-head latent attention's cache form (the latent, or every head's keys and values)."""
    if cls not in FAMILY_FIELDS:
        raise ValueError(f"{name}: {cls} has no GPU shape; known: {', '.join(FAMILY_FIELDS)}")
    if cls == "GPTJConfig":
        d, n_layer, n_head = kw["n_embd"], kw["n_layer"], kw["n_head"]
        d_ff, vocab = kw.get("n_inner") or 4 * d, kw["vocab_size"]
    else:
        d, n_layer, n_head = kw["hidden_size"], kw["num_hidden_layers"], kw["num_attention_heads"]
        d_ff, vocab = kw.get("intermediate_size") or kw["ffn_dim"], kw["vocab_size"]
    fam = dict(FAMILY_FIELDS[cls])
    rope_arg, rope_default, eps_arg, eps_default = FAMILY_CONFIG_ARGS[cls]
    if rope_arg is None:
        fam["pos_rows"] = kw["max_position_embeddings"] + 2  # OPT's learned table, offset 2
    else:  # the argument, or transformers 5's rope_parameters
        fam["rope_theta"] = float(kw.get(rope_arg) or (kw.get("rope_parameters") or {})
                                  .get("rope_theta") or rope_default)
    if cls == "OPTConfig" and kw.get("word_embed_proj_dim", d) != d:
        raise ValueError(f"{name}: OPT with word_embed_proj_dim != hidden_size is not modelled")
    if cls in MOE_CONFIG_ARGS:
        n_e, k, width, shared = MOE_CONFIG_ARGS[cls]
        d_ff = kw[width]
        fam.update(n_experts=kw[n_e], experts_per_tok=kw[k],
                   d_ff_shared=kw[shared] if shared else 0,
                   tied_head=bool(kw.get("tie_word_embeddings", False)))
        if cls in MOE_QK_NORM:
            dh = kw.get("head_dim") or d // n_head
            n_kv = kw.get("num_key_value_heads", n_head)
            fam["qk_norm_params"] = MOE_QK_NORM[cls](n_head * dh, n_kv * dh, dh)
        if cls in EXTRA_LAYER_PARAMS:
            fam["extra_layer_params"] = EXTRA_LAYER_PARAMS[cls](n_head, kw[n_e])
    heads = dict(n_kv_head=kw.get("num_key_value_heads", n_head),
                 d_head=kw.get("head_dim") or d // n_head)
    if cls in MLA_CONFIGS:  # the cache's heads and d_head follow from the latent widths
        a = {**MLA_CONFIGS[cls], **kw}
        bias = bool(a["attention_bias"])
        fam.update(q_lora_rank=a["q_lora_rank"] or 0, kv_lora_rank=a["kv_lora_rank"],
                   qk_nope_head_dim=a["qk_nope_head_dim"], qk_rope_head_dim=a["qk_rope_head_dim"],
                   v_head_dim=a["v_head_dim"], mla_latent=mla_latent, qkv_bias=bias,
                   out_bias=bias, n_dense_layers=a["first_k_dense_replace"],
                   d_ff_dense=kw["intermediate_size"] if a["first_k_dense_replace"] else 0,
                   d_ff_shared=a["n_shared_experts"] * kw["moe_intermediate_size"])
        heads = {}
    return DecoderShape(name=name, n_layer=n_layer, d_model=d, n_head=n_head, **heads,
                        d_ff=d_ff, vocab=vocab, n_ctx=n_ctx,
                        norm_eps=float(kw.get(eps_arg, eps_default)), **fam)


def shape_for(name_or_cfg: Any) -> Any:
    """A model for :func:`workloads.gpu.model.predict`: a GPT preset name (its shape) or a zoo
    preset name (:func:`zoo_shape`), else the object itself (a :class:`DecoderShape`, or a
    measured row's fields with its own ``n_params``, :func:`workloads.gpu.model.is_shape`)."""
    if not isinstance(name_or_cfg, str):
        return name_or_cfg
    if name_or_cfg in PRESETS:
        return PRESETS[name_or_cfg]
    return zoo_shape(name_or_cfg)
