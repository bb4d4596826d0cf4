"""What a sweep is: its TOML spec, parsed and expanded into points.

A sweep is a set of points; every point is a full simulation of one model on one hardware
variant (compile + timed token generation, :func:`pimsim.generate.run_generation`). Points run in
parallel on local processes (``concurrent.futures.ProcessPoolExecutor``, spawn) or on a Dask
distributed cluster (``--cluster ADDRESS``), and each result is committed to a SQLite store
(:mod:`workloads.sweeps.store`) as it arrives, so an interrupted sweep loses nothing that
finished and a re-run only runs what is missing.

Spec (TOML)::

    name = "channels"          # sweep name in the store (default: the file's stem)
    hw = "pim-gpt"             # base hardware config: shipped name or .toml path
    models = ["gpt2-medium"]   # or model = "..."; a list of several is a swept axis
    prompt = 128               # prompt tokens before the timed tokens, as in run (default 1)
    tokens = 4                 # generated (timed) tokens per point (default 8)
    schedule = "serial"        # serial | overlap (a list sweeps it)
    batch = 1                  # sequences decoded together (default 1; a list sweeps it)
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
``schedule``, ``batch``) or hardware parameters: the names of :data:`PARAMS` or any dotted path into the
config (``timing.nRCDRDMAC``, ``asic.op_passes.softmax``, ``energy.mac_unit_pj``).

``skip_prompt = true`` (the default) simulates only the steps that generate tokens, at positions
``prompt - 1`` onwards: a step's cost depends on its position, not on the cached values, so this
measures generation at a long context without simulating the prompt (the DRAM state, open rows
and refresh phase, starts fresh rather than warmed up). ``ms_per_token`` is the mean over the
generated tokens. ``batch = B`` decodes B sequences together in each step (``pimsim run
--batch``, :mod:`pimsim.batch`): ``ms_per_token`` is then the time of one step (each sequence's
time per token), ``tokens_per_s`` the batch's (B tokens a step) and ``mj_per_token`` the energy
per output token.

A point that cannot exist is recorded as ``invalid`` with the reason, not a crash: a bad value
(:class:`~pimsim.config.ConfigError`), a model that does not fit
(:class:`~compiler.passes.mapping.CapacityError`) or cannot be mapped
(:class:`~compiler.passes.mapping.MappingError`), a context overflow. A model that cannot be
resolved (a missing file, a module that cannot be imported) is recorded as an ``error`` and
tried again on resume, never as a final result.

Paths in a spec (``hw``, a model file or folder) are read against the spec's own folder
(:func:`pimsim.paths.resolve_relative`), and a model file is keyed by its content: a file
exported again under the same name is a new point, the same file under another spelling the
same one.
"""


from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from pimsim import __version__
from pimsim.config import ConfigError, HwConfig, config_from_dict, load_config
from pimsim.errors import UserError, read_text
from pimsim.paths import folder_of, resolve_relative
from workloads.sweeps.store import point_key

MAX_POINTS = 10_000  # a spec that expands to more points needs --max-points (or max_points=)


class SpecError(UserError):
    """A malformed sweep spec (unknown key, wrong type, empty axis): nothing is run."""

    default_fix = "correct the sweep spec (docs/guide.md's Design-space sweeps section)"


class PointError(UserError):
    """A point whose run settings are impossible (recorded as invalid)."""


SETTINGS = ("model", "prompt", "tokens", "schedule", "batch")
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
    if not cfg.pim.attention_accumulators:  # the default: the records stay
        d["pim"].pop("attention_accumulators")
    sy = cfg.system
    d["system"] = {"devices": sy.devices, "tp": sy.tp, "pp": sy.pp, "host": sy.host,
                   "attention": sy.attention, "host_sample_ns": sy.host_sample_ns,
                   "gqa": sy.gqa}
    if sy.lowering != "pimsim":  # written only when set: the records of the default stay
        d["system"]["lowering"] = sy.lowering
    if sy.placement != "dense":
        d["system"]["placement"] = sy.placement
    if sy.host_lines != "stage":
        d["system"]["host_lines"] = sy.host_lines
    if sy.device_channels:  # stages smaller than a device: the whole device's channels
        d["organization"].update(channels=sy.device_channels, channel_mask=0)
    d["interconnect"] = dataclasses.asdict(sy.interconnect)
    if sy.interconnect.unicast_bw_factor == 1.0:  # the default: the records stay
        d["interconnect"].pop("unicast_bw_factor")
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
    source: str | None = None  # where the worker finds the model (a path read against the spec)
    batch: int = 1  # sequences decoded together (pimsim.batch); 1: one sequence

    @property
    def settings(self) -> dict:
        out = {"prompt": self.prompt, "tokens": self.tokens, "schedule": self.schedule,
               "skip_prompt": self.skip_prompt}
        if self.batch != 1:  # batch 1 keeps the keys of stores written before the axis
            out["batch"] = self.batch
        return out

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items()) or self.model

    def task(self) -> dict:
        """What a worker needs (plain data: pickles to processes and Dask workers)."""
        return {"key": self.key, "hw": self.hw, "hw_name": self.hw_name,
                "model": self.source or self.model,
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
    folder = folder_of(path)
    hw_path = str(resolve_relative(hw, folder)) if Path(hw).suffix else hw  # else a shipped name
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
    defaults = {"model": "gpt2-small", "prompt": 1, "tokens": 8, "schedule": "serial", "batch": 1}
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
    models: dict[str, tuple[str, Any]] = {}  # spelling -> (source, key identity), once each
    for i, e in enumerate(expanded):
        merged = {**defaults, **fixed, **e}
        settings = {k: merged.pop(k) for k in SETTINGS}
        params = {k: e[k] for k in e}  # the point's own axis values, spec order
        points.append(_make_point(i, params, settings, merged, base, base_cfg.name,
                                  clock_scaling, skip_prompt, folder, models))
    spec = Spec(name=name, path=str(path or ""), hw=hw, base=base, clock_scaling=clock_scaling,
                points=points, swept=swept, raw=raw)
    return spec


def model_source(model: str, folder: Path | None) -> str:
    """Where the worker finds MODEL ``model`` of a spec in ``folder``: a preset, zoo name or
    ``module:attribute`` as it is; a path read against the spec's folder
    (:func:`pimsim.paths.resolve_relative`, as the spec's ``hw``)."""
    from workloads.identity import is_path_model

    if not is_path_model(model):
        return model
    p = resolve_relative(model, folder)
    if p.exists() or model.lower().endswith(".onnx") or "/" in model or "\\" in model:
        return str(p)
    return model  # an unknown name: the worker says so


def model_key(source: str) -> Any:
    """The model's part of a point key: a preset's, zoo model's or ``module:attribute``'s name;
    an ONNX file's or a model folder's content digest, whatever its spelling
    (:func:`workloads.identity.model_identity`); an unresolved path its resolved spelling (its
    point is never stored as final: it is tried again once the path names something)."""
    from workloads.identity import model_identity

    ident = model_identity(source)
    return source if ("preset" in ident or "zoo" in ident or "attribute" in ident) else ident


def _make_point(idx, params, settings, hw_params, base, hw_name, clock_scaling,
                skip_prompt, folder: Path | None = None, models: dict | None = None) -> Point:
    error = None
    model, prompt, tokens, schedule, batch = (settings[k] for k in SETTINGS)
    source, mkey = str(model), str(model)
    if isinstance(model, str) and model:
        models = {} if models is None else models
        if model not in models:
            src = model_source(model, folder)
            models[model] = (src, model_key(src))
        source, mkey = models[model]
    try:
        if not isinstance(model, str) or not model:
            raise PointError(f"model = {model!r} must be a model name")
        for n, v in (("prompt", prompt), ("tokens", tokens), ("batch", batch)):
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
    settings = {"prompt": prompt, "tokens": tokens, "schedule": schedule,
                "skip_prompt": skip_prompt}
    if batch != 1:  # batch 1 keeps the keys of stores written before the axis
        settings["batch"] = batch
    key = point_key(hw, mkey, settings, __version__)
    return Point(idx, params, str(model), prompt, tokens, schedule, skip_prompt, hw, key,
                 hw_name, error, source, batch if isinstance(batch, int) else 1)

