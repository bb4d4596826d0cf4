"""The attention of a Hugging Face decoder's decode step as pimsim lowers it: ``q.K^T`` over
every cached token (a sliding window's marked, :func:`workloads.models.moe_ops.attn_window`),
softmax (with gpt-oss's sinks, ``softmax_sink``), ``p.V``, grouped-query heads kept at their KV
heads; registered as a transformers attention function by :mod:`workloads.models.hf_decode`
and called by the multi-head latent attention of :mod:`workloads.models.mla`."""

from __future__ import annotations

from typing import Any

import torch

from pimsim.errors import UserError


class UnsupportedFeatureError(UserError):
    """A Hugging Face model uses a feature the decode step does not model (soft-capping): an
    intended refusal, bad input rather than a pimsim bug."""


def decode_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
               scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple:
    b, n_q, s, d = query.shape
    n_kv = key.shape[1]
    if kwargs.get("softcap"):
        raise UnsupportedFeatureError("the model's attention uses soft-capping, which pimsim does "
                                      "not support", "use a model with plain full attention")
    scale = d ** -0.5 if scaling is None else scaling
    window = kwargs.get("sliding_window")
    if window:  # the keys of the last `window` tokens only: a KV ring of that many slots
        from workloads.models.moe_ops import attn_window

        query = attn_window(query, int(window))
    q = query.reshape(b, n_kv, (n_q // n_kv) * s, d)
    scores = torch.matmul(q, key.transpose(-1, -2)) * scale
    sinks = kwargs.get("s_aux")
    if sinks is not None:  # gpt-oss: a logit per query head in the denominator, no value
        from workloads.models.moe_ops import softmax_sink

        sink = sinks.reshape(n_kv, n_q // n_kv, 1).expand(n_kv, n_q // n_kv, s)
        p = softmax_sink(scores.float(), sink.reshape(1, n_kv, (n_q // n_kv) * s, 1).float())
        p = p.to(value.dtype)
    else:
        p = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    ctx = torch.matmul(p, value)  # [b, n_kv, group * s, d_v] (MLA: d_v is not d)
    return ctx.reshape(b, n_q, s, value.shape[-1]).transpose(1, 2), None
