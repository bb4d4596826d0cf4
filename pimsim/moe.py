"""Mixture-of-experts routing on the ASIC, and which experts a decode step runs.

The router of a MoE layer is a gate GEMV on PIM followed by this module's :func:`route` on the
ASIC: scores (softmax, or sigmoid as DeepSeek-V3; gpt-oss takes the top-k of the logits and a
softmax over them), the top-k (DeepSeek-V3 first keeps the ``topk_group`` best of ``n_group``
expert groups, a group scored by its two best experts), optional renormalisation and a routed
scaling factor. The result is dense: weight 0 for an expert not chosen. A program step that
belongs to expert ``e`` of MoE layer ``m`` has ``Step.expert == (m, e)``; a decode step runs
only the steps of the experts chosen (:func:`active_steps`), so its time follows the choice;
in a batched step an expert's steps compute only the vectors of the sequences routed to it
(:func:`routed_steps`).
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
    ``choice[m]`` (None: every step runs; a program without experts: None). With expert
    parallelism, the steps of the critical device's experts, by local slot
    (:func:`pimsim.expert_parallel.critical_choice`)."""
    from pimsim.expert_parallel import critical_choice

    tags = [s.expert for s in prog.steps]
    if choice is None or all(t is None for t in tags):
        return None
    choice = critical_choice(prog, choice)
    return np.array([t is None or t[1] in choice.get(t[0], ()) for t in tags], bool)


def routed_steps(prog: Any, tokens: dict[int, list[list[int]]]
                 ) -> tuple[np.ndarray | None, dict[tuple[int, int], int]]:
    """A batched step whose sequences chose ``tokens`` (MoE layer -> the experts of each
    sequence): the mask of its steps that run (an expert no sequence chose does not) and, per
    expert step tag, the sequences routed to that expert, whose vectors alone its steps
    compute (:meth:`pimsim.batch.BatchedProgram.route`). Expert parallelism: the critical
    device's experts by local slot (:func:`pimsim.expert_parallel.critical_tokens`)."""
    from pimsim.expert_parallel import critical_tokens

    tags = [s.expert for s in prog.steps]
    if all(t is None for t in tags):
        return None, {}
    counts = critical_tokens(prog, tokens)
    return np.array([t is None or counts.get(t, 0) > 0 for t in tags], bool), counts


class Routing:
    """Where a run's expert choice comes from: the functional executor's router
    (:meth:`recorder`, which also keeps the choice for a routing trace), a routing trace
    (:meth:`trace`) or a seeded model (:meth:`seeded`: ``uniform``, every expert equally likely,
    or ``skewed``, Zipf-like popularity with exponent ``skew`` over a seeded ranking of each
    layer's experts). :meth:`choose` gives, for a decode step at ``pos``, MoE layer -> the set
    of experts the step's tokens chose (their union over a batch)."""

    def __init__(self, kind: str, *, seed: int = 0, dist: str = "uniform", skew: float = 1.0,
                 lines: dict | None = None, path: str = "", inner: "Routing | None" = None):
        self.kind, self.seed, self.dist, self.skew = kind, seed, dist, skew
        self.lines, self.path, self.inner = lines or {}, path, inner
        self.records: list[dict] = []  # the choices made, as trace lines
        self.last: dict[int, list[list[int]]] = {}  # the last step's choice per token

    # -------------------------------------------------------------- sources
    @classmethod
    def seeded(cls, seed: int = 0, dist: str = "uniform", skew: float = 1.0) -> "Routing":
        from pimsim.errors import UserError

        if dist not in ("uniform", "skewed"):
            raise UserError(f"routing {dist!r} unknown", "use uniform or skewed")
        if not skew > 0:
            raise UserError(f"routing skew {skew} is not positive",
                            "give a Zipf exponent above 0 (1.0: the most popular expert of a "
                            "layer chosen about twice as often as the second)")
        return cls("seeded", seed=seed, dist=dist, skew=skew)

    @classmethod
    def trace(cls, path: str) -> "Routing":
        """A routing trace: JSONL, one line per decode step and MoE layer:
        ``{"step": pos, "moe": m, "layer": model layer, "experts": [[e, ...] per token]}``."""
        import json

        from pimsim.errors import UserError

        lines = {}
        try:
            with open(path) as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        d = json.loads(line)
                        key = (int(d["step"]), int(d["moe"]))
                        lines[key] = [[int(e) for e in tok] for tok in d["experts"]]
                    except (ValueError, KeyError, TypeError) as e:
                        raise UserError(f"routing trace {path}, line {n}: {e!r}",
                                        'each line: {"step": N, "moe": M, "layer": L, '
                                        '"experts": [[e, ...], ...]}') from None
        except OSError as e:
            raise UserError(f"routing trace {path}: {e.strerror}",
                            "give a JSONL file written by --routing-trace-out") from None
        return cls("trace", lines=lines, path=path)

    @classmethod
    def recorder(cls, inner: "Routing | None" = None) -> "Routing":
        return cls("functional", inner=inner)

    # -------------------------------------------------------------- use
    def choose(self, prog, pos: int, computed: dict | None = None,
               batch: int = 1) -> dict[int, set[int]]:
        """MoE layer -> the experts run at the decode step at ``pos`` (``computed``: the
        functional executor's ``routing``, MoE layer -> experts per token)."""
        from pimsim.errors import UserError

        out: dict[int, set[int]] = {}
        self.last: dict[int, list[list[int]]] = {}  # MoE layer -> experts per token, this step
        for m, info in enumerate(prog.moe):
            if self.kind == "functional":
                toks = computed[m]
            elif self.kind == "trace":
                if (pos, m) not in self.lines:
                    raise UserError(f"routing trace {self.path} has no line for step {pos}, "
                                    f"MoE layer {m}", "record the trace with as many steps "
                                    "(--routing-trace-out on a functional run of the same "
                                    "prompt and tokens)")
                toks = self.lines[(pos, m)]
                if len(toks) != batch:
                    raise UserError(f"routing trace {self.path}: step {pos}, MoE layer {m} "
                                    f"routes {len(toks)} token(s), the step runs {batch}",
                                    "record the trace with the same batch and prefill "
                                    "(--batch, --prefill) as the run that replays it")
            else:
                toks = [self._draw(pos, m, info, b) for b in range(batch)]
            for tok in toks:
                bad = [e for e in tok if not 0 <= e < info["experts"]]
                if bad or len(tok) != info["k"]:
                    raise UserError(f"step {pos}, MoE layer {m}: experts {tok} (the layer has "
                                    f"{info['experts']}, each token chooses {info['k']})",
                                    "give k distinct experts below the layer's count")
            self.records.append({"step": pos, "moe": m, "layer": info["layer"],
                                 "experts": [sorted(int(e) for e in t) for t in toks]})
            self.last[m] = [[int(e) for e in t] for t in toks]
            out[m] = {int(e) for t in toks for e in t}
        return out

    def _draw(self, pos: int, m: int, info: dict, b: int) -> list[int]:
        n, k = info["experts"], info["k"]
        rng = np.random.default_rng([self.seed, pos, m, b])
        if self.dist == "uniform":
            return sorted(rng.choice(n, k, replace=False).tolist())
        rank = np.random.default_rng([self.seed, m]).permutation(n)  # the layer's popularity
        p = 1.0 / (np.arange(1, n + 1) ** self.skew)
        return sorted(rank[rng.choice(n, k, replace=False, p=p / p.sum())].tolist())

    def describe(self) -> str:
        if self.kind == "functional":
            return "functional (the model's own router)"
        if self.kind == "trace":
            return f"trace {self.path}"
        what = "uniform" if self.dist == "uniform" else f"skewed (Zipf exponent {self.skew})"
        return f"seeded {what}, seed {self.seed}"

    def write(self, path: str) -> None:
        """The choices made so far as a routing trace (JSONL)."""
        import json

        with open(path, "w") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")


def weight_bytes(prog, active: np.ndarray | None = None) -> int:
    """Bytes of weight matrices one device's decode step reads (every GEMV step that runs,
    ``active``: :func:`active_steps`; the embedding row and layer vectors are not counted).
    Each matrix is read once per step whatever the batch, so a batched step reads the union of
    its sequences' experts."""
    n = 0
    for st in prog.steps:
        if st.kind == "pim" and st.matrix is not None and (active is None or active[st.index]):
            m = prog.matrices[st.matrix] if isinstance(st.matrix, str) else st.matrix
            n += m.out_dim * m.in_dim * prog.geo.elem_bytes
    return n
