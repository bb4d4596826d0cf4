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

How: :class:`~workloads.gpu.decoders.LlamaStaticDecoder` is a plain-PyTorch decoder -- RMSNorm,
rotary position embedding (RoPE, theta from the config), grouped-query attention, SwiGLU MLP,
untied LM head -- with a static KV cache ``[n_layer, n_kv_head, n_ctx, d_head]`` for K and for V.
The token and the position live in device tensors; the new K/V are written at that position
(``index_copy_``), attention runs over the whole ``n_ctx`` buffer with the slots beyond the
position masked, so every shape is fixed and the whole step is captured as one CUDA graph and
replayed per token. The q/k/v and gate/up projections are stored fused;
:meth:`~workloads.gpu.decoders.LlamaStaticDecoder.hf_state_dict` gives views of them under Hugging
Face's parameter names, so ``transformers``' ``LlamaForCausalLM`` built from a ``LlamaConfig`` (no
download) runs the same weights: the logits of both are compared over a few steps
(:func:`compare_with_hf`; max abs difference in the JSON). Timing, power and the environment record
reuse :mod:`workloads.gpu.baseline` (:func:`~workloads.gpu.baseline.time_interleaved` /
``time_per_call_ms``, :class:`~workloads.gpu.baseline.PowerSampler`,
:func:`~workloads.gpu.baseline.sustained_loop`, :func:`~workloads.gpu.baseline.environment_info`):
CUDA events around back-to-back replays after warm-up, median of repeats; power from NVML during a
sustained loop; J/token = mean W x s/token.

Needs torch, numpy and the standard library; ``transformers`` only for the validation (imported
there, skipped with a note when missing). No simulator imports::

    PYTHONPATH=. python -m workloads.gpu measure llama --models llama2-7b llama3-8b llama2-13b \\
        -o workloads/gpu/data/gpu_measured_h200_llama.json
    python -m workloads.gpu measure llama --dry-run -o /tmp/dry.json   # CPU, tiny configs, fp32
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable, Sequence

import torch

from workloads.gpu.baseline import (
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
from workloads.gpu.decoders import LlamaStaticDecoder
from workloads.gpu.llama_shapes import VALIDATION_CONFIGS, get_shape, hf_llama_config
from workloads.models.shape import DecoderShape

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
# Validation against transformers
# --------------------------------------------------------------------------------------------


def hf_model(shape: DecoderShape, state_dict: dict[str, torch.Tensor], device: torch.device) -> Any:
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
    dec = None  # drop the references: the memory is freed
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
        "vocab": shape.vocab, "rope_theta": shape.rope_theta, "rms_eps": shape.norm_eps,
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
    dec = None  # drop the references: the memory is freed
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
