"""The error of a graph the lowering cannot take, and what to export instead."""

from __future__ import annotations

from pimsim.errors import UserError

_FIX = ("export one decode step: token [1, 1], position [1], past_k / past_v "
        "[n_layer, n_kv_head, past_len, d_head] (workloads.models.hf_decode.decode_step_module wraps a "
        "Hugging Face causal LM)")


class LoweringError(UserError):
    """A graph op that cannot be lowered to this PIM system."""

    default_fix = _FIX
