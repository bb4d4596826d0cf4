"""Reports: what a simulation measured, as a readable summary or one JSON object for tools."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pimsim.config import HwConfig
from pimsim.engine import SimResult


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
            syncs=len(res.segment_end_cyc),
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
