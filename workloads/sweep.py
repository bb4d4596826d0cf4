"""Design-space sweeps: ``pimsim sweep SPEC.toml``.

A sweep is a set of points; every point is a full simulation of one model on one hardware
variant (compile + timed token generation, :func:`pimsim.generate.run_generation`). Points run in
parallel on local processes (``concurrent.futures.ProcessPoolExecutor``, spawn) or on a Dask
distributed cluster (``--cluster ADDRESS``), and each result is committed to a SQLite store
(:mod:`workloads.store`) as it arrives, so an interrupted sweep loses nothing that finished and a
re-run only runs what is missing.

Spec (TOML)::

    name = "channels"          # sweep name in the store (default: the file's stem)
    hw = "pim-gpt"             # base hardware config: shipped name or .toml path
    models = ["gpt2-medium"]   # or model = "..."; a list of several is a swept axis
    prompt = 128               # context before the timed tokens (default 1)
    tokens = 4                 # generated (timed) tokens per point (default 8)
    schedule = "serial"        # serial | overlap (a list sweeps it)
    skip_prompt = true         # default true: only the generating steps are simulated
    clock_scaling = "cycles"   # cycles | ns: what a changed tCK keeps (see below)

    [fixed]                    # hardware overrides applied to every point
    refresh = false

    [grid]                     # cartesian product of these axes
    channels = [4, 8, 16]
    banks = [8, 16]

    [[points]]                 # explicit points (each crossed with the grid, if any)
    bankgroups = 2
    banks_per_group = 8

Axes in ``[grid]`` / ``[[points]]`` are run settings (``model``, ``prompt``, ``tokens``,
``schedule``) or hardware parameters: the names of :data:`PARAMS` or any dotted path into the
config (``timing.nRCDRDMAC``, ``asic.op_passes.softmax``, ``energy.mac_unit_pj``).

``skip_prompt = true`` (the default) simulates only the steps that generate tokens, at positions
``prompt - 1`` onwards: a step's cost depends on its position, not on the cached values, so this
measures generation at a long context without simulating the prompt (the DRAM state, open rows
and refresh phase, starts fresh rather than warmed up). ``ms_per_token`` is the mean over the
generated tokens.

A point that cannot exist is recorded as ``invalid`` with the reason, not a crash: a bad value
(:class:`~pimsim.config.ConfigError`), a model that does not fit
(:class:`~compiler.passes.mapping.CapacityError`) or cannot be mapped
(:class:`~compiler.passes.mapping.MappingError`), an unknown model, a context overflow.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import re
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pimsim import __version__
from pimsim.config import ConfigError, HwConfig, config_from_dict, load_config
from pimsim.errors import UserError, read_text
from workloads.store import Store, canonical_json, point_key, to_csv, to_dataframe

MAX_POINTS = 10_000  # a spec that expands to more points needs --max-points (or max_points=)
CONNECT_TIMEOUT_S = 10.0  # default bound on reaching a Dask scheduler


class SpecError(UserError):
    """A malformed sweep spec (unknown key, wrong type, empty axis): nothing is run."""

    default_fix = "correct the sweep spec (the README's Design-space sweeps section)"


class PointError(UserError):
    """A point whose run settings are impossible (recorded as invalid)."""


SETTINGS = ("model", "prompt", "tokens", "schedule")
SCHEDULES = ("serial", "overlap")
SECTIONS = ("organization", "timing", "pim", "asic", "link", "refresh", "energy", "host",
            "controller", "system", "interconnect")
CLOCK_BOUND = {"nBL", "nCCDS", "nCCDL", "nWPRE", "nCLREG", "nCLGB", "nCWLREG", "nCWLGB"}


# ---------------------------------------------------------------- hardware parameters

def config_to_dict(cfg: HwConfig) -> dict:
    """A config as the TOML mapping that :func:`config_from_dict` reads back."""
    d: dict[str, Any] = {"name": cfg.name, "description": cfg.description}
    d["organization"] = dataclasses.asdict(cfg.org)
    d["timing"] = {"tCK_ps": cfg.timing.tCK_ps, **cfg.timing.cycles}
    for sec, obj in (("pim", cfg.pim), ("asic", cfg.asic), ("link", cfg.link),
                     ("refresh", cfg.refresh), ("energy", cfg.energy), ("host", cfg.host),
                     ("controller", cfg.controller)):
        if obj is not None:
            d[sec] = copy.deepcopy(dataclasses.asdict(obj))
    sy = cfg.system
    d["system"] = {"devices": sy.devices, "tp": sy.tp, "pp": sy.pp, "host": sy.host,
                   "attention": sy.attention}
    d["interconnect"] = dataclasses.asdict(sy.interconnect)
    return d


def canonical_hw(d: dict) -> dict:
    """The hardware values a result depends on, spelled one way: sections only (no name,
    description or source), float-typed fields as floats, dict keys sorted, an all-channels
    channel mask as 0."""
    from pimsim import config as C

    types = {"organization": C.Organization, "pim": C.Pim, "asic": C.Asic, "link": C.Link,
             "refresh": C.Refresh, "energy": C.Energy, "host": C.Host,
             "controller": C.Controller}
    out: dict[str, Any] = {}
    for sec in SECTIONS:
        if sec not in d:
            continue
        s = copy.deepcopy(d[sec])
        if sec in types and isinstance(s, dict):
            for f in dataclasses.fields(types[sec]):
                v = s.get(f.name)
                if f.type == "float" and isinstance(v, int) and not isinstance(v, bool):
                    s[f.name] = float(v)
            if sec == "organization":
                ch = s.get("channels")
                if isinstance(ch, int) and 0 < ch < 64 and s.get("channel_mask") == (1 << ch) - 1:
                    s["channel_mask"] = 0
        out[sec] = s
    return out


def _set(d: dict, path: str, v: Any) -> None:
    parts = path.split(".")
    if parts[0] not in SECTIONS:
        raise ConfigError(f"parameter {path!r}: {parts[0]!r} is not a config section "
                          f"({', '.join(SECTIONS)})")
    node = d.setdefault(parts[0], {})
    for p in parts[1:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            raise ConfigError(f"parameter {path!r}: [{'.'.join(parts[:-1])}] is not a table")
        node = nxt
    node[parts[-1]] = v


def _int(name: str, v: Any, lo: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"{name} = {v!r} must be an integer >= {lo}")
    return v


def _channels(d, v):
    d["organization"]["channels"] = v
    d["organization"]["channel_mask"] = 0  # all channels


def _devices(d, v):
    sy = d.setdefault("system", {})
    sy["devices"] = v
    sy.pop("tp", None)  # the point's tp (applied after) or devices / pp


def _banks(d, v):
    bg = d["organization"]["bankgroups"]
    v = _int("banks", v)
    if v % bg:
        raise ConfigError(f"banks = {v} is not a multiple of the {bg} bank groups "
                          f"(set bankgroups / banks_per_group instead)")
    d["organization"]["banks_per_group"] = v // bg


def _mac_lanes(d, v):
    v = _int("mac_lanes", v)
    o = d["organization"]
    eb = 2  # bf16 / fp16 elements
    row_bytes = o["columns"] * o["column_bytes"]
    if row_bytes % (v * eb):
        raise ConfigError(f"mac_lanes = {v}: a {row_bytes}-byte row is not a whole number of "
                          f"{v * eb}-byte columns")
    o["column_bytes"] = v * eb
    o["columns"] = row_bytes // (v * eb)
    d["pim"]["mac_lanes_per_bank"] = v


def _dram_clock(d, v):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
        raise ConfigError(f"dram_clock_mhz = {v!r} must be a positive number")
    d["timing"]["tCK_ps"] = round(1e6 / v)


def _path(path: str) -> Callable[[dict, Any], None]:
    return lambda d, v: _set(d, path, v)


# name -> (setter, meaning); applied in this order after the dotted paths
PARAMS: dict[str, tuple[Callable[[dict, Any], None], str]] = {
    "channels": (_channels, "organization.channels (channel_mask: all channels)"),
    "bankgroups": (_path("organization.bankgroups"), "organization.bankgroups"),
    "banks_per_group": (_path("organization.banks_per_group"), "organization.banks_per_group"),
    "banks": (_banks, "banks per channel: banks_per_group = banks / bankgroups"),
    "rows": (_path("organization.rows"), "organization.rows (rows per bank)"),
    "mac_lanes": (_mac_lanes, "pim.mac_lanes_per_bank, with the column width following "
                              "(column_bytes = 2 x lanes, same row bytes)"),
    "global_buffer_bytes": (_path("pim.global_buffer_bytes"), "pim.global_buffer_bytes"),
    "accumulators_per_bank": (_path("pim.accumulators_per_bank"), "pim.accumulators_per_bank"),
    "mapping": (_path("pim.mapping"), "pim.mapping (\"pim-gpt\" or \"reuse\")"),
    "tCK_ps": (_path("timing.tCK_ps"), "DRAM clock period (the data rate follows it)"),
    "dram_clock_mhz": (_dram_clock, "timing.tCK_ps = 1e6 / MHz"),
    "asic_clock_mhz": (_path("asic.clock_mhz"), "asic.clock_mhz"),
    "vector_lanes": (_path("asic.vector_lanes"), "asic.vector_lanes"),
    "link_bytes_per_cyc": (_path("link.bytes_per_cyc"), "link.bytes_per_cyc"),
    "link_latency_cyc": (_path("link.latency_cyc"), "link.latency_cyc"),
    "refresh": (_path("refresh.enabled"), "refresh.enabled (true / false)"),
    "devices": (_devices, "system.devices (PIM devices; tp = devices / pp unless given)"),
    "tp": (_path("system.tp"), "system.tp (tensor-parallel devices per stage)"),
    "pp": (_path("system.pp"), "system.pp (pipeline stages, sequences in flight)"),
}


def apply_params(base: dict, params: dict, clock_scaling: str = "cycles") -> dict:
    """The base config mapping with the point's hardware parameters applied (dotted paths
    first, then the named parameters in :data:`PARAMS` order). With ``clock_scaling = "ns"`` a
    changed tCK keeps every timing value's nanoseconds (rounded up to whole cycles) except the
    clock-bound burst and column spacings; with ``"cycles"`` (default) the cycle counts stay and
    everything scales with the clock. Raises ConfigError for a value that cannot be applied."""
    d = copy.deepcopy(base)
    for k, v in params.items():
        if "." in k:
            _set(d, k, v)
    for k, (setter, _) in PARAMS.items():
        if k in params:
            setter(d, params[k])
    tck0, tck = base["timing"]["tCK_ps"], d["timing"]["tCK_ps"]
    if clock_scaling == "ns" and isinstance(tck, int) and tck > 0 and tck != tck0:
        from pimsim.config import TIMING_FIELDS

        for n, c in list(d["timing"].items()):
            if n == "tCK_ps" or n in CLOCK_BOUND or not isinstance(c, int):
                continue
            if f"timing.{n}" in params:
                continue  # set explicitly by the point
            lo = TIMING_FIELDS.get(n, (0, ""))[0]
            d["timing"][n] = max(lo, math.ceil(c * tck0 / tck - 1e-9))
    return d


# ---------------------------------------------------------------- spec

@dataclass
class Point:
    idx: int
    params: dict  # the swept values (what varies), as the spec spells them
    model: str
    prompt: int
    tokens: int
    schedule: str
    skip_prompt: bool
    hw: dict  # canonical hardware values (or, for an invalid point, the base and the params)
    key: str
    hw_name: str
    error: str | None = None  # invalid before running: the reason

    @property
    def settings(self) -> dict:
        return {"prompt": self.prompt, "tokens": self.tokens, "schedule": self.schedule,
                "skip_prompt": self.skip_prompt}

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items()) or self.model

    def task(self) -> dict:
        """What a worker needs (plain data: pickles to processes and Dask workers)."""
        return {"key": self.key, "hw": self.hw, "hw_name": self.hw_name, "model": self.model,
                "version": __version__, **self.settings}


@dataclass
class Spec:
    name: str
    path: str
    hw: str
    base: dict
    clock_scaling: str
    points: list[Point]
    swept: list[str]  # axes with more than one value, in spec order
    raw: dict = field(default_factory=dict)


_TOP = {"name", "hw", "base", "model", "models", "prompt", "tokens", "schedule", "skip_prompt",
        "clock_scaling", "fixed", "grid", "points", "description"}


def _check_axis_name(k: str, where: str) -> None:
    if k in SETTINGS or k in PARAMS:
        return
    if "." in k and k.split(".")[0] in SECTIONS:
        return
    raise SpecError(f"{where}: unknown parameter {k!r}; use a run setting "
                    f"({', '.join(SETTINGS)}), a hardware parameter ({', '.join(PARAMS)}) or a "
                    f"dotted config path such as timing.nRCDRDMAC")


def load_spec(path: str | Path, *, name: str | None = None,
              max_points: int = MAX_POINTS) -> Spec:
    path = Path(path)
    try:
        text = read_text(path, "sweep spec")
    except UserError as e:
        raise SpecError(str(e)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path.name}: not valid TOML ({e})",
                        "fix the TOML syntax at that line") from None
    sname = raw.get("name", path.stem)
    if not isinstance(sname, str) or not sname.strip():
        raise SpecError(f"{path.name}: name = {sname!r} must be a non-empty string")
    return spec_from_dict(raw, name=name or sname, path=path, max_points=max_points)


def spec_from_dict(raw: dict, *, name: str = "sweep", path: str | Path | None = None,
                   max_points: int = MAX_POINTS) -> Spec:
    """The points of a spec mapping. ``max_points``: refuse (SpecError) a spec that expands to
    more points, checked on the axis lengths before anything is expanded."""
    where = Path(path).name if path else "<spec>"
    unknown = set(raw) - _TOP
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP)}")
    hw = raw.get("hw", raw.get("base", "pim-gpt"))
    if not isinstance(hw, str):
        raise SpecError(f"{where}: hw = {hw!r} must be a config name or path")
    hw_path = hw
    if path and (Path(path).parent / hw).is_file():
        hw_path = str(Path(path).parent / hw)
    try:
        base_cfg = load_config(hw_path)
    except ConfigError as e:
        raise SpecError(f"{where}: base hardware config: {e}") from None
    base = config_to_dict(base_cfg)
    clock_scaling = raw.get("clock_scaling", "cycles")
    if clock_scaling not in ("cycles", "ns"):
        raise SpecError(f"{where}: clock_scaling = {clock_scaling!r}; use 'cycles' or 'ns'")
    skip_prompt = raw.get("skip_prompt", True)
    if not isinstance(skip_prompt, bool):
        raise SpecError(f"{where}: skip_prompt = {skip_prompt!r} must be true or false")
    if "model" in raw and "models" in raw:
        raise SpecError(f"{where}: give model or models, not both")

    # top-level settings: a scalar is fixed, a list is an axis
    defaults = {"model": "gpt2-small", "prompt": 1, "tokens": 8, "schedule": "serial"}
    top_axes: dict[str, list] = {}
    for k in SETTINGS:
        v = raw.get(k if k != "model" else ("models" if "models" in raw else "model"))
        if v is None:
            continue
        if isinstance(v, list):
            if not v:
                raise SpecError(f"{where}: {k} is an empty list")
            if len(v) == 1:
                defaults[k] = v[0]
            else:
                top_axes[k] = v
        else:
            defaults[k] = v

    fixed = raw.get("fixed", {})
    if not isinstance(fixed, dict):
        raise SpecError(f"{where}: [fixed] must be a table")
    for k in fixed:
        _check_axis_name(k, f"{where} [fixed]")
    grid = raw.get("grid", {})
    if not isinstance(grid, dict):
        raise SpecError(f"{where}: [grid] must be a table of lists")
    axes: dict[str, list] = dict(top_axes)
    for k, v in grid.items():
        _check_axis_name(k, f"{where} [grid]")
        if k in axes:
            raise SpecError(f"{where}: {k} is both a top-level list and a [grid] axis")
        vals = v if isinstance(v, list) else [v]
        if not vals:
            raise SpecError(f"{where}: [grid] {k} is an empty list")
        axes[k] = vals
    plist = raw.get("points", [])
    if not isinstance(plist, list) or not all(isinstance(p, dict) for p in plist):
        raise SpecError(f"{where}: points must be an array of tables ([[points]])")
    for i, p in enumerate(plist):
        for k in p:
            _check_axis_name(k, f"{where} [[points]] #{i}")
            if k in axes:
                raise SpecError(f"{where}: [[points]] #{i} sets {k}, which is also a [grid] "
                                f"axis")

    n_points = math.prod(len(v) for v in axes.values()) * max(1, len(plist))
    if n_points > max_points:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in axes.items())
        if plist:
            sizes += f" x {len(plist)} [[points]]"
        raise SpecError(f"{where}: the spec expands to {n_points:,} points ({sizes}), more than "
                        f"the limit of {max_points:,}",
                        f"shrink the grid, or allow it with --max-points {n_points}")
    names = list(axes)
    combos = [dict(zip(names, vals)) for vals in itertools.product(*axes.values())]
    expanded = [{**c, **p} for c in combos for p in (plist or [{}])]
    # the swept parameters: whatever takes more than one value over the points
    seen: dict[str, list] = {}
    for e in expanded:
        for k, v in e.items():
            vs = seen.setdefault(k, [])
            if v not in vs:
                vs.append(v)
    swept = [k for k, vs in seen.items()
             if len(vs) > 1 or any(k not in e for e in expanded)]
    points: list[Point] = []
    for i, e in enumerate(expanded):
        merged = {**defaults, **fixed, **e}
        settings = {k: merged.pop(k) for k in SETTINGS}
        params = {k: e[k] for k in e}  # the point's own axis values, spec order
        points.append(_make_point(i, params, settings, merged, base, base_cfg.name,
                                  clock_scaling, skip_prompt))
    spec = Spec(name=name, path=str(path or ""), hw=hw, base=base, clock_scaling=clock_scaling,
                points=points, swept=swept, raw=raw)
    return spec


def _make_point(idx, params, settings, hw_params, base, hw_name, clock_scaling,
                skip_prompt) -> Point:
    error = None
    model, prompt, tokens, schedule = (settings[k] for k in SETTINGS)
    try:
        if not isinstance(model, str) or not model:
            raise PointError(f"model = {model!r} must be a model name")
        for n, v in (("prompt", prompt), ("tokens", tokens)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PointError(f"{n} = {v!r} must be an integer >= 1")
        if schedule not in SCHEDULES:
            raise PointError(f"schedule = {schedule!r}; use one of {', '.join(SCHEDULES)}")
        d = apply_params(base, hw_params, clock_scaling)
        cfg = config_from_dict(d, source=f"sweep point #{idx}")
        hw = canonical_hw(config_to_dict(cfg))
    except (ConfigError, PointError) as e:
        error = f"{type(e).__name__}: {e}"
        hw = {"base": canonical_hw(base), "params": hw_params}
    key = point_key(hw, str(model), {"prompt": prompt, "tokens": tokens, "schedule": schedule,
                                     "skip_prompt": skip_prompt}, __version__)
    return Point(idx, params, str(model), prompt, tokens, schedule, skip_prompt, hw, key,
                 hw_name, error)


# ---------------------------------------------------------------- worker side

_PREPARED: dict[str, Any] = {}  # model -> compiler.pipeline.Prepared (or the exception raised)
_PROGRAMS: dict[tuple, Any] = {}  # (model, organization, pim, tp, pp) -> (programs, model dims)
_CACHE_LOCK = threading.Lock()  # Dask workers may run tasks in threads


def _program(model: str, cfg: HwConfig):
    """The compiled stage programs of ``model`` on ``cfg``'s geometry and system, cached in this
    worker: the front end (torch.export, import, graph passes: the expensive part) once per
    model, the graph lowering once per (model, organization, PIM units, tp, pp). Returns
    (programs, model dimensions, seconds)."""
    from compiler.pipeline import lower, prepare
    from workloads.models import resolve_model

    t0 = time.perf_counter()
    with _CACHE_LOCK:
        prep = _PREPARED.get(model)
        if prep is None:
            try:
                src, name = resolve_model(model, weights=False)
                prep = prepare(src, name=name)
            except Exception as e:  # noqa: BLE001 - cached and re-raised below
                prep = e
            _PREPARED[model] = prep
    if isinstance(prep, Exception):
        raise prep
    key = (model, canonical_json(dataclasses.asdict(cfg.org)),
           canonical_json(dataclasses.asdict(cfg.pim)), cfg.system.tp, cfg.system.pp)
    with _CACHE_LOCK:
        got = _PROGRAMS.get(key)
        if got is None:
            try:
                c = lower(prep, cfg)
                got = (c.programs, c.spec)
            except Exception as e:  # noqa: BLE001
                got = e
            _PROGRAMS[key] = got
    if isinstance(got, Exception):
        raise got
    return got[0], got[1], time.perf_counter() - t0


def _invalid_types() -> tuple:
    """What makes a point invalid (recorded with the reason, never retried): bad input of any
    kind (the UserError family: a bad value, a model that cannot be read or is not a decoder)
    and a model that does not fit or cannot be mapped."""
    from pimsim.cli import user_error_types

    return user_error_types()


def run_point(task: dict) -> dict:
    """Simulate one point (in a worker process, a Dask worker, or in-process). Never raises:
    returns ``status`` ok / invalid / error with the metrics or the reason."""
    import socket
    import traceback

    out: dict[str, Any] = {"key": task["key"], "version": __version__,
                           "worker": f"{socket.gethostname()}:{os.getpid()}"}
    t0 = time.perf_counter()
    try:
        invalid = _invalid_types()
        cfg = config_from_dict(task["hw"], source=f"sweep point {task['key'][:8]}")
        cfg = dataclasses.replace(cfg, name=task.get("hw_name") or cfg.name)
        progs, spec, compile_s = _program(task["model"], cfg)
        prompt, tokens = task["prompt"], task["tokens"]
        if prompt + tokens - 1 > spec.n_ctx:
            raise PointError(f"prompt {prompt} + tokens {tokens} need {prompt + tokens - 1} "
                             f"decode steps, more than {task['model']}'s context of "
                             f"{spec.n_ctx}")
        from pimsim.pipeline import run_system

        t1 = time.perf_counter()
        rep = run_system(progs, cfg, prompt=[0] * prompt, n_tokens=tokens,
                         schedule=task["schedule"], skip_prompt=task["skip_prompt"])
        e = rep.energy or {}
        out.update(
            status="ok", reason=None, ms_per_token=rep.ms_per_token,
            tokens_per_s=rep.throughput_tokens_per_s,
            mj_per_token=e.get("mj_per_token"), row_hit_rate=rep.row_hit_rate,
            cycles=rep.cycles, ms_total=rep.ms_total, breakdown=rep.breakdown,
            per_op=rep.per_op, commands=rep.commands,
            energy={k: v * 1e3 for k, v in e.get("by_component", {}).items()},
            compile_s=compile_s, sim_s=time.perf_counter() - t1)
    except Exception as e:  # noqa: BLE001 - every outcome is recorded, none crashes the sweep
        try:
            is_invalid = isinstance(e, invalid)
        except NameError:
            is_invalid = False
        if is_invalid:
            out.update(status="invalid", reason=f"{type(e).__name__}: {e}")
        else:
            tb = traceback.format_exc().strip().splitlines()
            out.update(status="error", reason="\n".join(tb[-6:]))
        out["sim_s"] = time.perf_counter() - t0
    return out


def _init_worker(parent_pid: int, threads: int) -> None:
    """Local worker process: few threads each (the workers share the cores), ignore Ctrl-C
    (the driver handles it), and exit if the driver dies (a killed sweep leaves no orphans)."""
    import signal

    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[v] = str(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watchdog():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watchdog, daemon=True, name="pimsim-sweep-watchdog").start()


# ---------------------------------------------------------------- driver

@dataclass
class SweepResult:
    spec: Spec
    db: str
    n_points: int
    n_unique: int
    n_skipped: int  # already finished in the store
    n_run: int  # points this run finished (simulated, or recorded invalid)
    wall_s: float
    df: Any = None  # pandas DataFrame of the sweep's points (spec order)
    scaling: list[dict] = field(default_factory=list)
    pareto: dict = field(default_factory=dict)
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        s = self.df["status"] if self.df is not None and len(self.df) else []
        return {k: int(sum(1 for x in s if x == k)) for k in ("ok", "invalid", "error")}


def _row(p: Point, res: dict) -> dict:
    row = dict(res)
    row.update(model=p.model, prompt=p.prompt, tokens=p.tokens, schedule=p.schedule,
               skip_prompt=p.skip_prompt, hw_name=p.hw_name, hw=p.hw, params=p.params,
               version=__version__)
    if res.get("version") not in (None, __version__) and res.get("status") == "ok":
        row.update(status="error", reason=f"the worker runs pimsim {res['version']}, this "
                                          f"sweep {__version__}: results would not match the key")
    return row


def _sort_key(p: Point):
    hw = p.hw if p.error is None else {}
    return (p.model, canonical_json(hw.get("organization", {})), canonical_json(hw.get("pim", {})),
            p.idx)


def run_sweep(spec: Spec | str | Path, db: str | Path, *, workers: int | None = None,
              cluster: str | None = None, progress: bool | None = None,
              log: Callable[[str], None] | None = None,
              connect_timeout_s: float = CONNECT_TIMEOUT_S) -> SweepResult:
    """Run every point of ``spec`` not already finished in ``db``.

    ``workers``: local worker processes (default: the CPU count; 0 runs the points in this
    process). ``cluster``: a Dask scheduler address (``tcp://host:8786``), or ``local`` /
    ``local:N`` for a LocalCluster of N worker processes started here; ``workers`` is then
    ignored; ``connect_timeout_s`` bounds reaching it. ``progress``: tqdm bar on stderr
    (default: when stderr is a terminal).
    """
    log = log or (lambda s: print(s, file=sys.stderr))
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if cluster:
        parse_cluster(cluster)  # a malformed address fails before anything is written
    t_start = time.perf_counter()
    store = Store(db)
    try:
        store.register_sweep(spec.name, {"path": spec.path, "spec": spec.raw},
                             [(p.idx, p.key, p.params) for p in spec.points])
        by_key: dict[str, Point] = {}
        for p in spec.points:
            by_key.setdefault(p.key, p)
        done = store.finished(by_key)
        todo = [p for k, p in by_key.items() if k not in done]
        pre_invalid = [p for p in todo if p.error is not None]
        tasks = sorted((p for p in todo if p.error is None), key=_sort_key)
        connection = dask_client(cluster, connect_timeout_s) if cluster and tasks else None
        log(f"sweep {spec.name}: {len(spec.points)} points ({len(by_key)} distinct), "
            f"{len(done)} already in {db}, {len(todo)} to run"
            + ("" if not tasks else f" on Dask at {cluster}" if cluster
               else " in this process" if _n_workers(workers) == 0
               else f" on {_n_workers(workers)} local worker process(es)"))
        for p in pre_invalid:
            store.write(_row(p, {"key": p.key, "status": "invalid", "reason": p.error}))
        interrupted = False
        finished: list[str] = [p.key for p in pre_invalid]
        if tasks:
            bar = _bar(len(tasks), spec.name, progress)
            counts = {"ok": 0, "invalid": 0, "error": 0}

            def on_result(p: Point, res: dict) -> None:
                row = _row(p, res)
                store.write(row)  # committed now: survives a kill of the sweep
                counts[row["status"]] += 1
                finished.append(p.key)
                if bar is not None:
                    bar.set_postfix(counts, refresh=False)
                    bar.update(1)

            try:
                if cluster:
                    _run_dask(tasks, connection, on_result)
                elif _n_workers(workers) == 0:
                    for p in tasks:
                        on_result(p, run_point(p.task()))
                else:
                    _run_local(tasks, _n_workers(workers), on_result)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                if bar is not None:
                    bar.close()
        res = SweepResult(spec=spec, db=str(db), n_points=len(spec.points),
                          n_unique=len(by_key), n_skipped=len(done),
                          n_run=len(finished), wall_s=time.perf_counter() - t_start,
                          interrupted=interrupted)
        res.df = to_dataframe(store, spec.name)
    finally:
        store.close()
    res.scaling = scaling_table(res.df, spec.swept)
    res.pareto = pareto_fronts(res.df)
    return res


def _n_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    return max(0, int(workers))


def _bar(total: int, name: str, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="pt", desc=f"sweep {name}", file=sys.stderr)


def _run_local(tasks: list[Point], n: int, on_result) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    pending = list(tasks)
    threads = max(1, (os.cpu_count() or 1) // n)
    for attempt in range(3):  # a worker that dies (e.g. out of memory) breaks the pool
        ex = ProcessPoolExecutor(max_workers=min(n, len(pending)),
                                 mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(os.getpid(), threads))
        futs = {ex.submit(run_point, p.task()): p for p in pending}
        broken: list[Point] = []
        try:
            for f in as_completed(futs):
                p = futs[f]
                try:
                    on_result(p, f.result())
                except BrokenProcessPool:
                    broken.append(p)
        except KeyboardInterrupt:
            # stop our own workers (by their process objects); the pool then fails the
            # futures still pending, which nobody waits for any more
            for proc in list((getattr(ex, "_processes", None) or {}).values()):
                proc.terminate()
            ex.shutdown(wait=False)
            raise
        ex.shutdown(wait=True)
        pending = broken
        if not pending:
            return
    for p in pending:
        on_result(p, {"key": p.key, "status": "error",
                      "reason": "a worker process died while running this point "
                                "(BrokenProcessPool, 3 attempts)"})


def parse_cluster(address: str) -> tuple[str, int | None]:
    """("local", N) for ``local`` / ``local:N``, else (address, None) for a scheduler address
    (``tcp://host:port``, ``host:port``, ``tls://...``). UserError for a malformed one."""
    fix = "give local, local:N (N >= 1 worker processes) or a scheduler address tcp://HOST:PORT"
    a = address.strip()
    if a == "local":
        return "local", os.cpu_count() or 1
    if a.startswith("local:"):
        n = a.split(":", 1)[1]
        if not n.isdigit() or not 1 <= int(n) <= 1024:
            raise UserError(f"--cluster {address!r}: {n!r} is not a worker count in 1..1024", fix)
        return "local", int(n)
    m = re.fullmatch(r"(?:(tcp|tls|inproc|ucx|ws|wss)://)?"
                     r"([^\s/:]+|\[[0-9a-fA-F:]+\])(?::(\d+))?/?", a)
    if not m or (m.group(1) in (None, "tcp", "tls") and m.group(3) is None):
        raise UserError(f"--cluster {address!r} is not a Dask scheduler address", fix)
    if m.group(3) is not None and not 0 < int(m.group(3)) < 65536:
        raise UserError(f"--cluster {address!r}: port {m.group(3)} is out of range 1..65535", fix)
    return a if m.group(1) else f"tcp://{a}", None


def dask_client(address: str, connect_timeout_s: float = CONNECT_TIMEOUT_S):
    """(client, local cluster or None) for ``--cluster ADDRESS``; a UserError, within
    ``connect_timeout_s``, when the scheduler cannot be reached."""
    from dask.distributed import Client, LocalCluster

    where, n = parse_cluster(address)
    cluster = None
    if where == "local":
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        where = cluster.scheduler_address
    try:
        return Client(where, timeout=connect_timeout_s), cluster
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise UserError(f"cannot reach the Dask scheduler at {address!r} within "
                        f"{connect_timeout_s:g} s ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})",
                        "check the address and that the scheduler is running, or drop --cluster "
                        "to run on local processes") from None


def _run_dask(tasks: list[Point], connection, on_result) -> None:
    """Run the tasks on a Dask cluster (``connection`` from :func:`dask_client`). Dask ships
    the tasks and results with pickle: use only a cluster you trust (its workers run whatever
    the driver sends, and the driver unpickles what they return)."""
    from dask.distributed import as_completed

    client, cluster = connection
    try:
        futs = {}
        for p in tasks:
            f = client.submit(run_point, p.task(), key=f"pimsim-point-{p.key}", pure=False)
            futs[f] = p
        try:
            for f in as_completed(list(futs)):
                p = futs[f]
                try:
                    res = f.result()
                except Exception as e:  # noqa: BLE001 - a lost worker, a serialisation error
                    res = {"key": p.key, "status": "error",
                           "reason": f"dask: {type(e).__name__}: {e}"}
                on_result(p, res)
                f.release()
        except KeyboardInterrupt:
            client.cancel(list(futs))
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------- analysis

def _numeric(vals) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)


def _labels(df, cols: list[str]):
    """One string per row naming its values of ``cols`` (a group key; missing values too)."""
    import pandas as pd

    recs = df[cols].to_dict("records")
    return pd.Series([", ".join(f"{c}={_fmt(r[c])}" for c in cols) for r in recs],
                     index=df.index)


def scaling_table(df, swept: list[str]) -> list[dict]:
    """For every numeric swept parameter: the ratios between consecutive values with every
    other swept parameter fixed. ``latency_ratio`` = ms/token at the smaller value over ms/token
    at the larger (above 1: the larger value is faster); ``energy_ratio`` likewise for mJ."""
    out: list[dict] = []
    if df is None or not len(df) or "status" not in df:
        return out
    ok = df[df["status"] == "ok"]
    for p in swept:
        if p not in ok or not len(ok):
            continue
        vals = [v for v in ok[p].tolist() if v is not None and v == v]
        if len(set(vals)) < 2 or not _numeric(vals):
            continue
        others = [q for q in swept if q != p and q in ok]
        groups = ok.groupby(_labels(ok, others)) if others else [("", ok)]
        for _, g in groups:
            g = g[g[p].notna()].sort_values(p)
            rows = g.to_dict("records")
            for a, b in zip(rows, rows[1:]):
                if a[p] == b[p]:
                    continue
                out.append({
                    "param": p, "from": a[p], "to": b[p],
                    "value_ratio": b[p] / a[p] if a[p] else math.inf,
                    "latency_ratio": a["ms_per_token"] / b["ms_per_token"],
                    "energy_ratio": (a["mj_per_token"] / b["mj_per_token"]
                                     if a.get("mj_per_token") and b.get("mj_per_token")
                                     else None),
                    "fixed": {q: a[q] for q in others},
                    "idx": (int(a["idx"]), int(b["idx"])),
                })
    return out


def _workload(r) -> str:
    return f"{r['model']}, {r['prompt']} prompt + {r['tokens']} tokens"


def pareto_fronts(df) -> dict[str, list[int]]:
    """Per workload (model, prompt, tokens): the idx of the points no other point beats in both
    latency and energy per token, by increasing latency."""
    out: dict[str, list[int]] = {}
    if df is None or not len(df) or "status" not in df:
        return out
    ok = df[(df["status"] == "ok") & df["mj_per_token"].notna()]
    for wl, g in ok.groupby(ok.apply(_workload, axis=1)) if len(ok) else []:
        pts = sorted(zip(g["ms_per_token"], g["mj_per_token"], g["idx"]))
        front, best_e = [], math.inf
        for ms, mj, i in pts:
            if mj < best_e:
                front.append(int(i))
                best_e = mj
        out[wl] = front
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def summary(res: SweepResult) -> str:
    df, spec = res.df, res.spec
    c = res.counts
    rate = res.n_run / res.wall_s * 60 if res.wall_s > 0 else 0.0
    lines = [f"sweep {spec.name} ({spec.hw}, {res.db}): {res.n_points} points "
             f"({res.n_unique} distinct), {res.n_run} run now, {res.n_skipped} already stored; "
             f"{c['ok']} ok, {c['invalid']} invalid, {c['error']} errors; wall "
             f"{res.wall_s:.1f} s ({rate:.1f} points/min)"
             + ("; INTERRUPTED: re-run to finish" if res.interrupted else "")]
    cols = spec.swept or []
    head = ["#"] + cols + ["ms/token", "mJ/token", "tokens/s", "row hits", "status"]
    table = []
    for r in df.to_dict("records"):
        if not isinstance(r.get("status"), str):
            r["status"] = "not run"  # an interrupted sweep
        ok = r["status"] == "ok"
        table.append([str(r["idx"])] + [_fmt(r.get(k)) for k in cols] + [
            f"{r['ms_per_token']:.4f}" if ok else "-",
            f"{r['mj_per_token']:.4f}" if ok and r.get("mj_per_token") is not None else "-",
            f"{r['tokens_per_s']:,.1f}" if ok else "-",
            f"{r['row_hit_rate']:.2%}" if ok else "-",
            r["status"]])
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h)
              for i, h in enumerate(head)]
    lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for t in table:
        lines.append("  " + "  ".join(x.rjust(w) for x, w in zip(t, widths)))
    if res.scaling:
        lines.append("scaling (latency ratio = ms/token before / after: above 1 is faster; "
                     "other parameters fixed):")
        steps: dict[tuple, list[dict]] = {}
        for s in res.scaling:
            steps.setdefault((s["param"], s["from"], s["to"]), []).append(s)
        for (param, a, b), ss in steps.items():
            head = f"  {param} {_fmt(a)} -> {_fmt(b)} (x{ss[0]['value_ratio']:.3g}): "
            if len(ss) <= 4:  # each combination of the other parameters on its own line
                for s in ss:
                    fixed = ", ".join(f"{k}={_fmt(v)}" for k, v in s["fixed"].items())
                    er = f", energy ratio {s['energy_ratio']:.3f}" if s["energy_ratio"] else ""
                    lines.append(f"{head}latency ratio {s['latency_ratio']:.3f}{er}"
                                 + (f"  [{fixed}]" if fixed else ""))
                continue
            lr = sorted(s["latency_ratio"] for s in ss)
            er = sorted(s["energy_ratio"] for s in ss if s["energy_ratio"])
            med = lr[len(lr) // 2] if len(lr) % 2 else (lr[len(lr) // 2 - 1] + lr[len(lr) // 2]) / 2
            lines.append(f"{head}latency ratio {lr[0]:.3f} .. {lr[-1]:.3f} (median {med:.3f})"
                         + (f", energy ratio {er[0]:.3f} .. {er[-1]:.3f}" if er else "")
                         + f" over {len(ss)} combinations of the other parameters")
        inert = [p for p in dict.fromkeys(s["param"] for s in res.scaling)
                 if all(abs(s["latency_ratio"] - 1) < 1e-12
                        and (s["energy_ratio"] is None or abs(s["energy_ratio"] - 1) < 1e-12)
                        for s in res.scaling if s["param"] == p)]
        if inert:
            lines.append(f"  note: {', '.join(inert)} changed neither latency nor energy at any "
                         f"point (the simulator may not model {'it' if len(inert) == 1 else 'them'})")
    if res.pareto:
        lines.append("latency-energy Pareto front (point numbers, fastest first):")
        for wl, front in res.pareto.items():
            lines.append(f"  {wl}: " + ", ".join(f"#{i}" for i in front))
    bad = df[df["status"].isin(["invalid", "error"])] if len(df) else df
    if len(bad):
        lines.append("invalid / failed points:")
        for r in bad.to_dict("records"):
            label = ", ".join(f"{k}={_fmt(r.get(k))}" for k in cols) or r.get("model", "")
            reason = (r.get("reason") or "").strip().splitlines()
            lines.append(f"  #{r['idx']} ({label}) {r['status']}: {reason[-1] if reason else ''}")
    return "\n".join(lines)


# ---------------------------------------------------------------- plots

def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")


def _figure(w: float, h: float, ncols: int = 1):
    """A matplotlib Figure drawn by the Agg canvas: written to files, never shown, and no global
    backend switch (``matplotlib.use``) that would change an interactive session's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig, path: Path, dpi: int = 110) -> Path:
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as e:
        raise UserError(f"plot file {str(path)!r} cannot be written ({e.strerror or e})",
                        "choose a writable --plot directory") from None
    return path


def _models_title(df) -> str:
    models = list(dict.fromkeys(str(m) for m in df["model"].tolist())) if "model" in df else []
    if not models:
        return ""
    return models[0] if len(models) == 1 else f"{models[0]} and {len(models) - 1} more"


def plot(res_or_df, out_dir: str | Path, swept: list[str] | None = None) -> list[Path]:
    """PNG charts: latency and energy per token against each swept parameter (one line per
    combination of the other parameters, every point labelled with its value), and the
    latency-energy Pareto front (front points labelled with their parameter values). Titles
    name the model, the hardware and the workload; latency and energy axes start at zero."""
    if isinstance(res_or_df, SweepResult):
        df, swept = res_or_df.df, res_or_df.spec.swept
        hw = res_or_df.spec.hw
    else:
        df = res_or_df
        swept = swept if swept is not None else list(df.attrs.get("params", []))
        hw = ""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"plot directory {str(out)!r} cannot be created ({e.strerror or e})",
                        "choose a writable --plot directory") from None
    files: list[Path] = []
    ok = df[df["status"] == "ok"] if len(df) else df
    if not len(ok):
        return files
    model = _models_title(ok)
    where = f"{model} on {hw}" if hw else model
    wls = list(dict.fromkeys(ok.apply(_workload, axis=1))) if len(ok) else []
    wl_note = wls[0] if len(wls) == 1 else f"{len(wls)} workloads"
    for p in swept:
        if p not in ok:
            continue
        vals = []
        for v in ok[p].tolist():
            if v is not None and v == v and v not in vals:
                vals.append(v)
        if not vals:
            continue
        numeric = _numeric(vals)
        if numeric:
            vals.sort()
        pos = {str(v): i for i, v in enumerate(vals)}
        others = [q for q in swept if q != p and q in ok]
        fig, axes = _figure(11, 4.6, 2)
        groups = list(ok.groupby(_labels(ok, others))) if others else [("", ok)]
        for gname, g in groups:
            g = g[g[p].notna()]
            if g.empty:  # points that do not set this parameter
                continue
            g = g.sort_values(p) if numeric else g.iloc[
                sorted(range(len(g)), key=lambda i: pos[str(g[p].iloc[i])])]
            x = g[p].tolist() if numeric else [pos[str(v)] for v in g[p]]
            label = ", ".join(f"{q}={_fmt(v)}" for q, v in zip(others, g.iloc[0][others])) \
                if others else None
            for ax, col in zip(axes, ("ms_per_token", "mj_per_token")):
                if not g[col].notna().any():
                    continue
                ax.plot(x, g[col], "o-", label=label, lw=1.2, ms=4)
                if len(groups) <= 4:  # label every point with its value (readable when few)
                    for xi, yi, v in zip(x, g[col], g[p]):
                        if yi == yi:
                            ax.annotate(f"{p}={_fmt(v)}", (xi, yi), fontsize=6,
                                        xytext=(3, 4), textcoords="offset points")
        for ax, ylab in zip(axes, ("latency (ms / token)", "energy (mJ / token)")):
            ax.set_xlabel(p)
            ax.set_ylabel(ylab)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if numeric and min(vals) > 0 and max(vals) / min(vals) >= 4:
                ax.set_xscale("log", base=2)
                ax.set_xticks(vals, [_fmt(v) for v in vals])
            elif not numeric:
                ax.set_xticks(range(len(vals)), [str(v) for v in vals])
        if others and 1 < len(groups) <= 12:
            axes[1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{where}: latency and energy per token vs {p} ({wl_note})", fontsize=10)
        fig.tight_layout()
        files.append(_save(fig, out / f"vs_{_slug(p)}.png"))
    # Pareto front
    e = ok[ok["mj_per_token"].notna()]
    if len(e):
        fig, ax = _figure(7.5, 5.2)
        fronts = pareto_fronts(ok)
        wls_e = e.apply(_workload, axis=1)
        for wl, g in e.groupby(wls_e):
            sc = ax.scatter(g["ms_per_token"], g["mj_per_token"], s=18, alpha=0.6, label=wl)
            front = g.set_index("idx").loc[fronts.get(wl, [])]
            ax.step(front["ms_per_token"], front["mj_per_token"], where="post",
                    color=sc.get_facecolor()[0], lw=1.5)
            ax.scatter(front["ms_per_token"], front["mj_per_token"], s=40,
                       facecolors="none", edgecolors="k", lw=1.0)
            for i, r in front.iterrows():
                params = ", ".join(f"{q}={_fmt(r[q])}" for q in swept if q in r and q != "model")
                ax.annotate(f"#{i} {params}".strip(), (r["ms_per_token"], r["mj_per_token"]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("latency (ms / token)")
        ax.set_ylabel("energy (mJ / token)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{where}: latency-energy Pareto front\n(circled, labelled with their "
                     f"parameters; lower-left is better)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(_save(fig, out / "pareto.png"))
    return files


# ---------------------------------------------------------------- command line

def _jsonable(v: Any) -> Any:
    """A value JSON can hold: NaN / missing -> None, numpy scalars -> Python numbers."""
    if v is None:
        return None
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, TypeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    try:
        if v != v:  # pandas NA / NaT
            return None
    except (TypeError, ValueError):
        return None
    return str(v)


def json_rows(df) -> list[dict]:
    """One JSON-ready row per point of a sweep's DataFrame (spec order)."""
    if df is None or not len(df):
        return []
    return [{k: _jsonable(v) for k, v in r.items() if k != "hw_json"}
            for r in df.to_dict("records")]


def cli(args) -> int:
    """``pimsim sweep``: run, print the summary, export. Exit 0 when every point is ok or
    invalid, 1 if some failed unexpectedly (re-run to retry them), 130 when interrupted.
    With ``--json`` stdout holds exactly one JSON document (one row per point)."""
    from pimsim.errors import check_writable

    spec = load_spec(args.spec, max_points=args.max_points)
    db = args.db or f"{Path(args.spec).stem}.db"
    if args.list:
        if args.json:
            print(json.dumps([{"idx": p.idx, "key": p.key, "model": p.model,
                               "params": _jsonable(p.params), "invalid": p.error}
                              for p in spec.points], indent=1))
            return 0
        for p in spec.points:
            state = f"invalid: {p.error}" if p.error else ""
            print(f"#{p.idx} {p.key[:12]} {p.model} {p.label()} {state}")
        return 0
    check_writable(args.csv, "CSV file (--csv)")
    check_writable(args.plot, "plot directory (--plot)", directory=True)
    if args.report:
        res = stored_result(spec, db)
    else:
        check_writable(db, "results store (--db)")
        if args.cluster:
            parse_cluster(args.cluster)
        progress = True if args.progress else False if args.no_progress else None
        workers = 0 if args.in_process else args.workers
        res = run_sweep(spec, db, workers=workers, cluster=args.cluster, progress=progress,
                        connect_timeout_s=args.connect_timeout)
    if args.json:
        print(json.dumps({"name": spec.name, "db": str(db), "counts": res.counts,
                          "points": json_rows(res.df), "scaling": _jsonable(res.scaling),
                          "pareto": _jsonable(res.pareto), "wall_s": res.wall_s,
                          "interrupted": res.interrupted}, indent=1))
    else:
        print(summary(res))
    if args.csv:
        print(f"  wrote {to_csv(db, args.csv, spec.name)}", file=sys.stderr)
    if args.plot:
        for f in plot(res, args.plot):
            print(f"  wrote {f}", file=sys.stderr)
    if res.interrupted:
        return 130
    return 1 if res.counts["error"] else 0


def stored_result(spec: Spec, db: str | Path) -> SweepResult:
    """What ``db`` holds for ``spec``'s points, without running anything (the store is opened
    read-only: it may sit on a read-only medium)."""
    from workloads.store import rows_for_keys

    df = rows_for_keys(db, [(p.idx, p.key, p.params) for p in spec.points])
    res = SweepResult(spec=spec, db=str(db), n_points=len(spec.points),
                      n_unique=len({p.key for p in spec.points}),
                      n_skipped=int(df["status"].notna().sum()) if len(df) else 0, n_run=0,
                      wall_s=0.0, df=df)
    res.scaling = scaling_table(res.df, spec.swept)
    res.pareto = pareto_fronts(res.df)
    return res


def add_parser(sub) -> None:
    """Add ``sweep`` to the subcommands of :mod:`workloads.cli`."""
    from pimsim.cli import float_in, int_in

    s = sub.add_parser("sweep", help="run a design-space sweep into a SQLite store")
    s.add_argument("spec", help="sweep spec (.toml): base config, grid / points, models "
                                "(a module:attribute model is imported and run)")
    s.add_argument("--workers", type=int_in(1, 1024), default=None,
                   help="local worker processes, 1..1024 (default: CPU count)")
    s.add_argument("--in-process", action="store_true",
                   help="run the points in this process (no worker processes)")
    s.add_argument("--cluster", metavar="ADDRESS",
                   help="run on a Dask distributed scheduler (tcp://host:8786), or 'local[:N]' "
                        "for a LocalCluster of N processes. Dask moves tasks with pickle: "
                        "trusted clusters only")
    s.add_argument("--connect-timeout", type=float_in(0, 3600), default=CONNECT_TIMEOUT_S,
                   metavar="S",
                   help=f"seconds to reach the --cluster scheduler (default {CONNECT_TIMEOUT_S:g})")
    s.add_argument("--db", metavar="FILE", help="results store (default: SPEC's stem + .db)")
    s.add_argument("--max-points", type=int_in(1), default=MAX_POINTS, metavar="N",
                   help=f"refuse a spec of more than N points (default {MAX_POINTS:,})")
    s.add_argument("--plot", metavar="DIR", help="write latency / energy PNG charts here")
    s.add_argument("--csv", metavar="FILE", help="export the sweep's points as CSV")
    s.add_argument("--json", action="store_true",
                   help="print one JSON document instead of the summary: counts, one row per "
                        "point, scaling, Pareto front")
    s.add_argument("--list", action="store_true", help="list the points and exit")
    s.add_argument("--report", action="store_true",
                   help="print what the store holds for the spec, run nothing (read-only)")
    s.add_argument("--progress", action="store_true", help="progress bar even when not a tty")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
