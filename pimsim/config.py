"""Hardware configuration: frozen, typed dataclasses loaded from ``hwconfigs/*.toml``.

A config describes one PIM system: the DRAM organisation of each channel, its timing (JEDEC names,
cycles of tCK), the PIM units in the banks, the controlling ASIC, the ASIC<->channel links, and
refresh. Every value is checked on load; a bad one raises :class:`ConfigError` naming the file and
the key, with what was expected.

Bounds: every integer must lie in the plausible range :data:`INT_BOUNDS` / :data:`TIMING_MAX_CYC`
gives (all well inside int64), every float must be finite and in :data:`FLOAT_BOUNDS`. Refresh:
the controller must make progress between two refreshes, so a config needs

    nREFI > nRFC + nRP + row_cycle_cyc

where ``row_cycle_cyc`` is the longest activate-access-precharge cycle of one bank, the largest of
nRC, a read cycle ``max(nRAS, nRCDRD + nRTP) + nRP`` and a write cycle
``max(nRAS, nRCDWR + nCWL + nBL + nWR) + nRP``: after a refresh ends there is room for one whole
row cycle and for the precharge-all the next refresh needs (see :func:`row_cycle_cyc`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from pimsim.errors import ConfigError, UserError, read_text
from pimsim.paths import resolve_relative
from pimsim.spec.commands import MODE_SWITCHES
from pimsim.system import System, apply_system, system_from_dict

HWCONFIG_DIR = Path(__file__).resolve().parent.parent / "hwconfigs"
MAPPINGS = ("pim-gpt", "reuse")  # pim.mapping: loop orders, see pimsim.isa.MatvecOrder


# Timing names (cycles of tCK) and the smallest value each may take.
TIMING_FIELDS: dict[str, tuple[int, str]] = {
    "nBL": (1, "burst length on the data bus"),
    "nCL": (1, "read latency (CAS)"),
    "nCWL": (0, "write latency"),
    "nRCDRD": (1, "ACT to RD"),
    "nRCDWR": (1, "ACT to WR"),
    "nRP": (1, "PRE to ACT"),
    "nRAS": (1, "ACT to PRE"),
    "nRC": (1, "ACT to ACT, same bank"),
    "nWR": (1, "write recovery"),
    "nRTP": (1, "RD to PRE"),
    "nCCDS": (1, "column to column, different bank group"),
    "nCCDL": (1, "column to column, same bank group"),
    "nRRDS": (1, "ACT to ACT, different bank group"),
    "nRRDL": (1, "ACT to ACT, same bank group"),
    "nFAW": (1, "four-activate window"),
    "nWTRS": (0, "write to read, different bank group"),
    "nWTRL": (0, "write to read, same bank group"),
    "nRFC": (1, "all-bank refresh cycle time"),
    "nREFI": (1, "refresh interval"),
    # PIM (GDDR6-AiM) timing
    "nRCDRDMAC": (1, "ACT to first MAC"),
    "nRCDEWMUL": (1, "ACT to EWMUL"),
    "nRCDRDAF": (1, "ACT to RDAF"),
    "nRCDRDCP": (1, "ACT to bank->global-buffer copy"),
    "nRCDWRCP": (1, "ACT to global-buffer->bank copy"),
    "nCLREG": (0, "register read latency"),
    "nCLGB": (0, "global-buffer read latency"),
    "nCWLREG": (0, "register write latency"),
    "nCWLGB": (0, "global-buffer write latency"),
    "nWPRE": (0, "write preamble"),
    "nMODCH": (1, "mode switch"),
    "nMACACC": (1, "last MAC to accumulator readable"),
}
PIM_TIMING = {
    "nRCDRDMAC", "nRCDEWMUL", "nRCDRDAF", "nRCDRDCP", "nRCDWRCP", "nCLREG", "nCLGB",
    "nCWLREG", "nCWLGB", "nWPRE", "nMODCH", "nMACACC",
}

TIMING_MAX_CYC = 1_000_000  # any timing value; tCK_ps has its own bound below
TCK_PS_BOUNDS = (1, 1_000_000)  # 1 ps .. 1 us

# (section, key) -> (lowest, highest) of an integer field
INT_BOUNDS: dict[tuple[str, str], tuple[int, int]] = {
    ("organization", "channels"): (1, 4096),
    ("organization", "bankgroups"): (1, 64),
    ("organization", "banks_per_group"): (1, 64),
    ("organization", "rows"): (1, 1 << 24),
    ("organization", "columns"): (1, 1 << 16),
    ("organization", "column_bytes"): (1, 4096),
    ("organization", "channel_mask"): (0, (1 << 64) - 1),
    ("pim", "mac_lanes_per_bank"): (0, 4096),
    ("pim", "banks_per_pim_unit"): (1, 64),
    ("pim", "global_buffer_bytes"): (0, 1 << 30),
    ("pim", "accumulators_per_bank"): (0, 4096),
    ("pim", "attention_accumulators"): (0, 4096),
    ("asic", "vector_lanes"): (1, 1 << 16),
    ("asic", "sram_bytes"): (1, 1 << 40),
    ("asic", "exp_taylor_terms"): (1, 64),
    ("asic", "gelu_taylor_terms"): (1, 64),
    ("asic", "recip_newton_steps"): (1, 64),
    ("asic", "rsqrt_newton_steps"): (1, 64),
    ("link", "bytes_per_cyc"): (1, 1 << 20),
    ("link", "latency_cyc"): (0, 1_000_000),
    ("energy", "channels_per_chip"): (1, 4096),
}
ASIC_OP_MAX = 1_000_000  # [asic.op_latency_cyc] and [asic.op_passes] values
MAX_BANKS = 1024  # bankgroups x banks_per_group
MAX_ROW_BYTES = 1 << 20  # columns x column_bytes

# (section, key) -> (lowest, highest, lowest allowed?) of a float field; all must be finite
FLOAT_BOUNDS: dict[tuple[str, str], tuple[float, float, bool]] = {
    ("asic", "clock_mhz"): (0.0, 1e6, False),
    ("link", "clock_mhz"): (0.0, 1e6, False),
    ("energy", "vdd_v"): (0.0, 100.0, False),
    **{("energy", k): (0.0, 1e6, True)
       for k in ("idd0_ma", "idd2n_ma", "idd3n_ma", "idd4r_ma", "idd4w_ma", "idd5ab_ma")},
    **{("energy", k): (0.0, 1e9, True)
       for k in ("mac_unit_pj", "gb_pj_per_byte", "io_pj_per_bit", "asic_op_pj",
                 "asic_sram_pj_per_byte", "mode_switch_pj")},
}


@dataclass(frozen=True)
class Organization:
    """DRAM organisation of one channel, and how many channels there are."""

    channels: int
    bankgroups: int
    banks_per_group: int
    rows: int
    columns: int  # column accesses (bursts) per row
    column_bytes: int  # bytes moved by one column access
    channel_mask: int = 0  # 0 means "all channels": (1 << channels) - 1
    standard: str = "GDDR6"

    @property
    def banks(self) -> int:
        return self.bankgroups * self.banks_per_group

    @property
    def row_bytes(self) -> int:
        return self.columns * self.column_bytes

    @property
    def channel_bytes(self) -> int:
        return self.banks * self.rows * self.row_bytes

    @property
    def capacity_bytes(self) -> int:
        return self.channels * self.channel_bytes


@dataclass(frozen=True)
class Timing:
    """DRAM timing in cycles of tCK (JEDEC names), plus tCK itself in picoseconds."""

    tCK_ps: int
    cycles: dict[str, int] = field(default_factory=dict)

    def __getattr__(self, name: str) -> int:
        cycles = self.__dict__.get("cycles", {})
        if name in cycles:
            return cycles[name]
        raise AttributeError(name)

    def get(self, name: str, default: int | None = None) -> int | None:
        return self.cycles.get(name, default)

    def ns(self, cycles: int) -> float:
        return cycles * self.tCK_ps / 1000.0


@dataclass(frozen=True)
class Pim:
    """Processing units inside the banks."""

    enabled: bool
    mac_lanes_per_bank: int = 0  # multipliers per PIM unit
    banks_per_pim_unit: int = 1  # 2 for HBM-PIM (one unit shared by two banks)
    data_type: str = "bf16"
    accumulator_type: str = "fp32"
    global_buffer_bytes: int = 0  # per channel; one fill holds this much of the input vector
    accumulators_per_bank: int = 1  # partial sums a bank's MAC unit keeps at once
    # accumulators the attention's products (q.K^T, s.V) fill before reading them out; 0: all
    # accumulators_per_bank. CENT's generator reads each score / context latch on its own
    # (WR_BIAS, MAC, RD_MAC per head, Yufeng98/CENT@9b4165f TransformerBlock.py 798-803,
    # 822-831) while its weight products fill 32 (714-734): attention_accumulators = 1
    attention_accumulators: int = 0
    # matrix-vector loop order (pimsim.isa.MatvecOrder): "pim-gpt" (each buffer fill serves
    # every output row, accumulators read after every fill) or "reuse" (CENT: a fill serves
    # accumulators_per_bank output rows per bank, accumulators read once after all fills)
    mapping: str = "pim-gpt"
    # what TMOD switches between: "register" (GDDR6-AiM: host access to the global buffer and
    # the MAC/AF registers), "bank-mode" (single-bank DRAM vs all-bank PIM mode), "none"
    mode_switch: str = "bank-mode"
    af_pseudo_row: bool = False  # AF opens a pseudo-row (PREA + ACT_AB + nRCDRDAF), as AiM's AF16
    ewmul_writeback: bool = False  # EWMUL writes its product back: EWMUL -> PRE waits nCWL + nWR


@dataclass(frozen=True)
class Host:
    """The host-side DMA that feeds the channel controllers (trace replay, decode programs).

    The public AiM simulator's DMA decodes one host line per cycle, waits for blocking reads
    (RD_MAC, RD_AF) and barriers (SYNC, EOC) to return from every selected channel, and stops
    sending while a channel's request queue is full. The defaults model an ideal host.
    """

    blocking_reads: bool = False  # RD_MAC / RD_AF: later requests wait for the data to return
    release_cyc: int = 0  # cycles from a blocking read's data (or a barrier) to the next request
    line_cyc: int = 0  # cycles the DMA spends on each host line (trace replay)
    queue_entries: int = 0  # requests a channel's controller queue holds (0: unbounded)
    mask_order: str = "lsb"  # trace channel masks: "lsb" (bit i = channel i) or "msb32" (AiM: bit i = channel 31 - i)


SCHEDULERS = ("frfcfs", "in-order")


@dataclass(frozen=True)
class Controller:
    """The channel controller's scheduling of conventional RD/WR requests.

    ``"frfcfs"`` (Ramulator 2's controller and FRFCFS scheduler, which the public AiM simulator
    uses): requests wait in a read and a write queue (an entry frees when its request's column
    command issues); each cycle the controller issues the next command (PRE, ACT or the column
    command) of a request whose command is legal now ("first ready", so row hits, whose column
    command is legal first, go first): the column command of a request whose row was opened for
    it before any other, then the oldest; it serves writes while in write-drain mode (entered
    when the write queue holds more than ``write_high_watermark`` of its entries or no read
    waits, left when it holds fewer than ``write_low_watermark`` and a read waits). Activates
    of queued requests to different banks overlap under nRRD / nFAW.
    ``"in-order"``: every request's PRE / ACT / column command in stream order (the reference).
    PIM commands always issue in order; before one (and at SYNC) the queues are drained.
    """

    scheduler: str = "in-order"
    read_queue_entries: int = 32
    write_queue_entries: int = 32
    write_high_watermark: float = 0.8
    write_low_watermark: float = 0.2

    def drain_thresholds(self) -> tuple[int, int]:
        """(high, low) as entry counts: drain starts when the write queue holds more than
        ``high`` requests and stops when it holds fewer than ``low`` (and a read waits)."""
        high = math.floor(self.write_high_watermark * self.write_queue_entries + 1e-9)
        low = math.ceil(self.write_low_watermark * self.write_queue_entries - 1e-9)
        return high, low


@dataclass(frozen=True)
class Asic:
    """The controlling ASIC: clock, vector unit, SRAM and the cost of each op it runs."""

    clock_mhz: float
    vector_lanes: int
    sram_bytes: int
    op_latency_cyc: dict[str, int]  # fixed pipeline latency per op invocation
    op_passes: dict[str, int]  # passes over the vector (cycles per vector_lanes elements)
    exp_taylor_terms: int = 8
    gelu_taylor_terms: int = 8
    recip_newton_steps: int = 3
    rsqrt_newton_steps: int = 2


ASIC_OPS = ("layernorm", "softmax", "gelu", "residual", "reduction", "embedding", "rmsnorm",
            "activation", "elementwise", "transcendental")


@dataclass(frozen=True)
class Link:
    """ASIC <-> channel links: one per channel, each moving ``bytes_per_cyc`` per link cycle;
    a PIM step's transfers queue on its channel's link (:mod:`pimsim.link`)."""

    bytes_per_cyc: int  # per channel, per link cycle
    clock_mhz: float
    latency_cyc: int = 0


@dataclass(frozen=True)
class Refresh:
    enabled: bool = True


@dataclass(frozen=True)
class Energy:
    """Energy table: IDD currents (per chip, mA) and VDD for the DRAM command energies by the
    IDD method, PIM and I/O energies, ASIC energies. ``table`` names where the numbers come
    from; it is printed with every energy report."""

    table: str
    vdd_v: float
    idd0_ma: float
    idd2n_ma: float
    idd3n_ma: float
    idd4r_ma: float
    idd4w_ma: float
    idd5ab_ma: float
    channels_per_chip: int  # the IDD values are per chip; a chip may hold several channels
    mac_unit_pj: float  # one PIM unit's MAC over one column (an all-bank MAC uses every unit)
    gb_pj_per_byte: float  # global-buffer SRAM access
    io_pj_per_bit: float  # off-chip DQ energy for every bit crossing an ASIC-PIM link
    asic_op_pj: float  # one BF16 multiply-add (or add/compare) in the ASIC vector unit
    asic_sram_pj_per_byte: float
    mode_switch_pj: float = 0.0


@dataclass(frozen=True)
class HwConfig:
    """A whole PIM system. Load with :func:`load_config`."""

    name: str
    description: str
    source: str  # file it was loaded from (or "<dict>")
    org: Organization
    timing: Timing
    pim: Pim
    asic: Asic
    link: Link
    refresh: Refresh
    energy: Energy | None = None
    host: Host = field(default_factory=Host)
    controller: Controller = field(default_factory=Controller)
    system: Any = None  # pimsim.system.System: devices, tp x pp, the interconnect

    def __post_init__(self) -> None:
        if self.system is None:
            object.__setattr__(self, "system", System())

    @property
    def tCK_ps(self) -> int:
        return self.timing.tCK_ps

    def with_refresh(self, enabled: bool) -> "HwConfig":
        return dataclasses.replace(self, refresh=Refresh(enabled=enabled))

    def replace(self, **sections: Any) -> "HwConfig":
        """A copy with whole sections replaced (``cfg.replace(org=...)``), re-validated."""
        new = dataclasses.replace(self, **sections)
        _validate(new, new.source)
        return new


# ---------------------------------------------------------------- loading and validation

_SECTIONS = {
    "organization": Organization,
    "timing": None,
    "pim": Pim,
    "asic": Asic,
    "link": Link,
    "refresh": Refresh,
    "energy": Energy,
    "host": Host,
    "controller": Controller,
    "system": None,
    "interconnect": None,
}
_TOP_KEYS = {"name", "description"} | set(_SECTIONS)


def available_configs() -> list[str]:
    """Names of the shipped configs in ``hwconfigs/``."""
    return sorted(p.stem for p in HWCONFIG_DIR.glob("*.toml"))


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):  # a name too long, an embedded NUL byte
        return False


def config_file(name_or_path: str | Path) -> Path:
    """The file :func:`load_config` reads for ``name_or_path`` (a shipped name or a path)."""
    path = Path(name_or_path)
    if not path.suffix and not _exists(path):
        path = HWCONFIG_DIR / f"{name_or_path}.toml"
    return path


def load_config(name_or_path: str | Path, *, refresh: bool | None = None) -> HwConfig:
    """Load a config by shipped name (``pim-gpt``) or by path to a TOML file."""
    path = config_file(name_or_path)
    if not _exists(path):
        raise ConfigError(
            f"hardware config {str(name_or_path)!r} not found",
            f"give a path to a .toml file or one of the shipped names: "
            f"{', '.join(available_configs())}")
    try:
        text = read_text(path, "hardware config")
    except UserError as e:
        raise ConfigError(str(e)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path.name}: not valid TOML ({e})",
                          "fix the TOML syntax at that line") from None
    cfg = config_from_dict(data, source=path.name, folder=path.parent)
    if refresh is not None:
        cfg = cfg.with_refresh(refresh)
    return cfg


def config_from_dict(data: dict[str, Any], source: str = "<dict>",
                     folder: str | Path | None = None) -> HwConfig:
    """Build and validate a config from a parsed TOML mapping. ``folder``: the folder of the
    file it was read from, against which a system config's relative ``device`` path is read
    (:func:`pimsim.paths.resolve_relative`; None: the working directory)."""
    where = source

    def fail(msg: str) -> None:
        raise ConfigError(f"{where}: {msg}")

    unknown = set(data) - _TOP_KEYS
    if unknown:
        fail(f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    if isinstance(data.get("system"), dict) and "device" in data["system"]:
        return _system_config(data, source, folder)
    for sec in ("organization", "timing", "pim", "asic", "link", "refresh"):
        if sec not in data:
            if sec == "refresh":  # optional: refresh on by default
                continue
            fail(f"missing section [{sec}]")
        if not isinstance(data[sec], dict):
            fail(f"[{sec}] must be a table")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            fail(f"{key} = {data[key]!r} must be a string")

    def build(cls, sec: str, raw: dict[str, Any]):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(raw) - set(fields)
        if unknown:
            fail(f"unknown key(s) {sorted(unknown)} in [{sec}]; allowed: {sorted(fields)}")
        missing = [n for n, f in fields.items()
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and n not in raw]
        if missing:
            fail(f"missing key(s) {missing} in [{sec}]")
        for n, v in raw.items():
            t = fields[n].type
            ok = {
                "int": isinstance(v, int) and not isinstance(v, bool),
                "float": isinstance(v, (int, float)) and not isinstance(v, bool),
                "bool": isinstance(v, bool),
                "str": isinstance(v, str),
                "dict[str, int]": isinstance(v, dict),
            }.get(t, True)
            if not ok:
                fail(f"[{sec}] {n} = {v!r} must be of type {t}")
        return cls(**raw)

    org = build(Organization, "organization", data["organization"])
    raw_t = dict(data["timing"])
    if "tCK_ps" not in raw_t:
        fail("missing key 'tCK_ps' in [timing] (clock period in picoseconds)")
    tck = raw_t.pop("tCK_ps")
    unknown = set(raw_t) - set(TIMING_FIELDS)
    if unknown:
        fail(f"unknown timing name(s) {sorted(unknown)} in [timing]; known: {sorted(TIMING_FIELDS)}")
    timing = Timing(tCK_ps=tck, cycles=dict(raw_t))
    pim = build(Pim, "pim", data["pim"])
    asic = build(Asic, "asic", data["asic"])
    link = build(Link, "link", data["link"])
    refresh = build(Refresh, "refresh", data.get("refresh", {}))
    if not isinstance(data.get("host", {}), dict):
        fail("[host] must be a table")
    host = build(Host, "host", data.get("host", {}))
    if not isinstance(data.get("controller", {}), dict):
        fail("[controller] must be a table")
    controller = build(Controller, "controller", data.get("controller", {}))
    energy = None
    if "energy" in data:
        if not isinstance(data["energy"], dict):
            fail("[energy] must be a table")
        energy = build(Energy, "energy", data["energy"])
    for sec in ("system", "interconnect"):
        if not isinstance(data.get(sec, {}), dict):
            fail(f"[{sec}] must be a table")
    system = system_from_dict(data.get("system"), data.get("interconnect"), source)
    cfg = HwConfig(
        name=str(data.get("name", Path(source).stem)),
        description=str(data.get("description", "")),
        source=source,
        org=org, timing=timing, pim=pim, asic=asic, link=link, refresh=refresh, energy=energy,
        host=host, controller=controller, system=system,
    )
    _validate(cfg, source)
    return apply_system(cfg, system) if system.stages_per_device > 1 else cfg


def _system_config(data: dict[str, Any], source: str, folder: str | Path | None) -> HwConfig:
    """A system file: ``[system] device = "<device config>"`` plus the system's size and
    ``[interconnect]``; the devices are that config's. A shipped name (no suffix) is a config of
    ``hwconfigs/``; a path is read against ``folder``, the system file's own folder. A
    ``[pim]`` table replaces those keys of the device's ``[pim]`` (a study's variant of the
    device, e.g. CENT's AiM with its latches; validated as the device's own)."""

    def fail(msg: str, fix: str) -> None:
        raise ConfigError(f"{source}: {msg}", fix)

    extra = set(data) - {"name", "description", "system", "interconnect", "pim"}
    if extra:
        fail(f"a system config (its [system] names a device) has sections {sorted(extra)}",
             "put device sections in the device's own config; keep [system], "
             "[interconnect] and the [pim] keys it changes here")
    pim = data.get("pim", {})
    if not isinstance(pim, dict):
        fail("[pim] must be a table", "write it as a TOML table of the device's [pim] keys")
    sec = dict(data["system"])
    dev = sec.pop("device")
    if not isinstance(dev, str):
        fail(f"[system] device = {dev!r} must be a config name or path",
             f"use one of {', '.join(available_configs())}")
    path = resolve_relative(dev, folder) if Path(dev).suffix else HWCONFIG_DIR / f"{dev}.toml"
    if Path(dev).suffix and not _exists(path):
        where = "the system file's folder" if folder is not None else "the working directory"
        fail(f"[system] device = {dev!r} not found (read against {where}: {str(path)!r})",
             "give the device config's path relative to the system file, or a shipped name "
             f"({', '.join(available_configs())})")
    try:
        nested = tomllib.loads(read_text(path, "device config")).get("system", {})
    except (UserError, tomllib.TOMLDecodeError):
        nested = {}
    if isinstance(nested, dict) and "device" in nested:
        fail(f"[system] device = {dev!r} is itself a system config",
             "name a device config (one with [organization], [timing], ...)")
    base = load_config(path if Path(dev).suffix else dev)
    if pim:
        raw = tomllib.loads(read_text(path, "device config"))
        raw["pim"] = {**raw.get("pim", {}), **pim}
        base = config_from_dict(raw, f"{source} ([pim] on {path.name})", folder=path.parent)
    if not isinstance(data.get("interconnect", {}), dict):
        fail("[interconnect] must be a table", "write it as a TOML table")
    system = system_from_dict(sec, data.get("interconnect"), source)
    return apply_system(dataclasses.replace(
        base, name=str(data.get("name", Path(source).stem)),
        description=str(data.get("description", base.description)), source=source), system)


def row_cycle_cyc(c: dict[str, int]) -> int:
    """The longest activate-access-precharge cycle of one bank (cycles): nRC, a read cycle
    ``max(nRAS, nRCDRD + nRTP) + nRP`` or a write cycle ``max(nRAS, nRCDWR + nCWL + nBL + nWR)
    + nRP``."""
    read = max(c["nRAS"], c["nRCDRD"] + c["nRTP"]) + c["nRP"]
    write = max(c["nRAS"], c["nRCDWR"] + c["nCWL"] + c["nBL"] + c["nWR"]) + c["nRP"]
    return max(c["nRC"], read, write)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _span(lo: int, hi: int) -> str:
    def f(x: int) -> str:
        if x >= 1 << 16 and x & (x - 1) == 0:
            return f"{x:,} (2^{x.bit_length() - 1})"
        if x >= 1 << 16 and (x + 1) & x == 0:
            return f"2^{x.bit_length()} - 1"
        return f"{x:,}"
    return f"{f(lo)}..{f(hi)}"


def _validate(cfg: HwConfig, where: str) -> None:
    def fail(msg: str, fix: str | None = None) -> None:
        raise ConfigError(f"{where}: {msg}", fix)

    sections = {"organization": cfg.org, "pim": cfg.pim, "asic": cfg.asic, "link": cfg.link,
                "energy": cfg.energy}
    for (sec, key), (lo, hi) in INT_BOUNDS.items():
        obj = sections[sec]
        if obj is None:
            continue
        v = getattr(obj, key)
        if not _is_int(v):
            fail(f"[{sec}] {key} = {v!r} must be an integer", f"write it as an integer in "
                 f"{_span(lo, hi)}")
        if not lo <= v <= hi:
            fail(f"[{sec}] {key} = {v:,} is out of range", f"use an integer in {_span(lo, hi)}")
    for (sec, key), (lo, hi, lo_ok) in FLOAT_BOUNDS.items():
        obj = sections[sec]
        if obj is None:
            continue
        v = getattr(obj, key)
        if not _is_num(v) or not math.isfinite(v):
            fail(f"[{sec}] {key} = {v!r} must be a finite number", f"use a number in "
                 f"{'[' if lo_ok else '('}{lo:g}, {hi:g}]")
        if not (lo <= v if lo_ok else lo < v) or v > hi:
            fail(f"[{sec}] {key} = {v!r} is out of range",
                 f"use a number in {'[' if lo_ok else '('}{lo:g}, {hi:g}]")
    o = cfg.org
    if o.banks > MAX_BANKS:
        fail(f"[organization] bankgroups x banks_per_group = {o.banks:,} banks per channel is "
             f"out of range", f"use at most {MAX_BANKS} banks per channel")
    if o.row_bytes > MAX_ROW_BYTES:
        fail(f"[organization] columns x column_bytes = {o.row_bytes:,} bytes per row is out of "
             f"range", f"use at most {MAX_ROW_BYTES:,} bytes per row")
    if o.channel_mask:
        if bin(o.channel_mask).count("1") != o.channels:
            fail(
                f"[organization] channel_mask = {o.channel_mask:#x} selects "
                f"{bin(o.channel_mask).count('1')} channels but channels = {o.channels}",
                f"make them agree (or drop channel_mask to use channels 0..{o.channels - 1})"
            )
    if not isinstance(o.standard, str):
        fail(f"[organization] standard = {o.standard!r} must be a string")
    t = cfg.timing
    if not _is_int(t.tCK_ps) or not TCK_PS_BOUNDS[0] <= t.tCK_ps <= TCK_PS_BOUNDS[1]:
        fail(f"[timing] tCK_ps = {t.tCK_ps!r} is not a clock period in picoseconds",
             f"use an integer in {_span(*TCK_PS_BOUNDS)}")
    required = set(TIMING_FIELDS) - {"nRCDRDAF", "nWPRE"}
    if not cfg.pim.enabled:
        required -= PIM_TIMING
    missing = sorted(required - set(t.cycles))
    if missing:
        fail(f"[timing] missing timing value(s) {missing}", "add them (cycles of tCK)")
    for n, v in t.cycles.items():
        if n not in TIMING_FIELDS:
            fail(f"[timing] unknown timing name {n!r}", f"use one of {sorted(TIMING_FIELDS)}")
        lo, what = TIMING_FIELDS[n]
        if not _is_int(v):
            fail(f"[timing] {n} = {v!r} must be an integer number of tCK cycles ({what})",
                 f"use an integer in {lo}..{TIMING_MAX_CYC:,}")
        if v < lo:
            fail(f"[timing] {n} = {v} is impossible: {what} must be at least {lo} cycle(s)",
                 f"use an integer in {lo}..{TIMING_MAX_CYC:,}")
        if v > TIMING_MAX_CYC:
            fail(f"[timing] {n} = {v:,} cycles ({what}) is out of range",
                 f"use an integer in {lo}..{TIMING_MAX_CYC:,}")
    c = t.cycles
    if c["nRAS"] > c["nRC"]:
        fail(f"[timing] nRAS = {c['nRAS']} > nRC = {c['nRC']}: a row cycle must hold the "
             f"activate time", "make nRAS <= nRC")
    if c["nRRDS"] > c["nRRDL"]:
        fail(f"[timing] nRRDS = {c['nRRDS']} > nRRDL = {c['nRRDL']}: same-group spacing must be "
             f"at least the different-group spacing", "make nRRDS <= nRRDL")
    if c["nCCDS"] > c["nCCDL"]:
        fail(f"[timing] nCCDS = {c['nCCDS']} > nCCDL = {c['nCCDL']}: same-group spacing must be "
             f"at least the different-group spacing", "make nCCDS <= nCCDL")
    need = c["nRFC"] + c["nRP"] + row_cycle_cyc(c)
    if c["nREFI"] <= need:
        fail(f"[timing] nREFI = {c['nREFI']} leaves no room between refreshes: after each "
             f"refresh (nRFC = {c['nRFC']}) the controller needs one full row cycle "
             f"({row_cycle_cyc(c)} cycles) and a precharge (nRP = {c['nRP']})",
             f"make nREFI larger than nRFC + nRP + row cycle = {need}")
    if c["nCL"] + c["nBL"] + 2 - c["nCWL"] < 0:
        fail("[timing] nCL + nBL + 2 - nCWL is negative: write latency larger than read latency",
             "make nCWL <= nCL + nBL + 2")
    p = cfg.pim
    if not isinstance(p.enabled, bool):
        fail(f"[pim] enabled = {p.enabled!r} must be true or false")
    if p.enabled:
        for n in ("mac_lanes_per_bank", "banks_per_pim_unit", "global_buffer_bytes",
                  "accumulators_per_bank"):
            if getattr(p, n) <= 0:
                fail(f"[pim] {n} = {getattr(p, n)} must be positive when pim.enabled = true",
                     "give a positive value or set enabled = false")
        if o.banks % p.banks_per_pim_unit:
            fail(f"[pim] banks_per_pim_unit = {p.banks_per_pim_unit} does not divide the "
                 f"{o.banks} banks of a channel", "use a divisor of the bank count")
        if p.global_buffer_bytes % o.column_bytes:
            fail(f"[pim] global_buffer_bytes = {p.global_buffer_bytes} is not a whole number of "
                 f"{o.column_bytes}-byte columns", f"use a multiple of {o.column_bytes}")
    if not 0 <= p.attention_accumulators <= p.accumulators_per_bank:
        fail(f"[pim] attention_accumulators = {p.attention_accumulators} must be 0 (all the "
             f"bank's) or at most accumulators_per_bank = {p.accumulators_per_bank}",
             f"give 0..{p.accumulators_per_bank}")
    if p.mapping not in MAPPINGS:
        fail(f"[pim] mapping = {p.mapping!r}; supported: "
             f"{', '.join(repr(m) for m in MAPPINGS)}", "use one of those")

    if p.mode_switch not in MODE_SWITCHES:
        fail(f"[pim] mode_switch = {p.mode_switch!r}; supported: "
             f"{', '.join(repr(m) for m in MODE_SWITCHES)}", "use one of those")
    if p.enabled and p.mode_switch == "register":
        # the TMOD between a register access and a MAC / AF stands in for the accumulator
        # rows (pimsim/spec/rules.py): it must cover them
        tc = cfg.timing.cycles
        need = max(tc.get("nCWLREG", 0) + tc.get("nBL", 0), tc.get("nMACACC", 0))
        if 1 + tc.get("nMODCH", 0) < need:
            fail(f"[timing] nMODCH = {tc.get('nMODCH', 0)} is shorter than the accumulator "
                 f"latency it covers with mode_switch = 'register' (nCWLREG + nBL and nMACACC: "
                 f"{need} cycles, less the TMOD's own)", f"give nMODCH >= {need - 1} or use "
                 f"mode_switch = 'bank-mode'")
    h = cfg.host
    for n in ("release_cyc", "line_cyc", "queue_entries"):
        v = getattr(h, n)
        if not 0 <= v <= 1_000_000:
            fail(f"[host] {n} = {v} must be between 0 and 1,000,000", "give a value in that range")
    if h.mask_order not in ("lsb", "msb32"):
        fail(f"[host] mask_order = {h.mask_order!r}; supported: 'lsb' (bit i = channel i), "
             f"'msb32' (AiM: bit i = channel 31 - i)", "use one of those")
    if h.mask_order == "msb32" and max(channel_ids(cfg)) > 31:
        fail("[host] mask_order = 'msb32' addresses channels 0..31 only, but the config has "
             f"channel {max(channel_ids(cfg))}", "use mask_order = 'lsb'")
    k = cfg.controller
    if k.scheduler not in SCHEDULERS:
        fail(f"[controller] scheduler = {k.scheduler!r}; supported: "
             f"{', '.join(repr(x) for x in SCHEDULERS)}", "use one of those")
    for n in ("read_queue_entries", "write_queue_entries"):
        v = getattr(k, n)
        if not _is_int(v) or not 1 <= v <= 4096:
            fail(f"[controller] {n} = {v!r} is out of range", "use an integer in 1..4,096")
    for n in ("write_high_watermark", "write_low_watermark"):
        v = getattr(k, n)
        if not _is_num(v) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            fail(f"[controller] {n} = {v!r} must be a fraction of the write queue",
                 "use a number in [0, 1]")
    if k.write_low_watermark > k.write_high_watermark:
        fail(f"[controller] write_low_watermark = {k.write_low_watermark} is above "
             f"write_high_watermark = {k.write_high_watermark}", "make low <= high")
    if p.data_type not in ("bf16", "fp16"):
        fail(f"[pim] data_type = {p.data_type!r} is not supported", "use 'bf16' or 'fp16'")
    if p.accumulator_type not in ("fp32", "bf16", "fp16"):
        fail(f"[pim] accumulator_type = {p.accumulator_type!r} is not supported",
             "use 'fp32', 'bf16' or 'fp16'")
    a = cfg.asic
    for table in ("op_latency_cyc", "op_passes"):
        ops = getattr(a, table)
        if not isinstance(ops, dict):
            fail(f"[asic.{table}] must be a table of op = integer")
        unknown = set(ops) - set(ASIC_OPS)
        if unknown:
            fail(f"[asic.{table}] unknown op(s) {sorted(unknown)}", f"use: {list(ASIC_OPS)}")
        missing = [op for op in ASIC_OPS if op not in ops]
        if missing:
            fail(f"[asic.{table}] missing op(s) {missing}", "add a value for each")
        for op, v in ops.items():
            if not _is_int(v) or not 0 <= v <= ASIC_OP_MAX:
                fail(f"[asic.{table}] {op} = {v!r} is out of range",
                     f"use an integer in 0..{ASIC_OP_MAX:,}")
    if not isinstance(cfg.refresh.enabled, bool):
        fail(f"[refresh] enabled = {cfg.refresh.enabled!r} must be true or false")
    e = cfg.energy
    if e is not None:
        if not isinstance(e.table, str) or not e.table.strip():
            fail("[energy] table must name the source of the numbers",
                 'add table = "where the numbers come from"')
        if e.idd3n_ma < e.idd2n_ma:
            fail(f"[energy] idd3n_ma = {e.idd3n_ma} < idd2n_ma = {e.idd2n_ma}: active standby "
                 f"must draw at least the precharged standby current", "make idd3n_ma >= idd2n_ma")
        if e.idd0_ma < e.idd3n_ma or e.idd4r_ma < e.idd3n_ma or e.idd4w_ma < e.idd3n_ma:
            fail("[energy] idd0/idd4r/idd4w must be at least idd3n (they add to the standby "
                 "current)", "raise them to at least idd3n_ma")


def channel_ids(cfg: HwConfig) -> list[int]:
    """Physical channel numbers the config uses, in order (from channel_mask)."""
    mask = cfg.org.channel_mask or ((1 << cfg.org.channels) - 1)
    return [i for i in range(mask.bit_length()) if mask >> i & 1]
