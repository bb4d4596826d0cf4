"""Expert parallelism: which device of a tensor-parallel group runs which experts of a step.

vLLM's ``--enable-expert-parallel`` (EP size = TP size x DP size; no data parallelism here, so
``ep == tp``): a MoE layer's experts are placed whole over the group's devices, expert ``e`` of
``E`` on device ``e // (E / ep)`` (:func:`device_of`), while attention, the router and the dense
layers stay tensor-parallel. The router's logits reach every device (the all-reduce of their
shares, :mod:`compiler.passes.emit`), each device runs the full GEMVs of its own chosen experts
and sums their weighted outputs, and one all-reduce per MoE layer adds the devices' sums.

Every device holds the same layout (its experts of one local slot ``e % (E / ep)`` at the same
rows), so the program simulated is one device's: the steps of device 0's experts, one per
local slot (``Step.expert == (m, slot)``; the other experts' matrices stay in the program,
aliased to their slot's rows, for the functional executor). The layer's all-reduce waits for
the busiest device, so a step is simulated on the *critical device* (:func:`critical_choice`):
in each MoE layer, the slots of the chosen experts of the device that runs the most of them
(ties: the lowest device). That is exact when a layer's experts cost alike (one shape, the same
rows on every device); the DRAM state carried from layer to layer is the simulated device's.

:class:`ExpertLoad` keeps, per generated step, each device's expert load (token x expert
pairs run) and the weight bytes it reads, under expert parallelism and under the tensor-
parallel split (every device a 1/tp share of every chosen expert), for the same routing, and
the imbalance (max / mean over the devices) of both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PLACEMENTS = ("ep", "tp")  # experts whole on their devices, or split over every device


def device_of(e: int, n_experts: int, ep: int) -> int:
    """The device holding expert ``e`` of ``n_experts`` over ``ep`` devices."""
    return e // (n_experts // ep)


def critical_choice(prog: Any, choice: dict[int, set[int]] | None) -> dict[int, set[int]] | None:
    """MoE layer -> the local slots the critical device runs: those of the layer's chosen
    experts on the device holding the most of them (``choice`` unchanged without expert
    parallelism)."""
    ep = getattr(prog, "ep", 1)
    if ep <= 1 or choice is None:
        return choice
    out = {}
    for m, es in choice.items():
        n = int(prog.moe[m]["experts"])
        per = [{e for e in es if device_of(e, n, ep) == d} for d in range(ep)]
        busiest = max(per, key=len)  # the first of the largest: the lowest device
        out[m] = {e % (n // ep) for e in busiest}
    return out


def critical_tokens(prog: Any, tokens: dict[int, list[list[int]]]) -> dict[tuple[int, int], int]:
    """(MoE layer, expert) -> the sequences of a batched step routed to it (``tokens``: MoE
    layer -> the experts each sequence chose), for the experts the simulated device runs:
    every chosen expert without expert parallelism; with it, by local slot, those of the
    device with the most token x expert pairs (its expert GEMVs run one pass per pair where a
    pass holds one sequence, as on the shipped configs; ties: the device with more experts,
    then the lowest). At one sequence per step it is :func:`critical_choice`'s device."""
    from collections import Counter

    ep = getattr(prog, "ep", 1)
    out: dict[tuple[int, int], int] = {}
    for m, toks in tokens.items():
        per = Counter(int(e) for t in toks for e in t)
        if ep <= 1:
            out.update({(m, e): c for e, c in per.items()})
            continue
        n = int(prog.moe[m]["experts"])
        dev = [{e: c for e, c in per.items() if device_of(e, n, ep) == d} for d in range(ep)]
        busiest = max(dev, key=lambda x: (sum(x.values()), len(x)))  # the first: the lowest
        out.update({(m, e % (n // ep)): c for e, c in busiest.items()})
    return out


def every_expert(prog: Any) -> dict[int, set[int]]:
    """Every expert of every MoE layer (a step that runs them all: prefill, serving)."""
    return {m: set(range(int(info["experts"]))) for m, info in enumerate(prog.moe)}


def _bytes_table(prog: Any) -> tuple[int, dict[tuple[int, int], int]]:
    """(weight bytes of one device's GEMVs outside the experts, whole bytes of each expert
    (MoE layer, expert) the program has steps of): a tensor-parallel program holds a 1/tp share
    of an expert, counted tp times; an expert-parallel one each local slot's expert."""
    eb = prog.geo.elem_bytes
    k = 1 if getattr(prog, "ep", 1) > 1 else max(int(prog.tp), 1)
    shared, experts = 0, {}
    for st in prog.steps:
        if st.kind != "pim" or st.matrix is None:
            continue
        m = prog.matrices[st.matrix] if isinstance(st.matrix, str) else st.matrix
        b = m.out_dim * m.in_dim * eb
        if st.expert is None:
            shared += b
        else:
            experts[st.expert] = experts.get(st.expert, 0) + b * k
    return shared, experts


class ExpertLoad:
    """Per-device expert load of a run's generated steps (see the module docstring)."""

    def __init__(self, prog: Any):
        self.prog = prog
        self.n = max(int(prog.tp), 1)
        self.shared, self.expert_bytes = _bytes_table(prog)
        # whole experts over the n devices: only when n divides every MoE layer's experts
        self.ep_fits = all(int(i["experts"]) % self.n == 0 for i in prog.moe)
        self.pairs = {p: [] for p in PLACEMENTS}  # per step: token x expert pairs per device
        self.bytes = {p: [] for p in PLACEMENTS}  # per step: weight bytes per device

    def _expert_bytes(self, m: int, e: int, n_exp: int) -> int:
        """Whole bytes of expert ``e`` of MoE layer ``m`` (0: not in this program's stage);
        expert-parallel: its local slot's (the same shapes on every device)."""
        if getattr(self.prog, "ep", 1) > 1:
            e = e % (n_exp // self.prog.ep)
        return self.expert_bytes.get((m, e), 0)

    @property
    def placement(self) -> str:
        return "ep" if getattr(self.prog, "ep", 1) > 1 else "tp"

    def device_bytes(self, tokens: dict[int, list[list[int]]], placement: str) -> np.ndarray:
        """Weight bytes each device reads in a step whose tokens chose ``tokens`` (MoE layer
        -> experts per token): its share of the GEMVs outside the experts, and its experts
        (whole, ``ep``) or a 1/n share of every expert chosen (``tp``); a chosen expert is
        read once whatever the batch."""
        out = np.full(self.n, float(self.shared))
        for m, toks in tokens.items():
            n_exp = int(self.prog.moe[m]["experts"])
            for e in sorted({int(e) for t in toks for e in t}):
                b = self._expert_bytes(m, e, n_exp)
                if placement == "ep":
                    out[device_of(e, n_exp, self.n)] += b
                else:
                    out += b / self.n
        return out

    def device_pairs(self, tokens: dict[int, list[list[int]]], placement: str) -> np.ndarray:
        """Token x expert pairs each device runs (``tp``: 1/n of every pair on each)."""
        out = np.zeros(self.n)
        for m, toks in tokens.items():
            n_exp = int(self.prog.moe[m]["experts"])
            if not any(self._expert_bytes(m, e, n_exp) for e in range(n_exp)):
                continue  # a MoE layer of another pipeline stage
            for t in toks:
                for e in t:
                    if placement == "ep":
                        out[device_of(int(e), n_exp, self.n)] += 1
                    else:
                        out += 1.0 / self.n
        return out

    def add(self, tokens: dict[int, list[list[int]]]) -> float:
        """Record a generated step; returns the mean weight bytes per device under the run's
        placement (the whole system's are ``n`` times that)."""
        for p in PLACEMENTS if self.ep_fits else ("tp",):
            self.pairs[p].append(self.device_pairs(tokens, p))
            self.bytes[p].append(self.device_bytes(tokens, p))
        return float(self.bytes[self.placement][-1].mean())

    def summary(self) -> dict:
        """``placement`` (the run's), ``devices``, and for ``ep`` and ``tp``: the mean per step
        of each device's token x expert pairs and weight bytes, and the mean per step of their
        imbalance (max / mean over the devices; 1 for a step without expert work); ``ep`` is
        None when the devices do not divide the experts."""
        def imb(rows: list[np.ndarray]) -> float:
            r = [float(x.max() / x.mean()) if x.mean() > 0 else 1.0 for x in rows]
            return float(np.mean(r)) if r else 1.0

        out: dict = {"placement": self.placement, "devices": self.n}
        for p in PLACEMENTS:
            pairs, byts = self.pairs[p], self.bytes[p]
            if p == "ep" and not self.ep_fits:
                out[p] = None
                continue
            out[p] = {
                "pairs_per_device": np.mean(pairs, axis=0).tolist() if pairs else [],
                "weight_bytes_per_device": np.mean(byts, axis=0).tolist() if byts else [],
                "imbalance": imb(pairs),
                "weight_bytes_imbalance": imb(byts),
            }
        return out


def load_line(d: dict) -> str:
    """The report's text line of an :meth:`ExpertLoad.summary`."""
    def one(p: str) -> str:
        s = d[p]
        pairs = ", ".join(f"{v:.1f}" for v in s["pairs_per_device"])
        mib = ", ".join(f"{v / 2**20:,.1f}" for v in s["weight_bytes_per_device"])
        return (f"{'EP' if p == 'ep' else 'TP split'}: tokens x experts per device [{pairs}], "
                f"weights MiB [{mib}], imbalance {s['imbalance']:.2f} "
                f"(bytes {s['weight_bytes_imbalance']:.2f})")

    run = d["placement"]
    other = "tp" if run == "ep" else "ep"
    line = f"  expert load per step over {d['devices']} devices (mean), {one(run)}"
    if d[other] is not None:
        line += f"; the same routing under {one(other)}"
    return line
