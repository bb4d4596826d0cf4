"""Convert Hugging Face GPT-2 models (``transformers.GPT2LMHeadModel``) into
``workloads.models.gpt.GPT``.

Models the mapping from HF's GPT-2 layout onto ours:

    transformer.wte / wpe               -> wte / wpe
    transformer.h.i.ln_1 / ln_2         -> h.i.ln_1 / ln_2
    transformer.h.i.attn.c_attn         -> h.i.attn.q, k, v   (packed [q | k | v] on the output axis)
    transformer.h.i.attn.c_proj         -> h.i.attn.out
    transformer.h.i.mlp.c_fc / c_proj   -> h.i.mlp.up / down
    transformer.ln_f                    -> ln_f
    lm_head (tied to wte)               -> tied head

HF's ``Conv1D`` stores weights as ``[in_features, out_features]`` (y = x @ W + b), the transpose
of ``nn.Linear``. GPT-2's ``gelu_new`` is the tanh-approximated GELU our model uses.

``transformers`` is an optional dependency: this module never imports it; the functions only
read attributes of the objects they are given.
"""

from __future__ import annotations

from typing import Any

import torch

from workloads.models.gpt import GPT
from workloads.models.shape import DecoderShape

_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # all are the tanh approximation


def config_from_hf(hf_config: Any, name: str = "hf-gpt2") -> DecoderShape:
    """A ``DecoderShape`` for a ``transformers.GPT2Config``; rejects variants our model lacks."""
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise ValueError(f"activation_function {act!r} unsupported; need one of {_TANH_GELUS}")
    if not getattr(hf_config, "scale_attn_weights", True):
        raise ValueError("scale_attn_weights=False unsupported: attention is scaled by 1/sqrt(d_head)")
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("scale_attn_by_inverse_layer_idx=True unsupported")
    if getattr(hf_config, "add_cross_attention", False):
        raise ValueError("add_cross_attention=True unsupported (decoder-only model)")
    d_model, n_head = int(hf_config.n_embd), int(hf_config.n_head)
    if d_model % n_head:
        raise ValueError(f"n_embd {d_model} not divisible by n_head {n_head}")
    n_inner = getattr(hf_config, "n_inner", None)
    return DecoderShape(
        name=name,
        n_layer=int(hf_config.n_layer),
        d_model=d_model,
        n_head=n_head,
        d_head=d_model // n_head,
        vocab=int(hf_config.vocab_size),
        n_ctx=int(hf_config.n_positions),
        d_ff=int(n_inner) if n_inner is not None else 4 * d_model,
        norm_eps=float(hf_config.layer_norm_epsilon),
    )


def hf_gpt2_state_dict(hf_model: Any) -> dict[str, torch.Tensor]:
    """Our ``GPT`` state dict (``nn.Linear`` layout) from a GPT2LMHeadModel or GPT2Model."""
    tr = getattr(hf_model, "transformer", hf_model)
    head = getattr(hf_model, "lm_head", None)
    if head is not None:
        if getattr(head, "bias", None) is not None or not torch.equal(head.weight, tr.wte.weight):
            raise ValueError("lm_head is not tied to wte (or has a bias); our model ties them")
    d_attn = tr.wte.weight.shape[1]  # GPT-2 always has n_head * d_head == n_embd
    sd: dict[str, torch.Tensor] = {
        "wte.weight": tr.wte.weight,
        "wpe.weight": tr.wpe.weight,
        "ln_f.weight": tr.ln_f.weight,
        "ln_f.bias": tr.ln_f.bias,
    }
    for i, blk in enumerate(tr.h):
        p = f"h.{i}"
        qkv_w_dk = blk.attn.c_attn.weight  # Conv1D: [d_model, 3 * d_attn]
        qkv_b_k = blk.attn.c_attn.bias
        for j, part in enumerate(("q", "k", "v")):
            cols = slice(j * d_attn, (j + 1) * d_attn)
            sd[f"{p}.attn.{part}.weight"] = qkv_w_dk[:, cols].T
            sd[f"{p}.attn.{part}.bias"] = qkv_b_k[cols]
        sd[f"{p}.attn.out.weight"] = blk.attn.c_proj.weight.T
        sd[f"{p}.attn.out.bias"] = blk.attn.c_proj.bias
        sd[f"{p}.mlp.up.weight"] = blk.mlp.c_fc.weight.T
        sd[f"{p}.mlp.up.bias"] = blk.mlp.c_fc.bias
        sd[f"{p}.mlp.down.weight"] = blk.mlp.c_proj.weight.T
        sd[f"{p}.mlp.down.bias"] = blk.mlp.c_proj.bias
        for ln in ("ln_1", "ln_2"):
            sd[f"{p}.{ln}.weight"] = getattr(blk, ln).weight
            sd[f"{p}.{ln}.bias"] = getattr(blk, ln).bias
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def from_hf_gpt2(hf_model: Any, name: str = "hf-gpt2") -> GPT:
    """Our ``GPT`` with the weights of a ``transformers.GPT2LMHeadModel`` (same outputs)."""
    cfg = config_from_hf(hf_model.config, name=name)
    state = hf_gpt2_state_dict(hf_model)
    with torch.device("meta"):
        model = GPT(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    return model.requires_grad_(False).eval()
