"""Measured GPU baseline for Llama-family decoders at every batch size: batched decode and prefill.

What it measures: for Llama-shaped decoders with random fp16 weights, (a) one DECODE step of
``B`` sequences -- one new token each, every sequence attending over its own KV cache of length
``L`` -- and (b) one PREFILL step of ``P`` prompt tokens of one sequence (causal attention among
them, their ``P`` K/V entries written to the cache), each run as ONE CUDA graph, with the board
power drawn while doing so: ms per step, tokens/s, W and J/token per (model, batch, length).
The shapes are :mod:`workloads.gpu.llama`'s (public Hugging Face configs).

How: :class:`BatchedLlamaDecoder` subclasses the batch-1 :class:`LlamaStaticDecoder` -- same
fused weight buffers, drawn with the same per-name seeds, same RMSNorm, RoPE tables, grouped-query
attention and SwiGLU MLP -- and replaces its single-sequence KV cache by a batched static cache
``[n_layer, B, n_kv_head, S, d_head]`` for K and for V, with ``S = L + 1`` slots (the ``L`` cached
positions and the new one; not ``n_ctx``). A decode step reads ``B`` tokens and ``B`` positions
from device tensors, projects all ``B`` rows at once (every weight read once per step), writes
each sequence's new K/V at its own position (``scatter_``), and attends over all ``S`` slots of
its own cache with the slots beyond its position masked (``-inf``), softmax in fp32, exactly as
the batch-1 step. A prefill step (:class:`PrefillStep`) embeds ``b x P`` prompt tokens at
positions ``0..P-1``, writes their K/V into cache slots ``0..P-1`` and attends with
``F.scaled_dot_product_attention(is_causal=True)`` (grouped-query heads via ``enable_gqa``);
the LM head runs on the last token of each prompt only. Both steps have fixed shapes and are
captured as one CUDA graph each. On the CPU (tests, dry run) the same code runs eagerly in fp32:
``tests/test_gpu_batched.py`` checks that a batched decode of sequences at different positions
gives the logits and cache entries of batch-1 steps of the existing decoder, and that a
prefill's last-token logits equal ``P`` batch-1 steps.

Measurement (:func:`run_batched`): the weights of a model are built once; for each point the
cache is reallocated (the bytes of weights + cache + a workspace estimate are compared with the
free GPU memory first; a point that does not fit, or runs out of memory anyway, is listed under
``not_measured`` with the reason, never dropped), filled with random values, the step captured,
pre-warmed, then timed with CUDA events around back-to-back graph replays (median of
``repeats`` rounds, :func:`~workloads.gpu.baseline.time_per_call_ms`). Board power: NVML
(:class:`~workloads.gpu.baseline.PowerSampler`) during a sustained loop of about 1.5 s after a
short ramp (:func:`~workloads.gpu.baseline.sustained_loop`); idle power once at the start.
J/token = mean power x the loop's ms per step / tokens per step (``B`` for decode, ``b P`` for
prefill). The JSON is rewritten after every point, so an interrupted run keeps what it measured.

Needs torch, numpy and the standard library; no simulator imports. The command line is
``measure batched`` of :mod:`workloads.gpu.cli`::

    python -m workloads.gpu measure batched -o 'workloads/gpu/data/gpu_measured_{gpu}_batched.json'
    python -m workloads.gpu measure batched --dry-run -o /tmp/dry.json   # CPU, tiny shapes, fp32
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from workloads.gpu.baseline import (
    PowerSampler,
    environment_info,
    gpu_slug,
    measure_idle_w,
    resolve_device,
    sustained_loop,
    time_per_call_ms,
)
from workloads.gpu.decoders import INIT_STD, CudaGraphStep, LlamaStaticDecoder, init_decode_state
from workloads.gpu.llama_shapes import (
    DEFAULT_BATCHES,
    DEFAULT_KV_LENS,
    DEFAULT_PREFILL_BATCHED,
    DEFAULT_PROMPTS,
    VALIDATION_CONFIGS,
    get_shape,
)
from workloads.models.shape import DecoderShape

# cuBLAS / attention workspaces, the CUDA graph's pool and the allocator's slack, on top of the
# activations estimated per point
WORKSPACE_MARGIN_BYTES = 1 << 30

METHOD = (
    "Llama-family batched decode and prefill, random weights from a seed (N(0,0.02), RMSNorm "
    "weights 1+N(0,0.02), the batch-1 decoder's per-name seeds), fp16 on the GPU (fp32 in a CPU "
    "dry run). The batch-1 static-cache decoder (RMSNorm with fp32 statistics, RoPE, grouped-query "
    "attention, SwiGLU MLP, untied LM head, fused q/k/v and gate/up projections) with a batched "
    "static KV cache [n_layer, B, n_kv_head, L+1, d_head] for K and V (sized to the KV length L "
    "plus the new token, not n_ctx). DECODE at batch B and KV length L: B sequences, one token "
    "each, all at position L with L random cached K/V entries each; one projection of all B rows "
    "per weight (weights read once per step), each sequence's new K/V written at its position "
    "(scatter_), attention of each sequence over its own L+1 slots with the slots beyond its "
    "position masked (-inf), softmax in fp32; tokens per step = B. PREFILL of P tokens at batch b: "
    "b prompts of P tokens at positions 0..P-1, K/V written to cache slots 0..P-1, causal "
    "attention by F.scaled_dot_product_attention(is_causal=True, enable_gqa for grouped KV heads), "
    "LM head on the last token of each prompt only; tokens per step = b P. Each step captured as "
    "ONE CUDA graph and replayed. Timing: CUDA events around back-to-back replays after a "
    "pre-warm, median of `repeats` rounds. Power: board power sampled every 50 ms (NVML via "
    "pynvml, else nvidia-smi) during a sustained loop of `power_loop_s` seconds after a "
    "`power_ramp_s` ramp; idle power once at the start; J/token = mean power x the loop's ms per "
    "step / tokens per step (also above idle, and from NVML's energy counter). Points whose "
    "weights + KV cache + activation estimate exceed the free GPU memory, or that run out of "
    "memory, are listed under not_measured with the bytes and the reason. Validation: on the "
    "device, the batched graph decode at mixed positions and the prefill graph against batch-1 "
    "graph steps of the existing decoder for small MHA and GQA configs (max abs logit "
    "difference recorded)."
)


# --------------------------------------------------------------------------------------------
# The batched decoder and the prefill step
# --------------------------------------------------------------------------------------------


def kv_cache_bytes(shape: DecoderShape, batch: int, slots: int, bytes_per_el: int = 2) -> int:
    """Bytes of the batched K and V caches: ``batch`` sequences of ``slots`` positions."""
    return batch * slots * shape.kv_bytes_per_token(bytes_per_el)


def activation_bytes(shape: DecoderShape, tokens: int, slots: int, bytes_per_el: int = 2, *,
                     scores: bool = True) -> int:
    """Upper estimate of the live activations of one step over ``tokens`` rows (decode: the
    batch; prefill: batch x prompt) attending over ``slots`` positions: the residual stream and
    its norm, q/k/v, gate/up and their product, the attention scores, the mask and fp32
    probabilities (``scores``: the decode step; the prefill's fused attention keeps none), the
    logits -- with a factor 2 for the allocator's reuse pattern."""
    d, f, D = shape.d_model, shape.d_ff, shape.d_head
    per_row = (3 * d + (shape.n_head + 2 * shape.n_kv_head) * D + 3 * f + shape.n_head * D) * bytes_per_el
    attn = tokens * (shape.n_head + shape.n_kv_head) * slots * (2 * bytes_per_el + 4) if scores else 0
    logits = tokens * shape.vocab * (bytes_per_el + 4)
    return 2 * (tokens * per_row + attn + logits)


DECODE_ATTENTION = ("bmm", "kq", "sdpa")


def decode_attention(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, mask: torch.Tensor,
                     variant: str = "bmm") -> torch.Tensor:
    """One decode token's attention per sequence over its cache: ``q`` ``[B, H, D]`` (query head
    h uses KV head h // G, transformers' repeat_kv order), ``kc`` / ``vc`` ``[B, KV, S, D]``,
    ``mask`` ``[B KV, 1, S]`` additive (0 up to the sequence's position, -inf beyond); returns
    the context ``[B, H D]``. The same numbers three ways (their speed differs with the group
    size G = H / KV on a GPU; ``measure batched --decode-attention`` picks one):

    * ``bmm``: scores ``q K^T`` as a batched GEMM of G query rows per (sequence, KV head);
    * ``kq``: the same products as ``K q^T`` (S rows, G columns), then ``V^T p``;
    * ``sdpa``: ``F.scaled_dot_product_attention`` with the mask and ``enable_gqa``.
    """
    B, H, D = q.shape
    KV, S = kc.shape[1], kc.shape[2]
    G = H // KV
    scale = 1.0 / math.sqrt(D)
    if variant == "bmm":
        scores = torch.baddbmm(mask, q.reshape(B * KV, G, D), kc.view(B * KV, S, D).transpose(1, 2),
                               alpha=scale)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)     # [B KV, G, S]
        return torch.bmm(probs, vc.view(B * KV, S, D)).view(B, H * D)
    if variant == "kq":
        scores = torch.baddbmm(mask.transpose(1, 2), kc.view(B * KV, S, D),
                               q.reshape(B * KV, G, D).transpose(1, 2), alpha=scale)  # [B KV, S, G]
        probs = torch.softmax(scores, dim=1, dtype=torch.float32).to(q.dtype)
        ctx = torch.bmm(vc.view(B * KV, S, D).transpose(1, 2), probs)               # [B KV, D, G]
        return ctx.transpose(1, 2).reshape(B, H * D)
    if variant == "sdpa":
        ctx = F.scaled_dot_product_attention(
            q.view(B, H, 1, D), kc, vc, attn_mask=mask.view(B, KV, 1, S)[:, :1].to(q.dtype),
            scale=scale, enable_gqa=KV != H)                                          # [B, H, 1, D]
        return ctx.reshape(B, H * D)
    raise ValueError(f"decode attention {variant!r}: use one of {', '.join(DECODE_ATTENTION)}")


class BatchedLlamaDecoder(LlamaStaticDecoder):
    """Decode of ``batch`` sequences per step over a batched static KV cache; one CUDA graph.

    The weights are the batch-1 decoder's (same buffers, same per-name seeds: a
    :class:`LlamaStaticDecoder` with the same ``seed`` holds identical weights). The cache is
    ``k_cache``/``v_cache`` ``[n_layer, batch, n_kv_head, cache_len, d_head]``; ``tok_t`` and
    ``pos_t`` hold one token and one position per sequence. :meth:`step` (captured by
    :meth:`capture`, replayed by :meth:`run`) returns logits ``[batch, vocab]``.
    :meth:`resize` swaps in a cache of another batch / length without rebuilding the weights;
    :meth:`prefill` returns a :class:`PrefillStep` that fills this cache from prompts.
    """

    def __init__(self, shape: DecoderShape, *, batch: int = 1, cache_len: int | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16,
                 seed: int = 0, init_std: float = INIT_STD) -> None:
        self.base_shape = shape
        self.attention = "bmm"  # decode attention formulation (decode_attention)
        cache_len = shape.n_ctx if cache_len is None else cache_len
        # the parent's batch-1 state is sized by n_ctx; the weights do not depend on it
        super().__init__(dataclasses.replace(shape, n_ctx=1), device=device, dtype=dtype,
                         seed=seed, init_std=init_std)
        self.resize(batch, cache_len)

    def resize(self, batch: int, cache_len: int) -> None:
        """Drop the cache and any captured graph, then allocate a zeroed cache of ``batch``
        sequences x ``cache_len`` slots, the RoPE tables for ``cache_len`` positions and the
        per-sequence input tensors."""
        if batch < 1 or cache_len < 1:
            raise ValueError(f"batch ({batch}) and cache_len ({cache_len}) must be >= 1")
        self.graph = self.logits = None
        self.k_cache = self.v_cache = None  # type: ignore[assignment]
        _free(self.device)
        s = self.shape = dataclasses.replace(self.base_shape, n_ctx=cache_len)
        self.n_ctx, self.batch = cache_len, batch
        # RoPE tables, slot indices, mask constants; 0 KV heads: no batch-1 cache
        init_decode_state(self, s, 0, self.dtype, self.device)
        cache = (s.n_layer, batch, s.n_kv_head, cache_len, s.d_head)
        self.k_cache = torch.zeros(cache, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(cache, dtype=self.dtype, device=self.device)
        self.tok_t = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.pos_t = torch.zeros(batch, dtype=torch.long, device=self.device)

    def set_inputs(self, token: int | Sequence[int], pos: int | Sequence[int]) -> None:  # type: ignore[override]
        """One token and one position per sequence (a single int applies to all)."""
        toks = [int(token)] * self.batch if isinstance(token, int) else [int(t) for t in token]
        poss = [int(pos)] * self.batch if isinstance(pos, int) else [int(p) for p in pos]
        if len(toks) != self.batch or len(poss) != self.batch:
            raise ValueError(f"need {self.batch} tokens and positions, got {len(toks)} and {len(poss)}")
        if not all(0 <= p < self.n_ctx for p in poss):
            raise ValueError(f"positions {poss} outside [0, {self.n_ctx})")
        self.tok_t.copy_(torch.tensor(toks, dtype=torch.long))
        self.pos_t.copy_(torch.tensor(poss, dtype=torch.long))

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """One decode step of all sequences on ``tok_t``/``pos_t``; logits ``[batch, vocab]``."""
        s, B, S = self.shape, self.batch, self.n_ctx
        H, KV, D, f = s.n_head, s.n_kv_head, s.d_head, s.d_ff
        h = F.embedding(self.tok_t, self.embed)                                       # [B, d]
        cos = self.cos.index_select(0, self.pos_t).view(B, 1, D)
        sin = self.sin_signed.index_select(0, self.pos_t).view(B, 1, D)
        # per sequence: 0 up to and including its position, -inf beyond; one row per (b, kv head)
        mask = torch.where(self._slots.view(1, S) <= self.pos_t.view(B, 1), self._zero, self._neg_inf)
        mask = mask.view(B, 1, 1, S).expand(B, KV, 1, S).reshape(B * KV, 1, S)
        at = self.pos_t.view(B, 1, 1, 1).expand(B, KV, 1, D)
        for li in range(s.n_layer):
            x = self._rms(h, self.ln1[li])
            qkv = F.linear(x, self.wqkv[li])                                          # [B, (H+2KV)D]
            qk = qkv[:, :(H + KV) * D].view(B, H + KV, D)
            qk = torch.addcmul(qk * cos, qk.roll(D // 2, -1), sin)                     # RoPE on q and k
            k = qk[:, H:].reshape(B, KV, 1, D)
            v = qkv[:, (H + KV) * D:].reshape(B, KV, 1, D)
            kc, vc = self.k_cache[li], self.v_cache[li]                                # [B, KV, S, D]
            kc.scatter_(2, at, k)
            vc.scatter_(2, at, v)
            ctx = decode_attention(qk[:, :H], kc, vc, mask, self.attention)             # [B, H D]
            h.addmm_(ctx, self.wo[li].t())                                             # h += ctx Wo^T
            x = self._rms(h, self.ln2[li])
            gu = F.linear(x, self.wgu[li])                                             # [B, 2 d_ff]
            h.addmm_(F.silu(gu[:, :f]) * gu[:, f:], self.wdown[li].t())
        return F.linear(self._rms(h, self.norm), self.lm_head)                         # [B, vocab]

    @torch.no_grad()
    def prefill_step(self, prompt_t: torch.Tensor) -> torch.Tensor:
        """Prefill of the prompts ``prompt_t`` ``[b, P]`` (b <= batch, P <= cache_len) at
        positions ``0..P-1`` into sequences ``0..b-1``: K/V written to slots ``0..P-1``, causal
        attention among the prompt tokens; logits of each prompt's last token ``[b, vocab]``."""
        s = self.shape
        b, P = prompt_t.shape
        H, KV, D, f = s.n_head, s.n_kv_head, s.d_head, s.d_ff
        h = F.embedding(prompt_t.reshape(b * P), self.embed)                          # [bP, d]
        cos = self.cos[:P].view(1, P, 1, D)
        sin = self.sin_signed[:P].view(1, P, 1, D)
        for li in range(s.n_layer):
            x = self._rms(h, self.ln1[li])
            qkv = F.linear(x, self.wqkv[li])                                          # [bP, (H+2KV)D]
            qk = qkv[:, :(H + KV) * D].view(b, P, H + KV, D)
            qk = torch.addcmul(qk * cos, qk.roll(D // 2, -1), sin)
            q = qk[:, :, :H].transpose(1, 2)                                           # [b, H, P, D]
            k = qk[:, :, H:].transpose(1, 2)                                           # [b, KV, P, D]
            v = qkv[:, (H + KV) * D:].view(b, P, KV, D).transpose(1, 2)
            self.k_cache[li, :b, :, :P].copy_(k)
            self.v_cache[li, :b, :, :P].copy_(v)
            ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(D),
                                                 enable_gqa=KV != H)                   # [b, H, P, D]
            h.addmm_(ctx.transpose(1, 2).reshape(b * P, H * D), self.wo[li].t())
            x = self._rms(h, self.ln2[li])
            gu = F.linear(x, self.wgu[li])
            h.addmm_(F.silu(gu[:, :f]) * gu[:, f:], self.wdown[li].t())
        last = h.view(b, P, s.d_model)[:, -1]
        return F.linear(self._rms(last, self.norm), self.lm_head)                      # [b, vocab]

    def prefill(self, batch: int, prompt_len: int) -> PrefillStep:
        """A :class:`PrefillStep` of ``batch`` prompts of ``prompt_len`` tokens into this cache."""
        return PrefillStep(self, batch, prompt_len)


class PrefillStep(CudaGraphStep):
    """The prefill of ``batch`` prompts of ``prompt_len`` tokens into a
    :class:`BatchedLlamaDecoder`'s cache, as a step of its own (one CUDA graph after
    :meth:`capture`). The prompt tokens live in the device tensor ``prompt_t`` ``[batch, P]``;
    :meth:`set_prompt` fills it, :meth:`run` returns the last-token logits ``[batch, vocab]``."""

    def __init__(self, dec: BatchedLlamaDecoder, batch: int, prompt_len: int) -> None:
        if not 1 <= batch <= dec.batch or not 1 <= prompt_len <= dec.n_ctx:
            raise ValueError(f"prefill of {batch} x {prompt_len} tokens does not fit a cache of "
                             f"{dec.batch} x {dec.n_ctx}")
        self.dec, self.device, self.n_ctx = dec, dec.device, dec.n_ctx
        self.k_cache, self.v_cache = dec.k_cache, dec.v_cache
        self.batch, self.prompt_len = batch, prompt_len
        self.prompt_t = torch.zeros(batch, prompt_len, dtype=torch.long, device=dec.device)
        self.graph = None
        self.logits = None

    def set_prompt(self, tokens: torch.Tensor | Sequence[Sequence[int]]) -> None:
        t = torch.as_tensor(tokens, dtype=torch.long)
        if tuple(t.shape) != (self.batch, self.prompt_len):
            raise ValueError(f"prompt of shape {tuple(t.shape)}, need {(self.batch, self.prompt_len)}")
        self.prompt_t.copy_(t)

    def step(self) -> torch.Tensor:
        return self.dec.prefill_step(self.prompt_t)


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prewarm(fn: Callable[[], Any], device: torch.device, seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        _sync(device)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Timing and power settings of a run."""

    repeats: int = 5
    batch_s: float = 0.1          # one timed round of back-to-back replays
    prewarm_s: float = 0.3
    power_s: float = 1.5          # sampled part of the sustained loop
    ramp_s: float = 0.5           # unsampled start of the sustained loop
    idle_s: float = 2.0
    seed: int = 0
    decode_attention: str = "bmm"  # the decode attention formulation (decode_attention)


def time_and_power(step: CudaGraphStep, tokens_per_step: int, *, settings: Settings,
                   sampler: PowerSampler | None, idle_w: float | None) -> dict[str, Any]:
    """Capture ``step`` (CUDA), time its replays, and run the power loop; the fields of a result."""
    dev = step.device
    cuda = dev.type == "cuda"
    t0 = time.perf_counter()
    if cuda:
        step.capture()
    capture_s = time.perf_counter() - t0
    if cuda:
        _prewarm(step.run, dev, settings.prewarm_s)
    r = time_per_call_ms(step.run, dev, repeats=settings.repeats, target_s=settings.batch_s)
    ms = r["ms"]
    out: dict[str, Any] = {"ms_per_step": ms, "spread_ms": r["spread_ms"], "n_inner": r["n_inner"],
                           "tokens_per_step": tokens_per_step,
                           "tokens_per_s": tokens_per_step * 1e3 / ms, "graph": step.graph is not None,
                           "capture_s": round(capture_s, 3)}
    if sampler is not None and sampler.available:
        loop = sustained_loop(step.run, dev, sampler, seconds=settings.power_s,
                              ramp_s=settings.ramp_s, idle_w=idle_w)
        w, loop_ms = loop.get("mean_power_w"), loop["ms_per_token"]
        loop["ms_per_step"] = loop.pop("ms_per_token")
        loop["steps"] = loop.pop("tokens")
        for k in ("joules_per_token", "joules_per_token_above_idle", "joules_per_token_energy_counter"):
            if k in loop:  # sustained_loop's per-call joules are per step here
                loop[k.replace("token", "step")] = loop.pop(k)
        out["power_loop"] = loop
        out["power_w"] = w
        if w is not None:
            out["j_per_token"] = w * loop_ms / 1e3 / tokens_per_step
            if idle_w is not None:
                out["j_per_token_above_idle"] = (w - idle_w) * loop_ms / 1e3 / tokens_per_step
    else:
        out["power_w"] = None
        out["j_per_token"] = None
    return out


def _fits(device: torch.device, need: int) -> tuple[bool, int | None]:
    if device.type != "cuda":
        return True, None
    free_b, _ = torch.cuda.mem_get_info(device)
    return need <= free_b, free_b


def _oom_reason(e: BaseException) -> str:
    return f"out of GPU memory: {str(e).splitlines()[0][:200]}"


def measure_model(name: str, device: torch.device, *, dtype: torch.dtype, batches: Sequence[int],
                  kv_lens: Sequence[int], prompts: Sequence[int],
                  prefill_batched: Sequence[tuple[int, int]], settings: Settings,
                  sampler: PowerSampler | None, idle_w: float | None,
                  results: list[dict[str, Any]], not_measured: list[dict[str, Any]],
                  checkpoint: Callable[[], None], log: Callable[[str], None]) -> None:
    """Every decode and prefill point of model ``name``; appends to ``results`` and
    ``not_measured`` and calls ``checkpoint()`` after each point."""
    shape = get_shape(name)
    el = torch.tensor([], dtype=dtype).element_size()
    weight_bytes = shape.n_params * el
    gen = torch.Generator().manual_seed(settings.seed + 1)
    common = {"model": name, "dtype": str(dtype).replace("torch.", ""),
              "decode_attention": settings.decode_attention}

    def skip(point: dict[str, Any], need: int, free_b: int | None, reason: str) -> None:
        not_measured.append({**common, **point, "bytes_needed": need, "bytes_free": free_b,
                             "reason": reason})
        log(f"[{name}] {point} not measured: {reason}")
        checkpoint()

    ok, free_b = _fits(device, weight_bytes + WORKSPACE_MARGIN_BYTES)
    if not ok:
        for L in kv_lens:
            for B in batches:
                skip({"phase": "decode", "batch": B, "kv_len": L}, weight_bytes, free_b,
                     "the weights alone exceed the free GPU memory")
        for P in prompts:
            skip({"phase": "prefill", "batch": 1, "prompt_len": P}, weight_bytes, free_b,
                 "the weights alone exceed the free GPU memory")
        return
    t0 = time.perf_counter()
    dec = BatchedLlamaDecoder(shape, batch=1, cache_len=1, device=device, dtype=dtype,
                              seed=settings.seed)
    dec.attention = settings.decode_attention
    _sync(device)
    build_s = time.perf_counter() - t0
    assert dec.weight_bytes == weight_bytes
    log(f"[{name}] weights {weight_bytes / 2**30:.2f} GiB built in {build_s:.2f}s")
    common.update(params=shape.n_params, weight_bytes=weight_bytes, n_layer=shape.n_layer,
                  d_model=shape.d_model, n_head=shape.n_head, n_kv_head=shape.n_kv_head,
                  d_ff=shape.d_ff, vocab=shape.vocab)

    def point(phase: str, B: int, length: int) -> None:
        slots = length + 1 if phase == "decode" else length
        tokens = B if phase == "decode" else B * length
        key = "kv_len" if phase == "decode" else "prompt_len"
        kv_b = kv_cache_bytes(shape, B, slots, el)
        need = (weight_bytes + kv_b + WORKSPACE_MARGIN_BYTES
                + activation_bytes(shape, tokens, slots, el, scores=phase == "decode"))
        pt = {"phase": phase, "batch": B, key: length}
        dec.resize(1, 1)  # release the previous point's cache and graph before asking
        ok, free_b = _fits(device, need - weight_bytes)
        if not ok:
            skip(pt, need, None if free_b is None else free_b + weight_bytes,
                 "weights + KV cache + activations exceed the GPU memory")
            return
        try:
            dec.resize(B, slots)
            dec.reset("random", seed=settings.seed + 2)
            if phase == "decode":
                dec.set_inputs(torch.randint(0, shape.vocab, (B,), generator=gen).tolist(), length)
                step: CudaGraphStep = dec
            else:
                step = dec.prefill(B, length)
                step.set_prompt(torch.randint(0, shape.vocab, (B, length), generator=gen))
            m = time_and_power(step, tokens, settings=settings, sampler=sampler, idle_w=idle_w)
            del step
        except torch.cuda.OutOfMemoryError as e:
            dec.resize(1, 1)
            skip(pt, need, None, _oom_reason(e))
            return
        row = {**common, **pt, "cache_slots": slots, "kv_cache_bytes": kv_b, "bytes_estimated": need,
               "ms_per_step": m.pop("ms_per_step"), "tokens_per_s": m.pop("tokens_per_s"),
               "power_w": m.pop("power_w"), "j_per_token": m.pop("j_per_token"), **m}
        if device.type == "cuda":
            row["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        results.append(row)
        w = row["power_w"]
        log(f"[{name}] {phase} B={B} {key}={length}: {row['ms_per_step']:.3f} ms/step, "
            f"{row['tokens_per_s']:.0f} tok/s"
            + (f", {w:.0f} W, {row['j_per_token'] * 1e3:.2f} mJ/token" if w is not None else ""))
        checkpoint()

    try:
        for L in kv_lens:
            for B in batches:
                point("decode", B, L)
        for P in prompts:
            point("prefill", 1, P)
        for P, B in prefill_batched:
            point("prefill", B, P)
    finally:
        dec = None  # drop the references: the memory is freed
        _free(device)


@torch.no_grad()
def validate_small(name: str, device: torch.device, dtype: torch.dtype, *, batch: int = 3,
                   prompt_len: int = 6, seed: int = 0, attention: str = "bmm") -> dict[str, Any]:
    """Batched decode at mixed positions and prefill (graphs on CUDA) against batch-1 steps of
    :class:`LlamaStaticDecoder` (graph on CUDA) with the same weights: max |logit difference|
    (decode attention formulation ``attention``)."""
    shape = get_shape(name)
    gen = torch.Generator().manual_seed(seed + 1)
    n = prompt_len + 1
    toks = torch.randint(0, shape.vocab, (batch, n), generator=gen)
    ref = LlamaStaticDecoder(shape, device=device, dtype=dtype, seed=seed)
    if device.type == "cuda":
        ref.capture()
    # reference: each sequence's logits at every step, and its cache after the prompt
    ref_logits, ref_k = [], []
    for b in range(batch):
        ref.reset("zeros")
        ref_logits.append([ref.decode(int(t), p).float().clone() for p, t in enumerate(toks[b])])
        ref_k.append(ref.k_cache[:, :, :n].clone())
    del ref
    _free(device)
    dec = BatchedLlamaDecoder(shape, batch=batch, cache_len=n, device=device, dtype=dtype, seed=seed)
    dec.attention = attention
    pre = dec.prefill(batch, prompt_len)
    if device.type == "cuda":
        pre.capture()
        dec.capture()
    pre.set_prompt(toks[:, :prompt_len])
    got_pre = pre.run().float()
    # decode one more token per sequence at position prompt_len; then re-run sequence b's last
    # step at a different position by shortening its history (positions differ per sequence)
    dec.set_inputs(toks[:, prompt_len].tolist(), prompt_len)
    got_dec = dec.run().float().clone()
    mixed_pos = [prompt_len - b % prompt_len for b in range(batch)]
    dec.set_inputs([int(toks[b, p]) for b, p in enumerate(mixed_pos)], mixed_pos)
    got_mixed = dec.run().float().clone()
    diffs = {
        "prefill_last_token": max(float((got_pre[b] - ref_logits[b][prompt_len - 1][0]).abs().max())
                                  for b in range(batch)),
        "decode_after_prefill": max(float((got_dec[b] - ref_logits[b][prompt_len][0]).abs().max())
                                    for b in range(batch)),
        "decode_mixed_positions": max(float((got_mixed[b] - ref_logits[b][p][0]).abs().max())
                                      for b, p in enumerate(mixed_pos)),
        "cache_after_prefill": max(float((dec.k_cache[:, b, :, :prompt_len].float()
                                          - ref_k[b][:, :, :prompt_len].float()).abs().max())
                                   for b in range(batch)),
    }
    res = {"config": name, "n_head": shape.n_head, "n_kv_head": shape.n_kv_head, "batch": batch,
           "prompt_len": prompt_len, "mixed_positions": mixed_pos, "graph": dec.graph is not None,
           "dtype": str(dtype).replace("torch.", ""), "max_abs_diff": diffs,
           "max_abs_logit": max(float(x.abs().max()) for r in ref_logits for x in r)}
    del dec, pre
    _free(device)
    return res


def run_batched(models: Sequence[str], *, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None, batches: Sequence[int] = DEFAULT_BATCHES,
                kv_lens: Sequence[int] = DEFAULT_KV_LENS, prompts: Sequence[int] = DEFAULT_PROMPTS,
                prefill_batched: Sequence[tuple[int, int]] = DEFAULT_PREFILL_BATCHED,
                settings: Settings = Settings(), validation_configs: Sequence[str] = VALIDATION_CONFIGS,
                checkpoint: Callable[[dict[str, Any]], None] | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validate the small configs, then measure every point of every model; the JSON document.
    ``checkpoint(doc)`` is called with the document so far after every point."""
    device, dtype, cuda = resolve_device(device, dtype)
    info = environment_info(device)
    info["gpu_slug"] = gpu_slug(info.get("gpu"))
    sampler = PowerSampler(device.index or 0) if cuda else None
    info["power_source"] = sampler.source if sampler is not None else None
    idle_w = None
    if cuda:
        torch.zeros(1, device=device)
        time.sleep(0.5)
        idle_w = measure_idle_w(sampler, settings.idle_s)
        info["idle_power_w"] = idle_w
        log(f"{info['gpu']}  driver {info['driver']}  torch {info['torch']}  idle {idle_w} W  "
            f"power via {info['power_source']}")
    results: list[dict[str, Any]] = []
    not_measured: list[dict[str, Any]] = []
    method = METHOD if cuda else \
        METHOD + " DRY RUN on the CPU: time.perf_counter, no graph capture, no power."
    doc = {"method": method, "info": info,
           "settings": {**dataclasses.asdict(settings), "dtype": str(dtype).replace("torch.", ""),
                        "models": list(models), "batches": list(batches), "kv_lens": list(kv_lens),
                        "prompts": list(prompts), "prefill_batched": [list(x) for x in prefill_batched],
                        "workspace_margin_bytes": WORKSPACE_MARGIN_BYTES, "dry_run": not cuda},
           "validation_small": [], "results": results, "not_measured": not_measured}

    def save() -> None:
        if checkpoint is not None:
            checkpoint(doc)

    for v in validation_configs:
        r = validate_small(v, device, dtype, seed=settings.seed, attention=settings.decode_attention)
        doc["validation_small"].append(r)
        log(f"[validation {v}] max|diff| {r['max_abs_diff']} (max|logit| {r['max_abs_logit']:.3g})")
    save()
    t0 = time.perf_counter()
    for name in models:
        measure_model(name, device, dtype=dtype, batches=batches, kv_lens=kv_lens, prompts=prompts,
                      prefill_batched=prefill_batched, settings=settings, sampler=sampler,
                      idle_w=idle_w, results=results, not_measured=not_measured, checkpoint=save,
                      log=log)
        log(f"  ({time.perf_counter() - t0:.1f}s elapsed)")
    doc["elapsed_s"] = round(time.perf_counter() - t0, 1)
    save()
    return doc


def summary_table(doc: dict[str, Any]) -> str:
    """Markdown: model, phase, batch, length, ms/step, tokens/s, W, mJ/token."""
    lines = ["| model | phase | batch | KV len / prompt | ms/step | tokens/s | W | mJ/token |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        n = r.get("kv_len", r.get("prompt_len"))
        w, j = r.get("power_w"), r.get("j_per_token")
        lines.append(f"| {r['model']} | {r['phase']} | {r['batch']} | {n} | {r['ms_per_step']:.3f} | "
                     f"{r['tokens_per_s']:.0f} | " + (f"{w:.0f}" if w is not None else "-") + " | "
                     + (f"{j * 1e3:.2f}" if j is not None else "-") + " |")
    for r in doc["not_measured"]:
        n = r.get("kv_len", r.get("prompt_len"))
        lines.append(f"| {r['model']} | {r['phase']} | {r['batch']} | {n} | not measured: "
                     f"{r['reason']} | | | |")
    return "\n".join(lines)


def save_json(doc: dict[str, Any], output: str) -> str:
    """Write ``doc`` to ``output`` (``{gpu}`` becomes the GPU tag) atomically, creating its folder;
    the path written."""
    path = output.replace("{gpu}", doc["info"]["gpu_slug"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


@torch.no_grad()
def time_decode_attention(name: str, batch: int, kv_len: int, device: str | torch.device = "cuda",
                          dtype: torch.dtype = torch.float16, repeats: int = 20
                          ) -> dict[str, float]:
    """Milliseconds of one layer's decode attention of model ``name`` (``batch`` sequences at
    position ``kv_len``) for every :data:`DECODE_ATTENTION` formulation, and the time the
    layer's K and V would take at the GPU's measured copy bandwidth (``copy_bound``): which
    formulation reads the cache at the rate the hardware allows."""
    s = get_shape(name)
    dev = torch.device(device)
    B, H, KV, D, S = batch, s.n_head, s.n_kv_head, s.d_head, kv_len + 1
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, H, D, device=dev, dtype=dtype, generator=g)
    kc = torch.randn(B, KV, S, D, device=dev, dtype=dtype, generator=g)
    vc = torch.randn(B, KV, S, D, device=dev, dtype=dtype, generator=g)
    mask = torch.zeros(B * KV, 1, S, device=dev, dtype=dtype)

    def timed(fn: Callable[[], Any]) -> float:
        for _ in range(3):
            fn()
        _sync(dev)
        if dev.type != "cuda":
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            return (time.perf_counter() - t0) * 1e3 / repeats
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(repeats):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / repeats

    out = {v: timed(lambda v=v: decode_attention(q, kc, vc, mask, v)) for v in DECODE_ATTENTION}
    dst = torch.empty_like(kc)
    out["copy_bound"] = timed(lambda: dst.copy_(kc))  # moves 2 |K| bytes = reading K and V once
    return out
