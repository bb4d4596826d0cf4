"""What a sweep's results say: scaling ratios between swept values, latency-energy Pareto
fronts, the text summary, and JSON-ready rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from workloads.sweeps.spec import Spec


def _numeric(vals) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)


def _labels(df, cols: list[str]):
    """One string per row naming its values of ``cols`` (a group key; missing values too)."""
    import pandas as pd

    recs = df[cols].to_dict("records")
    return pd.Series([", ".join(f"{c}={_fmt(r[c])}" for c in cols) for r in recs],
                     index=df.index)


def scaling_table(df, swept: list[str]) -> list[dict]:
    """For every numeric swept parameter: the ratios between consecutive values with every
    other swept parameter fixed. ``latency_ratio`` = ms/token at the smaller value over ms/token
    at the larger (above 1: the larger value is faster); ``energy_ratio`` likewise for mJ."""
    out: list[dict] = []
    if df is None or not len(df) or "status" not in df:
        return out
    ok = df[df["status"] == "ok"]
    for p in swept:
        if p not in ok or not len(ok):
            continue
        vals = [v for v in ok[p].tolist() if v is not None and v == v]
        if len(set(vals)) < 2 or not _numeric(vals):
            continue
        others = [q for q in swept if q != p and q in ok]
        groups = ok.groupby(_labels(ok, others)) if others else [("", ok)]
        for _, g in groups:
            g = g[g[p].notna()].sort_values(p)
            rows = g.to_dict("records")
            for a, b in zip(rows, rows[1:]):
                if a[p] == b[p]:
                    continue
                out.append({
                    "param": p, "from": a[p], "to": b[p],
                    "value_ratio": b[p] / a[p] if a[p] else math.inf,
                    "latency_ratio": a["ms_per_token"] / b["ms_per_token"],
                    "energy_ratio": (a["mj_per_token"] / b["mj_per_token"]
                                     if a.get("mj_per_token") and b.get("mj_per_token")
                                     else None),
                    "fixed": {q: a[q] for q in others},
                    "idx": (int(a["idx"]), int(b["idx"])),
                })
    return out


def _workload(r) -> str:
    return f"{r['model']}, {r['prompt']} prompt + {r['tokens']} tokens"


def pareto_fronts(df) -> dict[str, list[int]]:
    """Per workload (model, prompt, tokens): the idx of the points no other point beats in both
    latency and energy per token, by increasing latency."""
    out: dict[str, list[int]] = {}
    if df is None or not len(df) or "status" not in df:
        return out
    ok = df[(df["status"] == "ok") & df["mj_per_token"].notna()]
    for wl, g in ok.groupby(ok.apply(_workload, axis=1)) if len(ok) else []:
        pts = sorted(zip(g["ms_per_token"], g["mj_per_token"], g["idx"]))
        front, best_e = [], math.inf
        for _ms, mj, i in pts:
            if mj < best_e:
                front.append(int(i))
                best_e = mj
        out[wl] = front
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def summary(res: SweepResult) -> str:
    df, spec = res.df, res.spec
    c = res.counts
    rate = res.n_run / res.wall_s * 60 if res.wall_s > 0 else 0.0
    lines = [f"sweep {spec.name} ({spec.hw}, {res.db}): {res.n_points} points "
             f"({res.n_unique} distinct), {res.n_run} run now, {res.n_skipped} already stored; "
             f"{c['ok']} ok, {c['invalid']} invalid, {c['error']} errors; wall "
             f"{res.wall_s:.1f} s ({rate:.1f} points/min)"
             + ("; INTERRUPTED: re-run to finish" if res.interrupted else "")]
    cols = spec.swept or []
    head = ["#"] + cols + ["ms/token", "mJ/token", "tokens/s", "row hits", "status"]
    table = []
    for r in df.to_dict("records"):
        if not isinstance(r.get("status"), str):
            r["status"] = "not run"  # an interrupted sweep
        ok = r["status"] == "ok"
        table.append([str(r["idx"])] + [_fmt(r.get(k)) for k in cols] + [
            f"{r['ms_per_token']:.4f}" if ok else "-",
            f"{r['mj_per_token']:.4f}" if ok and r.get("mj_per_token") is not None else "-",
            f"{r['tokens_per_s']:,.1f}" if ok else "-",
            f"{r['row_hit_rate']:.2%}" if ok else "-",
            r["status"]])
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h)
              for i, h in enumerate(head)]
    lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for t in table:
        lines.append("  " + "  ".join(x.rjust(w) for x, w in zip(t, widths)))
    if res.scaling:
        lines.append("scaling (latency ratio = ms/token before / after: above 1 is faster; "
                     "other parameters fixed):")
        steps: dict[tuple, list[dict]] = {}
        for s in res.scaling:
            steps.setdefault((s["param"], s["from"], s["to"]), []).append(s)
        for (param, a, b), ss in steps.items():
            head = f"  {param} {_fmt(a)} -> {_fmt(b)} (x{ss[0]['value_ratio']:.3g}): "
            if len(ss) <= 4:  # each combination of the other parameters on its own line
                for s in ss:
                    fixed = ", ".join(f"{k}={_fmt(v)}" for k, v in s["fixed"].items())
                    er = f", energy ratio {s['energy_ratio']:.3f}" if s["energy_ratio"] else ""
                    lines.append(f"{head}latency ratio {s['latency_ratio']:.3f}{er}"
                                 + (f"  [{fixed}]" if fixed else ""))
                continue
            lr = sorted(s["latency_ratio"] for s in ss)
            er = sorted(s["energy_ratio"] for s in ss if s["energy_ratio"])
            med = lr[len(lr) // 2] if len(lr) % 2 else (lr[len(lr) // 2 - 1] + lr[len(lr) // 2]) / 2
            lines.append(f"{head}latency ratio {lr[0]:.3f} .. {lr[-1]:.3f} (median {med:.3f})"
                         + (f", energy ratio {er[0]:.3f} .. {er[-1]:.3f}" if er else "")
                         + f" over {len(ss)} combinations of the other parameters")
        inert = [p for p in dict.fromkeys(s["param"] for s in res.scaling)
                 if all(abs(s["latency_ratio"] - 1) < 1e-12
                        and (s["energy_ratio"] is None or abs(s["energy_ratio"] - 1) < 1e-12)
                        for s in res.scaling if s["param"] == p)]
        if inert:
            lines.append(f"  note: {', '.join(inert)} changed neither latency nor energy at any "
                         f"point (the simulator may not model {'it' if len(inert) == 1 else 'them'})")
    if res.pareto:
        lines.append("latency-energy Pareto front (point numbers, fastest first):")
        for wl, front in res.pareto.items():
            lines.append(f"  {wl}: " + ", ".join(f"#{i}" for i in front))
    bad = df[df["status"].isin(["invalid", "error"])] if len(df) else df
    if len(bad):
        lines.append("invalid / failed points:")
        for r in bad.to_dict("records"):
            label = ", ".join(f"{k}={_fmt(r.get(k))}" for k in cols) or r.get("model", "")
            reason = (r.get("reason") or "").strip().splitlines()
            lines.append(f"  #{r['idx']} ({label}) {r['status']}: {reason[-1] if reason else ''}")
    return "\n".join(lines)


def _jsonable(v: Any) -> Any:
    """A value JSON can hold: NaN / missing -> None, numpy scalars -> Python numbers."""
    if v is None:
        return None
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, TypeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    try:
        if v != v:  # pandas NA / NaT
            return None
    except (TypeError, ValueError):
        return None
    return str(v)


def json_rows(df) -> list[dict]:
    """One JSON-ready row per point of a sweep's DataFrame (spec order)."""
    if df is None or not len(df):
        return []
    return [{k: _jsonable(v) for k, v in r.items() if k != "hw_json"}
            for r in df.to_dict("records")]


@dataclass
class SweepResult:
    """A sweep's outcome: its points (``df``), scaling between swept values, Pareto fronts."""

    spec: Spec
    db: str
    n_points: int
    n_unique: int
    n_skipped: int  # already finished in the store
    n_run: int  # points this run finished (simulated, or recorded invalid)
    wall_s: float
    df: Any = None  # pandas DataFrame of the sweep's points (spec order)
    scaling: list[dict] = field(default_factory=list)
    pareto: dict = field(default_factory=dict)
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        s = self.df["status"] if self.df is not None and len(self.df) else []
        return {k: int(sum(1 for x in s if x == k)) for k in ("ok", "invalid", "error")}

    def summary(self) -> str:
        """The text ``pimsim sweep`` prints: one line per point, scaling, Pareto fronts."""
        return summary(self)

    def to_dict(self) -> dict:
        """JSON-ready (the document ``pimsim sweep --json`` prints): counts, one row per point
        (spec order), scaling, Pareto fronts."""
        return {"name": self.spec.name, "db": str(self.db), "counts": self.counts,
                "points": json_rows(self.df), "scaling": _jsonable(self.scaling),
                "pareto": _jsonable(self.pareto), "wall_s": self.wall_s,
                "interrupted": self.interrupted}

    def to_pandas(self) -> Any:
        """One row per point (a pandas DataFrame), units in the column names."""
        df = self.df.copy()
        return df.rename(columns={"ms_per_token": "latency_ms_per_token",
                                  "mj_per_token": "energy_mj_per_token"})
