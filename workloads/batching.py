"""Batched decode against the batch size: step time, tokens/s and where the PIM system saturates.

:func:`scan_batches` simulates one model on one system at several batch sizes
(:func:`workloads.session.simulate` with ``batch``, :mod:`pimsim.batch`) and returns a
:class:`BatchScan`: per batch the time of a decode step, the tokens per second of all sequences
(B / step time) and the MAC-rate bound of the step (B x weight MACs / (PIM units x MACs per
unit per cycle)); the bound's ceiling on tokens/s (B / bound, the same for every B) and the batch at
which the measured tokens/s reach 95 % of the best measured (the saturation point).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pimsim.batch import check_batch
from pimsim.errors import UserError

SATURATION_SHARE = 0.95  # a batch within this share of the best tokens/s has saturated


@dataclass
class BatchScan:
    """The rows of a batch scan and its saturation point (see the module docstring)."""

    model: str
    hw: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    mac_bound_tokens_per_s: float = 0.0
    peak_tokens_per_s: float = 0.0
    saturation_batch: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"{self.model} on {self.hw}: batched decode, time per step against the batch",
                 f"  {'B':>5} {'ms/step':>10} {'tokens/s':>12} {'MAC bound ms/step':>18} "
                 f"{'x bound':>8}"]
        for r in self.rows:
            lines.append(f"  {r['batch']:>5} {r['ms_per_step']:>10.4f} {r['tokens_per_s']:>12,.1f} "
                         f"{r['mac_bound_ms_per_step']:>18.4f} {r['bound_ratio']:>8.2f}")
        lines.append(f"  saturates at B = {self.saturation_batch} ({SATURATION_SHARE:.0%} of the "
                     f"best {self.peak_tokens_per_s:,.1f} tokens/s); the MAC-rate bound allows "
                     f"{self.mac_bound_tokens_per_s:,.1f} tokens/s at any B (B x weight MACs / "
                     f"(PIM units x MACs per unit per cycle))")
        return "\n".join(lines)


def scan_batches(model: str | Any, hw: Any = "pim-gpt", batches: list[int] = (1, 2, 4, 8),
                 **simulate_kw) -> BatchScan:
    """Simulate ``model`` on ``hw`` at every batch of ``batches`` (other arguments as for
    :func:`workloads.session.simulate`, which compiles once and reuses the program)."""
    from workloads.session import simulate

    batches = [check_batch(b) for b in batches]
    if not batches:
        raise UserError("no batch sizes to scan", "give at least one batch size")
    scan = None
    for b in sorted(set(batches)):
        res = simulate(model, hw, batch=b, **simulate_kw)
        rep = res.report
        if scan is None:
            scan = BatchScan(rep.model, rep.hw)
            model = res.compiled  # compiled once
        x = rep.extra["batch"]
        bound = x["mac_bound_ms_per_step"]
        scan.rows.append({"batch": b, "ms_per_step": x["ms_per_step"],
                          "tokens_per_s": x["tokens_per_s"], "mac_bound_ms_per_step": bound,
                          "bound_ratio": x["ms_per_step"] / bound if bound else 0.0,
                          "cycles": rep.cycles})
        scan.mac_bound_tokens_per_s = 1000.0 * b / bound if bound else 0.0
    scan.peak_tokens_per_s = max(r["tokens_per_s"] for r in scan.rows)
    scan.saturation_batch = next(r["batch"] for r in scan.rows
                                 if r["tokens_per_s"] >= SATURATION_SHARE * scan.peak_tokens_per_s)
    return scan
