"""Tiny random Hugging Face causal LMs of every supported family, built from transformers config
classes (no download): 2 layers, d_model 64, head size 16, weights rounded to bf16."""

from __future__ import annotations

import os

import numpy as np
import torch

COMMON = dict(vocab_size=128, max_position_embeddings=64)


def _configs():
    import transformers as T

    return {
        "llama": lambda: T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                                       **COMMON),
        "llama-gqa": lambda: T.LlamaConfig(hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=8,
                                           num_key_value_heads=2, head_dim=16, **COMMON),
        "mistral": lambda: T.MistralConfig(hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, head_dim=16, sliding_window=None,
                                           **COMMON),
        "qwen2": lambda: T.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, **COMMON),
        "gpt-neox": lambda: T.GPTNeoXConfig(hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            rotary_pct=0.5, use_parallel_residual=True, **COMMON),
        "opt": lambda: T.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                   num_attention_heads=4, word_embed_proj_dim=64, **COMMON),
        "gpt-j": lambda: T.GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_inner=128,
                                      vocab_size=128, n_positions=64),
        "phi": lambda: T.PhiConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, partial_rotary_factor=0.5, **COMMON),
        "falcon": lambda: T.FalconConfig(hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, multi_query=True,
                                         new_decoder_architecture=False, parallel_attn=True,
                                         bias=False, alibi=False, vocab_size=128,
                                         max_position_embeddings=64),
        "gpt-bigcode": lambda: T.GPTBigCodeConfig(n_embd=64, n_layer=2, n_head=4, n_inner=128,
                                                  multi_query=True, vocab_size=128, n_positions=64),
        "gpt2": lambda: T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128,
                                     n_positions=64),
    }


FAMILIES = ("llama", "llama-gqa", "mistral", "qwen2", "gpt-neox", "opt", "gpt-j", "phi",
            "falcon", "gpt-bigcode", "gpt2")


_MOE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            **COMMON)


def _moe_configs():
    import transformers as T

    return {
        "mixtral": lambda: T.MixtralConfig(intermediate_size=64, head_dim=16, num_local_experts=4,
                                           num_experts_per_tok=2, **_MOE),
        "qwen2-moe": lambda: T.Qwen2MoeConfig(intermediate_size=128, moe_intermediate_size=32,
                                              shared_expert_intermediate_size=64, num_experts=8,
                                              num_experts_per_tok=2, **_MOE),
        "qwen3-moe": lambda: T.Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32,
                                              head_dim=16, num_experts=8, num_experts_per_tok=2,
                                              **_MOE),
        "olmoe": lambda: T.OlmoeConfig(intermediate_size=32, num_experts=8,
                                       num_experts_per_tok=2, eos_token_id=None, **_MOE),
        # gpt-oss: layer 0 a sliding window of 4 tokens, layer 1 full; attention sinks, q/k/v/o
        # biases, YaRN rotary (4x over 16 positions), a router bias, experts with biases and a
        # SwiGLU clamped at 1.0 (7.0 in the real models: here the clamp is reached)
        "gpt-oss": lambda: T.GptOssConfig(
            intermediate_size=32, head_dim=16, num_local_experts=8, num_experts_per_tok=2,
            sliding_window=4, swiglu_limit=1.0,
            rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                             "beta_slow": 1.0, "truncate": False,
                             "original_max_position_embeddings": 16, "rope_theta": 150000.0},
            **_MOE),
    }


MOE_FAMILIES = ("mixtral", "qwen2-moe", "qwen3-moe", "olmoe", "gpt-oss")


def tiny_moe_model(family: str, seed: int = 0):
    """A tiny random mixture-of-experts causal LM of ``family`` (2 layers, d_model 64, 4 or 8
    experts, 2 per token; Qwen2-MoE with a gated shared expert; gpt-oss's projection biases
    N(0, 0.3) and its sinks N(0, 1), logits that matter next to the scores; greedy
    choices at least 1 % of the logits' range apart)."""
    model = tiny_model_from(_moe_configs()[family](), seed)
    if family == "gpt-oss":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("_proj.bias") or name.endswith(".sinks"):
                    p.normal_(0.0, 1.0 if name.endswith(".sinks") else 0.3)
                    p.copy_(p.to(torch.bfloat16).float())
    return model


def tiny_deepseek_v3(seed: int = 0):
    """A tiny random DeepSeek-V3 (multi-head latent attention + its MoE): 3 layers, the first
    dense (first_k_dense_replace 1), d_model 64, 4 heads of a 16 + 16 element no-rope + rotary
    key and a 16-element value, query / KV latents of 32, 8 routed experts in 4 groups (2 groups
    kept, 2 experts per token) + 1 shared, yarn rope (factor 4: its mscale scales the scores);
    e_score_correction_bias random so it changes the choice."""
    import transformers as T

    cfg = T.DeepseekV3Config(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, head_dim=16,
        n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, n_shared_experts=1,
        routed_scaling_factor=2.5, first_k_dense_replace=1, norm_topk_prob=True,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 16, "beta_fast": 32.0,
                         "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
        tie_word_embeddings=False, **COMMON)
    model = tiny_model_from(cfg, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "e_score_correction_bias"):
                m.e_score_correction_bias.copy_(
                    (torch.randn(m.e_score_correction_bias.shape, generator=g) * 0.3)
                    .to(torch.bfloat16).float())
    return model


def tiny_model(family: str, seed: int = 0):
    """A tiny random causal LM of ``family`` (eval mode, weights rounded to bf16)."""
    return tiny_model_from(_configs()[family](), seed)


def tiny_model_from(cfg, seed: int = 0):
    """A random causal LM of a transformers config: weights N(0, 0.08) (norm weights near 1),
    rounded to bf16, so the PIM's bf16 weights are the model's own."""
    import transformers as T

    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08) if p.dim() > 1 else p.normal_(0.0, 0.02).add_(
                1.0 if p.dim() == 1 and p.shape[0] == cfg.get_text_config().hidden_size else 0.0)
            p.copy_(p.to(torch.bfloat16).float())
    return model


def hf_greedy(model, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """The model's own greedy generation (its own KV cache) and its logits at every step."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
    toks = out.sequences[0, len(prompt):].tolist()
    return toks, torch.stack(out.logits, 0)[:, 0].float().numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def functional_greedy(c, cfg, n: int, prompt: list[int], exact: bool = True):
    """The compiled program's own greedy generation in the functional executor: tokens and the
    logits of every step."""
    from compiler.passes.images import build_graph_image
    from pimsim.functional import AsicMath, FlowExecutor

    img = build_graph_image(c.mapping, data_type=cfg.pim.data_type)
    ex = FlowExecutor(c.program, img, cfg, math=AsicMath.from_config(cfg, exact=exact))
    return greedy_steps(ex, n, prompt)


def greedy_steps(ex, n: int, prompt: list[int]):
    """``n`` greedy steps of a functional executor from the prompt's first token: tokens and
    the logits of every step."""
    tok, toks, logits = prompt[0], [], []
    for pos in range(n):
        lg = ex.step(tok, pos)
        logits.append(lg)
        tok = int(np.argmax(lg))
        toks.append(tok)
    return toks, logits


def assert_same_generation(label: str, got: tuple, want: tuple, min_cos: float = 0.999) -> None:
    """(tokens, logits) of the simulation against the model's own: identical tokens, every
    step's logits at cosine >= ``min_cos``."""
    (toks, logits), (ref_toks, ref_logits) = got, want
    cos = [cosine(a, b) for a, b in zip(logits, ref_logits)]
    assert toks == ref_toks, f"{label}: cosines {np.round(cos, 6)}"
    assert min(cos) >= min_cos, f"{label}: cosines {np.round(cos, 6)}"


def export_optimum_layout(model, out_dir: str, past_len: int = 3,
                          position_ids: bool = True) -> str:
    """``out_dir/model.onnx`` + ``config.json``, as optimum's main_export writes them: a decode
    step with input_ids, attention_mask, position_ids (optional), past_key_values.N.key/value
    -> logits, present.N.key/value, exported by torch.onnx (dynamo), dynamic past length."""
    import torch
    from transformers import DynamicCache

    from workloads.models.hf_decode import cache_dims

    n_layer, n_kv, d_head, n_ctx = cache_dims(model.config)

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask, past, position_ids=None):
            cache = DynamicCache(config=model.config)
            for i in range(n_layer):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.m(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True)
            return (out.logits,) + tuple(t for lay in cache.layers for t in (lay.keys, lay.values))

    kv = [torch.zeros(1, n_kv, past_len, d_head) for _ in range(2 * n_layer)]
    args = (torch.zeros((1, 1), dtype=torch.long), torch.ones((1, past_len + 1), dtype=torch.long),
            kv) + ((torch.tensor([[past_len]]),) if position_ids else ())
    p = torch.export.Dim("past", min=2, max=n_ctx - 2)
    names = [f"past_key_values.{i}.{s}" for i in range(n_layer) for s in ("key", "value")]
    dyn = {"input_ids": None, "attention_mask": {1: p + 1}, "past": [{2: p} for _ in kv]}
    if position_ids:
        dyn["position_ids"] = None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.onnx")
    with torch.no_grad():
        prog = torch.onnx.export(
            Step().eval(), args, dynamo=True, dynamic_shapes=dyn,
            input_names=["input_ids", "attention_mask"] + names
            + (["position_ids"] if position_ids else []),
            output_names=["logits"] + [n.replace("past_key_values", "present") for n in names])
    prog.save(path)
    model.config.save_pretrained(out_dir)  # optimum writes config.json beside model.onnx
    return path
