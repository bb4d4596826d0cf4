"""Mixture-of-experts routing on the ASIC, and which experts a decode step runs.

The router of a MoE layer is a gate GEMV on PIM followed by this module's :func:`route` on the
ASIC: scores (softmax, or sigmoid as DeepSeek-V3; gpt-oss takes the top-k of the logits and a
softmax over them), the top-k (DeepSeek-V3 first keeps the ``topk_group`` best of ``n_group``
expert groups, a group scored by its two best experts), optional renormalisation and a routed
scaling factor. The result is dense: weight 0 for an expert not chosen. A program step that
belongs to expert ``e`` of MoE layer ``m`` has ``Step.expert == (m, e)``; a decode step runs
only the steps of the experts chosen (:func:`active_steps`), so its time follows the choice.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def route(M: Any, logits: np.ndarray, bias: np.ndarray | None, at: dict) -> np.ndarray:
    """Dense routing weights [tokens, E] of ``logits`` [tokens, E] (fp32, the ASIC's math
    ``M``); ``bias``: DeepSeek's score-correction bias, added for the choice only."""
    x = np.asarray(logits, np.float32).reshape(-1, np.shape(logits)[-1])
    score, k = at["score"], int(at["k"])
    if score == "softmax":
        s = M.softmax(x)
    elif score == "sigmoid":
        s = (M.recip(np.float32(1) + M.exp(np.clip(-x, -80, 80)))).astype(np.float32)
    else:  # "topk_softmax"
        s = x
    choice = s + np.asarray(bias, np.float32).reshape(1, -1) if bias is not None else s
    n_group, e = int(at["n_group"]), x.shape[-1]
    if n_group > 1:
        grp = np.sort(choice.reshape(-1, n_group, e // n_group), axis=-1)[..., -2:].sum(-1)
        keep = _top(grp, int(at["topk_group"]))
        mask = np.zeros_like(grp, bool)
        np.put_along_axis(mask, keep, True, axis=-1)
        choice = np.where(np.repeat(mask, e // n_group, axis=-1), choice, -np.inf)
    idx = _top(choice, k)
    w = np.take_along_axis(s, idx, axis=-1)
    if score == "topk_softmax":
        w = M.softmax(w)
    if at["norm"]:
        d = w.sum(-1, keepdims=True, dtype=np.float32)
        if score == "sigmoid":
            d = d + np.float32(1e-20)
        w = w * M.recip(d.astype(np.float32))
    w = (w * np.float32(at["scale"])).astype(np.float32)
    out = np.zeros_like(s)
    np.put_along_axis(out, idx, w, axis=-1)
    return out.reshape(np.shape(logits))


def _top(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest along the last axis, largest first, ties to the lower index
    (as ``torch.topk`` on CPU)."""
    return np.argsort(-x, axis=-1, kind="stable")[..., :k]


def chosen(weights: np.ndarray) -> list[list[int]]:
    """Per token, the experts with a non-zero weight (in expert order)."""
    w = np.asarray(weights).reshape(-1, np.shape(weights)[-1])
    return [np.flatnonzero(r).tolist() for r in w]


def active_steps(prog: Any, choice: dict[int, set[int]] | None) -> np.ndarray | None:
    """Mask of the program's steps that run when MoE layer ``m`` uses the experts
    ``choice[m]`` (None: every step runs; a program without experts: None)."""
    tags = [s.expert for s in prog.steps]
    if choice is None or all(t is None for t in tags):
        return None
    return np.array([t is None or t[1] in choice.get(t[0], ()) for t in tags], bool)
