"""The library API of the workloads: compile a model for a PIM system, simulate it, validate its
numbers, compare it with a GPU, sweep a design space. The ``pimsim`` command line, the
notebooks, the examples and the tests all call these functions::

    from workloads import compile_model, simulate, validate, compare, sweep

    res = simulate("tiny", "pim-gpt", tokens=4)
    res.latency_ms_per_token, res.to_dict(), res.to_pandas()

    served = serve("tiny", "pim-gpt", num_prompts=8, input_len=8, output_len=8)
    served.metrics["output_throughput"], served.to_pandas()   # continuous batching

The system a model runs on (devices, tensor parallelism ``tp``, pipeline stages ``pp``) has one
carrier: the hardware config's ``[system]`` section. Explicit ``devices / tp / pp`` arguments
give a new config (:func:`hw_config`); a model is compiled for the config's system, and a
program compiled for one system is refused on another (:func:`system_programs`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pimsim.config import HwConfig
from pimsim.errors import UserError
from pimsim.report import system_label
from workloads.compiling import (
    check_context,
    compile_model,
    hw_config,
    pandas_module,
    system_programs,
)
from workloads.serving.metrics import ServeResult
from workloads.sweeps.analysis import SweepResult
from workloads.validation import (
    LogitRecorder,
    ValidationResult,
    build_images,
    functional_executor,
    prepare_functional,
    validate,
)

__all__ = ["CompareResult", "ServeResult", "SimResult", "SweepResult", "ValidationResult",
           "check_context", "compare", "compile_model", "hw_config", "serve", "simulate", "sweep",
           "system_programs", "validate"]


# ---------------------------------------------------------------- simulating

@dataclass
class SimResult:
    """One simulated run: ``report`` is the simulator's :class:`~pimsim.report.RunReport`
    (``pimsim run --json`` prints its ``to_dict()``); ``compiled`` and ``cfg`` what ran;
    ``logits`` every step's logits ``[steps, vocab]`` when kept (functional runs)."""

    report: Any
    compiled: Any = field(repr=False)
    cfg: HwConfig = field(repr=False)
    logits: Any = field(default=None, repr=False)

    @property
    def cycles(self) -> int:
        return self.report.cycles

    @property
    def latency_ms_per_token(self) -> float:
        return self.report.ms_per_token

    @property
    def energy_mj_per_token(self) -> float | None:
        return (self.report.energy or {}).get("mj_per_token")

    @property
    def tokens_per_s(self) -> float:
        return self.report.throughput_tokens_per_s

    def summary(self) -> str:
        return self.report.summary()

    def row(self) -> dict:
        """The headline numbers, units in the names."""
        r, sy = self.report, self.report.system or {}
        return {"model": r.model, "hw": r.hw, "devices": sy.get("devices", 1),
                "tp": sy.get("tp", 1), "pp": sy.get("pp", 1), "schedule": r.schedule,
                "prompt_tokens": r.prompt_tokens, "generated_tokens": r.generated_tokens,
                "cycles": r.cycles, "total_ms": r.ms_total,
                "latency_ms_per_token": r.ms_per_token,
                "energy_mj_per_token": self.energy_mj_per_token,
                "tokens_per_s": r.throughput_tokens_per_s, "row_hit_rate": r.row_hit_rate}

    def to_dict(self) -> dict:
        """JSON-ready: the headline numbers and the whole report (``report``)."""
        return {**self.row(), "report": self.report.to_dict()}

    def to_pandas(self) -> Any:
        """A one-row pandas DataFrame of :meth:`row`."""
        return pandas_module().DataFrame([self.row()])


def simulate(model: str | Any, hw: str | HwConfig = "pim-gpt", *, tokens: int = 32,
             prompt: int = 1, schedule: str = "serial", devices: int | None = None,
             tp: int | None = None, pp: int | None = None, tp_attention: str | None = None,
             seed: int = 0, functional: bool = False, exact: bool = False,
             keep_logits: bool = False, context: int | None = None,
             refresh: bool | None = None, skip_prompt: bool = False, fast: bool = True,
             cache: bool = True, show_progress: bool = False,
             batch: int | None = None, prefill: str = "token-by-token",
             routing=None, in_flight: bool = False) -> SimResult:
    """Simulate prompt processing and the generation of ``tokens`` tokens of ``model`` (a
    model argument as for :func:`compile_model`, or a Compiled from it) on ``hw``.

    ``functional``: compute the real numbers too (compiles with the weights; ``exact``: exact
    ASIC math; ``keep_logits``: keep every step's logits). ``skip_prompt``: simulate only the
    generating steps. ``fast=False``: the command-by-command SimPy executor. ``batch``:
    batched decode of that many sequences (:mod:`pimsim.batch`), sequence ``b``'s prompt drawn
    with seed ``seed + b`` (sequence 0's is the unbatched run's prompt; batch 1 is that run to
    the cycle); the report's ``extra["batch"]`` has the step time and the MAC-rate bound. On
    pipeline stages (``pp`` > 1) each of the ``pp`` micro-batches in flight is a batch of that
    many; ``in_flight``: ``batch`` is instead all the sequences in flight (vLLM's meaning),
    split into ``pp`` micro-batches as evenly as possible (:func:`pimsim.pipeline.micro_batches`).

    ``prompt``: the prompt's tokens, processed (prefilled) before the first generated token;
    ``prefill`` (:mod:`pimsim.prefill`) how: ``"token-by-token"`` (one decode step per token,
    as PIM-GPT and CENT do) or ``"batched"`` (one step of all of them, sharing the weight
    reads, causal attention among them). The report has the time to first token
    (``ttft_ms``: the prompt's step(s) and the first generated token) and per output token
    (``tpot_ms``), labelled with the mode.

    ``routing`` (a mixture-of-experts model, :class:`pimsim.moe.Routing`): where a timing run's
    expert choice comes from (a routing trace, or seeded uniform / skewed; default seeded
    uniform); a functional run routes with the model's own router (pass
    ``Routing.recorder()`` to keep its choices, ``.write(path)`` writes them as a trace)."""
    from pimsim.batch import check_batch
    from pimsim.generate import prompt_ids
    from pimsim.pipeline import run_system
    from pimsim.prefill import check_prefill
    from workloads.models.resolve import preset_context

    prefill = check_prefill(prefill)
    if keep_logits and not functional:
        raise UserError("keep_logits needs functional=True (timing runs compute no numbers)",
                        "pass functional=True")
    if batch is not None:
        batch = check_batch(batch)
        if keep_logits and batch > 1:
            raise UserError("keep_logits keeps one sequence's logits: not with a batch above 1",
                            "run without keep_logits, or with batch 1")
    cfg = hw_config(hw, devices=devices, tp=tp, pp=pp, tp_attention=tp_attention,
                    refresh=refresh)
    images = None
    if isinstance(model, str):
        name = model
        check_context(name, context or preset_context(name), prompt=prompt, tokens=tokens,
                      context_given=bool(context))
        if functional:  # the compile with the weights and the DRAM images, cached together
            c, images = prepare_functional(model, cfg, seed=seed, context=context, cache=cache,
                                           show=show_progress)
        else:
            c = compile_model(model, cfg, context=context, cache=cache,
                              show_progress=show_progress)
    else:
        c, name = model, model.spec.name
        if functional and not getattr(c.spec, "has_weights", True):
            raise UserError(f"{name} was compiled without its weights: a functional run "
                            f"computes numbers", "compile_model(..., weights=True)")
    check_context(name, c.spec.n_ctx, prompt=prompt, tokens=tokens, context_given=bool(context))
    programs = system_programs(c, cfg)
    ids = prompt_ids(prompt, c.spec.vocab, seed)
    batch_prompts = None if batch is None else \
        [prompt_ids(prompt, c.spec.vocab, seed + b) for b in range(batch)]
    if batch is not None:
        from pimsim.batch import BatchedProgram
        from pimsim.pipeline import micro_batches

        largest = micro_batches(batch, len(programs))[0] if in_flight else batch
        for p in programs:  # the KV capacity, before building executors
            BatchedProgram(p, largest)
    if functional and images is None:
        images = build_images(c, cfg, show=show_progress)
    fx = functional_executor(c, cfg, exact, images=images) if functional else None
    if fx is not None and keep_logits:
        fx = LogitRecorder(fx)
    recorder = fx if isinstance(fx, LogitRecorder) else None
    if fx is not None and batch is not None:  # every sequence its own KV caches: own images
        fx = [fx] + [functional_executor(c, cfg, exact,
                                         images=[[im.copy() for im in st] for st in images])
                     for _ in range(batch - 1)]
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=prompt + tokens - 1, unit="tok", desc=f"{c.spec.name} on {cfg.name}",
                   file=sys.stderr)
    try:
        rep = run_system(programs, cfg, prompt=ids, n_tokens=tokens, schedule=schedule,
                         fast=fast, functional=fx, skip_prompt=skip_prompt,
                         progress=(lambda _p: bar.update(1)) if bar else None,
                         batch_prompts=batch_prompts, prefill=prefill, routing=routing,
                         in_flight=in_flight)
    finally:
        if bar:
            bar.close()
    logits = None
    if recorder is not None:
        import numpy as np

        logits = np.stack(recorder.logits).astype(np.float32)
    return SimResult(rep, c, cfg, logits)


# ---------------------------------------------------------------- comparing with a GPU

@dataclass
class CompareResult:
    """PIM against a GPU, one :class:`~workloads.comparison.CompareRow` per model; with
    ``batches``, one :class:`~workloads.compare_batched.BatchRow` per model and batch size
    instead (``batch_rows``)."""

    rows: list = field(default_factory=list)
    batch_rows: list = field(default_factory=list)

    def table(self) -> str:
        if self.batch_rows:
            from workloads.compare_batched import batch_table

            return batch_table(self.batch_rows)
        from workloads.comparison import table

        return table(self.rows)

    def records(self) -> list[dict]:
        """One flat row per model (per model and batch size with ``batches``), units in the
        names."""
        if self.batch_rows:
            return [{"model": r.model, "hw": r.hw, "gpu": r.gpu, "batch": r.batch,
                     "position": r.position, "pim_tokens_per_s": r.pim_tokens_per_s,
                     "gpu_tokens_per_s": r.gpu_tokens_per_s,
                     "pim_latency_ms_per_token": r.pim_ms, "gpu_latency_ms_per_token": r.gpu_ms,
                     "pim_energy_mj_per_token": r.pim_j * 1e3,
                     "gpu_energy_mj_per_token": r.gpu_j * 1e3, "speedup": r.speedup,
                     "energy_efficiency": r.efficiency, "pim_method": r.pim_method,
                     "gpu_source": r.gpu_source, "gpu_power": r.gpu_power,
                     "gpu_power_source": r.gpu_power_source,
                     "pim_kv_fits": r.pim_kv_fits, "gpu_kv_fits": r.gpu_kv_fits}
                    for r in self.batch_rows]
        return [{"model": r.model, "hw": r.hw, "gpu": r.gpu, "position": r.position,
                 "pim_latency_ms_per_token": r.pim_ms, "gpu_latency_ms_per_token": r.gpu_ms,
                 "speedup": r.speedup, "pim_energy_mj_per_token": r.pim_j * 1e3,
                 "gpu_energy_mj_per_token": r.gpu_j * 1e3, "energy_efficiency": r.efficiency,
                 "pim_tokens_per_s": r.pim_tokens_per_s, "pim_power_w": r.pim_power_w,
                 "pim_devices": r.pim_devices, "pim_tp": r.pim_tp, "pim_pp": r.pim_pp,
                 "row_hit_rate": r.row_hit_rate, "gpu_source": r.gpu_source,
                 "gpu_power_source": r.gpu_power_source}
                for r in self.rows]

    def crossover(self) -> dict:
        """Per model, the smallest batch whose GPU tokens/s exceeds PIM's (None: none)."""
        from workloads.compare_batched import crossover

        return crossover(self.batch_rows)

    def to_dict(self) -> dict:
        """JSON-ready: ``rows`` as ``pimsim compare --json`` prints them; with batches also
        ``batch_rows`` (what ``--batch --json`` prints) and ``crossover``."""
        if self.batch_rows:
            return {"rows": [dataclasses.asdict(r) for r in self.rows],
                    "batch_rows": [dataclasses.asdict(r) for r in self.batch_rows],
                    "crossover": self.crossover()}
        return {"rows": [dataclasses.asdict(r) for r in self.rows]}

    def to_pandas(self) -> Any:
        """A pandas DataFrame of :meth:`records`."""
        return pandas_module().DataFrame(self.records())


COMPARE_PROMPT = 128  # compare's default context (prompt tokens) before the timed tokens


def compare(models: list[str] | str, hw: str | HwConfig = "pim-gpt", gpu: str = "T4", *,
            prompt: int | None = None, tokens: int = 8, schedule: str = "serial",
            devices: int | None = None, tp: int | None = None, pp: int | None = None,
            tp_attention: str | None = None, gpu_tp: int = 1, cache: bool = True,
            show_progress: bool = False, batches: Any = None,
            gpu_power: str = "util", pim_cost: str = "batched") -> CompareResult:
    """Latency and energy per token of ``models`` on ``hw`` (simulated, the generating steps
    after a ``prompt``-token context) against ``gpu``: T4, A100, H100, H200 (the analytic
    model; ``gpu_tp`` GPUs in tensor parallelism) or a measured baseline JSON file.
    ``prompt``: the context before the timed tokens (default :data:`COMPARE_PROMPT`).

    GPU energy: a measured file's measured board power; a modelled GPU's power model
    ``gpu_power``: ``"util"`` (the default: utilisation power, fitted to the shipped measurement
    of that GPU where there is one) or ``"board"`` (the datasheet board power throughout, an
    upper bound); every row says which (``gpu_power_source``).

    ``batches`` (batch sizes, or a comma-separated string): instead, tokens/s and mJ/token per
    batch size and the crossover batch (:mod:`workloads.compare_batched`; a modelled GPU with
    ``gpu_power`` ``util``, the default, or ``board``; ``pim_cost`` ``"batched"``, the default:
    one batched PIM decode step of the batch, or ``"serial"``: its sequences one after
    another)."""
    from workloads import comparison as C
    from workloads.models.resolve import preset_context

    models = [models] if isinstance(models, str) else list(models)
    cfg = hw_config(hw, devices=devices, tp=tp, pp=pp, tp_attention=tp_attention)
    if cfg.energy is None:
        raise UserError(f"{cfg.name} has no [energy] table", "compare needs a config with one")
    prompt_default = prompt is None
    prompt = COMPARE_PROMPT if prompt is None else prompt
    for m in models:
        check_context(m, preset_context(m), prompt=prompt, tokens=tokens,
                      prompt_default=prompt_default)
    C.check_gpu(gpu, models, gpu_tp)  # an unknown GPU, a bad baseline file or gpu_tp: fail now
    if batches is not None:
        from workloads.serving.costs import check_pim_cost

        check_pim_cost(pim_cost)
        from workloads import compare_batched as CB

        return CompareResult(batch_rows=CB.compare_batches(
            models, cfg, gpu, CB.parse_batches(batches), prompt=prompt, tokens=tokens,
            schedule=schedule, cache=cache, show=show_progress, tp=gpu_tp, power=gpu_power,
            pim=pim_cost))
    rows = C.compare_rows(models, cfg, gpu, prompt=prompt, tokens=tokens, schedule=schedule,
                          cache=cache, show=show_progress, tp=gpu_tp, power=gpu_power)
    return CompareResult(rows)


# ---------------------------------------------------------------- serving a request stream

def serve(model: str | Any, hw: str | HwConfig = "pim-gpt", *,
          requests: Any = None, num_prompts: int = 16, request_rate: float = math.inf,
          input_len: int = 32, output_len: int = 32, length_dist: str = "fixed", seed: int = 0,
          max_num_seqs: int = 256, max_num_batched_tokens: int = 2048, cost: Any = "pim",
          kv_capacity_tokens: int | None = None, devices: int | None = None,
          tp: int | None = None, pp: int | None = None, tp_attention: str | None = None,
          gpu_tp: int = 1, schedule: str = "serial", cache: bool = True,
          show_progress: bool = False, pim_cost: str = "batched",
          context: int | None = None, prefill: str | None = None, xpu: str | None = None,
          link: str = "pcie5", placement: str = "attention",
          overlap: bool = False, jobs: int = 1) -> ServeResult:
    """Serve a request stream with continuous batching (:mod:`workloads.serving`) and report
    vLLM ``benchmark_serving``'s metrics.

    ``requests``: a JSONL file (see :mod:`workloads.serving.requests`), a list of
    :class:`~workloads.serving.requests.Request`, or None for a synthetic stream of
    ``num_prompts`` requests at ``request_rate`` per second (``inf``: all at t = 0; else
    Poisson, seeded by ``seed``), ``input_len`` / ``output_len`` tokens or ``length_dist=
    "sharegpt"``. ``cost``: ``"pim"`` (the simulator; ``pim_cost`` ``"batched"``, the default:
    a step's decode sequences as one batched PIM step,
    :class:`~workloads.serving.costs.PimBatchedCost`; ``"serial"``: sequences one after
    another, :class:`~workloads.serving.costs.PimSerialCost`), ``"gpu:NAME"`` (the analytic GPU
    model with batching, ``gpu_tp`` GPUs: :class:`~workloads.serving.costs.GpuModelCost`) or any
    :class:`~workloads.serving.costs.StepCost`. ``prefill`` (PIM): ``"batched"`` (the default of
    the batched cost: a step's prompt chunks as one batched step) or ``"token-by-token"`` (the
    serial cost's only way). ``kv_capacity_tokens``: None for the cost's
    own figure (from the compiled program on PIM, from GPU memory on a GPU). ``context`` (PIM,
    a preset name): compile with the KV caches reserved for this many tokens instead of the
    model's own context (more sequences' KV regions fit a batched step).
    ``max_num_seqs`` / ``max_num_batched_tokens``: vLLM's scheduler limits.

    ``xpu`` (a GPU of the analytic model, e.g. ``"H100"``): an xPU beside the PIM system of
    ``hw``, joined by ``link`` (:data:`workloads.xpu.link.LINKS`); ``placement`` says what runs
    where (``"attention"``: AttAcc's attention on PIM; ``"prefill"``: IANUS's prefill on the
    xPU; ``"pim"``; ``"xpu"``) and ``overlap`` interleaves two sub-batches
    (:class:`workloads.xpu.cost.XpuPimCost`); the result's ``config["xpu"]`` holds each side's
    busy time and energy.

    ``jobs`` (the batched PIM cost): processes that simulate its batched steps, forked from
    this one (:mod:`workloads.serving.parallel`; 0: one per core); any ``jobs`` gives the same
    numbers."""
    from workloads.serving import costs as C
    from workloads.serving.requests import Request, load_jsonl, sort_by_arrival, synthetic
    from workloads.serving.scheduler import SchedulerConfig, simulate_serving

    C.check_pim_cost(pim_cost)
    prefill = C.check_pim_prefill(pim_cost, prefill)
    if context is not None and (not isinstance(context, int) or isinstance(context, bool)
                                or context < 1):
        raise UserError(f"context {context!r} is not a whole number >= 1",
                        "give the tokens to reserve the KV caches for, or leave it out")

    sched = SchedulerConfig(max_num_seqs=max_num_seqs,
                            max_num_batched_tokens=max_num_batched_tokens)
    if kv_capacity_tokens is not None and (not isinstance(kv_capacity_tokens, int)
                                           or isinstance(kv_capacity_tokens, bool)
                                           or kv_capacity_tokens < 1):
        raise UserError(f"kv_capacity_tokens {kv_capacity_tokens!r} is not a whole number >= 1",
                        "give the KV-cache tokens the system holds, or leave it out")

    def stream(n_ctx: int | None):
        return synthetic(num_prompts, request_rate=request_rate, input_len=input_len,
                         output_len=output_len, length_dist=length_dist, seed=seed,
                         max_total_len=n_ctx)

    # the stream first: bad input fails before anything is compiled
    reqs = None
    if requests is None:
        if length_dist != "sharegpt":  # drawn after the cost: redrawn to fit its context
            reqs = stream(None)
        source = {"synthetic": {"num_prompts": num_prompts, "request_rate": request_rate,
                                "input_len": input_len, "output_len": output_len,
                                "length_dist": length_dist, "seed": seed}}
    elif isinstance(requests, (str, Path)):
        reqs = load_jsonl(requests)
        source = {"file": str(requests)}
    elif isinstance(requests, (list, tuple)) and all(isinstance(r, Request) for r in requests):
        if not requests:
            raise UserError("no requests to serve", "give at least one request")
        reqs = sort_by_arrival(list(requests))
        source = {"list": len(reqs)}
    else:
        raise UserError(f"requests {type(requests).__name__} is not a JSONL file or a list of "
                        f"Request", "give a path, a list of workloads.serving.Request or None")

    name = model if isinstance(model, str) else model.spec.name
    cfg = None
    if xpu is not None:
        from workloads.xpu.cost import XpuPimCost

        if not isinstance(model, str):
            raise UserError("an xPU system needs the model's preset name (the xPU's model)",
                            "pass the model's preset name")
        if cost != "pim":
            raise UserError("xpu with a GPU cost", "give xpu (the xPU beside PIM) or a "
                            "gpu:NAME cost (a GPU alone), not both")
        cfg = hw_config(hw, devices=devices, tp=tp, pp=pp, tp_attention=tp_attention)
        c = compile_model(model, cfg, context=context, cache=cache, show_progress=show_progress)
        step_cost = XpuPimCost(c, cfg, model, xpu=xpu, link=link, placement=placement,
                               overlap=overlap, schedule=schedule, prefill=prefill,
                               kv_capacity_tokens=kv_capacity_tokens)
        system = (f"{xpu} + " + system_label(cfg.name, cfg.system.devices, cfg.system.tp,
                                             cfg.system.pp) + f" over {link}")
    elif isinstance(cost, str) and cost == "pim":
        cfg = hw_config(hw, devices=devices, tp=tp, pp=pp, tp_attention=tp_attention)
        if context is not None and not isinstance(model, str):
            raise UserError("context reserves the KV caches when compiling a preset, not for "
                            "a compiled model", "pass the preset name, or compile it with "
                            "compile_model(..., context=N)")
        c = model if not isinstance(model, str) else \
            compile_model(model, cfg, context=context, cache=cache, show_progress=show_progress)
        step_cost = C.pim_cost(pim_cost, c, cfg, schedule=schedule,
                               kv_capacity_tokens=kv_capacity_tokens, prefill=prefill,
                               jobs=jobs)
        system = system_label(cfg.name, cfg.system.devices, cfg.system.tp, cfg.system.pp)
    elif isinstance(cost, str) and cost.lower().startswith("gpu:"):
        if not isinstance(model, str):
            raise UserError("the GPU cost needs a preset name, not a compiled model",
                            "pass the model's preset name")
        step_cost = C.GpuModelCost(cost.split(":", 1)[1], model, tp=gpu_tp,
                                   kv_capacity_tokens=kv_capacity_tokens)
        system = step_cost.name[4:] + (f" x {gpu_tp}" if gpu_tp > 1 else "")
    elif isinstance(cost, str):
        raise UserError(f"cost {cost!r} is not known",
                        "use 'pim' or 'gpu:NAME' (NAME: T4, A100, H100, H200)")
    else:
        step_cost = cost
        system = getattr(cost, "name", type(cost).__name__)

    C.check_jobs(jobs)
    own_cost = step_cost is not cost  # made here: its worker processes are stopped here
    if reqs is None:
        reqs = stream(step_cost.n_ctx)

    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(r.output_len for r in reqs), unit="tok",
                   desc=f"serving {name} on {system}", file=sys.stderr)
    try:
        states, steps = simulate_serving(
            reqs, step_cost, sched, progress=bar.update if bar else None,
            context_label="the model's context" if context is None or cfg is None
            else "the reserved context (--context)")
    finally:
        if bar:
            bar.close()
        if own_cost and hasattr(step_cost, "close"):
            step_cost.close()
    from workloads.serving.metrics import RequestRecord, summarise

    if states and all(s.refused for s in states):
        raise UserError(f"every one of the {len(states)} requests was refused, so nothing was "
                        f"served; the first: {states[0].refused}",
                        "shorten the requests, or give the system more KV capacity or context "
                        "(--context, --kv-capacity, more devices)")
    recs = [RequestRecord.of(s) for s in states]
    config = {"model": name, "hw": cfg.name if cfg is not None else None, "system": system,
              "cost": step_cost.name, "cost_label": step_cost.label,
              "devices": step_cost.devices, "n_ctx": step_cost.n_ctx,
              "kv_capacity_tokens": step_cost.kv_capacity_tokens,
              "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
              "num_requests": len(reqs), "requests": source,
              "units": {"times": "s from the start of the stream", "latencies": "ms",
                        "throughput": "per s", "energy": "J (mJ per output token)",
                        "power": "W"}}
    if hasattr(step_cost, "busy_report"):
        config["xpu"] = step_cost.busy_report()
    return ServeResult(config, recs, steps, summarise(recs, steps, step_cost.devices))


# ---------------------------------------------------------------- sweeping

def sweep(spec: Any, db: str | Path | None = None, *, workers: int | None = None,
          cluster: str | None = None, progress: bool | None = None,
          log: Callable[[str], None] | None = None, max_points: int | None = None,
          connect_timeout_s: float | None = None, raise_on_error: bool = True):
    """Run a design-space sweep: ``spec`` is a spec file (``.toml``), a dict of the same keys or
    a :class:`~workloads.sweeps.spec.Spec`; results go to the SQLite store ``db`` (default: the
    spec's name + ``.db``), and points already finished there are not run again.

    ``workers``: local worker processes (default: the CPU count; 0 runs in this process);
    ``cluster``: a Dask scheduler address or ``local[:N]``. Returns a
    :class:`~workloads.sweeps.analysis.SweepResult` (``to_dict()``, ``to_pandas()``, ``summary()``).
    A point that fails unexpectedly raises a UserError naming it (``raise_on_error=False``: the
    result holds it with status ``error``; a re-run retries it)."""
    from workloads.sweeps.run import CONNECT_TIMEOUT_S, run_sweep
    from workloads.sweeps.spec import MAX_POINTS, Spec, load_spec, spec_from_dict

    mp = MAX_POINTS if max_points is None else max_points
    if isinstance(spec, Spec):
        s = spec
    elif isinstance(spec, dict):
        s = spec_from_dict(spec, max_points=mp)
    elif isinstance(spec, (str, Path)):
        s = load_spec(spec, max_points=mp)
    else:
        raise UserError(f"sweep spec {spec!r} is not a file, a dict or a Spec",
                        "give the path of a .toml spec, a dict of its keys, or a Spec")
    if db is None:
        db = f"{Path(spec).stem if isinstance(spec, (str, Path)) else s.name}.db"
    t0 = time.perf_counter()
    res = run_sweep(s, db, workers=workers, cluster=cluster, progress=progress, log=log,
                    connect_timeout_s=CONNECT_TIMEOUT_S if connect_timeout_s is None
                    else connect_timeout_s)
    if raise_on_error and res.counts["error"]:
        bad = res.df[res.df["status"] == "error"]
        first = bad.iloc[0]
        reason = (first.get("reason") or "").strip().splitlines()
        raise UserError(
            f"sweep {s.name}: {len(bad)} of {res.n_points} points failed (stored with status "
            f"'error' in {db} after {time.perf_counter() - t0:.1f} s), e.g. #{first['idx']}: "
            f"{reason[-1] if reason else 'no reason recorded'}",
            "fix the cause and run the sweep again (finished points are kept, failed ones are "
            "retried), or pass raise_on_error=False to inspect them")
    return res

