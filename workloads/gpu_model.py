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
  the measured CUDA-graph path (:mod:`workloads.gpu_baseline`) does: it attends over its whole
  preallocated buffer with the tail masked;
* ``n_kernels``: kernels per decode step, ``kernels_per_layer * n_layer + kernels_fixed`` (the
  counts that torch.profiler saw for the graph path, 15-18 per layer; the measured count is used
  where it is known).

GPU presets (memory bandwidth, dense FP16 rate, board power) are from
the project hardware reference (public vendor specifications), section 5 ("GPU baselines"): T4 320 GB/s, 65 TFLOPS,
70 W; A100 SXM 80GB 2.04 TB/s, 312 TFLOPS, 400 W; H100 SXM 3.35 TB/s, 989 TFLOPS, 700 W; H200
4.8 TB/s, 989 TFLOPS, 700 W. Idle power (15 % of board power) is an assumption; the default
bandwidth efficiency (0.70), per-kernel overhead (3.4 us) and kernel counts are the rounded H200
calibration; :func:`calibrate` fits them to a measured JSON from :mod:`workloads.gpu_baseline`
(``workloads/data/gpu_measured_<gpu>.json``). Carrying a calibration to another GPU
(:func:`transfer`) assumes the same software path and per-kernel cost: a lead, not a measurement.

Shapes: any object with GPTConfig's fields (GPT: tied head, learned positions, biases), or a
:class:`DecoderShape` for the other families (``n_kv_head`` for GQA/MQA, SwiGLU ``gated_mlp``,
tied or untied head, biases, norms: an exact parameter count); :func:`workloads.models.zoo.gpu_shape`
gives one for every zoo preset from its config arguments, and ``predict`` takes a preset name.
A gated-MLP shape uses the Llama software path (``gated_*`` fields of :class:`GPUSpec`): its own
efficiency, per-kernel overhead and kernel counts, calibrated on
``workloads/data/gpu_measured_h200_llama.json`` (:func:`calibrate` of that file,
:func:`leave_one_out` for the held-out check, :func:`llama_table`). Other families (OPT, Pythia,
GPT-J) use the GPT path: an assumption, no measurement of their software path.

Tensor parallelism (``predict(..., tp=N)``): each GPU streams 1/N of the weights and holds
``ceil(n_kv_head / N)`` KV heads; the step adds two ring all-reduces of ``d_model`` fp16 per layer
(``2 (N-1)/N x bytes / NVLink bw + latency``) and one all-gather of the logits; energy is N
boards. NVLink bandwidth and memory capacity are datasheet values (see ``GPU_PRESETS``); the
per-call all-reduce latency and the per-GPU memory reserve are assumptions. A model that does not
fit N GPUs raises ValueError naming the GPU count that fits (:func:`min_gpus`).

Needs only numpy and the standard library.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

FP16_BYTES = 2
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HARDWARE_REF = "public vendor specifications (project hardware reference, GPU baselines)"


@dataclasses.dataclass(frozen=True)
class GPUSpec:
    """A GPU for the analytic model. Rates in SI units (bytes/s, FLOP/s, W, s)."""

    name: str
    mem_bw: float                  # peak memory bandwidth, bytes/s
    peak_flops: float              # dense FP16 FLOP/s
    board_w: float                 # board power, W
    idle_w: float                  # idle board power, W (assumed 15 % of board power)
    dyn_w: float | None = None     # W per unit bandwidth utilisation (None: board_w - idle_w)
    # defaults: the H200 calibration of workloads/data/gpu_measured_h200.json, rounded
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
    # rounded H200 calibration on workloads/data/gpu_measured_h200_llama.json (calibrate() of
    # that file). The kernel line is least squares through the profiler's 647/648/847/1687
    # kernels at 32/32/40/80 layers (20 per layer + 7 at 32 layers, 21 + 7 at 40 and 80), hence
    # the negative constant.
    gated_mem_eff: float = 0.84
    gated_kernel_overhead_s: float = 3.1e-6
    gated_kernels_per_layer: float = 21.6
    gated_kernels_fixed: float = -34.0

    def n_kernels(self, cfg: Any) -> float:
        if getattr(cfg, "gated_mlp", False):
            return self.gated_kernels_per_layer * cfg.n_layer + self.gated_kernels_fixed
        return self.kernels_per_layer * cfg.n_layer + self.kernels_fixed

    def for_shape(self, cfg: Any) -> "GPUSpec":
        """The spec whose ``mem_eff`` / ``kernel_overhead_s`` apply to ``cfg``: the gated-path
        (Llama decoder) calibration for a gated-MLP shape, else this spec unchanged."""
        if not getattr(cfg, "gated_mlp", False):
            return self
        return dataclasses.replace(self, mem_eff=self.gated_mem_eff,
                                   kernel_overhead_s=self.gated_kernel_overhead_s)


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


def _is_shape(cfg: Any) -> bool:
    """A DecoderShape (by its methods: ``python -m workloads.gpu_model`` runs this file as
    ``__main__``, whose class is not the one :mod:`workloads.models.zoo` imports)."""
    return callable(getattr(cfg, "kv_bytes_per_position", None))


def shape_for(name_or_cfg: Any) -> Any:
    """A model for :func:`predict`: a zoo or GPT preset name (the zoo's :func:`workloads.models.zoo.
    gpu_shape`), else the object itself (a DecoderShape or anything with GPTConfig's fields)."""
    if not isinstance(name_or_cfg, str):
        return name_or_cfg
    from workloads.models import zoo
    from workloads.models.presets import PRESETS

    if name_or_cfg in PRESETS:
        return PRESETS[name_or_cfg]
    return zoo.gpu_shape(name_or_cfg)


# --------------------------------------------------------------------------------------------
# Bytes, FLOPs, prediction
# --------------------------------------------------------------------------------------------


def weight_bytes_streamed(cfg: Any, bytes_per_param: int = FP16_BYTES) -> int:
    """Weight bytes read per token: every parameter once, but only one row of ``wpe``."""
    if _is_shape(cfg):
        return cfg.weight_bytes_streamed(bytes_per_param)
    return (cfg.n_params - cfg.n_ctx * cfg.d_model + cfg.d_model) * bytes_per_param


def kv_bytes_read(cfg: Any, pos: int, *, static_cache: bool = False, bytes_per_el: int = FP16_BYTES) -> int:
    """K and V bytes read by the attention of the token at ``pos`` (``pos + 1`` positions,
    or all ``n_ctx`` slots for a static cache)."""
    n = cfg.n_ctx if static_cache else pos + 1
    if _is_shape(cfg):
        return cfg.kv_bytes_per_position(bytes_per_el) * n
    return 2 * cfg.n_layer * cfg.n_head * cfg.d_head * n * bytes_per_el


def decode_flops(cfg: Any, pos: int) -> int:
    """Multiply-adds x 2 of one decode step (matrix-vector products and attention)."""
    if _is_shape(cfg):
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


def min_gpus(g: GPUSpec | str, model_cfg: Any, choices: Sequence[int] = (1, 2, 4, 8)) -> int | None:
    """The fewest GPUs in ``choices`` whose memory holds the model (None: not even the most)."""
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
        raise ValueError(
            f"{getattr(cfg, 'name', 'the model')} does not fit {tp} {g.name} "
            f"({g.mem_bytes / 1e9:.0f} GB each): it needs {need / 1e9:.1f} GB per GPU (fp16 "
            f"weights / {tp} + KV cache at n_ctx {cfg.n_ctx} + {g.reserve_bytes / 1e9:.0f} GB "
            f"reserve); {fix}")


def predict(gpu: GPUSpec | str, model_cfg: Any, pos: int, *, static_cache: bool = False,
            n_kernels: float | None = None, power: str = "board", tp: int = 1) -> dict[str, float]:
    """Time and energy of one decode step at position ``pos``.

    ``model_cfg``: anything with GPTConfig's fields, a :class:`DecoderShape`, or a preset name
    (GPT or zoo). ``tp``: tensor parallelism over that many GPUs of the preset (NVLink): each
    streams 1/N of the weights and holds its KV heads, and the step adds two ring all-reduces of
    ``d_model`` fp16 per layer plus one all-gather of the ``vocab`` fp16 logits; energy counts N
    boards. A model that does not fit N GPUs' memory raises ValueError naming the fix.

    Returns ``ms``, ``joules``, ``watts`` (all boards) and the parts (``bytes`` and ``bw_util``
    per GPU, ``mem_ms``, ``compute_ms``, ``overhead_ms``, ``comm_ms``, ``n_kernels``, ``tp``,
    ``watts_per_gpu``). ``power``: ``board`` (board power throughout)
    or ``util`` (``idle_w + dyn_w x u``, u = achieved/peak bandwidth, at most board power;
    ``dyn_w`` defaults to board - idle, :func:`calibrate` fits it).
    """
    g = gpu_preset(gpu) if isinstance(gpu, str) else gpu
    model_cfg = shape_for(model_cfg)
    g = g.for_shape(model_cfg)
    if not 0 <= pos < model_cfg.n_ctx:
        raise ValueError(f"position {pos} outside [0, {model_cfg.n_ctx})")
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ValueError(f"tp must be a positive int, got {tp!r}")
    if tp > 1 and g.nvlink_bw <= 0:
        raise ValueError(f"tp={tp}: {g.name} has no NVLink in this model; use A100, H100 or H200")
    check_fits(g, model_cfg, tp)
    nbytes = weight_bytes_streamed(model_cfg) / tp \
        + kv_bytes_read(model_cfg, pos, static_cache=static_cache) * _kv_share(model_cfg, tp)
    mem_s = nbytes / (g.mem_bw * g.mem_eff)
    comp_s = decode_flops(model_cfg, pos) / tp / (g.peak_flops * g.compute_eff)
    nk = g.n_kernels(model_cfg) if n_kernels is None else n_kernels
    over_s = nk * g.kernel_overhead_s
    comm_s = 2 * model_cfg.n_layer * allreduce_s(g, model_cfg.d_model * FP16_BYTES, tp) \
        + allgather_s(g, model_cfg.vocab * FP16_BYTES, tp)
    t = max(mem_s, comp_s) + over_s + comm_s
    util = nbytes / (t * g.mem_bw)
    if power == "board":
        watts = g.board_w
    elif power == "util":
        dyn = g.board_w - g.idle_w if g.dyn_w is None else g.dyn_w
        watts = min(g.board_w, g.idle_w + dyn * min(1.0, util))
    else:
        raise ValueError(f"power must be 'board' or 'util', got {power!r}")
    return {"ms": t * 1e3, "joules": tp * watts * t, "watts": tp * watts, "watts_per_gpu": watts,
            "bytes": float(nbytes), "mem_ms": mem_s * 1e3, "compute_ms": comp_s * 1e3,
            "overhead_ms": over_s * 1e3, "comm_ms": comm_s * 1e3, "n_kernels": float(nk),
            "bw_util": util, "tp": tp}


# --------------------------------------------------------------------------------------------
# Measurements and calibration
# --------------------------------------------------------------------------------------------


LLAMA_SUFFIX = "_llama.json"


def default_measured_path() -> str:
    """The shipped GPT measurement (``workloads/data/gpu_measured_*.json``, the first by name,
    leaving out the Llama files ``*_llama.json``: the calibration needs GPT presets)."""
    paths = [p for p in sorted(glob.glob(os.path.join(DATA_DIR, "gpu_measured_*.json")))
             if not p.endswith(LLAMA_SUFFIX)]
    if not paths:
        raise FileNotFoundError(f"no gpu_measured_*.json under {DATA_DIR}")
    return paths[0]


def llama_measured_path() -> str:
    """The shipped Llama measurement (``workloads/data/gpu_measured_*_llama.json``, written by
    :mod:`workloads.gpu_baseline_llama`; same schema, so ``load_measured`` and ``pimsim compare
    --gpu FILE`` read it)."""
    paths = sorted(glob.glob(os.path.join(DATA_DIR, "gpu_measured_*" + LLAMA_SUFFIX)))
    if not paths:
        raise FileNotFoundError(f"no gpu_measured_*{LLAMA_SUFFIX} under {DATA_DIR}")
    return paths[0]


def load_measured(path: str | None = None) -> dict[str, Any]:
    """Read a JSON written by :mod:`workloads.gpu_baseline` (default: the shipped one)."""
    with open(path or default_measured_path()) as f:
        doc = json.load(f)
    for key in ("method", "info", "results"):
        if key not in doc:
            raise ValueError(f"{path}: not a gpu_baseline measurement (no {key!r})")
    return doc


@dataclasses.dataclass(frozen=True)
class _Cfg:
    """The GPTConfig fields the model needs, rebuilt from a measured result row."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    d_head: int
    vocab: int
    n_ctx: int
    n_params: int

    @property
    def d_ff(self) -> int:
        return 4 * self.d_model


def cfg_from_result(row: dict[str, Any]) -> Any:
    """A config for a result row: the workloads preset if importable, else the row's own fields.
    A Llama-family row (``workloads.gpu_baseline_llama``: it records ``n_kv_head``) becomes a
    gated-MLP, untied-head, bias-free :class:`DecoderShape`, checked against its ``params``."""
    if "n_kv_head" in row:
        s = DecoderShape(name=row["model"], n_layer=row["n_layer"], d_model=row["d_model"],
                         n_head=row["n_head"], n_kv_head=row["n_kv_head"], d_head=row["d_head"],
                         d_ff=row["d_ff"], vocab=row["vocab"], n_ctx=row["n_ctx"],
                         gated_mlp=True, tied_head=False)
        if "params" in row and s.n_params != row["params"]:
            raise ValueError(f"{row['model']}: a Llama shape of these fields has {s.n_params} "
                             f"parameters, the row says {row['params']}")
        return s
    try:
        from workloads.models.gpt import get_config

        return get_config(row["model"])
    except Exception:
        return _Cfg(row["model"], row["n_layer"], row["d_model"], row["n_head"], row["d_head"],
                    row["vocab"], row["n_ctx"], row["params"])


def _points(doc: dict[str, Any]) -> list[tuple[str, Any, int, float, float | None]]:
    """(model, cfg, pos, measured graph ms, measured kernels per step) for every timed point."""
    pts = []
    for row in doc["results"]:
        cfg = cfg_from_result(row)
        k = row.get("graph", {}).get("kernels_per_step")
        for p, ms in row["graph"]["ms_at"].items():
            pts.append((row["model"], cfg, int(p), float(ms), float(k) if k else None))
    return pts


def calibrate(measured: dict[str, Any] | str | None = None, gpu: GPUSpec | str | None = None, *,
              fit_efficiency: bool = True) -> dict[str, Any]:
    """Fit per-kernel overhead (and bandwidth efficiency) to the measured CUDA-graph times.

    Model for each measured point: ``t = bytes / BW * (1 / mem_eff) + n_kernels * overhead``
    with the static-cache KV bytes (the measured path reads its whole buffer) and the measured
    kernel count per step where recorded (else the preset's formula). Least squares on relative
    error; ``mem_eff`` is kept in (0, 1] and the overhead >= 0. Where power was measured, the
    mean board power of the graph loops is fitted as ``idle_w + dyn_w * bw_util`` (used by
    ``predict(..., power="util")``; ``power="board"`` keeps the datasheet board power). Kernel
    counts per step are fitted as ``kernels_per_layer * n_layer + kernels_fixed``.

    A measurement of gated-MLP shapes (the Llama file of :mod:`workloads.gpu_baseline_llama`) is
    another software path: its fit sets the ``gated_*`` fields (efficiency, per-kernel overhead,
    kernel counts) and leaves the GPT ones; ``path`` says which (``gpt`` or ``gated``).

    Returns ``gpu`` (the calibrated :class:`GPUSpec`), ``mem_eff``, ``kernel_overhead_us``,
    ``rows`` (per preset: measured and model ms, diff %, and power/energy where measured),
    ``max_abs_diff_pct`` and ``mean_abs_diff_pct``.
    """
    doc = load_measured(measured) if measured is None or isinstance(measured, str) else measured
    g0 = gpu_preset(gpu or doc["info"].get("gpu") or "") if not isinstance(gpu, GPUSpec) else gpu
    pts = _points(doc)
    if not pts:
        raise ValueError("no measured points to calibrate on")
    gated = {bool(getattr(cfg, "gated_mlp", False)) for _, cfg, _, _, _ in pts}
    if len(gated) > 1:
        raise ValueError("a calibration is per software path: do not mix gated-MLP (Llama) and "
                         "GPT measurements in one fit")
    pre = "gated_" if gated.pop() else ""  # which GPUSpec fields this fit sets
    # fit kernel counts per layer/fixed from the measured counts, for the formula
    kc = {(m, cfg.n_layer): k for m, cfg, _, _, k in pts if k}
    if len(kc) >= 2 and len({nl for _, nl in kc}) >= 2:
        A = np.array([[nl, 1.0] for (_, nl) in kc])
        kpl, kfix = np.linalg.lstsq(A, np.array(list(kc.values())), rcond=None)[0]
        g0 = dataclasses.replace(g0, **{pre + "kernels_per_layer": float(kpl),
                                        pre + "kernels_fixed": float(kfix)})
    x_mem = np.array([(weight_bytes_streamed(cfg) + kv_bytes_read(cfg, p, static_cache=True)) / g0.mem_bw
                      for _, cfg, p, _, _ in pts])
    x_k = np.array([k if k else g0.n_kernels(cfg) for _, cfg, _, _, k in pts])
    y = np.array([ms / 1e3 for _, _, _, ms, _ in pts])
    w = 1.0 / y
    if fit_efficiency:
        A = np.stack([x_mem, x_k], 1) * w[:, None]
        inv_eff, ovh = np.linalg.lstsq(A, y * w, rcond=None)[0]
        if inv_eff < 1.0 or ovh < 0:  # outside the physical range: pin the offending term
            inv_eff = max(inv_eff, 1.0)
            ovh = max(0.0, float(np.sum(w * w * x_k * (y - inv_eff * x_mem)) / np.sum(w * w * x_k * x_k)))
    else:
        inv_eff = 1.0 / getattr(g0, pre + "mem_eff")
        ovh = max(0.0, float(np.sum(w * w * x_k * (y - inv_eff * x_mem)) / np.sum(w * w * x_k * x_k)))
    g = dataclasses.replace(g0, **{pre + "mem_eff": float(1.0 / inv_eff),
                                   pre + "kernel_overhead_s": float(ovh)})

    # power: P = idle + slope * util, from the graph power loops
    pw = []
    for row in doc["results"]:
        loop = row.get("graph", {}).get("power_loop") or {}
        if loop.get("mean_power_w") and loop.get("ms_per_token"):
            cfg = cfg_from_result(row)
            nbytes = weight_bytes_streamed(cfg) + kv_bytes_read(cfg, loop.get("position", 0), static_cache=True)
            pw.append((nbytes / (loop["ms_per_token"] / 1e3 * g.mem_bw), loop["mean_power_w"]))
    power_fit = None
    if len(pw) >= 2:
        u, pwr = np.array(pw).T
        slope, p0 = np.polyfit(u, pwr, 1)
        power_fit = {"idle_w": float(p0), "w_per_unit_bw_util": float(slope),
                     "w_at_full_bw": float(p0 + slope)}
        g = dataclasses.replace(g, idle_w=float(p0), dyn_w=float(max(slope, 0.0)))

    rows = []
    for row in doc["results"]:
        cfg = cfg_from_result(row)
        k = row.get("graph", {}).get("kernels_per_step")
        diffs, meas, mod = [], {}, {}
        for p, ms in row["graph"]["ms_at"].items():
            pred = predict(g, cfg, int(p), static_cache=True, n_kernels=k)["ms"]
            meas[p], mod[p] = float(ms), pred
            diffs.append(100.0 * (pred - ms) / ms)
        out = {"model": row["model"], "measured_ms": meas, "model_ms": mod,
               "diff_pct": float(np.mean(diffs)), "max_abs_diff_pct": float(np.max(np.abs(diffs)))}
        loop = row.get("graph", {}).get("power_loop") or {}
        if loop.get("mean_power_w"):
            pu = predict(g, cfg, loop.get("position", 0), static_cache=True, n_kernels=k, power="util")
            out.update(measured_w=loop["mean_power_w"], model_w=pu["watts"],
                       measured_j=loop.get("joules_per_token"), model_j=pu["joules"],
                       energy_diff_pct=100.0 * (pu["joules"] - loop["joules_per_token"]) / loop["joules_per_token"])
        rows.append(out)
    allabs = [r["max_abs_diff_pct"] for r in rows]
    return {"gpu": g, "gpu_measured": doc["info"].get("gpu"), "path": "gated" if pre else "gpt",
            "mem_eff": getattr(g, pre + "mem_eff"),
            "kernel_overhead_us": getattr(g, pre + "kernel_overhead_s") * 1e6,
            "kernels_per_layer": getattr(g, pre + "kernels_per_layer"),
            "kernels_fixed": getattr(g, pre + "kernels_fixed"),
            "power_fit": power_fit, "rows": rows,
            "max_abs_diff_pct": float(max(allabs)), "mean_abs_diff_pct": float(np.mean(np.abs([r["diff_pct"] for r in rows])))}


def transfer(calibration: dict[str, Any], name: str) -> GPUSpec:
    """Another preset with the calibrated efficiency, per-kernel overhead and kernel counts
    (an assumption: same software path; the datasheet bandwidth and power stay the preset's)."""
    g, c = gpu_preset(name), calibration["gpu"]
    return dataclasses.replace(g, mem_eff=c.mem_eff, kernel_overhead_s=c.kernel_overhead_s,
                               kernels_per_layer=c.kernels_per_layer, kernels_fixed=c.kernels_fixed,
                               **{f: getattr(c, f) for f in _GATED_FIELDS})


_GATED_FIELDS = ("gated_mem_eff", "gated_kernel_overhead_s", "gated_kernels_per_layer",
                 "gated_kernels_fixed")


def calibrated_preset(name: str) -> GPUSpec:
    """A preset with both shipped calibrations: the GPT path (and the power fit) from the GPT
    measurement, the gated (Llama) path from the Llama measurement, each where its file exists
    (else the rounded defaults). Carried to ``name`` as :func:`transfer` does."""
    g = gpu_preset(name)
    try:
        g = transfer(calibrate(load_measured()), g.name)
    except FileNotFoundError:
        pass
    try:
        lc = calibrate(load_measured(llama_measured_path()))["gpu"]
        g = dataclasses.replace(g, **{f: getattr(lc, f) for f in _GATED_FIELDS})
    except FileNotFoundError:
        pass
    return g


def compare_table(measured: dict[str, Any] | str | None = None, calibration: dict[str, Any] | None = None,
                  gpus: Sequence[str] = ("T4", "A100", "H100", "H200")) -> str:
    """Markdown table: per preset measured graph ms (middle position) and J/token, the calibrated
    model and its difference, eager ms, then model ms/token at the middle position (ideal KV
    read, ``pos + 1`` positions) on each GPU in ``gpus`` with the calibrated overheads."""
    doc = load_measured(measured) if measured is None or isinstance(measured, str) else measured
    cal = calibration or calibrate(doc)
    specs = [transfer(cal, n) for n in gpus]
    head = ["model", "measured ms", "model ms", "diff %", "eager ms", "W", "J/token", "model J"]
    head += [f"{n} ms" for n in gpus]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_model = {r["model"]: r for r in cal["rows"]}
    for row in doc["results"]:
        cfg = cfg_from_result(row)
        pmid = str(row["positions"][len(row["positions"]) // 2])
        r = by_model[row["model"]]
        m, p = r["measured_ms"][pmid], r["model_ms"][pmid]
        eager = row.get("eager", {}).get("ms_at", {}).get(pmid)
        cells = [row["model"], f"{m:.3f}", f"{p:.3f}", f"{100 * (p - m) / m:+.1f}",
                 f"{eager:.2f}" if eager else "-",
                 f"{r['measured_w']:.0f}" if r.get("measured_w") else "-",
                 f"{r['measured_j']:.3f}" if r.get("measured_j") else "-",
                 f"{r['model_j']:.3f}" if r.get("model_j") else "-"]
        cells += [f"{predict(s, cfg, int(pmid))['ms']:.3f}" for s in specs]
        lines.append("| " + " | ".join(cells) + " |")
    g = cal["gpu"]
    lines.append("")
    lines.append(f"calibrated on {cal['gpu_measured']}: mem_eff {g.mem_eff:.3f}, "
                 f"kernel overhead {g.kernel_overhead_s * 1e6:.2f} us, kernels/step "
                 f"{g.kernels_per_layer:.2f} x n_layer + {g.kernels_fixed:.1f}; max |diff| "
                 f"{cal['max_abs_diff_pct']:.1f} %")
    return "\n".join(lines)


def leave_one_out(measured: dict[str, Any] | str | None = None) -> list[dict[str, Any]]:
    """Held-out check of a calibration: for each model of the file, fit on the others and predict
    it (the fitted kernel-count formula, not its measured count). One row per measured point:
    ``model``, ``pos``, ``measured_ms``, ``model_ms``, ``diff_pct``."""
    doc = load_measured(measured) if measured is None or isinstance(measured, str) else measured
    out = []
    for row in doc["results"]:
        rest = dict(doc, results=[r for r in doc["results"] if r["model"] != row["model"]])
        g = calibrate(rest)["gpu"]
        cfg = cfg_from_result(row)
        for p, ms in row["graph"]["ms_at"].items():
            pred = predict(g, cfg, int(p), static_cache=True)["ms"]
            out.append({"model": row["model"], "pos": int(p), "measured_ms": float(ms),
                        "model_ms": pred, "diff_pct": 100.0 * (pred - ms) / ms})
    return out


def llama_table(measured: dict[str, Any] | str | None = None) -> str:
    """Markdown table of the Llama measurement against the model: the gated-path fit on all of
    it, the held-out prediction (:func:`leave_one_out`), the GPT-path calibration applied to the
    same shapes (what the model said before it knew the Llama path), and J/token with the GPT
    file's power fit (``power="util"``: held out, the Llama loops are not fitted)."""
    doc = load_measured(measured or llama_measured_path()) if measured is None or isinstance(measured, str) else measured
    cal = calibrate(doc)
    loo = {(r["model"], r["pos"]): r for r in leave_one_out(doc)}
    try:
        gpt = transfer(calibrate(load_measured()), cal["gpu"].name)
    except FileNotFoundError:
        gpt = None
    pw = dataclasses.replace(gpt or cal["gpu"], **{f: getattr(cal["gpu"], f) for f in _GATED_FIELDS})
    head = ["model", "pos", "measured ms", "fit ms", "fit diff %", "held-out ms", "held-out diff %",
            "GPT-path ms", "measured J", "model J", "J diff %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in doc["results"]:
        cfg = cfg_from_result(row)
        k = row["graph"].get("kernels_per_step")
        loop = row["graph"].get("power_loop") or {}
        for p, ms in row["graph"]["ms_at"].items():
            fit = predict(cal["gpu"], cfg, int(p), static_cache=True, n_kernels=k)["ms"]
            h = loo[(row["model"], int(p))]
            cells = [row["model"], p, f"{ms:.3f}", f"{fit:.3f}", f"{100 * (fit - ms) / ms:+.1f}",
                     f"{h['model_ms']:.3f}", f"{h['diff_pct']:+.1f}"]
            if gpt is not None:
                gp = predict(dataclasses.replace(gpt, gated_mem_eff=gpt.mem_eff,
                                                 gated_kernel_overhead_s=gpt.kernel_overhead_s),
                             cfg, int(p), static_cache=True, n_kernels=k)["ms"]
                cells.append(f"{gp:.3f} ({100 * (gp - ms) / ms:+.0f} %)")
            else:
                cells.append("-")
            if loop.get("position") == int(p) and loop.get("joules_per_token"):
                mj = predict(pw, cfg, int(p), static_cache=True, n_kernels=k, power="util")["joules"]
                mjm = loop["joules_per_token"]
                cells += [f"{mjm:.2f}", f"{mj:.2f}", f"{100 * (mj - mjm) / mjm:+.1f}"]
            else:
                cells += ["-", "-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"gated-path fit on {cal['gpu_measured']}: mem_eff {cal['mem_eff']:.3f}, kernel "
                 f"overhead {cal['kernel_overhead_us']:.2f} us, kernels/step "
                 f"{cal['kernels_per_layer']:.2f} x n_layer {cal['kernels_fixed']:+.1f}; fit max "
                 f"|diff| {cal['max_abs_diff_pct']:.1f} %, held-out max |diff| "
                 f"{max(abs(r['diff_pct']) for r in loo.values()):.1f} %")
    return "\n".join(lines)


def zoo_table(gpus: Sequence[str] = ("A100", "H100", "H200"), tps: Sequence[int] = (1, 2, 4, 8),
              models: Sequence[str] | None = None) -> str:
    """Markdown table: modelled ms/token and J/token (board power, all boards) at the middle
    position (ideal KV read) of every zoo preset on ``tps`` GPUs of each of ``gpus``, with both
    shipped calibrations (:func:`calibrated_preset`); ``-`` where it does not fit."""
    from workloads.models import zoo

    names = list(models or zoo.NAMES)
    specs = [calibrated_preset(n) for n in gpus]
    head = ["model", "params B", "GB fp16"] + [f"{g.name} x{n}" for g in specs for n in tps]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        cfg = shape_for(name)
        cells = [name, f"{cfg.n_params / 1e9:.2f}", f"{cfg.n_params * FP16_BYTES / 1e9:.0f}"]
        for g in specs:
            for n in tps:
                try:
                    r = predict(g, cfg, cfg.n_ctx // 2, tp=n)
                    cells.append(f"{r['ms']:.2f} ms {r['joules']:.1f} J")
                except ValueError:
                    cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("ms/token and J/token (board power x boards) at position n_ctx/2, batch 1, fp16; "
                 "tensor parallel over NVLink (2 ring all-reduces of d_model per layer + a logits "
                 "all-gather, latency "
                 f"{specs[0].allreduce_latency_s * 1e6:.0f} us per call [assumed]); '-': does not "
                 "fit that many GPUs' memory")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m workloads.gpu_model")
    ap.add_argument("measured", nargs="?", default=None, help="gpu_baseline JSON (default: shipped)")
    ap.add_argument("--tp", default="1,2,4,8", help="GPU counts for the zoo table (default 1,2,4,8)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    print(compare_table(args.measured))
    try:
        print()
        print("Llama-family decode (gated path), measured vs model:")
        print(llama_table())
    except FileNotFoundError:
        pass
    print()
    print("Zoo presets, modelled:")
    print(zoo_table(tps=[int(x) for x in args.tp.split(",")]))
    return 0


if __name__ == "__main__":
    from workloads.gpu_model import main as _main  # the importable module's classes, not __main__'s

    raise SystemExit(_main())
