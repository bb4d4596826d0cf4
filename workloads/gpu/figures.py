"""Checks of the figures a measured GPU baseline JSON holds (``python -m workloads.gpu measure``).

A GPU time per token, a power, an energy per token is a positive finite number: zero, a negative
value, NaN or infinity (JSON as Python writes it admits ``NaN`` and ``Infinity``), a string or a
boolean is refused with a :class:`~pimsim.errors.UserError` naming the file, the result and the
field, as are a key given twice in one JSON object, two results of one model and a position that
is not a plain non-negative integer. ``pimsim compare --gpu FILE`` and the calibration read
baselines through :func:`parse_measured`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pimsim.errors import UserError

MEASURED_FIX = "give a JSON written by python -m workloads.gpu measure gpt, or a GPU name"
# the energy figures pimsim reads, where a result holds them (graph, power or the result itself)
ENERGY_KEYS = ("joules_per_token", "j_per_token", "mean_power_w")
_POSITION = re.compile(r"0|[1-9][0-9]*")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def positive_figure(v: Any) -> bool:
    """``v`` is a number (not a boolean) above 0 and finite."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v > 0)


def parse_measured(text: str, source: str) -> dict[str, Any]:
    """The measured baseline in ``text`` (``source`` names it in messages), every figure checked
    (see the module docstring); a UserError otherwise."""
    where = f"GPU baseline file {source!r}"
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _Duplicate as e:
        raise UserError(f"{where} gives the key {e.key!r} twice in one object",
                        "keep one of them (json would silently use the last)") from None
    except ValueError as e:
        raise UserError(f"{where} is not valid JSON ({e})", MEASURED_FIX) from None
    if not isinstance(doc, dict) or not all(k in doc for k in ("method", "info", "results")) \
            or not isinstance(doc["results"], list) or not isinstance(doc["info"], dict):
        raise UserError(f"{where} is not a gpu_baseline measurement "
                        f"(needs method, info and a results list)", MEASURED_FIX)
    seen: dict[str, int] = {}
    for i, r in enumerate(doc["results"]):
        _check_result(r, i, where, seen)
    return doc


def _check_result(r: Any, i: int, where: str, seen: dict[str, int]) -> None:
    fix = "measure it again, or correct that figure: a GPU time or energy is a positive number"
    try:
        ms_at = r["graph"]["ms_at"]
        ok = isinstance(r["model"], str) and r["model"].strip() and isinstance(ms_at, dict) \
            and len(ms_at) > 0
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{where}: results[{i}] lacks model / graph.ms_at "
                        f"(position -> positive ms)", MEASURED_FIX)
    model = r["model"]
    if model in seen:
        raise UserError(f"{where}: results[{seen[model]}] and results[{i}] both measure {model}",
                        "keep one result per model")
    seen[model] = i
    for pos, ms in ms_at.items():
        if not _POSITION.fullmatch(pos):
            raise UserError(f"{where}: results[{i}] ({model}) graph.ms_at has the position "
                            f"{pos!r}", "positions are non-negative integers such as \"128\"")
        if not positive_figure(ms):
            raise UserError(f"{where}: results[{i}] ({model}) graph.ms_at[{pos!r}] = {ms!r} is "
                            f"not a time per token", fix)
    for name in ("graph", "power", None):
        holder = r if name is None else r.get(name)
        if not isinstance(holder, dict):
            if name == "power" and holder is not None:
                raise UserError(f"{where}: results[{i}] ({model}) power = {holder!r} is not an "
                                f"object", fix)
            continue
        for key in ENERGY_KEYS:
            v = holder.get(key)
            if v is not None and not positive_figure(v):
                field = key if name is None else f"{name}.{key}"
                raise UserError(f"{where}: results[{i}] ({model}) {field} = {v!r} is not "
                                f"{'a power' if key.endswith('_w') else 'an energy per token'}", fix)
