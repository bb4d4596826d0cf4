"""Hugging Face causal LMs as decode steps: ``decode_step(token, pos, past_k, past_v)``.

Any ``transformers`` causal LM (Llama, Mistral, Qwen2, GPT-NeoX / Pythia, OPT, GPT-J, Phi,
Falcon, GPT-BigCode, GPT-2, ...) is exported through its own forward with its own cache class;
two standard extension points of ``transformers`` keep the exported graph a plain decode step:

* the attention implementation ``"pimsim"`` (``AttentionInterface``): ``q.K^T * scale``,
  softmax and ``p.V`` as three ops, with the query heads of a grouped-query model reshaped onto
  their KV head (K/V stay at ``n_kv_head`` heads, as they are cached);
* its mask function returns no mask: a decode step attends to every cached token (a sliding
  window's attention marks its query with the window, ``pimsim::attn_window``: the lowering
  keeps the KV cache as a ring of that many slots); attention sinks (gpt-oss) join the
  softmax's denominator (``pimsim::softmax_sink``);
* mixture-of-experts blocks route through ``pimsim::`` ops (:mod:`workloads.models.moe_ops`);
* multi-head latent attention (DeepSeek-V2 / V3) caches per head or the shared latent
  (:mod:`workloads.models.mla`).

The past cache is one tensor per side, ``[n_layer, n_kv_head, past_len, d_head]`` (an MLA
cache's values have ``d_head_v`` elements per head, its keys ``d_head``); the step
returns the logits of the new token and the new cache. ``transformers`` is imported only here,
and only when a model is wrapped.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Iterator

import torch

from pimsim.errors import UserError
from workloads.models.decode_attention import UnsupportedFeatureError, decode_attention

ATTN = "pimsim"


def _text_config(config: Any) -> Any:
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def unsupported_features(config: Any) -> list[tuple[str, str]]:
    """(feature, fix) of each feature of a transformers config that pimsim refuses."""
    c = _text_config(config)
    out = []  # a sliding window is modelled (a KV ring, workloads.models.moe_ops.attn_window)
    for key, what in (("attn_logit_softcapping", "attention soft-capping"),
                      ("final_logit_softcapping", "logit soft-capping")):
        if getattr(c, key, None) is not None:
            out.append((f"{what} ({key} = {getattr(c, key)})",
                        "pimsim has no tanh soft-capping: use a model without it"))
    return out


def check_supported(config: Any, name: str) -> None:
    """An :class:`UnsupportedFeatureError` naming ``name``'s first feature pimsim refuses."""
    found = unsupported_features(config)
    if found:
        feature, fix = found[0]
        more = f" (and {', '.join(f for f, _ in found[1:])})" if len(found) > 1 else ""
        raise UnsupportedFeatureError(f"model {name!r} uses {feature}{more}, which pimsim does "
                                      f"not support", fix)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN, decode_attention)
    AttentionMaskInterface.register(ATTN, _no_mask)


@contextmanager
def _decode_attention(model: Any) -> Iterator[None]:
    """Models that dispatch through ``AttentionInterface`` get pimsim's attention; the others
    (e.g. Falcon) keep their own, with the mask of their implementation switched off."""
    import sys

    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    _register()
    cfg = model.config
    impl = cfg._attn_implementation
    uses_interface = hasattr(sys.modules.get(type(model).__module__), "ALL_ATTENTION_FUNCTIONS")
    if uses_interface:
        cfg._attn_implementation = ATTN
        try:
            yield
        finally:
            cfg._attn_implementation = impl
        return
    mapping = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    old = mapping.get(impl)
    mapping[impl] = _no_mask
    try:
        yield
    finally:
        if old is None:
            mapping.pop(impl, None)
        else:
            mapping[impl] = old


def cache_kwarg(model: Any, cache: Any) -> dict:
    """The forward's cache argument: ``cache`` (newer transformers) or ``past_key_values``."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def is_hf_causal_lm(obj: Any) -> bool:
    """A ``transformers`` model with a language-model head (never imports transformers)."""
    mod = type(obj).__module__
    return mod.startswith("transformers.") and isinstance(obj, torch.nn.Module) and \
        hasattr(obj, "config") and hasattr(obj, "get_output_embeddings")


def cache_dims(config: Any) -> tuple[int, int, int, int]:
    """(n_layer, n_kv_head, d_head, n_ctx) of a transformers text config."""
    c = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    get = lambda *names: next((getattr(c, n) for n in names  # noqa: E731
                               if isinstance(getattr(c, n, None), int)), None)
    n_layer = get("num_hidden_layers", "n_layer", "num_layers")
    n_head = get("num_attention_heads", "n_head")
    d_model = get("hidden_size", "n_embd", "d_model")
    d_head = get("head_dim") or d_model // n_head
    n_kv = get("num_key_value_heads", "n_head_kv", "num_kv_heads") or n_head
    if getattr(c, "multi_query", False):
        n_kv = 1  # GPT-BigCode, Falcon-7B
    if type(c).__name__ == "FalconConfig" and not getattr(c, "new_decoder_architecture", False) \
            and not getattr(c, "multi_query", True):
        n_kv = n_head
    n_ctx = get("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
    return n_layer, n_kv, d_head, n_ctx


class HFDecodeStep(torch.nn.Module):
    """A causal LM's decode step over a stacked past cache (see the module docstring);
    ``mla``: the form of a multi-head latent attention's cache (:data:`workloads.models.mla.FORMS`)."""

    def __init__(self, model: Any, mla: str = "decompressed") -> None:
        super().__init__()
        from workloads.models import mla as mla_mod

        if mla not in mla_mod.FORMS:
            raise UserError(f"unknown MLA cache form {mla!r}",
                            f"give one of {', '.join(mla_mod.FORMS)}")
        self.model = model
        self.mla = mla
        self.train(model.training)  # export restores this flag on the whole tree
        n_layer, n_kv, d_head, n_ctx = cache_dims(model.config)
        d_head_v = d_head
        c = _text_config(model.config)
        if mla_mod.is_mla(c):
            mla_mod.check_mla(model)
            n_kv, d_head, d_head_v = mla_mod.cache_dims(c, mla)
        self.cfg = SimpleNamespace(n_layer=n_layer, n_head=n_kv, d_head=d_head,
                                   d_head_v=d_head_v, n_ctx=n_ctx)

    def decode_step(self, token: Any, pos: Any, past_k: Any, past_v: Any) -> tuple:
        from transformers import DynamicCache

        # every layer's whole past (a sliding layer's ring is the lowering's, not the cache's)
        c = _text_config(self.model.config)
        cache = DynamicCache() if getattr(c, "sliding_window", None) else \
            DynamicCache(config=self.model.config)
        for i in range(past_k.shape[0]):
            cache.update(past_k[i:i + 1], past_v[i:i + 1], i)
        from workloads.models.mla import decode_mla
        from workloads.models.moe_ops import decode_moe

        with _decode_attention(self.model), decode_moe(self.model), \
                decode_mla(self.model, self.mla):
            out = self.model(input_ids=token, position_ids=pos.view(1, 1), use_cache=True,
                             **cache_kwarg(self.model, cache))
        n = past_k.shape[0]
        keys = torch.cat([cache.layers[i].keys for i in range(n)])
        values = torch.cat([cache.layers[i].values for i in range(n)])
        return out.logits[:, -1], keys, values

    def forward(self, token: Any, pos: Any, past_k: Any, past_v: Any) -> tuple:
        return self.decode_step(token, pos, past_k, past_v)


def decode_step_module(model: Any, mla: str = "decompressed") -> HFDecodeStep:
    """Wrap a transformers causal LM as a module with ``decode_step``; an
    :class:`UnsupportedFeatureError` for a model pimsim refuses (:func:`check_supported`).
    ``mla``: the cache of a multi-head latent attention, per head (``"decompressed"``) or the
    shared latent with ``kv_b_proj`` absorbed (``"latent"``, :mod:`workloads.models.mla`)."""
    check_supported(model.config, type(model).__name__)
    return HFDecodeStep(model, mla)


def export_onnx(model: Any, path: str, past_len: int = 3) -> str:
    """A causal LM's decode step as an ONNX file through ``torch.onnx.export(dynamo=True)``
    (needs onnxscript): inputs token [1, 1], position [1], past_k / past_v [n_layer, n_kv_head,
    past_len, d_head] with a dynamic ``past_len``; the context length in the metadata
    (``n_ctx``)."""
    import onnx

    step = decode_step_module(model)
    n_layer, n_kv, d_head, n_ctx = cache_dims(model.config)
    kv = (n_layer, n_kv, past_len, d_head)
    args = (torch.zeros((1, 1), dtype=torch.long), torch.full((1,), past_len),
            torch.zeros(kv), torch.zeros(kv))
    dim = torch.export.Dim("past_len", min=2, max=n_ctx - 1)
    with torch.no_grad():
        prog = torch.onnx.export(
            step, args, dynamo=True, input_names=["token", "position", "past_k", "past_v"],
            dynamic_shapes={"token": None, "pos": None, "past_k": {2: dim}, "past_v": {2: dim}})
    prog.save(path)
    m = onnx.load(path)
    m.metadata_props.add(key="n_ctx", value=str(n_ctx))
    onnx.save(m, path)
    return path
