"""Measured GPU baseline for a mixture-of-experts decoder: batched decode of a Qwen3-30B-A3B shape.

What it measures: one DECODE step of ``B`` sequences (one new token each, every sequence
attending over its own KV cache of ``L`` cached positions) of a decoder of the shape of
``qwen3-30b-a3b`` (:func:`workloads.gpu.shapes.zoo_shape`: 48 layers, d_model 2048, 32 query /
4 KV heads of 128, per-head q/k RMSNorm, 128 SwiGLU experts of width 768, 8 per token,
softmax -> top-8 -> renormalised; untied head of 151,936) with random bf16 weights: ms per step
and tokens/s per (batch, length). Its weights are 61 GB in bf16: it fits one 80 GB H100.

How (:class:`MoEDecoder`, torch only, no transformers): per layer RMSNorm, the q/k/v projections
as one matrix, per-head q/k RMSNorm, rotary positions, grouped-query attention over a static
cache ``[B, n_kv_head, L + 1, d_head]`` (``F.scaled_dot_product_attention`` with
``enable_gqa``), the output projection, then the MoE block: the router GEMM, softmax, top-k and
renormalisation, the ``B x k`` (token, expert) pairs sorted by expert and each expert's rows
multiplied by that expert's weights only (``torch._grouped_mm`` with the per-expert row offsets:
an expert no token chose is not read, as vLLM's fused MoE kernel does), the weighted outputs
summed back per token. Every shape is fixed, so on CUDA with ``torch._grouped_mm`` the step is
captured as ONE CUDA graph and timed with CUDA events around back-to-back replays (median of
rounds, :func:`~workloads.gpu.baseline.time_per_call_ms`); without it (CPU, the dry run) it
runs eagerly with a reference grouped product. Each point's weights + cache are compared with
the free GPU memory first; a point that does not fit (or runs out of memory anyway) is listed
under ``not_measured`` with the reason. Power (CUDA only): board power sampled over a sustained
loop of the captured step after a ramp (:func:`~workloads.gpu.baseline.sustained_loop`, NVML or
nvidia-smi as in ``measure batched``), idle power before the run; joules per token = mean power x
the loop's ms per step / B (``joules_per_token``, also above idle).

Needs torch and the standard library; no simulator imports::

    python -m workloads.gpu.moe_batched -o workloads/gpu/data/gpu_measured_{gpu}_moe.json
    python -m workloads.gpu.moe_batched --dry-run -o /tmp/moe_dry.json   # CPU, tiny, fp32
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from workloads.gpu.baseline import (
    PowerSampler,
    environment_info,
    measure_idle_w,
    sustained_loop,
    time_per_call_ms,
)
from workloads.gpu.shapes import zoo_shape
from workloads.models.shape import DecoderShape

MODEL = "qwen3-30b-a3b"
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTHS = (128, 512)
DRY_RUN = dict(batches=(1, 2, 4), lengths=(8,))


def tiny_shape() -> DecoderShape:
    """The dry run's decoder: Qwen3-30B-A3B's layout at toy widths."""
    import dataclasses

    return dataclasses.replace(zoo_shape(MODEL), name="qwen3-moe-tiny", n_layer=2, d_model=64,
                               n_head=4, n_kv_head=2, d_head=16, d_ff=32, n_experts=8,
                               experts_per_tok=2, vocab=128, n_ctx=64)


def _grouped_mm_ref(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``torch._grouped_mm``'s result, group by group (rows ``offs[g-1]:offs[g]`` times
    ``w[g]``)."""
    out = x.new_zeros(x.shape[0], w.shape[-1])
    lo = 0
    for g, hi in enumerate(offs.tolist()):
        if hi > lo:
            out[lo:hi] = x[lo:hi] @ w[g]
        lo = hi
    return out


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if x.is_cuda and hasattr(torch, "_grouped_mm"):
        return torch._grouped_mm(x, w, offs=offs)
    return _grouped_mm_ref(x, w, offs)


class MoEDecoder:
    """Random-weight decode step of a MoE decoder shape (see the module docstring)."""

    def __init__(self, shape: DecoderShape, device: torch.device, dtype: torch.dtype,
                 seed: int = 0) -> None:
        s = self.shape = shape
        self.device, self.dtype = device, dtype
        g = torch.Generator(device="cpu").manual_seed(seed)
        d, a, kv, f, E = s.d_model, s.d_attn, s.d_kv, s.d_ff, s.n_experts

        def w(*dims: int) -> torch.Tensor:
            t = torch.empty(dims, dtype=dtype, device=device)
            return t.copy_((torch.randn(dims, generator=g) * 0.02).to(dtype))

        self.layers = [dict(qkv=w(d, a + 2 * kv), o=w(a, d), router=w(d, E),
                            up=w(E, d, 2 * f), down=w(E, f, d)) for _ in range(s.n_layer)]
        self.embed = w(s.vocab, d)
        self.head = w(d, s.vocab)
        inv = 1.0 / (s.rope_theta ** (torch.arange(0, s.d_head, 2).float() / s.d_head))
        self.inv_freq = inv.to(device)
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []

    def weight_bytes(self) -> int:
        ts = [self.embed, self.head] + [t for lay in self.layers for t in lay.values()]
        return sum(t.numel() * t.element_size() for t in ts)

    def set_batch(self, batch: int, length: int) -> None:
        """Static caches of ``length + 1`` slots for ``batch`` sequences, random contents; the
        step's tokens at position ``length``."""
        s = self.shape
        self.k_cache = self.v_cache = []
        dims = (batch, s.n_kv_head, length + 1, s.d_head)
        self.k_cache = [torch.randn(dims, device=self.device).to(self.dtype) for _ in range(s.n_layer)]
        self.v_cache = [torch.randn(dims, device=self.device).to(self.dtype) for _ in range(s.n_layer)]
        self.tokens = torch.randint(0, s.vocab, (batch,), device=self.device)
        self.pos = length
        ang = length * self.inv_freq
        self.cos, self.sin = ang.cos().to(self.dtype), ang.sin().to(self.dtype)

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * self.cos - x2 * self.sin, x1 * self.sin + x2 * self.cos),
                           -1).flatten(-2)

    def _moe(self, x: torch.Tensor, lay: dict) -> torch.Tensor:
        s = self.shape
        k, E = s.experts_per_tok, s.n_experts
        p = torch.softmax((x @ lay["router"]).float(), -1)
        top_w, top_i = torch.topk(p, k, dim=-1)
        top_w = (top_w / top_w.sum(-1, keepdim=True)).to(x.dtype)
        flat = top_i.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(E, dtype=torch.int32, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        rows = order // k
        h = grouped_mm(x[rows], lay["up"], offs)
        gate, up = h.chunk(2, -1)
        y = grouped_mm(F.silu(gate) * up, lay["down"], offs) * top_w.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, rows, y)

    def step(self) -> torch.Tensor:
        """One decode step of the batch; the next tokens (greedy)."""
        s = self.shape
        B = self.tokens.shape[0]
        x = self.embed[self.tokens]
        for i, lay in enumerate(self.layers):
            h = F.rms_norm(x, (s.d_model,), eps=s.norm_eps)
            q, kk, v = (h @ lay["qkv"]).split([s.d_attn, s.d_kv, s.d_kv], -1)
            q = F.rms_norm(q.view(B, s.n_head, 1, s.d_head), (s.d_head,), eps=s.norm_eps)
            kk = F.rms_norm(kk.view(B, s.n_kv_head, 1, s.d_head), (s.d_head,), eps=s.norm_eps)
            q, kk = self._rope(q), self._rope(kk)
            self.k_cache[i][:, :, self.pos:self.pos + 1] = kk
            self.v_cache[i][:, :, self.pos:self.pos + 1] = v.view(B, s.n_kv_head, 1, s.d_head)
            o = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i],
                                               enable_gqa=True)
            x = x + o.reshape(B, s.d_attn) @ lay["o"]
            x = x + self._moe(F.rms_norm(x, (s.d_model,), eps=s.norm_eps), lay)
        logits = F.rms_norm(x, (s.d_model,), eps=s.norm_eps) @ self.head
        return logits.argmax(-1)


def _captured(dec: MoEDecoder):
    """The step as one CUDA graph where the grouped product can be captured; else eager."""
    if dec.device.type != "cuda" or not hasattr(torch, "_grouped_mm"):
        return dec.step, False
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            dec.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dec.step()
    return graph.replay, True


def _free_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def measure(shape: DecoderShape, device: torch.device, dtype: torch.dtype, *,
            batches: Sequence[int], lengths: Sequence[int], repeats: int = 5,
            target_s: float = 0.1, save=None, power_s: float = 0.0) -> dict[str, Any]:
    """Decode-step time at every (batch, length) point, and board power over ``power_s`` of
    sustained steps where a sampler is available (see the module docstring)."""
    sampler = PowerSampler(device.index or 0) if device.type == "cuda" and power_s > 0 else None
    idle_w = measure_idle_w(sampler, 2.0)
    dec = MoEDecoder(shape, device, dtype)
    doc: dict[str, Any] = {
        "model": shape.name, "shape": {k: getattr(shape, k) for k in (
            "n_layer", "d_model", "n_head", "n_kv_head", "d_head", "d_ff", "n_experts",
            "experts_per_tok", "vocab")},
        "dtype": str(dtype).removeprefix("torch."), "weight_bytes": dec.weight_bytes(),
        "environment": environment_info(device), "idle_power_w": idle_w,
        "power_source": sampler.source if sampler is not None and sampler.available else None,
        "points": [], "not_measured": []}
    el = torch.tensor([], dtype=dtype).element_size()
    for L in lengths:
        for B in batches:
            need = 2 * shape.n_layer * B * shape.d_kv * (L + 1) * el
            free = _free_bytes(device)
            point = {"batch": B, "kv_len": L}
            want = need * 1.2 + (1 << 30)  # the cache, 20 % for the step's work, 1 GiB spare
            if free is not None and want > free:
                doc["not_measured"].append({**point, "reason": (
                    f"KV cache {need / 1e9:.1f} GB x 1.2 + 1 GiB = {want / 1e9:.1f} GB "
                    f"> free {free / 1e9:.1f} GB")})
                continue
            try:
                dec.set_batch(B, L)
                fn, graph = _captured(dec)
                t = time_per_call_ms(fn, device, repeats=repeats, target_s=target_s)
                pw = (sustained_loop(fn, device, sampler, seconds=power_s, idle_w=idle_w)
                      if sampler is not None and sampler.available else {})
            except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
                doc["not_measured"].append({**point, "reason": f"out of memory: {e}"[:200]})
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            ms = t["ms"]
            doc["points"].append({**point, "ms_per_step": ms, "tokens_per_s": 1000.0 * B / ms,
                                  "cuda_graph": graph,
                                  "expected_experts_per_layer": shape.experts_read(B)})
            if pw.get("mean_power_w") is not None:
                step_ms = pw.get("ms_per_token", ms)
                doc["points"][-1].update(
                    mean_power_w=pw["mean_power_w"], loop_ms_per_step=step_ms,
                    joules_per_token=pw["mean_power_w"] * step_ms / 1e3 / B,
                    joules_per_token_above_idle=(None if idle_w is None else
                                                 (pw["mean_power_w"] - idle_w) * step_ms / 1e3 / B))
            if save is not None:
                save(doc)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workloads.gpu.moe_batched",
                                 description="measure batched decode of a Qwen3-30B-A3B-shaped "
                                             "mixture of experts on the GPU")
    ap.add_argument("-o", "--output", required=True,
                    help="JSON to write ({gpu} is replaced by the GPU's name)")
    ap.add_argument("--batches", type=lambda t: [int(x) for x in t.split(",")],
                    default=list(BATCHES))
    ap.add_argument("--lengths", type=lambda t: [int(x) for x in t.split(",")],
                    default=list(LENGTHS))
    ap.add_argument("--power-s", type=float, default=2.0,
                    help="seconds of sustained steps per point to sample board power over (0: none)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, tiny shapes, fp32 (checks the code path, measures nothing useful)")
    args = ap.parse_args(argv)
    if args.dry_run:
        shape, device, dtype = tiny_shape(), torch.device("cpu"), torch.float32
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # toy matrices: more threads only contend
        batches, lengths = DRY_RUN["batches"], DRY_RUN["lengths"]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on the GPU machine, or --dry-run")
        shape, device, dtype = zoo_shape(MODEL), torch.device("cuda"), torch.bfloat16
        batches, lengths = args.batches, args.lengths
    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).split()[-1]
    path = args.output.replace("{gpu}", name)

    def save(doc: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)

    try:
        doc = measure(shape, device, dtype, batches=batches, lengths=lengths,
                      repeats=1 if args.dry_run else 5, target_s=0.005 if args.dry_run else 0.1,
                      save=save, power_s=0.0 if args.dry_run else args.power_s)
    finally:
        if args.dry_run:
            torch.set_num_threads(threads)
    save(doc)
    for p in doc["points"]:
        j = p.get("joules_per_token")
        print(f"B {p['batch']:4d} L {p['kv_len']:5d}: {p['ms_per_step']:.3f} ms/step, "
              f"{p['tokens_per_s']:,.0f} tokens/s" + (f", {1e3 * j:.1f} mJ/token" if j else ""))
    for p in doc["not_measured"]:
        print(f"B {p['batch']:4d} L {p['kv_len']:5d}: not measured ({p['reason']})")
    print(f"written to {path}")
    return 0 if doc["points"] else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
