"""GPT presets, without torch: what the command line, the sweep and the compiled-program cache
need to know about a GPT model before (or instead of) building it. Each preset is a
:class:`~workloads.models.shape.DecoderShape` in the GPT-2 layout. Imports nothing of pimsim
until a name is unknown (the GPU baseline tools use it on machines with only torch and numpy)."""

from __future__ import annotations

from workloads.models.shape import BF16_BYTES, DecoderShape  # noqa: F401  (BF16_BYTES: re-export)


def _preset(name: str, n_layer: int, d_model: int, n_head: int, d_head: int, n_ctx: int,
            vocab: int = 50257) -> DecoderShape:
    return DecoderShape(name=name, n_layer=n_layer, d_model=d_model, n_head=n_head, d_head=d_head,
                        vocab=vocab, n_ctx=n_ctx)


PRESETS: dict[str, DecoderShape] = {
    c.name: c
    for c in (
        _preset("gpt2-small", 12, 768, 12, 64, 1024),
        _preset("gpt2-medium", 24, 1024, 16, 64, 1024),
        _preset("gpt2-large", 36, 1280, 20, 64, 1024),
        _preset("gpt2-xl", 48, 1600, 25, 64, 1024),
        _preset("gpt3-small", 12, 768, 12, 64, 2048),
        _preset("gpt3-medium", 24, 1024, 16, 64, 2048),
        _preset("gpt3-large", 24, 1536, 16, 96, 2048),
        _preset("gpt3-xl", 24, 2048, 24, 128, 2048),  # n_head*d_head = 3072 != d_model
        _preset("tiny", 2, 64, 4, 16, 64, vocab=256),
        _preset("tiny-wide", 2, 64, 2, 48, 64, vocab=256),  # n_head*d_head = 96 != d_model
    )
}


def get_config(name: str) -> DecoderShape:
    """Look up a preset by name."""
    try:
        return PRESETS[name]
    except KeyError:
        from pimsim.errors import UserError  # here only: the GPU baseline tools need no pimsim

        raise UserError(f"unknown GPT preset {name!r}",
                        f"use one of: {', '.join(PRESETS)}") from None
