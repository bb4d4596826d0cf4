"""Serving step cost of an xPU (a GPU of the analytic model) beside PIM devices, by placement.

Placements (``--placement``; what runs where in one continuous-batching step):

* ``xpu`` -- everything on the xPU: :class:`~workloads.serving.costs.GpuModelCost` exactly;
* ``pim`` -- everything on PIM: :class:`~workloads.serving.costs.PimBatchedCost` exactly;
* ``attention`` (AttAcc; ``--offload attention``) -- the decode sequences' q/K/V projections,
  output projection, FFN and LM head on the xPU (:func:`workloads.gpu.model.predict_step` with
  ``decode_attention=False``: the weights once per step, no KV); their attention (the new K/V
  written, scores, softmax, context) on PIM, simulated at command level as one batched step of
  the attention steps of every layer on a device holding only the KV caches
  (:func:`pimsim.attention.kv_only_program`, :func:`pimsim.batch.step_cost`); the prompt chunks
  run whole on the xPU and their K/V is written to PIM (the ``kv_write`` steps of their
  positions, simulated the same way). Per layer and decode token, q, k and v cross the link to
  PIM and the context comes back; a chunk's K/V crosses once per layer;
* ``prefill`` (IANUS; ``--prefill-on xpu``) -- prompt chunks on the xPU, their K/V handed to
  PIM over the link and written there; decode on PIM as in ``pim``.

Each step is a few chains of tasks on four resources: the xPU, PIM, the link to PIM and the
link back (full duplex; :mod:`workloads.xpu.link`). A task starts when its chain's previous
task has finished (a transfer's data one link latency after it left) and its resource is free;
tasks take a resource in the order listed, chain after chain at each stage (the contention
model). The step's time is the end of its last task:

* serial (the default): one chain, so the step time is the sum of every task: xPU busy + PIM
  busy + link busy + one latency per transfer;
* ``overlap`` (NeuPIMs' sub-batch interleaving): with ``attention``, the decode sequences split
  into two sub-batches (sizes as equal as possible; the prompt chunks go with the first), each
  its own chain, so the xPU's FC of one runs while PIM does the attention of the other; each
  sub-batch streams the weights on its own (:func:`predict_step` per sub-batch), the price
  NeuPIMs pays. With ``prefill``, the decode on PIM and the prefill on the xPU are two chains.
  The step time is the critical path of the schedule.

``attention_cost="per-sequence"`` (a faster estimate for long serving runs): the decode
sequences' attention is the sum of each sequence's own attention step at its position (memoised
per position) and a prompt chunk's K/V writes are simulated chunk by chunk, instead of one
batched step of them all; the batched step runs the sequences' attention items one sequence
after the other too, so the two differ only in the row-buffer state one sequence leaves the
next and in the softmax of the batch being one ASIC invocation
(``benchmarks/bench_xpu_pim.py`` prints the difference on a sampled step).

A chain's xPU time is cut into ``n_layer + 1`` equal pieces (the FC before the first attention,
between two, after the last) and its PIM and link times into ``n_layer`` equal pieces: layers
alike in shape ([assumed]: the kernel overheads and the LM head spread evenly).

Energy: the xPU's from its power model over its busy time (:func:`predict_step`) plus its idle
power for the rest of the step; PIM's from the simulator (every device of the tensor-parallel
group); the link's bytes x pJ/bit. PIM's standby while it waits for the xPU is not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from pimsim.errors import UserError
from workloads.serving.costs import StepTime, _check_positions

PLACEMENTS = ("attention", "prefill", "pim", "xpu")
ATTENTION_COSTS = ("batched", "per-sequence")
PLACEMENT_LABELS = {
    "attention": "attention on PIM, FC layers and prefill on the xPU (AttAcc)",
    "prefill": "prefill on the xPU, KV handed to PIM, decode on PIM (IANUS)",
    "pim": "everything on PIM",
    "xpu": "everything on the xPU",
}
RESOURCES = ("xpu", "pim", "link_to_pim", "link_from_pim")


@dataclass(frozen=True)
class Task:
    """One piece of work of a chain: its resource, how long it holds it (s) and how long its
    result takes to reach the next task after that (a link's latency; 0 otherwise)."""

    resource: str
    busy_s: float
    after_s: float = 0.0


def schedule(chains: Sequence[Sequence[Task]]) -> tuple[float, dict[str, float]]:
    """(makespan, busy seconds per resource) of the chains (see the module docstring: stage by
    stage, chain after chain; a task starts when its chain's previous task's result is there
    and its resource is free)."""
    ready = [0.0] * len(chains)
    free = dict.fromkeys(RESOURCES, 0.0)
    busy = dict.fromkeys(RESOURCES, 0.0)
    end = 0.0
    for i in range(max((len(c) for c in chains), default=0)):
        for k, chain in enumerate(chains):
            if i >= len(chain):
                continue
            t = chain[i]
            if t.busy_s == 0 and t.after_s == 0:
                continue
            start = max(ready[k], free[t.resource])
            free[t.resource] = start + t.busy_s
            busy[t.resource] += t.busy_s
            ready[k] = start + t.busy_s + t.after_s
            end = max(end, ready[k])
    return end, busy


@dataclass
class XpuTotals:
    """Busy time and energy of each side, summed over the steps priced so far."""

    steps: int = 0
    time_s: float = 0.0
    busy_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RESOURCES, 0.0))
    energy_j: dict[str, float] = field(default_factory=lambda: {"xpu": 0.0, "pim": 0.0,
                                                                "link": 0.0})
    link_bytes: float = 0.0

    def to_dict(self) -> dict:
        return {"steps": self.steps, "time_s": self.time_s, "busy_s": dict(self.busy_s),
                "energy_j": dict(self.energy_j), "link_bytes": self.link_bytes}


class XpuPimCost:
    """An xPU beside a PIM system (see the module docstring).

    ``compiled``: the model compiled for ``cfg`` (one pipeline stage); ``model``: its preset
    name for the GPU model; ``xpu``: a GPU preset (A100, H100, H200, T4) of the GPU model, with
    its shipped calibration (:func:`workloads.gpu.calibration.serving_preset`); ``link``: a
    :data:`workloads.xpu.link.LINKS` preset; ``placement``: one of :data:`PLACEMENTS`;
    ``overlap``: sub-batch interleaving; ``power``: the xPU's power model."""

    def __init__(self, compiled: Any, cfg: Any, model: str, *, xpu: str = "H100",
                 link: str = "pcie5", placement: str = "attention", overlap: bool = False,
                 power: str = "util", schedule: str = "serial", prefill: str = "batched",
                 kv_capacity_tokens: int | None = None, attention_cost: str = "batched"):
        from workloads.serving.costs import GpuModelCost, PimBatchedCost
        from workloads.xpu.link import xpu_link

        if placement not in PLACEMENTS:
            raise UserError(f"placement {placement!r} is not known",
                            f"use one of {', '.join(PLACEMENTS)}")
        if attention_cost not in ATTENTION_COSTS:
            raise UserError(f"attention cost {attention_cost!r} is not known",
                            f"use one of {', '.join(ATTENTION_COSTS)}")
        self.placement, self.overlap = placement, bool(overlap)
        self.attention_cost = attention_cost
        self.gpu = GpuModelCost(xpu, model, power=power)
        self.pim = PimBatchedCost(compiled, cfg, schedule=schedule, prefill=prefill)
        self.cfg, self.schedule = cfg, schedule
        self.link = xpu_link(link, cfg.system.devices)
        self.devices = self.pim.devices + 1
        self.n_ctx = min(int(self.gpu.n_ctx), int(self.pim.n_ctx))
        self.shape = self.gpu.shape
        self.name = f"{self.gpu.name}+pim" if placement not in ("pim", "xpu") else \
            ("pim" if placement == "pim" else self.gpu.name)
        how = "overlapped sub-batches" if self.overlap else "serial"
        if attention_cost == "per-sequence" and placement == "attention":
            how += ", PIM attention priced per sequence"
        self.label = (f"{self.gpu.label} + {cfg.name} over {self.link.name}: "
                      f"{PLACEMENT_LABELS[placement]}, {how}")
        self.totals = XpuTotals()
        prog = self.pim.programs[0]
        self._memo: dict[tuple, tuple[float, float | None]] = {}
        if placement == "attention":
            from pimsim.attention import kv_only_program
            from pimsim.batch import max_batch

            self.attn_prog = kv_only_program(prog)
            self.kvw_prog = kv_only_program(prog, ("kv_write",))
            self.max_batch = max_batch(self.attn_prog)
            cap = self.max_batch * int(prog.dims["n_ctx"])
        else:
            from pimsim.attention import attention_program

            self.kvw_prog = attention_program(prog, None, ("kv_write",))
            self.max_batch = self.pim.max_batch
            cap = self.pim.kv_capacity_tokens if placement != "xpu" else \
                self.gpu.kv_capacity_tokens
        self.kv_capacity_tokens = cap if kv_capacity_tokens is None else int(kv_capacity_tokens)
        from pimsim.timing.memo import new_memo

        self._kmemo = new_memo()
        s = self.shape
        el = 2  # fp16 activations and KV on both sides
        d_attn, d_kv = s.n_head * s.d_head, s.n_kv_head * s.d_head
        self.to_pim_bytes = (d_attn + 2 * d_kv) * el  # q, k, v of one token, one layer
        self.from_pim_bytes = d_attn * el  # its context
        self.kv_bytes = 2 * d_kv * el  # K and V of one token, one layer

    def share_simulations(self, other: "XpuPimCost") -> None:
        """Reuse ``other``'s simulated PIM steps (the same compiled program and config, e.g.
        the serial and the overlapped cost of one system): its programs and memos."""
        if other.pim.programs[0] is not self.pim.programs[0] or other.cfg is not self.cfg:
            raise ValueError("share simulations of the same compiled program and config")
        self.attn_prog = getattr(other, "attn_prog", None)
        self.kvw_prog, self._memo, self._kmemo = other.kvw_prog, other._memo, other._kmemo

    # ---------------------------------------------------------------- PIM pieces

    def _pim_run(self, prog: Any, positions: tuple[int, ...],
                 regions: tuple[int, ...]) -> tuple[float, float | None]:
        """(seconds, joules of the system) of one batched step of ``prog`` (memoised)."""
        key = (id(prog), positions, regions)
        got = self._memo.get(key)
        if got is None:
            from pimsim.batch import step_cost

            cyc, j = step_cost(prog, self.cfg, positions, regions, schedule=self.schedule,
                               memo=self._kmemo)
            got = self._memo[key] = (self.cfg.timing.ns(cyc) / 1e9,
                                     None if j is None else j * self.pim.devices)
        return got

    def _groups(self, seq: Sequence, most: int) -> list[tuple]:
        n = -(-len(seq) // most)
        out, i = [], 0
        for g in range(n):
            size = len(seq) // n + (g < len(seq) % n)
            out.append(tuple(seq[i:i + size]))
            i += size
        return out

    def pim_attention(self, decode: Sequence[int]) -> tuple[float, float]:
        """(seconds, joules) of the decode sequences' attention on PIM, every layer."""
        t = e = 0.0
        per_seq = self.attention_cost == "per-sequence"
        groups = [(p,) for p in decode] if per_seq else self._groups(list(decode), self.max_batch)
        for g in groups:
            s, j = self._pim_run(self.attn_prog, tuple(g), tuple(range(len(g))))
            t, e = t + s, e + (j or 0.0)
        return t, e

    def pim_kv_writes(self, chunks: Sequence[tuple[int, int]]) -> tuple[float, float]:
        """(seconds, joules) of writing the prompt chunks' K/V into PIM, every layer."""
        t = e = 0.0
        per_seq = self.attention_cost == "per-sequence"
        for g in ([(c,) for c in chunks] if per_seq else self._groups(list(chunks), self.max_batch)):
            pos = tuple(p for s, n in g for p in range(s, s + n))
            reg = tuple(r for r, (_, n) in enumerate(g) for _ in range(n))
            s_, j = self._pim_run(self.kvw_prog, pos, reg)
            t, e = t + s_, e + (j or 0.0)
        return t, e

    def pim_decode(self, decode: Sequence[int]) -> tuple[float, float]:
        """(seconds, joules) of whole decode steps on PIM (the ``prefill`` placement)."""
        t = e = 0.0
        for g in self.pim.groups(decode):
            _, s, j = self.pim.batch_step(g)
            t, e = t + s, e + (j or 0.0)
        return t, e

    # ---------------------------------------------------------------- xPU pieces

    def xpu_step(self, decode: Sequence[int], chunks: Sequence[tuple[int, int]], *,
                 attention: bool) -> tuple[float, float]:
        """(seconds, joules) of one forward pass on the xPU (``attention``: the decode
        sequences' attention too)."""
        from workloads.gpu.model import predict_step

        if not decode and not chunks:
            return 0.0, 0.0
        r = predict_step(self.gpu.spec, self.shape, list(decode), list(chunks),
                         power=self.gpu.power, decode_attention=attention)
        return r["ms"] / 1e3, r["joules"]

    # ---------------------------------------------------------------- the step

    def _layered(self, xpu_s: float, to_b: float, pim_s: float, from_b: float) -> list[Task]:
        """One chain: xPU piece, link to PIM, PIM piece, link back, per layer; a last xPU
        piece."""
        L = self.shape.n_layer
        lk, lat = self.link, self.link.latency_s
        out: list[Task] = []
        for _ in range(L):
            out.append(Task("xpu", xpu_s / (L + 1)))
            if to_b:
                out.append(Task("link_to_pim", lk.transfer_s(to_b / L), lat))
            out.append(Task("pim", pim_s / L))
            if from_b:
                out.append(Task("link_from_pim", lk.transfer_s(from_b / L), lat))
        out.append(Task("xpu", xpu_s / (L + 1)))
        return out

    def step(self, decode_ctx_lens: Sequence[int],
             prefill_chunks: Sequence[tuple[int, int]]) -> StepTime:
        _check_positions(decode_ctx_lens, prefill_chunks, self.n_ctx)
        decode, chunks = list(decode_ctx_lens), list(prefill_chunks)
        if self.placement == "xpu":
            st = self.gpu.step(decode, chunks)
            return self._record(st.time_s, {"xpu": st.time_s}, st.energy_j or 0.0, 0.0, 0.0, 0.0,
                                xpu_idle=False)
        if self.placement == "pim":
            st = self.pim.step(decode, chunks)
            return self._record(st.time_s, {"pim": st.time_s}, 0.0, st.energy_j or 0.0, 0.0,
                                0.0, cycles=st.cycles)
        L = self.shape.n_layer
        chunk_tokens = sum(n for _, n in chunks)
        kv_b = chunk_tokens * self.kv_bytes * L
        chains: list[list[Task]] = []
        e_x = e_p = 0.0
        link_b = 0.0
        if self.placement == "attention":
            subs = [decode]
            if self.overlap and len(decode) >= 2:
                h = (len(decode) + 1) // 2
                subs = [decode[:h], decode[h:]]
            for k, sub in enumerate(subs):
                ch = chunks if k == 0 else []
                xs, xj = self.xpu_step(sub, ch, attention=False)
                ps, pj = self.pim_attention(sub) if sub else (0.0, 0.0)
                ws, wj = self.pim_kv_writes(ch) if ch else (0.0, 0.0)
                to_b = len(sub) * self.to_pim_bytes * L + (kv_b if k == 0 else 0.0)
                from_b = len(sub) * self.from_pim_bytes * L
                chains.append(self._layered(xs, to_b, ps + ws, from_b))
                e_x, e_p, link_b = e_x + xj, e_p + pj + wj, link_b + to_b + from_b
        else:  # prefill on the xPU, decode on PIM
            xs, xj = self.xpu_step([], chunks, attention=True)
            ws, wj = self.pim_kv_writes(chunks) if chunks else (0.0, 0.0)
            ds, dj = self.pim_decode(decode) if decode else (0.0, 0.0)
            lat = self.link.latency_s
            pre = [Task("xpu", xs)] + ([Task("link_to_pim", self.link.transfer_s(kv_b), lat),
                                        Task("pim", ws)] if chunks else [])
            dec = [Task("pim", ds)]
            chains = [dec, pre] if self.overlap else [pre + dec]
            e_x, e_p, link_b = xj, wj + dj, kv_b
        t, busy = schedule(chains)
        return self._record(t, busy, e_x, e_p, self.link.energy_j(link_b), link_b)

    def _record(self, t: float, busy: dict, e_x: float, e_p: float, e_l: float,
                link_b: float, *, xpu_idle: bool = True, cycles: int | None = None) -> StepTime:
        tot = self.totals
        tot.steps += 1
        tot.time_s += t
        for k, v in busy.items():
            tot.busy_s[k] += v
        if xpu_idle and self.placement != "pim":
            e_x += self.gpu.spec.idle_w * max(0.0, t - busy.get("xpu", 0.0))
        tot.energy_j["xpu"] += e_x
        tot.energy_j["pim"] += e_p
        tot.energy_j["link"] += e_l
        tot.link_bytes += link_b
        e = e_x + e_p + e_l
        pim_busy = busy.get("pim", 0.0)
        return StepTime(t, e if math.isfinite(e) else None,
                        (busy.get("xpu", 0.0),) + (pim_busy,) * self.pim.devices, cycles)

    def busy_report(self) -> dict:
        """Each side's busy time and energy over the steps so far (the serve report)."""
        d = self.totals.to_dict()
        d.update(placement=self.placement, overlap=self.overlap, link=self.link.describe(),
                 xpu=self.gpu.label)
        return d
