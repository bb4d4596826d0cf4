"""Measured GPU baseline for Llama-family decoders: batch-1 decode latency and energy.

What it measures: one decode step (one token, batch 1) of a Llama-shaped decoder with random
weights in fp16, run as ONE CUDA graph, at several context positions, with the board power drawn
while doing so -- ms/token, tokens/s, W and J/token. Shapes are the public Hugging Face configs:

* ``llama2-7b``  -- ``meta-llama/Llama-2-7b-hf``: d_model 4096, 32 layers, 32 heads (32 KV heads),
  d_ff 11008, vocab 32000, n_ctx 4096, rope_theta 10000, rms_norm_eps 1e-5;
* ``llama2-13b`` -- ``meta-llama/Llama-2-13b-hf``: d_model 5120, 40 layers, 40 heads (40 KV),
  d_ff 13824, vocab 32000, n_ctx 4096, rope_theta 10000;
* ``llama3-8b``  -- ``meta-llama/Meta-Llama-3-8B``: d_model 4096, 32 layers, 32 heads, 8 KV heads
  (grouped-query attention), d_ff 14336, vocab 128256, n_ctx 8192, rope_theta 500000;
* ``llama2-70b`` -- ``meta-llama/Llama-2-70b-hf``: d_model 8192, 80 layers, 64 heads, 8 KV heads,
  d_ff 28672, vocab 32000, n_ctx 4096. Its fp16 weights are 138 GB (128.5 GiB): they fit one
  141 GB H200 with little room to spare, and fit no 80 GB GPU.

How: :class:`LlamaStaticDecoder` is a plain-PyTorch decoder -- RMSNorm, rotary position
embedding (RoPE, theta from the config), grouped-query attention, SwiGLU MLP, untied LM head --
with a static KV cache ``[n_layer, n_kv_head, n_ctx, d_head]`` for K and for V. The token and the
position live in device tensors; the new K/V are written at that position (``index_copy_``),
attention runs over the whole ``n_ctx`` buffer with the slots beyond the position masked, so
every shape is fixed and the whole step is captured as one CUDA graph and replayed per token.
The q/k/v and gate/up projections are stored fused; :meth:`LlamaStaticDecoder.hf_state_dict`
gives views of them under Hugging Face's parameter names, so ``transformers``'
``LlamaForCausalLM`` built from a ``LlamaConfig`` (no download) runs the same weights: the
logits of both are compared over a few steps (:func:`compare_with_hf`; max abs difference in the
JSON). Timing, power and the environment record reuse :mod:`workloads.gpu_baseline`
(:func:`~workloads.gpu_baseline.time_interleaved` / ``time_per_call_ms``,
:class:`~workloads.gpu_baseline.PowerSampler`, :func:`~workloads.gpu_baseline.sustained_loop`,
:func:`~workloads.gpu_baseline.environment_info`): CUDA events around back-to-back replays after
warm-up, median of repeats; power from NVML during a sustained loop; J/token = mean W x s/token.

Needs torch, numpy and the standard library; ``transformers`` only for the validation (imported
there, skipped with a note when missing). No simulator imports::

    PYTHONPATH=. python -m workloads.gpu_baseline_llama --models llama2-7b llama3-8b llama2-13b \\
        -o workloads/data/gpu_measured_h200_llama.json
    python -m workloads.gpu_baseline_llama --dry-run -o /tmp/dry.json   # CPU, tiny configs, fp32
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from workloads.models.gpt import _param_seed
from workloads.gpu_baseline import (
    CudaGraphStep,
    PowerSampler,
    count_cuda_kernels,
    environment_info,
    measure_copy_bandwidth_gbs,
    measure_idle_w,
    positions_for,
    resolve_device,
    sustained_loop,
    time_interleaved,
)

INIT_STD = 0.02

METHOD = (
    "Llama-family batch-1 decode, random weights from a seed (N(0,0.02), RMSNorm weights "
    "1+N(0,0.02)), fp16 on the GPU (fp32 in a CPU dry run). Plain-PyTorch static-cache decoder: "
    "RMSNorm (fp32 statistics, F.rms_norm), RoPE (theta from the config, cos/sin table indexed by "
    "the position tensor, q and k rotated together), grouped-query attention, SwiGLU MLP, untied "
    "LM head, fused q/k/v and gate/up projections, residual adds folded into the output "
    "projections (addmm_), about 20 kernels per layer; static KV cache [n_layer, n_kv_head, "
    "n_ctx, d_head] for K and V, new K/V written (index_copy_) at a position held in a device "
    "tensor, attention over the whole n_ctx buffer with "
    "positions beyond the current one masked (-inf), softmax in fp32; the whole decode step "
    "captured as ONE CUDA graph and replayed per token. Timing: CUDA events around back-to-back "
    "replays after warm-up, median of `repeats` rounds, positions interleaved per round; the KV "
    "cache filled with random values first. Power: board power sampled every 50 ms (NVML via "
    "pynvml, else nvidia-smi) during a sustained loop at the middle position after a 1 s ramp; "
    "idle power sampled before each model; J/token = mean power x ms/token of that loop (also "
    "above idle, and from NVML's energy counter). Validation: logits of the decoder (graph replay "
    "on CUDA) against transformers' LlamaForCausalLM (eager attention) built from a LlamaConfig "
    "with the same weights, token by token from position 0 with its DynamicCache; max abs "
    "difference recorded per model and for small MHA and GQA configs; where an fp32 copy of the "
    "weights fits, also each path's distance from transformers run in fp32."
)


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaShape:
    """Shape of a Llama-family decoder (the fields of a Hugging Face ``LlamaConfig`` used here)."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    d_ff: int
    vocab: int
    n_ctx: int
    rope_theta: float
    rms_eps: float = 1e-5
    hf_config: str = ""            # the Hugging Face model whose config.json these numbers are

    def __post_init__(self) -> None:
        if self.d_model % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"{self.name}: n_head must divide d_model and n_kv_head n_head")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"{self.name}: RoPE needs an even d_head")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def n_params(self) -> int:
        """Parameters: embedding, per layer q/k/v/o + gate/up/down + two RMSNorms, final norm,
        untied LM head (no biases)."""
        d, D, f = self.d_model, self.d_head, self.d_ff
        attn = d * self.n_head * D + 2 * d * self.n_kv_head * D + self.n_head * D * d
        per_layer = attn + 3 * d * f + 2 * d
        return 2 * self.vocab * d + self.n_layer * per_layer + d

    def kv_bytes_per_token(self, bytes_per_el: int = 2) -> int:
        """K and V bytes per cached position, all layers."""
        return 2 * self.n_layer * self.n_kv_head * self.d_head * bytes_per_el


def _shape(name: str, hf: str, n_layer: int, d_model: int, n_head: int, n_kv_head: int, d_ff: int,
           vocab: int, n_ctx: int, theta: float) -> LlamaShape:
    return LlamaShape(name=name, hf_config=hf, n_layer=n_layer, d_model=d_model, n_head=n_head,
                      n_kv_head=n_kv_head, d_ff=d_ff, vocab=vocab, n_ctx=n_ctx, rope_theta=theta)


SHAPES: dict[str, LlamaShape] = {
    s.name: s
    for s in (
        _shape("llama2-7b", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 11008, 32000, 4096, 10000.0),
        _shape("llama2-13b", "meta-llama/Llama-2-13b-hf", 40, 5120, 40, 40, 13824, 32000, 4096, 10000.0),
        _shape("llama2-70b", "meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 28672, 32000, 4096, 10000.0),
        _shape("llama3-8b", "meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, 8192, 500000.0),
        # small configs for the CPU dry run, the unit tests and the on-device validation
        _shape("tiny-llama", "", 2, 64, 4, 4, 176, 256, 64, 10000.0),
        _shape("tiny-llama-gqa", "", 2, 64, 8, 2, 160, 256, 64, 500000.0),
        _shape("small-llama", "", 4, 512, 8, 8, 1376, 1000, 512, 10000.0),
        _shape("small-llama-gqa", "", 4, 512, 8, 2, 1792, 1000, 512, 500000.0),
    )
}
DEFAULT_MODELS = ("llama2-7b", "llama3-8b", "llama2-13b")
VALIDATION_CONFIGS = ("small-llama", "small-llama-gqa")
DRY_RUN_MODELS = ("tiny-llama", "tiny-llama-gqa")


def get_shape(name: str) -> LlamaShape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown Llama shape {name!r}; known: {', '.join(SHAPES)}") from None


def hf_llama_config(shape: LlamaShape) -> Any:
    """A ``transformers.LlamaConfig`` for ``shape`` (eager attention, untied head); no download."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.d_model, intermediate_size=shape.d_ff,
                      num_hidden_layers=shape.n_layer, num_attention_heads=shape.n_head,
                      num_key_value_heads=shape.n_kv_head, max_position_embeddings=shape.n_ctx,
                      rope_theta=shape.rope_theta, rms_norm_eps=shape.rms_eps, hidden_act="silu",
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "eager"
    return cfg


# --------------------------------------------------------------------------------------------
# The static-cache decoder
# --------------------------------------------------------------------------------------------


def init_decode_state(dec: CudaGraphStep, s: LlamaShape, n_kv: int, dtype: torch.dtype,
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

    def __init__(self, shape: LlamaShape, *, device: str | torch.device = "cpu",
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
        return F.rms_norm(x, (self.shape.d_model,), w, self.shape.rms_eps)

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


# --------------------------------------------------------------------------------------------
# Validation against transformers
# --------------------------------------------------------------------------------------------


def hf_model(shape: LlamaShape, state_dict: dict[str, torch.Tensor], device: torch.device) -> Any:
    """``transformers.LlamaForCausalLM`` whose parameters ARE the given tensors (built on the meta
    device, then ``load_state_dict(assign=True)``: no second copy of the weights)."""
    from transformers import LlamaForCausalLM

    cfg = hf_llama_config(shape)
    with torch.device("meta"):
        hf = LlamaForCausalLM(cfg)
    hf.load_state_dict(state_dict, strict=True, assign=True)
    # the rotary inverse frequencies are a non-persistent buffer: rebuild it on the real device
    rot_cls = type(hf.model.rotary_emb)
    with torch.device(device):
        hf.model.rotary_emb = rot_cls(config=cfg)
    left = [n for n, t in list(hf.named_parameters()) + list(hf.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"transformers model still has meta tensors: {left[:5]}")
    return hf.eval()


@torch.no_grad()
def hf_logits(hf: Any, tokens: Sequence[int], device: torch.device) -> list[torch.Tensor]:
    """fp32 logits ``[1, vocab]`` of ``tokens`` decoded one by one from position 0 (own cache)."""
    import inspect

    # the KV-cache argument is `past_key_values`, renamed `cache` in later transformers 5.x
    cache_kw = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    past, out_logits = None, []
    for tok in tokens:
        out = hf(input_ids=torch.tensor([[int(tok)]], device=device), use_cache=True, **{cache_kw: past})
        past = getattr(out, "cache", None) or out.past_key_values
        out_logits.append(out.logits[0, -1:].float())
    return out_logits


@torch.no_grad()
def compare_with_hf(dec: LlamaStaticDecoder, tokens: Sequence[int], *,
                    fp32_reference: bool = False) -> dict[str, Any]:
    """Decode ``tokens`` from position 0 with the decoder and with transformers' model on the same
    weights; max |logit difference| over all steps, and max |logit|.

    With ``fp32_reference`` (and a decoder in fp16/bf16), transformers also runs an fp32 copy of
    the weights: ``decoder_vs_fp32_max_abs_diff`` and ``hf_vs_fp32_max_abs_diff`` say how far
    each low-precision path is from fp32 (the rounding noise the main difference is judged by).
    """
    import transformers

    ref = hf_logits(hf_model(dec.shape, dec.hf_state_dict(), dec.device), tokens, dec.device)
    _free(dec.device)
    dec.reset("zeros")
    got = [dec.decode(int(tok), pos).float().clone() for pos, tok in enumerate(tokens)]
    res: dict[str, Any] = {
        "reference": f"transformers {transformers.__version__} LlamaForCausalLM (eager attention)",
        "steps": len(tokens), "dtype": str(dec.dtype).replace("torch.", ""),
        "graph": dec.graph is not None,
        "max_abs_diff": max(float((g - r).abs().max()) for g, r in zip(got, ref)),
        "max_abs_logit": max(float(r.abs().max()) for r in ref)}
    res["rel_diff"] = res["max_abs_diff"] / max(res["max_abs_logit"], 1e-30)
    if fp32_reference and dec.dtype != torch.float32:
        sd32 = {k: v.float() for k, v in dec.hf_state_dict().items()}
        ref32 = hf_logits(hf_model(dec.shape, sd32, dec.device), tokens, dec.device)
        del sd32
        _free(dec.device)
        res["decoder_vs_fp32_max_abs_diff"] = max(float((g - r).abs().max()) for g, r in zip(got, ref32))
        res["hf_vs_fp32_max_abs_diff"] = max(float((g - r).abs().max()) for g, r in zip(ref, ref32))
    return res


def _validate(dec: LlamaStaticDecoder, steps: int, seed: int) -> dict[str, Any]:
    """:func:`compare_with_hf` on ``steps`` seeded tokens; the fp32 reference where an fp32 copy
    of the weights fits in a third of the free device memory."""
    gen = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, dec.shape.vocab, (steps,), generator=gen).tolist()
    try:
        import transformers  # noqa: F401
    except ImportError:
        return {"skipped": "transformers not installed"}
    fits = dec.device.type != "cuda" or 4 * dec.shape.n_params < torch.cuda.mem_get_info(dec.device)[0] / 3
    try:
        return compare_with_hf(dec, toks, fp32_reference=fits)
    except Exception as e:  # a broken reference must not lose the timing; the error is recorded
        return {"error": f"{type(e).__name__}: {e}"}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def validate_small(name: str, device: torch.device, dtype: torch.dtype, *, steps: int = 8,
                   seed: int = 0) -> dict[str, Any]:
    """Validation of a small config (graph replay on CUDA) against transformers."""
    shape = get_shape(name)
    dec = LlamaStaticDecoder(shape, device=device, dtype=dtype, seed=seed)
    if device.type == "cuda":
        dec.capture()
    res = {"config": name, "n_head": shape.n_head, "n_kv_head": shape.n_kv_head,
           **_validate(dec, steps, seed + 1)}
    del dec
    _free(device)
    return res


def measure_model(name: str, device: torch.device, *, dtype: torch.dtype, repeats: int = 5,
                  power_s: float = 3.0, idle_s: float = 1.0, sampler: PowerSampler | None = None,
                  validate_steps: int = 4, seed: int = 0, batch_s: float = 0.1,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build ``name`` on ``device``, validate it against transformers, time the graph decode at
    each position, and measure power in a sustained loop at the middle position."""
    shape = get_shape(name)
    cuda = device.type == "cuda"
    t_build = time.perf_counter()
    dec = LlamaStaticDecoder(shape, device=device, dtype=dtype, seed=seed)
    if cuda:
        dec.capture()
        torch.cuda.synchronize(device)
    t_build = time.perf_counter() - t_build
    res: dict[str, Any] = {
        "model": name, "hf_config": shape.hf_config, "params": shape.n_params,
        "weight_bytes": dec.weight_bytes, "dtype": str(dtype).replace("torch.", ""),
        "n_layer": shape.n_layer, "d_model": shape.d_model, "n_head": shape.n_head,
        "n_kv_head": shape.n_kv_head, "d_head": shape.d_head, "d_ff": shape.d_ff, "n_ctx": shape.n_ctx,
        "vocab": shape.vocab, "rope_theta": shape.rope_theta, "rms_eps": shape.rms_eps,
        "static_kv_bytes": dec.kv_bytes, "build_s": round(t_build, 3),
    }
    assert res["weight_bytes"] == shape.n_params * dec.k_cache.element_size()
    res["validation"] = _validate(dec, validate_steps, seed + 1)
    v = res["validation"]
    log(f"[{name}] built in {t_build:.2f}s; vs transformers over {validate_steps} steps: "
        + (f"max|diff| {v['max_abs_diff']:.3g} (max|logit| {v['max_abs_logit']:.3g})"
           if "max_abs_diff" in v else v.get("skipped", "?")))
    _free(device)

    positions = positions_for(shape)
    res["positions"] = positions
    tok = 1
    dec.reset("random", seed=seed + 2)
    dec.set_inputs(tok, positions[0])
    # pre-warm so the clocks have settled
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < (0.5 if cuda else 0.0):
        for _ in range(5):
            dec.run()
        torch.cuda.synchronize(device)

    def graph_at(p: int) -> Callable[[], Any]:
        def setup() -> Callable[[], Any]:
            dec.set_inputs(tok, p)
            return dec.run
        return setup

    r_g = time_interleaved({str(p): graph_at(p) for p in positions}, device, repeats=repeats,
                           target_s=batch_s)
    ms_at = {k: r["ms"] for k, r in r_g.items()}
    kernels = count_cuda_kernels(dec.step) if cuda else None
    res["graph"] = {"ms_at": ms_at, "spread_ms_at": {k: r["spread_ms"] for k, r in r_g.items()},
                    "tokens_per_s_at": {k: 1e3 / m for k, m in ms_at.items()},
                    "kernels_per_step": kernels}
    log(f"[{name}] graph ms/token " + ", ".join(f"@{p}: {m:.3f}" for p, m in ms_at.items())
        + (f"; {kernels} kernels/step" if kernels else ""))

    p_mid = positions[len(positions) // 2]
    if sampler is not None and sampler.available:
        torch.cuda.synchronize(device)
        time.sleep(0.3)
        idle_w = measure_idle_w(sampler, idle_s)
        res["idle_power_w"] = idle_w
        dec.set_inputs(tok, p_mid)
        loop = sustained_loop(dec.run, device, sampler, seconds=power_s, idle_w=idle_w)
        loop["position"] = p_mid
        res["graph"]["power_loop"] = loop
        log(f"[{name}] idle {idle_w:.1f} W; loop {loop['ms_per_token']:.3f} ms/token at "
            f"{loop.get('mean_power_w') or float('nan'):.1f} W -> "
            f"{loop.get('joules_per_token') or float('nan'):.4f} J/token")
        res["mean_power_w"] = loop.get("mean_power_w")
        res["joules_per_token"] = loop.get("joules_per_token")
        res["joules_per_token_above_idle"] = loop.get("joules_per_token_above_idle")
    res["graph_ms_per_token"] = ms_at[str(p_mid)]
    res["tokens_per_s"] = 1e3 / ms_at[str(p_mid)]
    del dec
    _free(device)
    return res


def run_baseline(models: Sequence[str], *, device: str | torch.device | None = None,
                 repeats: int = 5, power_s: float = 3.0, idle_s: float = 2.0,
                 dtype: torch.dtype | None = None, seed: int = 0, batch_s: float = 0.1,
                 validation_configs: Sequence[str] = VALIDATION_CONFIGS,
                 checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validate the small configs, then measure every model; returns the JSON-ready document.
    A model that does not fit in the GPU's memory is listed under ``not_measured``.
    ``checkpoint(doc)`` is called with the document so far after each model (to save it)."""
    device, dtype, cuda = resolve_device(device, dtype)
    info = environment_info(device)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    sampler = PowerSampler(device.index or 0) if cuda else None
    info["power_source"] = sampler.source if sampler is not None else None
    if cuda:
        torch.zeros(1, device=device)
        time.sleep(0.5)
        info["idle_power_w_start"] = measure_idle_w(sampler, idle_s)
        info["copy_bandwidth_gbs"] = measure_copy_bandwidth_gbs(device)
        log(f"{info['gpu']}  driver {info['driver']}  torch {info['torch']}  transformers "
            f"{info['transformers']}  idle {info['idle_power_w_start']} W  copy "
            f"{info['copy_bandwidth_gbs']:.0f} GB/s  power via {info['power_source']}")
    t0 = time.perf_counter()
    small = [validate_small(n, device, dtype, seed=seed) for n in validation_configs]
    for v in small:
        log(f"[validation {v['config']}] " + (f"max|diff| {v['max_abs_diff']:.3g} "
            f"(max|logit| {v['max_abs_logit']:.3g})" if "max_abs_diff" in v else v.get("skipped", "?")))
    results: list[dict[str, Any]] = []
    not_measured: list[dict[str, Any]] = []
    method = METHOD if cuda else \
        METHOD + " DRY RUN on the CPU: time.perf_counter, no graph capture, no power."
    doc = {"method": method, "info": info,
           "settings": {"repeats": repeats, "power_loop_s": power_s, "idle_s": idle_s,
                        "batch_s": batch_s, "seed": seed, "dtype": str(dtype).replace("torch.", ""),
                        "dry_run": not cuda},
           "validation_small": small, "results": results, "not_measured": not_measured}
    for name in models:
        shape = get_shape(name)
        need = shape.n_params * torch.tensor([], dtype=dtype).element_size() \
            + 2 * shape.n_layer * shape.n_kv_head * shape.n_ctx * shape.d_head * 2
        if cuda:
            free_b, total_b = torch.cuda.mem_get_info(device)
            if need > free_b:
                not_measured.append({"model": name, "bytes_needed": need, "bytes_free": free_b,
                                     "reason": "weights and KV cache exceed the free GPU memory"})
                log(f"[{name}] skipped: needs {need / 2**30:.1f} GiB, {free_b / 2**30:.1f} GiB free")
                continue
        try:
            results.append(measure_model(name, device, dtype=dtype, repeats=repeats, power_s=power_s,
                                         idle_s=min(idle_s, 1.0), sampler=sampler, seed=seed,
                                         batch_s=batch_s, log=log))
        except torch.cuda.OutOfMemoryError as e:
            _free(device)
            not_measured.append({"model": name, "bytes_needed": need,
                                 "reason": f"out of GPU memory: {str(e).splitlines()[0]}"})
            log(f"[{name}] out of memory")
        log(f"  ({time.perf_counter() - t0:.1f}s elapsed)")
        if checkpoint is not None:
            checkpoint(doc)
    return doc


def summary_table(doc: dict[str, Any]) -> str:
    """Markdown: model, position, ms/token, tokens/s, then W and J/token of the power loop (at the
    middle position; J/token = W x the loop's own ms/token) and the validation max |diff|."""
    lines = ["| model | position | ms/token | tokens/s | W | J/token | max abs diff vs HF |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        loop = r["graph"].get("power_loop") or {}
        diff = r.get("validation", {}).get("max_abs_diff")
        for p in r["positions"]:
            ms = r["graph"]["ms_at"][str(p)]
            at_loop = loop.get("position") == p
            w = f"{loop['mean_power_w']:.0f}" if at_loop and loop.get("mean_power_w") else "-"
            j = f"{loop['joules_per_token']:.3f}" if at_loop and loop.get("joules_per_token") else "-"
            lines.append(f"| {r['model']} | {p} | {ms:.3f} | {1e3 / ms:.1f} | {w} | {j} | "
                         + (f"{diff:.2g}" if diff is not None else "-") + " |")
    return "\n".join(lines)


def add_measure_args(ap: argparse.ArgumentParser, dry_run_help: str) -> None:
    """The measurement options this module and the tensor-parallel one share."""
    ap.add_argument("-o", "--output", required=True, help="output JSON")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--power-seconds", type=float, default=3.0)
    ap.add_argument("--idle-seconds", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-seconds", type=float, default=0.1)
    ap.add_argument("--dtype", choices=("float16", "bfloat16"), default=None,
                    help="weights and KV cache on the GPU (default float16; the dry run uses float32)")
    ap.add_argument("--dry-run", action="store_true", help=dry_run_help)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workloads.gpu_baseline_llama",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=None,
                    help=f"shapes to measure (default {' '.join(DEFAULT_MODELS)}; dry run: "
                         f"{' '.join(DRY_RUN_MODELS)}); known: {', '.join(SHAPES)}")
    add_measure_args(ap, "same code path on the CPU for tiny configs (fp32, perf_counter, no "
                         "power)")
    args = ap.parse_args(argv)
    if args.dry_run:
        models, device, val = list(args.models or DRY_RUN_MODELS), "cpu", DRY_RUN_MODELS
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device (use --dry-run on a CPU)")
        models, device, val = list(args.models or DEFAULT_MODELS), "cuda", VALIDATION_CONFIGS
    for m in models:
        if m not in SHAPES:
            ap.error(f"unknown shape {m!r}; known: {', '.join(SHAPES)}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)

    def save(doc: dict[str, Any]) -> None:
        with open(args.output, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")

    dtype = getattr(torch, args.dtype) if args.dtype and not args.dry_run else None
    doc = run_baseline(models, device=device, repeats=args.repeats, power_s=args.power_seconds,
                       idle_s=args.idle_seconds, seed=args.seed, batch_s=args.batch_seconds,
                       dtype=dtype, validation_configs=val, checkpoint=save)
    save(doc)
    print(summary_table(doc))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
