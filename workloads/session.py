"""The library API of the workloads: compile a model for a PIM system, simulate it, validate its
numbers, compare it with a GPU, sweep a design space. The ``pimsim`` command line, the
notebooks, the examples and the tests all call these functions::

    from workloads import compile_model, simulate, validate, compare, sweep

    res = simulate("tiny", "pim-gpt", tokens=4)
    res.latency_ms_per_token, res.to_dict(), res.to_pandas()

The system a model runs on (devices, tensor parallelism ``tp``, pipeline stages ``pp``) has one
carrier: the hardware config's ``[system]`` section. Explicit ``devices / tp / pp`` arguments
give a new config (:func:`hw_config`); a model is compiled for the config's system, and a
program compiled for one system is refused on another (:func:`system_programs`).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pimsim.config import HwConfig, load_config
from pimsim.errors import UserError
from pimsim.progress import status
from workloads.sweeps.run import SweepResult
from workloads.validation import LogitRecorder, ValidationResult, functional_executor, validate

__all__ = ["CompareResult", "SimResult", "SweepResult", "ValidationResult", "check_context",
           "compare", "compile_model", "hw_config", "simulate", "sweep", "system_programs",
           "validate"]


# ---------------------------------------------------------------- the system

def hw_config(hw: str | HwConfig = "pim-gpt", *, devices: int | None = None,
              tp: int | None = None, pp: int | None = None, tp_attention: str | None = None,
              refresh: bool | None = None) -> HwConfig:
    """The hardware config ``hw`` (a shipped name, a ``.toml`` path or a loaded config) with its
    ``[system]`` overridden by ``devices`` / ``tp`` / ``pp`` / ``tp_attention`` where given (see
    :func:`pimsim.system.resolve`); ``refresh=False`` turns DRAM refresh off."""
    from pimsim.system import resolve

    if isinstance(hw, HwConfig):
        cfg = hw if refresh is None else hw.with_refresh(refresh)
    else:
        cfg = load_config(hw, refresh=refresh)
    sysm = resolve(devices, tp, pp, cfg.system, tp_attention)
    return cfg if sysm == cfg.system else dataclasses.replace(cfg, system=sysm)


def system_programs(compiled: Any, cfg: HwConfig) -> list:
    """The stage programs of ``compiled`` to simulate on ``cfg``'s system; a UserError when the
    program was compiled for another tensor / pipeline parallelism than the config's
    ``[system]`` (the simulator reads tp and pp from the programs)."""
    programs = compiled.programs
    tp, pp = programs[0].tp, len(programs)
    sy = cfg.system
    if (tp, pp) != (sy.tp, sy.pp):
        raise UserError(
            f"the program was compiled for tp {tp} x pp {pp}, but the system of {cfg.name} is "
            f"tp {sy.tp} x pp {sy.pp}",
            f"compile for the config you simulate (compile_model(model, cfg) with the same cfg), "
            f"or give both the same tp / pp")
    return programs


def check_context(model: str, n_ctx: int | None, *, prompt: int | None = None,
                  tokens: int | None = None, pos: int | None = None,
                  pos_flag: str = "--pos") -> None:
    """prompt + tokens (or a position) within the model's context; n_ctx None: not known yet."""
    if n_ctx is None:
        return
    if prompt is not None and tokens is not None and prompt + tokens - 1 > n_ctx:
        raise UserError(
            f"--prompt {prompt} + --tokens {tokens} need {prompt + tokens - 1} decode steps, more "
            f"than {model}'s context of {n_ctx}",
            f"make prompt + tokens at most {n_ctx + 1}")
    if pos is not None and not 0 <= pos < n_ctx:
        raise UserError(f"{pos_flag} {pos} is outside {model}'s context 0..{n_ctx - 1}",
                        f"give a position in 0..{n_ctx - 1}")


# ---------------------------------------------------------------- compiling

_PREPARED: dict[str, Any] = {}  # model -> compiler.pipeline.Prepared (or the exception raised)
_LOWERED: dict[tuple, Any] = {}  # (model, organization, pim, tp, pp) -> Compiled (or exception)
_MEMO_LOCK = threading.Lock()  # Dask workers may run tasks in threads


def _memo_compile(model: str, cfg: HwConfig):
    """The weightless compile of ``model`` on ``cfg``, kept in this process: the front end
    (torch.export, import, graph passes: the expensive part) once per model, the graph lowering
    once per (model, organization, PIM units, tp, pp). Failures are kept and raised again."""
    from compiler.pipeline import lower, prepare
    from workloads.models.resolve import resolve_model
    from workloads.sweeps.store import canonical_json

    with _MEMO_LOCK:
        prep = _PREPARED.get(model)
        if prep is None:
            try:
                src, name = resolve_model(model, weights=False)
                prep = prepare(src, name=name)
            except Exception as e:  # noqa: BLE001 - kept and raised below
                prep = e
            _PREPARED[model] = prep
    if isinstance(prep, Exception):
        raise prep
    key = (model, canonical_json(dataclasses.asdict(cfg.org)),
           canonical_json(dataclasses.asdict(cfg.pim)), cfg.system.tp, cfg.system.pp)
    with _MEMO_LOCK:
        got = _LOWERED.get(key)
        if got is None:
            try:
                got = lower(prep, cfg)
            except Exception as e:  # noqa: BLE001
                got = e
            _LOWERED[key] = got
    if isinstance(got, Exception):
        raise got
    return got


def _compile(model: str, cfg: HwConfig, *, weights: bool = False, seed: int = 0,
             context: int | None = None, cache: bool = True, show: bool = False):
    """(Compiled, the resolved model source or None when it came from the cache)."""
    from workloads import compile_cache

    use_cache = cache and not weights and context is None
    if use_cache:
        c = compile_cache.load(model, cfg)
        if c is not None:
            return c, None
    what = "with its weights " if weights else ""
    with status(f"compiling {model} {what}for {cfg.name}", show):
        from compiler.pipeline import compile_model as compile_source
        from workloads.models.resolve import resolve_model

        src, name = resolve_model(model, weights=weights, seed=seed)
        c = compile_source(src, cfg, name=name, n_ctx=context)
    if use_cache:
        compile_cache.store(model, cfg, c)
    return c, src


def compile_model(model: str, hw: str | HwConfig = "pim-gpt", *, devices: int | None = None,
                  tp: int | None = None, pp: int | None = None, tp_attention: str | None = None,
                  weights: bool = False, seed: int = 0, context: int | None = None,
                  cache: bool = True, memo: bool = False, show_progress: bool = False):
    """Compile ``model`` (a preset, an ``.onnx`` file, a folder or ``module:attribute``) for the
    system of ``hw`` (:func:`hw_config` applies ``devices / tp / pp``); returns the compiler's
    :class:`~compiler.pipeline.Compiled` (``.program``, ``.programs``, ``.spec``, ``.mapping``).

    ``weights``: compile with the weights (needed to compute numbers; never cached).
    ``context``: reserve the KV caches for this many tokens instead of the model's own.
    ``cache``: use the compiled-program cache on disk (:mod:`workloads.compile_cache`) for a
    weightless compile. ``memo``: keep the front end and the lowering in this process (many
    configs of one model, as in a sweep)."""
    cfg = hw_config(hw, devices=devices, tp=tp, pp=pp, tp_attention=tp_attention)
    if memo and not weights and context is None:
        return _memo_compile(model, cfg)
    return _compile(model, cfg, weights=weights, seed=seed, context=context, cache=cache,
                    show=show_progress)[0]


# ---------------------------------------------------------------- simulating

def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise UserError("to_pandas() needs pandas, which is not installed",
                        "pip install pandas, or use to_dict()") from None
    return pd


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
        return _pandas().DataFrame([self.row()])


def simulate(model: str | Any, hw: str | HwConfig = "pim-gpt", *, tokens: int = 32,
             prompt: int = 1, schedule: str = "serial", devices: int | None = None,
             tp: int | None = None, pp: int | None = None, tp_attention: str | None = None,
             seed: int = 0, functional: bool = False, exact: bool = False,
             keep_logits: bool = False, context: int | None = None,
             refresh: bool | None = None, skip_prompt: bool = False, fast: bool = True,
             cache: bool = True, show_progress: bool = False) -> SimResult:
    """Simulate prompt processing and the generation of ``tokens`` tokens of ``model`` (a
    model argument as for :func:`compile_model`, or a Compiled from it) on ``hw``.

    ``functional``: compute the real numbers too (compiles with the weights; ``exact``: exact
    ASIC math; ``keep_logits``: keep every step's logits). ``skip_prompt``: simulate only the
    generating steps. ``fast=False``: the command-by-command SimPy executor."""
    from pimsim.generate import prompt_ids
    from pimsim.pipeline import run_system
    from workloads.models.resolve import preset_context

    if keep_logits and not functional:
        raise UserError("keep_logits needs functional=True (timing runs compute no numbers)",
                        "pass functional=True")
    cfg = hw_config(hw, devices=devices, tp=tp, pp=pp, tp_attention=tp_attention,
                    refresh=refresh)
    if isinstance(model, str):
        name = model
        check_context(name, context or preset_context(name), prompt=prompt, tokens=tokens)
        c = _compile(model, cfg, weights=functional, seed=seed, context=context, cache=cache,
                     show=show_progress)[0]
    else:
        c, name = model, model.spec.name
        if functional and not getattr(c.spec, "has_weights", True):
            raise UserError(f"{name} was compiled without its weights: a functional run "
                            f"computes numbers", "compile_model(..., weights=True)")
    check_context(name, c.spec.n_ctx, prompt=prompt, tokens=tokens)
    programs = system_programs(c, cfg)
    ids = prompt_ids(prompt, c.spec.vocab, seed)
    fx = functional_executor(c, cfg, exact, show=show_progress) if functional else None
    if fx is not None and keep_logits:
        fx = LogitRecorder(fx)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=prompt + tokens - 1, unit="tok", desc=f"{c.spec.name} on {cfg.name}",
                   file=sys.stderr)
    try:
        rep = run_system(programs, cfg, prompt=ids, n_tokens=tokens, schedule=schedule,
                         fast=fast, functional=fx, skip_prompt=skip_prompt,
                         progress=(lambda _p: bar.update(1)) if bar else None)
    finally:
        if bar:
            bar.close()
    logits = None
    if isinstance(fx, LogitRecorder):
        import numpy as np

        logits = np.stack(fx.logits).astype(np.float32)
    return SimResult(rep, c, cfg, logits)


# ---------------------------------------------------------------- comparing with a GPU

@dataclass
class CompareResult:
    """PIM against a GPU, one :class:`~workloads.comparison.CompareRow` per model."""

    rows: list = field(default_factory=list)

    def table(self) -> str:
        from workloads.comparison import table

        return table(self.rows)

    def records(self) -> list[dict]:
        """One flat row per model, units in the names."""
        return [{"model": r.model, "hw": r.hw, "gpu": r.gpu, "position": r.position,
                 "pim_latency_ms_per_token": r.pim_ms, "gpu_latency_ms_per_token": r.gpu_ms,
                 "speedup": r.speedup, "pim_energy_mj_per_token": r.pim_j * 1e3,
                 "gpu_energy_mj_per_token": r.gpu_j * 1e3, "energy_efficiency": r.efficiency,
                 "pim_tokens_per_s": r.pim_tokens_per_s, "pim_power_w": r.pim_power_w,
                 "pim_devices": r.pim_devices, "pim_tp": r.pim_tp, "pim_pp": r.pim_pp,
                 "row_hit_rate": r.row_hit_rate, "gpu_source": r.gpu_source}
                for r in self.rows]

    def to_dict(self) -> dict:
        """JSON-ready: ``rows`` as ``pimsim compare --json`` prints them."""
        return {"rows": [dataclasses.asdict(r) for r in self.rows]}

    def to_pandas(self) -> Any:
        """A pandas DataFrame of :meth:`records`."""
        return _pandas().DataFrame(self.records())


def compare(models: list[str] | str, hw: str | HwConfig = "pim-gpt", gpu: str = "T4", *,
            prompt: int = 128, tokens: int = 8, schedule: str = "serial",
            devices: int | None = None, tp: int | None = None, pp: int | None = None,
            tp_attention: str | None = None, gpu_tp: int = 1, cache: bool = True,
            show_progress: bool = False) -> CompareResult:
    """Latency and energy per token of ``models`` on ``hw`` (simulated, the generating steps
    after a ``prompt``-token context) against ``gpu``: T4, A100, H100, H200 (the analytic
    model; ``gpu_tp`` GPUs in tensor parallelism) or a measured baseline JSON file."""
    from workloads import comparison as C
    from workloads.models.resolve import preset_context

    models = [models] if isinstance(models, str) else list(models)
    cfg = hw_config(hw, devices=devices, tp=tp, pp=pp, tp_attention=tp_attention)
    if cfg.energy is None:
        raise UserError(f"{cfg.name} has no [energy] table", "compare needs a config with one")
    for m in models:
        check_context(m, preset_context(m), prompt=prompt, tokens=tokens)
    C.check_gpu(gpu, models)  # an unknown GPU or a bad baseline file: fail now
    rows = C.compare_rows(models, cfg, gpu, prompt=prompt, tokens=tokens, schedule=schedule,
                          cache=cache, show=show_progress, tp=gpu_tp)
    return CompareResult(rows)


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
    :class:`~workloads.sweeps.run.SweepResult` (``to_dict()``, ``to_pandas()``, ``summary()``).
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

