"""``pimsim compare MODEL --batch B,.. --xpu NAME``: one decode step per batch size on the xPU
alone, on PIM alone and on the xPU with attention on PIM (serial and overlapped), side by side.

Every sequence of the batch generates the token at one position (as ``compare --batch``); each
system is a :class:`workloads.xpu.cost.XpuPimCost` of its placement, so the rows are the same
step costs ``pimsim serve --xpu`` prices."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

SYSTEMS = (("xpu", False), ("pim", False), ("attention", False), ("attention", True))


@dataclass
class XpuRow:
    model: str
    system: str  # "xpu", "pim", "xpu+pim attention", "xpu+pim attention, overlapped"
    batch: int
    position: int
    ms_per_step: float
    tokens_per_s: float
    mj_per_token: float | None
    xpu_busy_ms: float
    pim_busy_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def _name(placement: str, overlap: bool) -> str:
    if placement in ("xpu", "pim"):
        return f"{placement} alone"
    return "xpu + pim attention" + (", overlapped" if overlap else "")


def compare_xpu(model: str, cfg: Any, xpu: str, batches: Sequence[int], *, position: int,
                link: str = "pcie5", cache: bool = True) -> list[XpuRow]:
    """One row per system and batch size (see the module docstring)."""
    from workloads.compiling import compile_model
    from workloads.xpu.cost import XpuPimCost

    c = compile_model(model, cfg, cache=cache)
    rows = []
    for placement, overlap in SYSTEMS:
        cost = XpuPimCost(c, cfg, model, xpu=xpu, link=link, placement=placement,
                          overlap=overlap)
        pos = min(position, cost.n_ctx - 1)
        for b in batches:
            st = cost.step([pos] * b, [])
            busy = st.per_device_busy_s
            rows.append(XpuRow(model, _name(placement, overlap), b, pos, st.time_s * 1e3,
                               b / st.time_s,
                               None if st.energy_j is None else st.energy_j / b * 1e3,
                               busy[0] * 1e3, busy[1] * 1e3))
    return rows


def xpu_table(rows: list[XpuRow], xpu: str, hw: str, link: str) -> str:
    lines = [f"decode steps: {xpu} alone, {hw} alone, {xpu} + attention on {hw} over {link}",
             f"{'model':<12} {'system':<32} {'batch':>5} {'ms/step':>9} {'tokens/s':>10} "
             f"{'mJ/token':>9} {'xPU ms':>8} {'PIM ms':>8}"]
    for r in rows:
        mj = "n/a" if r.mj_per_token is None else f"{r.mj_per_token:.3g}"
        lines.append(f"{r.model:<12} {r.system:<32} {r.batch:>5} {r.ms_per_step:>9.4g} "
                     f"{r.tokens_per_s:>10.4g} {mj:>9} {r.xpu_busy_ms:>8.4g} "
                     f"{r.pim_busy_ms:>8.4g}")
    return "\n".join(lines)
