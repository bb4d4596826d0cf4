"""Analytic batch-1 decode model for GPUs (GPT and the zoo's Llama-family, OPT, Pythia, GPT-J
shapes, on one GPU or tensor parallel over NVLink), calibrated against measurement.

Per decoded token (batch 1, fp16 weights)::

    bytes   = weight bytes streamed + KV bytes read
    time    = max(bytes / (BW * mem_eff), flops / (peak * compute_eff)) + n_kernels * kernel_overhead
    energy  = power * time,   power = board power            (``power="board"``, the default)
                              or idle + dyn * u              (``power="util"``, u = bytes / (time * BW))

* weight bytes streamed: every parameter once in fp16 except the position table, of which one row
  is read (the tied LM head streams ``wte`` in full);
* KV bytes read: ``2 * n_layer * n_head * d_head * 2 B`` per cached position, over ``pos + 1``
  positions (an ideal kernel), or over all ``n_ctx`` slots with ``static_cache=True``, which is what
  the measured CUDA-graph path (:mod:`workloads.gpu.baseline`) does: it attends over its whole
  preallocated buffer with the tail masked;
* ``n_kernels``: kernels per decode step, ``kernels_per_layer * n_layer + kernels_fixed`` (the
  counts that torch.profiler saw for the graph path, 15-18 per layer; the measured count is used
  where it is known).

GPU presets (memory bandwidth, dense FP16 rate, board power) are from the project hardware
reference (public vendor specifications), section 5 ("GPU baselines"): T4 320 GB/s, 65 TFLOPS,
70 W; A100 SXM 80GB 2.04 TB/s, 312 TFLOPS, 400 W; H100 SXM 3.35 TB/s, 989 TFLOPS, 700 W; H200
4.8 TB/s, 989 TFLOPS, 700 W. Idle power (15 % of board power) is an assumption; the default
bandwidth efficiency (0.70), per-kernel overhead (3.4 us) and kernel counts are the rounded H200
calibration; :func:`workloads.gpu.calibration.calibrate` fits them to a measured JSON from
:mod:`workloads.gpu.baseline` (``workloads/gpu/data/gpu_measured_<gpu>.json``). Carrying a
calibration to another GPU (:func:`workloads.gpu.calibration.transfer`) assumes the same
software path and per-kernel cost: a lead, not a measurement.

Shapes: a :class:`~workloads.models.shape.DecoderShape` (any family: ``n_kv_head`` for GQA/MQA,
SwiGLU ``gated_mlp``, tied or untied head, biases, norms: an exact parameter count), or the
fields of a GPT-layout measurement row with its own ``n_params`` (:func:`is_shape`);
:func:`workloads.gpu.shapes.zoo_shape` gives one for every zoo preset from its config
arguments, and ``predict`` takes a preset name. A gated-MLP shape uses the Llama software path
(``gated_*`` fields of :class:`GPUSpec`): its own efficiency, per-kernel overhead and kernel
counts, calibrated on ``workloads/gpu/data/gpu_measured_h200_llama.json``
(:mod:`workloads.gpu.calibration`; :func:`~workloads.gpu.tables.llama_table` shows the fit and
the held-out check). Other families (OPT, Pythia, GPT-J) use the GPT path: an assumption, no
measurement of their software path.

Multi-head latent attention (DeepSeek-V3, :class:`~workloads.models.shape.DecoderShape`'s MLA
fields): the weights streamed are the query path (q_a_proj, its norm, q_b_proj), kv_a_proj_with_mqa,
kv_b_proj (read once, absorbed or not) and o_proj, plus the dense layers, the shared expert,
the router and the union of the routed experts; the KV bytes per position are the latent cache's
``kv_lora_rank + qk_rope_head_dim`` elements per layer (576), one KV head, so every GPU of a
tensor-parallel group reads all of it (each its share of the heads' attention FLOPs). Its kernel
count and efficiency are the Llama path's: an assumption, no measurement of an MLA decoder.

Tensor parallelism (``predict(..., tp=N)``): each GPU streams 1/N of the weights and holds
``ceil(n_kv_head / N)`` KV heads; the step adds two ring all-reduces of ``d_model`` fp16 per layer
(``2 (N-1)/N x bytes / NVLink bw + latency``) and one all-gather of the logits; energy is N
boards. NVLink bandwidth and memory capacity are datasheet values (see ``GPU_PRESETS``); the
per-call all-reduce latency and the per-GPU memory reserve are assumptions. A model that does not
fit N GPUs raises ValueError naming the GPU count that fits (:func:`min_gpus`).

Batches (:func:`predict_batch`, :func:`predict_prefill`, both :func:`predict_step`): one step
reads the weights once for all its sequences and each sequence's KV on its own; its FLOPs are
every token's, so a large batch or a prefill turns compute bound (``peak x compute_eff``, where
``compute_eff`` matters). Energy defaults to utilisation power there (the board's power only
when asked: ``power="board"``); :func:`workloads.gpu.calibration.calibrate_batched` fits
efficiencies, per-kernel overhead and power to a batched measurement
(:mod:`workloads.gpu.batched`). Without one, the batched numbers are the batch-1 calibration's
roofline extended to a batch: uncalibrated beyond batch 1.

Needs only the standard library.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from workloads.gpu.shapes import shape_for
from workloads.models.shape import FP16_BYTES, DecoderShape

HARDWARE_REF = "public vendor specifications (project hardware reference, GPU baselines)"


def is_shape(cfg: Any) -> bool:
    """Whether ``cfg`` counts its own bytes (a :class:`DecoderShape`), as opposed to the fields of
    a GPT-layout measurement row with its own ``n_params`` (the calibration's rows, a compiled
    model's counts), whose bytes this module counts itself."""
    return isinstance(cfg, DecoderShape)


@dataclasses.dataclass(frozen=True)
class GPUSpec:
    """A GPU for the analytic model. Rates in SI units (bytes/s, FLOP/s, W, s)."""

    name: str
    mem_bw: float                  # peak memory bandwidth, bytes/s
    peak_flops: float              # dense FP16 FLOP/s
    board_w: float                 # board power, W
    idle_w: float                  # idle board power, W (assumed 15 % of board power)
    dyn_w: float | None = None     # W per unit bandwidth utilisation (None: board_w - idle_w)
    dyn_compute_w: float | None = None  # W per unit compute utilisation (None: one term, dyn_w
    #                                     x the busier utilisation); a batched calibration fits it
    # defaults: the H200 calibration of workloads/gpu/data/gpu_measured_h200.json, rounded
    mem_eff: float = 0.70          # achieved / peak bandwidth when streaming weights
    compute_eff: float = 0.5       # achieved / peak FLOP/s (irrelevant at batch 1)
    kernel_overhead_s: float = 3.4e-6  # per kernel in a CUDA graph: launch gap + small-kernel floor
    kernels_per_layer: float = 16.3
    kernels_fixed: float = 6.0
    source: str = HARDWARE_REF
    # memory capacity and NVLink (tensor parallelism); see _preset for the sources
    mem_bytes: float = 0.0         # HBM/GDDR capacity per GPU, bytes (datasheet, decimal GB; 0: unchecked)
    nvlink_bw: float = 0.0         # NVLink bandwidth per GPU per direction, bytes/s (0: no NVLink)
    allreduce_latency_s: float = 6e-6  # [assumed] one small NCCL all-reduce inside a CUDA graph
    #                                    (nccl-tests small-message latency is ~5-10 us on NVLink)
    reserve_bytes: float = 1e9     # [assumed] per GPU: CUDA context, activations, workspace
    # the Llama-family (gated MLP, RMSNorm) software path, its own kernel counts and fit: the
    # rounded H200 calibration on workloads/gpu/data/gpu_measured_h200_llama.json (calibrate() of
    # that file). The kernel line is least squares through the profiler's 647/648/847/1687
    # kernels at 32/32/40/80 layers (20 per layer + 7 at 32 layers, 21 + 7 at 40 and 80), hence
    # the negative constant.
    gated_mem_eff: float = 0.84
    gated_kernel_overhead_s: float = 3.1e-6
    gated_kernels_per_layer: float = 21.6
    gated_kernels_fixed: float = -34.0
    # the gated path's fitted power (idle W, W per unit utilisation; None: the GPT path's)
    gated_idle_w: float | None = None
    gated_dyn_w: float | None = None
    gated_dyn_compute_w: float | None = None

    def n_kernels(self, cfg: Any) -> float:
        if getattr(cfg, "gated_mlp", False):
            return self.gated_kernels_per_layer * cfg.n_layer + self.gated_kernels_fixed
        return self.kernels_per_layer * cfg.n_layer + self.kernels_fixed

    def for_shape(self, cfg: Any) -> "GPUSpec":
        """The spec whose ``mem_eff`` / ``kernel_overhead_s`` apply to ``cfg``: the gated-path
        (Llama decoder) calibration for a gated-MLP shape, else this spec unchanged."""
        if not getattr(cfg, "gated_mlp", False):
            return self
        power = {} if self.gated_dyn_w is None else {"idle_w": self.gated_idle_w,
                                                      "dyn_w": self.gated_dyn_w,
                                                      "dyn_compute_w": self.gated_dyn_compute_w}
        return dataclasses.replace(self, mem_eff=self.gated_mem_eff,
                                   kernel_overhead_s=self.gated_kernel_overhead_s, **power)

    def power_source(self, cfg: Any, power: str = "util") -> str:
        """Where ``power`` draws this spec's watts for ``cfg``'s software path: ``"board"``
        (datasheet board power), ``"fitted"`` (utilisation power fitted to measured board power
        of this GPU: a calibration set ``dyn_w``) or ``"utilisation"`` (utilisation power with
        the assumed idle share, not fitted)."""
        if power == "board":
            return "board"
        return "fitted" if self.for_shape(cfg).dyn_w is not None else "utilisation"


def _preset(name: str, bw: float, flops: float, watts: float, mem_bytes: float,
            nvlink_bw: float) -> GPUSpec:
    return GPUSpec(name=name, mem_bw=bw, peak_flops=flops, board_w=watts, idle_w=0.15 * watts,
                   mem_bytes=mem_bytes, nvlink_bw=nvlink_bw)


# Memory capacity and NVLink from the NVIDIA datasheets: T4 16 GB GDDR6, PCIe only (T4 datasheet);
# A100 SXM4 80 GB HBM2e, NVLink3 600 GB/s (A100 datasheet: 12 links x 50 GB/s bidirectional);
# H100 SXM5 80 GB HBM3, NVLink4 900 GB/s (H100 datasheet: 18 links x 50 GB/s bidirectional);
# H200 SXM 141 GB HBM3e, NVLink4 900 GB/s (H200 datasheet). The datasheet NVLink figure is both
# directions together; a ring all-reduce is limited by one direction, so half is used here.
GPU_PRESETS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        _preset("T4", 320e9, 65e12, 70.0, 16e9, 0.0),
        _preset("A100", 2.04e12, 312e12, 400.0, 80e9, 600e9 / 2),
        _preset("H100", 3.35e12, 989e12, 700.0, 80e9, 900e9 / 2),
        _preset("H200", 4.8e12, 989e12, 700.0, 141e9, 900e9 / 2),
    )
}


def gpu_preset(name: str) -> GPUSpec:
    """``T4``, ``A100``, ``H100`` or ``H200`` (case-insensitive; a full device name such as
    'NVIDIA H100 80GB HBM3' works too)."""
    key = name.upper()
    if key in GPU_PRESETS:
        return GPU_PRESETS[key]
    for k in sorted(GPU_PRESETS, key=len, reverse=True):
        if k in key.split() or k in key.replace("-", " ").split() or k in key:
            return GPU_PRESETS[k]
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPU_PRESETS)}")


# --------------------------------------------------------------------------------------------
# Bytes, FLOPs, prediction
# --------------------------------------------------------------------------------------------


def weight_bytes_streamed(cfg: Any, bytes_per_param: int = FP16_BYTES, tokens: int = 1) -> int:
    """Weight bytes read per step of ``tokens`` tokens: every parameter once, but only one row
    of ``wpe``; of a mixture of experts only the experts the tokens chose (their expected
    union, :meth:`~workloads.models.shape.DecoderShape.experts_read`)."""
    if is_shape(cfg):
        return cfg.weight_bytes_streamed(bytes_per_param, tokens)
    return (cfg.n_params - cfg.n_ctx * cfg.d_model + cfg.d_model) * bytes_per_param


def kv_bytes_read(cfg: Any, pos: int, *, static_cache: bool = False, bytes_per_el: int = FP16_BYTES) -> int:
    """K and V bytes read by the attention of the token at ``pos`` (``pos + 1`` positions,
    or all ``n_ctx`` slots for a static cache)."""
    n = cfg.n_ctx if static_cache else pos + 1
    if is_shape(cfg):
        return cfg.kv_bytes_per_token(bytes_per_el) * n
    return 2 * cfg.n_layer * cfg.n_head * cfg.d_head * n * bytes_per_el


def decode_flops(cfg: Any, pos: int) -> int:
    """Multiply-adds x 2 of one decode step (matrix-vector products and attention)."""
    if is_shape(cfg):
        return cfg.decode_flops(pos)
    d, a, f = cfg.d_model, cfg.n_head * cfg.d_head, cfg.d_ff
    per_layer = 2 * (3 * d * a + a * d + 2 * d * f) + 2 * 2 * a * (pos + 1)
    return cfg.n_layer * per_layer + 2 * cfg.vocab * d


def allreduce_s(g: GPUSpec, nbytes: float, tp: int) -> float:
    """One ring all-reduce of ``nbytes`` over ``tp`` GPUs: ``2 (N-1)/N x bytes / bw + latency``
    (bw: NVLink per GPU per direction; latency: the [assumed] per-call NCCL cost); 0 for N = 1."""
    if tp == 1:
        return 0.0
    return 2 * (tp - 1) / tp * nbytes / g.nvlink_bw + g.allreduce_latency_s


def allgather_s(g: GPUSpec, nbytes: float, tp: int) -> float:
    """One ring all-gather of ``nbytes`` in all (each GPU holds 1/N): ``(N-1)/N x bytes / bw +
    latency``; 0 for N = 1."""
    if tp == 1:
        return 0.0
    return (tp - 1) / tp * nbytes / g.nvlink_bw + g.allreduce_latency_s


def _kv_share(cfg: Any, tp: int) -> float:
    """Fraction of the KV cache one GPU holds under tensor parallelism: its ``ceil(n_kv / N)``
    KV heads (a KV head is replicated where there are fewer KV heads than GPUs)."""
    n_kv = getattr(cfg, "n_kv_head", cfg.n_head)
    return 1.0 if tp == 1 else -(-n_kv // tp) / n_kv


def memory_needed_bytes(cfg: Any, tp: int = 1, g: GPUSpec | None = None) -> float:
    """Bytes one of ``tp`` GPUs holds: its 1/N of every fp16 parameter, its share of a full
    (``n_ctx``) fp16 KV cache, and the [assumed] per-GPU reserve of ``g``."""
    reserve = g.reserve_bytes if g is not None else GPUSpec.reserve_bytes
    weights = cfg.n_params * FP16_BYTES / tp
    return weights + kv_bytes_read(cfg, cfg.n_ctx - 1, static_cache=True) * _kv_share(cfg, tp) + reserve


# GPU counts tried for tensor parallelism: powers of two, which divide every zoo preset's
# heads that need more than one GPU (vLLM requires n_head % tp == 0); beyond 8 a GPU node's
# NVLink domain is left, but the model keeps the NVLink all-reduce [assumed]
TP_CHOICES = (1, 2, 4, 8, 16, 32, 64)


def min_gpus(g: GPUSpec | str, model_cfg: Any, choices: Sequence[int] = TP_CHOICES) -> int | None:
    """The fewest GPUs in ``choices`` whose memory holds the model (None: not even the most);
    ``choices=range(1, n)`` gives the bare minimum (DeepSeek-V3 in bf16 on H100 80 GB: 17 for
    the weights alone, 20 with its 163,840-token latent cache on every GPU and the reserve; 32
    of :data:`TP_CHOICES`)."""
    g = gpu_preset(g) if isinstance(g, str) else g
    cfg = shape_for(model_cfg)
    for n in choices:
        if g.mem_bytes <= 0 or memory_needed_bytes(cfg, n, g) <= g.mem_bytes:
            return n
    return None


def check_fits(g: GPUSpec, cfg: Any, tp: int = 1) -> None:
    """ValueError naming the fix (more GPUs) when the model does not fit ``tp`` GPUs' memory."""
    if g.mem_bytes <= 0:
        return
    need = memory_needed_bytes(cfg, tp, g)
    if need > g.mem_bytes:
        n = min_gpus(g, cfg)
        fix = (f"use tp={n} or more {g.name} GPUs" if n and g.nvlink_bw > 0
               else "use a larger GPU or more GPUs (tensor parallelism over NVLink)")
        least = min_gpus(g, cfg, range(1, n + 1)) if n and g.nvlink_bw > 0 else None
        if least is not None and least < n:
            fix += f" (a power of two; the fewest that hold it: {least})"
        raise ValueError(
            f"{getattr(cfg, 'name', 'the model')} does not fit {tp} {g.name} "
            f"({g.mem_bytes / 1e9:.0f} GB each): it needs {need / 1e9:.1f} GB per GPU (fp16 "
            f"weights / {tp} + KV cache at n_ctx {cfg.n_ctx} + {g.reserve_bytes / 1e9:.0f} GB "
            f"reserve); {fix}")


POWER_MODELS = ("board", "util")
POWER_LABELS = {
    "board": "board power (datasheet TDP throughout the step, an upper bound)",
    "util": "utilisation power (idle + dynamic x the busier of memory and compute)",
}
# what each ``power_source`` (GPUSpec.power_source, plus "measured" for a measured file) means
POWER_SOURCE_LABELS = {
    "measured": "measured board power",
    "fitted": "utilisation power fitted to measured board power",
    "utilisation": "utilisation power (assumed idle 15 % of board power, not fitted)",
    "board": "datasheet board power throughout (an upper bound)",
}


def _resolve(gpu: GPUSpec | str, model_cfg: Any, tp: int) -> tuple[GPUSpec, Any]:
    """The spec for ``model_cfg``'s software path and the shape, after the input checks shared
    by every prediction (tp a positive int, NVLink for tp > 1, the model fits tp GPUs)."""
    g = gpu_preset(gpu) if isinstance(gpu, str) else gpu
    model_cfg = shape_for(model_cfg)
    g = g.for_shape(model_cfg)
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ValueError(f"tp must be a positive int, got {tp!r}")
    if tp > 1 and g.nvlink_bw <= 0:
        raise ValueError(f"tp={tp}: {g.name} has no NVLink in this model; use A100, H100 or H200")
    check_fits(g, model_cfg, tp)
    return g, model_cfg


def prefill_flops(cfg: Any, start: int, n: int) -> int:
    """FLOPs of a prefill chunk of ``n`` tokens at positions ``start .. start + n - 1``: each
    token's :func:`decode_flops` at its position, i.e. ``2 x (matmul parameters) x n`` plus the
    causal attention's ``4 x d_attn x (pos + 1)`` per layer and token (the ``P^2 / 2`` term), and
    the LM head for every token (an upper bound: a prefill needs the last token's logits only).
    ``decode_flops`` is affine in the position, so the sum is ``n x (first + last) / 2`` exactly."""
    if n < 1:
        return 0
    return n * (decode_flops(cfg, start) + decode_flops(cfg, start + n - 1)) // 2


def _matmul_flops_per_token(cfg: Any) -> int:
    """The FLOPs of one token that do not grow with its position (the weight matrix products
    and the head): :func:`decode_flops` is affine in the position, this is its constant part."""
    f0, f1 = decode_flops(cfg, 0), decode_flops(cfg, 1)
    return 2 * f0 - f1


def _watts(g: GPUSpec, power: str, util: float, cutil: float = 0.0) -> float:
    """Per-GPU power: ``board`` (datasheet board power) or ``util``: ``idle_w + dyn_w x u`` with
    u the busier of bandwidth and compute utilisation, or, where a calibration fitted a compute
    term (``dyn_compute_w``), ``idle_w + dyn_w x u_bw + dyn_compute_w x u_compute``; at most
    board power; ``dyn_w`` defaults to board - idle."""
    if power == "board":
        return g.board_w
    if power == "util":
        dyn = g.board_w - g.idle_w if g.dyn_w is None else g.dyn_w
        if g.dyn_compute_w is not None:
            w = g.idle_w + dyn * min(1.0, util) + g.dyn_compute_w * min(1.0, cutil)
        else:
            w = g.idle_w + dyn * min(1.0, max(util, cutil))
        return min(g.board_w, w)
    raise ValueError(f"power must be 'board' or 'util', got {power!r}")


def predict_step(gpu: GPUSpec | str, model_cfg: Any, decode_positions: Sequence[int] = (),
                 prefill_chunks: Sequence[tuple[int, int]] = (), *, static_cache: bool = False,
                 n_kernels: float | None = None, power: str = "util",
                 tp: int = 1, decode_attention: bool = True) -> dict[str, float]:
    """Time and energy of one forward pass (one CUDA graph) over a batch: every sequence of
    ``decode_positions`` decodes one token at its position, every ``(start, n)`` of
    ``prefill_chunks`` processes prompt tokens ``start .. start + n - 1`` of one sequence.

    The roofline of one step (per GPU under tensor parallelism ``tp``)::

        bytes   = weight bytes streamed, once per step whatever the batch (shared by all
                  sequences; of a mixture of experts the union of the step's tokens' experts,
                  uniform routing) / tp
                  + KV bytes read: each decode sequence's pos + 1 positions (all ``n_ctx``
                    slots with ``static_cache``), each prefill chunk's cache up to its last
                    token (once per chunk), x the GPU's KV share (its KV heads)
        flops   = each decode token's :func:`decode_flops` + each chunk's :func:`prefill_flops`
        time    = two phases one after the other, each at its own roofline:
                    max(weight bytes / (BW x mem_eff), matmul flops / tp / (peak x compute_eff))
                  + max(KV bytes / (BW x mem_eff), attention flops / tp / (peak x compute_eff))
                  (matmul flops: every token's weight products and head, the part of
                  :func:`decode_flops` that does not grow with the position; at batch 1 both
                  phases are memory-bound and this is bytes / (BW x mem_eff); at a large batch
                  the GEMMs turn compute-bound while attention stays memory-bound, and the
                  measured steps add the two: a max of the totals would hide one)
                  + n_kernels x kernel_overhead (one graph per step, the same kernel count as a
                    batch-1 step: an assumption for prefill)
                  + collectives (tp > 1): two ring all-reduces per layer of every token's
                    d_model activations, one all-gather of every sequence's logits
        energy  = tp x power x time; ``power="util"`` (the default): ``idle + dyn x u`` with u
                  the busier of bandwidth (bytes / (time x BW)) and compute
                  (flops / tp / (time x peak)) utilisation, or ``idle + dyn x u_bw +
                  dyn_compute x u_compute`` where a batched calibration fitted both terms; at
                  most board power; ``"board"``: the board's datasheet power throughout (an
                  upper bound)

    ``decode_attention=False``: the decode sequences' attention runs elsewhere (on PIM beside
    the GPU, :mod:`workloads.xpu`): their KV bytes and attention FLOPs (the ``pos + 1`` terms)
    are left out; the prefill chunks keep theirs.

    A single decode sequence is :func:`predict` exactly (``u`` is then the bandwidth
    utilisation: decode does about one FLOP per byte, far below peak / BW). Returns
    :func:`predict`'s keys plus ``flops``, ``compute_util``, ``tokens`` (tokens processed),
    ``sequences``, ``tokens_per_s``, ``j_per_token`` (per token processed) and ``power``.
    """
    g, cfg = _resolve(gpu, model_cfg, tp)
    decode_positions = list(decode_positions)
    prefill_chunks = [(int(s), int(n)) for s, n in prefill_chunks]
    if not decode_positions and not prefill_chunks:
        raise ValueError("a step needs at least one decode position or prefill chunk")
    for p in decode_positions:
        if not 0 <= p < cfg.n_ctx:
            raise ValueError(f"position {p} outside [0, {cfg.n_ctx})")
    for s, n in prefill_chunks:
        if n < 1 or s < 0 or s + n > cfg.n_ctx:
            raise ValueError(f"prefill chunk ({s}, {n}) outside the context of {cfg.n_ctx}")
    if power not in POWER_MODELS:
        raise ValueError(f"power must be 'board' or 'util', got {power!r}")
    dec_kv = decode_positions if decode_attention else []
    kv = sum(kv_bytes_read(cfg, p, static_cache=static_cache) for p in dec_kv) \
        + sum(kv_bytes_read(cfg, s + n - 1, static_cache=static_cache) for s, n in prefill_chunks)
    n_step_tok = len(decode_positions) + sum(n for _, n in prefill_chunks)
    w_bytes = weight_bytes_streamed(cfg, tokens=n_step_tok) / tp  # MoE: the step's experts
    nbytes = w_bytes + kv * _kv_share(cfg, tp)
    # decode_flops is affine in pos + 1: at pos -1 it is the matrix products alone
    flops = sum(decode_flops(cfg, p if decode_attention else -1) for p in decode_positions) \
        + sum(prefill_flops(cfg, s, n) for s, n in prefill_chunks)
    # two phases, each at its own roofline: the weight GEMMs (weight bytes, the matmul FLOPs of
    # every token) and attention (KV bytes, the FLOPs that grow with the position)
    n_tok = len(decode_positions) + sum(n for _, n in prefill_chunks)
    gemm_flops = n_tok * _matmul_flops_per_token(cfg)
    bw, pk = g.mem_bw * g.mem_eff, g.peak_flops * g.compute_eff
    gemm_s = max(w_bytes / bw, gemm_flops / tp / pk)
    attn_s = max((nbytes - w_bytes) / bw, (flops - gemm_flops) / tp / pk)
    mem_s = nbytes / bw
    comp_s = flops / tp / pk
    nk = g.n_kernels(cfg) if n_kernels is None else n_kernels
    over_s = nk * g.kernel_overhead_s
    n_seq = len(decode_positions) + len(prefill_chunks)
    comm_s = 2 * cfg.n_layer * allreduce_s(g, n_tok * cfg.d_model * FP16_BYTES, tp) \
        + allgather_s(g, n_seq * cfg.vocab * FP16_BYTES, tp)
    t = gemm_s + attn_s + over_s + comm_s
    util = nbytes / (t * g.mem_bw)
    cutil = flops / tp / (t * g.peak_flops)
    watts = _watts(g, power, util, cutil)
    return {"ms": t * 1e3, "joules": tp * watts * t, "watts": tp * watts, "watts_per_gpu": watts,
            "bytes": float(nbytes), "mem_ms": mem_s * 1e3, "compute_ms": comp_s * 1e3,
            "overhead_ms": over_s * 1e3, "comm_ms": comm_s * 1e3, "n_kernels": float(nk),
            "gemm_ms": gemm_s * 1e3, "attention_ms": attn_s * 1e3,
            "bw_util": util, "tp": tp, "flops": float(flops), "compute_util": cutil,
            "tokens": n_tok, "sequences": n_seq, "tokens_per_s": n_tok / t,
            "j_per_token": tp * watts * t / n_tok, "power": power}


def predict(gpu: GPUSpec | str, model_cfg: Any, pos: int, *, static_cache: bool = False,
            n_kernels: float | None = None, power: str = "board", tp: int = 1) -> dict[str, float]:
    """Time and energy of one decode step at position ``pos`` (batch 1).

    ``model_cfg``: a :class:`DecoderShape`, a preset name (GPT or zoo), or the fields of a
    GPT-layout measurement row (:func:`is_shape`). ``tp``: tensor parallelism over that many
    GPUs of the preset (NVLink): each streams 1/N of the weights and holds its KV heads, and the
    step adds two ring all-reduces of ``d_model`` fp16 per layer plus one all-gather of the
    ``vocab`` fp16 logits; energy counts N boards. A model that does not fit N GPUs' memory
    raises ValueError naming the fix.

    Returns ``ms``, ``joules``, ``watts`` (all boards) and the parts (``bytes`` and ``bw_util``
    per GPU, ``mem_ms``, ``compute_ms``, ``overhead_ms``, ``comm_ms``, ``n_kernels``, ``tp``,
    ``watts_per_gpu``), and :func:`predict_step`'s extra keys. ``power``: ``board`` (board
    power throughout; the default here, as the batch-1 tables have always used it) or ``util``
    (``idle_w + dyn_w x u``, u = achieved/peak bandwidth, at most board power; ``dyn_w``
    defaults to board - idle, :func:`workloads.gpu.calibration.calibrate` fits it). This is
    :func:`predict_step` with one decode sequence.
    """
    return predict_step(gpu, model_cfg, [pos], (), static_cache=static_cache,
                        n_kernels=n_kernels, power=power, tp=tp)


def predict_batch(gpu: GPUSpec | str, model_cfg: Any, batch: int,
                  kv_lens: int | Sequence[int], *, power: str = "util", tp: int = 1,
                  static_cache: bool = False, n_kernels: float | None = None) -> dict[str, float]:
    """One decode step of ``batch`` sequences, each generating one token after ``kv_len`` cached
    tokens (the token at position ``kv_len``; one int for all, or one per sequence): the weights
    are read once for the batch, each sequence's KV on its own (:func:`predict_step`).
    ``ms`` is the step, i.e. each sequence's time per token; ``tokens_per_s`` the batch's;
    ``joules`` the step's, ``j_per_token`` per output token. ``power``: ``util`` (default) or
    ``board``. ``batch=1`` is :func:`predict` at ``pos = kv_len`` with the same power model."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    lens = [kv_lens] * batch if isinstance(kv_lens, int) else [int(x) for x in kv_lens]
    if len(lens) != batch:
        raise ValueError(f"{len(lens)} KV lengths for a batch of {batch}")
    return predict_step(gpu, model_cfg, lens, (), static_cache=static_cache,
                        n_kernels=n_kernels, power=power, tp=tp)


def predict_prefill(gpu: GPUSpec | str, model_cfg: Any, prompt_len: int, batch: int = 1, *,
                    power: str = "util", tp: int = 1,
                    n_kernels: float | None = None) -> dict[str, float]:
    """One prefill step of ``batch`` prompts of ``prompt_len`` tokens each (positions
    ``0 .. prompt_len - 1``, one forward pass; :func:`predict_step` with ``batch`` chunks):
    FLOPs ``2 x params x P`` plus the causal attention's ``P^2`` terms per prompt
    (:func:`prefill_flops`), bytes the weights once plus each prompt's KV.
    ``tokens_per_s`` counts the prompt tokens; ``j_per_token`` per prompt token."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if not isinstance(prompt_len, int) or isinstance(prompt_len, bool) or prompt_len < 1:
        raise ValueError(f"prompt_len must be a positive int, got {prompt_len!r}")
    return predict_step(gpu, model_cfg, (), [(0, prompt_len)] * batch, power=power, tp=tp,
                        n_kernels=n_kernels)
