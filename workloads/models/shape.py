"""The shape of a decoder-only transformer: one record for every model the workloads know.

:class:`DecoderShape` says how a decoder is built, without weights: layer count and widths,
grouped-query attention (``n_kv_head``), the MLP (plain or SwiGLU ``gated_mlp``), the norms
(LayerNorm or RMSNorm), positions (a learned table of ``pos_rows`` rows, or rotary with
``rope_theta``), which projections carry biases, and whether the LM head is the token
embedding. From it come exact parameter counts, the bytes one decode step streams, the KV-cache
bytes per token and the FLOPs of a decode step.

The defaults are the GPT-2 layout (learned positions, LayerNorm, biases on every projection, a
plain GELU MLP of ``4 * d_model``, tied LM head): the GPT presets (:mod:`workloads.models.presets`)
and the reference decoder (:mod:`workloads.models.gpt`) use them as they are; the zoo's
Llama-family, OPT, GPT-NeoX and GPT-J shapes (:mod:`workloads.gpu.shapes`) and the measured
Llama shapes (:mod:`workloads.gpu.llama_shapes`) set the fields that differ.

Needs only the standard library (a malformed shape raises :class:`pimsim.errors.UserError`).
"""

from __future__ import annotations

import dataclasses

BF16_BYTES = 2
FP16_BYTES = 2

NORMS = ("layernorm", "rmsnorm")  # LayerNorm: weight and bias; RMSNorm: weight only

# the fields that make a shape a Llama-family decoder (SwiGLU, RMSNorm, untied head, no biases);
# give rope_theta too (rotary positions)
LLAMA_LAYOUT: dict[str, object] = dict(gated_mlp=True, norm="rmsnorm", tied_head=False,
                                       qkv_bias=False, out_bias=False, mlp_bias=False,
                                       head_bias=False)


def _invalid(name: str, problem: str, fix: str) -> Exception:
    from pimsim.errors import UserError  # here only: the GPU baseline tools need no simulator

    return UserError(f"decoder shape {name!r}: {problem}", fix)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderShape:
    """Shape of a decoder. Defaults: the GPT-2 layout.

    ``n_kv_head`` (default ``n_head``) below ``n_head`` is grouped-query (or multi-query)
    attention: the K/V projections and the KV cache scale with it. ``d_head`` defaults to
    ``d_model // n_head``; ``n_head * d_head`` may differ from ``d_model`` (GPT-3 XL). ``d_ff``
    defaults to ``4 * d_model``. ``gated_mlp``: SwiGLU (gate, up and down: three ``d_model x
    d_ff`` matrices) instead of two. ``norm``: ``"layernorm"`` (weight and bias) or
    ``"rmsnorm"`` (weight only), ``norms_per_layer`` of them per layer plus a final one, with
    ``norm_eps``. ``rope_theta``: rotary positions of that base, or None for a learned position
    table of ``pos_rows`` rows (default ``n_ctx``, at least ``n_ctx``; 0 with rotary; a
    ``dataclasses.replace`` of ``n_ctx`` keeps the table, so give ``pos_rows`` with it).
    ``tied_head``: the LM head is the token embedding. ``hf_config``: the Hugging Face model
    whose ``config.json`` these numbers are, where there is one.
    """

    name: str
    n_layer: int
    d_model: int
    n_head: int
    vocab: int
    n_ctx: int
    n_kv_head: int | None = None
    d_head: int | None = None
    d_ff: int | None = None
    gated_mlp: bool = False
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norms_per_layer: int = 2
    rope_theta: float | None = None
    pos_rows: int | None = None
    tied_head: bool = True
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    head_bias: bool = False
    hf_config: str = ""
    # mixture of experts (0: a dense MLP): ``n_experts`` SwiGLU experts of width ``d_ff``, each
    # token routed to ``experts_per_tok`` of them by a router (a d_model x n_experts GEMV); a
    # shared expert of width ``d_ff_shared`` (0: none) with a one-output sigmoid gate
    n_experts: int = 0
    experts_per_tok: int = 0
    d_ff_shared: int = 0
    # RMSNorm weights of the queries and keys per layer (Qwen3: per head, 2 x d_head; OLMoE:
    # over all heads, d_attn + d_kv), 0: none
    qk_norm_params: int = 0
    # other vectors of a layer (gpt-oss: its attention sinks, n_head, and its router's bias,
    # n_experts), 0: none
    extra_layer_params: int = 0

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise _invalid(str(name), f"name must be a non-empty string, got {name!r}",
                           "give the shape a name")
        for field in ("n_layer", "d_model", "n_head", "vocab", "n_ctx"):
            value = getattr(self, field)
            if not _is_int(value) or value <= 0:
                raise _invalid(name, f"{field} must be a positive int, got {value!r}",
                               f"give {field} as a whole number above 0")
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.d_head is None:
            if self.d_model % self.n_head:
                raise _invalid(name, f"n_head {self.n_head} does not divide d_model {self.d_model}",
                               "give d_head explicitly")
            object.__setattr__(self, "d_head", self.d_model // self.n_head)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.pos_rows is None:
            object.__setattr__(self, "pos_rows", self.n_ctx if self.rope_theta is None else 0)
        for field in ("n_kv_head", "d_head", "d_ff", "norms_per_layer"):
            value = getattr(self, field)
            if not _is_int(value) or value <= 0:
                raise _invalid(name, f"{field} must be a positive int, got {value!r}",
                               f"give {field} as a whole number above 0")
        if not _is_int(self.pos_rows) or self.pos_rows < 0:
            raise _invalid(name, f"pos_rows must be an int >= 0, got {self.pos_rows!r}",
                           "give the rows of the learned position table (0: none)")
        if self.rope_theta is None and self.pos_rows < self.n_ctx:
            raise _invalid(name, f"a learned position table of {self.pos_rows} rows cannot cover "
                                 f"n_ctx {self.n_ctx} positions",
                           "give pos_rows >= n_ctx (leave it out for n_ctx), or rope_theta for "
                           "rotary positions")
        if self.n_head % self.n_kv_head:
            raise _invalid(name, f"n_kv_head {self.n_kv_head} must divide n_head {self.n_head}",
                           "give a KV head count that divides the query head count")
        if self.norm not in NORMS:
            raise _invalid(name, f"norm {self.norm!r} is not a known norm",
                           f"use one of {', '.join(NORMS)}")
        if not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            raise _invalid(name, f"norm_eps must be > 0, got {self.norm_eps!r}",
                           "give the norm's epsilon (e.g. 1e-5)")
        for field in ("gated_mlp", "tied_head", "qkv_bias", "out_bias", "mlp_bias", "head_bias"):
            if not isinstance(getattr(self, field), bool):
                raise _invalid(name, f"{field} must be True or False, got {getattr(self, field)!r}",
                               f"give {field} as a bool")
        if self.rope_theta is not None:
            if not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 0:
                raise _invalid(name, f"rope_theta must be > 0 or None, got {self.rope_theta!r}",
                               "give the rotary base (e.g. 10000.0), or None for learned positions")
            if self.d_head % 2:
                raise _invalid(name, f"rotary positions need an even d_head, got {self.d_head}",
                               "give an even d_head (or learned positions, rope_theta None)")
        for field in ("n_experts", "experts_per_tok", "d_ff_shared", "qk_norm_params",
                      "extra_layer_params"):
            if not _is_int(getattr(self, field)) or getattr(self, field) < 0:
                raise _invalid(name, f"{field} must be an int >= 0, got {getattr(self, field)!r}",
                               f"give {field} as a whole number (0: none)")
        if self.n_experts and not 0 < self.experts_per_tok <= self.n_experts:
            raise _invalid(name, f"experts_per_tok {self.experts_per_tok} with {self.n_experts} "
                                 f"experts", "route each token to 1..n_experts experts")
        if not isinstance(self.hf_config, str):
            raise _invalid(name, f"hf_config must be a string, got {self.hf_config!r}",
                           "give the Hugging Face model name, or ''")

    # ---- widths ----------------------------------------------------------------------------

    @property
    def d_attn(self) -> int:
        """Width of the concatenated query heads, ``n_head * d_head`` (may differ from ``d_model``)."""
        return self.n_head * self.d_head

    @property
    def d_kv(self) -> int:
        """Width of the concatenated K (or V) heads, ``n_kv_head * d_head``."""
        return self.n_kv_head * self.d_head

    # ---- parameters --------------------------------------------------------------------------

    @property
    def n_params_per_layer(self) -> int:
        """Parameters of one layer: attention, MLP, norms and their biases."""
        d, a, kv, f = self.d_model, self.d_attn, self.d_kv, self.d_ff
        attn = d * (a + 2 * kv) + a * d
        attn += (a + 2 * kv) * self.qkv_bias + d * self.out_bias
        mlp = (3 if self.gated_mlp else 2) * d * f
        mlp += ((2 * f if self.gated_mlp else f) + d) * self.mlp_bias
        if self.n_experts:
            mlp = mlp * self.n_experts + self._router_params
        norms = self.norms_per_layer * self._norm_params + self.qk_norm_params
        return attn + mlp + norms + self.extra_layer_params

    @property
    def _router_params(self) -> int:
        """A MoE layer's router and shared expert (with its one-output gate)."""
        d = self.d_model
        return d * self.n_experts + (3 * d * self.d_ff_shared + d if self.d_ff_shared else 0)

    def experts_read(self, tokens: int = 1) -> float:
        """Experts of a MoE layer a step of ``tokens`` tokens reads: the expected size of the
        union of their choices, each token ``k`` of ``E`` experts uniformly at random
        [assumed: uniform routing], ``E (1 - (1 - k/E)^tokens)``; 0 for a dense MLP."""
        E, k = self.n_experts, self.experts_per_tok
        return E * (1 - (1 - k / E) ** tokens) if E else 0.0

    @property
    def n_params(self) -> int:
        """Every parameter once: embeddings (the tied LM head counted once), layers, final norm
        and an untied LM head."""
        d = self.d_model
        emb = self.vocab * d + self.pos_rows * d
        head = (0 if self.tied_head else self.vocab * d) + self.vocab * self.head_bias
        return emb + self.n_layer * self.n_params_per_layer + self._norm_params + head

    @property
    def _norm_params(self) -> int:
        return self.d_model * (2 if self.norm == "layernorm" else 1)

    @property
    def weight_bytes_bf16(self) -> int:
        """Bytes to store every parameter once in bf16."""
        return self.n_params * BF16_BYTES

    def weight_bytes_streamed(self, bytes_per_param: int = FP16_BYTES, tokens: int = 1) -> int:
        """Weight bytes read per step of ``tokens`` tokens: every parameter once, but one row of
        each embedding table (the token table streams in full as the LM head when tied); of a
        MoE layer's experts only those the tokens chose (:meth:`experts_read`)."""
        d = self.d_model
        skip = self.pos_rows * d - (d if self.pos_rows else 0)
        if not self.tied_head:
            skip += self.vocab * d - d
        if self.n_experts:
            per_expert = 3 * d * self.d_ff
            skip += round(self.n_layer * per_expert * (self.n_experts - self.experts_read(tokens)))
        return (self.n_params - skip) * bytes_per_param

    # ---- KV cache and FLOPs ------------------------------------------------------------------

    def kv_bytes_per_token(self, bytes_per_el: int = BF16_BYTES) -> int:
        """KV-cache bytes per cached position (K and V, all layers, ``n_kv_head`` heads)."""
        return 2 * self.n_layer * self.d_kv * bytes_per_el

    def decode_flops(self, pos: int) -> int:
        """Multiply-adds x 2 of one decode step at ``pos`` (matrix-vector products and attention)."""
        d, a, kv, f = self.d_model, self.d_attn, self.d_kv, self.d_ff
        mm = d * (a + 2 * kv) + a * d + (3 if self.gated_mlp else 2) * d * f
        if self.n_experts:  # the token's experts, the router and the shared expert
            mm += (self.experts_per_tok - 1) * 3 * d * f + self._router_params
        per_layer = 2 * mm + 2 * 2 * a * (pos + 1)
        return self.n_layer * per_layer + 2 * self.vocab * d

    @property
    def is_gpt_layout(self) -> bool:
        """Whether this is the GPT-2 layout the reference decoder (:mod:`workloads.models.gpt`)
        builds: learned positions (``n_ctx`` rows), LayerNorm twice per layer, every projection
        biased, plain MLP, tied head without bias, ``n_kv_head == n_head``."""
        return (self.rope_theta is None and self.pos_rows == self.n_ctx and self.norm == "layernorm"
                and self.norms_per_layer == 2 and not self.gated_mlp and self.tied_head
                and self.qkv_bias and self.out_bias and self.mlp_bias and not self.head_bias
                and self.n_kv_head == self.n_head)
