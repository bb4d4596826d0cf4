"""Analysis of a decode-step graph for the lowering: what each node is on the PIM system.

After the graph passes (shape inference, fusion, classification, folding) the lowering finds,
from the dataflow alone (no model is recognised):

* the inputs: the two KV-cache inputs (rank 4), the token (it feeds an embedding gather) and the
  position;
* the attentions: each concat of a past key/value input with a new one, and the views of it the
  q.K^T and p.V products read (a product reading the cache any other way is refused);
* the matrix-vector products with a constant weight (:meth:`DecodeStepAnalysis.is_weight`),
  packed by their shared input, and each pack's role (``qkv``, ``out_proj``, ``ffn_up``,
  ``ffn_down``, ``lm_head``) from what it feeds and is fed by;
* the layers: a layer starts at the first op of what feeds an attention's new key (its norm
  and projection); residual adds and embedding sums are the stream between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.ir import Node
from compiler.passes.lowering_error import LoweringError
from compiler.passes.shape_inference import _terms

WIRING = ("reshape", "transpose", "slice", "select", "unsqueeze", "squeeze", "expand", "cast",
          "concat")
MATRIX_OPS = ("linear", "gemm", "matmul")


@dataclass
class _Matvec:
    nodes: list[Node]  # packed members, same input
    input: str
    role: str = ""


@dataclass
class _Attn:
    index: int
    k_concat: Node | None = None
    v_concat: Node | None = None
    n_head: int = 0
    n_kv: int = 0
    d_head: int = 0
    write_step: int = -1
    q_ranks: list | None = None  # tensor parallelism: query heads / KV heads of each device
    kv_ranks: list | None = None


class DecodeStepAnalysis:
    """The analysis half of the lowering (:class:`compiler.passes.lower._Lowering` mixes it in):
    reads ``self.g`` and sets the facts the emission reads."""

    # ---------------------------------------------------------------- analysis
    def inputs(self) -> None:
        g = self.g
        past = [v for v in g.inputs if v.shape is not None and len(v.shape) == 4]
        ints = [v for v in g.inputs if v.dtype.startswith("i") and v not in past]
        if len(past) != 2:
            raise LoweringError(f"{self.name}: expected two KV-cache inputs (past_k, past_v) of "
                                f"rank 4, found {[v.name for v in past]}")
        self.past_k, self.past_v = past[0].name, past[1].name
        self.syms = {d for v in past for d in v.shape if isinstance(d, str)}
        users = g.users()
        tok = [v for v in ints if any(u.op == "gather" and g.is_const(u.inputs[0])
                                      for u in self._through_wiring(v.name, users))]
        if not tok:
            raise LoweringError(f"{self.name}: no token input feeds an embedding gather")
        self.token = tok[0].name
        table = next(u.inputs[0] for u in self._through_wiring(self.token, users)
                     if u.op == "gather" and g.is_const(u.inputs[0]))
        self.d_model = int(g.const_shape(table)[-1])
        shape = tok[0].shape
        if shape is not None and any(d != 1 for d in shape):
            raise LoweringError(
                f"{self.name}: the token input {self.token} has shape {list(shape)}: this is a "
                f"prefill graph (more than one new token), which cannot be lowered at length 1")
        rest = [v.name for v in ints if v.name != self.token]
        self.position = rest[0] if rest else ""

    def _through_wiring(self, value: str, users: dict) -> list[Node]:
        out, todo, seen = [], [value], set()
        while todo:
            v = todo.pop()
            for u in users.get(v, []):
                if id(u) in seen:
                    continue
                seen.add(id(u))
                if u.op in ("reshape", "unsqueeze", "squeeze", "cast", "expand"):
                    todo.extend(u.outputs)
                else:
                    out.append(u)
        return out

    def analyse(self) -> None:
        g = self.g
        self.prod = g.producers()
        self.users = g.users()
        pos_only: set[str] = {self.position} if self.position else set()
        cache: dict[str, tuple[int, str, bool]] = {}  # value -> (attn, "k"|"v", transposed)
        self.attns: list[_Attn] = []
        k_count = v_count = 0
        self.cache_in: dict[str, str] = {self.past_k: "k", self.past_v: "v"}
        self.skip: set[int] = set()
        for n in g.nodes:
            ins = [i for i in n.inputs if not g.is_const(i)]
            if ins and all(i in pos_only for i in ins):
                pos_only.update(n.outputs)
            if n.op in ("select", "slice", "reshape", "squeeze", "unsqueeze") and ins and \
                    ins[0] in self.cache_in:
                self.cache_in[n.outputs[0]] = self.cache_in[ins[0]]
                self.skip.add(id(n))
                continue
            if n.op == "concat" and len(n.inputs) == 2 and n.inputs[0] in self.cache_in:
                which = self.cache_in[n.inputs[0]]
                idx = k_count if which == "k" else v_count
                if which == "k":
                    k_count += 1
                else:
                    v_count += 1
                while len(self.attns) <= idx:
                    self.attns.append(_Attn(len(self.attns)))
                setattr(self.attns[idx], f"{which}_concat", n)
                cache[n.outputs[0]] = (idx, which, False)
                continue
            if n.op in WIRING and ins and ins[0] in cache and n.op != "concat":
                a, which, tr = cache[ins[0]]
                if n.op == "transpose":
                    p = n.attrs["perm"]
                    if list(p[-2:]) == [len(p) - 1, len(p) - 2]:
                        tr = not tr
                cache[n.outputs[0]] = (a, which, tr)
                self.skip.add(id(n))
                continue
            if any(i in cache for i in n.inputs) and n.op != "matmul":
                raise LoweringError(f"{self.name}: node {n.name!r} ({n.op}) computes on the KV "
                                    f"cache; only q.K^T and p.V products may read it")
            for i in n.inputs:
                if i in self.cache_in:
                    raise LoweringError(f"{self.name}: node {n.name!r} ({n.op}) reads the past "
                                        f"key/value input other than by appending to it")
        self.pos_only = pos_only
        self.cache = cache
        if not self.attns:
            raise LoweringError(f"{self.name}: no attention over the KV cache found (no concat of "
                                f"the past keys with a new key)")

    def is_weight(self, n: Node) -> bool:
        g = self.g
        if n.op not in MATRIX_OPS or len(n.inputs) < 2 or not g.is_const(n.inputs[1]):
            return False
        if len(g.const_shape(n.inputs[1])) != 2 or n.inputs[0] in self.pos_only:
            return False
        if n.op == "gemm" and (n.attrs["trans_a"] or n.attrs["alpha"] != 1 or n.attrs["beta"] != 1):
            return False
        return True

    def weight_out_in(self, n: Node) -> tuple[np.ndarray | None, tuple[int, int]]:
        g = self.g
        w = g.const_value(n.inputs[1])
        r, c = g.const_shape(n.inputs[1])
        if n.op == "linear":
            out_in = n.attrs["w_layout"] == "out_in"
        elif n.op == "gemm":
            out_in = bool(n.attrs["trans_b"])
        else:
            out_in = False
        shape = (r, c) if out_in else (c, r)
        if w is None:
            return None, shape
        return (w if out_in else np.ascontiguousarray(w.T)), shape

    # ---------------------------------------------------------------- layers
    def layer_cuts(self) -> list[int]:
        """Node index where each layer starts: the earliest op of what feeds an attention's new
        key back to the residual stream (its norm and projection); the last cut starts the
        head (what feeds the logits back to the residual stream)."""
        g = self.g
        index = {id(n): i for i, n in enumerate(g.nodes)}

        def start(value: str, limit: int) -> int:
            best, todo, seen = limit, [value], set()
            while todo:
                v = todo.pop()
                n = self.prod.get(v)
                if n is None or id(n) in seen or v in self.pos_only:
                    continue
                seen.add(id(n))
                if self.is_residual(n) or n.op == "gather" or self.is_embedding_sum(n) or (
                        n.op == "matmul" and any(i in self.cache for i in n.inputs)):
                    continue
                best = min(best, index[id(n)])
                todo.extend(i for i in n.inputs if not g.is_const(i))
            return best

        cuts = [start(a.k_concat.inputs[1], index[id(a.k_concat)]) for a in self.attns]
        cuts.append(start(g.outputs[0], len(g.nodes)))
        return cuts

    def is_embedding_sum(self, n: Node) -> bool:
        """An add of table rows (token + position embeddings): the residual stream's start."""
        if n.op != "add":
            return False
        for i in n.inputs:
            p = self.prod.get(i)
            while p is not None and p.op in WIRING and p.op != "concat":
                p = self.prod.get(p.inputs[0])
            if p is None or p.op != "gather" or not self.g.is_const(p.inputs[0]):
                return False
        return True

    def is_residual(self, n: Node) -> bool:
        g = self.g
        if n.op != "add" or len(n.inputs) != 2:
            return False
        if any(g.is_const(i) or i in self.pos_only for i in n.inputs):
            return False
        a, b = (g.shape_of(i) for i in n.inputs)
        if not a or not b or a[-1] != self.d_model or b[-1] != self.d_model:
            return False
        return all(d == 1 for d in a[:-1]) and all(d == 1 for d in b[:-1]) or a == b

    def matvec_role(self, p: _Matvec, logits: str, wired_source) -> str:
        g = self.g
        outs = {m.outputs[0] for m in p.nodes}
        # feeds attention (through ASIC ops like rotary and wiring) -> qkv
        src = wired_source(p.input)
        if logits in outs or any(self._wired_to(o, logits) for o in outs):
            return "lm_head"
        if src is not None and src.op == "matmul" and any(i in self.cache for i in src.inputs):
            return "out_proj"
        for _, u in self._block_users(outs):
            if u.op == "matmul" and any(i in self.cache for i in u.inputs):
                return "qkv"
            if any(u is a.k_concat or u is a.v_concat for a in self.attns):
                return "qkv"
        if src is not None and (src.op in ("gelu", "silu", "relu", "sigmoid", "tanh") or (
                src.op == "mul" and all(not g.is_const(i) for i in src.inputs))):
            return "ffn_down"
        return "ffn_up"

    def _wired_to(self, value: str, target: str) -> bool:
        v = value
        while True:
            us = self.users.get(v, [])
            if v == target:
                return True
            if len(us) != 1 or us[0].op not in WIRING:
                return False
            v = us[0].outputs[0]

    def shape0(self, value: str) -> tuple[int, ...]:
        """A value's shape at position 0 (cache-length dimensions resolved)."""
        out = []
        for d in self.g.shape_of(value) or ():
            if isinstance(d, str):
                terms, const = _terms(d)
                d = const
            out.append(int(d))
        return tuple(out)
