"""Multi-head latent attention (DeepSeek-V2 / V3) as a decode step the PIM program can run.

MLA (DeepSeek-V2, arXiv:2405.04434, section 2.1) projects the token to a compressed query latent
(``q_a_proj``, ``q_a_layernorm``; ``q_b_proj`` gives every head's query) and to a compressed KV
latent ``c_kv`` of ``kv_lora_rank`` elements plus one rotary key ``k_rope`` of
``qk_rope_head_dim`` elements shared by all heads (``kv_a_proj_with_mqa``, ``kv_a_layernorm``);
``kv_b_proj`` decompresses ``c_kv`` into every head's no-rope key and value. A query head is
its no-rope part (``qk_nope_head_dim``) and its rotary part, its score is scaled by the
config's ``qk_head_dim ** -0.5`` times the yarn mscale squared.

``transformers`` caches the two latents and decompresses the whole past every step (a matrix
product over the cache, not a decode step). :func:`decode_mla` swaps each attention's forward,
while the decode step runs, for one of two forms of the same arithmetic:

* ``"decompressed"``: the new token's keys and values are decompressed once (``kv_b_proj`` on
  its latent, a GEMV) and cached per head, ``qk_nope_head_dim + qk_rope_head_dim`` key and
  ``v_head_dim`` value elements per head and token (a plain multi-head attention over them);
* ``"latent"`` (what DeepSeek serves, with ``kv_b_proj`` absorbed into the query and output
  sides): the cache holds ``c_kv`` and ``k_rope`` once per token for all heads (one KV head,
  keys ``[c_kv, k_rope]``, values ``c_kv``); each head's no-rope query is taken into the latent
  space by its block of ``kv_b_proj``, ``q_lat = W_UK[h]^T q_nope[h]`` (a GEMV per head), so
  ``score = q_lat . c_kv + q_rope . k_rope``, and each head's latent context is taken back by
  its value block, ``ctx[h] = W_UV[h] (p . c_kv)`` (a GEMV per head), before ``o_proj``.
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from typing import Any, Iterator

import torch

FORMS = ("decompressed", "latent")


def is_mla(config: Any) -> bool:
    """Whether a transformers text config is one of multi-head latent attention."""
    return all(isinstance(getattr(config, k, None), int) for k in
               ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"))


def cache_dims(config: Any, form: str) -> tuple[int, int, int]:
    """(KV heads, key elements per head, value elements per head) of an MLA cache."""
    c = config
    if form == "latent":
        return 1, c.kv_lora_rank + c.qk_rope_head_dim, c.kv_lora_rank
    return c.num_attention_heads, c.qk_nope_head_dim + c.qk_rope_head_dim, c.v_head_dim


def _rope(self: Any, q_rot: torch.Tensor, k_rot: torch.Tensor, cos: Any, sin: Any) -> tuple:
    mod = sys.modules[type(self).__module__]  # the model's own rotary functions
    if self.config.rope_interleave:
        return mod.apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin)
    return mod.apply_rotary_pos_emb(q_rot, k_rot, cos, sin)


def _mla_forward(self: Any, hidden_states: torch.Tensor, position_embeddings: tuple,
                 attention_mask: Any = None, cache: Any = None, **kwargs: Any) -> tuple:
    from workloads.models.decode_attention import decode_attention as _attention

    b, s = hidden_states.shape[:-1]
    H, nope, rope, dv = self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, \
        self.v_head_dim
    if self.q_lora_rank is None:
        q = self.q_proj(hidden_states)
    else:
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
    q = q.view(b, s, H, nope + rope).transpose(1, 2)
    q_nope, q_rot = torch.split(q, [nope, rope], dim=-1)
    kv_nope, k_rot = torch.split(self.kv_a_proj_with_mqa(hidden_states),
                                 [self.kv_lora_rank, rope], dim=-1)
    kv_nope = self.kv_a_layernorm(kv_nope)  # [b, s, kv_lora_rank]
    k_rot = k_rot.view(b, 1, s, rope)
    q_rot, k_rot = _rope(self, q_rot, k_rot, *position_embeddings)
    if self._pimsim_mla == "latent":
        w = self.kv_b_proj.weight.view(H, nope + dv, self.kv_lora_rank)
        # each head's no-rope query in the latent space: W_UK[h]^T q_nope[h], one GEMV a head
        q_lat = torch.cat([torch.nn.functional.linear(q_nope[:, h], w[h, :nope].t())
                           for h in range(H)], dim=1).view(b, H, s, self.kv_lora_rank)
        key = torch.cat([kv_nope.view(b, 1, s, -1), k_rot], dim=-1)
        value = kv_nope.view(b, 1, s, -1)
        key, value = cache.update(key, value, self.layer_idx)
        query = torch.cat([q_lat, q_rot], dim=-1)
        ctx, _ = _attention(self, query, key, value, None, scaling=self.scaling)  # [b,s,H,r]
        # each head's latent context back to its value: W_UV[h] ctx[h], one GEMV a head
        out = torch.cat([torch.nn.functional.linear(ctx[:, :, h], w[h, nope:])
                         for h in range(H)], dim=-1)
    else:
        kv = self.kv_b_proj(kv_nope).view(b, s, H, nope + dv).transpose(1, 2)
        k_nope, value = torch.split(kv, [nope, dv], dim=-1)
        key = torch.cat([k_nope, k_rot.expand(b, H, s, rope)], dim=-1)
        key, value = cache.update(key, value, self.layer_idx)
        query = torch.cat([q_nope, q_rot], dim=-1)
        ctx, _ = _attention(self, query, key, value, None, scaling=self.scaling)
        out = ctx.reshape(b, s, H * dv)
    return self.o_proj(out), None


def mla_attentions(model: Any) -> list[Any]:
    """The multi-head latent attention modules of a transformers model."""
    return [m for m in model.modules() if hasattr(m, "kv_a_proj_with_mqa")
            and hasattr(m, "kv_b_proj") and hasattr(m, "kv_a_layernorm")]


def check_mla(model: Any) -> None:
    """An :class:`~workloads.models.decode_attention.UnsupportedFeatureError` for an MLA whose rotary
    code is not DeepSeek-V3's (DeepSeek-V2's complex rotation, say): only that one is modelled."""
    from workloads.models.decode_attention import UnsupportedFeatureError

    for m in mla_attentions(model):
        mod = sys.modules.get(type(m).__module__)
        if not (hasattr(mod, "apply_rotary_pos_emb") and hasattr(mod, "apply_rotary_pos_emb_interleave")
                and hasattr(m.config, "rope_interleave")):
            raise UnsupportedFeatureError(
                f"the multi-head latent attention of {type(m).__name__} rotates its keys with "
                f"code pimsim does not model", "use a DeepSeek-V3 model (DeepseekV3Config)")


@contextmanager
def decode_mla(model: Any, form: str) -> Iterator[None]:
    """The model's MLA attentions (if any) computed in ``form`` while in the block."""
    mods = mla_attentions(model)
    for m in mods:
        m._pimsim_mla = form
        m.forward = types.MethodType(_mla_forward, m)
    try:
        yield
    finally:
        for m in mods:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("_pimsim_mla", None)
