"""Decoder shapes for the GPU model: what it must know about a model to count its bytes.

:class:`DecoderShape` counts every parameter of a GPT, Llama-family, OPT, GPT-NeoX (Pythia) or
GPT-J decoder (grouped-query attention, SwiGLU, tied or untied head, biases, norms) and the
bytes and FLOPs of one batch-1 decode step. :func:`zoo_shape` reads one from a zoo preset's
config arguments (:mod:`workloads.models.zoo`; nothing is built, no torch or transformers);
:func:`shape_for` turns a preset name (GPT or zoo) into what :func:`workloads.gpu.model.predict`
takes. The models side does not import this package; this module imports the presets.

Needs only the standard library.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from workloads.models import zoo
from workloads.models.presets import PRESETS

FP16_BYTES = 2


# --------------------------------------------------------------------------------------------
# Decoder shapes (GPT, Llama-family, OPT, GPT-NeoX, GPT-J)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderShape:
    """What the GPU model needs to know about a decoder: enough to count every parameter.

    ``n_kv_head`` < ``n_head`` is grouped-query (or multi-query) attention: K/V projections and the
    KV cache scale with ``n_kv_head``. ``gated_mlp``: SwiGLU (gate, up, down: three
    ``d_model x d_ff`` matrices) instead of two. ``tied_head``: the LM head is the token
    embedding. ``pos_rows``: rows of a learned position table (0 for rotary). Biases and norms are
    there for an exact parameter count (``norm_bias``: LayerNorm, else RMSNorm).
    """

    name: str
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    d_head: int
    d_ff: int
    vocab: int
    n_ctx: int
    gated_mlp: bool = False
    tied_head: bool = True
    pos_rows: int = 0
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    head_bias: bool = False
    norm_bias: bool = False
    norms_per_layer: int = 2

    def __post_init__(self) -> None:
        for f in ("n_layer", "d_model", "n_head", "n_kv_head", "d_head", "d_ff", "vocab", "n_ctx"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"DecoderShape {self.name!r}: {f} must be a positive int, got {v!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"DecoderShape {self.name!r}: n_kv_head {self.n_kv_head} must divide "
                             f"n_head {self.n_head}")

    @classmethod
    def from_gpt(cls, cfg: Any) -> "DecoderShape":
        """A GPTConfig (workloads.models.presets / workloads.models.gpt): learned positions, biases, LayerNorm,
        tied head, plain GELU MLP."""
        return cls(name=cfg.name, n_layer=cfg.n_layer, d_model=cfg.d_model, n_head=cfg.n_head,
                   n_kv_head=cfg.n_head, d_head=cfg.d_head, d_ff=cfg.d_ff, vocab=cfg.vocab,
                   n_ctx=cfg.n_ctx, pos_rows=cfg.n_ctx, qkv_bias=True, out_bias=True,
                   mlp_bias=True, norm_bias=True)

    @property
    def d_attn(self) -> int:
        return self.n_head * self.d_head

    @property
    def d_kv(self) -> int:
        return self.n_kv_head * self.d_head

    @property
    def n_params_per_layer(self) -> int:
        d, a, kv, f = self.d_model, self.d_attn, self.d_kv, self.d_ff
        attn = d * (a + 2 * kv) + a * d
        attn += (a + 2 * kv) * self.qkv_bias + d * self.out_bias
        mlp = (3 if self.gated_mlp else 2) * d * f
        mlp += ((2 * f if self.gated_mlp else f) + d) * self.mlp_bias
        norms = self.norms_per_layer * d * (2 if self.norm_bias else 1)
        return attn + mlp + norms

    @property
    def n_params(self) -> int:
        d = self.d_model
        emb = self.vocab * d + self.pos_rows * d
        head = (0 if self.tied_head else self.vocab * d) + self.vocab * self.head_bias
        final_norm = d * (2 if self.norm_bias else 1)
        return emb + self.n_layer * self.n_params_per_layer + final_norm + head

    def weight_bytes_streamed(self, bytes_per_param: int = FP16_BYTES) -> int:
        """Weight bytes read per token: every parameter once, but one row of each embedding
        table (the token table streams in full as the LM head when tied)."""
        d = self.d_model
        skip = self.pos_rows * d - (d if self.pos_rows else 0)
        if not self.tied_head:
            skip += self.vocab * d - d
        return (self.n_params - skip) * bytes_per_param

    def kv_bytes_per_position(self, bytes_per_el: int = FP16_BYTES) -> int:
        """K and V bytes per cached position, all layers (``n_kv_head`` heads)."""
        return 2 * self.n_layer * self.d_kv * bytes_per_el

    def decode_flops(self, pos: int) -> int:
        """Multiply-adds x 2 of one decode step (matrix-vector products and attention)."""
        d, a, kv, f = self.d_model, self.d_attn, self.d_kv, self.d_ff
        mm = d * (a + 2 * kv) + a * d + (3 if self.gated_mlp else 2) * d * f
        per_layer = 2 * mm + 2 * 2 * a * (pos + 1)
        return self.n_layer * per_layer + 2 * self.vocab * d



# per transformers config class: how its decoder is built (what the parameter count needs)
FAMILY_FIELDS: dict[str, dict[str, Any]] = {
    # Llama, Mistral, Qwen2: SwiGLU, RMSNorm, rotary, untied head (tie_word_embeddings False);
    # Qwen2 has biases on q/k/v only
    "LlamaConfig": dict(gated_mlp=True, tied_head=False),
    "MistralConfig": dict(gated_mlp=True, tied_head=False),
    "Qwen2Config": dict(gated_mlp=True, tied_head=False, qkv_bias=True),
    # OPT: learned positions with an offset of 2 rows, biases everywhere, LayerNorm, tied head
    "OPTConfig": dict(tied_head=True, qkv_bias=True, out_bias=True, mlp_bias=True, norm_bias=True),
    # GPT-NeoX (Pythia): rotary, biases everywhere, LayerNorm, untied head
    "GPTNeoXConfig": dict(tied_head=False, qkv_bias=True, out_bias=True, mlp_bias=True,
                          norm_bias=True),
    # GPT-J: one LayerNorm per layer (parallel attention and MLP), no attention biases, MLP and
    # LM-head biases, untied head
    "GPTJConfig": dict(tied_head=False, mlp_bias=True, head_bias=True, norm_bias=True,
                       norms_per_layer=1),
}


def zoo_shape(name: str) -> DecoderShape:
    """The :class:`DecoderShape` of a zoo preset, read from its config arguments (nothing is
    built; no torch or transformers)."""
    if name in zoo.GPT_SHAPES:
        return DecoderShape.from_gpt(zoo.GPT_SHAPES[name])
    if name not in zoo.HF_SHAPES:
        raise ValueError(f"unknown zoo preset {name!r}; known: {', '.join(zoo.NAMES)}")
    cls, kw = zoo.HF_SHAPES[name]
    if cls == "GPTJConfig":
        d, n_layer, n_head = kw["n_embd"], kw["n_layer"], kw["n_head"]
        d_ff, vocab = kw.get("n_inner") or 4 * d, kw["vocab_size"]
    else:
        d, n_layer, n_head = kw["hidden_size"], kw["num_hidden_layers"], kw["num_attention_heads"]
        d_ff, vocab = kw.get("intermediate_size") or kw["ffn_dim"], kw["vocab_size"]
    fam = dict(FAMILY_FIELDS[cls])
    if cls == "OPTConfig":
        if kw.get("word_embed_proj_dim", d) != d:
            raise ValueError(f"{name}: OPT with word_embed_proj_dim != hidden_size is not modelled")
        fam["pos_rows"] = kw["max_position_embeddings"] + 2
    return DecoderShape(name=name, n_layer=n_layer, d_model=d, n_head=n_head,
                        n_kv_head=kw.get("num_key_value_heads", n_head), d_head=d // n_head,
                        d_ff=d_ff, vocab=vocab, n_ctx=zoo.n_ctx(name), **fam)


def is_shape(cfg: Any) -> bool:
    """Whether ``cfg`` counts its own bytes (a :class:`DecoderShape`), as opposed to a GPTConfig
    (or a measured row's fields) whose bytes :mod:`workloads.gpu.model` counts itself."""
    return callable(getattr(cfg, "kv_bytes_per_position", None))


def shape_for(name_or_cfg: Any) -> Any:
    """A model for :func:`workloads.gpu.model.predict`: a GPT preset name (its GPTConfig) or a
    zoo preset name (:func:`zoo_shape`), else the object itself (a DecoderShape or anything with
    GPTConfig's fields)."""
    if not isinstance(name_or_cfg, str):
        return name_or_cfg
    if name_or_cfg in PRESETS:
        return PRESETS[name_or_cfg]
    return zoo_shape(name_or_cfg)
