"""Llama-family decoder shapes for the measured GPU baselines: the public configs measured and the
small configs of the CPU dry runs and validations, each a
:class:`~workloads.models.shape.DecoderShape` in the Llama layout (the fields of a Hugging Face
``LlamaConfig`` that the static-cache decoders use), and the default measurement points of the
batched baseline (:mod:`workloads.gpu.batched`).

Needs only the standard library (``transformers`` for :func:`hf_llama_config` alone).
"""

from __future__ import annotations

from typing import Any

from workloads.models.shape import LLAMA_LAYOUT, DecoderShape


def llama_shape(name: str, hf: str, n_layer: int, d_model: int, n_head: int, n_kv_head: int,
                d_ff: int, vocab: int, n_ctx: int, theta: float) -> DecoderShape:
    """A Llama-family :class:`DecoderShape` (SwiGLU, RMSNorm with eps 1e-5, rotary, untied head,
    no biases; ``d_head = d_model // n_head``)."""
    return DecoderShape(name=name, hf_config=hf, n_layer=n_layer, d_model=d_model, n_head=n_head,
                        n_kv_head=n_kv_head, d_ff=d_ff, vocab=vocab, n_ctx=n_ctx,
                        rope_theta=theta, norm_eps=1e-5, **LLAMA_LAYOUT)


SHAPES: dict[str, DecoderShape] = {
    s.name: s
    for s in (
        llama_shape("llama2-7b", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 11008, 32000, 4096, 10000.0),
        llama_shape("llama2-13b", "meta-llama/Llama-2-13b-hf", 40, 5120, 40, 40, 13824, 32000, 4096, 10000.0),
        llama_shape("llama2-70b", "meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 28672, 32000, 4096, 10000.0),
        llama_shape("llama3-8b", "meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, 8192, 500000.0),
        # small configs for the CPU dry run, the unit tests and the on-device validation
        llama_shape("tiny-llama", "", 2, 64, 4, 4, 176, 256, 64, 10000.0),
        llama_shape("tiny-llama-gqa", "", 2, 64, 8, 2, 160, 256, 64, 500000.0),
        llama_shape("small-llama", "", 4, 512, 8, 8, 1376, 1000, 512, 10000.0),
        llama_shape("small-llama-gqa", "", 4, 512, 8, 2, 1792, 1000, 512, 500000.0),
    )
}
DEFAULT_MODELS = ("llama2-7b", "llama3-8b", "llama2-13b")
VALIDATION_CONFIGS = ("small-llama", "small-llama-gqa")
DRY_RUN_MODELS = ("tiny-llama", "tiny-llama-gqa")

TP_DEFAULT_MODELS = ("llama2-70b", "llama2-13b", "llama2-7b")   # measure llama-tp's default

# measure batched: the decode batch sizes and KV lengths, the batch-1 prefill prompt lengths and
# the prefill points at a batch above 1 ((prompt length, batch)); the dry run's on the CPU
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_KV_LENS = (512, 2048)
DEFAULT_PROMPTS = (128, 256, 512, 1024, 2048)
DEFAULT_PREFILL_BATCHED = ((512, 4),)
DRY_RUN_BATCHES = (1, 2, 4)
DRY_RUN_KV_LENS = (16, 48)
DRY_RUN_PROMPTS = (8, 32)
DRY_RUN_PREFILL_BATCHED = ((32, 2),)


def get_shape(name: str) -> DecoderShape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown Llama shape {name!r}; known: {', '.join(SHAPES)}") from None


def hf_llama_config(shape: DecoderShape) -> Any:
    """A ``transformers.LlamaConfig`` for ``shape`` (eager attention, untied head); no download."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.d_model, intermediate_size=shape.d_ff,
                      num_hidden_layers=shape.n_layer, num_attention_heads=shape.n_head,
                      num_key_value_heads=shape.n_kv_head, max_position_embeddings=shape.n_ctx,
                      rope_theta=shape.rope_theta, rms_norm_eps=shape.norm_eps, hidden_act="silu",
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "eager"
    return cfg
