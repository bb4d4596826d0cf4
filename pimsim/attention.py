"""Decode attention of one layer on one PIM device, simulated at command level.

The attention of a decode step is the program's ``kv_write`` (the new token's K and V written
into the cache), ``attn_score`` (q against the cached keys on the banks), ``softmax`` (on the
ASIC) and ``attn_value`` (the weights against the cached values) steps of one layer.
:func:`attention_program` cuts them out of a compiled program as a program of their own (the
dependencies among them kept, those on the rest of the step dropped: q, k and v are taken as
ready at the start), and :func:`attention_cycles` runs it from a fresh device state (all banks
precharged, refresh on as the config says) at a context length.

:func:`attention_table` does that over context lengths and fits the line other serving
simulators use for a PIM attention block (LLMServingSim's ``serving/core/pim_model.py``,
``latency_ns = slope x L + intercept`` per request and layer, commit
5daddb21a545658d5150b535712d0494584b5278), with the effective bandwidth that slope implies: the
K and V bytes of one token of that layer (one device's heads) over the slope.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pimsim.config import HwConfig
from pimsim.errors import UserError
from pimsim.isa import Program

ATTENTION_OPS = ("kv_write", "attn_score", "softmax", "attn_value")


def attention_program(prog: Program, layer: int | None = 0,
                      ops: tuple[str, ...] = ATTENTION_OPS) -> Program:
    """The decode attention of ``layer`` (None: of every layer) as a program: the steps of
    ``ops`` (:data:`ATTENTION_OPS`) of that layer, renumbered, their dependencies among
    themselves kept."""
    picked = [s for s in prog.steps
              if (layer is None or s.layer == layer) and s.layer >= 0 and s.op in ops]
    if not picked or not {"attn_score", "attn_value"} & set(ops) <= {s.op for s in picked}:
        raise UserError(f"{prog.model}: layer {layer} has no decode attention on PIM",
                        "give a model whose attention runs on the PIM banks (a decoder of "
                        "n_layer >= 1) and a layer in 0..n_layer-1")
    new = {s.index: i for i, s in enumerate(picked)}
    steps = [dataclasses.replace(s, index=new[s.index],
                                 deps=tuple(new[d] for d in s.deps if d in new))
             for s in picked]
    return dataclasses.replace(prog, steps=steps)


def kv_only_program(prog: Program, ops: tuple[str, ...] = ATTENTION_OPS) -> Program:
    """The ``ops`` steps of every layer as a program on a device that holds only the KV caches
    (attention offloaded to PIM beside an xPU that holds the weights): the KV block moved down
    to row 0, the weight matrices, tables and vector layout dropped, so a batched step's further
    KV regions (:class:`pimsim.batch.BatchedProgram`) fill every row above it."""
    from pimsim.batch import kv_block

    a = attention_program(prog, None, ops)
    lo, _ = kv_block(prog)
    moved = {kl.layer: (dataclasses.replace(kl, base_row=kl.base_row - lo),
                        dataclasses.replace(vl, base_row=vl.base_row - lo))
             for kl, vl in prog.kv_layouts}
    steps = [dataclasses.replace(s, kv=moved[s.kv[0].layer]) if s.kv is not None else s
             for s in a.steps]
    return dataclasses.replace(a, steps=steps, kv_layouts=[moved[k.layer] for k, _ in
                                                           prog.kv_layouts],
                               matrices={}, tables={}, vec_layout=None)


def attention_cycles(prog: Program, cfg: HwConfig, length: int, *,
                     fast: bool = True) -> int:
    """Device cycles of one decode attention (:func:`attention_program` ``prog`` itself) for
    a token at position ``length``: ``length`` cached tokens plus its own, from a fresh device
    state."""
    from pimsim.decode import DecodeSimulator

    sim = DecodeSimulator(prog, cfg, fast=fast)
    tt = sim.run_token(int(length))
    return int(tt.end_cyc - tt.start_cyc)


def kv_bytes_per_token(prog: Program, layer: int = 0) -> int:
    """K and V bytes of one token of ``layer`` on this device (its KV heads x (the key's and
    the value's elements per head))."""
    for kl, vl in prog.kv_layouts:
        if kl.layer == layer:
            heads = kl.n_kv_head or kl.n_head
            return heads * (kl.d_head + vl.d_head) * prog.geo.elem_bytes
    raise UserError(f"{prog.model}: layer {layer} has no KV cache",
                    "give a layer in 0..n_layer-1")


def default_lengths(n_ctx: int) -> list[int]:
    """Context lengths for a table: powers of two from 128 (or 1) up to the context, the last
    position included."""
    start = 128 if n_ctx > 256 else 1
    out, L = [], start
    while L < n_ctx - 1:
        out.append(L)
        L *= 2
    out.append(n_ctx - 1)
    return sorted(set(out))


@dataclasses.dataclass
class AttentionTable:
    """Simulated attention latency of one layer against context length, and its line."""

    model: str
    hw: str
    layer: int
    n_head: int
    n_kv_head: int
    d_head: int
    devices: int  # tensor-parallel devices the heads are split over (one is simulated)
    lengths: list[int]
    cycles: list[int]
    ns: list[float]
    slope_ns: float  # per context token
    intercept_ns: float
    kv_bytes_per_token: int  # one layer, one device
    tck_ps: int

    @property
    def effective_gb_s(self) -> float:
        """K and V bytes of one token over the slope: the bandwidth the line implies (GB/s)."""
        return self.kv_bytes_per_token / self.slope_ns if self.slope_ns > 0 else float("inf")

    @property
    def system_gb_s(self) -> float:
        """K and V bytes of one token of the layer, every KV head, over the slope: the
        system's bandwidth (the devices of a tensor-parallel group work at once; GB/s)."""
        full = self.kv_bytes_per_token * self.n_kv_head // self.kv_heads_per_device
        return full / self.slope_ns if self.slope_ns > 0 else float("inf")

    @property
    def kv_heads_per_device(self) -> int:
        return -(-self.n_kv_head // self.devices)

    @property
    def spec_name(self) -> str:
        return self.hw

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["effective_gb_s"] = self.effective_gb_s
        d["system_gb_s"] = self.system_gb_s
        d["max_fit_error_ns"] = self.max_fit_error_ns
        return d

    @property
    def max_fit_error_ns(self) -> float:
        """The largest distance of a simulated point from the line (ns)."""
        return max(abs(t - (self.slope_ns * L + self.intercept_ns))
                   for L, t in zip(self.lengths, self.ns))

    def table(self) -> str:
        lines = [f"decode attention of one layer (layer {self.layer}): {self.model} on "
                 f"{self.hw}, {self.n_head} heads / {self.n_kv_head} KV heads x d_head "
                 f"{self.d_head}" + (f", heads split over {self.devices} devices (one simulated)"
                                     if self.devices > 1 else ""),
                 f"{'context L':>10} {'cycles':>10} {'ns':>12} {'line ns':>12}"]
        for L, c, t in zip(self.lengths, self.cycles, self.ns):
            lines.append(f"{L:>10} {c:>10} {t:>12.1f} "
                         f"{self.slope_ns * L + self.intercept_ns:>12.1f}")
        lines.append(f"line: {self.slope_ns:.4f} ns x L + {self.intercept_ns:.4f} ns (least "
                     f"squares; largest distance {self.max_fit_error_ns:.1f} ns)")
        lines.append(f"implied effective bandwidth: {self.kv_bytes_per_token} B of K and V per "
                     f"token / {self.slope_ns:.4f} ns = {self.effective_gb_s:.2f} GB/s"
                     + (f" per device, {self.system_gb_s:.2f} GB/s for the {self.devices} "
                        "devices" if self.devices > 1 else ""))
        return "\n".join(lines)

    def pim_model(self) -> str:
        """The line as an entry of LLMServingSim's ``attn_model`` table
        (``serving/core/pim_model.py``, ``estimate_with_linear``: ns per request and layer)."""
        return (f"# {self.model} ({self.n_head} heads, {self.n_kv_head} KV heads, d_head "
                f"{self.d_head}) on {self.hw}: simulated by pimsim at command level\n"
                f'"{self.spec_name}": {{\n    "slope": {self.slope_ns:.4f},\n'
                f'    "intercept": {self.intercept_ns:.4f},\n}},')


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through the points (one point: slope 0)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(x) == 1 or np.ptp(x) == 0:
        return 0.0, float(y.mean())
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def attention_table(prog: Program, cfg: HwConfig, lengths: Sequence[int] | None = None, *,
                    layer: int = 0) -> AttentionTable:
    """Simulate ``layer``'s decode attention of ``prog`` (one device's program) at each context
    length and fit the line (see the module docstring)."""
    n_ctx = int(prog.dims["n_ctx"])
    lengths = default_lengths(n_ctx) if lengths is None else sorted({int(L) for L in lengths})
    bad = [L for L in lengths if not 0 <= L < n_ctx]
    if bad or not lengths:
        raise UserError(f"context lengths {bad or lengths} outside the model's context of "
                        f"{n_ctx} positions",
                        f"give lengths in 0..{n_ctx - 1} (--context N reserves a longer cache)")
    aprog = attention_program(prog, layer)
    cyc = [attention_cycles(aprog, cfg, L) for L in lengths]
    ns = [cfg.timing.ns(c) for c in cyc]
    slope, icpt = fit_line(lengths, ns)
    kl = next(k for k, _ in prog.kv_layouts if k.layer == layer)
    return AttentionTable(
        model=prog.model, hw=cfg.name, layer=layer, n_head=int(prog.dims["n_head"]),
        n_kv_head=int(prog.dims.get("n_kv_head", prog.dims["n_head"])),
        d_head=int(prog.dims["d_head"]), devices=int(prog.tp), lengths=list(lengths),
        cycles=cyc, ns=ns, slope_ns=slope, intercept_ns=icpt,
        kv_bytes_per_token=kv_bytes_per_token(prog, kl.layer), tck_ps=cfg.tCK_ps)
