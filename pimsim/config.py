"""Hardware configuration: frozen, typed dataclasses loaded from ``hwconfigs/*.toml``.

A config describes one PIM system: the DRAM organisation of each channel, its timing (JEDEC names,
cycles of tCK), the PIM units in the banks, the controlling ASIC, the ASIC<->channel links, and
refresh. Every value is checked on load; a bad one raises :class:`ConfigError` naming the file and
the key, with what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HWCONFIG_DIR = Path(__file__).resolve().parent.parent / "hwconfigs"


class ConfigError(ValueError):
    """A hardware config is malformed; the message names the file, the key and the fix."""


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
    global_buffer_bytes: int = 0  # per channel
    accumulators_per_bank: int = 1
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


ASIC_OPS = ("layernorm", "softmax", "gelu", "residual", "reduction", "embedding")


@dataclass(frozen=True)
class Link:
    """ASIC <-> channel links: one per channel."""

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
}
_TOP_KEYS = {"name", "description"} | set(_SECTIONS)


def available_configs() -> list[str]:
    """Names of the shipped configs in ``hwconfigs/``."""
    return sorted(p.stem for p in HWCONFIG_DIR.glob("*.toml"))


def load_config(name_or_path: str | Path, *, refresh: bool | None = None) -> HwConfig:
    """Load a config by shipped name (``pim-gpt``) or by path to a TOML file."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = HWCONFIG_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise ConfigError(
            f"hardware config {str(name_or_path)!r} not found: give a path to a .toml file or one "
            f"of the shipped names: {', '.join(available_configs())}"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path.name}: not valid TOML: {e}") from None
    cfg = config_from_dict(data, source=path.name)
    if refresh is not None:
        cfg = cfg.with_refresh(refresh)
    return cfg


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> HwConfig:
    """Build and validate a config from a parsed TOML mapping."""
    where = source

    def fail(msg: str) -> None:
        raise ConfigError(f"{where}: {msg}")

    unknown = set(data) - _TOP_KEYS
    if unknown:
        fail(f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
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
    energy = None
    if "energy" in data:
        if not isinstance(data["energy"], dict):
            fail("[energy] must be a table")
        energy = build(Energy, "energy", data["energy"])
    cfg = HwConfig(
        name=str(data.get("name", Path(source).stem)),
        description=str(data.get("description", "")),
        source=source,
        org=org, timing=timing, pim=pim, asic=asic, link=link, refresh=refresh, energy=energy,
        host=host,
    )
    _validate(cfg, source)
    return cfg


def _validate(cfg: HwConfig, where: str) -> None:
    def fail(msg: str) -> None:
        raise ConfigError(f"{where}: {msg}")

    o = cfg.org
    for n in ("channels", "bankgroups", "banks_per_group", "rows", "columns", "column_bytes"):
        if getattr(o, n) <= 0:
            fail(f"[organization] {n} = {getattr(o, n)} must be a positive integer")
    if o.channel_mask:
        if o.channel_mask < 0 or o.channel_mask >= (1 << 64):
            fail(f"[organization] channel_mask = {o.channel_mask:#x} is out of range")
        if bin(o.channel_mask).count("1") != o.channels:
            fail(
                f"[organization] channel_mask = {o.channel_mask:#x} selects "
                f"{bin(o.channel_mask).count('1')} channels but channels = {o.channels}; "
                f"make them agree (or drop channel_mask to use channels 0..{o.channels - 1})"
            )
    t = cfg.timing
    if not isinstance(t.tCK_ps, int) or isinstance(t.tCK_ps, bool) or t.tCK_ps <= 0:
        fail(f"[timing] tCK_ps = {t.tCK_ps!r} must be a positive integer (picoseconds)")
    required = set(TIMING_FIELDS) - {"nRCDRDAF", "nWPRE"}
    if not cfg.pim.enabled:
        required -= PIM_TIMING
    missing = sorted(required - set(t.cycles))
    if missing:
        fail(f"[timing] missing timing value(s) {missing}")
    for n, v in t.cycles.items():
        lo, what = TIMING_FIELDS[n]
        if not isinstance(v, int) or isinstance(v, bool):
            fail(f"[timing] {n} = {v!r} must be an integer number of tCK cycles ({what})")
        if v < lo:
            fail(f"[timing] {n} = {v} is impossible: {what} must be at least {lo} cycle(s)")
    c = t.cycles
    if c["nRAS"] > c["nRC"]:
        fail(f"[timing] nRAS = {c['nRAS']} > nRC = {c['nRC']}: a row cycle must hold the "
             f"activate time (need nRAS <= nRC)")
    if c["nRRDS"] > c["nRRDL"]:
        fail(f"[timing] nRRDS = {c['nRRDS']} > nRRDL = {c['nRRDL']}: same-group spacing must be "
             f"at least the different-group spacing")
    if c["nCCDS"] > c["nCCDL"]:
        fail(f"[timing] nCCDS = {c['nCCDS']} > nCCDL = {c['nCCDL']}: same-group spacing must be "
             f"at least the different-group spacing")
    if c["nRFC"] >= c["nREFI"]:
        fail(f"[timing] nRFC = {c['nRFC']} >= nREFI = {c['nREFI']}: refresh would never end")
    if c["nCL"] + c["nBL"] + 2 - c["nCWL"] < 0:
        fail("[timing] nCL + nBL + 2 - nCWL is negative: write latency larger than read latency")
    p = cfg.pim
    if p.enabled:
        for n in ("mac_lanes_per_bank", "banks_per_pim_unit", "global_buffer_bytes",
                  "accumulators_per_bank"):
            if getattr(p, n) <= 0:
                fail(f"[pim] {n} = {getattr(p, n)} must be positive when pim.enabled = true")
        if o.banks % p.banks_per_pim_unit:
            fail(f"[pim] banks_per_pim_unit = {p.banks_per_pim_unit} does not divide the "
                 f"{o.banks} banks of a channel")
        if p.global_buffer_bytes % o.column_bytes:
            fail(f"[pim] global_buffer_bytes = {p.global_buffer_bytes} is not a whole number of "
                 f"{o.column_bytes}-byte columns")
    from pimsim.spec.commands import MODE_SWITCHES

    if p.mode_switch not in MODE_SWITCHES:
        fail(f"[pim] mode_switch = {p.mode_switch!r}; supported: "
             f"{', '.join(repr(m) for m in MODE_SWITCHES)}")
    h = cfg.host
    for n in ("release_cyc", "line_cyc", "queue_entries"):
        v = getattr(h, n)
        if not 0 <= v <= 1_000_000:
            fail(f"[host] {n} = {v} must be between 0 and 1,000,000")
    if h.mask_order not in ("lsb", "msb32"):
        fail(f"[host] mask_order = {h.mask_order!r}; supported: 'lsb' (bit i = channel i), "
             f"'msb32' (AiM: bit i = channel 31 - i)")
    if h.mask_order == "msb32" and max(channel_ids(cfg)) > 31:
        fail("[host] mask_order = 'msb32' addresses channels 0..31 only, but the config has "
             f"channel {max(channel_ids(cfg))}; use mask_order = 'lsb'")
    if p.data_type not in ("bf16", "fp16"):
        fail(f"[pim] data_type = {p.data_type!r}; supported: 'bf16', 'fp16'")
    if p.accumulator_type not in ("fp32", "bf16", "fp16"):
        fail(f"[pim] accumulator_type = {p.accumulator_type!r}; supported: 'fp32', 'bf16', 'fp16'")
    a = cfg.asic
    if a.clock_mhz <= 0 or a.vector_lanes <= 0 or a.sram_bytes <= 0:
        fail("[asic] clock_mhz, vector_lanes and sram_bytes must be positive")
    for table in ("op_latency_cyc", "op_passes"):
        ops = getattr(a, table)
        unknown = set(ops) - set(ASIC_OPS)
        if unknown:
            fail(f"[asic.{table}] unknown op(s) {sorted(unknown)}; known: {list(ASIC_OPS)}")
        missing = [op for op in ASIC_OPS if op not in ops]
        if missing:
            fail(f"[asic.{table}] missing op(s) {missing}")
        for op, v in ops.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                fail(f"[asic.{table}] {op} = {v!r} must be a non-negative integer")
    for n in ("exp_taylor_terms", "gelu_taylor_terms", "recip_newton_steps", "rsqrt_newton_steps"):
        if getattr(a, n) < 1:
            fail(f"[asic] {n} = {getattr(a, n)} must be at least 1")
    li = cfg.link
    if li.bytes_per_cyc <= 0 or li.clock_mhz <= 0 or li.latency_cyc < 0:
        fail("[link] bytes_per_cyc and clock_mhz must be positive, latency_cyc non-negative")
    if not math.isfinite(a.clock_mhz) or not math.isfinite(li.clock_mhz):
        fail("clock frequencies must be finite")
    e = cfg.energy
    if e is not None:
        for f in dataclasses.fields(e):
            v = getattr(e, f.name)
            if f.name == "table":
                if not v.strip():
                    fail("[energy] table must name the source of the numbers")
            elif v < 0 or (f.name in ("vdd_v", "channels_per_chip") and v <= 0):
                fail(f"[energy] {f.name} = {v} must be {'positive' if f.name in ('vdd_v', 'channels_per_chip') else 'non-negative'}")
        if e.idd3n_ma < e.idd2n_ma:
            fail(f"[energy] idd3n_ma = {e.idd3n_ma} < idd2n_ma = {e.idd2n_ma}: active standby "
                 f"must draw at least the precharged standby current")
        if e.idd0_ma < e.idd3n_ma or e.idd4r_ma < e.idd3n_ma or e.idd4w_ma < e.idd3n_ma:
            fail("[energy] idd0/idd4r/idd4w must be at least idd3n (they add to the standby current)")


def channel_ids(cfg: HwConfig) -> list[int]:
    """Physical channel numbers the config uses, in order (from channel_mask)."""
    mask = cfg.org.channel_mask or ((1 << cfg.org.channels) - 1)
    return [i for i in range(mask.bit_length()) if mask >> i & 1]
