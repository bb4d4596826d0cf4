"""A Hugging Face decoder exported by ``torch.export`` with a static KV cache, as a
``module:attribute`` MODEL (the program is the reference: ``pimsim validate`` runs it in PyTorch).

``transformers.integrations.executorch.convert_and_export_with_cache`` is transformers' own
torch.export door (the one ExecuTorch uses): ``forward(input_ids [1, 1], cache_position [1])``
with the cache as ``[1, n_kv, max_cache_len, d_head]`` buffers. The model here is a small random
Llama with grouped-query attention (8 query heads, 2 KV heads of 16; weights rounded to bf16);
nothing is downloaded.

    PYTHONPATH=. pimsim validate examples.static_cache:llama --tokens 16 --exact
    PYTHONPATH=. pimsim run examples.static_cache:llama --functional --tokens 8
"""

from __future__ import annotations

from typing import Any

MAX_CACHE_LEN = 64


def export_with_static_cache(model: Any, max_cache_len: int = MAX_CACHE_LEN) -> Any:
    """``model``'s decode step with a static cache of ``max_cache_len`` rows, exported."""
    from transformers.integrations.executorch import convert_and_export_with_cache

    model.generation_config.cache_implementation = "static"
    model.generation_config.cache_config = {"batch_size": 1, "max_cache_len": max_cache_len}
    return convert_and_export_with_cache(model)


def llama(seed: int = 0) -> Any:
    """A 2-layer Llama (d_model 128, 8 query heads and 2 KV heads of 16, vocab 512), exported."""
    import torch
    import transformers as T

    cfg = T.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                        vocab_size=512, max_position_embeddings=MAX_CACHE_LEN)
    torch.manual_seed(seed)
    model = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return export_with_static_cache(model)
