"""Reports: what a simulation measured, as a readable summary or one JSON object for tools.

:class:`TraceReport` for AiM trace replay, :class:`RunReport` for token generation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pimsim.accounting import TIME_SHARES
from pimsim.config import HwConfig
from pimsim.engine import SimResult


def system_label(hw: str, devices: int = 1, tp: int = 1, pp: int = 1) -> str:
    """A PIM system in words: ``hw`` alone for one device, else ``hw (N devices: tp T x pp P)``
    (a config's name may itself hold a number, as aim-cxl-8 does: "8 x aim-cxl-8" would read as
    64 devices)."""
    if devices <= 1:
        return hw
    return f"{hw} ({devices} devices: tp {tp} x pp {pp})"


@dataclass
class TraceReport:
    """Result of replaying an AiM instruction trace."""

    hw: str
    trace: str
    refresh: bool
    tCK_ps: int
    cycles: int
    ns: float
    commands: dict[str, int]
    dram_commands: int
    row_hits: int
    row_misses: int
    row_hit_rate: float
    refreshes: int
    syncs: int
    host_ops: dict[str, int]
    per_channel: list[dict[str, Any]]
    wall_s: float = 0.0
    check_violations: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, cfg: HwConfig, trace_name: str, res: SimResult, *, syncs: int,
                    host_ops: dict[str, int], wall_s: float) -> "TraceReport":
        hits = sum(ch.timer.row_hits for ch in res.channels)
        misses = sum(ch.timer.row_misses for ch in res.channels)
        cmds = res.command_counts
        return cls(
            hw=cfg.name,
            trace=trace_name,
            refresh=cfg.refresh.enabled,
            tCK_ps=cfg.tCK_ps,
            cycles=res.cycles,
            ns=cfg.timing.ns(res.cycles),
            commands=dict(sorted(cmds.items())),
            dram_commands=int(sum(cmds.values())),
            row_hits=hits,
            row_misses=misses,
            row_hit_rate=hits / (hits + misses) if hits + misses else 0.0,
            refreshes=sum(ch.timer.refreshes for ch in res.channels),
            syncs=syncs,
            host_ops=host_ops,
            per_channel=[
                {"channel": ch.channel, "cycles": ch.timer.done_cyc,
                 "commands": int(ch.timer.counts.sum()), "row_hits": ch.timer.row_hits,
                 "row_misses": ch.timer.row_misses, "refreshes": ch.timer.refreshes}
                for ch in res.channels
            ],
            wall_s=wall_s,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def summary(self) -> str:
        lines = [
            f"trace {self.trace} on {self.hw} (refresh {'on' if self.refresh else 'off'}, "
            f"tCK {self.tCK_ps} ps)",
            f"  total      {self.cycles:,} cycles = {self.ns / 1000:,.3f} us",
            f"  commands   {self.dram_commands:,} DRAM/PIM commands over "
            f"{len(self.per_channel)} channel(s), {self.syncs} sync point(s)",
            "             " + ", ".join(f"{k} {v:,}" for k, v in self.commands.items()),
            f"  row hits   {self.row_hit_rate:.2%} ({self.row_hits:,} hits, "
            f"{self.row_misses:,} misses); {self.refreshes:,} refreshes",
        ]
        if self.host_ops:
            lines.append("  host ops   " + ", ".join(f"{k} {v}" for k, v in self.host_ops.items()))
        if self.check_violations is not None:
            lines.append(f"  checker    {self.check_violations} violation(s)")
        lines.append(f"  wall       {self.wall_s:.3f} s "
                     f"({self.dram_commands / max(self.wall_s, 1e-9) / 1e6:,.1f} M commands/s)")
        return "\n".join(lines)


BREAKDOWN_KEYS = TIME_SHARES  # the named shares of a token's time (pimsim.accounting)


class TimeTotals:
    """The generated tokens' cycles by time share and by op, summed token by token
    (:meth:`pimsim.accounting.TimeAccount.split`), and the report fields made of them."""

    def __init__(self):
        self.shares = np.zeros(len(BREAKDOWN_KEYS), np.float64)
        self.ops: dict[str, float] = {}

    def add(self, shares: np.ndarray, ops: dict[str, float]) -> None:
        self.shares += shares
        for k, v in ops.items():
            self.ops[k] = self.ops.get(k, 0.0) + v

    def add_share(self, name: str, cyc: float) -> None:
        self.shares[BREAKDOWN_KEYS.index(name)] += cyc

    def report_fields(self, cfg: HwConfig, n_gen: int) -> dict:
        """``breakdown`` (fractions of the time, summing to 1), ``breakdown_cyc`` (cycles per
        generated token by share, summing to the mean token's cycles) and ``per_op`` (ms per
        generated token on the critical path, summing to ms_per_token)."""
        from pimsim.isa import PER_OP_KEYS

        total = float(self.shares.sum())
        n = max(n_gen, 1)
        ns = cfg.timing.ns
        return {
            "breakdown": {k: float(v / total) if total else 0.0
                          for k, v in zip(BREAKDOWN_KEYS, self.shares)},
            "breakdown_cyc": {k: float(v / n) for k, v in zip(BREAKDOWN_KEYS, self.shares)},
            "per_op": {k: ns(self.ops.get(k, 0.0)) / 1e6 / n
                       for k in list(PER_OP_KEYS) + sorted(set(self.ops) - set(PER_OP_KEYS))},
        }


@dataclass
class RunReport:
    """Result of ``pimsim run``: one JSON object for tools, or a readable summary."""

    model: str
    hw: str
    schedule: str
    refresh: bool
    functional: bool
    prompt_tokens: int
    generated_tokens: int
    tCK_ps: int
    cycles: int
    ms_total: float
    ms_per_token: float
    tokens_per_s: float
    per_token_ms: list[float]
    row_hit_rate: float
    breakdown: dict[str, float]  # fractions of the generated tokens' time by share
    per_op: dict[str, float]  # ms per generated token on the critical path, by op
    commands: dict[str, int]
    tokens: list[int] = field(default_factory=list)
    energy: dict = field(default_factory=dict)
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)
    # the whole system: tokens per second of all sequences in flight (pipeline stages), and
    # devices / tp / pp / per-stage utilisation / bubble (pimsim.pipeline)
    throughput_tokens_per_s: float = 0.0
    system: dict = field(default_factory=dict)
    # the prompt (pimsim.prefill): how it was processed ("token-by-token": one decode step per
    # token; "batched": one step of all its tokens), or skipped (timing of the generating steps
    # only, at context prompt_tokens); the time to first token (None when skipped) and the
    # time per output token after it (None with one generated token)
    prefill: str = "token-by-token"
    prompt_skipped: bool = False
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    # cycles per generated token by share (the breakdown's fractions x the mean token's cycles)
    breakdown_cyc: dict = field(default_factory=dict)
    # mixture of experts (pimsim.moe): where the expert choice came from ("" without experts)
    routing: str = ""
    # bytes of weight matrices the whole system's GEMVs read per generated step (mean; with
    # experts only the chosen ones', with a batch the union of its sequences' choices)
    weight_bytes_per_step: float = 0.0
    # mixture of experts on a system (pimsim.expert_parallel): per device, the expert load
    # (token x expert pairs) and weight bytes per step and their imbalance, under expert
    # parallelism and under the tensor-parallel split ({} without experts)
    expert_load: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The fields; a batched run (:mod:`pimsim.batch`) adds its ``extra["batch"]`` keys at
        the top level too (``batch``, ``ms_per_step``, ``mac_bound_ms_per_step``, the bound's
        formula ``mac_bound``)."""
        d = asdict(self)
        d.update(self.extra.get("batch", {}))
        return d

    def latency_line(self) -> str:
        """TTFT and TPOT, labelled with how the prompt was processed."""
        tpot = "-" if self.tpot_ms is None else f"{self.tpot_ms:.4f} ms"
        if self.prompt_skipped:
            return (f"  prompt skipped (decode at context {self.prompt_tokens}): no TTFT; "
                    f"TPOT {tpot}")
        ttft = "-" if self.ttft_ms is None else f"{self.ttft_ms:.4f} ms"
        n = self.prompt_tokens
        how = "one decode step" if n == 1 else "one batched step" if self.prefill == "batched" \
            else f"{n} decode steps"
        gives = "the last giving" if n > 1 else "giving"
        return (f"  TTFT {ttft} (prefill {self.prefill}: {n} prompt token{'s' * (n > 1)} as "
                f"{how}, {gives} the first token), TPOT {tpot}")

    def summary(self) -> str:
        sy = self.system
        multi = sy.get("devices", 1) > 1
        lines = [
            f"{self.model} on "
            + system_label(self.hw, sy.get("devices", 1), sy.get("tp", 1), sy.get("pp", 1))
            + f": {self.prompt_tokens} prompt + {self.generated_tokens} "
            f"generated tokens ({self.schedule} schedule, refresh {'on' if self.refresh else 'off'}"
            f"{', functional' if self.functional else ''})",
            f"  {'per sequence: ' if multi else ''}{self.ms_per_token:.4f} ms/token, "
            f"{self.tokens_per_s:,.1f} tokens/s (first {self.per_token_ms[0]:.4f} ms, "
            f"last {self.per_token_ms[-1]:.4f} ms)"
            if self.per_token_ms else "  no generated tokens",
            f"  total {self.cycles:,} cycles = {self.ms_total:.3f} ms; row-buffer hit rate "
            f"{self.row_hit_rate:.2%}",
            "  time:   " + ", ".join(f"{k} {v:.1%}" for k, v in self.breakdown.items() if v > 0),
            "  per op (ms/token, critical path): " + ", ".join(f"{k} {v:.4f}" for k, v in self.per_op.items()
                                                if v > 0),
            "  commands: " + ", ".join(f"{k} {v:,}" for k, v in self.commands.items()),
            self.latency_line(),
        ]
        if self.routing:
            lines.append(f"  experts: routing {self.routing}; weights read "
                         f"{self.weight_bytes_per_step / 2**20:,.2f} MiB/step (whole system)")
            if self.expert_load and self.expert_load["devices"] > 1:
                from pimsim.expert_parallel import load_line

                lines.append(load_line(self.expert_load))
        b = self.extra.get("batch")
        if b:
            bound = b["mac_bound_ms_per_step"]
            lines.append(f"  batch {b['batch']}: {b['ms_per_step']:.4f} ms/step, "
                         f"{b['tokens_per_s']:,.1f} tokens/s; MAC-rate bound {bound:.4f} "
                         f"ms/step" + (f" ({b['ms_per_step'] / bound:.1f}x the bound)"
                                       if bound else "") + f" = {b['mac_bound']}")
        if self.tokens:
            lines.append(f"  generated ids: {self.tokens[:16]}{' ...' if len(self.tokens) > 16 else ''}")
        if self.energy:
            e = self.energy
            lines.append(f"  energy: {e['mj_per_token']:.4f} mJ/token ("
                         + ", ".join(f"{k} {v / e['j_per_token']:.1%}"
                                     for k, v in e["by_component"].items() if v > 0)
                         + f"); table: {e['table']}")
        if multi:
            n_seq = sy.get("sequences", sy["pp"])
            flight = f"{n_seq} sequence{'s' * (n_seq != 1)} in flight" if sy["pp"] > 1 \
                else "1 sequence"
            sizes = (b or {}).get("micro_batch_sizes")
            if sy["pp"] > 1 and sizes and len(set(sizes)) > 1:
                flight += ": micro-batches of " + " and ".join(
                    f"{sizes.count(k)} of {k}" for k in sorted(set(sizes), reverse=True))
                if b.get("round_ms"):
                    flight += f", a round of {n_seq} tokens {b['round_ms']:.4f} ms"
            elif sy["pp"] > 1 and n_seq > sy["pp"]:
                flight += f": {sy['pp']} micro-batches of {n_seq // sy['pp']}"
            ep = f", ep {sy['ep']}" if sy.get("ep", 1) > 1 else ""
            lines.append(f"  system ({sy['devices']} devices: tp {sy['tp']} x pp {sy['pp']}{ep}): "
                         f"{self.throughput_tokens_per_s:,.1f} tokens/s of all sequences "
                         f"({flight}); utilisation "
                         + ", ".join(f"{u:.0%}" for u in sy["utilisation"])
                         + f" per stage, bubble {sy['bubble']:.1%}"
                         + (f"; {self.energy['avg_power_w']:.1f} W" if self.energy else ""))
        lines.append(f"  wall {self.wall_s:.2f} s")
        return "\n".join(lines)
