"""Serving metrics: per-request latencies and vLLM ``benchmark_serving``'s summary.

Per request (seconds from the start of the stream, latencies in ms): arrival, first token,
finish; TTFT (first token - arrival), TPOT ((E2E - TTFT) / (output tokens - 1), vLLM's
definition; none for a one-token output), ITL (the gaps between successive output tokens), E2E
latency (finish - arrival), preemptions.

Summary keys, as ``benchmark_serving`` names them, units in the names or here: ``completed``
(requests), ``duration`` (s, from the start of the stream to the last completion),
``request_throughput`` (requests/s), ``output_throughput`` (output tokens/s),
``total_token_throughput`` (prompt + output tokens/s), ``mean/median/p99_ttft_ms``,
``mean/median/p99_tpot_ms``, ``mean/median/p99_itl_ms``, ``mean/median/p99_e2el_ms``. Added:
``total_input_tokens``, ``total_output_tokens``, ``energy_j`` (the steps' energy; idle time
between steps costs none), ``energy_per_output_token_mj``, ``avg_power_w`` (energy over
duration), ``utilisation`` (fraction of the duration the system ran steps) and
``device_utilisation`` (per device), ``num_preemptions``, ``refused`` (requests that can never
run; their reasons are in ``ServeResult.refused``), ``num_steps``, ``max_num_seqs_seen``,
``max_kv_used_tokens``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workloads.serving.scheduler import RequestState, StepRecord


@dataclass(frozen=True)
class RequestRecord:
    """One request's outcome (times in s from the start of the stream, latencies in ms)."""

    id: int
    arrival_s: float
    prompt_len: int
    output_len: int
    output_tokens: int
    first_token_s: float | None
    finish_s: float | None
    ttft_ms: float | None
    tpot_ms: float | None
    e2el_ms: float | None
    itl_ms: tuple[float, ...]
    preemptions: int
    refused: str | None

    @classmethod
    def of(cls, s: RequestState) -> "RequestRecord":
        r, t = s.req, s.token_times_s
        first = t[0] if t else None
        ttft = (first - r.arrival_s) * 1e3 if first is not None else None
        e2e = (s.finish_s - r.arrival_s) * 1e3 if s.finish_s is not None else None
        tpot = (e2e - ttft) / (len(t) - 1) if e2e is not None and len(t) > 1 else None
        itl = tuple((b - a) * 1e3 for a, b in zip(t, t[1:]))
        return cls(r.id, r.arrival_s, r.prompt_len, r.output_len, s.num_output, first,
                   s.finish_s, ttft, tpot, e2e, itl, s.preemptions, s.refused)

    def row(self) -> dict:
        """Flat: the ITLs as their mean, max and count."""
        d = {k: getattr(self, k) for k in (
            "id", "arrival_s", "prompt_len", "output_len", "output_tokens", "first_token_s",
            "finish_s", "ttft_ms", "tpot_ms", "e2el_ms")}
        d["mean_itl_ms"] = float(np.mean(self.itl_ms)) if self.itl_ms else None
        d["max_itl_ms"] = max(self.itl_ms) if self.itl_ms else None
        d["preemptions"] = self.preemptions
        d["refused"] = self.refused
        return d


def _stats(name: str, vals: list[float]) -> dict:
    a = np.asarray(vals, np.float64)
    if not len(a):
        return {f"mean_{name}_ms": None, f"median_{name}_ms": None, f"p99_{name}_ms": None}
    return {f"mean_{name}_ms": float(a.mean()), f"median_{name}_ms": float(np.median(a)),
            f"p99_{name}_ms": float(np.percentile(a, 99))}


def summarise(recs: list[RequestRecord], steps: list[StepRecord], devices: int) -> dict:
    done = [r for r in recs if r.finish_s is not None]
    duration = max((r.finish_s for r in done), default=0.0)
    n_in = sum(r.prompt_len for r in done)
    n_out = sum(r.output_tokens for r in done)
    energy = None if any(s.energy_j is None for s in steps) else \
        math.fsum(s.energy_j for s in steps)
    busy = math.fsum(s.time_s for s in steps)
    per_dev = [math.fsum(s.per_device_busy_s[d] for s in steps if d < len(s.per_device_busy_s))
               for d in range(devices)]

    def per_s(x):
        return x / duration if duration > 0 else None

    out = {"completed": len(done), "duration": duration,
           "total_input_tokens": n_in, "total_output_tokens": n_out,
           "request_throughput": per_s(len(done)), "output_throughput": per_s(n_out),
           "total_token_throughput": per_s(n_in + n_out)}
    out.update(_stats("ttft", [r.ttft_ms for r in done]))
    out.update(_stats("tpot", [r.tpot_ms for r in done if r.tpot_ms is not None]))
    out.update(_stats("itl", [x for r in done for x in r.itl_ms]))
    out.update(_stats("e2el", [r.e2el_ms for r in done]))
    out.update({
        "energy_j": energy,
        "energy_per_output_token_mj": energy / n_out * 1e3 if energy is not None and n_out
        else None,
        "avg_power_w": per_s(energy) if energy is not None else None,
        "utilisation": per_s(busy),
        "device_utilisation": [per_s(b) for b in per_dev],
        "num_preemptions": sum(r.preemptions for r in recs),
        "refused": sum(r.refused is not None for r in recs),
        "num_steps": len(steps),
        "max_num_seqs_seen": max((s.num_seqs for s in steps), default=0),
        "max_kv_used_tokens": max((s.kv_used_tokens for s in steps), default=0)})
    return out


@dataclass
class ServeResult:
    """A serving simulation: ``config`` (what ran: model, hw, cost and its label, scheduler
    limits, KV capacity, the stream), ``requests`` (:class:`RequestRecord` per request, in
    arrival order), ``steps`` (every scheduler step), ``metrics`` (the summary)."""

    config: dict
    requests: list[RequestRecord]
    steps: list[StepRecord] = field(repr=False)
    metrics: dict = field(default_factory=dict)

    @property
    def refused(self) -> list[dict]:
        return [{"id": r.id, "reason": r.refused} for r in self.requests if r.refused]

    def to_dict(self) -> dict:
        """JSON-ready: config, metrics, the refused requests and one row per request."""
        return {"config": self.config, "metrics": self.metrics, "refused_requests": self.refused,
                "requests": [{**r.row(), "itl_ms": list(r.itl_ms)} for r in self.requests]}

    def rows(self) -> list[dict]:
        return [r.row() for r in self.requests]

    def to_pandas(self) -> Any:
        """A pandas DataFrame, one row per request (:meth:`RequestRecord.row`)."""
        from workloads.compiling import pandas_module

        return pandas_module().DataFrame(self.rows())

    def write_csv(self, path: str | Path) -> Path:
        """The per-request rows as CSV; a UserError naming the file when it cannot be written."""
        from pimsim.outputs import atomic_write

        rows = self.rows()
        with atomic_write(path, "CSV file (--csv)", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["id"])
            w.writeheader()
            w.writerows(rows)
        return Path(path)

    def summary(self) -> str:
        """A few lines for people: the cost's label, the headline metrics with units."""
        c, m = self.config, self.metrics

        def f(v, fmt=".3g"):
            return "n/a" if v is None else format(v, fmt)

        lines = [
            f"serve {c['model']} on {c['system']}: {c['cost_label']}",
            f"  {c['num_requests']} requests, max_num_seqs {c['max_num_seqs']}, "
            f"max_num_batched_tokens {c['max_num_batched_tokens']}, KV capacity "
            f"{c['kv_capacity_tokens']:,} tokens",
            f"  completed {m['completed']}, refused {m['refused']}, preemptions "
            f"{m['num_preemptions']}, duration {f(m['duration'], '.4g')} s, "
            f"{m['num_steps']} steps",
            f"  throughput: {f(m['request_throughput'])} req/s, {f(m['output_throughput'])} "
            f"output tok/s, {f(m['total_token_throughput'])} total tok/s",
        ]
        for k, what in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E")):
            lines.append(f"  {what:5s} ms: mean {f(m[f'mean_{k}_ms'])}, median "
                         f"{f(m[f'median_{k}_ms'])}, p99 {f(m[f'p99_{k}_ms'])}")
        lines.append(f"  energy: {f(m['energy_per_output_token_mj'])} mJ/output token, "
                     f"average power {f(m['avg_power_w'])} W, utilisation "
                     f"{f(m['utilisation'], '.1%') if m['utilisation'] is not None else 'n/a'}")
        x = c.get("xpu")
        if x:
            b, e = x["busy_s"], x["energy_j"]
            lines.append(f"  busy: xPU {b['xpu']:.4g} s, PIM {b['pim']:.4g} s, link to PIM "
                         f"{b['link_to_pim']:.4g} s, back {b['link_from_pim']:.4g} s of "
                         f"{x['time_s']:.4g} s; energy xPU {e['xpu']:.4g} J, PIM "
                         f"{e['pim']:.4g} J, link {e['link']:.4g} J ({x['link']})")
        for r in self.refused[:5]:
            lines.append(f"  refused request {r['id']}: {r['reason']}")
        if len(self.refused) > 5:
            lines.append(f"  ... and {len(self.refused) - 5} more refused")
        return "\n".join(lines)
