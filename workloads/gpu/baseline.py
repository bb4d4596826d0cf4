"""Measured GPU baseline: batch-1 GPT decode latency and energy on a CUDA GPU.

Two decode paths are timed for each GPT preset, fp16 weights drawn at random from a seed:

* **eager** -- plain PyTorch, :meth:`workloads.models.gpt.GPT.decode_step` with its growing
  (concatenated) KV cache; one Python-dispatched kernel sequence per token.
* **graph** -- :class:`~workloads.gpu.decoders.StaticCacheDecoder`: a static KV cache ``[n_layer,
  n_head, n_ctx, d_head]`` preallocated for K and for V, the new K/V written at the position held
  in a device tensor, attention over the whole buffer with the positions beyond the current one
  masked out, fused q/k/v projection; the whole decode step is captured as ONE CUDA graph and
  replayed per token.

Timing: CUDA events around ``n_inner`` back-to-back steps after a warm-up, median over
``repeats`` (on the CPU, ``time.perf_counter``). Positions: ``min(128, n_ctx/4)``, ``n_ctx/2``
and ``n_ctx-1``. Energy: board power is sampled (NVML through ``pynvml`` where it imports, else
``nvidia-smi -lms 50``) during a sustained loop of decode steps; idle power is sampled before the
run and before each model. Joules per token = mean power x time per token in that loop; the same
above idle is reported too, and, where NVML has it, the board's energy counter over the loop.

This module needs only torch, numpy and the standard library (plus ``workloads.models.gpt``), so it runs
on a GPU machine without the simulator's other dependencies::

    PYTHONPATH=. python -m workloads.gpu measure gpt --models all \
        -o 'workloads/gpu/data/gpu_measured_{gpu}.json'
    python -m workloads.gpu measure gpt --dry-run -o /tmp/dry.json      # CPU, preset tiny, no power
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
import shutil
import statistics
import subprocess
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from workloads.gpu.decoders import StaticCacheDecoder, build_model
from workloads.models.gpt import GPT, get_config
from workloads.models.shape import DecoderShape

ALL_MODELS = ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl",
              "gpt3-small", "gpt3-medium", "gpt3-large", "gpt3-xl")
FP16_BYTES = 2

METHOD = (
    "batch 1 decode, random weights from a seed (N(0,0.02), LayerNorm weight 1+N(0,0.02)), fp16 on "
    "the GPU (fp32 in a CPU dry run). eager: plain PyTorch GPT.decode_step with its growing "
    "concatenated KV cache, one Python-dispatched kernel sequence per token. graph: static KV cache "
    "[n_layer, n_head, n_ctx, d_head] for K and V, new K/V written (index_copy_) at a position held "
    "in a device tensor, attention over the whole n_ctx buffer with positions beyond the current one "
    "masked (-inf), fused q/k/v projection, the whole decode step captured as ONE CUDA graph and "
    "replayed per token. Timing: CUDA events around n_inner back-to-back steps after warm-up, median "
    "of `repeats`; the KV length / position is set before timing (eager: a random past of that "
    "length). Power: board power sampled every 50 ms (NVML via pynvml, else nvidia-smi -lms 50) during "
    "a sustained loop of steps after a ramp; idle power sampled before the run and before each model; "
    "J/token = mean power x ms/token of the loop (also above idle, and from the NVML energy counter "
    "where available). Graph logits were checked against GPT.decode_step for a few steps (max abs "
    "difference recorded)."
)


# --------------------------------------------------------------------------------------------
# Validation of the static-cache decoder (workloads.gpu.decoders)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def compare_with_decode_step(model: GPT, decoder: StaticCacheDecoder, tokens: Sequence[int]
                             ) -> dict[str, float]:
    """Decode ``tokens`` from position 0 both ways; max |logit difference| and max |logit|."""
    decoder.reset("zeros")
    past_k, past_v = model.empty_kv()
    dev = model.wte.weight.device
    max_diff, max_abs = 0.0, 0.0
    for pos, tok in enumerate(tokens):
        ref, past_k, past_v = model.decode_step(torch.tensor([[tok]], device=dev), pos, past_k, past_v)
        got = decoder.decode(tok, pos)
        max_diff = max(max_diff, float((got.float() - ref.float()).abs().max()))
        max_abs = max(max_abs, float(ref.float().abs().max()))
    return {"steps": len(tokens), "max_abs_diff": max_diff, "max_abs_logit": max_abs,
            "rel_diff": max_diff / max(max_abs, 1e-30)}


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prewarm(fn: Callable[[], Any], device: torch.device, seconds: float) -> None:
    """Call ``fn`` back to back for about ``seconds`` (lets the GPU clocks ramp up)."""
    if seconds <= 0:
        return
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            fn()
        _sync(device)


def time_per_call_ms(fn: Callable[[], Any], device: torch.device, *, repeats: int = 5,
                     target_s: float = 0.1, warmup: int = 3, max_inner: int = 500) -> dict[str, Any]:
    """Median ms per ``fn()`` over ``repeats`` batches of ``n_inner`` back-to-back calls.

    CUDA events on a CUDA device, ``time.perf_counter`` otherwise. ``n_inner`` is chosen from the
    warm-up so one batch lasts about ``target_s``.
    """
    cuda = device.type == "cuda"
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    _sync(device)
    per = max((time.perf_counter() - t0) / max(warmup, 1), 1e-6)
    n_inner = int(min(max_inner, max(3, target_s / per)))
    samples = []
    for _ in range(repeats):
        if cuda:
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(n_inner):
                fn()
            e1.record()
            e1.synchronize()
            samples.append(e0.elapsed_time(e1) / n_inner)
        else:
            t0 = time.perf_counter()
            for _ in range(n_inner):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / n_inner)
    return {"ms": statistics.median(samples), "n_inner": n_inner,
            "spread_ms": [min(samples), max(samples)]}


def time_interleaved(setups: dict[str, Callable[[], Callable[[], Any]]], device: torch.device, *,
                     repeats: int = 5, target_s: float = 0.1) -> dict[str, dict[str, Any]]:
    """:func:`time_per_call_ms` for several cases, round-robin, so clock drift hits all alike.

    ``setups[key]()`` prepares its case (e.g. sets the position) and returns the function to time.
    Each round times every case once (``repeats=1`` each); the median is over the rounds.
    """
    samples: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(repeats):
        for key, setup in setups.items():
            fn = setup()
            samples[key].append(time_per_call_ms(fn, device, repeats=1, target_s=target_s,
                                                 warmup=2)["ms"])
    return {k: {"ms": statistics.median(v), "spread_ms": [min(v), max(v)], "samples_ms": v}
            for k, v in samples.items()}


# --------------------------------------------------------------------------------------------
# Power
# --------------------------------------------------------------------------------------------


class PowerSampler:
    """Samples board power (W) every ``interval_s`` in the background: NVML, else nvidia-smi.

    Use as a context manager; ``samples`` holds ``(perf_counter time, watts)``. ``energy_j``
    (NVML's total-energy counter over the window) is set where the board reports it. When neither
    NVML nor nvidia-smi is usable ``available`` is False and nothing is sampled.
    """

    def __init__(self, device_index: int = 0, interval_s: float = 0.05) -> None:
        self.index, self.interval = device_index, interval_s
        self.samples: list[tuple[float, float]] = []
        self.energy_j: float | None = None
        self.source: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._nvml: Any = None
        self._handle: Any = None
        self._e0: int | None = None
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            pynvml.nvmlDeviceGetPowerUsage(self._handle)
            self._nvml = pynvml
            self.source = "nvml"
        except Exception:
            self._nvml = None
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"

    @property
    def available(self) -> bool:
        return self.source is not None

    def __enter__(self) -> PowerSampler:
        self.samples = []
        self.energy_j = None
        self._stop.clear()
        if self.source == "nvml":
            try:
                self._e0 = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            except Exception:
                self._e0 = None
            self._thread = threading.Thread(target=self._poll_nvml, daemon=True)
            self._thread.start()
        elif self.source == "nvidia-smi":
            self._proc = subprocess.Popen(
                ["nvidia-smi", "-i", str(self.index), "--query-gpu=power.draw",
                 "--format=csv,noheader,nounits", "-lms", str(int(self.interval * 1000))],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
            self._thread.start()
        return self

    def _poll_nvml(self) -> None:
        while not self._stop.is_set():
            try:
                mw = self._nvml.nvmlDeviceGetPowerUsage(self._handle)
                self.samples.append((time.perf_counter(), mw / 1e3))
            except Exception:
                pass
            self._stop.wait(self.interval)

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip())))
            except ValueError:
                continue

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        if self.source == "nvml" and self._e0 is not None:
            try:
                e1 = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                self.energy_j = (e1 - self._e0) / 1e3
            except Exception:
                self.energy_j = None

    def energy_counter_j(self) -> float | None:
        """NVML's total-energy counter (J since driver load), or None."""
        if self.source != "nvml":
            return None
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3
        except Exception:
            return None

    def mean_w(self, after: float | None = None) -> float | None:
        vals = [w for t, w in self.samples if after is None or t >= after]
        return float(np.mean(vals)) if vals else None


def measure_idle_w(sampler: PowerSampler | None, seconds: float) -> float | None:
    """Mean board power over ``seconds`` with nothing queued on the GPU."""
    if sampler is None or not sampler.available or seconds <= 0:
        return None
    with sampler:
        time.sleep(seconds)
    return sampler.mean_w()


def sustained_loop(fn: Callable[[], Any], device: torch.device, sampler: PowerSampler | None, *,
                   seconds: float, ramp_s: float = 1.0, idle_w: float | None = None) -> dict[str, Any]:
    """Run ``fn`` back to back for ``ramp_s + seconds``; power sampled over the last ``seconds``.

    Returns ms/token over the sampled window, mean power and joules per token (total and above
    ``idle_w``), and the energy counter's joules per token where available.
    """
    _sync(device)
    t_start = time.perf_counter()
    per = 1e-3
    chunk = 1
    sampling = sampler is not None and sampler.available
    with (sampler if sampling else _Null()):
        # ramp: the board's averaged power needs a moment to settle
        while time.perf_counter() - t_start < ramp_s:
            t0 = time.perf_counter()
            for _ in range(chunk):
                fn()
            _sync(device)
            per = max((time.perf_counter() - t0) / chunk, 1e-6)
            chunk = max(1, int(0.05 / per))
        e0 = sampler.energy_counter_j() if sampling and sampler is not None else None
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            for _ in range(chunk):
                fn()
            _sync(device)
            n += chunk
        t1 = time.perf_counter()
        e1 = sampler.energy_counter_j() if sampling and sampler is not None else None
    ms = (t1 - t0) * 1e3 / max(n, 1)
    out: dict[str, Any] = {"ms_per_token": ms, "tokens": n, "seconds": t1 - t0}
    if sampling:
        assert sampler is not None
        mean_w = sampler.mean_w(after=t0)
        out["mean_power_w"] = mean_w
        out["n_power_samples"] = sum(1 for t, _ in sampler.samples if t >= t0)
        if mean_w is not None:
            out["joules_per_token"] = mean_w * ms / 1e3
            if idle_w is not None:
                out["joules_per_token_above_idle"] = (mean_w - idle_w) * ms / 1e3
        if e0 is not None and e1 is not None and n > 0:
            out["joules_per_token_energy_counter"] = (e1 - e0) / n
            out["mean_power_w_energy_counter"] = (e1 - e0) / (t1 - t0)
    return out


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --------------------------------------------------------------------------------------------
# Kernel count (profiler) and environment
# --------------------------------------------------------------------------------------------


def count_cuda_kernels(fn: Callable[[], Any]) -> int | None:
    """Number of CUDA kernels (and memsets/memcpys) one ``fn()`` launches, via torch.profiler."""
    try:
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        n = 0
        for ev in prof.events():
            dt = getattr(ev, "device_type", None)
            if dt is not None and "CUDA" in str(dt):
                n += 1
        return n or None
    except Exception:
        return None


def measure_copy_bandwidth_gbs(device: torch.device, n_bytes: int = 1 << 30) -> float | None:
    """Device-to-device copy rate, (bytes read + bytes written) / time, in GB/s."""
    if device.type != "cuda":
        return None
    a = torch.empty(n_bytes // 2, dtype=torch.float16, device=device).normal_()
    b = torch.empty_like(a)
    r = time_per_call_ms(lambda: b.copy_(a), device, repeats=5, target_s=0.05)
    a = b = None  # drop the references: the memory is freed
    torch.cuda.empty_cache()
    return 2 * n_bytes / (r["ms"] / 1e3) / 1e9


def _driver_version() -> str | None:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        try:
            return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception:
            return None
    return None


def environment_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "host_cpu": platform.processor() or platform.machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), driver=_driver_version(),
                    cudnn=torch.backends.cudnn.version(), sm_count=props.multi_processor_count,
                    gpu_memory_gib=round(props.total_memory / 2**30, 2),
                    compute_capability=f"{props.major}.{props.minor}")
    else:
        info.update(gpu=None, driver=None)
    return info


def gpu_slug(name: str | None) -> str:
    """Short file-name tag for a GPU name: 'NVIDIA H100 80GB HBM3' -> 'h100'."""
    if not name:
        return "cpu"
    m = re.search(r"\b(T4|L4|L40S?|A10G?|A30|A40|A100|H100|H200|H20|B200|B100|GB200|V100)\b", name, re.I)
    if m:
        return m.group(1).lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


# --------------------------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------------------------


def positions_for(cfg: DecoderShape) -> list[int]:
    """Context positions timed: min(128, n_ctx/4), n_ctx/2, n_ctx-1."""
    return sorted({min(128, cfg.n_ctx // 4), cfg.n_ctx // 2, cfg.n_ctx - 1})


def measure_model(name: str, device: torch.device, *, dtype: torch.dtype, repeats: int = 5,
                  power_s: float = 3.0, eager_power_s: float = 2.0, idle_s: float = 1.0,
                  sampler: PowerSampler | None = None, validate_steps: int = 4, seed: int = 0,
                  prewarm_s: float = 0.5, batch_s: float = 0.1, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build ``name`` on ``device`` and measure the eager and graph decode paths."""
    cfg = get_config(name)
    cuda = device.type == "cuda"
    t_build = time.perf_counter()
    model = build_model(cfg, device=device, dtype=dtype, seed=seed)
    dec = StaticCacheDecoder(model)
    if cuda:
        dec.capture()
    _sync(device)
    t_build = time.perf_counter() - t_build
    res: dict[str, Any] = {
        "model": name, "params": cfg.n_params, "weight_bytes": cfg.n_params * FP16_BYTES,
        "dtype": str(dtype).replace("torch.", ""), "n_layer": cfg.n_layer, "d_model": cfg.d_model,
        "n_head": cfg.n_head, "d_head": cfg.d_head, "n_ctx": cfg.n_ctx, "vocab": cfg.vocab,
        "static_kv_bytes": dec.kv_bytes, "build_s": round(t_build, 3),
    }

    # numerical check: static cache (graph on CUDA) vs GPT.decode_step
    gen = torch.Generator().manual_seed(seed + 1)
    toks = torch.randint(0, cfg.vocab, (validate_steps,), generator=gen).tolist()
    res["validation"] = compare_with_decode_step(model, dec, toks)
    log(f"[{name}] built in {t_build:.2f}s; graph vs decode_step over {validate_steps} steps: "
        f"max|diff| {res['validation']['max_abs_diff']:.3g} (max|logit| {res['validation']['max_abs_logit']:.3g})")

    positions = positions_for(cfg)
    res["positions"] = positions
    tok = int(toks[0])

    # graph (static cache) timings, after a short sustained pre-warm so clocks have settled
    dec.reset("random", seed=seed + 2)
    dec.set_inputs(tok, positions[0])
    _prewarm(dec.run, device, prewarm_s)
    def graph_at(p: int) -> Callable[[], Any]:
        def fn() -> Any:
            dec.set_inputs(tok, p)
            return dec.run
        return fn

    r_g = time_interleaved({str(p): graph_at(p) for p in positions}, device, repeats=repeats,
                           target_s=batch_s)
    graph_ms = {k: v["ms"] for k, v in r_g.items()}
    graph_spread = {k: v["spread_ms"] for k, v in r_g.items()}
    kernels = count_cuda_kernels(dec.step) if cuda else None
    res["graph"] = {"ms_at": graph_ms, "spread_ms_at": graph_spread, "kernels_per_step": kernels}
    log(f"[{name}] graph ms/token " + ", ".join(f"@{p}: {v:.4f}" for p, v in graph_ms.items())
        + (f"; {kernels} kernels/step" if kernels else ""))

    # eager timings: decode_step with a random growing cache of length p
    tok_t = torch.tensor([[tok]], device=device)
    g2 = torch.Generator(device=device).manual_seed(seed + 3)
    pasts = {}
    for p in positions:
        shape = (cfg.n_layer, cfg.n_head, p, cfg.d_head)
        pasts[p] = (torch.randn(shape, generator=g2, device=device, dtype=dtype),
                    torch.randn(shape, generator=g2, device=device, dtype=dtype))

    def eager_at(p: int) -> Callable[[], Any]:
        pk, pv = pasts[p]

        def step() -> Any:
            with torch.inference_mode():
                return model.decode_step(tok_t, p, pk, pv)

        return lambda: step
    r_e = time_interleaved({str(p): eager_at(p) for p in positions}, device, repeats=repeats,
                           target_s=batch_s)
    eager_ms = {k: v["ms"] for k, v in r_e.items()}
    pasts = None  # drop the references: the memory is freed
    res["eager"] = {"ms_at": eager_ms, "spread_ms_at": {k: v["spread_ms"] for k, v in r_e.items()}}
    log(f"[{name}] eager ms/token " + ", ".join(f"@{p}: {v:.4f}" for p, v in eager_ms.items()))

    # power: sustained loops (graph at the middle position; eager at the same position)
    if sampler is not None and sampler.available:
        _sync(device)
        time.sleep(0.3)
        idle_w = measure_idle_w(sampler, idle_s)
        res["idle_power_w"] = idle_w
        p_mid = positions[len(positions) // 2]
        dec.set_inputs(tok, p_mid)
        loop = sustained_loop(dec.run, device, sampler, seconds=power_s, idle_w=idle_w)
        loop["position"] = p_mid
        res["graph"]["power_loop"] = loop
        if eager_power_s > 0:
            shape = (cfg.n_layer, cfg.n_head, p_mid, cfg.d_head)
            pk = torch.randn(shape, generator=g2, device=device, dtype=dtype)
            pv = torch.randn(shape, generator=g2, device=device, dtype=dtype)

            def eager_loop_step() -> Any:
                with torch.inference_mode():
                    return model.decode_step(tok_t, p_mid, pk, pv)

            loop_e = sustained_loop(eager_loop_step, device, sampler, seconds=eager_power_s, idle_w=idle_w)
            loop_e["position"] = p_mid
            res["eager"]["power_loop"] = loop_e
            del pk, pv
        g = res["graph"]["power_loop"]
        log(f"[{name}] idle {idle_w:.1f} W; graph loop {g['ms_per_token']:.4f} ms/token at "
            f"{g.get('mean_power_w') or float('nan'):.1f} W -> {g.get('joules_per_token') or float('nan'):.4f} J/token"
            + (f"; eager loop {res['eager']['power_loop']['ms_per_token']:.3f} ms at "
               f"{res['eager']['power_loop'].get('mean_power_w') or float('nan'):.1f} W"
               if "power_loop" in res["eager"] else ""))
    # flat summary fields (like the earlier H200 file)
    res["graph_ms_per_token"] = graph_ms[str(positions[len(positions) // 2])]
    res["eager_ms_per_token"] = eager_ms[str(positions[len(positions) // 2])]
    if "power_loop" in res["graph"]:
        res["mean_power_w"] = res["graph"]["power_loop"].get("mean_power_w")
        res["joules_per_token"] = res["graph"]["power_loop"].get("joules_per_token")
        res["joules_per_token_above_idle"] = res["graph"]["power_loop"].get("joules_per_token_above_idle")
    dec = model = None  # drop the references: the memory is freed
    if cuda:
        torch.cuda.empty_cache()
    return res


# --------------------------------------------------------------------------------------------
# Whole run and CLI
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None,
                   dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype, bool]:
    """(device with its index, dtype, on CUDA?): CUDA where present, fp16 there, fp32 on the
    CPU, unless given."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cuda = device.type == "cuda"
    if dtype is None:
        dtype = torch.float16 if cuda else torch.float32
    return device, dtype, cuda


def run_baseline(models: Sequence[str], *, device: str | torch.device | None = None,
                 repeats: int = 5, power_s: float = 3.0, eager_power_s: float = 2.0,
                 idle_s: float = 2.0, dtype: torch.dtype | None = None, seed: int = 0,
                 batch_s: float = 0.1, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every model in ``models``; returns the JSON-ready document."""
    device, dtype, cuda = resolve_device(device, dtype)
    info = environment_info(device)
    sampler = PowerSampler(device.index or 0) if cuda else None
    info["power_source"] = sampler.source if sampler is not None else None
    if cuda:
        torch.zeros(1, device=device)  # context up before the idle reading
        time.sleep(0.5)
        info["idle_power_w_start"] = measure_idle_w(sampler, idle_s)
        info["copy_bandwidth_gbs"] = measure_copy_bandwidth_gbs(device)
        log(f"{info['gpu']}  driver {info['driver']}  torch {info['torch']}  cuda {info['cuda']}  "
            f"idle {info['idle_power_w_start']} W  copy {info['copy_bandwidth_gbs']:.0f} GB/s  "
            f"power via {info['power_source']}")
    results = []
    t0 = time.perf_counter()
    for name in models:
        results.append(measure_model(name, device, dtype=dtype, repeats=repeats, power_s=power_s,
                                     eager_power_s=eager_power_s, idle_s=min(idle_s, 1.0),
                                     sampler=sampler, seed=seed,
                                     prewarm_s=0.5 if cuda else 0.0, batch_s=batch_s, log=log))
        log(f"  ({time.perf_counter() - t0:.1f}s elapsed)")
    method = METHOD if cuda else METHOD + " DRY RUN on the CPU: time.perf_counter, no graph capture, no power."
    return {"method": method, "info": info,
            "settings": {"repeats": repeats, "power_loop_s": power_s, "eager_power_loop_s": eager_power_s,
                         "idle_s": idle_s, "batch_s": batch_s, "seed": seed, "dtype": str(dtype).replace("torch.", ""),
                         "dry_run": not cuda},
            "results": results}


def summary_table(doc: dict[str, Any]) -> str:
    rows = ["model        params(M)  eager ms  graph ms@" + "/".join(["lo", "mid", "hi"])
            + "          W   J/token  J>idle"]
    for r in doc["results"]:
        g = [r["graph"]["ms_at"][str(p)] for p in r["positions"]]
        e = r["eager"]["ms_at"][str(r["positions"][len(r["positions"]) // 2])]
        w = r.get("mean_power_w")
        j = r.get("joules_per_token")
        ja = r.get("joules_per_token_above_idle")
        rows.append(f"{r['model']:<12} {r['params'] / 1e6:9.1f} {e:9.3f}  "
                    + "/".join(f"{x:.4f}" for x in g)
                    + (f"  {w:7.1f}  {j:7.4f}  {ja:6.4f}" if None not in (w, j, ja) else "  -"))
    return "\n".join(rows)
