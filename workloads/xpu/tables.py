"""``pimsim export attention-table``: a model's decode attention of one layer on a PIM config,
simulated at command level over context lengths (:func:`pimsim.attention.attention_table`),
for serving simulators that price PIM attention by a line per device type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def export_attention_table(model: str, hw: Any, lengths: Sequence[int] | None = None, *,
                           layer: int = 0, devices: int | None = None, tp: int | None = None,
                           context: int | None = None, cache: bool = True):
    """Compile ``model`` for ``hw`` (with ``devices`` / ``tp``; ``context`` reserves the KV
    caches for that many tokens) and return the :class:`pimsim.attention.AttentionTable` of
    ``layer`` at ``lengths`` (None: powers of two from 128 to the context)."""
    from pimsim.attention import attention_table
    from pimsim.errors import UserError
    from workloads.compiling import compile_model, hw_config

    cfg = hw_config(hw, devices=devices, tp=tp)
    if cfg.system.pp > 1:
        raise UserError("an attention table of a pipeline-parallel system",
                        "give --devices N with --tp N (the heads split over the devices)")
    c = compile_model(model, cfg, context=context, cache=cache)
    n_layer = int(c.program.dims["n_layer"])
    if not 0 <= layer < n_layer:
        raise UserError(f"layer {layer}: {model} has layers 0..{n_layer - 1}",
                        f"give --layer in 0..{n_layer - 1}")
    return attention_table(c.program, cfg, lengths, layer=layer)
