"""A Llama of about 1 B parameters with random weights, as a ``module:attribute`` MODEL.

The shape is TinyLlama-1.1B's public configuration (``TinyLlama/TinyLlama-1.1B-Chat-v1.0``,
``config.json``): hidden 2048, 22 layers, 32 query heads and 4 KV heads (grouped-query
attention, 8 query heads per KV head, head dim 64), SwiGLU intermediate 5632, vocab 32000,
RMSNorm eps 1e-5, RoPE theta 10000, untied LM head; 1,100,048,384 parameters. Only the shape is
TinyLlama's: the weights are random (Hugging Face's own initialisation, std 0.02, from
``torch.manual_seed(seed)``) and rounded to bf16, so the PIM's bf16 weights are the model's own.
Nothing is downloaded.

    PYTHONPATH=. pimsim compile examples.llama_1b:build --hw pim-gpt
    PYTHONPATH=. pimsim validate examples.llama_1b:build --hw pim-gpt --tokens 64 --reference cuda

``build_2l`` is the same shape with 2 layers (for a quick check on a small machine) and
``build_tiny`` a small model of the same family and head layout. ``transformers`` and torch are
imported only when a model is built.
"""

from __future__ import annotations

from typing import Any

# TinyLlama-1.1B's public config.json (the fields that fix the shape and the maths)
TINYLLAMA_1B: dict[str, Any] = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
    num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu", initializer_range=0.02,
    attention_bias=False, mlp_bias=False)

N_PARAMS = 1_100_048_384  # of TINYLLAMA_1B (tests/test_llama_1b.py counts it on meta tensors)


def config(**overrides: Any) -> Any:
    """The ``transformers.LlamaConfig`` of TinyLlama-1.1B's shape, with ``overrides``."""
    import transformers as T

    return T.LlamaConfig(**{**TINYLLAMA_1B, **overrides})


def n_params(cfg: Any) -> int:
    """Parameters of the Llama of ``cfg``, counted on the ``meta`` device (nothing allocated)."""
    import torch
    import transformers as T

    with torch.device("meta"):
        model = T.LlamaForCausalLM(cfg)
    return sum(p.numel() for p in model.parameters())


def random_llama(cfg: Any, seed: int = 0) -> Any:
    """A ``LlamaForCausalLM`` of ``cfg`` with seeded random weights rounded to bf16 (kept in
    fp32), in eval mode."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    model = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


def build(seed: int = 0) -> Any:
    """TinyLlama-1.1B's shape, random weights (about 4.4 GB in fp32 while built)."""
    return random_llama(config(), seed)


def build_2l(seed: int = 0) -> Any:
    """The same shape with 2 layers (219 M parameters, most of them embedding and head)."""
    return random_llama(config(num_hidden_layers=2), seed)


def build_tiny(seed: int = 0) -> Any:
    """A small Llama with the same head layout (32 query heads, 4 KV heads; head dim 16), 2 layers."""
    return random_llama(config(hidden_size=512, intermediate_size=1408, num_hidden_layers=2,
                               vocab_size=1024, max_position_embeddings=256), seed)
