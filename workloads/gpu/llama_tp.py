"""Measured multi-GPU tensor-parallel baseline for Llama-family batch-1 decode.

What it measures: one decode step (one token, batch 1, fp16) of a Llama-shaped decoder split over
N GPUs of one host (Megatron-style tensor parallelism), each rank's step captured as ONE CUDA
graph with its NCCL collectives inside, at several context positions; board power of all N GPUs
while doing so -- ms/token, tokens/s, W (sum over the N boards) and J/token. It checks the
analytic model's tensor-parallel prediction (:func:`workloads.gpu.model.predict` with ``tp=N``:
1/N of the weights per GPU, two ring all-reduces of ``d_model`` fp16 per layer, an [assumed]
6 us per all-reduce call, one all-gather of the logits).

The split (rank ``r`` of ``N``; :func:`shard_plan`):

* attention: query heads split contiguously, ``n_head / N`` per rank; KV heads likewise
  (``n_kv_head / N`` per rank) -- or, when ``n_kv_head < N``, each KV head repeated on the
  ``N / n_kv_head`` ranks whose query heads share it (one KV head per rank). Rank ``r`` holds the
  rows of the fused ``wqkv`` for its q heads and its k/v heads, its KV-cache heads, and the
  columns of ``wo`` for its q heads;
* MLP: rows ``[r d_ff/N, (r+1) d_ff/N)`` of gate and of up (fused ``wgu``), the same columns of
  ``down``;
* after the o-projection and after down: ``all_reduce`` (sum) of the partial ``[1, d_model]``,
  then the residual add; RMSNorm weights and the token embedding are replicated;
* LM head: rows ``[r vocab/N, (r+1) vocab/N)``; the logit shares are all-gathered (every rank
  gets the full ``[1, vocab]``).

Weights: the same random weights as :class:`workloads.gpu.decoders.LlamaStaticDecoder` with
the same seed -- each full tensor is generated on the rank's device exactly as the single-GPU
decoder generates it (its fused buffer, a generator per Hugging Face parameter name seeded from
``(seed, name)``), one layer at a time, sliced, and freed -- so the TP decoder computes the same
function as the single-GPU one (to rounding: on the CPU in fp32 by the tests, 1e-5; on the GPU
in fp16 for small configs and, where the full model fits beside the shard on GPU 0, for the
measured model itself; recorded in the JSON).

Every rank must issue the same collectives in the same order, so every loop count (pre-warm,
timed batches, power loop) is agreed across ranks, never taken from a rank's own clock. A rank
that fails where the others do not (an exception other than out-of-memory, a capture that fails
on one rank only) leaves the others waiting in a collective: the process group's timeout
(``PG_TIMEOUT_S``) then ends the run with an error instead of a hang. NCCL settings in the
environment (on the lent H200 machines NVLink SHARP / multicast is off, ``NCCL_NVLS_ENABLE=0``,
so all-reduces are ring/tree over NVLink, as the analytic model assumes) are recorded in
``info.collective_env``.

Expected run time on 2 H200s for the three default models: about 2 minutes (process start and
NCCL set-up, two small validation configs, per model build + capture + 3 positions x 5 rounds of
0.1 s + 0.5 s pre-warm + a kernel count + 1 s idle + 1 s ramp + 3 s power loop; 7b and 13b also
build the full single-GPU model on GPU 0 for the check).

Run (the device machine; one process per GPU, spawned here)::

    PYTHONPATH=. python -m workloads.gpu measure llama-tp --models llama2-70b,llama2-13b,llama2-7b \\
        --tp 2 -o workloads/gpu/data/gpu_measured_h200x2_llama_tp.json
    python -m workloads.gpu measure llama-tp --dry-run --tp 2 -o /tmp/tp.json  # CPU, gloo, tiny

It prints the measured ms/token and J/token next to the analytic model's prediction for the same
shape and ``tp`` (the shipped calibration, :func:`workloads.gpu.calibration.calibrated_preset`)
and the relative error; the prediction is written into the JSON too (``prediction`` per result).

Needs torch (NCCL on CUDA, gloo on the CPU), numpy and the standard library.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from workloads.gpu import calibration as gcal
from workloads.gpu import model as gm
from workloads.gpu.baseline import (
    PowerSampler,
    count_cuda_kernels,
    environment_info,
    positions_for,
)
from workloads.gpu.decoders import (
    INIT_STD,
    CudaGraphStep,
    LlamaStaticDecoder,
    attention_ctx,
    init_decode_state,
)
from workloads.gpu.llama_shapes import VALIDATION_CONFIGS, get_shape
from workloads.models.gpt import _param_seed
from workloads.models.shape import DecoderShape

PG_TIMEOUT_S = 300          # a rank stuck in a collective this long fails the run (not hangs it)

METHOD = (
    "Llama-family batch-1 decode, tensor parallel over N GPUs of one host (Megatron-style): "
    "query heads split contiguously over the ranks, KV heads likewise (repeated on the N/n_kv "
    "ranks that share one when n_kv_head < N), rows of wqkv / columns of wo, rows of gate and "
    "up / columns of down, rows of the LM head (vocab split); after the o-projection and after "
    "down a torch.distributed all_reduce (sum, NCCL) of the partial [1, d_model] then the "
    "residual add; logits all-gathered (all_gather_into_tensor). Norms and the token embedding "
    "replicated. Random fp16 weights identical to the single-GPU LlamaStaticDecoder of "
    "workloads.gpu.llama with the same seed (each full tensor generated on the rank's "
    "GPU as that decoder does, one layer at a time, then sliced). Static KV cache of the rank's "
    "KV heads, attention over all n_ctx slots with the tail masked, as the single-GPU decoder. "
    "Each rank's whole decode step (NCCL collectives included) captured as ONE CUDA graph "
    "(capture_error_mode thread_local) and replayed by all ranks in lockstep; eager fallback "
    "recorded per model if capture fails. Timing: all ranks replay the same number of steps "
    "back to back after a barrier (an all-reduce + synchronize); CUDA events on rank 0 (each "
    "rank's own time also recorded, max over ranks reported), median of `repeats` rounds, "
    "positions interleaved per round, KV cache filled with random values first. Power: board "
    "power of each GPU sampled every 50 ms (NVML via pynvml, else nvidia-smi) by its own rank "
    "during a sustained loop of a fixed, agreed number of steps at the middle position after a "
    "1 s ramp; W summed over the N boards; J/token = summed W x ms/token of rank 0 in that loop "
    "(also above the summed idle power, and from NVML's energy counters). Validation: logits of "
    "the TP decoder (graph replay) against the single-GPU LlamaStaticDecoder (eager, GPU 0) "
    "built with the same seed, over a few steps from position 0: small configs "
    "always, the measured model where its full copy fits beside the shard on GPU 0."
)


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """What rank ``rank`` of ``world_size`` holds (half-open ranges, in heads / rows)."""

    rank: int
    world_size: int
    q_heads: tuple[int, int]      # query heads [h0, h1)
    kv_heads: tuple[int, int]     # KV heads [k0, k1)
    ff: tuple[int, int]           # rows of gate / up, columns of down
    vocab: tuple[int, int]        # rows of the LM head

    @property
    def n_q(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def n_kv(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @property
    def n_ff(self) -> int:
        return self.ff[1] - self.ff[0]

    @property
    def n_vocab(self) -> int:
        return self.vocab[1] - self.vocab[0]


def valid_tp(shape: DecoderShape, choices: Sequence[int] = (1, 2, 4, 8, 16)) -> list[int]:
    """The world sizes in ``choices`` that :func:`shard_plan` can split ``shape`` over."""
    out = []
    for n in choices:
        try:
            check_tp(shape, n)
            out.append(n)
        except ValueError:
            pass
    return out


def check_tp(shape: DecoderShape, world_size: int) -> None:
    """ValueError (one line, naming the fix) unless ``shape`` splits evenly over ``world_size``."""
    n = world_size
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"tensor-parallel size must be a positive int, got {n!r}")
    bad = []
    if shape.n_head % n:
        bad.append(f"n_head {shape.n_head}")
    kv = shape.n_kv_head
    if (kv >= n and kv % n) or (kv < n and n % kv):
        bad.append(f"n_kv_head {kv} (nor is tp a multiple of it)")
    if shape.d_ff % n:
        bad.append(f"d_ff {shape.d_ff}")
    if shape.vocab % n:
        bad.append(f"vocab {shape.vocab}")
    if bad:
        ok = [m for m in (1, 2, 4, 8, 16) if m != n and _splits(shape, m)]
        raise ValueError(f"{shape.name}: tp={n} does not divide {', '.join(bad)}; use tp in "
                         f"{ok or '[1]'}")


def _splits(shape: DecoderShape, n: int) -> bool:
    kv = shape.n_kv_head
    return not (shape.n_head % n or shape.d_ff % n or shape.vocab % n
                or (kv >= n and kv % n) or (kv < n and n % kv))


def shard_plan(shape: DecoderShape, world_size: int, rank: int) -> ShardPlan:
    """Rank ``rank``'s share: contiguous query heads, their KV heads (the one they share, when
    there are fewer KV heads than ranks), its d_ff slice and vocab slice."""
    check_tp(shape, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    n, H, KV = world_size, shape.n_head, shape.n_kv_head
    G = H // KV                                   # query heads per KV head
    h0, h1 = rank * H // n, (rank + 1) * H // n
    if KV >= n:
        k0, k1 = rank * KV // n, (rank + 1) * KV // n
    else:                                         # repeat: the KV head of this rank's q heads
        k0 = h0 // G
        k1 = k0 + 1
    assert h0 // G == k0 and (h1 - 1) // G == k1 - 1, "query heads must map onto the rank's KV heads"
    f, V = shape.d_ff, shape.vocab
    return ShardPlan(rank=rank, world_size=n, q_heads=(h0, h1), kv_heads=(k0, k1),
                     ff=(rank * f // n, (rank + 1) * f // n), vocab=(rank * V // n, (rank + 1) * V // n))


# --------------------------------------------------------------------------------------------
# Communication: torch.distributed, or threads of one process (tests)
# --------------------------------------------------------------------------------------------


class DistComm:
    """The collectives of the TP step over the default ``torch.distributed`` group."""

    def __init__(self) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend())

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    def all_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        """``[1, m]`` shares -> ``[1, N m]`` in rank order."""
        if self.backend == "nccl":
            out = torch.empty(self.world_size * t.numel(), dtype=t.dtype, device=t.device)
            dist.all_gather_into_tensor(out, t.reshape(-1))
            return out.view(1, -1)
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=-1)


class ThreadGroup:
    """In-process stand-in for a process group: ``world_size`` threads, one rank each, meeting
    at a barrier (CPU tests of the split without spawning processes). Sums in rank order."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._barrier = threading.Barrier(world_size)
        self._slots: list[Any] = [None] * world_size

    def comm(self, rank: int) -> "_ThreadComm":
        return _ThreadComm(self, rank)


class _ThreadComm:
    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.world_size = group, rank, group.world_size
        self.backend = "threads"

    def _exchange(self, t: torch.Tensor) -> list[torch.Tensor]:
        g = self.group
        g._slots[self.rank] = t.clone()
        g._barrier.wait()
        parts = list(g._slots)
        g._barrier.wait()
        return parts

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        parts = self._exchange(t)
        total = parts[0].clone()
        for p in parts[1:]:
            total += p
        t.copy_(total)
        return t

    def all_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._exchange(t), dim=-1)


# --------------------------------------------------------------------------------------------
# The tensor-parallel decoder
# --------------------------------------------------------------------------------------------


def _fill(t: torch.Tensor, name: str, seed: int, init_std: float) -> None:
    """Exactly :class:`LlamaStaticDecoder`'s initialisation of the tensor named ``name``."""
    gen = torch.Generator(device=t.device).manual_seed(_param_seed(seed, name))
    t.normal_(0.0, init_std, generator=gen)
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        t.add_(1.0)


class LlamaTPDecoder(CudaGraphStep):
    """Rank ``comm.rank``'s shard of a batch-1 Llama decode with a static KV cache.

    Same weights (same ``seed``), same step as :class:`LlamaStaticDecoder`, split as
    :func:`shard_plan` says; ``step()`` returns the full logits ``[1, vocab]`` on every rank.
    ``comm``: :class:`DistComm` (default; needs an initialised process group) or a
    :class:`ThreadGroup` rank. On CUDA, :meth:`capture` records the step with its collectives as
    one CUDA graph; all ranks must then replay in lockstep.
    """

    def __init__(self, shape: DecoderShape, *, comm: Any = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float16, seed: int = 0, init_std: float = INIT_STD) -> None:
        self.comm = comm if comm is not None else DistComm()
        s = self.shape = shape
        self.plan = p = shard_plan(shape, self.comm.world_size, self.comm.rank)
        self.n_ctx = s.n_ctx
        self.device, self.dtype = torch.device(device), dtype
        dev, D, H, KV, d, f = self.device, s.d_head, s.n_head, s.n_kv_head, s.d_model, s.d_ff
        q, kv = H * D, KV * D
        (h0, h1), (k0, k1), (f0, f1), (v0, v1) = p.q_heads, p.kv_heads, p.ff, p.vocab

        def full(name: str, *size: int) -> torch.Tensor:
            t = torch.empty(size, dtype=dtype, device=dev)
            _fill(t, name, seed, init_std)
            return t

        with torch.no_grad():
            self.embed = full("model.embed_tokens.weight", s.vocab, d)
            self.norm = full("model.norm.weight", d)
            head = full("lm_head.weight", s.vocab, d)
            self.lm_head = head[v0:v1].clone()
            del head
            self.ln1, self.ln2, self.wqkv, self.wo, self.wgu, self.wdown = [], [], [], [], [], []
            for i in range(s.n_layer):
                pre = f"model.layers.{i}."
                self.ln1.append(full(pre + "input_layernorm.weight", d))
                self.ln2.append(full(pre + "post_attention_layernorm.weight", d))
                # the single-GPU decoder's fused buffer, filled through the same views
                w = torch.empty(q + 2 * kv, d, dtype=dtype, device=dev)
                _fill(w[:q], pre + "self_attn.q_proj.weight", seed, init_std)
                _fill(w[q:q + kv], pre + "self_attn.k_proj.weight", seed, init_std)
                _fill(w[q + kv:], pre + "self_attn.v_proj.weight", seed, init_std)
                self.wqkv.append(torch.cat([w[h0 * D:h1 * D], w[q + k0 * D:q + k1 * D],
                                            w[q + kv + k0 * D:q + kv + k1 * D]], 0))
                del w
                wo = full(pre + "self_attn.o_proj.weight", d, q)
                self.wo.append(wo[:, h0 * D:h1 * D].contiguous())
                del wo
                gu = torch.empty(2 * f, d, dtype=dtype, device=dev)
                _fill(gu[:f], pre + "mlp.gate_proj.weight", seed, init_std)
                _fill(gu[f:], pre + "mlp.up_proj.weight", seed, init_std)
                self.wgu.append(torch.cat([gu[f0:f1], gu[f + f0:f + f1]], 0))
                del gu
                wd = full(pre + "mlp.down_proj.weight", d, f)
                self.wdown.append(wd[:, f0:f1].contiguous())
                del wd
        init_decode_state(self, s, p.n_kv, dtype, dev)  # as LlamaStaticDecoder

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights this rank holds (its shards, the replicated norms and embedding)."""
        ts = [self.embed, self.norm, self.lm_head, *self.ln1, *self.ln2, *self.wqkv, *self.wo,
              *self.wgu, *self.wdown]
        return sum(t.numel() * t.element_size() for t in ts)

    @property
    def weight_bytes_streamed(self) -> int:
        """Weight bytes one step reads on this rank (one embedding row, not the table)."""
        return self.weight_bytes - (self.embed.numel() - self.shape.d_model) * self.embed.element_size()

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.shape.d_model,), w, self.shape.norm_eps)

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """One decode step on ``tok_t``/``pos_t``; full logits ``[1, vocab]`` on every rank."""
        s, p, comm = self.shape, self.plan, self.comm
        H, KV, f = p.n_q, p.n_kv, p.n_ff
        h = F.embedding(self.tok_t, self.embed)                                       # [1, d]
        cos = self.cos.index_select(0, self.pos_t)
        sin = self.sin_signed.index_select(0, self.pos_t)
        mask = torch.where(self._slots <= self.pos_t, self._zero, self._neg_inf).view(1, 1, s.n_ctx)
        for li in range(s.n_layer):
            x = self._rms(h, self.ln1[li])
            ctx = attention_ctx(self, li, x, cos, sin, mask, H, KV)
            h.add_(comm.all_reduce_(F.linear(ctx, self.wo[li])))                      # sum of partials
            x = self._rms(h, self.ln2[li])
            gu = F.linear(x, self.wgu[li])                                            # [1, 2 d_ff/N]
            h.add_(comm.all_reduce_(F.linear(F.silu(gu[:, :f]) * gu[:, f:], self.wdown[li])))
        return comm.all_gather_last(F.linear(self._rms(h, self.norm), self.lm_head))  # [1, vocab]

    def capture(self, warmup: int = 3, capture_error_mode: str = "thread_local") -> None:
        """Record :meth:`step` (collectives included) as one CUDA graph: the single-GPU capture
        (warm-up on a side stream first, so the NCCL communicators are up before capture) in
        ``thread_local`` mode, so the process group's watchdog thread may query its events
        while this thread captures."""
        super().capture(warmup, capture_error_mode)


# --------------------------------------------------------------------------------------------
# Helpers that every rank calls together
# --------------------------------------------------------------------------------------------


def _dev() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def barrier() -> None:
    """All ranks here: an all-reduce of one element, then a host synchronize."""
    dev = _dev()
    t = torch.ones(1, device=dev)
    dist.all_reduce(t)
    _sync(dev)


def gather_floats(vals: Sequence[float | None]) -> list[list[float | None]]:
    """Every rank's ``vals`` (same length everywhere), on every rank; None travels as NaN."""
    n, r = dist.get_world_size(), dist.get_rank()
    t = torch.zeros(n, len(vals), dtype=torch.float64, device=_dev())
    t[r] = torch.tensor([math.nan if v is None else float(v) for v in vals], dtype=torch.float64)
    dist.all_reduce(t)
    return [[None if math.isnan(x) else x for x in row] for row in t.cpu().tolist()]


def agree_all(flag: bool) -> bool:
    """True on every rank iff ``flag`` is true on every rank."""
    return all(row[0] == 1.0 for row in gather_floats([1.0 if flag else 0.0]))


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _replay_ms(dec: LlamaTPDecoder, device: torch.device, n: int) -> float:
    """``n`` back-to-back steps after a barrier; this rank's ms per step (CUDA events)."""
    barrier()
    if device.type == "cuda":
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(n):
            dec.run()
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1) / n
    t0 = time.perf_counter()
    for _ in range(n):
        dec.run()
    return (time.perf_counter() - t0) * 1e3 / n


def time_positions(dec: LlamaTPDecoder, device: torch.device, positions: Sequence[int], *,
                   repeats: int = 5, target_s: float = 0.1, token: int = 1,
                   prewarm_s: float = 0.0) -> dict[str, dict[str, Any]]:
    """Per position: median over ``repeats`` rounds (positions interleaved) of the ms per step of
    ``n_inner`` back-to-back replays; ``n_inner`` agreed from the slowest rank's warm-up. Rank
    0's CUDA events give ``ms``; ``ms_max_rank`` is the median of the slowest rank's. First
    about ``prewarm_s`` of steps (so the clocks settle). Every count is agreed by all ranks:
    each replay holds collectives, so a rank running one step more than another would hang."""
    dec.set_inputs(token, positions[0])
    per = _replay_ms(dec, device, 3)
    per = max(x[0] for x in gather_floats([per]))
    if prewarm_s > 0:
        _replay_ms(dec, device, int(min(20000, prewarm_s * 1e3 / max(per, 1e-3))))
    dec.set_inputs(token, positions[-1])
    per = _replay_ms(dec, device, 3)
    per = max(x[0] for x in gather_floats([per]))
    n_inner = int(min(500, max(3, target_s * 1e3 / max(per, 1e-3))))
    samples: dict[str, list[list[float]]] = {str(p): [] for p in positions}
    for _ in range(repeats):
        for p in positions:
            dec.set_inputs(token, p)
            _replay_ms(dec, device, 2)
            ms = _replay_ms(dec, device, n_inner)
            samples[str(p)].append([x[0] for x in gather_floats([ms])])
    out = {}
    for k, rows in samples.items():
        r0 = [row[0] for row in rows]
        out[k] = {"ms": statistics.median(r0), "spread_ms": [min(r0), max(r0)], "samples_ms": r0,
                  "ms_max_rank": statistics.median(max(row) for row in rows),
                  "ms_per_rank": [statistics.median(row[i] for row in rows) for i in range(len(rows[0]))],
                  "n_inner": n_inner}
    return out


def _nvml_index(cuda_index: int) -> int:
    """The NVML index of CUDA device ``cuda_index`` (they differ under CUDA_VISIBLE_DEVICES):
    matched by UUID, else the CUDA_VISIBLE_DEVICES entry, else the same number."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        want = str(torch.cuda.get_device_properties(cuda_index).uuid).replace("GPU-", "")
        for i in range(pynvml.nvmlDeviceGetCount()):
            u = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            u = (u.decode() if isinstance(u, bytes) else str(u)).replace("GPU-", "")
            if u == want:
                return i
    except Exception:
        pass
    vis = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    parts = [x.strip() for x in vis.split(",") if x.strip()]
    if cuda_index < len(parts) and parts[cuda_index].isdigit():
        return int(parts[cuda_index])
    return cuda_index


def idle_power(sampler: PowerSampler | None, seconds: float) -> list[float | None]:
    """Every rank's board power with nothing queued, sampled at the same time."""
    barrier()
    w = None
    if sampler is not None and sampler.available and seconds > 0:
        with sampler:
            time.sleep(seconds)
        w = sampler.mean_w()
    return [row[0] for row in gather_floats([w])]


def power_loop(dec: LlamaTPDecoder, device: torch.device, sampler: PowerSampler | None, *,
               ms_per_step: float, seconds: float, ramp_s: float = 1.0) -> dict[str, Any]:
    """All ranks run the same number of steps for about ``ramp_s + seconds`` (chunks of about
    50 ms, synchronised per chunk); power sampled per rank over the last ``seconds``.
    Returns rank 0's ms/token, and per rank mean W, samples and energy-counter J."""
    chunk = max(1, int(50.0 / max(ms_per_step, 1e-3)))
    n_ramp = max(1, int(ramp_s * 1e3 / max(ms_per_step, 1e-3) / chunk))
    n_loop = max(1, int(seconds * 1e3 / max(ms_per_step, 1e-3) / chunk))
    sampling = sampler is not None and sampler.available
    barrier()
    ctx = sampler if sampling else _Null()
    with ctx:
        for _ in range(n_ramp):
            for _ in range(chunk):
                dec.run()
            _sync(device)
        barrier()
        e0 = sampler.energy_counter_j() if sampling else None
        t0 = time.perf_counter()
        for _ in range(n_loop):
            for _ in range(chunk):
                dec.run()
            _sync(device)
        t1 = time.perf_counter()
        e1 = sampler.energy_counter_j() if sampling else None
    n = n_loop * chunk
    mean_w = sampler.mean_w(after=t0) if sampling else None
    ns = sum(1 for t, _ in sampler.samples if t >= t0) if sampling else None
    ej = (e1 - e0) if e0 is not None and e1 is not None else None
    rows = gather_floats([(t1 - t0) * 1e3 / n, mean_w, ns, ej])
    return {"tokens": n, "seconds": t1 - t0, "ms_per_token": rows[0][0],
            "ms_per_token_per_rank": [r[0] for r in rows],
            "power_w_per_gpu": [r[1] for r in rows], "n_power_samples_per_gpu": [r[2] for r in rows],
            "energy_counter_j_per_gpu": [r[3] for r in rows]}


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _sum_or_none(xs: Sequence[float | None]) -> float | None:
    return None if not xs or any(x is None for x in xs) else float(sum(xs))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Validation and measurement (every rank calls these together)
# --------------------------------------------------------------------------------------------


def _tokens(vocab: int, steps: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (steps,), generator=gen).tolist()


@torch.no_grad()
def compare_with_single(dec: LlamaTPDecoder, tokens: Sequence[int], *, seed: int,
                        init_std: float = INIT_STD, reference: bool = True) -> dict[str, Any] | None:
    """Decode ``tokens`` from position 0 with the TP decoder (every rank) and, on rank 0 where
    ``reference`` (agreed by all ranks), with a single-device :class:`LlamaStaticDecoder` of
    the same shape and seed on rank 0's device (eager); max |logit difference|,
    greedy tokens. Returns the result on rank 0, None elsewhere."""
    dec.reset("zeros")
    got = [dec.decode(int(t), pos).float().clone() for pos, t in enumerate(tokens)]
    if dist.get_rank() != 0 or not reference:
        return None
    single = LlamaStaticDecoder(dec.shape, device=dec.device, dtype=dec.dtype, seed=seed,
                                init_std=init_std)
    # eager (the same kernels its graph would replay): no second capture in a process whose
    # process-group watchdog is live while the other ranks wait
    single.reset("zeros")
    ref = [single.decode(int(t), pos).float().clone() for pos, t in enumerate(tokens)]
    del single
    _free(dec.device)
    res = {"reference": "single-device LlamaStaticDecoder, same shape and seed, eager, on rank 0's device",
           "steps": len(tokens), "dtype": str(dec.dtype).replace("torch.", ""),
           "tp_graph": dec.graph is not None,
           "max_abs_diff": max(float((g - r).abs().max()) for g, r in zip(got, ref)),
           "max_abs_logit": max(float(r.abs().max()) for r in ref),
           "greedy_tokens_equal": [int(g.argmax()) for g in got] == [int(r.argmax()) for r in ref]}
    res["rel_diff"] = res["max_abs_diff"] / max(res["max_abs_logit"], 1e-30)
    return res


def _build(shape: DecoderShape, device: torch.device, dtype: torch.dtype, seed: int
           ) -> tuple[LlamaTPDecoder | None, str | None, str | None]:
    """Build and capture on every rank. (decoder or None, build error, capture error); the
    build counts only if it worked on every rank; a failed capture leaves the eager step."""
    dec, err = None, None
    try:
        dec = LlamaTPDecoder(shape, device=device, dtype=dtype, seed=seed)
    except torch.cuda.OutOfMemoryError as e:
        err = f"out of GPU memory: {str(e).splitlines()[0]}"
    if not agree_all(dec is not None):
        del dec
        _free(device)
        return None, err or "another rank failed to build", None
    assert dec is not None
    cap_err = None
    if device.type == "cuda":
        barrier()
        try:
            dec.capture()
        except Exception as e:  # recorded; the eager step is measured instead
            cap_err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            dec.graph = None
            _sync(device)
        if not agree_all(dec.graph is not None):
            dec.graph = None
            cap_err = cap_err or "capture failed on another rank"
    return dec, None, cap_err


def validate_small(name: str, device: torch.device, dtype: torch.dtype, *, steps: int = 8,
                   seed: int = 0) -> dict[str, Any] | None:
    """TP decoder of a small config against the single-device decoder (rank 0's result)."""
    shape = get_shape(name)
    dec, err, cap_err = _build(shape, device, dtype, seed)
    if dec is None:
        return {"config": name, "error": err} if dist.get_rank() == 0 else None
    res = compare_with_single(dec, _tokens(shape.vocab, steps, seed + 1), seed=seed)
    del dec
    _free(device)
    barrier()
    if res is not None:
        res = {"config": name, "n_head": shape.n_head, "n_kv_head": shape.n_kv_head,
               "capture_error": cap_err, **res}
    return res


def measure(name: str, world_size: int, positions: Sequence[int] | None = None, *,
            dtype: torch.dtype | None = None, repeats: int = 5, power_s: float = 3.0,
            idle_s: float = 1.0, batch_s: float = 0.1, validate_steps: int = 4, seed: int = 0,
            log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Measure model ``name`` split over the ``world_size`` ranks of the initialised default
    process group (every rank calls this together). Rank 0 gets the result row (timings at
    ``positions``, default :func:`positions_for`, power summed over the GPUs, J/token,
    validation); other ranks get None. A model that does not fit or fails to build returns a
    row with ``not_measured`` set."""
    if dist.get_world_size() != world_size:
        raise ValueError(f"process group has {dist.get_world_size()} ranks, asked for {world_size}")
    rank = dist.get_rank()
    device = _dev()
    cuda = device.type == "cuda"
    dtype = dtype or (torch.float16 if cuda else torch.float32)
    shape = get_shape(name)
    check_tp(shape, world_size)
    positions = list(positions or positions_for(shape))
    plan = shard_plan(shape, world_size, rank)
    esz = torch.tensor([], dtype=dtype).element_size()
    # bytes this rank needs: 1/N of the sharded weights, the replicated embedding and norms, its
    # KV heads, and the largest full tensor generated while building (gate+up of one layer)
    emb, norms = shape.vocab * shape.d_model, (2 * shape.n_layer + 1) * shape.d_model
    need = esz * ((shape.n_params - emb - norms) // world_size + emb + norms
                  + 2 * shape.n_layer * plan.n_kv * shape.n_ctx * shape.d_head
                  + 2 * shape.d_ff * shape.d_model)
    free_b = torch.cuda.mem_get_info(device)[0] if cuda else None
    fits = agree_all(free_b is None or need <= free_b)
    if not fits:
        if rank == 0:
            log(f"[{name}] skipped: needs {need / 2**30:.1f} GiB per GPU at tp={world_size}")
            return {"model": name, "not_measured": "weights and KV cache exceed a GPU's free memory",
                    "bytes_needed_per_gpu": int(need), "bytes_free_rank0": free_b}
        return None

    t_build = time.perf_counter()
    dec, err, cap_err = _build(shape, device, dtype, seed)
    t_build = time.perf_counter() - t_build
    if dec is None:
        if rank == 0:
            log(f"[{name}] not built: {err}")
            return {"model": name, "not_measured": err, "bytes_needed_per_gpu": int(need)}
        return None
    if rank == 0 and cap_err:
        log(f"[{name}] CUDA graph capture failed ({cap_err}); measuring the eager step")
    per_rank_bytes = [int(r[0]) for r in gather_floats([dec.weight_bytes])]
    res: dict[str, Any] = {
        "model": name, "hf_config": shape.hf_config, "params": shape.n_params, "tp": world_size,
        "weight_bytes": shape.n_params * esz, "weight_bytes_per_gpu": per_rank_bytes,
        "weight_bytes_streamed_per_gpu": dec.weight_bytes_streamed,
        "dtype": str(dtype).replace("torch.", ""), "n_layer": shape.n_layer,
        "d_model": shape.d_model, "n_head": shape.n_head, "n_kv_head": shape.n_kv_head,
        "d_head": shape.d_head, "d_ff": shape.d_ff, "n_ctx": shape.n_ctx, "vocab": shape.vocab,
        "rope_theta": shape.rope_theta, "rms_eps": shape.norm_eps,
        "q_heads_per_gpu": plan.n_q, "kv_heads_per_gpu": plan.n_kv,
        "kv_head_repeated": shape.n_kv_head < world_size,
        "static_kv_bytes_per_gpu": dec.kv_bytes, "build_s": round(t_build, 3),
        "graph_captured": dec.graph is not None, "capture_error": cap_err,
    }

    # validation against the single-device decoder where its full copy fits beside the shard
    full_b = shape.n_params * esz + 2 * shape.n_layer * shape.n_kv_head * shape.n_ctx * shape.d_head * esz
    room = torch.cuda.mem_get_info(device)[0] if cuda else None
    ref_ok = agree_all(rank != 0 or room is None or full_b * 1.05 + 2**30 < room)
    v = compare_with_single(dec, _tokens(shape.vocab, validate_steps, seed + 1), seed=seed,
                            reference=ref_ok)
    barrier()
    if rank == 0:
        res["validation"] = v if v is not None else {
            "skipped": f"the full model ({full_b / 2**30:.1f} GiB) does not fit beside the shard "
                       f"on GPU 0 ({(room or 0) / 2**30:.1f} GiB free); see validation_small"}
        log(f"[{name}] tp={world_size} built in {t_build:.2f}s, graph={dec.graph is not None}; "
            + (f"vs single decoder: max|diff| {v['max_abs_diff']:.3g} (max|logit| "
               f"{v['max_abs_logit']:.3g}), greedy equal {v['greedy_tokens_equal']}" if v else
               res["validation"]["skipped"]))

    dec.reset("random", seed=seed + 2)
    r_g = time_positions(dec, device, positions, repeats=repeats, target_s=batch_s,
                         prewarm_s=0.5 if cuda else 0.0)
    ms_at = {k: r["ms"] for k, r in r_g.items()}
    kernels = count_cuda_kernels(dec.step) if cuda else None
    kernels = gather_floats([kernels])
    res["positions"] = positions
    res["graph"] = {"captured": dec.graph is not None, "ms_at": ms_at,
                    "spread_ms_at": {k: r["spread_ms"] for k, r in r_g.items()},
                    "ms_max_rank_at": {k: r["ms_max_rank"] for k, r in r_g.items()},
                    "ms_per_rank_at": {k: r["ms_per_rank"] for k, r in r_g.items()},
                    "n_inner": next(iter(r_g.values()))["n_inner"],
                    "tokens_per_s_at": {k: 1e3 / m for k, m in ms_at.items()},
                    "kernels_per_step": int(kernels[0][0]) if kernels[0][0] else None,
                    "kernels_per_step_per_rank": [int(k[0]) if k[0] else None for k in kernels]}
    if rank == 0:
        log(f"[{name}] tp={world_size} ms/token " + ", ".join(f"@{p}: {m:.3f}" for p, m in ms_at.items())
            + (f"; {res['graph']['kernels_per_step']} kernels/step (rank 0)" if kernels[0][0] else ""))

    p_mid = positions[len(positions) // 2]
    sampler = _SAMPLER
    if sampler is not None and agree_all(sampler.available):
        _sync(device)
        time.sleep(0.3)
        idle = idle_power(sampler, idle_s)
        dec.set_inputs(1, p_mid)
        loop = power_loop(dec, device, sampler, ms_per_step=ms_at[str(p_mid)], seconds=power_s)
        loop["position"] = p_mid
        w = _sum_or_none(loop["power_w_per_gpu"])
        idle_sum = _sum_or_none(idle)
        loop["mean_power_w"] = w
        loop["idle_power_w"] = idle_sum
        if w is not None:
            loop["joules_per_token"] = w * loop["ms_per_token"] / 1e3
            if idle_sum is not None:
                loop["joules_per_token_above_idle"] = (w - idle_sum) * loop["ms_per_token"] / 1e3
        ej = _sum_or_none(loop["energy_counter_j_per_gpu"])
        if ej is not None:
            loop["joules_per_token_energy_counter"] = ej / loop["tokens"]
            loop["mean_power_w_energy_counter"] = ej / loop["seconds"]
        res["graph"]["power_loop"] = loop
        res["idle_power_w"], res["idle_power_w_per_gpu"] = idle_sum, idle
        res["mean_power_w"], res["mean_power_w_per_gpu"] = w, loop["power_w_per_gpu"]
        res["joules_per_token"] = loop.get("joules_per_token")
        res["joules_per_token_above_idle"] = loop.get("joules_per_token_above_idle")
        if rank == 0:
            log(f"[{name}] idle {idle_sum or float('nan'):.0f} W ({world_size} GPUs); loop "
                f"{loop['ms_per_token']:.3f} ms/token at {w or float('nan'):.0f} W -> "
                f"{loop.get('joules_per_token') or float('nan'):.4f} J/token")
    res["graph_ms_per_token"] = ms_at[str(p_mid)]
    res["tokens_per_s"] = 1e3 / ms_at[str(p_mid)]
    del dec
    _free(device)
    barrier()
    return res if rank == 0 else None


_SAMPLER: PowerSampler | None = None   # this rank's sampler (set by the worker)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_rank(rank: int, world_size: int, port: int, backend: str) -> torch.device:
    """Join the default process group (``MASTER_ADDR`` 127.0.0.1); on NCCL, rank ``r`` uses
    CUDA device ``r``."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    kw: dict[str, Any] = {}
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
        kw["device_id"] = device
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=_dt.timedelta(seconds=PG_TIMEOUT_S), **kw)
    return device


def nccl_version() -> str | None:
    try:
        v = torch.cuda.nccl.version()
        return ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
    except Exception:
        return None


def _topology() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True,
                              timeout=20).stdout.strip() or None
    except Exception:
        return None


def run_tp(models: Sequence[str], world_size: int, *, repeats: int = 5, power_s: float = 3.0,
           idle_s: float = 2.0, seed: int = 0, batch_s: float = 0.1,
           validation_configs: Sequence[str] = VALIDATION_CONFIGS, dtype: torch.dtype | None = None,
           checkpoint: Callable[[dict[str, Any]], None] | None = None,
           log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Every rank: validate the small configs, measure every model. Rank 0 returns the JSON
    document (``checkpoint(doc)`` after each model), the others None."""
    global _SAMPLER
    rank = dist.get_rank()
    device = _dev()
    cuda = device.type == "cuda"
    dtype = dtype or (torch.float16 if cuda else torch.float32)
    _SAMPLER = PowerSampler(_nvml_index(device.index)) if cuda else None
    info = environment_info(device)
    info.update(nccl=nccl_version() if cuda else None, backend=str(dist.get_backend()),
                world_size=world_size, power_source=_SAMPLER.source if _SAMPLER else None,
                collective_env={k: v for k, v in sorted(os.environ.items())
                                if k.startswith(("NCCL_", "TORCH_NCCL_", "TORCH_SYMM_MEM"))})
    if cuda:
        names = [torch.cuda.get_device_name(i) for i in range(world_size)]
        info["gpus"] = names
        info["nvml_index_per_rank"] = [int(r[0]) for r in gather_floats([_SAMPLER.index])]
        if rank == 0:
            info["topology"] = _topology()
        torch.zeros(1, device=device)
        time.sleep(0.5)
        idle = idle_power(_SAMPLER, idle_s)
        info["idle_power_w_start_per_gpu"] = idle
        info["idle_power_w_start"] = _sum_or_none(idle)
        if rank == 0:
            log(f"{world_size} x {info['gpu']}  driver {info['driver']}  torch {info['torch']}  "
                f"NCCL {info['nccl']}  idle {info['idle_power_w_start']} W (sum)  power via "
                f"{info['power_source']}")
    t0 = time.perf_counter()
    small = [validate_small(n, device, dtype, seed=seed) for n in validation_configs]
    if rank == 0:
        for v in small:
            assert v is not None
            log(f"[validation {v['config']} tp={world_size}] " + (
                f"max|diff| {v['max_abs_diff']:.3g} (max|logit| {v['max_abs_logit']:.3g}), greedy "
                f"equal {v['greedy_tokens_equal']}, graph {v['tp_graph']}" if "max_abs_diff" in v
                else v.get("error", "?")))
    results: list[dict[str, Any]] = []
    not_measured: list[dict[str, Any]] = []
    method = METHOD if cuda else METHOD + (" DRY RUN on the CPU: gloo, time.perf_counter, "
                                           "no graph capture, no power.")
    doc = {"method": method, "tp": world_size, "info": info,
           "settings": {"repeats": repeats, "power_loop_s": power_s, "idle_s": idle_s,
                        "batch_s": batch_s, "seed": seed, "dtype": str(dtype).replace("torch.", ""),
                        "dry_run": not cuda, "pg_timeout_s": PG_TIMEOUT_S},
           "validation_small": small, "results": results, "not_measured": not_measured}
    for name in models:
        r = measure(name, world_size, dtype=dtype, repeats=repeats, power_s=power_s,
                    idle_s=min(idle_s, 1.0), batch_s=batch_s, seed=seed, log=log)
        if rank == 0:
            assert r is not None
            (not_measured if "not_measured" in r else results).append(r)
            log(f"  ({time.perf_counter() - t0:.1f}s elapsed)")
            if checkpoint is not None:
                checkpoint(doc)
    return doc if rank == 0 else None


def save_json_atomic(doc: dict[str, Any], path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _worker(rank: int, world_size: int, port: int, backend: str, kw: dict[str, Any], out: str) -> None:
    init_rank(rank, world_size, port, backend)
    try:
        name = kw.pop("dtype", None)
        dtype = getattr(torch, name) if name else None
        doc = run_tp(dtype=dtype, checkpoint=(lambda d: save_json_atomic(d, out)) if rank == 0 else None,
                     log=(lambda m: print(m, flush=True)) if rank == 0 else (lambda m: None), **kw)
        if rank == 0 and doc is not None:
            save_json_atomic(doc, out)
    finally:
        dist.destroy_process_group()


def spawn(world_size: int, out: str, *, cpu: bool = False, **kw: Any) -> None:
    """Run :func:`run_tp` in ``world_size`` spawned processes (NCCL, one GPU each; gloo with
    ``cpu``); rank 0 writes the document to ``out``."""
    import torch.multiprocessing as mp

    port = _free_port()
    kw = dict(kw, world_size=world_size)
    mp.spawn(_worker, args=(world_size, port, "gloo" if cpu else "nccl", kw, out),
             nprocs=world_size, join=True)


def thread_logits(shape: DecoderShape, world_size: int, tokens: Sequence[int], *, seed: int = 0,
                  init_std: float = INIT_STD, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Logits ``[1, vocab]`` per step of ``tokens`` (from position 0) from the TP decoder split
    over ``world_size`` threads of this process (:class:`ThreadGroup`, CPU); rank 0's copy,
    after checking that every rank got the same."""
    group = ThreadGroup(world_size)
    out: list[Any] = [None] * world_size
    errors: list[BaseException] = []

    def rank_main(r: int) -> None:
        try:
            dec = LlamaTPDecoder(shape, comm=group.comm(r), device="cpu", dtype=dtype, seed=seed,
                                 init_std=init_std)
            out[r] = [dec.decode(int(t), pos).clone() for pos, t in enumerate(tokens)]
        except BaseException as e:  # noqa: BLE001 -- re-raised below
            errors.append(e)
            group._barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for r in range(1, world_size):
        assert all(torch.equal(a, b) for a, b in zip(out[0], out[r])), f"rank {r} logits differ"
    return out[0]


def _logits_worker(rank: int, world_size: int, port: int, name: str, tokens: list[int], seed: int,
                   init_std: float, path: str) -> None:
    init_rank(rank, world_size, port, "gloo")
    try:
        dec = LlamaTPDecoder(get_shape(name), device="cpu", dtype=torch.float32, seed=seed,
                             init_std=init_std)
        logits = [dec.decode(int(t), pos).clone() for pos, t in enumerate(tokens)]
        if rank == 0:
            torch.save(logits, path)
    finally:
        dist.destroy_process_group()


def gloo_logits(name: str, world_size: int, tokens: Sequence[int], path: str, *, seed: int = 0,
                init_std: float = INIT_STD) -> list[torch.Tensor]:
    """As :func:`thread_logits`, but ``world_size`` spawned processes over gloo (CPU, fp32)."""
    import torch.multiprocessing as mp

    mp.spawn(_logits_worker, args=(world_size, _free_port(), name, list(tokens), seed, init_std, path),
             nprocs=world_size, join=True)
    return torch.load(path)


# --------------------------------------------------------------------------------------------
# The analytic model's prediction, and the table
# --------------------------------------------------------------------------------------------


def _shipped_single(model: str) -> dict[str, Any] | None:
    try:
        with open(gcal.llama_measured_path()) as f:
            d = json.load(f)
        return next((r for r in d["results"] if r["model"] == model), None)
    except (FileNotFoundError, ValueError, KeyError):
        return None


def add_predictions(doc: dict[str, Any]) -> None:
    """Add ``prediction`` to every result: :func:`workloads.gpu.model.predict` with ``tp``,
    ``static_cache=True`` (the measured path reads all n_ctx slots) on the measured GPU's preset
    with the shipped calibrations (:func:`~workloads.gpu.calibration.calibrated_preset`): ms per
    position (the model's own kernel count, and the measured one), their errors vs measured, and
    J/token (board power) at the power loop's position."""
    gpu = doc["info"].get("gpu") or "H200"
    try:
        spec = gcal.calibrated_preset(gm.gpu_preset(gpu).name)
    except ValueError:
        spec = gcal.calibrated_preset("H200")
    tp = int(doc["tp"])
    for row in doc["results"]:
        cfg = gcal.cfg_from_result(row)
        k = row["graph"].get("kernels_per_step")
        pred: dict[str, Any] = {"gpu_spec": f"{spec.name} (workloads.gpu.calibration.calibrated_preset)",
                                "static_cache": True, "ms_at": {}, "err_pct_at": {},
                                "ms_at_measured_kernels": {}, "err_pct_at_measured_kernels": {}}
        try:
            for p, ms in row["graph"]["ms_at"].items():
                r = gm.predict(spec, cfg, int(p), static_cache=True, tp=tp)
                pred["ms_at"][p] = r["ms"]
                pred["err_pct_at"][p] = 100.0 * (r["ms"] - ms) / ms
                pred["comm_ms"] = r["comm_ms"]
                pred["n_kernels"] = r["n_kernels"]
                if k:
                    rk = gm.predict(spec, cfg, int(p), static_cache=True, tp=tp, n_kernels=k)
                    pred["ms_at_measured_kernels"][p] = rk["ms"]
                    pred["err_pct_at_measured_kernels"][p] = 100.0 * (rk["ms"] - ms) / ms
            loop = row["graph"].get("power_loop") or {}
            if loop.get("position") is not None:
                r = gm.predict(spec, cfg, int(loop["position"]), static_cache=True, tp=tp)
                pred["joules_per_token_board"] = r["joules"]
                pred["watts_board"] = r["watts"]
                ru = gm.predict(spec, cfg, int(loop["position"]), static_cache=True, tp=tp, power="util")
                pred["joules_per_token_util"] = ru["joules"]
                if loop.get("joules_per_token"):
                    pred["energy_err_pct_board"] = 100.0 * (r["joules"] - loop["joules_per_token"]) \
                        / loop["joules_per_token"]
                    pred["energy_err_pct_util"] = 100.0 * (ru["joules"] - loop["joules_per_token"]) \
                        / loop["joules_per_token"]
        except ValueError as e:
            pred["error"] = str(e)
        single = _shipped_single(row["model"])
        if single is not None and not doc["settings"].get("dry_run"):
            pred["single_gpu_measured_ms_at"] = single["graph"]["ms_at"]
            pred["single_gpu_measured_joules_per_token"] = single.get("joules_per_token")
        row["prediction"] = pred


def summary_table(doc: dict[str, Any]) -> str:
    """Markdown: per model and position, measured ms/token at tp, the analytic prediction and its
    error, the shipped 1-GPU measurement; W (all GPUs) and J/token at the loop's position with
    the predicted J (board power and utilisation power)."""
    tp = doc["tp"]
    lines = [f"| model | tp | position | ms/token | model ms | err % | 1-GPU ms | W ({tp} GPUs) | "
             "J/token | model J board / util | graph | max abs diff vs 1-GPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        loop = r["graph"].get("power_loop") or {}
        pr = r.get("prediction", {})
        v = r.get("validation", {})
        diff = f"{v['max_abs_diff']:.2g}" if "max_abs_diff" in v else "-"
        for p in r["positions"]:
            k = str(p)
            ms = r["graph"]["ms_at"][k]
            pm, pe = pr.get("ms_at", {}).get(k), pr.get("err_pct_at", {}).get(k)
            one = pr.get("single_gpu_measured_ms_at", {}).get(k)
            at = loop.get("position") == p
            w = f"{loop['mean_power_w']:.0f}" if at and loop.get("mean_power_w") else "-"
            j = f"{loop['joules_per_token']:.3f}" if at and loop.get("joules_per_token") else "-"
            mj = (f"{pr['joules_per_token_board']:.3f} / {pr['joules_per_token_util']:.3f}"
                  if at and "joules_per_token_board" in pr else "-")
            lines.append(f"| {r['model']} | {tp} | {p} | {ms:.3f} | "
                         + (f"{pm:.3f} | {pe:+.1f}" if pm is not None else "- | -")
                         + (f" | {one:.3f}" if one is not None else " | -")
                         + f" | {w} | {j} | {mj} | {'yes' if r['graph_captured'] else 'EAGER'} | {diff} |")
    for r in doc.get("not_measured", []):
        lines.append(f"| {r['model']} | {tp} | - | not measured: {r['not_measured']} |" + " |" * 8)
    return "\n".join(lines)
