"""The decode step's structure, from the dataflow alone (no model is recognised): the node
classes the :class:`~compiler.passes.classify.Classify` pass writes onto the graph.

On a folded graph (:mod:`compiler.passes.fold`) :class:`DecodeStep` finds

* the inputs: the two KV-cache inputs (rank 4), the token (it feeds an embedding gather) and the
  position (:func:`decode_inputs`);
* the attentions: each concat of a past key/value input with a new one (a *cache append*), the
  views of the cache (*cache views*) and the q.K^T and p.V products that read them
  (*attentions*; a product reading the cache any other way is refused);
* the matrix-vector products with a constant weight (:meth:`DecodeStep.is_weight`), packed by
  their shared input, and each pack's role (``qkv``, ``out_proj``, ``ffn_up``, ``ffn_down``,
  ``lm_head``) from what it feeds and is fed by;
* the reads of a constant table (token or position embedding), the ASIC ops (residual adds,
  embedding sums and the attention scale the softmax applies marked) and the wiring;
* the layers: a layer starts at the first op of what feeds an attention's new key (its norm
  and projection); residual adds and embedding sums are the stream between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.ir import Graph, Node, NodeClass
from compiler.passes.lowering_error import LoweringError
from compiler.passes.shape_inference import _terms
from pimsim.asic_ops import OPS as ASIC_OPS

WIRING = ("reshape", "transpose", "slice", "select", "unsqueeze", "squeeze", "expand", "cast",
          "concat")
MATRIX_OPS = ("linear", "gemm", "matmul")


@dataclass(frozen=True)
class DecodeInputs:
    """The decode step's graph inputs: the past key/value caches, the token, the position
    (``""`` when the graph has none) and the symbolic cache-length dimensions."""

    past_k: str
    past_v: str
    token: str
    position: str
    syms: frozenset
    d_model: int


def _through_wiring(value: str, users: dict) -> list[Node]:
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


def decode_inputs(g: Graph, name: str) -> DecodeInputs:
    """Find the decode step's inputs; a :class:`LoweringError` when the graph is not one."""
    past = [v for v in g.inputs if v.shape is not None and len(v.shape) == 4]
    ints = [v for v in g.inputs if v.dtype.startswith("i") and v not in past]
    if len(past) != 2:
        raise LoweringError(f"{name}: expected two KV-cache inputs (past_k, past_v) of "
                            f"rank 4, found {[v.name for v in past]}")
    syms = frozenset(d for v in past for d in v.shape if isinstance(d, str))
    users = g.users()
    tok = [v for v in ints if any(u.op == "gather" and g.is_const(u.inputs[0])
                                  for u in _through_wiring(v.name, users))]
    if not tok:
        raise LoweringError(f"{name}: no token input feeds an embedding gather")
    token = tok[0].name
    table = next(u.inputs[0] for u in _through_wiring(token, users)
                 if u.op == "gather" and g.is_const(u.inputs[0]))
    d_model = int(g.const_shape(table)[-1])
    shape = tok[0].shape
    if shape is not None and any(d != 1 for d in shape):
        raise LoweringError(
            f"{name}: the token input {token} has shape {list(shape)}: this is a "
            f"prefill graph (more than one new token), which cannot be lowered at length 1")
    rest = [v.name for v in ints if v.name != token]
    return DecodeInputs(past[0].name, past[1].name, token, rest[0] if rest else "", syms,
                        d_model)


class DecodeStep:
    """The structure of one folded decode-step graph (see the module docstring);
    :meth:`classes` gives each node's :class:`~compiler.ir.NodeClass`."""

    def __init__(self, g: Graph, name: str) -> None:
        self.g, self.name = g, name
        self.inp = decode_inputs(g, name)
        self.d_model = self.inp.d_model
        self.position = self.inp.position
        self.past_k, self.past_v = self.inp.past_k, self.inp.past_v
        self.analyse()

    def analyse(self) -> None:
        """The attentions, the cache's views, the position-only values (refusing a graph that
        reads the cache other than by appending to it and multiplying by it)."""
        g = self.g
        self.prod = g.producers()
        self.users = g.users()
        pos_only: set[str] = {self.position} if self.position else set()
        cache: dict[str, tuple[int, str, bool]] = {}  # value -> (attn, "k"|"v", transposed)
        self.concats: list[dict[str, Node]] = []  # per attention: "k" / "v" -> its append
        self.cache_in: dict[str, str] = {self.past_k: "k", self.past_v: "v"}
        self.views: dict[int, tuple[int, str, bool]] = {}  # cache view -> (attn, "k"|"v", tr)
        counts = {"k": 0, "v": 0}
        for n in g.nodes:
            ins = [i for i in n.inputs if not g.is_const(i)]
            if ins and all(i in pos_only for i in ins):
                pos_only.update(n.outputs)
            if n.op in ("select", "slice", "reshape", "squeeze", "unsqueeze") and ins and \
                    ins[0] in self.cache_in:
                self.cache_in[n.outputs[0]] = self.cache_in[ins[0]]
                self.views[id(n)] = (-1, self.cache_in[ins[0]], False)
                continue
            if n.op == "concat" and len(n.inputs) == 2 and n.inputs[0] in self.cache_in:
                which = self.cache_in[n.inputs[0]]
                idx = counts[which]
                counts[which] += 1
                while len(self.concats) <= idx:
                    self.concats.append({})
                self.concats[idx][which] = n
                cache[n.outputs[0]] = (idx, which, False)
                continue
            if n.op in WIRING and ins and ins[0] in cache and n.op != "concat":
                a, which, tr = cache[ins[0]]
                if n.op == "transpose":
                    p = n.attrs["perm"]
                    if list(p[-2:]) == [len(p) - 1, len(p) - 2]:
                        tr = not tr
                cache[n.outputs[0]] = (a, which, tr)
                self.views[id(n)] = (a, which, tr)
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
        if not self.concats:
            raise LoweringError(f"{self.name}: no attention over the KV cache found (no concat of "
                                f"the past keys with a new key)")
        self.appends = {id(n): (a, w) for a, c in enumerate(self.concats) for w, n in c.items()}

    def is_weight(self, n: Node) -> bool:
        """A matrix-vector product with a constant 2-d weight (a PIM matrix)."""
        g = self.g
        if n.op not in MATRIX_OPS or len(n.inputs) < 2 or not g.is_const(n.inputs[1]):
            return False
        if len(g.const_shape(n.inputs[1])) != 2 or n.inputs[0] in self.pos_only:
            return False
        if n.op == "gemm" and (n.attrs["trans_a"] or n.attrs["alpha"] != 1 or n.attrs["beta"] != 1):
            return False
        return True

    def is_attention(self, n: Node) -> bool:
        return n.op == "matmul" and any(i in self.cache for i in n.inputs)

    def is_table_read(self, n: Node) -> bool:
        g = self.g
        return n.op == "gather" and g.is_const(n.inputs[0]) and not g.is_const(n.inputs[1]) \
            and len(g.const_shape(n.inputs[0])) == 2 and n.attrs["axis"] == 0

    # ---------------------------------------------------------------- classes
    def classes(self) -> dict[int, NodeClass]:
        """Each node's class (by node identity), in the lowering's order of precedence."""
        g = self.g
        for n in g.nodes:
            if n.op not in ASIC_OPS and n.op != "gather" and id(n) not in self.views:
                raise LoweringError(f"{self.name}: op {n.op!r} at node {n.name!r} has no ASIC or "
                                    f"PIM definition")
        packs: dict[str, list[Node]] = {}
        for n in g.nodes:
            if self.is_weight(n):
                packs.setdefault(n.inputs[0], []).append(n)
            elif n.op in MATRIX_OPS and len(n.inputs) >= 2 and g.is_const(n.inputs[1]) and \
                    n.inputs[0] not in self.pos_only:
                raise LoweringError(f"{self.name}: matrix product at node {n.name!r} has a "
                                    f"weight of shape {g.const_shape(n.inputs[1])}")
        logits = g.outputs[0]
        pack_role = {key: self.matvec_role(key, nodes, logits) for key, nodes in packs.items()}
        cuts = self.layer_cuts()
        cut_set = {c: k for k, c in enumerate(cuts)}
        scores = {n.outputs[0] for n in g.nodes
                  if self.is_attention(n) and n.inputs[1] in self.cache
                  and self.cache[n.inputs[1]][1] == "k"}
        out: dict[int, NodeClass] = {}
        layer = -1
        for i, n in enumerate(g.nodes):
            layer = cut_set.get(i, layer)
            pos = all(o in self.pos_only for o in n.outputs)
            if id(n) in self.views:
                a, which, tr = self.views[id(n)]
                c = NodeClass("cache_view", "", layer, a, which, tr)
            elif id(n) in self.appends:
                a, which = self.appends[id(n)]
                c = NodeClass("cache_append", "", layer, a, which)
            elif self.is_attention(n):
                a, which, tr = self.cache.get(n.inputs[1], (-1, "", False))
                c = NodeClass("attention", "score" if which == "k" else "value", layer, a,
                              which, tr)
            elif self.is_table_read(n):
                c = NodeClass("table_read", "", layer, position=pos)
            elif self.is_weight(n):
                c = NodeClass("matvec", pack_role[n.inputs[0]], layer)
            elif ASIC_OPS.get(n.op) is not None and ASIC_OPS[n.op].cost is None:
                c = NodeClass("wiring", "", layer, position=pos)
            else:
                c = NodeClass("asic", self.asic_role(n, scores), layer, position=pos)
            out[id(n)] = c
        return out

    def asic_role(self, n: Node, scores: set[str]) -> str:
        """``attn_scale`` (a scalar scale of attention scores the softmax applies as it reads
        them), ``embedding_sum``, ``residual`` or ``""``."""
        g = self.g
        src = self.prod.get(n.inputs[0])
        if n.op in ("mul", "div") and len(n.inputs) == 2 and g.is_const(n.inputs[1]) and \
                g.const_value(n.inputs[1]) is not None and \
                np.asarray(g.const_value(n.inputs[1])).size == 1 and src is not None and \
                src.outputs[0] in scores and len(self.users.get(n.outputs[0], [])) == 1 \
                and self.users[n.outputs[0]][0].op == "softmax":
            return "attn_scale"
        if self.is_embedding_sum(n):
            return "embedding_sum"
        if n.op == "add" and self.is_residual(n):
            return "residual"
        return ""

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

        cuts = [start(c["k"].inputs[1], index[id(c["k"])]) for c in self.concats]
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

    def _block_users(self, values):
        return block_users(self.users, values, lambda u: self.is_weight(u) or self.is_residual(u))

    def _wired_source(self, value: str) -> Node | None:
        """The op that made ``value``, looking through wiring."""
        n = self.prod.get(value)
        while n is not None and n.op in WIRING and n.op != "concat":
            n = self.prod.get(n.inputs[0])
        return n

    def matvec_role(self, key: str, nodes: list[Node], logits: str) -> str:
        """The role of the pack of products reading ``key``: what it feeds and is fed by."""
        g = self.g
        outs = {m.outputs[0] for m in nodes}
        # feeds attention (through ASIC ops like rotary and wiring) -> qkv
        src = self._wired_source(key)
        if logits in outs or any(self._wired_to(o, logits) for o in outs):
            return "lm_head"
        if src is not None and src.op == "matmul" and any(i in self.cache for i in src.inputs):
            return "out_proj"
        for _, u in self._block_users(outs):
            if u.op == "matmul" and any(i in self.cache for i in u.inputs):
                return "qkv"
            if id(u) in self.appends:
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


def shape0(g: Graph, value: str) -> tuple[int, ...]:
    """A value's shape at position 0 (cache-length dimensions resolved)."""
    out = []
    for d in g.shape_of(value) or ():
        if isinstance(d, str):
            terms, const = _terms(d)
            d = const
        out.append(int(d))
    return tuple(out)


def block_users(users: dict, values, ends_block):
    """(value, user) pairs reached from ``values`` through every op except those for which
    ``ends_block(op)`` holds (weight products and residual adds end a block): what the values
    feed. ``users``: value -> the ops reading it."""
    todo, seen = list(values), set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        for u in users.get(v, []):
            yield v, u
            if not ends_block(u):
                todo.extend(u.outputs)
