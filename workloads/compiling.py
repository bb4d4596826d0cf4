"""Compile a model for a PIM system: the hardware config and its system (devices, tensor
parallelism ``tp``, pipeline stages ``pp``: one carrier, the config's ``[system]`` section),
the one compile-with-cache path (on-disk cache and the sweep workers' in-process memo), the
context-length check, and the check that a program runs on the system it was compiled for.

Every layer above (validation, comparison, sweeps, the session API, the command line) compiles
through :func:`compile_model`; nothing else calls the compiler's pipeline directly."""

from __future__ import annotations

import threading
from typing import Any

from pimsim.config import HwConfig, load_config
from pimsim.errors import UserError
from pimsim.progress import status

__all__ = ["check_context", "compile_model", "compile_with_source", "hw_config", "pandas_module",
           "system_programs"]

# ---------------------------------------------------------------- the system

def hw_config(hw: str | HwConfig = "pim-gpt", *, devices: int | None = None,
              tp: int | None = None, pp: int | None = None, tp_attention: str | None = None,
              refresh: bool | None = None, ep: int | None = None,
              expert_parallel: bool = False) -> HwConfig:
    """The hardware config ``hw`` (a shipped name, a ``.toml`` path or a loaded config) with its
    ``[system]`` overridden by ``devices`` / ``tp`` / ``pp`` / ``tp_attention`` where given (see
    :func:`pimsim.system.resolve`; ``expert_parallel`` or ``ep``: the experts placed whole over
    the tensor-parallel devices, :mod:`pimsim.expert_parallel`); ``refresh=False`` turns DRAM
    refresh off."""
    from pimsim.system import apply_system, resolve

    if isinstance(hw, HwConfig):
        cfg = hw if refresh is None else hw.with_refresh(refresh)
    else:
        cfg = load_config(hw, refresh=refresh)
    sysm = resolve(devices, tp, pp, cfg.system, tp_attention, where=f"hardware config {cfg.name}",
                   ep=ep, expert_parallel=expert_parallel)
    return cfg if sysm == cfg.system else apply_system(cfg, sysm)


def system_programs(compiled: Any, cfg: HwConfig) -> list:
    """The stage programs of ``compiled`` to simulate on ``cfg``'s system; a UserError when the
    program was compiled for another tensor / pipeline parallelism than the config's
    ``[system]`` (:func:`pimsim.pipeline.check_system`, which the simulator applies too)."""
    from pimsim.pipeline import check_system

    programs = compiled.programs
    check_system(programs, cfg)
    return programs


def check_context(model: str, n_ctx: int | None, *, prompt: int | None = None,
                  tokens: int | None = None, pos: int | None = None,
                  pos_flag: str = "--pos", context_given: bool = False,
                  prompt_default: bool = False) -> None:
    """prompt + tokens (or a position) within the context; n_ctx None: not known yet.

    ``context_given``: ``n_ctx`` is the caller's ``--context``, not the model's own, so the
    message names that flag as the limit. ``prompt_default``: the prompt length is the
    command's default, not the user's ``--prompt``, so the message says so."""
    if n_ctx is None:
        return
    limit = f"the --context of {n_ctx}" if context_given else f"{model}'s context of {n_ctx}"
    if prompt is not None and tokens is not None and prompt + tokens - 1 > n_ctx:
        given = f"--prompt {prompt} (the default)" if prompt_default else f"--prompt {prompt}"
        fix = f"make prompt + tokens at most {n_ctx + 1}"
        if context_given:
            fix += " or raise --context"
        elif prompt_default:
            fix = f"give a shorter --prompt: prompt + tokens at most {n_ctx + 1}"
        raise UserError(
            f"{given} + --tokens {tokens} need {prompt + tokens - 1} decode steps, more "
            f"than {limit}", fix)
    if pos is not None and not 0 <= pos < n_ctx:
        where = f"the --context 0..{n_ctx - 1}" if context_given else f"{model}'s context 0..{n_ctx - 1}"
        raise UserError(f"{pos_flag} {pos} is outside {where}",
                        f"give a position in 0..{n_ctx - 1}")


# ---------------------------------------------------------------- compiling

_PREPARED: dict[str, Any] = {}  # model identity -> compiler.pipeline.Prepared (or the exception)
_LOWERED: dict[str, Any] = {}  # compile identity (model + config) -> Compiled (or the exception)
_MEMO_LOCK = threading.Lock()  # Dask workers may run tasks in threads


def _memo_compile(model: str, cfg: HwConfig):
    """The weightless compile of ``model`` on ``cfg``, kept in this process: the front end
    (torch.export, import, graph passes: the expensive part) once per model, the graph lowering
    once per model and config, both keyed by digests of everything they read
    (:mod:`workloads.identity`: a model file's content, every config value but ``[refresh]``).
    Failures are kept and raised again, except a model that cannot be resolved (a missing file,
    a module that cannot be imported): :class:`~workloads.models.resolve.ModelNotResolved`,
    tried again on the next call."""
    from compiler.pipeline import lower, prepare
    from pimsim.digest import digest
    from workloads.identity import hw_identity, model_identity
    from workloads.models.resolve import resolve_model

    ident = digest(model_identity(model))
    with _MEMO_LOCK:
        prep = _PREPARED.get(ident)
        if prep is None:
            src, name = resolve_model(model, weights=False)  # not kept: a missing file may come
            try:
                prep = prepare(src, name=name)
            except Exception as e:  # noqa: BLE001 - kept and raised below
                prep = e
            _PREPARED[ident] = prep
    if isinstance(prep, Exception):
        raise prep
    key = digest({"model": ident, "hw": hw_identity(cfg)})
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


def _quiet_if_hf(src):
    """transformers kept quiet while a Hugging Face model is exported and lowered
    (:func:`workloads.models.hf_quiet.quiet_hf`); any other source as it is."""
    import contextlib

    if type(src).__module__ != "workloads.models.hf_decode":
        return contextlib.nullcontext()
    from workloads.models.hf_quiet import quiet_hf

    return quiet_hf()


def compile_with_source(model: str, cfg: HwConfig, *, weights: bool = False, seed: int = 0,
             context: int | None = None, cache: bool = True, show: bool = False):
    """(Compiled, the resolved model source or None when it came from the cache)."""
    from workloads import compile_cache

    use_cache = cache and not weights
    if use_cache:
        c = compile_cache.load(model, cfg, context)
        if c is not None:
            return c, None
    what = "with its weights " if weights else ""
    with status(f"compiling {model} {what}for {cfg.name}", show):
        from compiler.pipeline import compile_model as compile_source
        from workloads.models.resolve import resolve_model

        src, name = resolve_model(model, weights=weights, seed=seed)
        with _quiet_if_hf(src):
            c = compile_source(src, cfg, name=name, n_ctx=context)
    if use_cache:
        compile_cache.store(model, cfg, c, context)
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
    return compile_with_source(model, cfg, weights=weights, seed=seed, context=context, cache=cache,
                    show=show_progress)[0]


def pandas_module():
    """pandas, for the result objects' ``to_pandas()``; a clear error if it is missing."""
    try:
        import pandas as pd
    except ImportError:
        raise UserError("to_pandas() needs pandas, which is not installed",
                        "pip install pandas, or use to_dict()") from None
    return pd
