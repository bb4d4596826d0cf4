"""The shape of a decoder-only transformer: one record for every model the workloads know.

:class:`DecoderShape` says how a decoder is built, without weights: layer count and widths,
grouped-query attention (``n_kv_head``), the MLP (plain or SwiGLU ``gated_mlp``), the norms
(LayerNorm or RMSNorm), positions (a learned table of ``pos_rows`` rows, or rotary with
``rope_theta``), which projections carry biases, and whether the LM head is the token
embedding; mixtures of experts (routed experts, a shared expert, leading dense layers) and
multi-head latent attention (DeepSeek-V2 / V3: low-rank query and KV latents, the KV cache
the latent itself). From it come exact parameter counts, the bytes one decode step streams,
the KV-cache bytes per token and the FLOPs of a decode step.

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
    # a MoE decoder's first ``n_dense_layers`` layers have a dense SwiGLU MLP of ``d_ff_dense``
    # instead (DeepSeek-V3: 3 of 18432); ``shared_gate``: the shared expert's one-output sigmoid
    # gate (Qwen2-MoE; DeepSeek's shared experts have none); ``router_bias``: a per-expert bias
    # of the router (DeepSeek-V3's e_score_correction_bias, which the top-k choice adds)
    n_dense_layers: int = 0
    d_ff_dense: int = 0
    shared_gate: bool = True
    router_bias: bool = False
    # multi-head latent attention (DeepSeek-V2 / V3, arXiv:2405.04434 section 2.1;
    # ``kv_lora_rank`` 0: none): the query from a latent of ``q_lora_rank`` (q_a_proj, its
    # RMSNorm, q_b_proj; 0: q_proj from d_model), keys and values from a latent of
    # ``kv_lora_rank`` plus one rotary key of ``qk_rope_head_dim`` shared by every head
    # (kv_a_proj_with_mqa, an RMSNorm of the latent), kv_b_proj to each head's
    # ``qk_nope_head_dim`` key and ``v_head_dim`` value, o_proj from ``n_head x v_head_dim``.
    # ``d_head`` is the query / key head, nope + rope. ``mla_latent``: the cache holds the latent
    # and the rotary key once per token (kv_b_proj absorbed into the query and output sides, as
    # DeepSeek serves it; ``n_kv_head`` 1), else every head's decompressed key and value
    # (``n_kv_head`` = ``n_head``); kv_b_proj is read once per step either way
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    mla_latent: bool = True

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
        mla_fields = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                      "v_head_dim", "n_dense_layers", "d_ff_dense")
        for field in mla_fields:
            if not _is_int(getattr(self, field)) or getattr(self, field) < 0:
                raise _invalid(name, f"{field} must be an int >= 0, got {getattr(self, field)!r}",
                               f"give {field} as a whole number (0: none)")
        if self.kv_lora_rank:
            if not (self.qk_nope_head_dim and self.qk_rope_head_dim and self.v_head_dim):
                raise _invalid(name, "multi-head latent attention needs qk_nope_head_dim, "
                                     "qk_rope_head_dim and v_head_dim above 0",
                               "give the three head widths of the config")
            if self.d_head is None:
                object.__setattr__(self, "d_head", self.qk_nope_head_dim + self.qk_rope_head_dim)
            if self.n_kv_head is None:
                object.__setattr__(self, "n_kv_head", 1 if self.mla_latent else self.n_head)
            want = 1 if self.mla_latent else self.n_head
            if self.d_head != self.qk_nope_head_dim + self.qk_rope_head_dim or \
                    self.n_kv_head != want:
                raise _invalid(name, f"multi-head latent attention with d_head {self.d_head} and "
                                     f"n_kv_head {self.n_kv_head}",
                               f"leave them out (d_head: qk_nope_head_dim + qk_rope_head_dim; "
                               f"n_kv_head: {want}, the cache's heads)")
        elif self.q_lora_rank or self.qk_nope_head_dim or self.qk_rope_head_dim or self.v_head_dim:
            raise _invalid(name, "latent-attention widths without kv_lora_rank",
                           "give kv_lora_rank (multi-head latent attention) or leave them 0")
        if self.n_dense_layers and not (self.n_experts and self.d_ff_dense
                                        and self.n_dense_layers < self.n_layer):
            raise _invalid(name, f"{self.n_dense_layers} dense layers need experts in the "
                                 f"others and d_ff_dense above 0",
                           "give n_experts, d_ff_dense and fewer dense layers than n_layer")
        for field in ("shared_gate", "router_bias", "mla_latent"):
            if not isinstance(getattr(self, field), bool):
                raise _invalid(name, f"{field} must be True or False, got {getattr(self, field)!r}",
                               f"give {field} as a bool")
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
    def is_mla(self) -> bool:
        """Whether the attention is multi-head latent attention (``kv_lora_rank`` > 0)."""
        return self.kv_lora_rank > 0

    @property
    def _attn_matmul_params(self) -> int:
        """The weights of a layer's attention products (no biases, no norms); of MLA, the
        query path, kv_a_proj_with_mqa, kv_b_proj and o_proj."""
        d = self.d_model
        if not self.is_mla:
            a, kv = self.d_attn, self.d_kv
            return d * (a + 2 * kv) + a * d
        H, ql, r = self.n_head, self.q_lora_rank, self.kv_lora_rank
        q = ql * (d + H * self.d_head) if ql else d * H * self.d_head
        return q + d * (r + self.qk_rope_head_dim) + r * H * (self.qk_nope_head_dim
                                                              + self.v_head_dim) \
            + H * self.v_head_dim * d

    @property
    def _attn_params(self) -> int:
        """A layer's attention: its products, biases and (MLA) the latents' RMSNorms."""
        if not self.is_mla:
            a, kv = self.d_attn, self.d_kv
            return self._attn_matmul_params + (a + 2 * kv) * self.qkv_bias \
                + self.d_model * self.out_bias
        ql, r = self.q_lora_rank, self.kv_lora_rank
        # biases (attention_bias): q_a_proj, kv_a_proj_with_mqa and o_proj; norms: q_a, kv_a
        bias = (ql + r + self.qk_rope_head_dim) * self.qkv_bias + self.d_model * self.out_bias
        return self._attn_matmul_params + bias + ql + r

    def _mlp_params(self, d_ff: int) -> int:
        """One MLP (or expert) of width ``d_ff`` with its biases."""
        d = self.d_model
        mlp = (3 if self.gated_mlp else 2) * d * d_ff
        return mlp + ((2 * d_ff if self.gated_mlp else d_ff) + d) * self.mlp_bias

    @property
    def n_params_per_layer(self) -> int:
        """Parameters of one layer (of a MoE decoder with dense layers: of a MoE layer):
        attention, MLP, norms and their biases."""
        mlp = self._mlp_params(self.d_ff)
        if self.n_experts:
            mlp = mlp * self.n_experts + self._router_params
        norms = self.norms_per_layer * self._norm_params + self.qk_norm_params
        return self._attn_params + mlp + norms + self.extra_layer_params

    @property
    def n_dense_layer_params(self) -> int:
        """Parameters of one of a MoE decoder's dense layers (0: it has none)."""
        if not self.n_dense_layers:
            return 0
        norms = self.norms_per_layer * self._norm_params + self.qk_norm_params
        return self._attn_params + self._mlp_params(self.d_ff_dense) + norms

    @property
    def n_moe_layers(self) -> int:
        """Layers with experts (0: a dense decoder)."""
        return self.n_layer - self.n_dense_layers if self.n_experts else 0

    @property
    def _router_params(self) -> int:
        """A MoE layer's router (with its per-expert bias) and shared expert (with its
        one-output gate)."""
        d = self.d_model
        shared = 3 * d * self.d_ff_shared + d * self.shared_gate if self.d_ff_shared else 0
        return d * self.n_experts + self.n_experts * self.router_bias + shared

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
        layers = (self.n_layer - self.n_dense_layers) * self.n_params_per_layer \
            + self.n_dense_layers * self.n_dense_layer_params
        return emb + layers + self._norm_params + head

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
            per_expert = 3 * d * self.d_ff  # its matrices (biased experts: biases counted read)
            skip += round(self.n_moe_layers * per_expert
                          * (self.n_experts - self.experts_read(tokens)))
        return (self.n_params - skip) * bytes_per_param

    # ---- KV cache and FLOPs ------------------------------------------------------------------

    @property
    def kv_elems_per_token_layer(self) -> int:
        """Cached elements per position and layer: K and V of ``n_kv_head`` heads; of MLA the
        latent and the rotary key (``kv_lora_rank + qk_rope_head_dim``, DeepSeek-V3's 576),
        or every head's decompressed key and value."""
        if not self.is_mla:
            return 2 * self.d_kv
        if self.mla_latent:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return self.n_head * (self.d_head + self.v_head_dim)

    def kv_bytes_per_token(self, bytes_per_el: int = BF16_BYTES) -> int:
        """KV-cache bytes per cached position (all layers, :attr:`kv_elems_per_token_layer`)."""
        return self.n_layer * self.kv_elems_per_token_layer * bytes_per_el

    @property
    def _attn_macs_per_pos(self) -> int:
        """A layer's attention multiply-adds per cached position: every head's score and value
        (MLA latent: scores over the latent and the rotary key, values over the latent)."""
        if not self.is_mla:
            return 2 * self.d_attn
        if self.mla_latent:
            return self.n_head * (2 * self.kv_lora_rank + self.qk_rope_head_dim)
        return self.n_head * (self.d_head + self.v_head_dim)

    def decode_flops(self, pos: int) -> int:
        """Multiply-adds x 2 of one decode step at ``pos`` (matrix-vector products and
        attention). MLA: kv_b_proj's products are the same either way (absorbed: each head's
        no-rope query into the latent and its latent context back, ``H (nope + v) r``;
        decompressed: the new token's latent through kv_b_proj, the same count)."""
        d, f = self.d_model, self.d_ff
        attn = self._attn_matmul_params
        mm = attn + (3 if self.gated_mlp else 2) * d * f
        if self.n_experts:  # the token's experts, the router and the shared expert (the
            # router's bias is an addition, not a product)
            mm += (self.experts_per_tok - 1) * 3 * d * f + self._router_params \
                - self.n_experts * self.router_bias
        per_pos = 2 * self._attn_macs_per_pos * (pos + 1)
        dense = self.n_dense_layers * (2 * (attn + 3 * d * self.d_ff_dense) + per_pos)  # SwiGLU
        moe = (self.n_layer - self.n_dense_layers) * (2 * mm + per_pos)
        return dense + moe + 2 * self.vocab * d

    @property
    def is_gpt_layout(self) -> bool:
        """Whether this is the GPT-2 layout the reference decoder (:mod:`workloads.models.gpt`)
        builds: learned positions (``n_ctx`` rows), LayerNorm twice per layer, every projection
        biased, plain MLP, tied head without bias, ``n_kv_head == n_head``."""
        return (self.rope_theta is None and self.pos_rows == self.n_ctx and self.norm == "layernorm"
                and self.norms_per_layer == 2 and not self.gated_mlp and self.tied_head
                and self.qkv_bias and self.out_bias and self.mlp_bias and not self.head_bias
                and self.n_kv_head == self.n_head)
