"""GPT decoder shapes and presets, without torch: what the command line, the sweep and the
compiled-program cache need to know about a model before (or instead of) building it. Imports
nothing of pimsim (the GPU baseline tools use it on machines with only torch and numpy)."""

from __future__ import annotations

import dataclasses

BF16_BYTES = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTConfig:
    """Shape of a GPT decoder. ``d_ff`` defaults to ``4 * d_model``."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    d_head: int
    vocab: int
    n_ctx: int
    d_ff: int | None = None
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        for field in ("n_layer", "d_model", "n_head", "d_head", "vocab", "n_ctx", "d_ff"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig {self.name!r}: {field} must be a positive int, got {value!r}")
        if not self.ln_eps > 0:
            raise ValueError(f"GPTConfig {self.name!r}: ln_eps must be > 0, got {self.ln_eps!r}")

    @property
    def d_attn(self) -> int:
        """Width of the concatenated heads, ``n_head * d_head`` (may differ from ``d_model``)."""
        return self.n_head * self.d_head

    @property
    def n_params_per_layer(self) -> int:
        d, a, f = self.d_model, self.d_attn, self.d_ff
        assert f is not None
        ln = 2 * (2 * d)  # ln_1 and ln_2: weight + bias
        qkv = 3 * (d * a + a)
        out_proj = a * d + d
        ffn = (d * f + f) + (f * d + d)
        return ln + qkv + out_proj + ffn

    @property
    def n_params(self) -> int:
        """Parameter count with the LM head tied to ``wte`` (counted once), biases and ``wpe``."""
        embeddings = self.vocab * self.d_model + self.n_ctx * self.d_model
        ln_f = 2 * self.d_model
        return embeddings + self.n_layer * self.n_params_per_layer + ln_f

    @property
    def weight_bytes_bf16(self) -> int:
        """Bytes to store every parameter once in bf16."""
        return self.n_params * BF16_BYTES

    @property
    def kv_bytes_per_token_bf16(self) -> int:
        """KV-cache bytes added per decoded token (K and V, all layers) in bf16."""
        return 2 * self.n_layer * self.d_attn * BF16_BYTES


def _preset(name: str, n_layer: int, d_model: int, n_head: int, d_head: int, n_ctx: int,
            vocab: int = 50257) -> GPTConfig:
    return GPTConfig(name=name, n_layer=n_layer, d_model=d_model, n_head=n_head, d_head=d_head,
                     vocab=vocab, n_ctx=n_ctx)


PRESETS: dict[str, GPTConfig] = {
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


def get_config(name: str) -> GPTConfig:
    """Look up a preset by name."""
    try:
        return PRESETS[name]
    except KeyError:
        from pimsim.errors import UserError  # here only: the GPU baseline tools need no pimsim

        raise UserError(f"unknown GPT preset {name!r}",
                        f"use one of: {', '.join(PRESETS)}") from None
