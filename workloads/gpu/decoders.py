"""The static-cache decoders the measured GPU baselines time: batch-1 decode steps whose
shapes never change, so each whole step is captured as ONE CUDA graph and replayed per token.

* :class:`CudaGraphStep` -- what every such step shares: the static K/V cache, the token and
  position held in device tensors, capture and replay (eager on the CPU);
* :class:`StaticCacheDecoder` -- a :class:`workloads.models.gpt.GPT` (LayerNorm, learned positions,
  fused q/k/v, GELU MLP, tied head); :func:`build_model` draws its random weights on the device;
* :class:`LlamaStaticDecoder` -- a Llama-family decoder (RMSNorm, RoPE, grouped-query attention,
  SwiGLU, untied head) with random weights drawn on the device; :func:`init_decode_state` and
  :func:`attention_ctx` are the parts the tensor-parallel decoder
  (:mod:`workloads.gpu.llama_tp`) shares with it.

Each decoder writes the new K/V at the position held in ``pos_t`` and attends over all
``n_ctx`` slots with the slots past it masked. Needs torch only (and the GPT definition).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from workloads.models.gpt import GPT, _is_layernorm_weight, _param_seed
from workloads.models.shape import DecoderShape

INIT_STD = 0.02     # weights N(0, INIT_STD); norm weights 1 + N(0, INIT_STD)


# --------------------------------------------------------------------------------------------
# The CUDA-graph step, and the GPT decoder
# --------------------------------------------------------------------------------------------


def build_model(cfg: DecoderShape, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float16, seed: int = 0) -> GPT:
    """A GPT with random weights made directly on ``device`` in ``dtype``.

    Same distribution as :meth:`GPT.from_seed` (each parameter from its own generator seeded from
    ``(seed, name)``), but the generator lives on ``device``, so on a GPU a 1.5 B-parameter model
    is built in well under a second. Values differ from ``from_seed``'s CPU stream.
    """
    device = torch.device(device)
    with torch.device("meta"):
        model = GPT(cfg, dtype=dtype)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            gen = torch.Generator(device=device).manual_seed(_param_seed(seed, name))
            param.normal_(0.0, INIT_STD, generator=gen)
            if _is_layernorm_weight(name):
                param.add_(1.0)
    return model.requires_grad_(False).eval()


class CudaGraphStep:
    """A decode step over a static KV cache, replayable as one CUDA graph: subclasses set
    ``device``, ``n_ctx``, the cache tensors ``k_cache`` / ``v_cache``, the device tensors
    ``tok_t`` / ``pos_t``, ``graph = None`` and ``logits = None``, and define ``step()`` (one
    decode step from those tensors)."""

    device: torch.device
    n_ctx: int
    k_cache: torch.Tensor
    v_cache: torch.Tensor

    @property
    def kv_bytes(self) -> int:
        """Bytes of the static K and V buffers (read in full by every step)."""
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    def reset(self, fill: str = "zeros", seed: int = 0) -> None:
        """Clear the cache (``zeros``), or fill it with random values (``random``, for timing)."""
        with torch.no_grad():
            if fill == "zeros":
                self.k_cache.zero_()
                self.v_cache.zero_()
            else:
                gen = torch.Generator(device=self.device).manual_seed(seed)
                self.k_cache.normal_(0.0, 1.0, generator=gen)
                self.v_cache.normal_(0.0, 1.0, generator=gen)

    def capture(self, warmup: int = 3, capture_error_mode: str = "global") -> None:
        """Record :meth:`step` as one CUDA graph (CUDA only); the cache is left as warm-up left it.
        ``capture_error_mode``: torch.cuda.graph's (``"thread_local"`` lets another thread, such
        as a process group's watchdog, query events during the capture)."""
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graph capture needs a CUDA device")
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode=capture_error_mode):
            self.logits = self.step()
        torch.cuda.synchronize(self.device)
        self.graph = graph

    def set_inputs(self, token: int, pos: int) -> None:
        if not 0 <= pos < self.n_ctx:
            raise ValueError(f"position {pos} outside [0, {self.n_ctx})")
        self.tok_t.fill_(int(token))
        self.pos_t.fill_(int(pos))

    def run(self) -> torch.Tensor:
        """Run one step on the inputs already set: replay the graph if captured, else eagerly."""
        if self.graph is not None:
            self.graph.replay()
            assert self.logits is not None
            return self.logits
        self.logits = self.step()
        return self.logits

    def decode(self, token: int, pos: int) -> torch.Tensor:
        """Set the inputs and run one step; returns logits ``[1, vocab]`` (a static buffer on CUDA)."""
        self.set_inputs(token, pos)
        return self.run()


class StaticCacheDecoder(CudaGraphStep):
    """Batch-1 decode of a :class:`GPT` with a static KV cache, capturable as one CUDA graph.

    The step reads the token and position from the device tensors ``tok_t`` and ``pos_t``
    (int64, one element), writes the new K/V at ``pos_t`` into ``k_cache``/``v_cache``
    (``[n_layer, n_head, n_ctx, d_head]``), attends over all ``n_ctx`` slots with slots beyond
    ``pos_t`` masked, and leaves the logits ``[1, vocab]`` in ``self.logits``. Shapes never change,
    so :meth:`capture` can record the whole step as one CUDA graph; :meth:`decode` then only sets
    the two inputs and replays it. On the CPU (no capture) :meth:`decode` runs the same ops eagerly.

    The weights are the model's (q/k/v concatenated once into a fused projection).
    """

    def __init__(self, model: GPT) -> None:
        cfg = model.cfg
        self.cfg = cfg
        self.n_ctx = cfg.n_ctx
        w = model.wte.weight
        self.device, self.dtype = w.device, w.dtype
        self.wte, self.wpe = model.wte.weight, model.wpe.weight
        self.ln_f = (model.ln_f.weight, model.ln_f.bias)
        self.layers = []
        with torch.no_grad():
            for blk in model.h:
                at = blk.attn
                self.layers.append(dict(
                    ln1=(blk.ln_1.weight, blk.ln_1.bias),
                    wqkv=torch.cat([at.q.weight, at.k.weight, at.v.weight], 0).contiguous(),
                    bqkv=torch.cat([at.q.bias, at.k.bias, at.v.bias], 0).contiguous(),
                    wo=at.out.weight, bo=at.out.bias,
                    ln2=(blk.ln_2.weight, blk.ln_2.bias),
                    wup=blk.mlp.up.weight, bup=blk.mlp.up.bias,
                    wdown=blk.mlp.down.weight, bdown=blk.mlp.down.bias,
                ))
        shape = (cfg.n_layer, cfg.n_head, cfg.n_ctx, cfg.d_head)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.tok_t = torch.zeros(1, dtype=torch.long, device=self.device)
        self.pos_t = torch.zeros(1, dtype=torch.long, device=self.device)
        self._slots = torch.arange(cfg.n_ctx, device=self.device)
        self._neg_inf = torch.full((), float("-inf"), dtype=self.dtype, device=self.device)
        self._zero = torch.zeros((), dtype=self.dtype, device=self.device)
        self.graph: Any = None
        self.logits: torch.Tensor | None = None

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """One decode step on the current ``tok_t``/``pos_t``; returns logits ``[1, vocab]``."""
        c = self.cfg
        H, D, a = c.n_head, c.d_head, c.d_attn
        scale = 1.0 / math.sqrt(D)
        h = F.embedding(self.tok_t, self.wte) + F.embedding(self.pos_t, self.wpe)        # [1, d]
        # additive mask over the n_ctx slots: 0 up to and including pos, -inf beyond
        mask = torch.where(self._slots <= self.pos_t, self._zero, self._neg_inf).view(1, 1, c.n_ctx)
        for li, L in enumerate(self.layers):
            x = F.layer_norm(h, (c.d_model,), L["ln1"][0], L["ln1"][1], c.norm_eps)
            qkv = F.linear(x, L["wqkv"], L["bqkv"])                                       # [1, 3a]
            q = qkv[:, :a].reshape(H, 1, D)
            k = qkv[:, a:2 * a].reshape(H, 1, D)
            v = qkv[:, 2 * a:].reshape(H, 1, D)
            kc, vc = self.k_cache[li], self.v_cache[li]                                   # [H, n_ctx, D]
            kc.index_copy_(1, self.pos_t, k)
            vc.index_copy_(1, self.pos_t, v)
            scores = torch.baddbmm(mask, q, kc.transpose(1, 2), alpha=scale)             # [H, 1, n_ctx]
            probs = torch.softmax(scores, dim=-1)
            ctx = torch.bmm(probs, vc).reshape(1, a)                                      # [1, a]
            h = h + F.linear(ctx, L["wo"], L["bo"])
            x = F.layer_norm(h, (c.d_model,), L["ln2"][0], L["ln2"][1], c.norm_eps)
            h = h + F.linear(F.gelu(F.linear(x, L["wup"], L["bup"]), approximate="tanh"),
                             L["wdown"], L["bdown"])
        x = F.layer_norm(h, (c.d_model,), self.ln_f[0], self.ln_f[1], c.norm_eps)
        return F.linear(x, self.wte)                                                      # [1, vocab]


# --------------------------------------------------------------------------------------------
# The Llama-family decoder
# --------------------------------------------------------------------------------------------


def init_decode_state(dec: CudaGraphStep, s: DecoderShape, n_kv: int, dtype: torch.dtype,
                      dev: torch.device) -> None:
    """RoPE tables (as transformers computes them: fp32 inverse frequencies and angles), the
    static K/V caches of ``n_kv`` heads, the input tensors and the mask constants of a decoder
    step (this module's and the tensor-parallel one's)."""
    D = s.d_head
    inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64, device=dev).float() / D))
    ang = torch.outer(torch.arange(s.n_ctx, device=dev).float(), inv_freq)
    emb = torch.cat((ang, ang), dim=-1)                                          # [n_ctx, D]
    dec.cos = emb.cos().to(dtype)
    sin = emb.sin()
    dec.sin_signed = torch.cat((-sin[:, :D // 2], sin[:, D // 2:]), dim=-1).to(dtype)
    cache = (s.n_layer, n_kv, s.n_ctx, D)
    dec.k_cache = torch.zeros(cache, dtype=dtype, device=dev)
    dec.v_cache = torch.zeros(cache, dtype=dtype, device=dev)
    dec.tok_t = torch.zeros(1, dtype=torch.long, device=dev)
    dec.pos_t = torch.zeros(1, dtype=torch.long, device=dev)
    dec._slots = torch.arange(s.n_ctx, device=dev)
    dec._neg_inf = torch.full((), float("-inf"), dtype=dtype, device=dev)
    dec._zero = torch.zeros((), dtype=dtype, device=dev)
    dec.graph = None
    dec.logits = None


def attention_ctx(dec: CudaGraphStep, li: int, x: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, mask: torch.Tensor, H: int, KV: int) -> torch.Tensor:
    """Layer ``li``'s attention of a decoder step (this module's and the tensor-parallel one's,
    on its ``H`` query and ``KV`` KV heads): one q/k/v projection, RoPE on q and k together as
    ``x cos + roll(x, d_head/2) sin'``, the new K/V written at ``pos_t``, softmax in fp32 over
    all slots (``mask`` hides those past ``pos_t``); returns the context ``[1, H d_head]``."""
    D = dec.cos.shape[-1]
    G = H // KV
    qkv = F.linear(x, dec.wqkv[li])                                              # [1, (H+2KV)D]
    qk = qkv[0, :(H + KV) * D].view(H + KV, D)
    qk = torch.addcmul(qk * cos, qk.roll(D // 2, -1), sin)                        # RoPE on q and k
    k = qk[H:].view(KV, 1, D)
    v = qkv[0, (H + KV) * D:].view(KV, 1, D)
    kc, vc = dec.k_cache[li], dec.v_cache[li]                                     # [KV, n_ctx, D]
    kc.index_copy_(1, dec.pos_t, k)
    vc.index_copy_(1, dec.pos_t, v)
    # query head h uses KV head h // G (transformers' repeat_kv order)
    scores = torch.baddbmm(mask, qk[:H].view(KV, G, D), kc.transpose(1, 2),
                           alpha=1.0 / math.sqrt(D))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dec.dtype)      # [KV, G, n_ctx]
    return torch.bmm(probs, vc).view(1, H * D)


class LlamaStaticDecoder(CudaGraphStep):
    """Batch-1 Llama decode with a static KV cache, capturable as one CUDA graph.

    Weights are drawn at construction, directly on ``device`` in ``dtype``, each tensor (by its
    Hugging Face name) from its own generator seeded from ``(seed, name)`` (N(0, init_std); norm
    weights 1 + N(0, init_std)), into fused buffers:
    ``wqkv[l]`` = [q; k; v] ``[(n_head + 2 n_kv_head) d_head, d_model]`` and ``wgu[l]`` =
    [gate; up] ``[2 d_ff, d_model]``. :meth:`step` reads the token and position from the device
    tensors ``tok_t``/``pos_t``, writes K/V at ``pos_t`` into ``k_cache``/``v_cache``
    (``[n_layer, n_kv_head, n_ctx, d_head]``), attends over all ``n_ctx`` slots with those beyond
    ``pos_t`` masked, and returns the logits ``[1, vocab]``. After :meth:`capture` (CUDA),
    :meth:`decode` sets the inputs and replays the graph; on the CPU it runs the step eagerly.
    """

    def __init__(self, shape: DecoderShape, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float16, seed: int = 0, init_std: float = INIT_STD) -> None:
        s = self.shape = shape
        self.n_ctx = shape.n_ctx
        self.device, self.dtype = torch.device(device), dtype
        dev, D, H, KV, d, f = self.device, s.d_head, s.n_head, s.n_kv_head, s.d_model, s.d_ff

        def empty(*size: int) -> torch.Tensor:
            return torch.empty(size, dtype=dtype, device=dev)

        self.embed = empty(s.vocab, d)
        self.norm = empty(d)
        self.lm_head = empty(s.vocab, d)
        self.ln1 = [empty(d) for _ in range(s.n_layer)]
        self.ln2 = [empty(d) for _ in range(s.n_layer)]
        self.wqkv = [empty((H + 2 * KV) * D, d) for _ in range(s.n_layer)]
        self.wo = [empty(d, H * D) for _ in range(s.n_layer)]
        self.wgu = [empty(2 * f, d) for _ in range(s.n_layer)]
        self.wdown = [empty(d, f) for _ in range(s.n_layer)]
        with torch.no_grad():
            for name, t in self.hf_state_dict().items():
                gen = torch.Generator(device=dev).manual_seed(_param_seed(seed, name))
                t.normal_(0.0, init_std, generator=gen)
                if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                    t.add_(1.0)
        init_decode_state(self, shape, KV, dtype, dev)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Views of the weights under ``LlamaForCausalLM``'s parameter names (shared storage)."""
        s = self.shape
        q, kv = s.n_head * s.d_head, s.n_kv_head * s.d_head
        sd = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.norm,
              "lm_head.weight": self.lm_head}
        for i in range(s.n_layer):
            p = f"model.layers.{i}."
            w, gu = self.wqkv[i], self.wgu[i]
            sd.update({
                p + "input_layernorm.weight": self.ln1[i],
                p + "self_attn.q_proj.weight": w[:q], p + "self_attn.k_proj.weight": w[q:q + kv],
                p + "self_attn.v_proj.weight": w[q + kv:], p + "self_attn.o_proj.weight": self.wo[i],
                p + "post_attention_layernorm.weight": self.ln2[i],
                p + "mlp.gate_proj.weight": gu[:s.d_ff], p + "mlp.up_proj.weight": gu[s.d_ff:],
                p + "mlp.down_proj.weight": self.wdown[i],
            })
        return sd

    @property
    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.hf_state_dict().values())

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # fp32 statistics, as transformers' LlamaRMSNorm (one fused kernel on CUDA)
        return F.rms_norm(x, (self.shape.d_model,), w, self.shape.norm_eps)

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """One decode step on the current ``tok_t``/``pos_t``; returns logits ``[1, vocab]``.

        Few kernels per layer (about 20): fused RMSNorm, one q/k/v and one gate/up projection,
        RoPE on q and k together as ``x cos + roll(x, d_head/2) sin'`` (``sin'`` = [-sin; sin],
        i.e. transformers' ``rotate_half``), residual adds folded into the output projections
        (``addmm_``), softmax in fp32.
        """
        s = self.shape
        H, KV, f = s.n_head, s.n_kv_head, s.d_ff
        h = F.embedding(self.tok_t, self.embed)                                       # [1, d]
        cos = self.cos.index_select(0, self.pos_t)                                    # [1, D]
        sin = self.sin_signed.index_select(0, self.pos_t)
        mask = torch.where(self._slots <= self.pos_t, self._zero, self._neg_inf).view(1, 1, s.n_ctx)
        for li in range(s.n_layer):
            x = self._rms(h, self.ln1[li])
            ctx = attention_ctx(self, li, x, cos, sin, mask, H, KV)                   # [1, H D]
            h.addmm_(ctx, self.wo[li].t())                                            # h += ctx Wo^T
            x = self._rms(h, self.ln2[li])
            gu = F.linear(x, self.wgu[li])                                            # [1, 2 d_ff]
            h.addmm_(F.silu(gu[:, :f]) * gu[:, f:], self.wdown[li].t())
        return F.linear(self._rms(h, self.norm), self.lm_head)                        # [1, vocab]
